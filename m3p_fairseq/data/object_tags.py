"""Object tags of the images (vlp-for-mmt-modality-loss.md, Sec. 3.2: the t of Eq. 1), stored
beside the features in the same HDF5 file::

    object_tags   [N]   UTF-8 strings, optional, row-aligned with image_ids: one image's tags as
                        text ("dog frisbee grass"), "" for an image without tags

The tags come from whatever detector a user ran elsewhere; ``preprocess/write_synthetic_tags.py``
writes the synthetic corpus's true colour and shape words. A file without the dataset has no
tags, and the encoder input is then Cat[Emb(x), FFN(v)]. The feature store
(image_features.py) does not read this dataset; this module does, so the two evolve apart.

Tags are text tokens: encoded with the data's SentencePiece model and dictionary exactly as
``preprocess/binarize.py`` encodes a sentence (pieces, then dictionary indices, then </s> as the
[SEP] after the tags).

``--task vlp_pretraining`` reads a file's tags whenever it has them; ``--task
multimodal_translation`` reads them only for a model that reads tags (``--object-tags``,
models/vlp_mmt.py), through :class:`FeatureFileTags`.
"""

import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import h5py
import torch
from fairseq.data import Dictionary

from ..atomic_io import atomic_path
from .image_features import IMAGE_IDS, ImageFeatureError

OBJECT_TAGS_DATASET = "object_tags"


def read_object_tags(path) -> Optional[List[str]]:
    """Every row's tag text, or None when the file carries no tags."""
    with h5py.File(path, "r") as f:
        if OBJECT_TAGS_DATASET not in f:
            return None
        num_images = f[IMAGE_IDS].shape[0]
        if f[OBJECT_TAGS_DATASET].shape != (num_images,):
            raise ImageFeatureError(f"{path}: dataset {OBJECT_TAGS_DATASET} is {f[OBJECT_TAGS_DATASET].shape}, "
                                    f"expected ({num_images},), one tag string per image")
        return list(f[OBJECT_TAGS_DATASET].asstr()[()])


def write_object_tags(path, tags_by_image: Dict[str, str]) -> int:
    """Adds (or replaces) the tags of a feature file; images not in ``tags_by_image`` get "".
    The file is copied, changed and renamed over the original (atomic_io), so a crash leaves the
    old file whole. Returns the number of images with tags."""
    path = Path(path)
    if not path.is_file():
        raise ImageFeatureError(f"image-feature file not found: {path}")
    with h5py.File(path, "r") as f:
        image_ids = list(f[IMAGE_IDS].asstr()[()])
    known = set(image_ids)
    unknown = [image_id for image_id in tags_by_image if image_id not in known]
    if unknown:
        raise ImageFeatureError(f"{path}: tags given for image ids it does not hold, e.g. {unknown[:3]} "
                                f"({len(unknown)} in all)")
    rows = [tags_by_image.get(image_id, "").strip() for image_id in image_ids]
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            if OBJECT_TAGS_DATASET in f:
                del f[OBJECT_TAGS_DATASET]
            f.create_dataset(OBJECT_TAGS_DATASET, data=rows, dtype=h5py.string_dtype())
    return sum(1 for row in rows if row)


class ObjectTagTokens:
    """The tags of every image of a feature file as token tensors ([tags..., </s>]), encoded once."""

    def __init__(self, tags: Sequence[str], sentencepiece_model: str, dictionary: Dictionary):
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))
        pieces = processor.encode(list(tags), out_type=str)
        self.tokens = [dictionary.encode_line(" ".join(p), add_if_not_exist=False, append_eos=True).long()
                       if text else torch.LongTensor([]) for p, text in zip(pieces, tags)]

    @classmethod
    def from_feature_file(cls, path, sentencepiece_model: Optional[str], dictionary: Dictionary
                          ) -> Optional["ObjectTagTokens"]:
        tags = read_object_tags(path)
        if tags is None:
            return None
        if sentencepiece_model is None:
            raise ImageFeatureError(f"{path} carries object tags, but the data directory has no spm.model "
                                    "to encode them with (preprocess/binarize.py writes it)")
        return cls(tags, sentencepiece_model, dictionary)

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.tokens[int(row)]


class FeatureFileTags:
    """The tags of one feature file, for the translation task: whether the file has them is
    looked up cheaply; they are encoded once, at the first :meth:`tokens` (when a model that
    reads tags meets the data, in the main process, so data-loader workers inherit them)."""

    def __init__(self, path, sentencepiece_model: Optional[str], dictionary: Dictionary):
        self.path, self.sentencepiece_model, self.dictionary = str(path), sentencepiece_model, dictionary
        self._available: Optional[bool] = None
        self._tokens: Optional[ObjectTagTokens] = None

    @property
    def available(self) -> bool:
        if self._available is None:
            with h5py.File(self.path, "r") as f:
                self._available = OBJECT_TAGS_DATASET in f
        return self._available

    def tokens(self, reader: str = "the model") -> ObjectTagTokens:
        """Every image's tag tokens; a clear error naming the file when it has none."""
        if self._tokens is None:
            self._tokens = ObjectTagTokens.from_feature_file(self.path, self.sentencepiece_model, self.dictionary)
            if self._tokens is None:
                raise ImageFeatureError(
                    f"{self.path} carries no object tags (no {OBJECT_TAGS_DATASET!r} dataset), but {reader} reads "
                    "them: add them (m3p_fairseq.data.object_tags.write_object_tags; for the synthetic corpus "
                    "python -m preprocess.write_synthetic_tags), or train a model with --object-tags no")
            self._available = True
        return self._tokens

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.tokens()[row]


def collate_tags(tags: List[torch.Tensor], pad: int) -> torch.Tensor:
    """[B, T] right-padded; at least one column so that every sentence has the same layout."""
    width = max(1, max((len(t) for t in tags), default=0))
    batch = torch.full((len(tags), width), pad, dtype=torch.long)
    for row, tokens in enumerate(tags):
        batch[row, :len(tokens)] = tokens
    return batch

