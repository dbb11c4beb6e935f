"""Build InstrMulti102-style raw data: an English image-caption corpus and its machine
translations into many languages -> the multi-way raw layout preprocess/binarize.py reads.

    python -m preprocess.build_instrmulti --english-dir RAW_EN --translations-dir TRANSLATIONS \
        --output-dir RAW --splits train,valid,test --directions many-to-one

Inputs, all aligned line by line within a split:
    RAW_EN/{split}.en               the English side (e.g. Multi30k's English captions)
    RAW_EN/{split}.image_ids        its image ids
    TRANSLATIONS/{split}.{lang}     its translation into each language (your MT system's output),
                                    one file per language; every {lang} must be one of the 102
                                    InstrMulti102 codes (m3p_fairseq/data/languages.py)
Outputs in RAW (written to a temporary name and renamed; files already identical are kept):
    {split}.en, {split}.{lang}, {split}.image_ids   the multi-way parallel layout
    lang_pairs.txt                  the directions, comma-separated, for --lang-pairs of
                                    preprocess.binarize, fairseq-train and scripts/evaluate.py:
                                    many-to-one = every xx-en (the paper's Table 3 setting),
                                    one-to-many = every en-xx, both = all of them

``--pseudo-languages N`` instead writes TRANSLATIONS for a demo or a test: N pseudo-languages
(real codes from the table) made from the English by a deterministic word substitution.
"""

import argparse
import hashlib
import logging
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from m3p_fairseq.atomic_io import write_if_changed
from m3p_fairseq.data.data_dir import IMAGE_IDS_SUFFIX, DataDirectory
from m3p_fairseq.data.languages import INSTRMULTI102_LANGUAGES, PIVOT_LANGUAGE, unknown_language_message
from m3p_fairseq.data.text_lines import read_lines
from m3p_fairseq.logging_setup import setup_logging

logger = logging.getLogger("preprocess.build_instrmulti")
DIRECTIONS = ("many-to-one", "one-to-many", "both")
LANG_PAIRS_FILE = "lang_pairs.txt"


class InstrMultiError(ValueError):
    pass


def write_text_atomically(path: Path, text: str) -> bool:
    """Writes ``text`` unless ``path`` already holds it; returns whether it wrote."""
    return write_if_changed(path, text.encode("utf-8"))


def find_translations(translations_dir: Path, split: str) -> Dict[str, Path]:
    """lang -> file of TRANSLATIONS/{split}.{lang}, every code checked against the table."""
    found = {}
    for path in sorted(translations_dir.glob(f"{split}.*")):
        code = path.name[len(split) + 1:]
        if path.name.startswith(".") or code.endswith(".tmp"):
            continue
        if code not in INSTRMULTI102_LANGUAGES:
            raise InstrMultiError(f"{path}: {unknown_language_message(code)}")
        if code == PIVOT_LANGUAGE:
            raise InstrMultiError(f"{path}: the English side comes from --english-dir, not the translations")
        found[code] = path
    return found


def check_aligned(path: Path, lines: List[str], expected: int, english: Path) -> None:
    if len(lines) != expected:
        raise InstrMultiError(f"{path} has {len(lines)} lines but {english} has {expected}: translations must be "
                              "aligned line by line with the English side")
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            raise InstrMultiError(f"{path}, line {line_no}: empty translation (of line {line_no} of {english})")


def lang_pairs(languages: Sequence[str], directions: str) -> List[str]:
    if directions not in DIRECTIONS:
        raise InstrMultiError(f"--directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    pairs = []
    if directions in ("many-to-one", "both"):
        pairs += [f"{lang}-{PIVOT_LANGUAGE}" for lang in languages]
    if directions in ("one-to-many", "both"):
        pairs += [f"{PIVOT_LANGUAGE}-{lang}" for lang in languages]
    return pairs


def build(english_dir: Path, translations_dir: Path, output_dir: Path, splits: Sequence[str],
          directions: str = "many-to-one", languages: Sequence[str] = ()) -> List[str]:
    """Validates everything, then writes RAW; returns the directions (also in lang_pairs.txt)."""
    english_dir, translations_dir, output_dir = Path(english_dir), Path(translations_dir), Path(output_dir)
    for code in languages:
        if code not in INSTRMULTI102_LANGUAGES:
            raise InstrMultiError(f"--languages: {unknown_language_message(code)}")
    outputs: Dict[str, List[str]] = {}
    split_languages = {}
    for split in splits:
        english_path, ids_path = english_dir / f"{split}.{PIVOT_LANGUAGE}", DataDirectory(english_dir).image_ids(split)
        for path in (english_path, ids_path):
            if not path.is_file():
                raise InstrMultiError(f"split {split!r}: {path} not found (--english-dir holds "
                                      f"{{split}}.{PIVOT_LANGUAGE} and {{split}}.image_ids)")
        english = read_lines(english_path)
        check_aligned(english_path, english, len(english), english_path)
        image_ids = read_lines(ids_path)
        if len(image_ids) != len(english):
            raise InstrMultiError(f"{ids_path} has {len(image_ids)} image ids but {english_path} has "
                                  f"{len(english)} sentences")
        found = find_translations(translations_dir, split)
        if languages:
            missing = [code for code in languages if code not in found]
            if missing:
                raise InstrMultiError(f"split {split!r}: no translation into {', '.join(missing)} (expected "
                                      + ", ".join(str(translations_dir / f"{split}.{c}") for c in missing) + ")")
            found = {code: found[code] for code in languages}
        if not found:
            raise InstrMultiError(f"split {split!r}: no translations {translations_dir}/{split}.{{lang}}")
        split_languages[split] = sorted(found)
        outputs[f"{split}.{PIVOT_LANGUAGE}"] = english
        outputs[f"{split}{IMAGE_IDS_SUFFIX}"] = image_ids
        for code, path in found.items():
            lines = read_lines(path)
            check_aligned(path, lines, len(english), english_path)
            outputs[f"{split}.{code}"] = lines
    first, *others = splits
    for split in others:
        if split_languages[split] != split_languages[first]:
            differ = sorted(set(split_languages[split]) ^ set(split_languages[first]))
            raise InstrMultiError(f"splits {first!r} and {split!r} have translations into different languages "
                                  f"(only in one of them: {', '.join(differ)}); pass --languages to choose")
    pairs = lang_pairs(split_languages[first], directions)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = sum(write_text_atomically(output_dir / name, "".join(line + "\n" for line in lines))
                  for name, lines in outputs.items())
    write_text_atomically(output_dir / LANG_PAIRS_FILE, ",".join(pairs) + "\n")
    logger.info("%s: %d languages + English, %d directions (%s), %d files written, %d already up to date",
                output_dir, len(split_languages[first]), len(pairs), directions, written, len(outputs) - written)
    return pairs


def pseudo_word(word: str, code: str) -> str:
    """A deterministic, invertible-looking stand-in for ``word`` in pseudo-language ``code``."""
    digest = hashlib.sha1(f"{code}:{word.lower()}".encode()).hexdigest()
    letters = "".join(chr(ord("a") + int(c, 16) % 26) for c in digest[:3 + len(word) % 4])
    return letters.capitalize() if word[:1].isupper() else letters


def pseudo_translation(sentence: str, code: str) -> str:
    words = sentence.rstrip(".").split()
    return " ".join(pseudo_word(w, code) for w in words) + ("." if sentence.endswith(".") else "")


def write_pseudo_translations(english_dir: Path, translations_dir: Path, splits: Sequence[str],
                              num_languages: int) -> List[str]:
    codes = [code for code in INSTRMULTI102_LANGUAGES if code != PIVOT_LANGUAGE][:num_languages]
    translations_dir = Path(translations_dir)
    translations_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        english = read_lines(Path(english_dir) / f"{split}.{PIVOT_LANGUAGE}")
        for code in codes:
            write_text_atomically(translations_dir / f"{split}.{code}",
                                  "".join(pseudo_translation(line, code) + "\n" for line in english))
    return codes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--english-dir", type=Path, required=True, help="{split}.en and {split}.image_ids")
    parser.add_argument("--translations-dir", type=Path, required=True, help="{split}.{lang} per language")
    parser.add_argument("--output-dir", type=Path, help="raw multi-way data to write (preprocess.binarize --raw-dir)")
    parser.add_argument("--splits", default="train,valid,test")
    parser.add_argument("--directions", choices=DIRECTIONS, default="many-to-one")
    parser.add_argument("--languages", default="", help="comma-separated codes to use (default: every "
                                                        "translation found)")
    parser.add_argument("--pseudo-languages", type=int, metavar="N",
                        help="write N pseudo-language translations of the English into --translations-dir "
                             "(demo/test data) before building")
    args = parser.parse_args(argv)
    setup_logging()
    splits = [s for s in args.splits.split(",") if s]
    try:
        if args.pseudo_languages:
            write_pseudo_translations(args.english_dir, args.translations_dir, splits, args.pseudo_languages)
        if args.output_dir is None:
            return
        pairs = build(args.english_dir, args.translations_dir, args.output_dir, splits, args.directions,
                      [c for c in args.languages.split(",") if c])
    except (InstrMultiError, FileNotFoundError) as error:
        parser.error(str(error))
    print(",".join(pairs))


if __name__ == "__main__":
    sys.exit(main())
