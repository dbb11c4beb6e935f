"""The VLP encoder with its two pre-training heads (vlp-for-mmt-modality-loss.md, Sec. 3.2, Fig. 1):
a masked-LM head over the text positions (tied to the token embeddings, as in BERT/RoBERTa)
and a paired-image classifier on the first token's output (BERT's pooler + a 2-way linear).
Used with ``--task vlp_pretraining --criterion vlp_pretraining_loss``; its checkpoint's
``encoder.*`` initialises ``--arch vlp_mmt*`` through ``--pretrained-vlp-encoder``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel, base_architecture
from fairseq.modules import LayerNorm
from torch import Tensor, nn

from ..data.batch_keys import PAIRED_IMAGE_LOGITS, VISUAL_POSITIONS
from .contrastive_head import mean_over_tokens
from .multimodal_model import MultimodalModel, set_option_defaults
from .vlp_encoder import (
    VLPEncoder,
    VLPEncoderConfig,
    check_single_stream_options,
    load_text_encoder_once,
    set_bert_style,
    set_encoder_sizes,
    set_single_stream_defaults,
)


class MaskedLMHead(nn.Module):
    def __init__(self, width: int, embedding_weight: Tensor):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.layer_norm = LayerNorm(width)
        self.weight = embedding_weight  # tied to the token embeddings
        self.bias = nn.Parameter(torch.zeros(embedding_weight.size(0)))

    def forward(self, states: Tensor) -> Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(states))), self.weight) + self.bias


@register_model("vlp_encoder")
class VLPPretrainingModel(MultimodalModel, BaseFairseqModel):
    image_fusions = ("single_stream",)

    @classmethod
    def add_args(cls, parser):
        TransformerModel.add_args(parser)  # the encoder's sizes and conventions
        gen_parser_from_dataclass(parser, VLPEncoderConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        vlp_encoder_base_architecture(args)
        check_single_stream_options(args)
        cls.resolve_image_feature_dim(args, task)
        embed_tokens = TransformerModel.build_embedding(args, task.source_dictionary, args.encoder_embed_dim)
        encoder = VLPEncoder(args, task.source_dictionary, embed_tokens)
        model = cls(args, encoder)
        load_text_encoder_once(cls, args, encoder)
        return model

    def __init__(self, args, encoder: VLPEncoder):
        super().__init__()
        self.args = args
        self.encoder = encoder
        width = encoder.embed_dim
        self.lm_head = MaskedLMHead(width, encoder.text_encoder.embed_tokens.weight)
        self.pair_pooler = nn.Linear(width, width)
        self.pair_classifier = nn.Linear(width, 2)
        self.init_multimodal(args, width)
        self.contrastive_head = None  # no MMCL in this system

    def pooled_text(self, src_tokens, encoder_out):
        keep = ~(encoder_out["encoder_padding_mask"][0] | encoder_out[VISUAL_POSITIONS][0])
        return mean_over_tokens(encoder_out["encoder_out"][0], keep)

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, masked_tokens: Optional[Tensor] = None,
                **batch):
        """(masked-LM logits, {PAIRED_IMAGE_LOGITS: [B, 2]}). The text positions are
        [src_tokens; object_tags]; with ``masked_tokens`` [B, L] (True where a token was masked)
        the logits are those positions' only, [M, V], else [B, L, V]."""
        out = self.encoder(src_tokens, src_lengths=src_lengths, **batch)
        states = out["encoder_out"][0].transpose(0, 1)  # [B, S, C]
        text_length = int((~out[VISUAL_POSITIONS][0][0]).sum())
        text_states = states[:, :text_length]
        if masked_tokens is not None:
            text_states = text_states[masked_tokens]
        pair_logits = self.pair_classifier(torch.tanh(self.pair_pooler(states[:, 0])))
        return self.lm_head(text_states), {PAIRED_IMAGE_LOGITS: pair_logits}

    def max_positions(self):
        return self.encoder.max_positions()


@register_model_architecture("vlp_encoder", "vlp_encoder")
def vlp_encoder_base_architecture(args):
    set_single_stream_defaults(args)
    set_option_defaults(args, VLPEncoderConfig)
    base_architecture(args)


@register_model_architecture("vlp_encoder", "vlp_encoder_tiny")
def vlp_encoder_tiny(args):
    """The encoder of --arch vlp_mmt_tiny."""
    set_encoder_sizes(args, 128, 256, 4, 3)
    vlp_encoder_base_architecture(args)


@register_model_architecture("vlp_encoder", "vlp_encoder_xlmr_base")
def vlp_encoder_xlmr_base(args):
    """The encoder of --arch vlp_mmt_xlmr_base (XLM-R base, for --pretrained-text-encoder)."""
    set_bert_style(args)
    vlp_encoder_base_architecture(args)
