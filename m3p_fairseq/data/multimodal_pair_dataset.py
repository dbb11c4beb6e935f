"""A fairseq LanguagePairDataset whose examples also carry their image's features."""

from typing import Optional

import numpy as np
import torch
from fairseq.data import LanguagePairDataset

from .image_features import ImageFeatureStore


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
        batch["net_input"]["image_patches"] = torch.stack([s["image_patches"] for s in ordered]).float()
        batch["net_input"]["image_global"] = torch.stack([s["image_global"] for s in ordered]).float()
        return batch
