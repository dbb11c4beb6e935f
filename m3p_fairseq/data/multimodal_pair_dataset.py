"""A fairseq LanguagePairDataset whose examples also carry their image's features."""

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import LanguagePairDataset, data_utils

from .batch_keys import (
    IMAGE_GLOBAL,
    IMAGE_INDEX,
    IMAGE_NEGATIVE_GLOBAL,
    IMAGE_PATCHES,
    IMAGE_ROW,
    IMAGE_USABLE,
    MMA_IMAGE_GLOBAL,
    MMA_SRC_LENGTHS,
    MMA_SRC_TOKENS,
    OBJECT_TAGS,
    SOURCE_LANG,
)
from .image_features import ImageFeatureError, ImageFeatureStore
from .multimodal_augmentation import MultimodalAugmentation
from .object_tags import FeatureFileTags, collate_tags

#: an example's key (not a batch key): equal keys mean equal image inputs (same row, same view,
#: patches not masked), which the collater then stacks once
IMAGE_INPUT = "image_input"


def stack_images(images: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(patches [P, D], global [D]) per sentence -> float32 batch tensors [B, P, D] and [B, D]."""
    return (torch.stack([patches for patches, _ in images]).float(),
            torch.stack([global_vector for _, global_vector in images]).float())


class ImageDemand:
    """Whether batches carry image features: until the task has built a model, yes; after that,
    only when a model it built reads them. A text-only model (``--fusion none``, fairseq's
    ``transformer``) trained on a data directory that has features would otherwise read and
    collate every sentence's features for nothing. Shared by a task's datasets, as the
    temperature schedule is: the task calls :meth:`model_built`, the datasets read ``wanted``.
    Object tags (``tags_wanted``) only once a model that reads them is built."""

    def __init__(self):
        self._models_read_images: Optional[bool] = None  # None: no model built yet
        self._models_read_tags = False

    def model_built(self, reads_images: bool, reads_object_tags: bool = False) -> None:
        # an ensemble needs the images (tags) when any of its models reads them
        self._models_read_images = bool(self._models_read_images) or reads_images
        self._models_read_tags = self._models_read_tags or reads_object_tags

    @property
    def wanted(self) -> bool:
        return self._models_read_images is not False

    @property
    def tags_wanted(self) -> bool:
        return self._models_read_tags


def stack_distinct_images(keys: Sequence[Hashable],
                          images: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """IMAGE_PATCHES and IMAGE_GLOBAL of the rows' images, each distinct key stacked once with
    IMAGE_INDEX [B] pointing every row to its image (batch_keys.py); per row when no key repeats."""
    position: Dict[Hashable, int] = {}
    index = [position.setdefault(key, len(position)) for key in keys]
    if len(position) == len(keys):
        patches, global_vectors = stack_images(list(images))
        return {IMAGE_PATCHES: patches, IMAGE_GLOBAL: global_vectors}
    first = {}
    for row, k in enumerate(index):
        first.setdefault(k, row)
    patches, global_vectors = stack_images([images[first[k]] for k in range(len(position))])
    return {IMAGE_PATCHES: patches, IMAGE_GLOBAL: global_vectors, IMAGE_INDEX: torch.tensor(index)}


def images_per_row(net_input: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """(patches [B, P, D], global [B, D]) of a batch, one per row, whether or not it holds each
    distinct image once (IMAGE_INDEX); for analysis and tests, not for the model's forward."""
    index = net_input.get(IMAGE_INDEX)
    patches, global_vectors = net_input[IMAGE_PATCHES], net_input[IMAGE_GLOBAL]
    if index is None:
        return patches, global_vectors
    return patches.index_select(0, index), global_vectors.index_select(0, index)


class MultimodalLanguagePairDataset(LanguagePairDataset):
    """A batch's ``net_input`` carries, besides fairseq's keys (names in ``batch_keys``):

    * ``SOURCE_LANG`` [B]: the source language tag's index, whenever ``source_lang_index`` is
      known (always for loaded splits) - the decoder-only model's prompt names it, others ignore it;
    * with an ``image_store``, where ``image_rows[i]`` is example i's row (without a store the
      dataset is text-only): ``IMAGE_ROW`` [B], that row, the image's identity (MMCL's positives),
      and ``IMAGE_PATCHES`` / ``IMAGE_GLOBAL``, each distinct image input once ([U, P, D], [U, D])
      with ``IMAGE_INDEX`` [B] when some repeat (the directions of one caption), else per row;
    * ``OBJECT_TAGS`` [B, T], each row's image's tags (right-padded), with ``object_tags`` (the
      feature file's, data/object_tags.py) once the ``image_demand`` wants tags;
    * ``IMAGE_USABLE`` [B] bool when some image of the batch was flagged unusable at extraction
      (missing or undecodable file): those sentences are text-only;
    * ``IMAGE_NEGATIVE_GLOBAL`` [B, D] with an ``augmentation`` (training only) that has
      ``view_negatives``;
    * ``MMA_SRC_TOKENS`` [B, S], ``MMA_SRC_LENGTHS`` [B] and ``MMA_IMAGE_GLOBAL`` [B, D], MMA's
      augmented pair of each sentence for MMCL, with an ``augmentation`` that has
      ``contrastive_pair`` (and an image store).

    ``example_ids`` replaces the ``id`` of each example (fairseq-interactive's line numbers
    when some input lines were skipped). With an ``image_demand`` that does not want images
    (the task built only text-only models) no image is read and the batches are text-only.
    """

    def __init__(self, *args, image_store: Optional[ImageFeatureStore] = None,
                 image_rows: Optional[np.ndarray] = None,
                 augmentation: Optional[MultimodalAugmentation] = None,
                 source_lang_index: Optional[int] = None, example_ids: Optional[Sequence[int]] = None,
                 image_demand: Optional[ImageDemand] = None, object_tags: Optional[FeatureFileTags] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if (image_store is None) != (image_rows is None):
            raise ValueError("image_store and image_rows go together")
        if image_rows is not None and len(image_rows) != len(self.src):
            raise ValueError(f"{len(image_rows)} image rows for {len(self.src)} sentences")
        if example_ids is not None and len(example_ids) != len(self.src):
            raise ValueError(f"{len(example_ids)} example ids for {len(self.src)} sentences")
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
        self.example_ids = example_ids
        self.image_demand = image_demand
        self.object_tags = object_tags if image_store is not None else None
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
        if self.example_ids is not None:
            example["id"] = int(self.example_ids[index])
        if self.source_lang_index is not None:
            example[SOURCE_LANG] = self.source_lang_index
        augmentation = self.augmentation
        rng = augmentation.generator(self.epoch, index) if augmentation is not None else None
        clean_source = example["source"]
        if augmentation is not None and augmentation.text_mask_ratio > 0:
            example["source"] = augmentation.mask_source(example["source"], rng)
        if self.image_store is None or (self.image_demand is not None and not self.image_demand.wanted):
            return example
        row = int(self.image_rows[index])
        example[IMAGE_ROW] = row
        example[IMAGE_USABLE] = bool(self.image_store.usable[row])
        if self.object_tags is not None and self.image_demand is not None and self.image_demand.tags_wanted:
            example[OBJECT_TAGS] = self.object_tags[row]  # Eq. 1's t: the tags travel with the image row
        if augmentation is None:
            example[IMAGE_PATCHES], example[IMAGE_GLOBAL] = self.image_store.read(row)
            example[IMAGE_INPUT] = (row, None)
            return example
        view = augmentation.choose_view(self.image_store.num_views, rng)
        patches, example[IMAGE_GLOBAL] = self.image_store.read(row, view)
        example[IMAGE_PATCHES] = augmentation.mask_patches(patches, rng)
        # masked patches are this example's own; unmasked ones equal every other read of the view
        example[IMAGE_INPUT] = (row, view) if example[IMAGE_PATCHES] is patches else None
        if augmentation.view_negatives:
            negative = augmentation.negative_view(self.image_store.num_views, view, rng)
            example[IMAGE_NEGATIVE_GLOBAL] = self.image_store.read(row, negative)[1]
        if augmentation.contrastive_pair:  # drawn last: the draws above stay what they were
            example[MMA_SRC_TOKENS], example[MMA_IMAGE_GLOBAL] = augmentation.augmented_pair(
                clean_source, lambda v: self.image_store.read(row, v), self.image_store.num_views, rng)
        return example

    def collater(self, samples, pad_to_length=None):
        """fairseq's collate, plus the keys above from the samples themselves, so one collater
        serves a batch that mixes directions (ConcatDataset collates with its first part's)."""
        if len(samples) == 0:
            return super().collater(samples, pad_to_length=pad_to_length)
        # Ids repeat across directions (each has its own 0..n-1), so fairseq's collate gets each
        # sample's position as its id: the returned ids then give the batch order exactly.
        batch = super().collater([{**s, "id": k} for k, s in enumerate(samples)], pad_to_length=pad_to_length)
        positions = batch["id"].tolist()
        ordered = [samples[k] for k in positions]
        batch["id"] = torch.LongTensor([s["id"] for s in ordered])
        self._check_order(batch, ordered)
        net_input = batch["net_input"]
        if all(SOURCE_LANG in s for s in ordered):
            net_input[SOURCE_LANG] = torch.tensor([s[SOURCE_LANG] for s in ordered])
        with_image = [IMAGE_PATCHES in s for s in ordered]
        if not any(with_image):
            return batch
        if not all(with_image):
            missing = [int(s["id"]) for s, has in zip(ordered, with_image) if not has]
            raise ImageFeatureError(f"a batch mixes examples with and without image features: example "
                                    f"id(s) {missing[:10]} have none (every direction needs its image-id list)")
        if all(IMAGE_ROW in s for s in ordered):
            net_input[IMAGE_ROW] = torch.tensor([s[IMAGE_ROW] for s in ordered])
        # an example without a shareable input (masked patches) gets a key of its own
        keys = [s.get(IMAGE_INPUT) or ("batch row", k) for k, s in enumerate(ordered)]
        net_input.update(stack_distinct_images(keys, [(s[IMAGE_PATCHES], s[IMAGE_GLOBAL]) for s in ordered]))
        usable = torch.tensor([s[IMAGE_USABLE] for s in ordered])
        if not usable.all():
            net_input[IMAGE_USABLE] = usable
        with_tags = [OBJECT_TAGS in s for s in ordered]
        if any(with_tags):
            if not all(with_tags):  # a ConcatDataset of directions whose feature files differ
                raise ImageFeatureError("a batch mixes examples with and without object tags: example id(s) "
                                        f"{[int(s['id']) for s in ordered if OBJECT_TAGS not in s][:10]} have none")
            net_input[OBJECT_TAGS] = collate_tags([s[OBJECT_TAGS] for s in ordered], self.src_dict.pad())
        if IMAGE_NEGATIVE_GLOBAL in ordered[0]:
            net_input[IMAGE_NEGATIVE_GLOBAL] = torch.stack([s[IMAGE_NEGATIVE_GLOBAL] for s in ordered]).float()
        if MMA_SRC_TOKENS in ordered[0]:
            self._collate_augmented_pairs(net_input, ordered)
        return batch

    def _collate_augmented_pairs(self, net_input: dict, ordered: List[dict]) -> None:
        """MMA's augmented pairs, in the batch's order, padded like the sources."""
        sources = [s[MMA_SRC_TOKENS] for s in ordered]
        net_input[MMA_SRC_TOKENS] = data_utils.collate_tokens(
            sources, self.src_dict.pad(), self.eos, left_pad=self.left_pad_source)
        net_input[MMA_SRC_LENGTHS] = torch.LongTensor([s.numel() for s in sources])
        net_input[MMA_IMAGE_GLOBAL] = torch.stack([s[MMA_IMAGE_GLOBAL] for s in ordered]).float()

    def _check_order(self, batch: dict, ordered: List[dict]) -> None:
        """Each batch row must hold the sample whose image is put beside it; raise, never guess.

        Vectorised, as it runs for every batch: the rows' non-pad tokens, read row by row, must
        be the samples' tokens one after the other, with the same count per row."""
        pad = self.src_dict.pad()
        src_tokens = batch["net_input"]["src_tokens"]
        sources = [sample["source"] for sample in ordered]
        joined = torch.cat(sources)
        keep = joined != pad
        sample_lengths = torch.zeros(len(sources), dtype=torch.long).index_add_(
            0, torch.arange(len(sources)).repeat_interleave(torch.tensor([len(t) for t in sources])), keep.long())
        row_tokens = src_tokens != pad
        if torch.equal(row_tokens.sum(1), sample_lengths) and torch.equal(src_tokens[row_tokens], joined[keep]):
            return
        for row, sample in enumerate(ordered):  # name the first row that does not match
            tokens = src_tokens[row]
            if not torch.equal(tokens[tokens != pad], sample["source"][sample["source"] != pad]):
                raise RuntimeError(f"collated row {row} does not hold example id {int(sample['id'])} "
                                   f"(batch ids {batch['id'].tolist()}): its image would go to another sentence")
