"""MLA commands around fairseq-train (see docs/mla.md for the whole recipe).

    python scripts/mla.py train-native --corpus CORPUS --output native.pt [--steps 600]
    python scripts/mla.py build-dict --captions CORPUS/train.de CORPUS/train.fr --output DATA/dict.nonnative.txt
                                     [--extend OLD_DICT]
    python scripts/mla.py evaluate --data CORPUS --split test --langs de,fr,cs --native native.pt
                                   --image-embeddings emb.h5 [--checkpoint checkpoint_best.pt] [--output r.json]

Images are embedded with ``python -m preprocess.mla_image_embeddings``; the two stages train with
``fairseq-train --user-dir m3p_fairseq --task mla_acquisition --arch mla_acquisition
--criterion mla_nlt|mla_le``.
"""

import argparse
import json
from pathlib import Path

from ..atomic_io import atomic_write_text


def train_native_command(args) -> None:
    from .native_training import train_native

    stats = train_native(args.corpus, args.output, lang=args.lang, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, image_size=args.image_size, width=args.width,
                         layers=args.layers, embed_dim=args.embed_dim)
    print(f"native model -> {args.output}: {stats['parameters']} parameters, final loss {stats['loss']:.4f}, "
          f"{stats['seconds']:.0f} s")


def build_dict_command(args) -> None:
    from ..data.mla_dataset import build_nonnative_dictionary

    d = build_nonnative_dictionary(args.captions, args.output, args.extend)
    print(f"{len(d)} symbols -> {args.output}")


def evaluate_command(args) -> None:
    from ..data.image_features import ImageFeatureStore
    from ..data.languages import split_languages
    from ..evaluation.mla_retrieval import evaluate_languages, load_mla_checkpoint
    from ..evaluation.retrieval import format_scores
    from ..models.native_dual_encoder import load_native
    from ..tasks.mla_acquisition import open_image_embeddings

    model = dictionary = None
    if args.checkpoint:
        overrides = {"data": str(args.data), "native_checkpoint": str(args.native)}
        if args.native_open_clip_model:
            overrides["native_open_clip_model"] = args.native_open_clip_model
        model, task = load_mla_checkpoint(args.checkpoint, overrides)
        native, dictionary = task.native, task.dictionary
    else:
        native = load_native(args.native, args.native_open_clip_model)
    images: ImageFeatureStore = open_image_embeddings(Path(args.image_embeddings), native.identity)
    results = evaluate_languages(Path(args.data), args.split, split_languages(args.langs, "--langs"), native, images,
                                 model=model, dictionary=dictionary, native_lang=args.native_lang)
    for lang, scores in results.items():
        print(format_scores(scores, lang))
    if args.output:
        report = {"checkpoint": args.checkpoint, "native": native.identity.to_dict(), "split": args.split,
                  "scores": results}
        atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/mla.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-native", help="train a small stand-in native dual encoder (symmetric InfoNCE)")
    p.add_argument("--corpus", required=True, type=Path, help="train.{lang}, train.image_ids and images/")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--lang", default="en")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--image-size", type=int, default=48, help="images are resized to this side")
    p.add_argument("--width", type=int, default=64, help="transformer width of both towers")
    p.add_argument("--layers", type=int, default=2, help="transformer layers of each tower")
    p.add_argument("--embed-dim", type=int, default=64, help="joint embedding size E")
    p.set_defaults(run=train_native_command)

    p = sub.add_parser("build-dict", help="the shared non-native word dictionary")
    p.add_argument("--captions", required=True, nargs="+", type=Path, help="non-native caption files")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--extend", type=Path, default=None,
                   help="dictionary of earlier languages: kept as is, new words appended (adding a language)")
    p.set_defaults(run=build_dict_command)

    p = sub.add_parser("evaluate", help="Recall@1/5/10 and mR per language")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--langs", default="de,fr,cs", help="non-native languages to score")
    p.add_argument("--native-lang", default="en")
    p.add_argument("--native", required=True, help="native dual encoder checkpoint")
    p.add_argument("--native-open-clip-model", default=None)
    p.add_argument("--image-embeddings", required=True)
    p.add_argument("--checkpoint", default=None, help="mla_acquisition checkpoint; without it the native text "
                                                      "tower reads every language (zero-shot)")
    p.add_argument("--output", default=None, help="write the scores as JSON")
    p.set_defaults(run=evaluate_command)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
