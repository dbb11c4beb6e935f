"""Multimodal DropNet (paper Sec. 2.7): every training sentence is translated from its text only
(Eq. 9), from its image only (Eq. 10, captioning into the target language, whose tag the
decoder sees in front of the patches) or from the fused
multimodal prompt (Eq. 11), with probabilities 0.25 / 0.25 / 0.5 in the paper.

The whole batch goes through the text encoder and the image encoder, and the fusion through
the sentences that read its output (:func:`fused_rows`); each sentence's mode decides which of
those states its decoder may attend to (the others are masked as padding). Masked keys get
exactly zero attention weight, so a sentence in the "both" mode is decoded exactly as at
inference, and every parameter stays in the graph, as DistributedDataParallel requires, whatever
mix a batch draws.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

TEXT_ONLY, IMAGE_ONLY, TEXT_AND_IMAGE = 0, 1, 2
MODALITY_NAMES = {TEXT_ONLY: "text only", IMAGE_ONLY: "image only", TEXT_AND_IMAGE: "text and image"}


def check_probabilities(text_only: float, image_only: float) -> None:
    if text_only < 0 or image_only < 0 or text_only + image_only > 1:
        raise ValueError(f"MDropNet probabilities must be >= 0 and sum to at most 1, got "
                         f"--mdropnet-text-only {text_only} and --mdropnet-image-only {image_only}")


def draw_modalities(batch_size: int, text_only: float, image_only: float, device=None) -> Tensor:
    """One mode per sentence: TEXT_ONLY, IMAGE_ONLY or TEXT_AND_IMAGE (the remaining probability).
    Uses the global torch RNG, which fairseq's trainer seeds with seed + update number."""
    u = torch.rand(batch_size, device=device)
    modes = torch.full((batch_size,), TEXT_AND_IMAGE, dtype=torch.long, device=device)
    modes[u < text_only + image_only] = IMAGE_ONLY
    modes[u < text_only] = TEXT_ONLY
    return modes


class MDropNet:
    """The MDropNet probabilities of a model and the mode of each sentence of a batch."""

    def __init__(self, text_only: float, image_only: float, warmup_updates: int = 0):
        check_probabilities(text_only, image_only)
        if warmup_updates < 0:
            raise ValueError(f"--mdropnet-warmup-updates must be >= 0, got {warmup_updates}")
        self.text_only, self.image_only = text_only, image_only
        self.warmup_updates, self.num_updates = warmup_updates, 0

    def shares(self) -> Tuple[float, float]:
        """(text-only, image-only) shares at the current update: the configured ones, scaled by
        num_updates / warmup_updates during the warm-up."""
        scale = min(1.0, self.num_updates / self.warmup_updates) if self.warmup_updates else 1.0
        return self.text_only * scale, self.image_only * scale

    def modes(self, modalities: Optional[Tensor], batch_size: int, training: bool,
              image_usable: Optional[Tensor] = None, device=None) -> Optional[Tensor]:
        """Each sentence's mode [B]: ``modalities`` when a caller fixed them, else drawn in
        training; a sentence whose image is unusable is text-only whatever was drawn. None
        means every sentence uses text and image (inference, all images usable)."""
        text_only, image_only = self.shares()
        if modalities is None and training and text_only + image_only > 0:
            modalities = draw_modalities(batch_size, text_only, image_only, device=device)
        if image_usable is not None and not image_usable.all():
            if modalities is None:
                modalities = torch.full_like(image_usable, TEXT_AND_IMAGE, dtype=torch.long)
            modalities = modalities.masked_fill(~image_usable, TEXT_ONLY)
        return modalities


def fused_rows(modes: Optional[Tensor]) -> Optional[Tensor]:
    """The rows [R] whose decoder reads the fused states (TEXT_AND_IMAGE), or None for all rows:
    when every sentence is fused, and when none is (the fusion then still runs on the whole batch,
    so that its parameters stay in the graph, as DistributedDataParallel requires)."""
    if modes is None:
        return None
    rows = (modes == TEXT_AND_IMAGE).nonzero().squeeze(1)
    return None if rows.numel() in (0, modes.numel()) else rows


def per_sentence_memory(modes: Tensor, text: Tensor, text_padding_mask: Tensor, fused: Tensor,
                        fused_padding_mask: Tensor, image: Tensor) -> Tuple[Tensor, Tensor]:
    """The states [L, B, C] and padding mask [B, L] each sentence's decoder sees under its mode.

    text [T, B, C] are the unfused text states (Eq. 9), image [I, B, C] the image prompt (Eq. 10:
    the patch states, after the target-language tag's embedding), fused the fusion's output (Eq. 11).
    """
    text_only = (modes == TEXT_ONLY).unsqueeze(1)  # [B, 1], broadcast over positions
    image_only = (modes == IMAGE_ONLY).unsqueeze(1)
    both = (modes == TEXT_AND_IMAGE).unsqueeze(1)
    if fused.shape == text.shape:
        # Fusions that keep one state per source token: text-only sentences take the unfused
        # states at the same positions, and image-only sentences the image prompt in their place,
        # so the memory is max(T, I) long (not T + I: every decoder layer projects and attends
        # over every position of it, masked or not).
        first = torch.where(text_only.t().unsqueeze(-1), text, fused)
        length = max(text.size(0), image.size(0))
        beyond_text = text_padding_mask.new_ones(text_padding_mask.size(0), length - text.size(0))
        beyond_image = torch.arange(length, device=image.device) >= image.size(0)
        return (torch.where(image_only.t().unsqueeze(-1), _pad_positions(image, length), _pad_positions(first, length)),
                torch.where(image_only, beyond_image, torch.cat([text_padding_mask, beyond_text], dim=1)))
    image_padding_mask = (~image_only).expand(-1, image.size(0))
    return (torch.cat([fused, text, image], dim=0),
            torch.cat([fused_padding_mask | ~both, text_padding_mask | ~text_only, image_padding_mask], dim=1))


def _pad_positions(states: Tensor, length: int) -> Tensor:
    """states [L, B, C] -> [length, B, C], zeros after (masked as padding by the caller)."""
    return torch.cat([states, states.new_zeros(length - states.size(0), *states.shape[1:])], dim=0)
