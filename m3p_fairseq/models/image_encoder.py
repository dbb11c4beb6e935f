"""Precomputed image features -> model-width image states (the vision side of paper Eq. 3).

The backbone (e.g. CLIP ViT-B/32) ran once during feature extraction; here only a projection
to the model width, a layer norm and learned patch positions are trained, optionally followed
by a few transformer layers over the patches.
"""

from typing import Tuple

import torch
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import FairseqDropout, LayerNorm
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from torch import nn


class ImageFeatureEncoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, feature_dim: int, max_patches: int, num_layers: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.max_patches = max_patches
        embed_dim = cfg.encoder.embed_dim
        # Patches and the global vector come from the same backbone space: one projection.
        self.projection = nn.Linear(feature_dim, embed_dim)
        self.layer_norm = LayerNorm(embed_dim)
        self.patch_positions = nn.Embedding(max_patches, embed_dim)
        nn.init.normal_(self.patch_positions.weight, std=embed_dim ** -0.5)
        self.dropout = FairseqDropout(cfg.dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList(TransformerEncoderLayerBase(cfg) for _ in range(num_layers))

    def forward(self, patches: torch.Tensor, global_vector: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """patches [B, P, D], global_vector [B, D] -> (patch states [P, B, C], global state [B, C])."""
        if patches.dim() != 3 or global_vector.dim() != 2:
            raise ValueError(f"expected image patches [B, P, D] and global vectors [B, D], got "
                             f"{tuple(patches.shape)} and {tuple(global_vector.shape)}")
        if patches.size(-1) != self.feature_dim or global_vector.size(-1) != self.feature_dim:
            raise ValueError(f"image features have dimension {patches.size(-1)} but this model was "
                             f"built for --image-feature-dim {self.feature_dim}")
        num_patches = patches.size(1)
        if num_patches > self.max_patches:
            raise ValueError(f"{num_patches} patches per image but the model has positions for "
                             f"--max-image-patches {self.max_patches}")
        x = self.layer_norm(self.projection(patches)) + self.patch_positions.weight[:num_patches]
        x = self.dropout(x).transpose(0, 1)
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=None)
        return x, self.embed_global(global_vector)

    def embed_global(self, global_vector: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, C]; also used for the augmented views that serve as MMCL negatives."""
        return self.layer_norm(self.projection(global_vector))
