"""Raw parallel text -> the data directory ``--task multimodal_translation`` reads.

    python -m preprocess.binarize --raw-dir RAW --dest-dir DATA \
        --lang-pairs en-de,de-en,en-fr,fr-en --splits train,valid,test

Raw text, one sentence per line, in either layout (per split and direction, the first found):
    RAW/{split}.{src}-{tgt}.{src|tgt}   a bilingual split of one direction
    RAW/{split}.{lang}                  a multi-way parallel split, aligned across languages
and its image ids, aligned line by line: RAW/{split}.{src}-{tgt}.image_ids or RAW/{split}.image_ids.

Steps: a SentencePiece model is trained on the training text of all languages (or taken from
--spm-model); a shared fairseq dictionary with a ``__lang__`` tag per language is built from
the training text; every text file is encoded and written as fairseq mmap .bin/.idx; the
image-id lists are copied beside it. Outputs that exist are kept (re-running resumes; pass
--overwrite to rebuild); every file is written to a temporary name and renamed when complete.

With a pretrained model's vocabulary (e.g. XLM-R, for --pretrained-text-encoder), give its
SentencePiece model and dictionary instead: ``--spm-model xlmr/sentencepiece.bpe.model
--dict xlmr/dict.txt``; DATA/dict.txt is then that dict.txt with the language tags appended.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import sentencepiece as spm
from fairseq.data import Dictionary, indexed_dataset

from m3p_fairseq.data.data_dir import DICTIONARY_FILE
from m3p_fairseq.data.languages import parse_lang_pairs
from m3p_fairseq.data.vocabulary import lang_tag

logger = logging.getLogger("preprocess.binarize")
SPM_MODEL_FILE = "spm.model"


def raw_text_path(raw_dir: Path, split: str, src: str, tgt: str, lang: str) -> Tuple[Path, str]:
    """(raw file, output prefix name) of ``lang``'s side of split/direction."""
    pair_file = raw_dir / f"{split}.{src}-{tgt}.{lang}"
    if pair_file.is_file():
        return pair_file, f"{split}.{src}-{tgt}.{lang}"
    multiway_file = raw_dir / f"{split}.{lang}"
    if multiway_file.is_file():
        return multiway_file, f"{split}.{lang}"
    raise FileNotFoundError(f"no raw text for {lang} in split {split!r} ({src}-{tgt}): expected "
                            f"{pair_file} or {multiway_file}")


def image_ids_path(raw_dir: Path, split: str, src: str, tgt: str) -> Optional[Path]:
    for name in (f"{split}.{src}-{tgt}.image_ids", f"{split}.image_ids"):
        if (raw_dir / name).is_file():
            return raw_dir / name
    return None


def read_lines(path: Path) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def atomic_target(path: Path):
    """A temporary path in the same directory, renamed to ``path`` by the caller when done."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def train_sentencepiece(texts: Iterable[Path], out_model: Path, vocab_size: int,
                        user_defined_symbols: List[str]) -> None:
    lines = sorted({line for path in texts for line in read_lines(path) if line.strip()})
    with tempfile.TemporaryDirectory(dir=out_model.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size,
            character_coverage=1.0, model_type="unigram", hard_vocab_limit=False,
            user_defined_symbols=user_defined_symbols, bos_id=-1, eos_id=-1, unk_id=0,
            minloglevel=2, num_threads=os.cpu_count() or 1,
        )
        os.replace(prefix.with_suffix(".model"), out_model)
        shutil.copyfile(prefix.with_suffix(".vocab"), out_model.with_suffix(".vocab"))
    logger.info("trained %s on %d distinct sentences (vocab %d)", out_model, len(lines), vocab_size)


def build_dictionary(encoded_training_text: Iterable[List[str]], langs: List[str], threshold: int) -> Dictionary:
    counts = Counter(piece for pieces in encoded_training_text for piece in pieces)
    dictionary = Dictionary()
    for piece, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        dictionary.add_symbol(piece, n=count)
    dictionary.finalize(threshold=threshold, padding_factor=1)
    for lang in langs:  # after finalize, so no threshold drops a tag
        dictionary.add_symbol(lang_tag(lang), n=1)
    dictionary.pad_to_multiple_(8)
    return dictionary


def given_dictionary_text(dict_file: Path, langs: List[str]) -> str:
    """``dict_file`` verbatim (order and flags kept, so every symbol keeps the index it has in
    the model the dictionary belongs to) plus a ``__lang__`` tag line per language it lacks."""
    try:
        given = Dictionary.load(str(dict_file))
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"--dict {dict_file}: not a fairseq dictionary ({error})") from error
    text = Path(dict_file).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(f"{lang_tag(lang)} 1\n" for lang in langs if lang_tag(lang) not in given.indices)


def write_given_dictionary(dict_file: Path, langs: List[str], dict_path: Path, overwrite: bool) -> None:
    text = given_dictionary_text(dict_file, langs)
    if dict_path.exists() and dict_path.read_text(encoding="utf-8") == text:
        return
    if dict_path.exists() and not overwrite:
        raise ValueError(f"{dict_path} exists but is not --dict {dict_file} with the language tags; "
                         "pass --overwrite to rebuild it (and the data binarized with it)")
    tmp = atomic_target(dict_path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dict_path)
    logger.info("wrote %s: %s with tags %s", dict_path, dict_file, [lang_tag(l) for l in langs])


def write_binarized(lines: List[str], sp: spm.SentencePieceProcessor, dictionary: Dictionary,
                    out_prefix: Path) -> Tuple[int, int, int]:
    """Encode and write .bin/.idx; returns (sentences, tokens, unknown tokens)."""
    bin_path, idx_path = Path(f"{out_prefix}.bin"), Path(f"{out_prefix}.idx")
    tmp_bin, tmp_idx = atomic_target(bin_path), atomic_target(idx_path)
    builder = indexed_dataset.make_builder(str(tmp_bin), impl="mmap", vocab_size=len(dictionary))
    num_tokens = num_unk = 0
    for pieces in sp.encode(lines, out_type=str):
        ids = dictionary.encode_line(" ".join(pieces), add_if_not_exist=False, append_eos=True).long()
        num_tokens += len(ids)
        num_unk += int((ids == dictionary.unk()).sum())
        builder.add_item(ids)
    builder.finalize(str(tmp_idx))
    os.replace(tmp_bin, bin_path)
    os.replace(tmp_idx, idx_path)
    return len(lines), num_tokens, num_unk


def binarize(raw_dir: Path, dest_dir: Path, lang_pairs: List[Tuple[str, str]], splits: List[str],
             spm_model: Optional[Path] = None, spm_vocab_size: int = 8000,
             spm_user_defined_symbols: Optional[List[str]] = None, threshold: int = 0,
             overwrite: bool = False, dict_file: Optional[Path] = None) -> Dict[str, int]:
    raw_dir, dest_dir = Path(raw_dir), Path(dest_dir)
    if dict_file is not None and spm_model is None:
        raise ValueError("--dict needs --spm-model: the SentencePiece model whose pieces the dictionary lists")
    for given in (spm_model, dict_file):
        if given is not None and not Path(given).is_file():
            raise FileNotFoundError(f"{given}: file not found")
    dest_dir.mkdir(parents=True, exist_ok=True)
    langs = sorted({lang for pair in lang_pairs for lang in pair})
    if "train" not in splits:
        raise ValueError("--splits must include train (the SentencePiece model and dictionary are built from it)")
    # Resolve every input first, so a missing or misaligned file fails before anything is written.
    jobs = {}  # output prefix name -> raw file
    id_lists = {}  # output name -> raw id list
    for split in splits:
        for src, tgt in lang_pairs:
            sizes = {}
            for lang in (src, tgt):
                raw, name = raw_text_path(raw_dir, split, src, tgt, lang)
                jobs[name] = raw
                sizes[raw] = count_lines(raw)
            ids = image_ids_path(raw_dir, split, src, tgt)
            if ids is not None:
                sizes[ids] = count_lines(ids)
                id_lists[ids.name] = ids
            if len(set(sizes.values())) != 1:
                raise ValueError(f"split {split!r} {src}-{tgt}: files are not aligned, line counts "
                                 + ", ".join(f"{path}={n}" for path, n in sizes.items()))

    spm_path = dest_dir / SPM_MODEL_FILE
    if spm_model is not None:
        if Path(spm_model).resolve() != spm_path.resolve():
            shutil.copyfile(spm_model, spm_path)
    elif overwrite or not spm_path.exists():
        train_sentencepiece(sorted({raw for name, raw in jobs.items() if name.startswith("train.")}),
                            spm_path, spm_vocab_size, spm_user_defined_symbols or [])
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))

    dict_path = dest_dir / DICTIONARY_FILE
    if dict_file is not None:
        write_given_dictionary(Path(dict_file), langs, dict_path, overwrite)
    elif overwrite or not dict_path.exists():
        training = sorted({raw for name, raw in jobs.items() if name.startswith("train.")})
        dictionary = build_dictionary((p for path in training for p in sp.encode(read_lines(path), out_type=str)),
                                      langs, threshold)
        tmp = atomic_target(dict_path)
        dictionary.save(str(tmp))
        os.replace(tmp, dict_path)
        logger.info("wrote %s: %d types incl. tags %s", dict_path, len(dictionary), [lang_tag(l) for l in langs])
    dictionary = Dictionary.load(str(dict_path))
    missing_tags = [lang_tag(lang) for lang in langs if lang_tag(lang) not in dictionary.indices]
    if missing_tags:
        raise ValueError(f"{dict_path} lacks language tags {missing_tags}; rebuild it with --overwrite")

    written = {}
    for name, raw in sorted(jobs.items()):
        out_prefix = dest_dir / name
        if not overwrite and Path(f"{out_prefix}.bin").exists() and Path(f"{out_prefix}.idx").exists():
            continue
        sentences, tokens, unk = write_binarized(read_lines(raw), sp, dictionary, out_prefix)
        written[name] = sentences
        logger.info("%s: %d sentences, %d tokens, %.2f%% <unk>", out_prefix, sentences, tokens,
                    100.0 * unk / max(tokens, 1))
    for name, raw in sorted(id_lists.items()):
        tmp = atomic_target(dest_dir / name)
        shutil.copyfile(raw, tmp)
        os.replace(tmp, dest_dir / name)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", type=Path, required=True, help="folder with the raw text and image-id lists")
    parser.add_argument("--dest-dir", type=Path, required=True, help="data directory to write (fairseq-train DATA)")
    parser.add_argument("--lang-pairs", required=True, help="comma-separated directions, e.g. en-de,de-en")
    parser.add_argument("--splits", default="train,valid,test", help="comma-separated split names")
    parser.add_argument("--spm-model", type=Path, help="existing SentencePiece model (default: train one)")
    parser.add_argument("--dict", type=Path, dest="dict_file",
                        help="existing fairseq dict.txt to use (e.g. XLM-R's, with --spm-model its "
                             "sentencepiece.bpe.model) instead of building one from the training text; "
                             "language tags are appended to it")
    parser.add_argument("--spm-vocab-size", type=int, default=8000, help="vocabulary size of a new SentencePiece model")
    parser.add_argument("--spm-user-defined-symbols", default="",
                        help="comma-separated symbols SentencePiece must keep whole (e.g. [MASK])")
    parser.add_argument("--threshold", type=int, default=0, help="drop pieces seen this many times or fewer")
    parser.add_argument("--overwrite", action="store_true", help="rebuild outputs that already exist")
    args = parser.parse_args(argv)
    # force: importing fairseq already attached a DEBUG-level root handler
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    try:
        binarize(args.raw_dir, args.dest_dir, parse_lang_pairs(args.lang_pairs),
                 [s for s in args.splits.split(",") if s], args.spm_model, args.spm_vocab_size,
                 [s for s in args.spm_user_defined_symbols.split(",") if s], args.threshold, args.overwrite,
                 args.dict_file)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
