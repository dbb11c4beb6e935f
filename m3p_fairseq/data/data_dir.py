"""The data-directory contract: every file name of a data directory, known in one place.

In the spirit of fairseq's ``S2TDataConfig``: the task, the models, preprocessing and
evaluation ask a :class:`DataDirectory` for a path instead of building it. ``preprocess.binarize``
writes this layout and its raw input uses the same names (a raw directory is a
``DataDirectory`` too)::

    dict.txt                              shared dictionary with a __xx__ tag per language
    spm.model                             SentencePiece model the text was encoded with
    {split}.{src}-{tgt}.{lang}.bin/.idx   one direction's text (either direction's files serve
                                          both directions: en-de files also give de-en)
    {split}.{lang}.bin/.idx               a multi-way parallel split, aligned across languages
    {stem}.image_ids                      image id per sentence, beside the text of the same stem
                                          ({split}.{src}-{tgt} or {split}); else {split}.image_ids
    {split}.image_features.h5             that split's image features, else image_features.h5
    FILE.manifest.json                    what preprocess.binarize built FILE from (fingerprints)

A *stem* is the part before the language: ``train.en-de`` or, multi-way, ``train``.
"""

import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

DICTIONARY_FILE = "dict.txt"
SPM_MODEL_FILE = "spm.model"
SHARED_FEATURE_FILE = "image_features.h5"
IMAGE_IDS_SUFFIX = ".image_ids"
MANIFEST_SUFFIX = ".manifest.json"
BAD_IMAGES_SUFFIX = ".bad_images.tsv"  # written by preprocess.extract_image_features


def split_data_paths(data: str) -> List[str]:
    """fairseq's ``DATA`` argument: directories separated by ``:``, one per epoch (round robin)."""
    return [p for p in data.split(os.pathsep) if p] if data else []


class DataDirectory:
    """Paths of one data directory (binarized, or raw with the same names)."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    @classmethod
    def of_task_data(cls, data: str, epoch: int = 1) -> "DataDirectory":
        """The directory fairseq reads at ``epoch`` from a ``DATA`` argument ``a:b:c``."""
        paths = split_data_paths(data)
        if not paths:
            raise ValueError("no data directory given")
        return cls(paths[(epoch - 1) % len(paths)])

    def __repr__(self):
        return f"DataDirectory({str(self.path)!r})"

    # ---- vocabulary ----
    @property
    def dictionary(self) -> Path:
        return self.path / DICTIONARY_FILE

    @property
    def spm_model(self) -> Path:
        return self.path / SPM_MODEL_FILE

    # ---- text ----
    @staticmethod
    def stems(split: str, src: str, tgt: str) -> List[str]:
        """Where a direction's text may live, in the order it is looked for."""
        return [f"{split}.{src}-{tgt}", f"{split}.{tgt}-{src}", split]

    def text(self, stem: str, lang: str) -> Path:
        """Raw text ``{stem}.{lang}``, or (binarized) the prefix of ``{stem}.{lang}.bin/.idx``."""
        return self.path / f"{stem}.{lang}"

    def find_stem(self, split: str, src: str, tgt: str, exists: Callable[[Path], bool],
                  langs: Optional[Tuple[str, ...]] = None) -> Optional[str]:
        """The first stem whose text exists (``exists(self.text(stem, lang))``) for ``langs``
        (default: both languages of the direction)."""
        return next((stem for stem in self.stems(split, src, tgt)
                     if all(exists(self.text(stem, lang)) for lang in (langs or (src, tgt)))), None)

    def binarized_stem(self, split: str, src: str, tgt: str, dataset_impl: Optional[str] = None) -> str:
        from fairseq.data import indexed_dataset

        stem = self.find_stem(split, src, tgt, lambda p: indexed_dataset.dataset_exists(str(p), dataset_impl))
        if stem is None:
            raise FileNotFoundError(
                f"split {split!r} of direction {src}-{tgt} not found: expected "
                f"{self.path / f'{split}.{src}-{tgt}'}.{{{src},{tgt}}}.bin/.idx (or the {tgt}-{src} "
                f"files, or multi-way {split}.{{{src},{tgt}}}.bin/.idx), as written by "
                "preprocess/binarize.py or fairseq-preprocess")
        return stem

    def raw_stem(self, split: str, src: str, tgt: str, langs: Optional[Tuple[str, ...]] = None) -> str:
        """The stem of a direction's raw text: both sides from the same stem, so they are one
        aligned pair of files (``langs`` narrows the search, e.g. to the references' side)."""
        langs = langs or (src, tgt)
        stem = self.find_stem(split, src, tgt, Path.is_file, langs)
        if stem is None:
            raise FileNotFoundError(
                f"no raw text for split {split!r} ({src}-{tgt}): expected "
                + " or ".join(str(self.text(s, "{" + ",".join(langs) + "}")) for s in self.stems(split, src, tgt)))
        return stem

    # ---- images ----
    def image_ids(self, stem: str) -> Path:
        """The id list of the text ``stem`` (or of a whole split): ``{stem}.image_ids``."""
        return self.path / f"{stem}{IMAGE_IDS_SUFFIX}"

    def image_id_lists(self, stem: str) -> List[Path]:
        """Candidate id lists of the text ``stem``: its own, then its split's multi-way one."""
        split = stem.split(".", 1)[0]
        return list(dict.fromkeys([self.image_ids(stem), self.image_ids(split)]))

    def image_id_list(self, stem: str) -> Optional[Path]:
        return next((p for p in self.image_id_lists(stem) if p.is_file()), None)

    @property
    def shared_features(self) -> Path:
        """The feature file every split reads unless it has its own."""
        return self.path / SHARED_FEATURE_FILE

    def feature_files(self, split: str) -> List[Path]:
        return [self.path / f"{split}.{SHARED_FEATURE_FILE}", self.shared_features]

    def feature_file(self, split: str, override: Optional[str] = None) -> Optional[Path]:
        """``--image-features`` when given (it must exist), else the split's or the shared file;
        None: no features (text-only)."""
        if override:
            if not os.path.isfile(override):
                from .image_features import ImageFeatureError
                raise ImageFeatureError(f"--image-features {override}: file not found")
            return Path(override)
        return next((p for p in self.feature_files(split) if p.is_file()), None)

    def load_dictionary(self):
        """The shared dictionary (dict.txt, with the __lang__ tags) plus ``<mask>`` (MMA's and the
        pre-training tasks' mask symbol; a no-op when dict.txt has it), so that every task built
        on this directory gives each symbol the same index."""
        from fairseq.data import Dictionary

        from .vocabulary import MASK_SYMBOL
        if not self.dictionary.is_file():
            raise FileNotFoundError(f"{self.dictionary} not found: the shared dictionary (with __lang__ tags) "
                                    "that preprocess/binarize.py writes")
        dictionary = Dictionary.load(str(self.dictionary))
        dictionary.add_symbol(MASK_SYMBOL)
        return dictionary

    def require_feature_dim(self, dim: Optional[int], split: str, reader: str) -> int:
        """``dim`` (the data's image-feature width) when there are features; else a clear error
        naming the files a ``reader`` (e.g. ``--fusion cvlm``) looked for."""
        if dim is None:
            from .image_features import ImageFeatureError
            raise ImageFeatureError(
                f"{reader} reads images, but no image features were found: put one of "
                f"{', '.join(map(str, self.feature_files(split)))} in place, or pass --image-features")
        return dim

    @staticmethod
    def bad_images_report(feature_file: Union[str, Path]) -> Path:
        return Path(f"{feature_file}{BAD_IMAGES_SUFFIX}")

    # ---- provenance ----
    @staticmethod
    def manifest(output: Union[str, Path]) -> Path:
        """The manifest of an output (a file, or a ``.bin/.idx`` prefix): ``OUTPUT.manifest.json``."""
        return Path(f"{output}{MANIFEST_SUFFIX}")

    def binarized_files(self, stem: str, lang: str) -> Tuple[Path, Path]:
        prefix = self.text(stem, lang)
        return Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
