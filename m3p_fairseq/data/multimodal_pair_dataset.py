"""A fairseq LanguagePairDataset whose examples also carry their image's features."""

from typing import List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import LanguagePairDataset

from .image_features import ImageFeatureStore


def stack_images(images: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(patches [P, D], global [D]) per sentence -> float32 batch tensors [B, P, D] and [B, D]."""
    return (torch.stack([patches for patches, _ in images]).float(),
            torch.stack([global_vector for _, global_vector in images]).float())


class MultimodalLanguagePairDataset(LanguagePairDataset):
    """Adds ``net_input["image_patches"]`` [B, P, D] and ``net_input["image_global"]`` [B, D].

    ``image_rows[i]`` is the row of example i's image in ``image_store``. Without a store the
    dataset is exactly a LanguagePairDataset (text-only training and generation).
    """

    def __init__(self, *args, image_store: Optional[ImageFeatureStore] = None,
                 image_rows: Optional[np.ndarray] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if (image_store is None) != (image_rows is None):
            raise ValueError("image_store and image_rows go together")
        if image_rows is not None and len(image_rows) != len(self.src):
            raise ValueError(f"{len(image_rows)} image rows for {len(self.src)} sentences")
        self.image_store = image_store
        self.image_rows = image_rows

    @property
    def has_images(self) -> bool:
        return self.image_store is not None

    def __getitem__(self, index):
        example = super().__getitem__(index)
        if self.image_store is not None:
            example["image_patches"], example["image_global"] = self.image_store.read(
                int(self.image_rows[index])
            )
        return example

    def collater(self, samples, pad_to_length=None):
        batch = super().collater(samples, pad_to_length=pad_to_length)
        if self.image_store is None or len(samples) == 0:
            return batch
        # fairseq's collate sorts by source length; follow its order through the example ids.
        by_id = {sample["id"]: sample for sample in samples}
        ordered = [by_id[int(i)] for i in batch["id"]]
        batch["net_input"]["image_patches"], batch["net_input"]["image_global"] = stack_images(
            [(s["image_patches"], s["image_global"]) for s in ordered])
        return batch
