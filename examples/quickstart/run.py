"""Quickstart: does the image help? Text-only vs CVLM on synthetic data where it must.

    python examples/quickstart/run.py [--work-dir work/quickstart]

1. renders a synthetic multilingual corpus (coloured shapes; captions in en, de, fr, cs) and a
   *degraded* variant whose colour and shape words are masked in the source, so that only
   the image can tell them;
2. extracts image features into HDF5 with a timm ViT (randomly initialised, fixed seed: no
   pretrained weights can be downloaded here, and a random patch embedding still keeps colour
   and position);
3. trains SentencePiece and binarizes six directions (en<->de, en<->fr, en<->cs); half of the
   training sources are degraded, so a model can learn to look at the image;
4. trains a text-only and a CVLM model with ``fairseq-train`` (same architecture and budget);
5. translates the clean and degraded test sets with beam 5 and prints sacreBLEU per direction.

Each step prints the command it runs; a step whose output exists is skipped, so an interrupted
run resumes where it stopped.
"""

import argparse
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LANG_PAIRS = ["en-de", "de-en", "en-fr", "fr-en", "en-cs", "cs-en"]
MODELS = {"text-only": "none", "cvlm": "cvlm"}


def run(command, log_file=None):
    print("$ " + " ".join(shlex.quote(str(part)) for part in command), flush=True)
    began = time.time()
    if log_file is None:
        subprocess.run([str(part) for part in command], cwd=REPO, check=True)
    else:
        with open(log_file, "w") as log:
            result = subprocess.run([str(part) for part in command], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            sys.exit(f"failed (exit {result.returncode}); the last lines of {log_file}:\n"
                     + "".join(open(log_file).readlines()[-25:]))
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
        "--sampling-temperature", "2", "--sampling-temperature-init", "1", "--sampling-warmup-updates", "500",
        "--arch", "m3p_transformer_tiny", "--fusion", fusion,
        "--dropout", "0.1", "--attention-dropout", "0.1",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "1.0",
        "--lr", str(args.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(args.warmup_updates),
        "--max-tokens", str(args.max_tokens), "--max-update", str(args.max_update),
        "--seed", str(args.seed), "--num-workers", "1",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--keep-last-epochs", "1",
        "--validate-interval-updates", str(args.max_update // 4), "--save-interval-updates", str(args.max_update // 4),
        "--keep-interval-updates", "1", "--log-format", "simple", "--log-interval", "100",
    ] + (["--tensorboard-logdir", save_dir / "tensorboard"] if args.tensorboard else [])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "quickstart")
    parser.add_argument("--num-train", type=int, default=3000, help="training images (6 directions each)")
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--max-update", type=int, default=1200)
    parser.add_argument("--max-tokens", type=int, default=4096)
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
    checkpoints = {}
    for name, fusion in MODELS.items():
        save_dir = work / "checkpoints" / name
        run(train_command(data, save_dir, fusion, args), log_file=work / f"train-{name}.log")
        checkpoints[name] = save_dir / "checkpoint_last.pt"

    print("== 5/5 beam search (beam 5) and sacreBLEU", flush=True)
    run([python, "scripts/evaluate.py", "--data", data, "--splits", "test,test_degraded", "--beam", 5,
         "--output", work / "results.json"]
        + [arg for name, path in checkpoints.items() for arg in ("--checkpoint", f"{name}={path}")])
    print(f"total {time.time() - began:.0f} s; results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
