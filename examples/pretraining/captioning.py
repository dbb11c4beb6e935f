"""Multilingual image captioning with and without M3P pre-training (issue 19), on the synthetic
corpus, through the real command lines (docs/pretraining.md, "Image captioning"):

    python examples/pretraining/captioning.py [--work-dir work/captioning] [--langs en,de,fr,cs]

1. data: preprocess.make_synthetic_corpus (multi-way captions in every language), image features
   of a random-init ViT-tiny (as the quickstart), preprocess.binarize (one shared dictionary);
2. fairseq-train --task m3p_pretraining, every objective (IC/DIC/MMLM/MRM/VLM on English
   captions, as the paper; xMLM/xDAE on every language);
3. captioners with the same sizes and updates, fairseq-train --task m3p_captioning from random
   weights ("scratch") and with --finetune-from-model the pre-training checkpoint
   ("pretrained"), in the paper's two settings of Table 4: one captioner per language
   ("fine-tune on each": systems ``scratch``, ``pretrained``) and one on the captions of every
   language ("fine-tune on all": ``scratch-all``, ``pretrained-all``);
4. per language and system, fairseq-generate --target-lang LANG on the test images (beam 5) and
   scripts/score_captions.py (BLEU-4, CIDEr); OUT/scores/table.md has every system per language.

Every step whose output exists is skipped, so an interrupted run resumes (each fairseq-train
resumes its own checkpoint_last.pt). The synthetic corpus has one caption per image and
language, so every image has one reference here.
"""

import argparse
import time
from pathlib import Path

from synthetic_data import PYTHON, prepare, pretraining_command, quickstart, training_options

from m3p_fairseq.data.languages import split_languages

REPO, run, train = quickstart.REPO, quickstart.run, quickstart.train_unless_finished
# system -> (initialised from pre-training, Table 4's setting)
SYSTEMS = {"scratch": (False, "each"), "pretrained": (True, "each"),
           "scratch-all": (False, "all"), "pretrained-all": (True, "all")}


def add_options(parser):
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "captioning")
    parser.add_argument("--langs", default="en,de,fr,cs", help="caption languages (each gets its own captioners)")
    parser.add_argument("--num-train", type=int, default=2000, help="training images")
    parser.add_argument("--num-valid", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--spm-vocab-size", type=int, default=1000)
    parser.add_argument("--pretraining-updates", type=int, default=1000)
    parser.add_argument("--pretraining-batch-size", type=int, default=32)
    parser.add_argument("--captioning-updates", type=int, default=600, help="updates of every captioner")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-updates", type=int, default=100)
    parser.add_argument("--embed-dim", type=int, default=128, help="width of the pre-training and captioning models")
    parser.add_argument("--layers", type=int, default=2, help="layers of each encoder and of the decoder")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settings", default="each,all", help="Table 4's fine-tuning settings to run: each "
                                                                 "(one captioner per language), all (one for all)")


def pretrain(work: Path, data: Path, args) -> Path:
    """Step 2; returns the pre-training checkpoint."""
    save = train(work, "pretraining", lambda save_dir: pretraining_command(data, save_dir, args),
                 args.pretraining_updates)
    return save / "checkpoint_last.pt"


def captioner(work: Path, data: Path, langs, label: str, pretrained, args) -> Path:
    """Step 3: a captioner of ``langs`` from ``pretrained`` (None: random weights); returns its best
    checkpoint (lowest validation loss over those languages)."""
    updates = args.captioning_updates
    init = ["--finetune-from-model", pretrained] if pretrained else []
    save = train(work, f"captioning-{label}-{'pretrained' if pretrained else 'scratch'}", lambda save_dir: [
        "fairseq-train", data, "--task", "m3p_captioning", "--caption-langs", ",".join(langs),
        "--arch", "m3p_captioning_tiny",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", args.max_tokens,
        *training_options(args, save_dir, updates), *init], updates)
    return save / "checkpoint_best.pt"


def generate(work: Path, data: Path, lang: str, system: str, checkpoint: Path, args) -> Path:
    out = work / "generated" / f"test.{system}.{lang}.txt"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        run(["fairseq-generate", data, "--user-dir", REPO / "m3p_fairseq", "--task", "m3p_captioning",
             "--target-lang", lang, "--path", checkpoint, "--gen-subset", "test", "--beam", args.beam,
             "--batch-size", 64, "--max-len-b", 40, "--post-process", "sentencepiece"], log_file=out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args(argv)
    began = time.time()
    work = args.work_dir.resolve()
    langs = split_languages(args.langs, "--langs")
    data = prepare(work, args, langs)
    pretrained = pretrain(work, data, args)
    scores = work / "scores"
    settings = set(args.settings.split(","))
    for system, (from_pretraining, setting) in SYSTEMS.items():
        if setting not in settings:
            continue
        init = pretrained if from_pretraining else None
        shared = captioner(work, data, langs, "all", init, args) if setting == "all" else None
        generated = []
        for lang in langs:
            checkpoint = shared or captioner(work, data, [lang], lang, init, args)
            generated += ["--generated", f"{lang}={generate(work, data, lang, system, checkpoint, args)}"]
        run([PYTHON, REPO / "scripts" / "score_captions.py", "--data", data, "--split", "test", *generated,
             "--system", system, "--output-dir", scores])
    print((scores / "table.md").read_text())
    print(f"total {time.time() - began:.0f} s; tables in {scores}")


if __name__ == "__main__":
    main()
