"""Score fairseq-generate's captions (``--task m3p_captioning``) with BLEU-4 and CIDEr against every
reference caption of each image:

    fairseq-generate DATA --user-dir m3p_fairseq --task m3p_captioning --target-lang de \
        --path CKPT --gen-subset test --beam 5 --post-process sentencepiece > gen.de.txt
    python scripts/score_captions.py --data DATA --split test --generated de=gen.de.txt \
        [--generated fr=gen.fr.txt ...] [--system pretrained --output-dir results/]

The references are the captions of each test image in that language, read from DATA as the task
reads them (data/caption_dataset.py: one example per distinct usable image, in first-seen
order, so fairseq-generate's example ids are the images'). With --output-dir OUT the scores of
every run accumulate in OUT/results.json (one system per run, ``--system``), and OUT/table.md /
table.csv show them per language (column ``img-LANG``) with the sacreBLEU signature and the
commit, as m3p-evaluate's tables; the hypotheses go to OUT/hyp/SYSTEM/SPLIT.img-LANG.txt and
their references to OUT/ref/SPLIT.img-LANG.txt, one image per line, its captions separated by tabs.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from m3p_fairseq.data.caption_dataset import CaptioningDataset, load_language_captions, reference_texts
from m3p_fairseq.data.data_dir import DataDirectory
from m3p_fairseq.data.image_features import ImageFeatureStore
from m3p_fairseq.data.m3p_regions import RegionFeatureReader
from m3p_fairseq.evaluation import hypotheses as saved_hypotheses
from m3p_fairseq.evaluation.captioning import caption_scores, in_example_order, read_generated, require_java

METRICS = ["bleu", "cider"]


def caption_direction(lang: str) -> str:
    """The results' and files' name of captioning into ``lang`` (a SRC-TGT name, as tables expect)."""
    return f"img-{lang}"


def references(data: str, split: str, lang: str, image_features: Optional[str] = None) -> List[List[str]]:
    """Every caption of each evaluated image of ``split`` in ``lang``, in the task's example order."""
    directory = DataDirectory.of_task_data(data)
    path = directory.feature_file(split, image_features)
    if path is None:
        raise FileNotFoundError(f"no image features for split {split!r} in {directory.path} (the task reads them "
                                "to know which images are usable)")
    reader = RegionFeatureReader(ImageFeatureStore(path))
    dictionary = directory.load_dictionary()
    captions = load_language_captions(directory, split, lang, dictionary, reader, per_image=True)
    dataset = CaptioningDataset(dictionary, [captions], reader, {}, max_positions=1 << 30, shuffle=False)
    return [reference_texts(dataset, i) for i in range(len(dataset))]


def score_generated(data: str, split: str, generated: Dict[str, Path], image_features: Optional[str] = None
                    ) -> Dict[str, dict]:
    """{img-LANG: scores, with "hypotheses" and "reference_sets"} of each language's generate output."""
    require_java()  # before any work: CIDEr's tokenizer needs it
    results = {}
    for lang, path in generated.items():
        reference_sets = references(data, split, lang, image_features)
        hypotheses = in_example_order(read_generated(path), len(reference_sets), str(path))
        scores = caption_scores(hypotheses, reference_sets)
        results[caption_direction(lang)] = {**scores, "hypotheses": hypotheses, "reference_sets": reference_sets}
    return results


def parse_generated(values: List[str]) -> Dict[str, Path]:
    generated = {}
    for value in values:
        lang, sep, path = value.partition("=")
        if not sep or not lang or not path:
            raise SystemExit(f"--generated {value!r}: expected LANG=FILE (fairseq-generate's output for LANG)")
        if not Path(path).is_file():
            raise SystemExit(f"--generated {value!r}: {path} not found")
        generated[lang] = Path(path)
    return generated


def save(out_dir: Path, system: str, split: str, scored: Dict[str, dict]) -> dict:
    """Writes the hypotheses, references and reports; returns all results in OUT/results.json."""
    from m3p_fairseq.evaluation.cli import write_reports  # m3p-evaluate's reports, with CIDEr

    results_file = out_dir / "results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else {}
    for direction, scores in scored.items():
        saved_hypotheses.save(out_dir, system, split, direction, scores["hypotheses"],
                              ["\t".join(refs) for refs in scores["reference_sets"]])
        kept = {k: v for k, v in scores.items() if k not in ("hypotheses", "reference_sets")}
        results.setdefault(system, {}).setdefault(split, {})[direction] = kept
    write_reports(results, out_dir, METRICS)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the data directory fairseq-generate read")
    parser.add_argument("--split", default="test", help="fairseq-generate's --gen-subset")
    parser.add_argument("--generated", action="append", required=True, metavar="LANG=FILE",
                        help="fairseq-generate's output for --target-lang LANG; repeat per language")
    parser.add_argument("--image-features", help="the --image-features fairseq-generate was given, if any")
    parser.add_argument("--system", default="model", help="the row name of these scores in the tables")
    parser.add_argument("--output-dir", type=Path, help="accumulate results.json, table.md, table.csv, hyp/, ref/")
    args = parser.parse_args(argv)
    try:
        scored = score_generated(args.data, args.split, parse_generated(args.generated), args.image_features)
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        print(f"score_captions: {error}", file=sys.stderr)
        return 1
    for direction, scores in scored.items():
        print(f"{args.system} {args.split} {direction}: BLEU-4 {scores['bleu']:.1f} CIDEr {scores['cider']:.1f} "
              f"({scores['images']} images, {scores['references']} references)")
    if args.output_dir is not None:
        save(args.output_dir, args.system, args.split, scored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
