"""Multi30k for m3p-fairseq: normalised text, a joint SentencePiece model (or XLM-R's), all 12
directions among en, de, fr and cs binarized for train / valid and every test set your copy has
(test_2016_flickr always; test_2017_flickr, test_2018_flickr and test_2017_mscoco when present;
Czech exists only for 2016 and 2018), the image-id lists, and, given your Flickr30k image folder,
the image features.

    python examples/multi30k/prepare.py --multi30k ../shared/data/multi30k --work-dir work/multi30k
    python examples/multi30k/prepare.py --multi30k ~/multi30k-dataset --work-dir work/multi30k \\
        --images-dir ~/flickr30k-images --backbone vit_base_patch32_clip_224 \\
        --checkpoint ~/weights/open_clip_vit_b32.bin

``--multi30k`` is either a folder with ``raw/`` and ``image_splits/`` or a clone of the
Multi30k repository (``data/task1/raw``, ``data/task1/image_splits``); the ``.gz`` files are
read as they are. Multi30k's licence is non-commercial: the recipe reads your copy and writes
only derived files into the work directory.

Writes ``WORK/raw/{train,valid,test_*}.{en,de,fr,cs}`` (+ ``.image_ids``) and
``WORK/data-bin`` (what ``fairseq-train --task multimodal_translation`` reads). Every step keeps
what is already complete, so re-running resumes; without --images-dir the data is text-only.
"""

import argparse
import logging
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from m3p_fairseq.data.data_dir import DICTIONARY_FILE, SPM_MODEL_FILE, DataDirectory
from m3p_fairseq.data.text_lines import read_lines, write_lines
from m3p_fairseq.logging_setup import setup_logging

REPO = Path(__file__).resolve().parents[2]
LANGS = ["en", "de", "fr", "cs"]
LANG_PAIRS = [f"{src}-{tgt}" for src in LANGS for tgt in LANGS if src != tgt]
# the paper's setting (Table 1): to and from English
PAPER_LANG_PAIRS = [pair for lang in LANGS[1:] for pair in (f"en-{lang}", f"{lang}-en")]
# Multi30k's split names -> ours (fairseq's validation split is "valid"); every copy has these
SPLITS = {"train": "train", "val": "valid", "test_2016_flickr": "test_2016_flickr"}
# the test sets, each with the languages it has; those after 2016 are used when the copy has them
TEST_SETS = {"test_2016_flickr": LANGS, "test_2017_flickr": ["en", "de", "fr"],
             "test_2018_flickr": LANGS, "test_2017_mscoco": ["en", "de", "fr"]}
_SPACES = re.compile(r"\s+")

logger = logging.getLogger("examples.multi30k.prepare")


def find_layout(root: Path):
    """(raw text folder, image-split folder) of a Multi30k copy or repository clone."""
    for raw, splits in ((root / "raw", root / "image_splits"),
                        (root / "data" / "task1" / "raw", root / "data" / "task1" / "image_splits")):
        if raw.is_dir() and splits.is_dir():
            return raw, splits
    raise FileNotFoundError(f"--multi30k {root}: expected raw/ and image_splits/ (a copy of Multi30k's "
                            "data/task1) or a clone of the Multi30k repository")


def read_text(folder: Path, name: str) -> List[str]:
    """``name`` or ``name.gz``, decoded as UTF-8, one entry per line."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return read_lines(path)
    raise FileNotFoundError(f"{folder / name}(.gz) not found")


def normalise(line: str) -> str:
    """NFC, no control characters, single spaces: the same caption always gets the same pieces."""
    line = unicodedata.normalize("NFC", line)
    line = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in line)
    return _SPACES.sub(" ", line).strip()


def split_languages(multi30k: Path) -> Dict[str, List[str]]:
    """{our split name: its languages} of every split the copy has: train, valid and
    test_2016_flickr always, the later test sets when their image list or any of their text is
    there (and then all of it must be)."""
    text_dir, split_dir = find_layout(multi30k)
    found = {ours: LANGS for ours in SPLITS.values()}
    for test_set, langs in TEST_SETS.items():
        names = [f"{test_set}.{lang}" for lang in langs]
        present = [(split_dir / f"{test_set}.txt").is_file()] + [
            (text_dir / n).is_file() or (text_dir / f"{n}.gz").is_file() for n in names]
        if test_set in found or any(present):
            missing = [str(path) for path, there in zip([split_dir / f"{test_set}.txt"] + [text_dir / n for n in names],
                                                          present) if not there]
            if missing:
                raise FileNotFoundError(f"{multi30k}: test set {test_set} is incomplete, missing "
                                        + ", ".join(m + ("" if m.endswith(".txt") else "(.gz)") for m in missing))
            found[test_set] = langs
    return found


def write_raw(multi30k: Path, raw_out: Path, max_lines: Optional[int] = None) -> Dict[str, int]:
    """Normalised text and image ids per split the copy has (:func:`split_languages`); returns
    sentences per split. Every language and the image list must have the same number of lines,
    and no caption may be empty."""
    text_dir, split_dir = find_layout(multi30k)
    theirs_of = {ours: theirs for theirs, ours in SPLITS.items()}
    raw_out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for ours, langs in split_languages(multi30k).items():
        theirs = theirs_of.get(ours, ours)
        image_ids = read_text(split_dir, f"{theirs}.txt")[:max_lines]
        by_lang = {lang: read_text(text_dir, f"{theirs}.{lang}")[:max_lines] for lang in langs}
        sizes = {f"{theirs}.{lang}": len(lines) for lang, lines in by_lang.items()}
        sizes[f"image_splits/{theirs}.txt"] = len(image_ids)
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{multi30k}: split {theirs} is not aligned: "
                             + ", ".join(f"{name} has {n} lines" for name, n in sizes.items()))
        for lang, lines in by_lang.items():
            normalised = [normalise(line) for line in lines]
            empty = [i for i, line in enumerate(normalised, start=1) if not line]
            if empty:
                raise ValueError(f"{text_dir}/{theirs}.{lang}: empty caption on line(s) {empty[:5]}")
            write_lines(raw_out / f"{ours}.{lang}", normalised)
        for line_no, image_id in enumerate(image_ids, start=1):
            if not image_id.strip():
                raise ValueError(f"{split_dir}/{theirs}.txt:{line_no}: empty image file name")
        write_lines(DataDirectory(raw_out).image_ids(ours), [i.strip() for i in image_ids])
        counts[ours] = len(image_ids)
    return counts


def binarize_groups(splits: Dict[str, List[str]]) -> List[Tuple[List[str], List[str]]]:
    """(splits, directions) per call of preprocess.binarize: the splits with all four languages
    first (they build the vocabulary from train), then those without Czech, with train again
    so binarize finds its vocabulary inputs unchanged and rewrites nothing of them."""
    groups: Dict[Tuple[str, ...], List[str]] = {}
    for split, langs in splits.items():
        groups.setdefault(tuple(langs), []).append(split)
    ordered = sorted(groups.items(), key=lambda item: -len(item[0]))
    return [(names if "train" in names else ["train", *names],
             [f"{s}-{t}" for s in langs for t in langs if s != t]) for langs, names in ordered]


def run(command: List) -> None:
    print("$ " + " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], cwd=REPO, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multi30k", type=Path, required=True, help="Multi30k copy or repository clone")
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "multi30k")
    parser.add_argument("--max-lines", type=int, help="only the first N lines of every split (for trials)")
    parser.add_argument("--spm-vocab-size", type=int, default=10000, help="joint SentencePiece vocabulary")
    parser.add_argument("--spm-model", type=Path, help="an existing SentencePiece model, e.g. XLM-R's "
                                                       "sentencepiece.bpe.model, instead of training one")
    parser.add_argument("--dict", type=Path, help="an existing fairseq dict.txt (e.g. XLM-R's) to use with --spm-model")
    images = parser.add_argument_group("image features (optional; without them the data is text-only)")
    images.add_argument("--images-dir", type=Path, help="your Flickr30k image folder")
    images.add_argument("--backbone", default="vit_base_patch32_clip_224", help="timm model name")
    images.add_argument("--checkpoint", type=Path, help="local weight file of the backbone")
    images.add_argument("--random-init-seed", type=int, help="randomly initialised backbone (tests only)")
    images.add_argument("--image-size", type=int, help="input resolution override")
    images.add_argument("--augmented-views", type=int, default=0, help="augmented views per image for MMA")
    images.add_argument("--skip-bad-images", action="store_true",
                        help="flag missing or undecodable images instead of failing")
    images.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    setup_logging()

    work = args.work_dir.resolve()
    raw, data = work / "raw", work / "data-bin"
    counts = write_raw(args.multi30k, raw, args.max_lines)
    logger.info("normalised text in %s: %s", raw, ", ".join(f"{s} {n}" for s, n in counts.items()))

    for number, (splits, pairs) in enumerate(binarize_groups(split_languages(args.multi30k))):
        binarize = [sys.executable, "-m", "preprocess.binarize", "--raw-dir", raw, "--dest-dir", data,
                    "--lang-pairs", ",".join(pairs), "--splits", ",".join(splits),
                    "--spm-vocab-size", args.spm_vocab_size]
        if number > 0:  # the vocabulary the first call built (or was given)
            binarize += ["--spm-model", data / SPM_MODEL_FILE, "--dict", data / DICTIONARY_FILE]
        elif args.spm_model:
            binarize += ["--spm-model", args.spm_model]
            if args.dict:
                binarize += ["--dict", args.dict]
        elif args.dict:
            binarize += ["--dict", args.dict]
        run(binarize)
    if args.images_dir is not None:
        extract = [sys.executable, "-m", "preprocess.extract_image_features", "--images-dir", args.images_dir,
                   "--image-ids", *[DataDirectory(raw).image_ids(split) for split in counts],
                   "--output", DataDirectory(data).shared_features, "--backbone", args.backbone,
                   "--batch-size", args.batch_size, "--augmented-views", args.augmented_views]
        if args.checkpoint is not None:
            extract += ["--checkpoint", args.checkpoint]
        if args.random_init_seed is not None:
            extract += ["--random-init-seed", args.random_init_seed]
        if args.image_size is not None:
            extract += ["--image-size", args.image_size]
        if args.skip_bad_images:
            extract += ["--skip-bad-images"]
        run(extract)
    print(f"data ready in {data} ({len(LANG_PAIRS)} directions; splits {', '.join(counts)}"
          f"{', with image features' if args.images_dir else ', text only'})")


if __name__ == "__main__":
    main()
