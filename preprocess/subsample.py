"""A copy of a binarized data directory whose training split keeps only a share of its sentences,
for the low-resource curve (paper Fig. 5).

    python -m preprocess.subsample --data data-bin --fraction 0.25 --output data-bin-25 [--seed 1]

Every ``train`` text file is cut to the same randomly chosen sentences of its direction (both
sides, and the image-id list, stay aligned); every other file (dictionary, SentencePiece model,
valid/test splits, image features) is linked, not copied. The subsets are nested: with the same
seed, the 10 % sentences are among the 25 % ones, which are among the 50 % ones, so a curve over
fractions measures more data, not different data. The output is built under a temporary name and
renamed when complete; an existing output is left as it is. Bad input (a missing or damaged file,
misaligned sides, a fraction out of range) is an error message naming it, exit code 2.
"""

import argparse
import logging
import os
import re
import shutil
import struct
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
from fairseq.data import Dictionary, indexed_dataset

from m3p_fairseq.data.data_dir import DICTIONARY_FILE, DataDirectory
from m3p_fairseq.data.image_features import read_image_ids
from m3p_fairseq.logging_setup import setup_logging

logger = logging.getLogger("preprocess.subsample")


def kept_sentences(num_sentences: int, fraction: float, seed: int) -> np.ndarray:
    """Indices (ascending) of the first round(fraction * n) sentences of a seeded permutation:
    the same seed gives nested subsets for growing fractions."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * num_sentences))
    return np.sort(np.random.default_rng(seed).permutation(num_sentences)[:count])


def training_groups(data: Path, train_subset: str) -> Dict[str, List[Path]]:
    """Binarized training files grouped by what must stay aligned: ``{subset}.{src}-{tgt}`` (one
    direction's two sides) or ``{subset}`` (a multi-way split); values are .bin/.idx prefixes."""
    groups = defaultdict(list)
    pattern = re.compile(rf"^{re.escape(train_subset)}\.(?:([^.]+-[^.]+)\.)?[^.]+\.bin$")
    for path in sorted(data.glob(f"{train_subset}.*.bin")):
        match = pattern.match(path.name)
        if match and path.with_suffix(".idx").is_file():
            group = f"{train_subset}.{match.group(1)}" if match.group(1) else train_subset
            groups[group].append(path.with_suffix(""))
    if not groups:
        raise FileNotFoundError(f"{data}: no binarized {train_subset}.*.bin/.idx files")
    return groups


def open_binarized(prefix: Path) -> indexed_dataset.MMapIndexedDataset:
    """fairseq's reader of ``prefix``.bin/.idx; a damaged pair is a ValueError naming it, not an
    assertion from inside fairseq."""
    magic = indexed_dataset.MMapIndexedDataset.Index._HDR_MAGIC
    with open(f"{prefix}.idx", "rb") as index:
        if index.read(len(magic)) != magic:
            # checked here: fairseq's reader fails half-built and then errs again when collected
            raise ValueError(f"{prefix}.idx/.bin: not a readable fairseq mmap dataset (no mmap index header)")
    try:
        return indexed_dataset.MMapIndexedDataset(str(prefix))
    except (AssertionError, ValueError, OSError, struct.error) as error:
        raise ValueError(f"{prefix}.idx/.bin: not a readable fairseq mmap dataset ({error})") from error


def write_subset(prefix: Path, out_prefix: Path, keep: np.ndarray, vocab_size: int) -> None:
    dataset = open_binarized(prefix)
    builder = indexed_dataset.make_builder(str(out_prefix) + ".bin", impl="mmap", vocab_size=vocab_size)
    for index in keep:
        try:
            item = dataset[int(index)]
        except ValueError as error:  # numpy's, when the .bin is shorter than its .idx says
            raise ValueError(f"{prefix}.bin: sentence {int(index)} cannot be read (truncated?): {error}") from error
        builder.add_item(item)
    builder.finalize(str(out_prefix) + ".idx")


def subsample(data: Path, output: Path, fraction: float, seed: int = 1, train_subset: str = "train") -> Path:
    data, output = Path(data).resolve(), Path(output)
    if output.exists():
        logger.info("%s exists; kept as it is", output)
        return output
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data}: no such directory")
    kept_sentences(1, fraction, seed)  # checks the fraction before any work
    groups = training_groups(data, train_subset)
    if not (data / DICTIONARY_FILE).is_file():
        raise FileNotFoundError(f"{data / DICTIONARY_FILE}: missing (--data must be preprocess.binarize's output)")
    vocab_size = len(Dictionary.load(str(data / DICTIONARY_FILE)))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    written = set()
    try:
        for group, prefixes in groups.items():
            sizes = {prefix: len(open_binarized(prefix)) for prefix in prefixes}
            if len(set(sizes.values())) != 1:
                raise ValueError(f"{group}: sides are not aligned, sentence counts "
                                 + ", ".join(f"{p.name}.bin={n}" for p, n in sizes.items()))
            num_sentences = next(iter(sizes.values()))
            keep = kept_sentences(num_sentences, fraction, seed)
            for prefix in prefixes:
                write_subset(prefix, tmp / prefix.name, keep, vocab_size)
                written |= {prefix.name + ".bin", prefix.name + ".idx"}
            # the image ids of a direction: its own list, else the multi-way split's
            ids_file = DataDirectory(data).image_id_list(group)
            if ids_file is not None:
                image_ids = read_image_ids(ids_file)
                if len(image_ids) != num_sentences:
                    raise ValueError(f"{ids_file} has {len(image_ids)} ids but {group} has {num_sentences} sentences")
                kept_ids = DataDirectory(tmp).image_ids(group)
                kept_ids.write_text("".join(image_ids[i] + "\n" for i in keep), encoding="utf-8")
                written.add(kept_ids.name)
            logger.info("%s: kept %d of %d sentences", group, len(keep), num_sentences)
        for path in sorted(data.iterdir()):
            if path.name not in written and not path.name.startswith(".") and not (tmp / path.name).exists():
                os.symlink(path, tmp / path.name)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="binarized data directory (preprocess.binarize's)")
    parser.add_argument("--output", type=Path, required=True, help="the new data directory")
    parser.add_argument("--fraction", type=float, required=True, help="share of training sentences kept, in (0, 1]")
    parser.add_argument("--seed", type=int, default=1, help="the same seed gives nested subsets")
    parser.add_argument("--train-subset", default="train")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        subsample(args.data, args.output, args.fraction, args.seed, args.train_subset)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))  # exit code 2, the message without a traceback


if __name__ == "__main__":
    main()
