"""MMA, multilingual multimodal augmentation (paper Sec. 2.5), applied to training examples:
span masking of the source text, a randomly chosen augmented view of the image (views are
rendered once at feature extraction, ``--augmented-views``), and masking of patch tokens.

The augmentations reach two places. The translation input is augmented as configured and, with
``contrastive_pair``, every example also brings the augmented
pair {T(x_k), I(z_k)} of the paper for MMCL: its source masked afresh (T) and its image as an
augmented view with masked patches (I), whose global vector is then the mean of the kept patch
features (the stored global vector was pooled from all patches, so it would not show the
masking). :meth:`augmented_pair` draws it after the translation input's draws, so adding it
changes none of them.

Every draw comes from a generator seeded with (seed, direction, epoch, example index), so an
example is augmented the same way in every run, in any data-loader worker and after a resume,
and differently in every epoch. Validation and test splits are never augmented.
"""

import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch

ImageFeatures = Tuple[torch.Tensor, torch.Tensor]  # (patches [P, D], global vector [D])


@dataclass
class MultimodalAugmentation:
    text_mask_ratio: float = 0.0  # share of source tokens replaced by <mask>
    text_mask_span: float = 3.0  # mean span length (Poisson, at least 1)
    mask_index: int = -1
    image_view_prob: float = 0.0  # chance of an augmented view instead of the clean features
    patch_mask_ratio: float = 0.0  # share of patch tokens zeroed
    view_negatives: bool = False  # also supply another view's global vector (MMCL negatives)
    contrastive_pair: bool = False  # also supply the augmented pair {T(x_k), I(z_k)} for MMCL
    seed: int = 1
    direction: str = ""

    def __post_init__(self):
        for name in ("text_mask_ratio", "image_view_prob", "patch_mask_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--mma-{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.text_mask_span <= 0:
            raise ValueError(f"--mma-text-mask-span must be > 0, got {self.text_mask_span}")
        if self.text_mask_ratio > 0 and self.mask_index < 0:
            raise ValueError("text masking needs a <mask> symbol in the dictionary")

    @property
    def uses_views(self) -> bool:
        return self.image_view_prob > 0 or self.view_negatives

    def generator(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(self.direction.encode()), epoch, index])

    def mask_source(self, tokens: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Replace spans covering round(ratio * n) of the n sentence tokens by <mask>; the
        target-language tag in front and the final </s> are kept."""
        num_maskable = len(tokens) - 2
        to_mask = int(round(self.text_mask_ratio * num_maskable))
        if to_mask <= 0:
            return tokens
        masked = np.zeros(num_maskable, dtype=bool)
        count = 0
        while count < to_mask:
            span = min(max(1, int(rng.poisson(self.text_mask_span))), to_mask - count)
            start = int(rng.integers(0, num_maskable - span + 1))
            masked[start:start + span] = True
            count = int(masked.sum())
        tokens = tokens.clone()
        tokens[1:-1][torch.from_numpy(masked)] = self.mask_index
        return tokens

    def choose_view(self, num_views: int, rng: np.random.Generator) -> Optional[int]:
        """None = the clean features, else the index of an augmented view."""
        if num_views == 0 or self.image_view_prob == 0 or rng.random() >= self.image_view_prob:
            return None
        return int(rng.integers(num_views))

    def negative_view(self, num_views: int, used_view: Optional[int], rng: np.random.Generator) -> int:
        """A view other than the one the example uses."""
        candidates = [v for v in range(num_views) if v != used_view]
        return candidates[int(rng.integers(len(candidates)))]

    def masked_patch_indices(self, num_patches: int, rng: np.random.Generator) -> Optional[np.ndarray]:
        """round(ratio * P) patch indices chosen uniformly (masked image modelling); None for none."""
        to_mask = int(round(self.patch_mask_ratio * num_patches))
        if to_mask == 0:
            return None
        return rng.choice(num_patches, to_mask, replace=False)

    def mask_patches(self, patches: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Zero round(ratio * P) patch tokens chosen uniformly (masked image modelling)."""
        masked = self.masked_patch_indices(patches.size(0), rng)
        if masked is None:
            return patches
        patches = patches.clone()
        patches[torch.from_numpy(masked)] = 0
        return patches

    def masked_image_global(self, patches: torch.Tensor, global_vector: torch.Tensor,
                            rng: np.random.Generator) -> torch.Tensor:
        """The global vector [D] of an image [P, D] after patch masking: the mean of the kept
        patches' features; the image's own global vector when no patch is masked."""
        masked = self.masked_patch_indices(patches.size(0), rng)
        if masked is None:
            return global_vector
        keep = torch.ones(patches.size(0), dtype=torch.bool)
        keep[torch.from_numpy(masked)] = False
        return patches[keep].float().mean(dim=0).to(global_vector.dtype)

    def augmented_pair(self, source: torch.Tensor, read_view: Callable[[Optional[int]], ImageFeatures],
                         num_views: int, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """MMA's augmented pair for MMCL: T(x_k), the clean ``source`` with spans masked, and the
        global vector of I(z_k), a view chosen as for translation (``read_view(None)`` is the
        clean image) with its patches masked."""
        text = self.mask_source(source, rng)
        patches, global_vector = read_view(self.choose_view(num_views, rng))
        return text, self.masked_image_global(patches, global_vector, rng)
