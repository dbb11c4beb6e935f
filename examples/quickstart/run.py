"""Quickstart: does the image help? A text-only model vs m3P on synthetic data where it must.

    python examples/quickstart/run.py [--work-dir work/quickstart]

1. renders a synthetic multilingual corpus (coloured shapes; captions in en, de, fr, cs) and a
   *degraded* variant whose colour and shape words are masked in the source, so that only
   the image can tell them;
2. extracts image features into HDF5 with a timm ViT (randomly initialised, fixed seed: no
   pretrained weights can be downloaded here, and a random patch embedding still keeps colour
   and position), with 2 augmented views per image for MMA;
3. trains SentencePiece and binarizes four directions (en<->de, en<->fr); half of the
   training sources are degraded (--degraded-fraction), so a model can learn to look at the image;
4. trains a text-only transformer with ``fairseq-train``, then m3P (CVLM fusion, MDropNet, MMA,
   and the m3p_loss criterion with MMCL) from it: the text side starts as the text-only model
   (``--init-from-text-model``), as the paper builds m3P on a multilingual text model, and
   trains on with images for --m3p-updates more updates;
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

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.data.data_dir import DataDirectory
from m3p_fairseq.data.text_lines import read_lines, write_lines
from m3p_fairseq.data.vocabulary import MASK_WORD

REPO = Path(__file__).resolve().parents[2]
LANG_PAIRS = ["en-de", "de-en", "en-fr", "fr-en"]
AUGMENTED_VIEWS = 2
TEXT_ONLY = ["--fusion", "none", "--criterion", "label_smoothed_cross_entropy"]
M3P = ["--fusion", "cvlm", "--criterion", "m3p_loss", "--mmcl-weight", "0.1",
       "--mdropnet-text-only", "0.25", "--mdropnet-image-only", "0.25", "--mdropnet-warmup-updates", "400",
       "--mma-text-mask-ratio", "0.15", "--mma-patch-mask-ratio", "0.25",
       "--mma-image-view-prob", "0.5", "--mma-view-negatives"]
MODELS = {"text-only": TEXT_ONLY, "m3p": M3P}  # both from scratch (low_resource.py's small budgets)
# The quickstart's m3P starts from its text-only model (main); the recipes that compare m3P
# variants trained from scratch (ablation.py, decoder_only.py) call theirs so, and keep out of
# the quickstart's m3p checkpoint directory.
FROM_SCRATCH = "m3p-from-scratch"
DEGRADED_FRACTION_FILE = "degraded_fraction.txt"


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
    shutil.copyfile(DataDirectory(raw).image_ids("test"), DataDirectory(raw).image_ids("test_degraded"))


def check_degraded_fraction(raw: Path, fraction: float):
    """Stops when the work directory's sources were made with another --degraded-fraction."""
    path = raw / DEGRADED_FRACTION_FILE
    made_with = float(path.read_text()) if path.exists() else 0.5  # the only share before the option
    if made_with != fraction:
        sys.exit(f"{raw}: its sources were made with --degraded-fraction {made_with} ({path}); "
                 f"use another --work-dir for {fraction}")


def train_command(data: Path, save_dir: Path, model_options: list, args, lang_pairs=LANG_PAIRS) -> list:
    return [
        "fairseq-train", data, "--user-dir", REPO / "m3p_fairseq",
        "--task", "multimodal_translation", "--lang-pairs", ",".join(lang_pairs),
        "--sampling-temperature", "2", "--sampling-temperature-init", "1", "--sampling-warmup-updates", "400",
        "--arch", "m3p_transformer_tiny", *model_options, "--dropout", "0.1", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "1.0",
        "--lr", str(args.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(args.warmup_updates),
        "--max-tokens", str(args.max_tokens), "--max-update", str(args.max_update),
        "--seed", str(args.seed), "--num-workers", "1",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "100",
    ] + (["--tensorboard-logdir", save_dir / "tensorboard"] if args.tensorboard else [])


def add_options(parser):
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "quickstart")
    parser.add_argument("--num-train", type=int, default=3000, help="training images (6 directions each)")
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--max-update", type=int, default=1600)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-updates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--m3p-updates", type=int, default=800,
                        help="m3P's updates with images, after the text-only model's --max-update")
    parser.add_argument("--m3p-lr", type=float, default=7e-4,
                        help="m3P's peak learning rate, about where the text-only model's schedule ends "
                             "(2e-3 * sqrt(200 / 1600) = 7.1e-4)")
    parser.add_argument("--degraded-fraction", type=float, default=0.5,
                        help="share of training and validation sources whose colour and shape words are masked")
    parser.add_argument("--tensorboard", action="store_true", help="also log training to tensorboard")


def prepare_data(work: Path, args) -> Path:
    """Steps 1-3; returns the binarized data directory."""
    raw, data = work / "raw", work / "data-bin"
    raw_files, data_files = DataDirectory(raw), DataDirectory(data)
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    print("== 1/5 synthetic corpus", flush=True)
    if not raw_files.image_ids("test_degraded").exists():
        run([python, "-m", "preprocess.make_synthetic_corpus", "--output-dir", raw,
             "--num-train", args.num_train, "--num-valid", 200, "--num-test", args.num_test,
             "--image-size", 96, "--seed", args.seed])
        atomic_write_text(raw / DEGRADED_FRACTION_FILE, f"{args.degraded_fraction}\n")  # before the files it describes
        write_directions(raw, degraded_fraction=args.degraded_fraction, seed=args.seed)
    check_degraded_fraction(raw, args.degraded_fraction)

    print("== 2/5 image features", flush=True)
    run([python, "-m", "preprocess.extract_image_features", "--images-dir", raw / "images",
         "--image-ids", *(raw_files.image_ids(split) for split in ("train", "valid", "test")),
         "--output", data_files.shared_features, "--backbone", "vit_tiny_patch16_224",
         "--random-init-seed", 0, "--image-size", 96, "--batch-size", 100,
         "--augmented-views", AUGMENTED_VIEWS, "--augmentation-seed", args.seed], log_file=work / "extract.log")

    print("== 3/5 SentencePiece + binarize", flush=True)
    run([python, "-m", "preprocess.binarize", "--raw-dir", raw, "--dest-dir", data,
         "--lang-pairs", ",".join(LANG_PAIRS), "--splits", "train,valid,test,test_degraded",
         "--spm-vocab-size", 1000, "--spm-user-defined-symbols", MASK_WORD], log_file=work / "binarize.log")
    return data


def train_from_text_only(work: Path, data: Path, name: str, options: list, args) -> Path:
    """Model ``name`` started from the text-only model's checkpoint (``--init-from-text-model``),
    --m3p-updates updates at --m3p-lr (skipped when finished); returns its checkpoint."""
    text_only = work / "checkpoints" / "text-only" / "checkpoint_last.pt"
    checkpoint = work / "checkpoints" / name / "checkpoint_last.pt"
    if checkpoint.exists() and _checkpoint_option(checkpoint, "init_from_text_model") is None:
        sys.exit(f"{checkpoint} was trained from scratch (by an earlier quickstart); this one starts {name} from "
                 f"the text-only model: use another --work-dir, or delete {checkpoint.parent}")
    stage = argparse.Namespace(**{**vars(args), "lr": args.m3p_lr, "max_update": args.m3p_updates})
    options = options + ["--init-from-text-model", text_only]
    save_dir = train_unless_finished(work, name, lambda save_dir: train_command(data, save_dir, options, stage),
                                     args.m3p_updates)
    return save_dir / "checkpoint_last.pt"


def train(work: Path, data: Path, models: dict, args) -> dict:
    """models: name -> (model options, language pairs). Trains two at a time (finished ones are
    skipped); returns name -> checkpoint."""
    save_dirs = {name: work / "checkpoints" / name for name in models}
    todo = [(train_command(data, save_dirs[name], options, args, pairs), work / f"train-{name}.log")
            for name, (options, pairs) in models.items()
            if not _finished(save_dirs[name] / "checkpoint_last.pt", args.max_update)]
    for start in range(0, len(todo), 2):
        pair = todo[start:start + 2]
        if len(pair) == 2:
            run_side_by_side(pair)
        else:
            run(*pair[0])  # alone, on every core
    return {name: save_dir / "checkpoint_last.pt" for name, save_dir in save_dirs.items()}


def _finished(checkpoint: Path, max_update: int) -> bool:
    if not checkpoint.exists():
        return False
    return _load_checkpoint(checkpoint)["optimizer_history"][-1]["num_updates"] >= max_update


def _checkpoint_option(checkpoint: Path, name: str):
    """A model option a checkpoint was trained with (None when unset)."""
    options = _load_checkpoint(checkpoint)["cfg"]["model"]  # a Namespace or a dict
    return options.get(name) if isinstance(options, dict) else getattr(options, name, None)


def _load_checkpoint(checkpoint: Path) -> dict:
    import logging

    import torch
    logging.disable(logging.INFO)  # fairseq's import turns on DEBUG logging for everything
    import m3p_fairseq  # noqa: F401  (allow-lists the checkpoint's classes)
    logging.disable(logging.NOTSET)

    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def train_unless_finished(work: Path, name: str, command, updates: int) -> Path:
    """One fairseq-train run, ``command(save_dir)``, unless its checkpoint_last.pt has ``updates``
    updates already (a stopped run resumes its own); returns its save directory."""
    save_dir = work / "checkpoints" / name
    if not _finished(save_dir / "checkpoint_last.pt", updates):
        run(command(save_dir), log_file=work / f"train-{name}.log")
    return save_dir


def optimizer_options(args, save_dir: Path, updates: int, warmup_updates: int, log_interval: int) -> list:
    """The fairseq-train options the recipes built on this one share: Adam, inverse-sqrt warm-up,
    ``args.lr`` and ``args.seed``, only the last and best checkpoints, kept in ``save_dir``."""
    return ["--user-dir", REPO / "m3p_fairseq", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
            "--clip-norm", "1.0", "--lr", args.lr, "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", warmup_updates, "--max-update", updates, "--seed", args.seed, "--num-workers", 0,
            "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", log_interval]


def extract_features(raw: Path, output: Path, splits, image_size: int, log_file: Path):
    """Features of the images of ``splits`` by a random-init ViT-tiny (nothing is downloaded), no
    augmented views; skipped when ``output`` exists."""
    if output.exists():
        return
    run([sys.executable, "-m", "preprocess.extract_image_features", "--images-dir", raw / "images",
         "--image-ids", *[raw / f"{split}.image_ids" for split in splits], "--output", output,
         "--backbone", "vit_tiny_patch16_224", "--random-init-seed", 0, "--image-size", image_size,
         "--batch-size", 100], log_file=log_file)


def train_and_evaluate(models: dict, output_name: str, doc: str, argv=None, score_pairs=None, from_text_only=None):
    """Steps 1-5 for ``models`` (name -> (model options, language pairs)), then for
    ``from_text_only`` (name -> model options, the quickstart's directions), which start from the
    text-only model of ``models``; scores every direction a model was trained on, or only
    ``score_pairs``. Returns the scores and the work directory."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    data = prepare_data(work, args)
    print("== 4/5 training", flush=True)
    checkpoints = train(work, data, models, args)
    for name, options in (from_text_only or {}).items():
        checkpoints[name] = train_from_text_only(work, data, name, options, args)
        models = {**models, name: (options, LANG_PAIRS)}
    print("== 5/5 beam search (beam 5) and sacreBLEU", flush=True)
    if not score_pairs:
        return evaluate(data, checkpoints, work / output_name), work
    # m3p-evaluate refuses a direction a model was not trained on: score each model on the
    # directions of score_pairs it has (one run per distinct set), then join the results
    groups = {}
    for name, path in checkpoints.items():
        pairs = tuple(pair for pair in score_pairs if pair in models[name][1])
        groups.setdefault(pairs, {})[name] = path
    results = {}
    for number, (pairs, members) in enumerate(sorted(groups.items())):
        output = work / output_name if len(groups) == 1 else work / f"{Path(output_name).stem}.{number}.json"
        results.update(evaluate(data, members, output, list(pairs)))
    if len(groups) > 1:
        atomic_write_text(work / output_name, json.dumps(results, indent=1, ensure_ascii=False))
    return results, work


def evaluate(data: Path, checkpoints: dict, output: Path, score_pairs=None) -> dict:
    run([sys.executable, "scripts/evaluate.py", "--data", data, "--splits", "test,test_degraded", "--beam", 5,
         "--output", output]
        + (["--lang-pairs", ",".join(score_pairs)] if score_pairs else [])
        + [arg for name, path in checkpoints.items() for arg in ("--checkpoint", f"{name}={path}")])
    return json.loads(output.read_text(encoding="utf-8"))


def main(argv=None):
    began = time.time()
    results, work = train_and_evaluate({"text-only": (TEXT_ONLY, LANG_PAIRS)}, "results.json", __doc__, argv,
                                       from_text_only={"m3p": M3P})

    def average_bleu(model, split):
        scores = results[model][split].values()
        return sum(score["bleu"] for score in scores) / len(scores)

    for split in ("test_degraded", "test"):
        margin = average_bleu("m3p", split) - average_bleu("text-only", split)
        print(f"m3p - text-only on {split}: {margin:+.1f} BLEU (average over {len(LANG_PAIRS)} directions)")
    print(f"total {time.time() - began:.0f} s; scores and hypotheses in {work / 'results.json'}")


if __name__ == "__main__":
    main()
