"""What M3P pre-training brings to multimodal MT (issue 19), on the synthetic corpus, through the
real command lines (docs/pretraining.md, "Multimodal MT from a pre-training checkpoint"):

    python examples/pretraining/translation.py [--work-dir work/pretraining_mmt]

1. data: the synthetic corpus (multi-way captions in en, de, fr), random-init ViT-tiny features,
   SentencePiece + one shared dictionary (synthetic_data.prepare); the training shares by
   ``python -m preprocess.subsample`` (nested: the 10 % sentences are among the 25 % ones, ...);
2. pre-training, ``fairseq-train --task m3p_pretraining`` (every update's objective drawn with
   equal weights; captions paired with images in English only, as the paper) three times with
   the same sizes and updates: every objective, without the understanding objectives
   (xMLM/MMLM/MRM/VLM) and without the generation objectives (xDAE/IC/DIC);
3. ``scripts/pretraining_to_translation.py``: each pre-training checkpoint into an initial
   ``multimodal_translation`` checkpoint (m3p_transformer, CVLM fusion, GELU, the same sizes);
4. one multilingual MMT model per row (en-de, de-en, en-fr, fr-en: the paper's Table 5), the
   quickstart's training command with label-smoothed cross-entropy, from random weights or
   ``--finetune-from-model`` an initial checkpoint, validated every --validate-interval-updates;
5. ``scripts/evaluate.py``: beam search on the test split, sacreBLEU per direction, of each
   run's checkpoint_best.pt (lowest validation loss).

WORK/tables.md has three tables (BLEU per direction and their average):

- Table 1: from scratch vs from pre-training at each --fractions share, every run
  --mmt-updates updates;
- Table 2: the objective ablation, at --ablation-fraction, the same budget;
- Table 3: the paper's Fig. 5: at each --curve-fractions share, trained until the validation
  loss has not improved for --patience validations (at most --max-mmt-updates updates), also
  drawn as WORK/fig5_low_resource.png.

Every step whose output exists is skipped, so an interrupted run resumes (a stopped
fairseq-train resumes its own checkpoint_last.pt).
"""

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from synthetic_data import PYTHON, prepare, pretraining_command, quickstart

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.data.languages import parse_lang_pairs
from m3p_fairseq.data.m3p_pretraining_schedule import GENERATION, OBJECTIVES, UNDERSTANDING
from m3p_fairseq.markdown import markdown_table
from preprocess.subsample import kept_sentences

REPO, run = quickstart.REPO, quickstart.run
SCRATCH = "scratch"
# pre-training variant -> its objectives (Table 2's rows)
PRETRAININGS = {"all": OBJECTIVES, "no-understanding": GENERATION, "no-generation": UNDERSTANDING}
INIT_LABELS = {SCRATCH: "from scratch", "all": "pre-trained, all objectives",
               "no-understanding": "pre-trained without understanding (xMLM/MMLM/MRM/VLM)",
               "no-generation": "pre-trained without generation (xDAE/IC/DIC)"}
FINISHED = "finished"  # written in a run's save dir when its fairseq-train has exited 0


def add_options(parser):
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "pretraining_mmt")
    parser.add_argument("--lang-pairs", default="en-de,de-en,en-fr,fr-en", help="the directions of every MMT model "
                                                                               "(English and one other language each)")
    parser.add_argument("--num-train", type=int, default=2000, help="training scenes (one sentence per language each)")
    parser.add_argument("--num-valid", type=int, default=100)
    parser.add_argument("--num-test", type=int, default=200, help="test sentences per direction")
    parser.add_argument("--image-size", type=int, default=48, help="48: a 3x3 patch grid, one patch per scene cell")
    parser.add_argument("--spm-vocab-size", type=int, default=1000)
    parser.add_argument("--embed-dim", type=int, default=128, help="width of the pre-training and MMT models")
    parser.add_argument("--layers", type=int, default=2, help="layers of each pre-training encoder and decoder, "
                                                              "= the MMT model's encoder and decoder layers")
    parser.add_argument("--pretraining-updates", type=int, default=600, help="updates of each pre-training run")
    parser.add_argument("--pretraining-batch-size", type=int, default=32)
    parser.add_argument("--fractions", default="0.1,1", help="Table 1's shares of the translation training data")
    parser.add_argument("--ablation-fraction", type=float, default=0.1, help="Table 2's share of the training data")
    # the paper's 10/25/50/100 % saturate on this corpus (docs/pretraining.md): the curve starts lower
    parser.add_argument("--curve-fractions", default="0.01,0.025,0.05,0.1,0.25,0.5,1",
                        help="Table 3's (Fig. 5's) shares")
    parser.add_argument("--mmt-updates", type=int, default=400, help="updates of every MMT run of Tables 1 and 2")
    parser.add_argument("--patience", type=int, default=5, help="Table 3: stop after this many validations "
                                                                "without a lower validation loss")
    parser.add_argument("--max-mmt-updates", type=int, default=1200, help="Table 3: the cap on each run's updates")
    parser.add_argument("--validate-interval-updates", type=int, default=50,
                        help="validate (and save checkpoint_best.pt) every this many updates, every MMT run")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of every run")
    parser.add_argument("--warmup-updates", type=int, default=100)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=2, help="trainings run at once, one thread each")
    parser.add_argument("--seed", type=int, default=1)


def fractions(text: str, option: str) -> list:
    values = [float(f) for f in text.split(",")]
    if not all(0 < f <= 1 for f in values):
        raise ValueError(f"{option} {text}: every share must be in (0, 1]")
    return values


def percent(fraction: float) -> str:
    """0.25 -> '25pct' (a run or directory name)."""
    return f"{100 * fraction:g}pct"


def share_label(fraction: float) -> str:
    """0.025 -> '2.5%' (a table cell)."""
    return f"{100 * fraction:g}%"


def training_sentences(num_train: int, fraction: float) -> int:
    """Sentences per direction that ``preprocess.subsample --fraction`` keeps of ``num_train``."""
    return len(kept_sentences(num_train, fraction, seed=0))


def subset(work: Path, data: Path, fraction: float, seed: int) -> Path:
    if fraction == 1:
        return data
    output = work / f"data-{percent(fraction)}"
    if not output.exists():
        run([PYTHON, "-m", "preprocess.subsample", "--data", data, "--output", output, "--fraction", fraction,
             "--seed", seed], log_file=work / f"subsample-{percent(fraction)}.log")
    return output


def train_runs(work: Path, commands: dict, parallel: int) -> None:
    """fairseq-train ``commands`` (run name -> command of its save dir) that have not finished,
    ``parallel`` at a time with one thread each (quickstart.run_side_by_side). A run that stops
    early does not reach --max-update, so a marker says it is done, not its update count."""
    todo = [(name, command(save_dir(work, name))) for name, command in commands.items()
            if not (save_dir(work, name) / FINISHED).exists()]
    for start in range(0, len(todo), parallel):
        batch = todo[start:start + parallel]
        quickstart.run_side_by_side([(command, work / f"train-{name}.log") for name, command in batch])
        for name, _ in batch:
            atomic_write_text(save_dir(work, name) / FINISHED, "")


def save_dir(work: Path, name: str) -> Path:
    return work / "checkpoints" / name


def translation_command(data: Path, save: Path, args, updates: int, patience: int = 0) -> list:
    """The quickstart's fairseq-train command with the pre-training model's sizes, GELU (what
    the transfer needs), CVLM fusion, label-smoothed cross-entropy, validation and checkpoint_best
    every --validate-interval-updates (not per epoch: at 10 % an epoch is a few updates)."""
    sizes = [option for side in ("encoder", "decoder") for option in (
        f"--{side}-embed-dim", args.embed_dim, f"--{side}-ffn-embed-dim", 4 * args.embed_dim,
        f"--{side}-attention-heads", 4, f"--{side}-layers", args.layers)]
    every = args.validate_interval_updates
    options = ["--fusion", "cvlm", "--criterion", "label_smoothed_cross_entropy", "--activation-fn", "gelu", *sizes,
               "--validate-interval", 10 ** 6, "--save-interval", 10 ** 6, "--validate-interval-updates", every,
               "--save-interval-updates", every, "--keep-interval-updates", 1, "--patience", patience]
    schedule = SimpleNamespace(lr=args.lr, warmup_updates=args.warmup_updates, max_tokens=args.max_tokens,
                               max_update=updates, seed=args.seed, tensorboard=False)
    return quickstart.train_command(data, save, [str(o) for o in options], schedule, args.pairs)


def initial_checkpoint(work: Path, data: Path, variant: str, args) -> Path:
    """Step 3: the pre-training checkpoint of ``variant`` as a multimodal_translation checkpoint."""
    output = work / "init" / f"{variant}.pt"
    if not output.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
        translation = translation_command(data, work / "init", args, args.mmt_updates)[1:]  # without fairseq-train
        run([PYTHON, REPO / "scripts" / "pretraining_to_translation.py",
             save_dir(work, f"pretraining-{variant}") / "checkpoint_last.pt", output, *translation],
            log_file=work / f"init-{variant}.log")
    return output


def mmt_runs(args) -> dict:
    """Run name -> (initialisation, share of the data, to best?) of every MMT row of the tables."""
    runs = {}
    for fraction in args.fractions:
        for init in (SCRATCH, "all"):
            runs[f"{init}-{percent(fraction)}"] = (init, fraction, False)
    for init in (SCRATCH, *PRETRAININGS):
        runs[f"{init}-{percent(args.ablation_fraction)}"] = (init, args.ablation_fraction, False)
    for fraction in args.curve_fractions:
        for init in (SCRATCH, "all"):
            runs[f"{init}-{percent(fraction)}-to-best"] = (init, fraction, True)
    return runs


def score(work: Path, data: Path, checkpoints: dict, args) -> dict:
    """Step 5: name -> {direction: sacreBLEU entry} on the test split; one scripts/evaluate.py for
    every checkpoint not scored yet, each model's scores kept in WORK/scores/NAME.json."""
    scores = work / "scores"
    todo = {name: path for name, path in checkpoints.items() if not (scores / f"{name}.json").exists()}
    if todo:
        pending = scores / "pending.json"
        scores.mkdir(parents=True, exist_ok=True)
        run([PYTHON, REPO / "scripts" / "evaluate.py", "--data", data, "--splits", "test", "--lang-pairs",
             ",".join(args.pairs), "--beam", args.beam, "--output", pending,
             *[part for name, path in todo.items() for part in ("--checkpoint", f"{name}={path}")]],
            log_file=work / "evaluate.log")
        results = json.loads(pending.read_text(encoding="utf-8"))
        for name in todo:
            atomic_write_text(scores / f"{name}.json", json.dumps(results[name]["test"], indent=1, ensure_ascii=False))
        pending.unlink()
    return {name: json.loads((scores / f"{name}.json").read_text(encoding="utf-8")) for name in checkpoints}


def updates_of(checkpoint: Path) -> int:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return state["optimizer_history"][-1]["num_updates"]


def bleu_table(leading_header, rows, pairs, trailing_header=()) -> str:
    """rows: (leading cells, {direction: BLEU}, trailing cells); columns: the leading ones, BLEU
    of each direction of ``pairs`` and their average (one decimal), the trailing ones."""
    lines = [[*lead, *(f"{bleu[pair]:.1f}" for pair in pairs), f"{sum(bleu[p] for p in pairs) / len(pairs):.1f}",
              *trail] for lead, bleu, trail in rows]
    return markdown_table([*leading_header, *pairs, "average", *trailing_header], lines,
                          align="l" * len(leading_header))


def tables(work: Path, runs: dict, bleu: dict, args) -> str:
    def data_cell(fraction):
        return f"{share_label(fraction)} ({training_sentences(args.num_train, fraction)} sentences)"

    def rows(names, trailing=lambda name: []):
        return [([INIT_LABELS[runs[name][0]], data_cell(runs[name][1])], bleu[name], trailing(name)) for name in names]

    table1 = [f"{init}-{percent(f)}" for f in args.fractions for init in (SCRATCH, "all")]
    table2 = [f"{init}-{percent(args.ablation_fraction)}" for init in (SCRATCH, *PRETRAININGS)]
    table3 = [f"{init}-{percent(f)}-to-best" for init in (SCRATCH, "all") for f in args.curve_fractions]

    def stopping(name):
        folder = save_dir(work, name)
        return [updates_of(folder / "checkpoint_best.pt"), updates_of(folder / "checkpoint_last.pt")]

    header = ["initialisation", "training data (per direction)"]
    budget = (f"same sizes; {args.mmt_updates} updates each (pre-training: {args.pretraining_updates} updates of "
              f"{args.pretraining_batch_size} examples); checkpoint of lowest validation loss; test split of "
              f"{args.num_test} sentences, beam {args.beam}, sacreBLEU")
    return (f"## Table 1: MMT from scratch vs from the pre-training checkpoint\n\n{budget}\n\n"
            f"{bleu_table(header, rows(table1), args.pairs)}\n\n"
            f"## Table 2: pre-training objectives (MMT on {share_label(args.ablation_fraction)} of the data)\n\n{budget}\n\n"
            f"{bleu_table(header, rows(table2), args.pairs)}\n\n"
            "Carried into the MMT model from every pre-training variant: the piece embeddings, the region "
            "projection and the generation encoder and decoder layers. Without the generation objectives those "
            "layers never got a gradient: they are the pre-training model's random initial values, so only the "
            "embeddings and the region projection (trained by xMLM/MMLM/MRM/VLM) carry anything learned. "
            "Without the understanding objectives nothing of what they train is carried (the understanding "
            "encoder is not), but the embeddings and region projection are trained by xDAE/IC/DIC instead.\n\n"
            f"## Table 3: the paper's Fig. 5, each run trained to its best validation loss\n\n"
            f"Validation every {args.validate_interval_updates} updates, stopped after {args.patience} without "
            f"improvement (fairseq's --patience) or at {args.max_mmt_updates} updates; checkpoint_best.pt scored "
            f"(test split, beam {args.beam}, sacreBLEU).\n\n"
            f"{bleu_table(header, rows(table3, stopping), args.pairs, ['best at update', 'stopped at update'])}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args(argv)
    try:
        args.pairs = [f"{s}-{t}" for s, t in parse_lang_pairs(args.lang_pairs)]
        args.fractions = fractions(args.fractions, "--fractions")
        args.curve_fractions = fractions(args.curve_fractions, "--curve-fractions")
        fractions(str(args.ablation_fraction), "--ablation-fraction")
    except ValueError as error:
        parser.error(str(error))
    langs = ["en", *dict.fromkeys(lang for pair in args.pairs for lang in pair.split("-") if lang != "en")]
    if any("en" not in pair.split("-") for pair in args.pairs):
        parser.error("--lang-pairs: every direction must have English on one side (the corpus is binarized "
                     "English-centred)")
    began, work = time.time(), args.work_dir.resolve()
    data = prepare(work, args, langs)
    runs = mmt_runs(args)
    datasets = {fraction: subset(work, data, fraction, args.seed) for _, fraction, _ in runs.values()}
    train_runs(work, {f"pretraining-{variant}": lambda save, objectives=objectives: pretraining_command(
        data, save, args, objectives) for variant, objectives in PRETRAININGS.items()}, args.parallel)
    inits = {variant: initial_checkpoint(work, data, variant, args) for variant in PRETRAININGS}

    def command(init, fraction, to_best):
        start = [] if init == SCRATCH else ["--finetune-from-model", inits[init]]
        updates, patience = (args.max_mmt_updates, args.patience) if to_best else (args.mmt_updates, 0)
        return lambda save: translation_command(datasets[fraction], save, args, updates, patience) + start

    train_runs(work, {name: command(*run) for name, run in runs.items()}, args.parallel)
    bleu = {name: {pair: entry["bleu"] for pair, entry in scores.items()}
            for name, scores in score(work, data, {name: save_dir(work, name) / "checkpoint_best.pt"
                                                   for name in runs}, args).items()}
    text = tables(work, runs, bleu, args)
    atomic_write_text(work / "tables.md", text)
    atomic_write_text(work / "results.json", json.dumps({name: {"initialisation": init, "fraction": fraction,
                                                                "to_best": to_best, "bleu": bleu[name]}
                                                         for name, (init, fraction, to_best) in runs.items()},
                                                        indent=1))
    from m3p_fairseq.evaluation.figures import plot_curves

    curves = {INIT_LABELS[init]: [(f, sum(bleu[f"{init}-{percent(f)}-to-best"].values()) / len(args.pairs))
                                  for f in args.curve_fractions] for init in (SCRATCH, "all")}
    plot_curves(curves, work / "fig5_low_resource.png", "training data used (%)", "BLEU (average over directions)",
                "MMT trained to its best validation loss",
                log_x=True)
    print(text)
    print(f"total {time.time() - began:.0f} s; tables in {work / 'tables.md'}")


if __name__ == "__main__":
    main()
