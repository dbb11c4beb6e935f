"""Quickstart: does the image help? Text-only vs CVLM on synthetic data where it must.

    python examples/quickstart/run.py [--work-dir work/quickstart]

1. renders a synthetic multilingual corpus (coloured shapes; captions in en, de, fr, cs) and a
   *degraded* variant whose colour and shape words are masked in the source, so that only
   the image can tell them;
2. extracts image features into HDF5 with a timm ViT (randomly initialised, fixed seed: no
   pretrained weights can be downloaded here, and a random patch embedding still keeps colour
   and position);
3. trains SentencePiece and binarizes four directions (en<->de, en<->fr); half of the
   training sources are degraded, so a model can learn to look at the image;
4. trains a text-only and a CVLM model with ``fairseq-train`` (same architecture and budget,
   side by side);
5. translates the clean and degraded test sets with beam 5 and prints sacreBLEU per direction.

Each step prints the command it runs; a step whose output exists is skipped, so an interrupted
run resumes where it stopped.
"""

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LANG_PAIRS = ["en-de", "de-en", "en-fr", "fr-en"]
MODELS = {"text-only": "none", "cvlm": "cvlm"}


def show(command):
    return " ".join(shlex.quote(str(part)) for part in command)


def fail(result_code, log_file):
    sys.exit(f"failed (exit {result_code}); the last lines of {log_file}:\n"
             + "".join(open(log_file).readlines()[-25:]))


def run(command, log_file=None):
    print("$ " + show(command), flush=True)
    began = time.time()
    if log_file is None:
        subprocess.run([str(part) for part in command], cwd=REPO, check=True)
    else:
        with open(log_file, "w") as log:
            result = subprocess.run([str(part) for part in command], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            fail(result.returncode, log_file)
    print(f"  ({time.time() - began:.0f} s)", flush=True)


def run_side_by_side(commands_and_logs):
    """Small models use two cores poorly (one step is barely faster on two threads than on
    one), so the two trainings run at once with one thread each: ~1.5x the throughput."""
    began, running = time.time(), []
    for command, log_file in commands_and_logs:
        print(f"$ OMP_NUM_THREADS=1 {show(command)} > {log_file} &", flush=True)
        log = open(log_file, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        running.append((subprocess.Popen([str(p) for p in command], cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, env=env), log, log_file))
    for process, log, log_file in running:
        process.wait()
        log.close()
        if process.returncode != 0:
            fail(process.returncode, log_file)
    print(f"  ({time.time() - began:.0f} s)", flush=True)


def write_lines(path: Path, lines):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def read_lines(path: Path):
    return path.read_text(encoding="utf-8").splitlines()


def write_directions(raw: Path, degraded_fraction: float, seed: int):
    """Per-direction raw text: train/valid sources degraded with probability
    ``degraded_fraction``; test_degraded has every source degraded. Targets stay clean."""
    rng = random.Random(seed)
    for split in ("train", "valid"):
        for pair in LANG_PAIRS:
            src, tgt = pair.split("-")
            clean, degraded = read_lines(raw / f"{split}.{src}"), read_lines(raw / f"{split}.degraded.{src}")
            mixed = [d if rng.random() < degraded_fraction else c for c, d in zip(clean, degraded)]
            write_lines(raw / f"{split}.{pair}.{src}", mixed)
            write_lines(raw / f"{split}.{pair}.{tgt}", read_lines(raw / f"{split}.{tgt}"))
    for pair in LANG_PAIRS:
        src, tgt = pair.split("-")
        write_lines(raw / f"test_degraded.{pair}.{src}", read_lines(raw / f"test.degraded.{src}"))
        write_lines(raw / f"test_degraded.{pair}.{tgt}", read_lines(raw / f"test.{tgt}"))
    shutil.copyfile(raw / "test.image_ids", raw / "test_degraded.image_ids")


def train_command(data: Path, save_dir: Path, fusion: str, args) -> list:
    return [
        "fairseq-train", data, "--user-dir", REPO / "m3p_fairseq",
        "--task", "multimodal_translation", "--lang-pairs", ",".join(LANG_PAIRS),
        "--sampling-temperature", "2", "--sampling-temperature-init", "1", "--sampling-warmup-updates", "400",
        "--arch", "m3p_transformer_tiny", "--fusion", fusion, "--dropout", "0.1",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "1.0",
        "--lr", str(args.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(args.warmup_updates),
        "--max-tokens", str(args.max_tokens), "--max-update", str(args.max_update),
        "--seed", str(args.seed), "--num-workers", "1",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "100",
    ] + (["--tensorboard-logdir", save_dir / "tensorboard"] if args.tensorboard else [])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "quickstart")
    parser.add_argument("--num-train", type=int, default=3000, help="training images (6 directions each)")
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--max-update", type=int, default=800)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-updates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tensorboard", action="store_true", help="also log training to tensorboard")
    args = parser.parse_args(argv)

    began = time.time()
    work = args.work_dir.resolve()
    raw, data = work / "raw", work / "data-bin"
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable

    print("== 1/5 synthetic corpus", flush=True)
    if not (raw / "test_degraded.image_ids").exists():
        run([python, "-m", "preprocess.make_synthetic_corpus", "--output-dir", raw,
             "--num-train", args.num_train, "--num-valid", 200, "--num-test", args.num_test,
             "--image-size", 96, "--seed", args.seed])
        write_directions(raw, degraded_fraction=0.5, seed=args.seed)

    print("== 2/5 image features", flush=True)
    run([python, "-m", "preprocess.extract_image_features", "--images-dir", raw / "images",
         "--image-ids", raw / "train.image_ids", raw / "valid.image_ids", raw / "test.image_ids",
         "--output", data / "image_features.h5", "--backbone", "vit_tiny_patch16_224",
         "--random-init-seed", 0, "--image-size", 96, "--batch-size", 100], log_file=work / "extract.log")

    print("== 3/5 SentencePiece + binarize", flush=True)
    run([python, "-m", "preprocess.binarize", "--raw-dir", raw, "--dest-dir", data,
         "--lang-pairs", ",".join(LANG_PAIRS), "--splits", "train,valid,test,test_degraded",
         "--spm-vocab-size", 1000, "--spm-user-defined-symbols", "[MASK]"], log_file=work / "binarize.log")

    print("== 4/5 training", flush=True)
    save_dirs = {name: work / "checkpoints" / name for name in MODELS}
    run_side_by_side([(train_command(data, save_dirs[name], fusion, args), work / f"train-{name}.log")
                      for name, fusion in MODELS.items()])
    checkpoints = {name: save_dir / "checkpoint_last.pt" for name, save_dir in save_dirs.items()}

    print("== 5/5 beam search (beam 5) and sacreBLEU", flush=True)
    run([python, "scripts/evaluate.py", "--data", data, "--splits", "test,test_degraded", "--beam", 5,
         "--output", work / "results.json"]
        + [arg for name, path in checkpoints.items() for arg in ("--checkpoint", f"{name}={path}")])
    results = json.loads((work / "results.json").read_text(encoding="utf-8"))

    def average_bleu(model, split):
        scores = results[model][split].values()
        return sum(score["bleu"] for score in scores) / len(scores)

    for split in ("test_degraded", "test"):
        margin = average_bleu("cvlm", split) - average_bleu("text-only", split)
        print(f"cvlm - text-only on {split}: {margin:+.1f} BLEU (average over {len(LANG_PAIRS)} directions)")
    print(f"total {time.time() - began:.0f} s; scores and hypotheses in {work / 'results.json'}")


if __name__ == "__main__":
    main()
