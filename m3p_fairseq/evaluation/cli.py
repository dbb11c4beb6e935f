"""Translate test splits with fairseq's beam search and score each direction with sacreBLEU.

    m3p-evaluate --data DATA --checkpoint text=ckpt_text.pt --checkpoint cvlm=ckpt_cvlm.pt \
        --splits test,test_degraded --beam 5 --output-dir results/ [--incongruent-images] [--off-target]
    m3p-evaluate --rescore results/ [--references-dir RAW] [--off-target]

Each checkpoint is loaded once and run over every direction it was trained on (or those of
them named by --lang-pairs). Hypotheses and references are detokenized (SentencePiece pieces
joined), so the scores are case-sensitive detokenized sacreBLEU and chrF, as in the paper; with
--references-dir the references are the raw target text. Prints a Markdown table per split
(directions as rows) and the sacreBLEU signatures.

With --output-dir OUT it also writes the paper's Table-1 layout (rows = systems, columns =
directions + average) as OUT/table.md and OUT/table.csv, the scores as OUT/results.json, and
every hypothesis as OUT/hyp/{system}/{split}.{src}-{tgt}.txt (references in OUT/ref/), which
--rescore OUT scores again without translating. When Multi30k test sets were scored
(test_2016_flickr, test_2017_flickr, test_2017_mscoco, test_2018_flickr), OUT/multi30k.md has the
m3P paper's layouts: Table 1 (test2016, 6 directions, Avg6), Table 2 (test2017 and MSCOCO, 4
directions each, Avg4) and test2018, BLEU and chrF. Every table names the sacreBLEU signature and
the commit of the code that scored it.

Probes: --incongruent-images translates each split a second time with every sentence given
another sentence's image (a seeded derangement) and writes OUT/image_awareness.md: BLEU with
correct and incongruent images and the drop. --without-images translates each split again with
every image withheld, as if missing (MDropNet's text-only path), as split SPLIT-without-images.
--off-target adds the share of hypotheses that py3langid does not detect as the target language.
"""

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.data.batch_keys import MultimodalModelInterface
from m3p_fairseq.data.data_dir import DataDirectory
from m3p_fairseq.data.text_lines import read_lines
from m3p_fairseq.evaluation import hypotheses as saved_hypotheses
from m3p_fairseq.evaluation.language_id import off_target_rate
from m3p_fairseq.evaluation.probes import with_incongruent_images, without_images
from m3p_fairseq.evaluation.scoring import corpus_scores
from m3p_fairseq.evaluation.selection import UnknownDirectionError, named_checkpoints, select_directions
from m3p_fairseq.evaluation.tables import (
    csv_table,
    directions_table,
    image_awareness_table,
    markdown_tables,
    multi30k_tables,
)
from m3p_fairseq.evaluation.translation import direction_dataset, load, translate_dataset
from m3p_fairseq.logging_setup import setup_logging
from m3p_fairseq.tasks.multimodal_translation import parse_lang_pairs

INCONGRUENT = "-incongruent"  # suffix of the pseudo-split translated with shuffled images
WITHOUT_IMAGES = "-without-images"  # suffix of the pseudo-split translated with every image withheld


def base_split(label: str) -> str:
    """The split a (pseudo-)split label was translated from."""
    return label.removesuffix(INCONGRUENT).removesuffix(WITHOUT_IMAGES)


def raw_references(references_dir: Path, split: str, src: str, tgt: str, expected: int) -> List[str]:
    """The original target sentences (as given to preprocess.binarize), not the ones decoded
    back from SentencePiece pieces, whose normalisation (NFKC) may differ."""
    raw = DataDirectory(references_dir)
    path = raw.text(raw.raw_stem(split, src, tgt, langs=(tgt,)), tgt)
    lines = read_lines(path)
    if len(lines) != expected:
        raise ValueError(f"{path} has {len(lines)} lines but split {split!r} has {expected} sentences")
    return lines


def reads_images(model) -> bool:
    """A plain fairseq model trained on the same data is text-only (batch_keys contract)."""
    return isinstance(model, MultimodalModelInterface) and model.image_feature_dim is not None


def score(hypotheses: List[str], references: List[str], tgt: str, off_target_candidates=None) -> dict:
    """A direction's entry of the results: BLEU, chrF, signatures, optionally the off-target
    rate (``off_target_candidates``: the languages detection chooses among, [] for all)."""
    scores = corpus_scores(hypotheses, references)
    if off_target_candidates is not None:
        scores["off_target"] = round(off_target_rate(hypotheses, tgt, off_target_candidates or None)[0], 2)
    scores["hypotheses"] = hypotheses
    return scores


def evaluate(checkpoints: Dict[str, str], data: str, splits: List[str], lang_pairs: Optional[str] = None,
             beam: int = 5, batch_size: int = 64, max_len_b: int = 200, references_dir: Optional[Path] = None,
             output_dir: Optional[Path] = None, incongruent_seed: Optional[int] = None,
             off_target: bool = False, langid_all_languages: bool = False, withhold_images: bool = False) -> dict:
    """results[system][split][direction] = scores; with ``incongruent_seed`` also
    results[system][split + "-incongruent"], with ``withhold_images`` also
    results[system][split + "-without-images"] (systems that read images only). ``lang_pairs``
    ("en-de,de-en"): only these directions, each of which every model must translate
    (UnknownDirectionError otherwise)."""
    results = {}
    for name, checkpoint in checkpoints.items():
        models, task = load(checkpoint, data)
        pairs = select_directions(task, lang_pairs, f"checkpoint {name}={checkpoint}")
        candidates = None if not off_target else ([] if langid_all_languages else
                                                  sorted({lang for pair in task.lang_pairs for lang in pair}))
        for split in splits:
            for src, tgt in pairs:
                dataset = direction_dataset(task, split, src, tgt)
                variants = [(split, dataset)]
                if incongruent_seed is not None and reads_images(models[0]):
                    shuffled, unchanged = with_incongruent_images(dataset, incongruent_seed)
                    if unchanged:
                        print(f"{name} {split} {src}-{tgt}: {unchanged} sentences keep their own image "
                              "(their image id is repeated in the split)", file=sys.stderr)
                    variants.append((split + INCONGRUENT, shuffled))
                if withhold_images and reads_images(models[0]):
                    variants.append((split + WITHOUT_IMAGES, without_images(dataset)))
                for label, variant in variants:
                    began = time.time()
                    hypotheses, references = translate_dataset(models, task, variant, beam, batch_size, max_len_b)
                    if references_dir is not None:
                        references = raw_references(references_dir, split, src, tgt, len(hypotheses))
                    scores = score(hypotheses, references, tgt, candidates)
                    results.setdefault(name, {}).setdefault(label, {})[f"{src}-{tgt}"] = scores
                    if output_dir is not None:
                        saved_hypotheses.save(output_dir, name, label, f"{src}-{tgt}", hypotheses, references)
                    print(f"{name} {label} {src}-{tgt}: BLEU {scores['bleu']:.1f} chrF {scores['chrf']:.1f}"
                          + (f" off-target {scores['off_target']:.1f}%" if "off_target" in scores else "")
                          + f" ({len(hypotheses)} sentences, {time.time() - began:.0f} s)", file=sys.stderr, flush=True)
    return results


def rescore(out_dir: Path, references_dir: Optional[Path] = None, off_target: bool = False,
            langid_all_languages: bool = False) -> dict:
    """The results of the hypotheses saved in ``out_dir``, scored again without translating."""
    results = {}
    for name, by_split in saved_hypotheses.saved(out_dir).items():
        languages = sorted({lang for scores in by_split.values() for d in scores for lang in d.split("-")})
        candidates = None if not off_target else ([] if langid_all_languages else languages)
        for label, by_direction in by_split.items():
            for direction, (hypotheses, references) in by_direction.items():
                src, tgt = direction.split("-")
                if references_dir is not None:
                    references = raw_references(references_dir, base_split(label), src, tgt,
                                                len(hypotheses))
                results.setdefault(name, {}).setdefault(label, {})[direction] = score(
                    hypotheses, references, tgt, candidates)
    return results


def source_commit() -> str:
    """The commit of the code that scores (``+dirty`` with uncommitted changes), or "unknown"
    outside a git checkout, so that a table says what produced it."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def write_reports(results: dict, out_dir: Path, metrics: List[str], ratio=None) -> None:
    """OUT/table.md, OUT/table.csv, OUT/results.json, OUT/multi30k.md when Multi30k test sets
    were scored (``ratio`` = (system A, system B) adds the row A / B) and, with
    incongruent-image runs, OUT/image_awareness.md."""
    commit = source_commit()
    atomic_write_text(out_dir / "table.md", markdown_tables(results, metrics)
                                + f"\n{signatures(results)}; commit `{commit}`\n")
    atomic_write_text(out_dir / "table.csv", csv_table(results, metrics))
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1, ensure_ascii=False))
    written = ["table.md", "table.csv", "results.json"]
    paper_layouts = multi30k_tables(results, [m for m in metrics if m in ("bleu", "chrf")], commit, ratio)
    if paper_layouts:
        atomic_write_text(out_dir / "multi30k.md", paper_layouts)
        written.append("multi30k.md")
    shuffled = {label.removesuffix(INCONGRUENT): label for by_split in results.values()
                for label in by_split if label.endswith(INCONGRUENT)}
    if shuffled:
        atomic_write_text(out_dir / "image_awareness.md", image_awareness_table(results, shuffled))
        written.append("image_awareness.md")
    print(f"wrote {', '.join(str(out_dir / name) for name in written)}", file=sys.stderr)


def signatures(results: dict) -> str:
    entries = [s for by_split in results.values() for scores in by_split.values() for s in scores.values()]
    bleu = sorted({s["signature"] for s in entries if "signature" in s})
    chrf = sorted({s["chrf_signature"] for s in entries if "chrf_signature" in s})
    return f"sacreBLEU signatures: BLEU {' '.join(bleu)}; chrF {' '.join(chrf)}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="data directory (as for fairseq-generate)")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="NAME=PATH (or PATH); repeat to compare models")
    parser.add_argument("--splits", default="test", help="comma-separated splits")
    parser.add_argument("--lang-pairs", help="score only these directions (each model must have been trained on "
                                             "them); default: every direction of each model")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len-b", type=int, default=200, help="longest hypothesis, in tokens")
    parser.add_argument("--output", type=Path, help="write scores and hypotheses as JSON here")
    parser.add_argument("--output-dir", type=Path,
                        help="write table.md, table.csv, results.json and the hypotheses (hyp/, ref/) here")
    parser.add_argument("--rescore", type=Path, metavar="OUT",
                        help="score the hypotheses saved in OUT (an earlier --output-dir) again, without "
                             "translating; rewrites OUT's tables")
    parser.add_argument("--references-dir", type=Path,
                        help="score against the raw target text in this folder (the --raw-dir given to "
                             "preprocess.binarize) instead of the references decoded from the data")
    parser.add_argument("--incongruent-images", action="store_true",
                        help="image-awareness probe: also translate every split with each sentence given "
                             "another sentence's image (a seeded derangement), as split SPLIT-incongruent")
    parser.add_argument("--shuffle-seed", type=int, default=1, help="seed of the incongruent-image derangement")
    parser.add_argument("--without-images", action="store_true",
                        help="also translate every split with every sentence's image withheld, as if missing "
                             "(MDropNet's text-only path), as split SPLIT-without-images")
    parser.add_argument("--off-target", action="store_true",
                        help="also report the percentage of hypotheses py3langid detects as another "
                             "language than the target")
    parser.add_argument("--langid-all-languages", action="store_true",
                        help="detect among all of py3langid's 97 languages, not only the model's")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)  # fairseq's INFO lines would bury the scores
    metrics = ["bleu", "chrf"] + (["off_target"] if args.off_target else [])
    if args.rescore:
        if args.checkpoint:
            parser.error("--rescore scores saved hypotheses: give no --checkpoint")
        results = rescore(args.rescore, args.references_dir, args.off_target, args.langid_all_languages)
        args.output_dir = args.output_dir or args.rescore
    else:
        if not args.data or not args.checkpoint:
            parser.error("--data and --checkpoint are required (or --rescore OUT)")
        checkpoints = named_checkpoints(args.checkpoint, parser)
        try:
            if args.lang_pairs:
                parse_lang_pairs(args.lang_pairs)  # a malformed list fails before any model loads
            results = evaluate(checkpoints, args.data, args.splits.split(","), args.lang_pairs, args.beam,
                               args.batch_size, args.max_len_b, args.references_dir, args.output_dir,
                               args.shuffle_seed if args.incongruent_images else None,
                               args.off_target, args.langid_all_languages, args.without_images)
        except UnknownDirectionError as error:
            parser.error(str(error))
    print(directions_table(results))
    print(signatures(results))
    if args.output_dir:
        write_reports(results, args.output_dir, metrics)
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":  # python -m m3p_fairseq.evaluation.cli, as the sweep job runs it
    main()
