"""The single-stream vision-language encoder of the VLP-MMT system (vlp-for-mmt-modality-loss.md,
Sec. 3.2, Eq. 1): one BERT-style transformer over

    Cat[Emb(Cat[x, t]), FFN(v)]

the source tokens x, the image's object tags t (text tokens, optional: without tags the input
is Cat[Emb(x), FFN(v)]) and the projected visual features v. The transformer is fairseq's
TransformerEncoder, so ``--pretrained-text-encoder`` loads a local XLM-R/RoBERTa checkpoint into
it with the plugin's loader (models/pretrained_text_encoder.py), or it starts from random
weights. FFN(v) is the base's ImageFeatureEncoder (linear projection, layer norm, patch
positions). The paper's v are Faster-RCNN region features; here they are whatever the feature
file holds (grid patches of a ViT, or region features a user extracted elsewhere).

The image positions enter the transformer as placeholder tokens whose embeddings are replaced by
FFN(v); fairseq then gives them positions after the text and masks padding as usual (padding
may sit between x, t and v: every padded position is masked and positions count only real ones,
so a sentence is encoded the same alone or in a batch).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.models import FairseqEncoder
from fairseq.models.transformer import TransformerConfig, TransformerEncoderBase
from torch import Tensor, nn

from ..data.batch_keys import IMAGE_GLOBAL_STATE, VISUAL_POSITIONS
from .image_encoder import ImageFeatureEncoder
from .multimodal_model import MultimodalEncoderMixin, MultimodalModelConfig, set_default
from .pretrained_text_encoder import load_pretrained_text_encoder

# the --fusion name the base's image-side messages show
SINGLE_STREAM = "single_stream"
# Set in the model config once --pretrained-text-encoder has been copied in, and saved with it.
PRETRAINED_TEXT_ENCODER_LOADED = "pretrained_text_encoder_loaded"


@dataclass
class VLPEncoderConfig(MultimodalModelConfig):
    pretrained_text_encoder: Optional[str] = field(
        default=None,
        metadata={"help": "initialise the BERT-style encoder and its token embeddings from a local "
                          "XLM-R/RoBERTa checkpoint (a directory with model.pt and dict.txt, fairseq's "
                          "xlmr.base layout); needs the checkpoint's sizes (--arch *_xlmr_base). "
                          "Default: random weights. Read once, when the model is first built"},
    )


class VLPEncoder(MultimodalEncoderMixin, FairseqEncoder):
    """Eq. 1. Output: fairseq's encoder dict over the whole sequence [x; t; v], plus
    ``visual_positions`` [B, S] (True at v) and ``image_global_state``."""

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        cfg = TransformerConfig.from_namespace(args)
        self.text_encoder = TransformerEncoderBase(cfg, dictionary, embed_tokens)
        self.init_image_side(args, ImageFeatureEncoder(cfg, args.image_feature_dim, args.max_image_patches, 0))
        self.embed_dim = cfg.encoder.embed_dim
        # any non-padding index: only marks the image positions, its embedding is replaced
        self.image_placeholder = dictionary.unk()

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                image_patches: Optional[Tensor] = None, image_global: Optional[Tensor] = None,
                object_tags: Optional[Tensor] = None, image_usable: Optional[Tensor] = None,
                return_all_hiddens: bool = False, **unused) -> Dict[str, List[Tensor]]:
        text = src_tokens if object_tags is None else torch.cat([src_tokens, object_tags.to(src_tokens)], dim=1)
        dtype = self.text_encoder.embed_tokens.weight.dtype
        patches, global_state = self.encode_images(image_patches, image_global, dtype)  # [P, B, C]
        batch, num_patches = text.size(0), patches.size(0)
        placeholders = text.new_full((batch, num_patches), self.image_placeholder)
        if image_usable is not None:  # an image missing at extraction: its positions are padding
            placeholders[~image_usable.bool()] = self.dictionary.pad()
        tokens = torch.cat([text, placeholders], dim=1)
        # fairseq multiplies the token embeddings by embed_scale; FFN(v) enters at its own scale
        embeddings = torch.cat([self.text_encoder.embed_tokens(text),
                                patches.transpose(0, 1) / self.text_encoder.embed_scale], dim=1)
        out = self.text_encoder(tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
                                token_embeddings=embeddings)
        visual = torch.zeros_like(tokens, dtype=torch.bool)
        visual[:, text.size(1):] = True
        out[VISUAL_POSITIONS] = [visual]
        out[IMAGE_GLOBAL_STATE] = [global_state]
        return out

    def encoder_parameters(self):
        """What Algorithm 1 pre-trains and stage 1 freezes: the transformer, embeddings and FFN(v)."""
        return list(self.text_encoder.parameters()) + list(self.image_encoder.parameters())

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        reordered = self.text_encoder.reorder_encoder_out(encoder_out, new_order)
        for key in (VISUAL_POSITIONS, IMAGE_GLOBAL_STATE):
            reordered[key] = [state.index_select(0, new_order) for state in encoder_out[key]]
        return reordered

    def max_positions(self):
        return self.text_encoder.max_positions()

    def upgrade_state_dict_named(self, state_dict, name):
        return self.text_encoder.upgrade_state_dict_named(state_dict, f"{name}.text_encoder")


def load_text_encoder_once(model_cls, args, encoder: VLPEncoder) -> None:
    """--pretrained-text-encoder into the encoder's transformer, once (marked in the config)."""
    if model_cls.pretrained_to_load(args, "pretrained_text_encoder", PRETRAINED_TEXT_ENCODER_LOADED):
        load_pretrained_text_encoder(encoder.text_encoder, args.pretrained_text_encoder)
        model_cls.mark_pretrained_loaded(args, PRETRAINED_TEXT_ENCODER_LOADED)


def check_single_stream_options(args) -> None:
    if args.mdropnet_text_only or args.mdropnet_image_only:
        raise ValueError("the VLP encoder always reads text and image (the paper has no MDropNet): "
                         "--mdropnet-text-only and --mdropnet-image-only must be 0")


def set_encoder_sizes(args, embed_dim: int, ffn_dim: int, heads: int, layers: int) -> None:
    set_default(args, "encoder_embed_dim", embed_dim)
    set_default(args, "encoder_ffn_embed_dim", ffn_dim)
    set_default(args, "encoder_attention_heads", heads)
    set_default(args, "encoder_layers", layers)


def set_bert_style(args) -> None:
    """XLM-R base's conventions (fairseq's roberta base_architecture), so --pretrained-text-encoder
    can load it: learned positions, embedding layer norm, unscaled embeddings, GELU, post-norm."""
    set_encoder_sizes(args, 768, 3072, 12, 12)
    set_default(args, "max_source_positions", 512)
    set_default(args, "encoder_learned_pos", True)
    set_default(args, "layernorm_embedding", True)
    set_default(args, "no_scale_embedding", True)
    set_default(args, "activation_fn", "gelu")
    set_default(args, "encoder_normalize_before", False)


def set_single_stream_defaults(args) -> None:
    set_default(args, "fusion", SINGLE_STREAM)
    set_default(args, "mdropnet_text_only", 0.0)
    set_default(args, "mdropnet_image_only", 0.0)
