"""Ways to fuse text encoder states with image states; each returns the states the decoder
attends to and their padding mask.

All take text states H [T, B, C] with padding mask [B, T], patch states and a global image state
[B, C] (both already projected to the model width by ImageFeatureEncoder). The patch states are
[P, B, C], one image per row, or, with ``image_index`` [B] (batch_keys.IMAGE_INDEX), [P, U, C]: each
distinct image of the batch once, row b showing image ``image_index[b]``. The attention fusions
then project keys and values once per distinct image (P x U rows instead of P x B).
"""

from typing import Dict, Optional, Type

import torch
from fairseq.modules import FairseqDropout, LayerNorm, MultiheadAttention
from torch import Tensor, nn

from .packed_memory import attend, split_heads


def to_rows(states: Tensor, image_index: Optional[Tensor], dim: int) -> Tensor:
    """States of the distinct images gathered to the batch rows along ``dim``; unchanged without
    ``image_index`` (they are per row already)."""
    return states if image_index is None else states.index_select(dim, image_index)


def attend_to_image(attention: MultiheadAttention, text: Tensor, patches: Tensor,
                    image_index: Optional[Tensor], null_key: Optional[Tensor] = None) -> Tensor:
    """fairseq's ``attention`` (encoder-decoder, no key padding) of the text [T, B, C] over each
    row's patches. With ``image_index`` the keys and values are projected once per distinct image
    [P, U, C] and gathered to the rows; the rest is MultiheadAttention's math with its own
    parameters: per head softmax(q k^T / sqrt(d)) v with attention dropout, then out_proj. With
    ``null_key`` [heads, C / heads] each head also attends to that key, whose value is zero."""
    if image_index is None and null_key is None:
        return attention(query=text, key=patches, value=patches, need_weights=False)[0]
    batch, heads = text.size(1), attention.num_heads
    keys = split_heads(to_rows(attention.k_proj(patches), image_index, dim=1), heads)
    values = split_heads(to_rows(attention.v_proj(patches), image_index, dim=1), heads)
    if null_key is not None:  # attention on the null key adds nothing to the token
        keys = torch.cat([keys, null_key.expand(batch, -1, -1).unsqueeze(2)], dim=2)
        values = torch.cat([values, values.new_zeros(batch, values.size(1), 1, values.size(3))], dim=2)
    return attend(attention, text, keys, values)


def fuse_rows(fusion: nn.Module, rows: Optional[Tensor], text: Tensor, text_padding_mask: Tensor,
              patches: Tensor, global_state: Tensor, image_index: Optional[Tensor]):
    """``fusion`` of the batch rows ``rows`` [R] only (all rows when None); the other rows' fused
    states are zeros and padding. MDropNet's text-only and image-only sentences never read their
    fused states, so computing them would only cost time (the fusion is the image side's largest
    cost: its attention over every patch). ``patches`` are per row, or per distinct image with
    ``image_index``; ``global_state`` is per row."""
    if rows is None:
        return fusion(text, text_padding_mask, patches, global_state, image_index)
    if image_index is None:
        patches = patches.index_select(1, rows)
    else:  # the distinct images stay; only the rows pointing to them are selected
        image_index = image_index.index_select(0, rows)
    fused, padding_mask = fusion(text.index_select(1, rows), text_padding_mask.index_select(0, rows), patches,
                                 global_state.index_select(0, rows), image_index)
    batch = text.size(1)
    return (fused.new_zeros(fused.size(0), batch, fused.size(2)).index_copy(1, rows, fused),
            padding_mask.new_ones(batch, padding_mask.size(1)).index_copy(0, rows, padding_mask))


class GatedFusion(nn.Module):
    """H' = H + Lambda * Wv, Lambda = sigmoid(W_g [H; Wv]): a per-dimension gate on the global vector."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.gate = nn.Linear(2 * embed_dim, embed_dim)

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor,
                image_index: Optional[Tensor] = None):
        image = global_state.unsqueeze(0).expand_as(text)
        gate = torch.sigmoid(self.gate(torch.cat([text, image], dim=-1)))
        return text + gate * image, text_padding_mask


class ConcatFusion(nn.Module):
    """The patch states appended after the text states; the decoder attends to both."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, attention_dropout: float):
        super().__init__()

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor,
                image_index: Optional[Tensor] = None):
        patches = to_rows(patches, image_index, dim=1)
        image_padding_mask = text_padding_mask.new_zeros(patches.size(1), patches.size(0))
        return torch.cat([text, patches], dim=0), torch.cat([text_padding_mask, image_padding_mask], dim=1)


class ConditionalVisionLanguageMemory(nn.Module):
    """CVLM (paper Eq. 8): multi-head cross-attention with the text states as queries and the
    image patches as keys and values, added to the text states and layer-normalised. The result,
    one state per source token, is the multimodal prompt the decoder attends to."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, attention_dropout: float,
                 null_attention: bool = False):
        super().__init__()
        self.attention = MultiheadAttention(embed_dim, num_heads, dropout=attention_dropout,
                                            encoder_decoder_attention=True)
        # A learned key per head with a zero value: a source token that needs nothing from the
        # image can put its attention there and keep its text state (softmax over patches alone
        # must mix some image into every token).
        self.null_key = nn.Parameter(torch.zeros(num_heads, embed_dim // num_heads)) if null_attention else None
        # Zero-initialised output projection: a fresh CVLM passes the text states through
        # (up to the layer norm) and mixes the image in only as fast as training finds it useful,
        # so the text side learns as quickly as a text-only model (cf. Flamingo's zero gates).
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        self.dropout = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.layer_norm = LayerNorm(embed_dim)

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor,
                image_index: Optional[Tensor] = None):
        attended = attend_to_image(self.attention, text, patches, image_index, self.null_key)
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

    def forward(self, text: Tensor, text_padding_mask: Tensor, patches: Tensor, global_state: Tensor,
                image_index: Optional[Tensor] = None):
        attended = attend_to_image(self.attention, text, patches, image_index)
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
                 attention_dropout: float, null_attention: bool = False) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {', '.join(FUSION_CHOICES)}")
    if not null_attention:
        return FUSIONS[name](embed_dim, num_heads, dropout, attention_dropout)
    if name != "cvlm":
        raise ValueError(f"--cvlm-null-attention is an option of --fusion cvlm, not {name}")
    return FUSIONS[name](embed_dim, num_heads, dropout, attention_dropout, null_attention=True)
