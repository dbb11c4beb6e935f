"""The M3P paper's Table 2 on the synthetic corpus: multilingual image-text retrieval, mR per
language, for the four fine-tuning settings and a model without pre-training, through the real
command lines (docs/pretraining.md):

    python examples/pretraining/retrieval.py [--work-dir work/m3p_retrieval] [--langs en,de,fr,cs]

1. data: the synthetic corpus (one caption per scene in every language), timm ViT features
   (randomly initialised, fixed seed: no weights are downloaded), SentencePiece + binarize;
2. pre-training: ``fairseq-train --task m3p_pretraining`` (all seven objectives; captions paired
   with images in English only, as the paper);
3. fine-tuning: ``fairseq-train --task m3p_retrieval --finetune-from-model`` the pre-training
   checkpoint, ``--finetune-updates`` each:

   - ``w/o fine-tune``: the pre-training checkpoint as is, scored on every language;
   - ``fine-tune on en``: fine-tuned on English captions, scored on every language;
   - ``fine-tune on each``: one model per language, each scored on its own language (the
     English model is the one above, as in the paper, whose two rows share the en number);
   - ``fine-tune on all``: one model on the captions of every language merged;
   - ``without pre-training``: as "on all" but from random weights;
4. scoring: ``scripts/m3p_retrieval.py`` (Recall@1/5/10 both ways, mR) on the test split.

Writes WORK/table2.md (mR, rows = settings, columns = languages) and WORK/results.json (every
recall). Every step whose output exists is skipped, so an interrupted run resumes.
"""

import argparse
import json
import time
from pathlib import Path

from synthetic_data import PYTHON, prepare, quickstart

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.data.languages import split_languages
from m3p_fairseq.markdown import markdown_table

REPO, run = quickstart.REPO, quickstart.run
ZERO_SHOT, ON_EN, ON_EACH, ON_ALL, NO_PRETRAINING = (
    "w/o fine-tune", "fine-tune on en", "fine-tune on each", "fine-tune on all", "without pre-training (on all)")
SETTINGS = (ZERO_SHOT, ON_EN, ON_EACH, ON_ALL, NO_PRETRAINING)


def add_options(parser):
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "m3p_retrieval")
    parser.add_argument("--langs", default="en,de,fr,cs", help="caption languages (en first)")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-valid", type=int, default=50)
    parser.add_argument("--num-test", type=int, default=100, help="test images (each ranked against all)")
    parser.add_argument("--image-size", type=int, default=48, help="a multiple of 16: 48 gives a 3x3 patch grid, "
                                                                   "one patch per cell of the scenes")
    parser.add_argument("--spm-vocab-size", type=int, default=400)
    parser.add_argument("--pretrain-updates", type=int, default=6000)
    parser.add_argument("--finetune-updates", type=int, default=3000, help="updates of every fine-tuned model")
    parser.add_argument("--batch-size", type=int, default=16, help="examples (pre-training) or matched pairs "
                                                                   "(fine-tuning, each with 3 negatives) per update")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.0, help="the tiny model on the synthetic corpus learns "
                                                                   "matching faster without")
    parser.add_argument("--seed", type=int, default=1)


def common(args, save_dir: Path, updates: int):
    return ["--arch", "m3p_pretraining_tiny", "--criterion", "m3p_pretraining",
            *quickstart.optimizer_options(args, save_dir, updates, max(1, updates // 10), log_interval=100),
            "--batch-size", args.batch_size, "--dropout", args.dropout, "--cpu"]


def train(work: Path, name: str, command, updates: int) -> Path:
    """Returns the run's last checkpoint."""
    return quickstart.train_unless_finished(work, name, command, updates) / "checkpoint_last.pt"


def pretrain(work: Path, data: Path, args) -> Path:
    updates = args.pretrain_updates
    return train(work, "pretraining", lambda save: [
        "fairseq-train", data, "--task", "m3p_pretraining", "--caption-langs", "en",
        "--updates-per-epoch", max(1, updates // 4), *common(args, save, updates)], updates)


def finetune(work: Path, data: Path, name: str, langs, args, start) -> Path:
    updates = args.finetune_updates
    init = ["--finetune-from-model", start] if start else []
    return train(work, name, lambda save: [
        "fairseq-train", data, "--task", "m3p_retrieval", "--langs", ",".join(langs),
        *common(args, save, updates), *init], updates)


def score(work: Path, data: Path, name: str, checkpoint: Path, langs) -> dict:
    output = work / "scores" / f"{name}.json"
    if not output.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
        run([PYTHON, REPO / "scripts" / "m3p_retrieval.py", "--data", data, "--checkpoint", f"{name}={checkpoint}",
             "--langs", ",".join(langs), "--output", output], log_file=work / f"score-{name}.log")
    return json.loads(output.read_text())[name]


def table2(work: Path, data: Path, langs, args) -> dict:
    """{setting: {lang: scores}}."""
    pretrained = pretrain(work, data, args)
    on_en = finetune(work, data, "on-en", [langs[0]], args, pretrained)
    results = {ZERO_SHOT: score(work, data, "zero-shot", pretrained, langs),
               ON_EN: score(work, data, "on-en", on_en, langs), ON_EACH: {}}
    for lang in langs:
        if lang == langs[0]:
            results[ON_EACH][lang] = results[ON_EN][lang]
            continue
        model = finetune(work, data, f"on-{lang}", [lang], args, pretrained)
        results[ON_EACH][lang] = score(work, data, f"on-{lang}", model, [lang])[lang]
    results[ON_ALL] = score(work, data, "on-all", finetune(work, data, "on-all", langs, args, pretrained), langs)
    results[NO_PRETRAINING] = score(work, data, "no-pretraining",
                                    finetune(work, data, "no-pretraining", langs, args, None), langs)
    return results


def mr_table(results: dict, langs) -> str:
    return markdown_table(["setting (mR)", *langs], [[setting, *(f"{results[setting][lang]['mR']:.1f}"
                                                               for lang in langs)] for setting in SETTINGS])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args(argv)
    langs = split_languages(args.langs, "--langs")
    if len(langs) < 2 or langs[0] != "en":
        parser.error("--langs must start with en and name at least one other language")
    began, work = time.time(), args.work_dir.resolve()
    data = prepare(work, args, langs)
    results = table2(work, data, langs, args)
    atomic_write_text(work / "results.json", json.dumps(results, indent=2) + "\n")
    text = (f"Test split of {args.num_test} images; {args.pretrain_updates} pre-training updates, "
            f"{args.finetune_updates} fine-tuning updates per model.\n\n{mr_table(results, langs)}\n")
    atomic_write_text(work / "table2.md", text)
    print(text)
    print(f"total {time.time() - began:.0f} s; every recall in {work / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
