"""Raw parallel text -> the data directory ``--task multimodal_translation`` reads.

    python -m preprocess.binarize --raw-dir RAW --dest-dir DATA \
        --lang-pairs en-de,de-en,en-fr,fr-en --splits train,valid,test

Raw text, one sentence per line, uses the data directory's names (m3p_fairseq/data/data_dir.py);
per split and direction the first stem that has both sides is used:
    RAW/{split}.{src}-{tgt}.{src|tgt}   a bilingual split of one direction (or of {tgt}-{src})
    RAW/{split}.{lang}                  a multi-way parallel split, aligned across languages
and its image ids, aligned line by line: RAW/{stem}.image_ids, else RAW/{split}.image_ids.
Lines end at \\n only (m3p_fairseq/data/text_lines.py); an empty source or target line is an
error naming the file and line (``--allow-empty-lines`` keeps it, with a warning).

Steps: a SentencePiece model is trained on the training text of all languages (or taken from
--spm-model); a shared fairseq dictionary with a ``__lang__`` tag per language is built from
the training text; every text file is encoded and written as fairseq mmap .bin/.idx; the
image-id lists are copied beside it.

Re-running resumes and follows the inputs. Every output is written to a temporary name and
renamed when complete; a ``.bin/.idx`` pair and the learned spm.model get a manifest,
written last, with the content hashes of their inputs (raw text, spm.model, dict.txt) and of
the pair itself. An output whose manifest is missing or does not match is rebuilt (a changed
input, or a run killed between the two renames); one that matches is kept. The vocabulary is
the exception, because checkpoints depend on it: spm.model and dict.txt built from other input
are an error unless --overwrite (which rebuilds everything).

With a pretrained model's vocabulary (e.g. XLM-R, for --pretrained-text-encoder), give its
SentencePiece model and dictionary instead: ``--spm-model xlmr/sentencepiece.bpe.model
--dict xlmr/dict.txt``; DATA/dict.txt is then that dict.txt with the language tags appended.
"""

import argparse
import io
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import sentencepiece as spm
import torch
from fairseq.data import Dictionary, indexed_dataset

from m3p_fairseq.atomic_io import atomic_path, atomic_write_bytes, atomic_write_text
from m3p_fairseq.data.data_dir import DICTIONARY_FILE, SPM_MODEL_FILE, DataDirectory
from m3p_fairseq.data.languages import parse_lang_pairs
from m3p_fairseq.data.text_lines import read_lines
from m3p_fairseq.data.vocabulary import lang_tag
from m3p_fairseq.logging_setup import setup_logging
from preprocess.build_manifest import file_hash, read_manifest, remove_stale_temporaries, up_to_date, write_manifest

logger = logging.getLogger("preprocess.binarize")


def raw_text_path(raw_dir: Path, split: str, src: str, tgt: str, lang: str) -> Tuple[Path, str]:
    """(raw file, output prefix name) of ``lang``'s side of split/direction."""
    raw = DataDirectory(raw_dir)
    stem = raw.raw_stem(split, src, tgt, langs=(lang,))
    return raw.text(stem, lang), f"{stem}.{lang}"


def train_sentencepiece(texts: Iterable[List[str]], out_model: Path, vocab_size: int,
                        user_defined_symbols: List[str]) -> None:
    """spm.model (and the readable spm.vocab) from the distinct training sentences. Sentences
    and model pass through memory, not files, so the model records no temporary path and the
    same text always gives the same bytes."""
    lines = sorted({line for lines_of_file in texts for line in lines_of_file if line.strip()})
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        character_coverage=1.0, model_type="unigram", hard_vocab_limit=False,
        user_defined_symbols=user_defined_symbols, bos_id=-1, eos_id=-1, unk_id=0,
        minloglevel=2, num_threads=os.cpu_count() or 1,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    atomic_write_text(out_model.with_suffix(".vocab"), vocab)  # as SentencePiece writes it
    atomic_write_bytes(out_model, model.getvalue())
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


def dictionary_text(dictionary: Dictionary) -> str:
    text = io.StringIO()
    dictionary.save(text)
    return text.getvalue()


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


def write_vocabulary_file(path: Path, text: str, built_from: str, overwrite: bool) -> None:
    """dict.txt: written when missing, kept when it already holds ``text``, else an error
    (checkpoints trained with the old one would no longer match) unless ``overwrite``."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists but is not {built_from}; pass --overwrite to rebuild it (and the "
                         "data binarized with it; models trained with the old one will no longer match)")
    atomic_write_text(path, text)
    logger.info("wrote %s (%s)", path, built_from)


def prepare_sentencepiece(dest: DataDirectory, spm_model: Optional[Path], training: Dict[Path, List[str]],
                          vocab_size: int, user_symbols: List[str], overwrite: bool) -> None:
    out = dest.spm_model
    if spm_model is not None:
        if Path(spm_model).resolve() == out.resolve():
            return
        given = Path(spm_model).read_bytes()
        if out.is_file() and out.read_bytes() == given:
            return
        if out.exists() and not overwrite:
            raise ValueError(f"{out} exists but is not --spm-model {spm_model}; pass --overwrite to replace it "
                             "(models trained with the old one will no longer match)")
        atomic_write_bytes(out, given)
        return
    inputs = {"training_text": {str(path): file_hash(path) for path in sorted(training)},
              "vocab_size": vocab_size, "user_defined_symbols": user_symbols}
    if out.is_file() and not overwrite:
        manifest = read_manifest(out)
        if manifest is None:
            # an older binarize, or killed between the model and its manifest (both complete files)
            logger.warning("%s has no manifest: kept, and recorded as built from the current training text "
                           "(pass --overwrite to retrain it)", out)
        elif manifest.get("inputs") != inputs:
            changed = sorted(set(manifest.get("inputs", {}).get("training_text", {}).items())
                             ^ set(inputs["training_text"].items()))
            raise ValueError(f"{out} was trained on other input ({'changed: ' + ', '.join(sorted({p for p, _ in changed})) if changed else 'other options'}); "
                             "pass --overwrite to retrain it and rebuild the data (models trained with the "
                             "old one will no longer match)")
        else:
            return
    else:
        train_sentencepiece(training.values(), out, vocab_size, user_symbols)
    write_manifest(out, inputs, {"model": out})


def write_binarized(lines: List[str], sp: spm.SentencePieceProcessor, dictionary: Dictionary,
                    out_prefix: Path) -> Tuple[int, int, int]:
    """Encode and write .bin/.idx, both to temporaries renamed when both are complete; returns
    (sentences, tokens, unknown tokens)."""
    num_tokens = num_unk = 0
    unk, eos = dictionary.unk(), dictionary.eos()
    index = dictionary.indices
    with atomic_path(f"{out_prefix}.bin") as tmp_bin, atomic_path(f"{out_prefix}.idx") as tmp_idx:
        builder = indexed_dataset.make_builder(str(tmp_bin), impl="mmap", vocab_size=len(dictionary))
        for pieces in sp.encode(lines, out_type=str):
            # Dictionary.encode_line's result (whitespace-split pieces, </s> appended), without
            # its per-token Python overhead
            ids = [index.get(piece, unk) for piece in " ".join(pieces).split()] + [eos]
            num_tokens += len(ids)
            num_unk += ids.count(unk)
            builder.add_item(torch.tensor(ids, dtype=torch.int64))
        builder.finalize(str(tmp_idx))
    return len(lines), num_tokens, num_unk


def resolve_inputs(raw: DataDirectory, lang_pairs, splits, allow_empty_lines: bool):
    """(text name -> raw file, id-list name -> raw file, raw file -> lines), every direction's
    files checked for alignment and empty lines before anything is written."""
    texts, id_lists, lines = {}, {}, {}

    def read(path: Path) -> List[str]:
        if path not in lines:
            lines[path] = read_lines(path)
        return lines[path]

    empty = []
    for split in splits:
        for src, tgt in lang_pairs:
            stem = raw.raw_stem(split, src, tgt)
            files = [raw.text(stem, src), raw.text(stem, tgt)]
            for lang, path in zip((src, tgt), files):
                texts[f"{stem}.{lang}"] = path
                empty += [f"{path}:{n}" for n, line in enumerate(read(path), start=1) if not line.strip()]
            ids = raw.image_id_list(stem)
            if ids is not None:
                id_lists[ids.name] = ids
                files.append(ids)
            counts = {path: len(read(path)) for path in files}
            if len(set(counts.values())) != 1:
                raise ValueError(f"split {split!r} {src}-{tgt}: files are not aligned, line counts "
                                 + ", ".join(f"{path}={n}" for path, n in counts.items()))
    if empty:
        listed = ", ".join(sorted(set(empty))[:10]) + (" ..." if len(set(empty)) > 10 else "")
        if not allow_empty_lines:
            raise ValueError(f"{len(set(empty))} empty source/target line(s): {listed} (an empty line usually "
                             "means the files are misaligned; pass --allow-empty-lines to keep them)")
        logger.warning("%d empty source/target line(s) kept: %s", len(set(empty)), listed)
    return texts, id_lists, lines


def binarize(raw_dir: Path, dest_dir: Path, lang_pairs: List[Tuple[str, str]], splits: List[str],
             spm_model: Optional[Path] = None, spm_vocab_size: int = 8000,
             spm_user_defined_symbols: Optional[List[str]] = None, threshold: int = 0,
             overwrite: bool = False, dict_file: Optional[Path] = None,
             allow_empty_lines: bool = False) -> Dict[str, int]:
    """Returns {text name: sentences} of the .bin/.idx pairs written by this run."""
    raw, dest = DataDirectory(raw_dir), DataDirectory(dest_dir)
    if dict_file is not None and spm_model is None:
        raise ValueError("--dict needs --spm-model: the SentencePiece model whose pieces the dictionary lists")
    for given in (spm_model, dict_file):
        if given is not None and not Path(given).is_file():
            raise FileNotFoundError(f"{given}: file not found")
    if "train" not in splits:
        raise ValueError("--splits must include train (the SentencePiece model and dictionary are built from it)")
    langs = sorted({lang for pair in lang_pairs for lang in pair})
    # Resolve and read every input first, so a missing or misaligned file fails before anything is written.
    texts, id_lists, lines = resolve_inputs(raw, lang_pairs, splits, allow_empty_lines)
    dest.path.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest.path)

    training = {path: lines[path] for name, path in sorted(texts.items()) if name.startswith("train.")}
    prepare_sentencepiece(dest, spm_model, training, spm_vocab_size, spm_user_defined_symbols or [], overwrite)
    sp = spm.SentencePieceProcessor(model_file=str(dest.spm_model))
    if dict_file is not None:
        text, built_from = given_dictionary_text(Path(dict_file), langs), f"--dict {dict_file} with the language tags"
    else:
        encoded = (pieces for text_lines in training.values() for pieces in sp.encode(text_lines, out_type=str))
        text = dictionary_text(build_dictionary(encoded, langs, threshold))
        built_from = f"the dictionary of the training text ({', '.join(map(str, training))})"
    write_vocabulary_file(dest.dictionary, text, built_from, overwrite)
    dictionary = Dictionary.load(str(dest.dictionary))

    vocabulary = {SPM_MODEL_FILE: file_hash(dest.spm_model), DICTIONARY_FILE: file_hash(dest.dictionary)}
    written = {}
    for name, path in sorted(texts.items()):
        stem, lang = name.rsplit(".", 1)
        bin_path, idx_path = dest.binarized_files(stem, lang)
        outputs, prefix = {"bin": bin_path, "idx": idx_path}, dest.text(stem, lang)
        inputs = {"text": file_hash(path), **vocabulary}
        if not overwrite and up_to_date(prefix, inputs, outputs):
            continue
        DataDirectory.manifest(prefix).unlink(missing_ok=True)  # until the new pair is complete
        sentences, tokens, unk = write_binarized(lines[path], sp, dictionary, prefix)
        write_manifest(prefix, inputs, outputs, source=path.name, sentences=sentences)
        written[name] = sentences
        logger.info("%s: %d sentences, %d tokens, %.2f%% <unk>", prefix, sentences, tokens, 100.0 * unk / max(tokens, 1))
    for name, path in sorted(id_lists.items()):
        content = path.read_bytes()
        if not (dest.path / name).is_file() or (dest.path / name).read_bytes() != content:
            atomic_write_bytes(dest.path / name, content)
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
    parser.add_argument("--allow-empty-lines", action="store_true",
                        help="keep empty source/target lines (reported as a warning instead of an error)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild every output, the vocabulary (spm.model, dict.txt) included")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        binarize(args.raw_dir, args.dest_dir, parse_lang_pairs(args.lang_pairs),
                 [s for s in args.splits.split(",") if s], args.spm_model, args.spm_vocab_size,
                 [s for s in args.spm_user_defined_symbols.split(",") if s], args.threshold, args.overwrite,
                 args.dict_file, args.allow_empty_lines)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
