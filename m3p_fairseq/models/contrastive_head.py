"""Projections into the joint text-image space of MMCL (paper Sec. 2.4) and its temperature.

The text side is the source encoding s^k pooled over its tokens; the image side is the projected
global image vector. Both are projected and L2-normalised; the logit scale 1/tau is fixed or
learned (CLIP-style, in log space) and never exceeds 1/min_temperature.
"""

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batch_keys import (
    MMCL_AUGMENTED_IMAGE,
    MMCL_AUGMENTED_ROW,
    MMCL_AUGMENTED_TEXT,
    MMCL_IMAGE,
    MMCL_IMAGE_NEGATIVES,
    MMCL_LOGIT_SCALE,
    MMCL_TEXT,
    MMCL_USABLE,
)


class ContrastiveHead(nn.Module):
    def __init__(self, embed_dim: int, projection_dim: int, temperature: float,
                 learn_temperature: bool, min_temperature: float):
        super().__init__()
        if not 0 < min_temperature <= temperature:
            raise ValueError(f"need 0 < --mmcl-min-temperature ({min_temperature}) <= "
                             f"--mmcl-temperature ({temperature})")
        self.text_projection = nn.Linear(embed_dim, projection_dim)
        self.image_projection = nn.Linear(embed_dim, projection_dim)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.max_log_logit_scale = math.log(1.0 / min_temperature)

    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.clamp(max=self.max_log_logit_scale).exp()

    def embed_text(self, pooled_text: Tensor) -> Tensor:
        return F.normalize(self.text_projection(pooled_text), dim=-1)

    def embed_image(self, image_state: Tensor) -> Tensor:
        return F.normalize(self.image_projection(image_state), dim=-1)

    def outputs(self, pooled_text: Tensor, image_state: Tensor, negative_image_state: Optional[Tensor] = None,
                usable: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """What a model's forward hands the ``m3p_loss`` criterion (in the decoder's extra output):
        ``mmcl_text``, ``mmcl_image`` [B, d], ``mmcl_image_negatives`` [B, d] for augmented views,
        ``mmcl_logit_scale`` and, when some images are unusable, ``mmcl_usable`` [B]."""
        result = {MMCL_TEXT: self.embed_text(pooled_text), MMCL_IMAGE: self.embed_image(image_state),
                  MMCL_LOGIT_SCALE: self.logit_scale()}
        if negative_image_state is not None:
            result[MMCL_IMAGE_NEGATIVES] = self.embed_image(negative_image_state)
        if usable is not None:
            result[MMCL_USABLE] = usable
        return result

    def augmented_outputs(self, pooled_text: Tensor, image_state: Tensor, rows: Tensor) -> Dict[str, Tensor]:
        """MMA's augmented pairs (paper Sec. 2.5) as extra MMCL rows: ``mmcl_augmented_text`` and
        ``mmcl_augmented_image`` [A, d], and ``mmcl_augmented_row`` [A], the batch row each
        augments (whose image it shows)."""
        return {MMCL_AUGMENTED_TEXT: self.embed_text(pooled_text), MMCL_AUGMENTED_IMAGE: self.embed_image(image_state),
                MMCL_AUGMENTED_ROW: rows}


def mean_over_tokens(states: Tensor, keep: Tensor) -> Tensor:
    """states [T, B, C], keep [B, T] (True = a token to pool) -> [B, C]."""
    weights = keep.t().unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(0) / weights.sum(0).clamp(min=1.0)
