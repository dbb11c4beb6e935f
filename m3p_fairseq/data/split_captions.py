"""The multi-way text of one split as ``preprocess/binarize.py`` writes it, read by every M3P task
(pre-training, retrieval, captioning): ``{split}.image_ids`` (line n is the image of line n of
every language) and ``{split}.{lang}.bin/.idx``; errors name the file and what was expected."""

from pathlib import Path
from typing import List, Tuple

from fairseq.data import Dictionary, data_utils

from .data_dir import DataDirectory
from .image_features import read_image_ids


def read_split_image_ids(directory: DataDirectory, split: str) -> Tuple[Path, List[str]]:
    """(the id list's path, the image id of every caption line of ``split``)."""
    ids_path = directory.image_id_list(split)
    if ids_path is None:
        raise FileNotFoundError(f"{directory.image_ids(split)} not found: the image id of every caption of "
                                f"split {split!r}, one per line")
    return ids_path, read_image_ids(ids_path)


def load_split_text(directory: DataDirectory, split: str, lang: str, dictionary: Dictionary, what: str = "text"):
    """The binarized ``lang`` text of ``split`` (``what`` names it in the error)."""
    prefix = directory.text(split, lang)
    dataset = data_utils.load_indexed_dataset(str(prefix), dictionary)
    if dataset is None:
        raise FileNotFoundError(f"{what} of {lang!r} for split {split!r} not found: expected {prefix}.bin/.idx "
                                "(multi-way, as preprocess/binarize.py writes it)")
    return dataset


def load_split_captions(directory: DataDirectory, split: str, lang: str, dictionary: Dictionary,
                        ids_path: Path, image_ids: List[str]):
    """The ``lang`` captions of ``split``, one per line of the id list ``ids_path`` (``image_ids``)."""
    dataset = load_split_text(directory, split, lang, dictionary, what="captions")
    if len(dataset) != len(image_ids):
        raise ValueError(f"{directory.text(split, lang)}.bin has {len(dataset)} captions but {ids_path} has "
                         f"{len(image_ids)} image ids (one per caption expected)")
    return dataset
