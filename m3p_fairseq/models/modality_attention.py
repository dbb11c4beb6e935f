"""The decoder of the VLP-MMT system (vlp-for-mmt-modality-loss.md, Sec. 3.3, Fig. 2).

Its cross-attention reads the encoder's textual and visual keys/values together, as the paper's
decoder does ("the (key, value) pairs of both the textual and visual features participate in
the dot-product attention"): it is fairseq's TransformerDecoder over the single-stream encoder
output. For the modality loss the same query q_j^(l) of a layer also attends over the textual
and over the visual keys/values *separately* (Eq. 2), giving h_x and h_v:

    h_x = Softmax(K_x q / sqrt(d)) V_x,   h_v = Softmax(K_v q / sqrt(d)) V_v

computed with that layer's own cross-attention projections, per head (d = the head width, as
in the attention the decoder runs), heads concatenated, before the output projection. The query
is read with a forward pre-hook on each layer's ``encoder_attn`` (PyTorch's hook API, no fairseq
code is changed); the hook records only while a training forward asks for it.

The learned per-token weight of Eq. 5, lambda_j = sigmoid(w_y.Emb(y_j) + w_x.h_x + w_v.h_v),
has one (w_y, w_x, w_v) shared across layers: ``modality_gate``, initialised at 0 (lambda = 0.5).
It reads the features without passing gradient into them; how it learns is the criterion's
(criterions/modality_loss.py ``gated_modality_loss``, docs/vlp_mmt.md "Learned lambda").
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.modules import MultiheadAttention
from torch import Tensor, nn

from ..data.batch_keys import MODALITY_LAMBDA, MODALITY_TEXT, MODALITY_VALID, MODALITY_VISUAL, VISUAL_POSITIONS


def split_cross_attention(attention: MultiheadAttention, query: Tensor, memory: Tensor,
                          padding_mask: Optional[Tensor], visual: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Eq. 2 for every target position: (h_x [T, B, C], h_v [T, B, C], valid [B]).

    ``query`` [T, B, C] is what the layer's cross-attention receives, ``memory`` [S, B, C] the
    encoder output, ``padding_mask`` [B, S] True at padding, ``visual`` [B, S] True at image
    positions. ``valid`` is False for a sentence without a textual or without a visual key
    (e.g. an image flagged unusable); its h_x/h_v are finite but meaningless."""
    tgt_len, batch, width = query.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    q = (attention.q_proj(query) * attention.scaling).view(tgt_len, batch, heads, head_dim).permute(1, 2, 0, 3)
    k = attention.k_proj(memory).view(-1, batch, heads, head_dim).permute(1, 2, 3, 0)
    v = attention.v_proj(memory).view(-1, batch, heads, head_dim).permute(1, 2, 0, 3)
    scores = q @ k  # [B, H, T, S]
    padding = torch.zeros_like(visual) if padding_mask is None else padding_mask.bool()

    def attend(excluded: Tensor) -> Tuple[Tensor, Tensor]:
        has_key = (~excluded).any(dim=1)
        # a sentence with no key of this modality attends to everything instead of producing NaN
        # (softmax over nothing); it is marked invalid and left out of the loss
        excluded = excluded & has_key[:, None]
        weights = torch.softmax(scores.masked_fill(excluded[:, None, None, :], float("-inf")), dim=-1)
        out = (weights @ v).permute(2, 0, 1, 3).reshape(tgt_len, batch, width)
        return out, has_key

    h_x, has_text = attend(padding | visual)
    h_v, has_image = attend(padding | ~visual)
    return h_x, h_v, has_text & has_image


class ModalityDecoder(TransformerDecoderBase):
    """fairseq's transformer decoder that can also return h_x, h_v (and lambda_j) of chosen layers."""

    def __init__(self, cfg, dictionary, embed_tokens):
        super().__init__(cfg, dictionary, embed_tokens)
        self.modality_gate = nn.Linear(3 * self.embed_dim, 1, bias=False)  # [w_y; w_x; w_v] of Eq. 5
        nn.init.zeros_(self.modality_gate.weight)
        self._queries: Optional[Dict[int, Tensor]] = None
        for index, layer in enumerate(self.layers):
            layer.encoder_attn.register_forward_pre_hook(self._query_recorder(index), with_kwargs=True)

    def _query_recorder(self, index: int):
        def record(module, args, kwargs):
            if self._queries is not None:
                self._queries[index] = kwargs["query"] if "query" in kwargs else args[0]
        return record

    def check_layers(self, layers: Sequence[int]) -> List[int]:
        layers = sorted(set(layers))
        bad = [layer for layer in layers if not 0 <= layer < len(self.layers)]
        if bad or not layers:
            raise ValueError(f"--modality-layers: layers {[b + 1 for b in bad] or 'none'} given, but the "
                             f"decoder has layers 1..{len(self.layers)}")
        return layers

    def forward_with_modality(self, prev_output_tokens: Tensor, encoder_out: Dict[str, List[Tensor]],
                              layers: Sequence[int], target: Optional[Tensor] = None, **kwargs):
        """The decoder's usual (logits, extra), extra also holding MODALITY_TEXT/VISUAL [B, T, C]
        per layer in ``layers`` (0-based), MODALITY_VALID [B] and, given the target tokens,
        MODALITY_LAMBDA [B, T] per layer (Eq. 5)."""
        if kwargs.get("incremental_state") is not None:
            raise ValueError("the modality loss is a training objective: no incremental decoding")
        layers = self.check_layers(layers)
        self._queries = {}
        try:
            logits, extra = self(prev_output_tokens, encoder_out=encoder_out, **kwargs)
            queries = self._queries
        finally:
            self._queries = None
        memory = encoder_out["encoder_out"][0]
        padding = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        visual = encoder_out[VISUAL_POSITIONS][0]
        texts, images, lambdas, valid = [], [], [], None
        target_embedding = None if target is None else self.embed_tokens(target)
        for layer in layers:
            h_x, h_v, valid = split_cross_attention(self.layers[layer].encoder_attn, queries[layer], memory,
                                                    padding, visual)
            h_x, h_v = h_x.transpose(0, 1), h_v.transpose(0, 1)
            texts.append(h_x)
            images.append(h_v)
            if target_embedding is not None:
                # the gate reads the features, it does not shape them (its training signal: the criterion)
                gate_input = torch.cat([target_embedding.to(h_x.dtype), h_x, h_v], dim=-1).detach()
                lambdas.append(torch.sigmoid(self.modality_gate(gate_input)).squeeze(-1))
        extra.update({MODALITY_TEXT: texts, MODALITY_VISUAL: images, MODALITY_VALID: valid})
        if target_embedding is not None:
            extra[MODALITY_LAMBDA] = lambdas
        return logits, extra
