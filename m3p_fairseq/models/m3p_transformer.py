"""m3P encoder-decoder: fairseq's transformer whose encoder also reads image features and fuses
them with the text states (``--fusion none|gated|concat|selective|cvlm``)."""

from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

from torch import Tensor
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import FairseqEncoder, register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerModel,
    base_architecture,
)

from .fusion import FUSION_CHOICES, build_fusion
from .image_encoder import ImageFeatureEncoder


@dataclass
class M3PImageConfig(FairseqDataclass):
    fusion: ChoiceEnum(FUSION_CHOICES) = field(
        default="cvlm",
        metadata={"help": "how image states join the text states: none (text-only), gated (global "
                          "vector through a gate), concat (patches appended), selective (gated "
                          "attention over patches, Li et al. 2022), cvlm (cross-attention, Eq. 8)"},
    )
    image_feature_dim: Optional[int] = field(
        default=None, metadata={"help": "dimension D of the stored image features; default: read from the data"},
    )
    max_image_patches: int = field(
        default=256, metadata={"help": "learned patch positions: the most patches an image may have"},
    )
    image_encoder_layers: int = field(
        default=0, metadata={"help": "transformer layers over the projected patches"},
    )
    fusion_attention_heads: Optional[int] = field(
        default=None, metadata={"help": "heads of the cvlm/selective attention over patches; "
                                         "default: --encoder-attention-heads"},
    )


class M3PEncoder(FairseqEncoder):
    """The text encoder (fairseq's TransformerEncoder) followed by image fusion.

    Its output has the text encoder's keys; ``encoder_out``/``encoder_padding_mask`` hold the
    fused states, so fairseq's decoder and beam search use them unchanged, and the image side is
    computed once per sentence and reordered with the beams like any encoder state.
    """

    def __init__(self, args, text_encoder: FairseqEncoder):
        super().__init__(text_encoder.dictionary)
        self.text_encoder = text_encoder
        self.fusion_name = args.fusion
        self.image_encoder = self.fusion = None
        if args.fusion != "none":
            cfg = TransformerConfig.from_namespace(args)
            self.image_encoder = ImageFeatureEncoder(cfg, args.image_feature_dim, args.max_image_patches,
                                                     args.image_encoder_layers)
            self.fusion = build_fusion(args.fusion, cfg.encoder.embed_dim,
                                       args.fusion_attention_heads or cfg.encoder.attention_heads,
                                       cfg.dropout, cfg.attention_dropout)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                image_patches: Optional[Tensor] = None, image_global: Optional[Tensor] = None,
                return_all_hiddens: bool = False, token_embeddings: Optional[Tensor] = None):
        out = self.text_encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
                                token_embeddings=token_embeddings)
        if self.fusion is None:
            return out
        if image_patches is None or image_global is None:
            raise ValueError(f"--fusion {self.fusion_name} needs image features, but the batch has none "
                             "(no image features for this split, or an input line without an image id)")
        patches, global_state = self.image_encoder(image_patches.to(out["encoder_out"][0].dtype),
                                                   image_global.to(out["encoder_out"][0].dtype))
        fused, padding_mask = self.fusion(out["encoder_out"][0], out["encoder_padding_mask"][0],
                                          patches, global_state)
        return {**out, "encoder_out": [fused], "encoder_padding_mask": [padding_mask]}

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order):
        return self.text_encoder.reorder_encoder_out(encoder_out, new_order)

    def max_positions(self):
        return self.text_encoder.max_positions()

    def upgrade_state_dict_named(self, state_dict, name):
        return self.text_encoder.upgrade_state_dict_named(state_dict, f"{name}.text_encoder")


@register_model("m3p_transformer")
class M3PTransformerModel(TransformerModel):
    """Transformer encoder-decoder with an image-fusing encoder (paper Fig. 2)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, M3PImageConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        m3p_base_architecture(args)
        if args.fusion != "none" and args.image_feature_dim is None:
            raise ValueError(f"--fusion {args.fusion} needs --image-feature-dim (the task fills it from the data)")
        text_model = TransformerModel.build_model(args, task)
        return cls(args, M3PEncoder(args, text_model.encoder), text_model.decoder)

    def __init__(self, args, encoder, decoder):
        super().__init__(args, encoder, decoder)
        self.num_updates = 0

    @property
    def image_feature_dim(self) -> Optional[int]:
        image_encoder = self.encoder.image_encoder
        return None if image_encoder is None else image_encoder.feature_dim

    def set_num_updates(self, num_updates):
        # The task reads this to schedule the sampling temperature (also right after a resume).
        self.num_updates = num_updates
        super().set_num_updates(num_updates)

    def forward(self, src_tokens, src_lengths, prev_output_tokens,
                image_patches: Optional[Tensor] = None, image_global: Optional[Tensor] = None,
                return_all_hiddens: bool = True, features_only: bool = False,
                alignment_layer: Optional[int] = None, alignment_heads: Optional[int] = None):
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, image_patches=image_patches,
                                   image_global=image_global, return_all_hiddens=return_all_hiddens)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                            alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                            src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)


def _set_default(args, name, value):
    if getattr(args, name, None) is None:
        setattr(args, name, value)


@register_model_architecture("m3p_transformer", "m3p_transformer")
def m3p_base_architecture(args):
    for option in fields(M3PImageConfig):
        _set_default(args, option.name, option.default)
    _set_default(args, "share_all_embeddings", True)
    base_architecture(args)


def _set_sizes(args, embed_dim: int, ffn_dim: int, heads: int, encoder_layers: int, decoder_layers: int):
    """Defaults for one size; anything given on the command line wins, and the decoder follows
    the encoder's width (shared embeddings need equal widths)."""
    _set_default(args, "encoder_embed_dim", embed_dim)
    _set_default(args, "encoder_ffn_embed_dim", ffn_dim)
    _set_default(args, "encoder_attention_heads", heads)
    _set_default(args, "encoder_layers", encoder_layers)
    _set_default(args, "decoder_embed_dim", args.encoder_embed_dim)
    _set_default(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    _set_default(args, "decoder_attention_heads", args.encoder_attention_heads)
    _set_default(args, "decoder_layers", decoder_layers)


@register_model_architecture("m3p_transformer", "m3p_transformer_tiny")
def m3p_transformer_tiny(args):
    """For tests and the quickstart: a few minutes on 2 CPU cores."""
    _set_sizes(args, embed_dim=128, ffn_dim=256, heads=4, encoder_layers=3, decoder_layers=3)
    m3p_base_architecture(args)


@register_model_architecture("m3p_transformer", "m3p_transformer_base")
def m3p_transformer_base(args):
    """The paper's size (Sec. 3.3): 12-layer encoder and decoder, 768 wide, shared embeddings."""
    _set_sizes(args, embed_dim=768, ffn_dim=3072, heads=12, encoder_layers=12, decoder_layers=12)
    m3p_base_architecture(args)
