"""Ways to fuse text encoder states with image states; each returns the states the decoder
attends to and their padding mask.

All take text states H [T, B, C] with padding mask [B, T], patch states [P, B, C] and a global
image state [B, C] (both already projected to the model width by ImageFeatureEncoder).
"""

from typing import Dict, Optional, Type

import torch
from fairseq.modules import FairseqDropout, LayerNorm, MultiheadAttention
from torch import Tensor, nn


class GatedFusion(nn.Module):
    """H' = H + Lambda * Wv, Lambda = sigmoid(W_g [H; Wv]): a per-dimension gate on the global vector."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.gate = nn.Linear(2 * embed_dim, embed_dim)

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor):
        image = global_state.unsqueeze(0).expand_as(text)
        gate = torch.sigmoid(self.gate(torch.cat([text, image], dim=-1)))
        return text + gate * image, text_padding_mask


class ConcatFusion(nn.Module):
    """The patch states appended after the text states; the decoder attends to both."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, attention_dropout: float):
        super().__init__()

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor):
        image_padding_mask = text_padding_mask.new_zeros(patches.size(1), patches.size(0))
        return torch.cat([text, patches], dim=0), torch.cat([text_padding_mask, image_padding_mask], dim=1)


class ConditionalVisionLanguageMemory(nn.Module):
    """CVLM (paper Eq. 8): multi-head cross-attention with the text states as queries and the
    image patches as keys and values, added to the text states and layer-normalised. The result,
    one state per source token, is the multimodal prompt the decoder attends to."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attention = MultiheadAttention(embed_dim, num_heads, dropout=attention_dropout,
                                            encoder_decoder_attention=True)
        # Zero-initialised output projection: a fresh CVLM passes the text states through
        # (up to the layer norm) and mixes the image in only as fast as training finds it useful,
        # so the text side learns as quickly as a text-only model (cf. Flamingo's zero gates).
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        self.dropout = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.layer_norm = LayerNorm(embed_dim)

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor):
        attended, _ = self.attention(query=text, key=patches, value=patches, need_weights=False)
        return self.layer_norm(text + self.dropout(attended)), text_padding_mask


class SelectiveAttentionFusion(nn.Module):
    """Selective attention (Li et al., 2022): H_attn = softmax(Q K^T / sqrt(d)) V over the
    patches with the text as query, lambda = sigmoid(W [H_attn; H]),
    H' = (1 - lambda) * H + lambda * H_attn. Li et al. (and m3P's baseline) use a single head."""

    default_num_heads = 1

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attention = MultiheadAttention(embed_dim, num_heads, dropout=attention_dropout,
                                            encoder_decoder_attention=True)
        self.gate = nn.Linear(2 * embed_dim, embed_dim)

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor):
        attended, _ = self.attention(query=text, key=patches, value=patches, need_weights=False)
        gate = torch.sigmoid(self.gate(torch.cat([attended, text], dim=-1)))
        return (1 - gate) * text + gate * attended, text_padding_mask


FUSIONS: Dict[str, Type[nn.Module]] = {
    "gated": GatedFusion,
    "concat": ConcatFusion,
    "selective": SelectiveAttentionFusion,
    "cvlm": ConditionalVisionLanguageMemory,
}
FUSION_CHOICES = ["none", *FUSIONS]


def fusion_heads(name: str, requested: Optional[int], model_heads: int) -> int:
    """--fusion-attention-heads when given, else the fusion's own default (selective: 1), else
    the encoder's heads."""
    if requested is not None:
        return requested
    return getattr(FUSIONS.get(name), "default_num_heads", None) or model_heads


def build_fusion(name: str, embed_dim: int, num_heads: int, dropout: float,
                 attention_dropout: float) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {', '.join(FUSION_CHOICES)}")
    return FUSIONS[name](embed_dim, num_heads, dropout, attention_dropout)
