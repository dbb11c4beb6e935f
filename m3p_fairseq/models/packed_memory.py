"""fairseq's decoder whose cross-attention projects keys and values of the memory's real positions
only, in training.

Under MDropNet an image-only sentence's memory is its image prompt (tag + 49 patch states), the
others' their source states (about 13 pieces on the quickstart), so the batch's memory [S, B, C]
is ~50 long and mostly padding. fairseq's attention projects keys and values at every position,
padded or not, in every decoder layer (3 % of the quickstart m3P's multiply-adds per update:
docs/benchmarks.md). Here the real positions are gathered, projected, and put back; the padded
ones stay zero, which the key padding mask hides exactly as before. Parameters and their names
are fairseq's, so checkpoints load either way.
"""

from typing import Optional

import torch.nn.functional as F
from fairseq.distributed import fsdp_wrap
from fairseq.models.transformer import TransformerConfig, TransformerDecoderBase, TransformerModel
from fairseq.modules import MultiheadAttention
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor

# Below this share of padding, gathering and scattering the positions costs about what it saves.
MIN_PADDED_SHARE = 0.25


def split_heads(states: Tensor, heads: int) -> Tensor:
    """[L, B, C] -> [B, heads, L, C / heads]"""
    length, batch, width = states.shape
    return states.reshape(length, batch, heads, width // heads).permute(1, 2, 0, 3)


def attend(attention: MultiheadAttention, query: Tensor, keys: Tensor, values: Tensor,
           attn_mask: Optional[Tensor] = None) -> Tensor:
    """MultiheadAttention's math with its own parameters, on keys and values already projected
    and split into heads [B, heads, S, C / heads]: per head softmax(q k^T / sqrt(d)) v with the
    module's attention dropout, then out_proj; query [T, B, C] -> [T, B, C]. ``attn_mask``
    [B, 1, 1, S] is True where a key may be attended to."""
    length, batch, width = query.shape
    dropout = attention.dropout_module
    attended = F.scaled_dot_product_attention(
        split_heads(attention.q_proj(query), attention.num_heads), keys, values, attn_mask=attn_mask,
        dropout_p=dropout.p if attention.training or dropout.apply_during_inference else 0.0)
    return attention.out_proj(attended.permute(2, 0, 1, 3).reshape(length, batch, width))


class PackedMemoryAttention(MultiheadAttention):
    """Encoder-decoder attention that, in a training forward on CPU over a memory that is at
    least MIN_PADDED_SHARE padding, projects keys and values at the real positions only. Any
    other call (incremental decoding, attention weights asked for, GPU, little padding) is
    fairseq's own: on a GPU the gather would wait for the device (``nonzero``), and the padded
    rows of a matrix product cost little there."""

    def forward(self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor],
                key_padding_mask: Optional[Tensor] = None, incremental_state=None, need_weights: bool = True,
                static_kv: bool = False, attn_mask: Optional[Tensor] = None, before_softmax: bool = False,
                need_head_weights: bool = False):
        if not self._packs(key, key_padding_mask, incremental_state, need_weights or need_head_weights or before_softmax,
                           attn_mask):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   incremental_state=incremental_state, need_weights=need_weights,
                                   static_kv=static_kv, attn_mask=attn_mask, before_softmax=before_softmax,
                                   need_head_weights=need_head_weights)
        memory, batch, key_width = key.shape
        real = (~key_padding_mask.bool()).t().reshape(-1).nonzero().squeeze(1)  # of the S x B positions
        gathered = key.reshape(memory * batch, key_width).index_select(0, real)

        def scattered(projected: Tensor) -> Tensor:  # zeros at the padded positions, which the mask hides
            positions = projected.new_zeros(memory * batch, projected.size(1)).index_copy(0, real, projected)
            return split_heads(positions.view(memory, batch, -1), self.num_heads)

        # as fairseq's encoder-decoder attention, keys and values both come from ``key``
        keys, values = scattered(self.k_proj(gathered)), scattered(self.v_proj(gathered))
        return attend(self, query, keys, values, attn_mask=~key_padding_mask.bool().view(batch, 1, 1, memory)), None

    def _packs(self, key, key_padding_mask, incremental_state, weights_asked: bool, attn_mask) -> bool:
        return (self.encoder_decoder_attention and incremental_state is None and key is not None
                and key.device.type == "cpu" and key_padding_mask is not None and attn_mask is None
                and not weights_asked and self.bias_k is None and not self.add_zero_attn
                and self.beam_size == 1 and not self.use_xformers and not self.onnx_trace
                and bool(key_padding_mask.sum() >= MIN_PADDED_SHARE * key_padding_mask.numel()))


class PackedMemoryDecoderLayer(TransformerDecoderLayerBase):
    def build_encoder_attention(self, embed_dim, cfg):
        # fairseq's arguments (TransformerDecoderLayerBase.build_encoder_attention), this class
        return PackedMemoryAttention(embed_dim, cfg.decoder.attention_heads, kdim=cfg.encoder.embed_dim,
                                     vdim=cfg.encoder.embed_dim, dropout=cfg.attention_dropout,
                                     encoder_decoder_attention=True, q_noise=self.quant_noise,
                                     qn_block_size=self.quant_noise_block_size,
                                     xformers_att_config=cfg.encoder.xformers_att_config)


class PackedMemoryDecoder(TransformerDecoderBase):
    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        if cfg.checkpoint_activations:  # fairseq wraps those layers itself; they attend as fairseq does
            return super().build_decoder_layer(cfg, no_encoder_attn)
        return fsdp_wrap(PackedMemoryDecoderLayer(cfg, no_encoder_attn), min_num_params=cfg.min_params_to_wrap)


class PackedMemoryTransformer(TransformerModel):
    """fairseq's transformer with the PackedMemoryDecoder (the text model m3P builds on)."""

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return PackedMemoryDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)
