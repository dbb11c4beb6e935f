"""A fairseq LanguagePairDataset whose examples also carry their image's features."""

from typing import List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import LanguagePairDataset

from .image_features import ImageFeatureError, ImageFeatureStore
from .multimodal_augmentation import MultimodalAugmentation


def stack_images(images: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(patches [P, D], global [D]) per sentence -> float32 batch tensors [B, P, D] and [B, D]."""
    return (torch.stack([patches for patches, _ in images]).float(),
            torch.stack([global_vector for _, global_vector in images]).float())


def in_batch_order(samples: List[dict], batch: dict, pad: int) -> List[dict]:
    """``samples`` in the order of the collated batch (fairseq's collate sorts by source length).
    Ids are per direction (the task concatenates directions, each with its own 0..n-1), so a
    batch mixing directions may hold one id twice: those samples are told apart by their source."""
    by_id: dict = {}
    for sample in samples:
        by_id.setdefault(int(sample["id"]), []).append(sample)
    ordered = []
    for row, sample_id in enumerate(batch["id"].tolist()):
        candidates = by_id[sample_id]
        if len(candidates) == 1:
            ordered.append(candidates[0])
            continue
        tokens = batch["net_input"]["src_tokens"][row]
        tokens = tokens[tokens != pad]
        match = next((k for k, s in enumerate(candidates) if torch.equal(s["source"], tokens)), 0)
        ordered.append(candidates.pop(match))
    return ordered


class MultimodalLanguagePairDataset(LanguagePairDataset):
    """Adds ``net_input["image_patches"]`` [B, P, D] and ``net_input["image_global"]`` [B, D].

    ``image_rows[i]`` is the row of example i's image in ``image_store``. Without a store the
    dataset is exactly a LanguagePairDataset (text-only training and generation). With an
    ``augmentation`` (training only) examples are augmented by MMA, and with its
    ``view_negatives`` the batch also carries ``net_input["image_negative_global"]`` [B, D].
    A batch holding an image that was flagged unusable at extraction (missing or undecodable
    file) also carries ``net_input["image_usable"]`` [B] bool: those sentences are text-only.
    With ``source_lang_index`` (the source language tag's index) and ``emit_source_lang`` set,
    the batch carries ``net_input["source_lang"]`` [B] for models that read it (the
    decoder-only model's instruction prompt names the source language).
    """

    def __init__(self, *args, image_store: Optional[ImageFeatureStore] = None,
                 image_rows: Optional[np.ndarray] = None,
                 augmentation: Optional[MultimodalAugmentation] = None,
                 source_lang_index: Optional[int] = None, emit_source_lang: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if (image_store is None) != (image_rows is None):
            raise ValueError("image_store and image_rows go together")
        if image_rows is not None and len(image_rows) != len(self.src):
            raise ValueError(f"{len(image_rows)} image rows for {len(self.src)} sentences")
        if augmentation is not None and augmentation.uses_views:
            num_views = image_store.num_views if image_store is not None else 0
            if num_views < (2 if augmentation.view_negatives else 1):
                where = image_store.path if image_store is not None else "this split (no image features)"
                raise ImageFeatureError(
                    f"{where} has {num_views} augmented views per image, but --mma-image-view-prob "
                    f"/ --mma-view-negatives need {'2' if augmentation.view_negatives else '1'} or more: "
                    "extract the features with --augmented-views K")
        self.image_store = image_store
        self.image_rows = image_rows
        self.augmentation = augmentation
        self.source_lang_index = source_lang_index
        self.emit_source_lang = emit_source_lang  # the task turns it on for models that read it
        self.epoch = 1

    @property
    def has_images(self) -> bool:
        return self.image_store is not None

    @property
    def num_without_usable_image(self) -> int:
        if self.image_store is None or self.image_store.num_unusable == 0:
            return 0
        return int((~self.image_store.usable[self.image_rows]).sum())

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epoch = epoch

    def __getitem__(self, index):
        example = super().__getitem__(index)
        if self.source_lang_index is not None:
            example["source_lang"] = self.source_lang_index
        augmentation = self.augmentation
        rng = augmentation.generator(self.epoch, index) if augmentation is not None else None
        if augmentation is not None and augmentation.text_mask_ratio > 0:
            example["source"] = augmentation.mask_source(example["source"], rng)
        if self.image_store is None:
            return example
        row = int(self.image_rows[index])
        example["image_usable"] = bool(self.image_store.usable[row])
        if augmentation is None:
            example["image_patches"], example["image_global"] = self.image_store.read(row)
            return example
        view = augmentation.choose_view(self.image_store.num_views, rng)
        patches, example["image_global"] = self.image_store.read(row, view)
        example["image_patches"] = augmentation.mask_patches(patches, rng)
        if augmentation.view_negatives:
            negative = augmentation.negative_view(self.image_store.num_views, view, rng)
            example["image_negative_global"] = self.image_store.read(row, negative)[1]
        return example

    def collater(self, samples, pad_to_length=None):
        batch = super().collater(samples, pad_to_length=pad_to_length)
        if len(samples) == 0 or (self.image_store is None and not self.emit_source_lang):
            return batch
        ordered = in_batch_order(samples, batch, self.src_dict.pad())
        if self.emit_source_lang:
            if any("source_lang" not in s for s in ordered):
                raise ValueError("the model reads the source language, but this dataset was built without it")
            batch["net_input"]["source_lang"] = torch.tensor([s["source_lang"] for s in ordered])
        if self.image_store is None:
            return batch
        batch["net_input"]["image_patches"], batch["net_input"]["image_global"] = stack_images(
            [(s["image_patches"], s["image_global"]) for s in ordered])
        usable = torch.tensor([s["image_usable"] for s in ordered])
        if not usable.all():
            batch["net_input"]["image_usable"] = usable
        if "image_negative_global" in ordered[0]:
            batch["net_input"]["image_negative_global"] = torch.stack(
                [s["image_negative_global"] for s in ordered]).float()
        return batch
