"""The paper's analysis figures from trained checkpoints, as PNG (plus the plotted numbers as JSON
beside each PNG, so that a figure can be checked or redrawn).

    m3p-figures source-masking --data DATA --checkpoint text-only=A.pt --checkpoint m3p=B.pt \
        --output fig7_source_masking.png                         # Fig. 7: BLEU vs share of masked source words
    m3p-figures low-resource --data DATA --run m3p 0.1 C10.pt --run m3p 1.0 C100.pt ... \
        --output fig5_low_resource.png                           # Fig. 5: BLEU vs share of training data
    m3p-figures tsne --data DATA --checkpoint text-only=A.pt --checkpoint m3p=B.pt \
        --output fig4_tsne.png                                   # Fig. 4: pooled encoder states, by language
    m3p-figures cvlm-attention --data DATA --checkpoint B.pt --index 0 \
        --images-dir RAW/images --output fig6_cvlm_attention.png  # Fig. 6: CVLM attention over patches

BLEU is case-sensitive detokenized sacreBLEU, averaged over the directions scored (all of a
model's directions, or --lang-pairs). The training data for the low-resource runs comes from
``python -m preprocess.subsample`` (see docs/evaluation.md).
"""

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.evaluation import analysis, figures
from m3p_fairseq.evaluation.probes import MASK_WORD, first_sentences, with_masked_source
from m3p_fairseq.evaluation.scoring import average, corpus_scores
from m3p_fairseq.evaluation.selection import UnknownDirectionError, select_directions
from m3p_fairseq.evaluation.selection import named_checkpoints as checkpoints_by_name
from m3p_fairseq.evaluation.translation import direction_dataset, load, translate_dataset
from m3p_fairseq.logging_setup import setup_logging

# a checkpoint given without NAME= is named by its folder (runs/m3p/checkpoint_best.pt: m3p)
named_checkpoints = partial(checkpoints_by_name, default_name=lambda path: path.parent.name or path.stem)


def directions(task, args, name: str):
    return select_directions(task, args.lang_pairs, f"checkpoint {name}")


def bleu(models, task, dataset, args) -> float:
    return corpus_scores(*translate_dataset(models, task, dataset, args.beam, args.batch_size, args.max_len_b))["bleu"]


def write_points(path: Path, points: dict) -> None:
    atomic_write_text(Path(path).with_suffix(".json"), json.dumps(points, indent=1, ensure_ascii=False))


def source_masking(args, parser) -> Path:
    """Fig. 7: every system translates the split with 0..100 % of each source's words replaced by
    <mask> (or --mask-word); a higher ratio masks the words of a lower one and more (seeded per sentence)."""
    ratios = [float(r) for r in args.ratios.split(",")]
    curves, per_direction = {}, {}
    for name, checkpoint in named_checkpoints(args.checkpoint, parser).items():
        models, task = load(checkpoint, args.data)
        pairs = directions(task, args, name)
        datasets = {f"{s}-{t}": direction_dataset(task, args.split, s, t) for s, t in pairs}
        for ratio in ratios:
            scores = {}
            for pair, dataset in datasets.items():
                masked = with_masked_source(dataset, task, ratio, args.seed, args.mask_word,
                                            max_sentences=args.max_sentences)
                scores[pair] = bleu(models, task, masked, args)
            curves.setdefault(name, []).append((ratio, average(list(scores.values()))))
            per_direction.setdefault(name, {})[str(ratio)] = scores
            print(f"{name} mask ratio {ratio:.0%}: BLEU {curves[name][-1][1]:.1f} {scores}",
                  file=sys.stderr, flush=True)
    write_points(args.output, {"split": args.split, "mask_word": args.mask_word, "seed": args.seed,
                               "average_bleu": curves, "bleu": per_direction})
    return figures.plot_curves(curves, args.output, "masked source words (%)", "BLEU (average over directions)",
                               f"Source masking ({args.split})")


def low_resource(args, parser) -> Path:
    """Fig. 5: BLEU of systems trained on a share of the training data, against that share."""
    curves, per_direction = {}, {}
    for name, fraction, checkpoint in args.run:
        if not Path(checkpoint).is_file():
            parser.error(f"--run {name} {fraction} {checkpoint}: file not found")
        models, task = load(checkpoint, args.data)
        scores = {}
        for s, t in directions(task, args, name):
            dataset = first_sentences(direction_dataset(task, args.split, s, t), args.max_sentences)
            scores[f"{s}-{t}"] = bleu(models, task, dataset, args)
        curves.setdefault(name, []).append((float(fraction), average(list(scores.values()))))
        per_direction.setdefault(name, {})[fraction] = scores
        print(f"{name} at {float(fraction):.0%} of the training data: BLEU {curves[name][-1][1]:.1f} {scores}",
              file=sys.stderr, flush=True)
    write_points(args.output, {"split": args.split, "average_bleu": curves, "bleu": per_direction})
    return figures.plot_curves(curves, args.output, "training data used (%)", "BLEU (average over directions)",
                               f"Low-resource ({args.split})")


def tsne(args, parser) -> Path:
    """Fig. 4: the first --max-sentences sentences of the split in every source language (the
    same sentences in a multi-way split), their pooled text-encoder states, t-SNE to 2-d."""
    from sklearn.manifold import TSNE

    panels, mixing = {}, {}
    for name, checkpoint in named_checkpoints(args.checkpoint, parser).items():
        models, task = load(checkpoint, args.data)
        by_source = {}
        for s, t in directions(task, args, name):
            by_source.setdefault(s, (s, t))  # one direction per source language
        vectors, labels = [], []
        for src, (s, t) in by_source.items():
            dataset = direction_dataset(task, args.split, s, t)
            count = min(args.max_sentences, len(dataset))
            vectors.append(analysis.pooled_representations(models[0], dataset, list(range(count))))
            labels += [src] * count
        vectors = np.concatenate(vectors)
        perplexity = min(args.perplexity, (len(vectors) - 1) / 3)
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=args.seed).fit_transform(vectors)
        # how separated the languages are, measured in the encoder space (t-SNE distorts distances)
        mixing[name] = analysis.same_label_neighbours(vectors, labels)
        panels[name] = (points, labels)
        print(f"{name}: same-language share of the 10 nearest neighbours {mixing[name]:.3f}", file=sys.stderr)
    write_points(args.output, {name: {"points": points.round(3).tolist(), "languages": labels,
                                      "same_language_neighbours": round(mixing[name], 4)}
                               for name, (points, labels) in panels.items()})
    panels = {f"{name}\n(same language among 10 nearest: {mixing[name]:.2f})": panel
              for name, panel in panels.items()}
    return figures.plot_tsne(panels, args.output, f"t-SNE of pooled encoder states ({args.split})")


def cvlm_attention(args, parser) -> Path:
    """Fig. 6: for sentence --index of the split, in each source language, the CVLM attention of
    its words over the image patches (mean over heads and a word's pieces), over the image when
    --images-dir is given."""
    (name, checkpoint), = named_checkpoints([args.checkpoint], parser).items()
    models, task = load(checkpoint, args.data)
    model = models[0]
    by_source = {}
    for s, t in directions(task, args, name):
        by_source.setdefault(s, (s, t))
    rows, image_ids, points, sentences = [], set(), {}, {}
    for src, (s, t) in by_source.items():
        dataset = direction_dataset(task, args.split, s, t)
        if not 0 <= args.index < len(dataset):
            parser.error(f"--index {args.index}: split {args.split!r} has {len(dataset)} sentences ({s}-{t})")
        weights = analysis.cvlm_attention(model, dataset, args.index).numpy()
        dictionary = dataset.src_dict
        # one map per word (its pieces' attention averaged); the target-language tag and </s>
        # carry no word of the sentence
        words = analysis.word_spans(analysis.source_pieces(dataset, args.index),
                                    ignored=[dictionary[dataset.src[args.index][0]], dictionary[dictionary.eos()]])
        words = words[:args.max_words]
        word_weights = np.stack([weights[positions].mean(axis=0) for _, positions in words])
        text = dictionary.string(dataset.src[args.index][1:], "sentencepiece")
        rows.append((src, [word for word, _ in words], word_weights))
        sentences[src] = text
        points[src] = {"sentence": text, "words": [word for word, _ in words],
                       "weights": word_weights.round(4).tolist()}
        image_ids.add(analysis.image_id_of(dataset, args.index))
    if len(image_ids) != 1:
        raise ValueError(f"sentence {args.index} has different images in different directions: {sorted(image_ids)}")
    image_id = image_ids.pop()
    grid = analysis.patch_grid(rows[0][2].shape[1], parse_grid(args.patch_grid))
    image = None
    if args.images_dir:
        from PIL import Image

        image_file = Path(args.images_dir) / image_id
        if not image_file.is_file():
            parser.error(f"--images-dir: {image_file} (image of sentence {args.index}) not found")
        image = np.asarray(Image.open(image_file).convert("RGB"))
    write_points(args.output, {"image_id": image_id, "grid": grid, "languages": points})
    return figures.plot_attention(rows, grid, args.output, image,
                                  f"CVLM attention over image patches ({name}, {args.split} #{args.index}, {image_id})",
                                  sentences)


def parse_grid(text: Optional[str]):
    if not text:
        return None
    rows, sep, columns = text.lower().partition("x")
    if not sep:
        raise ValueError(f"--patch-grid {text}: expected ROWSxCOLUMNS, e.g. 7x7")
    return int(rows), int(columns)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="figure", required=True)

    def command(name, function, help_text, output):
        sub = commands.add_parser(name, help=help_text, description=function.__doc__)
        sub.set_defaults(function=function)
        sub.add_argument("--data", required=True, help="data directory (as for fairseq-generate)")
        sub.add_argument("--split", default="test")
        sub.add_argument("--lang-pairs", help="only these directions (each model must translate them); "
                                               "default: all of the model's")
        sub.add_argument("--output", type=Path, default=Path(output), help=f"PNG file (default {output})")
        sub.add_argument("--seed", type=int, default=1)
        return sub

    def translating(sub):
        sub.add_argument("--beam", type=int, default=5)
        sub.add_argument("--batch-size", type=int, default=64)
        sub.add_argument("--max-len-b", type=int, default=200, help="longest hypothesis, in tokens")
        sub.add_argument("--max-sentences", type=int, help="only the first N sentences of each direction")

    sub = command("source-masking", source_masking, "Fig. 7: BLEU vs masked source words", "fig7_source_masking.png")
    sub.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH; repeat for each system")
    sub.add_argument("--ratios", default="0,0.2,0.4,0.6,0.8,1", help="shares of source words masked")
    sub.add_argument("--mask-word", default=None,
                     help=f"a word (e.g. {MASK_WORD}) put into the raw text for each masked source word; "
                          "default: each piece of a masked word becomes the dictionary's <mask>, the symbol "
                          "MMA trains with")
    translating(sub)
    sub = command("low-resource", low_resource, "Fig. 5: BLEU vs share of training data", "fig5_low_resource.png")
    sub.add_argument("--run", nargs=3, action="append", required=True, metavar=("SYSTEM", "FRACTION", "CHECKPOINT"),
                     help="a system trained on FRACTION (0-1] of the training data; repeat")
    translating(sub)
    sub = command("tsne", tsne, "Fig. 4: t-SNE of pooled encoder states by language", "fig4_tsne.png")
    sub.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH; one panel each")
    sub.add_argument("--max-sentences", type=int, default=300, help="sentences per language")
    sub.add_argument("--perplexity", type=float, default=30.0)
    sub = command("cvlm-attention", cvlm_attention, "Fig. 6: CVLM attention heat maps", "fig6_cvlm_attention.png")
    sub.add_argument("--checkpoint", required=True, help="a --fusion cvlm checkpoint (NAME=PATH or PATH)")
    sub.add_argument("--index", type=int, default=0, help="the sentence (line of the split) to draw")
    sub.add_argument("--images-dir", type=Path, help="folder of the image files (named by image id): draw "
                                                     "the heat maps over the image rather than the patch grid")
    sub.add_argument("--patch-grid", help="ROWSxCOLUMNS of the patches; default: a square")
    sub.add_argument("--max-words", type=int, default=12, help="heat maps of at most this many source words")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)  # fairseq's INFO lines would bury the progress lines
    try:
        path = args.function(args, parser)
    except UnknownDirectionError as error:
        parser.error(str(error))
    print(f"wrote {path} and {Path(path).with_suffix('.json')}")
