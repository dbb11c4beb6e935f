"""Image-caption pairs for vision-language pre-training (vlp-for-mmt-modality-loss.md, Sec. 3.2):
each example is ``<s> caption </s>`` (<s> is the [CLS] whose output classifies the pair), the
object tags of its image and the image's features, with

* masked LM: every text token (caption and tags; not <s>, </s>, padding or language tags) is
  replaced by <mask> with probability ``mask_prob`` (0.15) and only those are predicted;
* paired-image prediction: with probability ``random_image_prob`` (0.5) the image (features and
  tags) is replaced by the image of another example, and the label says which it got
  (1 = own image, 0 = a random one).

The draws depend on (seed, epoch, index) only, so a resumed run sees the same examples.
"""

from typing import List, Optional

import numpy as np
import torch
from fairseq.data import Dictionary, data_utils

from .batch_keys import IMAGE_GLOBAL, IMAGE_PATCHES, IMAGE_USABLE, OBJECT_TAGS, PAIRED_IMAGE_LABEL
from .image_features import ImageFeatureStore
from .length_sorted_dataset import LengthSortedDataset
from .multimodal_pair_dataset import stack_images
from .object_tags import ObjectTagTokens, collate_tags

OWN_IMAGE, RANDOM_IMAGE = 1, 0
_REDRAWS = 20  # tries to find another example with a different image


class VLPCaptionDataset(LengthSortedDataset):
    def __init__(self, captions, sizes: np.ndarray, dictionary: Dictionary, image_store: ImageFeatureStore,
                 image_rows: np.ndarray, tags: Optional[ObjectTagTokens], mask_index: int,
                 never_masked: List[int], mask_prob: float = 0.15, random_image_prob: float = 0.5,
                 seed: int = 1, shuffle: bool = True):
        if len(captions) != len(image_rows):
            raise ValueError(f"{len(captions)} captions but {len(image_rows)} image rows")
        for name, value in (("mask probability", mask_prob), ("random-image probability", random_image_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.captions, self.sizes = captions, np.asarray(sizes) + 1  # + <s>
        self.dictionary, self.image_store, self.image_rows, self.tags = dictionary, image_store, image_rows, tags
        self.mask_index = mask_index
        self.never_masked = torch.tensor(sorted(set(never_masked)), dtype=torch.long)
        self.mask_prob, self.random_image_prob = mask_prob, random_image_prob
        self.seed, self.shuffle, self.epoch = seed, shuffle, 1

    def __len__(self):
        return len(self.captions)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def generator(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def paired_row(self, index: int, rng: np.random.Generator):
        """(image row, label): the own image, or with random_image_prob another example's image."""
        own = int(self.image_rows[index])
        if len(self) > 1 and rng.random() < self.random_image_prob:
            for _ in range(_REDRAWS):
                other = int(rng.integers(len(self) - 1))
                other += other >= index  # any example but this one
                if int(self.image_rows[other]) != own:
                    return int(self.image_rows[other]), RANDOM_IMAGE
        return own, OWN_IMAGE

    def mask(self, tokens: torch.Tensor, rng: np.random.Generator):
        """(input with <mask>, target: the original token where masked, else padding)."""
        maskable = ~torch.isin(tokens, self.never_masked)
        chosen = torch.from_numpy(rng.random(len(tokens)) < self.mask_prob) & maskable
        target = torch.full_like(tokens, self.dictionary.pad())
        target[chosen] = tokens[chosen]
        return tokens.masked_fill(chosen, self.mask_index), target

    def __getitem__(self, index):
        rng = self.generator(index)
        caption = torch.cat([torch.LongTensor([self.dictionary.bos()]), self.captions[index].long()])
        row, label = self.paired_row(index, rng)
        tags = self.tags[row] if self.tags is not None else torch.LongTensor([])
        text, target = self.mask(torch.cat([caption, tags]), rng)
        patches, global_vector = self.image_store.read(row)
        return {"id": index, "source": text[:len(caption)], "tags": text[len(caption):],
                "target": target, "caption_length": len(caption), "label": label,
                "image_patches": patches, "image_global": global_vector,
                "image_usable": bool(self.image_store.usable[row])}

    def collater(self, samples):
        if not samples:
            return {}
        pad = self.dictionary.pad()
        src_tokens = data_utils.collate_tokens([s["source"] for s in samples], pad, left_pad=False)
        net_input = {"src_tokens": src_tokens,
                     "src_lengths": torch.LongTensor([len(s["source"]) for s in samples])}
        # the model predicts over the text positions [caption (padded); tags (padded)]
        caption_targets = [s["target"][:s["caption_length"]] for s in samples]
        target = data_utils.collate_tokens(caption_targets, pad, left_pad=False, pad_to_length=src_tokens.size(1))
        if self.tags is not None:
            net_input[OBJECT_TAGS] = collate_tags([s["tags"] for s in samples], pad)
            tag_target = collate_tags([s["target"][s["caption_length"]:] for s in samples], pad)
            target = torch.cat([target, tag_target], dim=1)
        net_input[IMAGE_PATCHES], net_input[IMAGE_GLOBAL] = stack_images(
            [(s["image_patches"], s["image_global"]) for s in samples])
        usable = torch.tensor([s["image_usable"] for s in samples])
        if not usable.all():
            net_input[IMAGE_USABLE] = usable
        return {"id": torch.LongTensor([s["id"] for s in samples]), "nsentences": len(samples),
                "ntokens": int(target.ne(pad).sum()), "net_input": net_input, "target": target,
                PAIRED_IMAGE_LABEL: torch.LongTensor([s["label"] for s in samples])}

    @property
    def supports_prefetch(self):
        return False
