"""MLA on the synthetic corpus, end to end: the paper's Tables 2, 4 and 5 and language extension,
at CPU size (a few minutes per training).

    python examples/mla/synthetic.py [--work-dir work/mla] [--epochs 5]

1. corpus (en, de, fr, cs; 3000/200/200 scenes) and a stand-in English native dual encoder
   (``scripts/mla.py train-native``), whose vision tower embeds every image;
2. de and fr: zero-shot (the native text tower reads them as they are), NLT only, LE only,
   NLT -> LE, NLT with acquirers of bottleneck 32 (CLIP's 256/512 ratio at this width), NLT
   without acquirers (only the embedding block trains) and NLT with the whole
   text tower fine-tuned (a trainable copy shared by de and fr; the costly baseline);
3. language extension: cs is added to the NLT -> LE model, training only its acquirers (and the
   embedding rows of words new with cs); de/fr are scored again.

Writes ``results.json`` and ``results.md`` (Recall@1/5/10 both ways and mR per language on the
test split, trainable parameters and training seconds) into the work directory. Steps whose
output exists are skipped, so an interrupted run continues.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from m3p_fairseq.atomic_io import atomic_write_text  # noqa: E402
from m3p_fairseq.data.data_dir import DataDirectory  # noqa: E402

PYTHON = sys.executable


def run(command, log: Path = None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if log:
        atomic_write_text(log, output)
    if result.returncode:
        raise SystemExit(f"{command[0]} {command[1]} failed:\n{output[-3000:]}")
    return output


def train(work: Path, name: str, criterion: str, langs: str, dictionary: Path, epochs: int, lr: float, *extra):
    save_dir = work / name
    if not (save_dir / "checkpoint_last.pt").is_file() or not (save_dir / "train.log").is_file():
        run(["fairseq-train", work / "corpus", "--user-dir", REPO / "m3p_fairseq", "--task", "mla_acquisition",
             "--arch", "mla_acquisition", "--criterion", criterion, "--langs", langs,
             "--native-checkpoint", work / "native.pt", "--nonnative-dict", dictionary,
             "--image-embeddings", work / "emb.h5", "--optimizer", "adam", "--lr", lr, "--batch-size", 64,
             "--max-epoch", epochs, "--save-dir", save_dir, "--no-epoch-checkpoints", "--num-workers", 0,
             "--log-format", "simple", "--log-interval", 50, "--cpu", "--seed", 1, *extra], save_dir / "train.log")
    log = (save_dir / "train.log").read_text()
    return {"trainable_parameters": int(re.search(r"; (\d+) trainable parameters", log).group(1)),
            "seconds": float(re.search(r"done training in ([\d.]+) seconds", log).group(1))}


def evaluate(work: Path, langs: str, checkpoint: Path = None) -> dict:
    output = work / f"scores.{checkpoint.parent.name if checkpoint else 'zero_shot'}.json"
    if not output.is_file():
        command = [PYTHON, "scripts/mla.py", "evaluate", "--data", work / "corpus", "--split", "test",
                   "--langs", langs, "--native", work / "native.pt", "--image-embeddings", work / "emb.h5",
                   "--output", output]
        run(command + (["--checkpoint", checkpoint] if checkpoint else []))
    return json.loads(output.read_text())["scores"]


def table(results: dict) -> str:
    lines = ["| system | trainable params | train s | lang | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | mR |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for system, result in results.items():
        for lang, s in result["scores"].items():
            cells = [s[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")]
            lines.append(f"| {system} | {result.get('trainable_parameters', 0)} | {result.get('seconds', 0):.0f} | "
                         f"{lang} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "mla")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each stage (LE after NLT: 2)")
    parser.add_argument("--native-steps", type=int, default=600)
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    corpus = work / "corpus"
    if not (corpus / "test.cs").is_file():
        run([PYTHON, "-m", "preprocess.make_synthetic_corpus", "--output-dir", corpus, "--langs", "en,de,fr,cs"])
    native_log = work / "native.log"
    if not (work / "native.pt").is_file():
        run([PYTHON, "scripts/mla.py", "train-native", "--corpus", corpus, "--output", work / "native.pt",
             "--steps", args.native_steps], native_log)
    if not (work / "emb.h5").is_file():
        run([PYTHON, "-m", "preprocess.mla_image_embeddings", "--native", work / "native.pt", "--images-dir",
             corpus / "images", "--image-ids", *(DataDirectory(corpus).image_ids(s) for s in ("train", "valid", "test")),
             "--output", work / "emb.h5"])
    defr, defrcs = work / "dict.defr.txt", work / "dict.defrcs.txt"
    if not defrcs.is_file():
        run([PYTHON, "scripts/mla.py", "build-dict", "--captions", corpus / "train.de", corpus / "train.fr",
             "--output", defr])
        run([PYTHON, "scripts/mla.py", "build-dict", "--captions", corpus / "train.cs", "--extend", defr,
             "--output", defrcs])
    native_seconds = float(re.search(r"parameters, final loss [\d.]+, (\d+) s", native_log.read_text()).group(1))
    native_params = int(re.search(r": (\d+) parameters", native_log.read_text()).group(1))

    e = args.epochs
    results = {"native alone (zero-shot)": {"scores": evaluate(work, "de,fr,cs"),
                                            "trainable_parameters": native_params, "seconds": native_seconds}}
    runs = {
        "NLT": ("nlt", "mla_nlt", "de,fr", defr, e, 1e-3),
        "LE": ("le", "mla_le", "de,fr", defr, e, 1e-3),
        "NLT, bottleneck 32": ("nlt_bottleneck32", "mla_nlt", "de,fr", defr, e, 1e-3, "--acquirer-bottleneck", 32),
        "NLT w/o acquirers": ("nlt_no_acquirers", "mla_nlt", "de,fr", defr, e, 1e-3, "--no-acquirers"),
        "NLT, full text-tower fine-tuning": ("nlt_finetune", "mla_nlt", "de,fr", defr, e, 1e-3,
                                             "--finetune-text-tower"),
        "NLT -> LE": ("nlt_le", "mla_le", "de,fr", defr, 2, 1e-4, "--init-from", work / "nlt" / "checkpoint_last.pt"),
        "NLT -> LE, then + cs (NLT)": ("plus_cs", "mla_nlt", "de,fr,cs", defrcs, e, 1e-3, "--train-langs", "cs",
                                       "--init-from", work / "nlt_le" / "checkpoint_last.pt"),
    }
    for system, (name, criterion, langs, dictionary, epochs, lr, *extra) in runs.items():
        cost = train(work, name, criterion, langs, dictionary, epochs, lr, *extra)
        results[system] = {**cost, "scores": evaluate(work, langs, work / name / "checkpoint_last.pt")}
    atomic_write_text(work / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(work / "results.md", table(results))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
