"""Algorithm 1 of vlp-for-mmt-modality-loss.md on the synthetic quickstart data, through the real
command lines (docs/vlp_mmt.md):

    python examples/vlp_mmt/recipe.py [--work-dir work/vlp_mmt] [--table6]

1. data: the quickstart's synthetic corpus (en-de; half of the training sources degraded, a
   clean and a degraded test set), and a second synthetic corpus of image-caption pairs (other
   scenes, English only: the "external" VLP data of step 2); timm ViT features of both;
   object tags = each scene's true colour and shape words (preprocess/write_synthetic_tags.py);
2. fairseq-train --task vlp_pretraining on the external image-caption pairs (Alg. 1, step 2);
3. the same, continued on the MMT training set's (image, English source) pairs (steps 3-4);
4. stage 1: fairseq-train --task multimodal_translation --arch vlp_mmt_tiny
   --pretrained-vlp-encoder ... --freeze-encoder --criterion vlp_mmt_loss (step 5);
5. stage 2: everything trained, from stage 1's best checkpoint (step 6);
6. fairseq-generate on the clean test set, and scripts/evaluate.py (beam 5, sacreBLEU) on the
   clean and degraded test sets.

With --table6 it also trains the other rows of the paper's Table 6 (and a text-only model and
m3P) with the same number of MMT updates each, and writes table6.md. Every step whose output
exists is skipped, so an interrupted run resumes (each fairseq-train resumes its own
checkpoint_last.pt).
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from m3p_fairseq.atomic_io import atomic_write_text

# examples/quickstart/run.py, whose data preparation, training and scoring this recipe reuses,
# loaded from its file (examples/ is not a package, and nothing here puts a folder on sys.path)
_spec = importlib.util.spec_from_file_location("quickstart_run", Path(__file__).resolve().parents[1] / "quickstart" / "run.py")
quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quickstart)

M3P, REPO, evaluate, run, train, write_directions = (quickstart.M3P, quickstart.REPO, quickstart.evaluate,
                                                     quickstart.run, quickstart.train_unless_finished,
                                                     quickstart.write_directions)

PAIR = "en-de"
PYTHON = sys.executable
FIXED_LAMBDA = ["--criterion", "vlp_mmt_loss", "--modality-lambda", "0.4"]
LEARNED_LAMBDA = ["--criterion", "vlp_mmt_loss", "--modality-lambda", "learned"]
CROSS_ENTROPY = ["--criterion", "vlp_mmt_loss", "--modality-lambda", "0"]
# the quickstart's m3P without the MMA options that need augmented views (not extracted here)
M3P_WITHOUT_VIEWS = [option for i, option in enumerate(M3P)
                     if option not in ("--mma-image-view-prob", "--mma-view-negatives")
                     and M3P[i - 1] != "--mma-image-view-prob"]
FINAL = "vlp-learned"
# system -> its row in the table, in the order of the paper's Table 6
ROWS = {
    "text-only": "text-only transformer",
    "end-to-end": "end-to-end without VLP (CE)",
    "vlp-ce-stage1": "VLP + stage 1, frozen encoder (CE)",
    "vlp-ce-stage2": "VLP + stage 2 (CE)",
    "vlp-fixed": "VLP + stage 2 + last-layer modality loss, lambda = 0.4",
    FINAL: "VLP + stage 2 + last-layer modality loss, learned lambda_j",
    "m3p": "m3P (quickstart options, without augmented views)",
}


def add_options(parser):
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "vlp_mmt")
    parser.add_argument("--num-train", type=int, default=3000, help="MMT training images")
    parser.add_argument("--num-valid", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--num-captions", type=int, default=3000, help="external image-caption pairs (step 2)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--spm-vocab-size", type=int, default=1000)
    parser.add_argument("--vlp-updates", type=int, default=300, help="updates of each VLP step (2 and 3)")
    parser.add_argument("--mmt-updates", type=int, default=600,
                        help="MMT updates of every system; two-stage systems split them between the stages")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-updates", type=int, default=100)
    parser.add_argument("--layers", type=int, default=3, help="encoder and decoder layers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--table6", action="store_true", help="also train the other rows of Table 6")
    parser.add_argument("--object-tags", choices=["auto", "no"], default="auto",
                        help="--object-tags of every vlp_mmt model: auto reads the synthetic tags (the true "
                             "colour/shape words, which test_degraded masks in the sources), no leaves them out "
                             "(also of the VLP pre-training)")


def prepare(work: Path, args):
    """Step 1; returns (MMT data directory, VLP caption data directory)."""
    raw, data = work / "raw", work / "data-bin"
    captions_raw, captions = work / "captions-raw", work / "captions-bin"
    work.mkdir(parents=True, exist_ok=True)
    if not (raw / "test_degraded.image_ids").exists():
        run([PYTHON, "-m", "preprocess.make_synthetic_corpus", "--output-dir", raw, "--langs", "en,de,fr",
             "--num-train", args.num_train, "--num-valid", args.num_valid, "--num-test", args.num_test,
             "--image-size", args.image_size, "--seed", args.seed])
        write_directions(raw, degraded_fraction=0.5, seed=args.seed)
    if not (captions_raw / "valid.image_ids").exists():
        # other scenes (another seed); the German side is only there because binarize reads pairs
        run([PYTHON, "-m", "preprocess.make_synthetic_corpus", "--output-dir", captions_raw, "--langs", "en,de",
             "--num-train", args.num_captions, "--num-valid", args.num_valid, "--num-test", 1,
             "--image-size", args.image_size, "--seed", args.seed + 1000])
    quickstart.extract_features(raw, data / "image_features.h5", ["train", "valid", "test"], args.image_size,
                                work / "extract.log")
    quickstart.extract_features(captions_raw, captions / "image_features.h5", ["train", "valid"], args.image_size,
                                work / "extract-captions.log")
    run([PYTHON, "-m", "preprocess.binarize", "--raw-dir", raw, "--dest-dir", data, "--lang-pairs", PAIR,
         "--splits", "train,valid,test,test_degraded", "--spm-vocab-size", args.spm_vocab_size,
         "--spm-user-defined-symbols", "[MASK]"], log_file=work / "binarize.log")
    # the captions in the translation data's vocabulary: the pre-trained encoder's embeddings fit
    run([PYTHON, "-m", "preprocess.binarize", "--raw-dir", captions_raw, "--dest-dir", captions,
         "--lang-pairs", PAIR, "--splits", "train,valid", "--spm-model", data / "spm.model",
         "--dict", data / "dict.txt"], log_file=work / "binarize-captions.log")
    for corpus, store, splits in ((raw, data, "train,valid,test"), (captions_raw, captions, "train,valid")):
        run([PYTHON, "-m", "preprocess.write_synthetic_tags", "--raw-dir", corpus,
             "--features", store / "image_features.h5", "--splits", splits])
    return data, captions


def common(args, save_dir: Path, updates: int):
    return [*quickstart.optimizer_options(args, save_dir, updates, args.warmup_updates, log_interval=50),
            "--max-tokens", args.max_tokens, "--dropout", "0.1"]


def restart_from(checkpoint: Path):
    """A new run initialised from another's weights (fairseq reads it only while the run's own
    checkpoint_last.pt does not exist, so a resumed run continues itself)."""
    return ["--restore-file", checkpoint, "--reset-optimizer", "--reset-dataloader", "--reset-meters",
            "--reset-lr-scheduler"]


def pretrain(work: Path, data: Path, captions: Path, args) -> Path:
    """Steps 2-3; returns the encoder checkpoint."""
    # without tags the encoder is pre-trained on the input the MMT models get: Cat[Emb(x), FFN(v)]
    untagged = ["--no-object-tags"] if args.object_tags == "no" else []
    vlp = ["--task", "vlp_pretraining", "--caption-lang", "en", "--arch", "vlp_encoder_tiny",
           "--encoder-layers", args.layers, "--criterion", "vlp_pretraining_loss", *untagged]
    external = train(work, "vlp-captions", lambda save: ["fairseq-train", captions, *vlp,
                                                         *common(args, save, args.vlp_updates)], args.vlp_updates)
    continued = train(work, "vlp-mmt-pairs", lambda save: [
        "fairseq-train", data, *vlp, *common(args, save, args.vlp_updates),
        *restart_from(external / "checkpoint_last.pt")], args.vlp_updates)
    return continued / "checkpoint_last.pt"


def mmt(args, data: Path, save: Path, updates: int, options):
    return ["fairseq-train", data, "--task", "multimodal_translation", "--lang-pairs", PAIR,
            "--label-smoothing", "0.1", *common(args, save, updates), *options]


def vlp_mmt_options(args):
    return ["--arch", "vlp_mmt_tiny", "--encoder-layers", args.layers, "--decoder-layers", args.layers,
            "--object-tags", args.object_tags]


def two_stage(work: Path, data: Path, encoder: Path, name: str, loss, args):
    """Steps 5-6, each with half of the MMT updates; returns (stage 1, stage 2) save dirs."""
    half = args.mmt_updates // 2
    stage1 = train(work, f"{name}-stage1", lambda save: mmt(args, data, save, half, [
        *vlp_mmt_options(args), "--pretrained-vlp-encoder", encoder, "--freeze-encoder", *loss]), half)
    stage2 = train(work, f"{name}-stage2", lambda save: mmt(args, data, save, half, [
        *vlp_mmt_options(args), *loss, *restart_from(stage1 / "checkpoint_best.pt")]), half)
    return stage1, stage2


def systems(work: Path, data: Path, encoder: Path, args) -> dict:
    """name -> checkpoint of every system to score."""
    _, final = two_stage(work, data, encoder, FINAL, LEARNED_LAMBDA, args)
    checkpoints = {FINAL: final}
    if args.table6:
        updates = args.mmt_updates
        text_only = train(work, "text-only", lambda save: mmt(args, data, save, updates, [
            "--arch", "m3p_transformer_tiny", "--fusion", "none", "--encoder-layers", args.layers,
            "--decoder-layers", args.layers, "--criterion", "label_smoothed_cross_entropy"]), updates)
        end_to_end = train(work, "end-to-end", lambda save: mmt(args, data, save, updates, [
            *vlp_mmt_options(args), *CROSS_ENTROPY]), updates)
        ce1, ce2 = two_stage(work, data, encoder, "vlp-ce", CROSS_ENTROPY, args)
        _, fixed = two_stage(work, data, encoder, "vlp-fixed", FIXED_LAMBDA, args)
        m3p = train(work, "m3p", lambda save: mmt(args, data, save, updates, [
            "--arch", "m3p_transformer_tiny", "--encoder-layers", args.layers, "--decoder-layers", args.layers,
            *M3P_WITHOUT_VIEWS]), updates)
        checkpoints.update({"text-only": text_only, "end-to-end": end_to_end, "vlp-ce-stage1": ce1,
                            "vlp-ce-stage2": ce2, "vlp-fixed": fixed, "m3p": m3p})
    return {name: save_dir / "checkpoint_last.pt" for name, save_dir in checkpoints.items()}


def table(results: dict, args) -> str:
    lines = [f"| system ({PAIR}, {args.mmt_updates} MMT updates each) | BLEU test (clean) | BLEU test_degraded |",
             "|---|---|---|"]
    for name, row in ROWS.items():
        if name not in results:
            continue
        scores = results[name]
        lines.append(f"| {row} | {scores['test'][PAIR]['bleu']:.1f} | {scores['test_degraded'][PAIR]['bleu']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args(argv)
    began = time.time()
    work = args.work_dir.resolve()
    data, captions = prepare(work, args)
    encoder = pretrain(work, data, captions, args)
    checkpoints = systems(work, data, encoder, args)
    final = checkpoints[FINAL]
    generated = work / "generate-test.txt"
    if not generated.exists():
        run(["fairseq-generate", data, "--user-dir", REPO / "m3p_fairseq", "--task", "multimodal_translation",
             "--lang-pairs", PAIR, "--source-lang", "en", "--target-lang", "de", "--gen-subset", "test",
             "--path", final, "--beam", 5, "--batch-size", 64, "--remove-bpe", "sentencepiece"], log_file=generated)
    results = evaluate(data, checkpoints, work / "results.json", [PAIR])
    atomic_write_text(work / "table6.md", table(results, args))
    print(table(results, args))
    print(f"total {time.time() - began:.0f} s; hypotheses of fairseq-generate in {generated}, "
          f"scores in {work / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
