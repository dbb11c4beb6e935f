"""m3P encoder-decoder: fairseq's transformer whose encoder also reads image features and fuses
them with the text states (``--fusion none|gated|concat|selective|cvlm``), trained with
MDropNet and, through the ``m3p_loss`` criterion, the MMCL contrastive objective."""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import FairseqEncoder, register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerModel,
    base_architecture,
)
from torch import Tensor

from ..data.batch_keys import IMAGE_GLOBAL_STATE
from .contrastive_head import mean_over_tokens
from .fusion import FUSION_CHOICES, build_fusion, fuse_rows, fusion_heads, to_rows
from .image_encoder import ImageFeatureEncoder
from .mdropnet import fused_rows, per_sentence_memory
from .multimodal_model import (
    MultimodalEncoderMixin,
    MultimodalModel,
    MultimodalModelConfig,
    set_default,
    set_option_defaults,
)
from .packed_memory import PackedMemoryTransformer
from .pretrained_text_encoder import load_pretrained_text_encoder
from .text_model_init import OPTION, init_from_text_model

logger = logging.getLogger(__name__)

# Set in the model config once --pretrained-text-encoder / --init-from-text-model has been
# copied in, and saved with it.
PRETRAINED_TEXT_ENCODER_LOADED = "pretrained_text_encoder_loaded"
TEXT_MODEL_LOADED = "text_model_loaded"


@dataclass
class M3PModelConfig(MultimodalModelConfig):
    fusion: ChoiceEnum(FUSION_CHOICES) = field(
        default="cvlm",
        metadata={"help": "how image states join the text states: none (text-only), gated (global "
                          "vector through a gate), concat (patches appended), selective (gated "
                          "attention over patches, Li et al. 2022), cvlm (cross-attention, Eq. 8)"},
    )
    image_encoder_layers: int = field(
        default=0, metadata={"help": "transformer layers over the projected patches"},
    )
    fusion_attention_heads: Optional[int] = field(
        default=None, metadata={"help": "heads of the cvlm/selective attention over patches; default: "
                                         "1 for selective (Li et al. 2022), --encoder-attention-heads for cvlm"},
    )
    cvlm_null_attention: bool = field(
        default=False, metadata={"help": "give CVLM's attention one more key per head, learned, whose value is "
                                         "zero, so that a source token can take nothing from the image"},
    )
    init_from_text_model: Optional[str] = field(
        default=None,
        metadata={"help": "start the text encoder, decoder and embeddings from this checkpoint of a text-only "
                          "model (--fusion none, same sizes, same data-bin); the image side starts fresh. The "
                          "paper builds m3P on a pretrained text encoder (XLM-R, Sec. 3.3). Read when "
                          "training builds the model (a resumed run reads it again, then loads its own "
                          "checkpoint over it); generation does not need it"},
    )
    pretrained_text_encoder: Optional[str] = field(
        default=None,
        metadata={"help": "initialise the text encoder and the (shared) token embeddings from a local "
                          "XLM-R/RoBERTa checkpoint: a directory with model.pt and dict.txt (fairseq's "
                          "xlmr.base layout), or its model.pt. Needs --arch m3p_transformer_xlmr_base "
                          "(or its sizes); embedding rows are matched by symbol, so binarize with "
                          "--dict DIR/dict.txt --spm-model DIR/sentencepiece.bpe.model. Generation "
                          "from a trained checkpoint does not need these files (a resumed run reads them "
                          "again, then loads its own checkpoint over them)"},
    )


class M3PEncoder(MultimodalEncoderMixin, FairseqEncoder):
    """The text encoder (fairseq's TransformerEncoder) followed by image fusion.

    Its output has the text encoder's keys; ``encoder_out``/``encoder_padding_mask`` hold the
    fused states, so fairseq's decoder and beam search use them unchanged, and the image side is
    computed once per sentence and reordered with the beams like any encoder state. With images
    it adds ``text_states`` (unfused, for MMCL's pooled s^k) and ``image_global_state``.
    """

    def __init__(self, args, text_encoder: FairseqEncoder):
        super().__init__(text_encoder.dictionary)
        self.text_encoder = text_encoder
        self.fusion = None
        cfg = TransformerConfig.from_namespace(args) if args.fusion != "none" else None
        self.init_image_side(args, None if cfg is None else ImageFeatureEncoder(
            cfg, args.image_feature_dim, args.max_image_patches, args.image_encoder_layers))
        if cfg is not None:
            heads = fusion_heads(args.fusion, args.fusion_attention_heads, cfg.encoder.attention_heads)
            self.fusion = build_fusion(args.fusion, cfg.encoder.embed_dim, heads, cfg.dropout, cfg.attention_dropout,
                                       null_attention=getattr(args, "cvlm_null_attention", False))

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                image_patches: Optional[Tensor] = None, image_global: Optional[Tensor] = None,
                modalities: Optional[Tensor] = None, image_usable: Optional[Tensor] = None,
                image_index: Optional[Tensor] = None,
                return_all_hiddens: bool = False, token_embeddings: Optional[Tensor] = None, **unused):
        """``modalities`` [B] (mdropnet.TEXT_ONLY / IMAGE_ONLY / TEXT_AND_IMAGE) fixes what each
        sentence's decoder sees; by default MDropNet draws it in training, and inference uses both.
        Sentences whose ``image_usable`` is False (image missing at extraction) are text-only.
        Other batch keys (data/batch_keys.py) are accepted and ignored."""
        out = self.text_encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
                                token_embeddings=token_embeddings)
        if self.fusion is None:
            return out
        text, text_padding_mask = out["encoder_out"][0], out["encoder_padding_mask"][0]
        # the patch states of each distinct image once: the fusion gathers them (after projecting)
        patches, global_state = self.encode_images(image_patches, image_global, text.dtype, image_index,
                                                   patches_per_row=False)
        modalities = self.modes(modalities, src_tokens.size(0), image_usable, src_tokens.device)
        fused, padding_mask = fuse_rows(self.fusion, fused_rows(modalities), text, text_padding_mask, patches,
                                        global_state, image_index)
        if modalities is not None:
            patches = to_rows(patches, image_index, dim=1)  # MDropNet's image-only prompt is per row
            image_prompt = torch.cat([self._target_language(src_tokens), patches], dim=0)
            fused, padding_mask = per_sentence_memory(modalities, text, text_padding_mask, fused,
                                                      padding_mask, image_prompt)
        return {**out, "encoder_out": [fused], "encoder_padding_mask": [padding_mask],
                "text_states": [text], IMAGE_GLOBAL_STATE: [global_state]}

    def _target_language(self, src_tokens: Tensor) -> Tensor:
        """[1, B, C]: the embedding of each sentence's first token, the target-language tag the
        task prefixes. An image-only sentence sees it in front of its patches: captioning needs
        to know the language to write in, and the bare embedding carries nothing of the source."""
        first = (src_tokens != self.dictionary.pad()).long().argmax(dim=1, keepdim=True)
        tags = src_tokens.gather(1, first).t()
        return self.text_encoder.embed_tokens(tags) * self.text_encoder.embed_scale

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order):
        return self.text_encoder.reorder_encoder_out(encoder_out, new_order)

    def max_positions(self):
        return self.text_encoder.max_positions()

    def upgrade_state_dict_named(self, state_dict, name):
        return self.text_encoder.upgrade_state_dict_named(state_dict, f"{name}.text_encoder")


@register_model("m3p_transformer")
class M3PTransformerModel(MultimodalModel, TransformerModel):
    """Transformer encoder-decoder with an image-fusing encoder (paper Fig. 2)."""

    image_fusions = [name for name in FUSION_CHOICES if name != "none"]

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, M3PModelConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        m3p_base_architecture(args)
        if args.fusion != "none":
            cls.resolve_image_feature_dim(args, task)
        text_model = PackedMemoryTransformer.build_model(args, task)
        model = cls(args, M3PEncoder(args, text_model.encoder), text_model.decoder,
                    language_tags=list(cls.language_tags(task)))
        if cls.pretrained_to_load(args, "pretrained_text_encoder", PRETRAINED_TEXT_ENCODER_LOADED):
            load_pretrained_text_encoder(model.encoder.text_encoder, args.pretrained_text_encoder,
                                         other_embeddings=[model.decoder.embed_tokens])
            cls.mark_pretrained_loaded(args, PRETRAINED_TEXT_ENCODER_LOADED)
        if cls.pretrained_to_load(args, "init_from_text_model", TEXT_MODEL_LOADED):
            logger.info("%s: %d tensors copied from %s", OPTION, init_from_text_model(model, args.init_from_text_model),
                        args.init_from_text_model)
            cls.mark_pretrained_loaded(args, TEXT_MODEL_LOADED)
        return model

    def __init__(self, args, encoder: M3PEncoder, decoder, language_tags=()):
        super().__init__(args, encoder, decoder)
        self.init_multimodal(args, args.encoder_embed_dim)
        # Pooled text representations leave out the target-language tag, which says nothing
        # about the sentence and would make the same sentence's vectors differ by direction.
        excluded = torch.zeros(len(encoder.dictionary), dtype=torch.bool)
        excluded[list(language_tags) + [encoder.dictionary.pad()]] = True
        self.register_buffer("_pooling_excluded", excluded, persistent=False)

    def pooled_text(self, src_tokens: Tensor, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
        """s^k: the unfused text states averaged over the source tokens (tag and padding left out)."""
        states = encoder_out.get("text_states", encoder_out["encoder_out"])[0]
        return mean_over_tokens(states, ~self._pooling_excluded[src_tokens])

    def pooled_text_of(self, src_tokens: Tensor, src_lengths: Tensor, batch) -> Tensor:
        """s^k of other source tokens (MMA's masked sources): the text encoder alone, pooled alike."""
        states = self.encoder.text_encoder(src_tokens, src_lengths=src_lengths)["encoder_out"][0]
        return mean_over_tokens(states, ~self._pooling_excluded[src_tokens])


@register_model_architecture("m3p_transformer", "m3p_transformer")
def m3p_base_architecture(args):
    set_option_defaults(args, M3PModelConfig)
    set_default(args, "share_all_embeddings", True)
    base_architecture(args)


def _set_sizes(args, embed_dim: int, ffn_dim: int, heads: int, encoder_layers: int, decoder_layers: int):
    """Defaults for one size; anything given on the command line wins, and the decoder follows
    the encoder's width (shared embeddings need equal widths)."""
    set_default(args, "encoder_embed_dim", embed_dim)
    set_default(args, "encoder_ffn_embed_dim", ffn_dim)
    set_default(args, "encoder_attention_heads", heads)
    set_default(args, "encoder_layers", encoder_layers)
    set_default(args, "decoder_embed_dim", args.encoder_embed_dim)
    set_default(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    set_default(args, "decoder_attention_heads", args.encoder_attention_heads)
    set_default(args, "decoder_layers", decoder_layers)


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


@register_model_architecture("m3p_transformer", "m3p_transformer_xlmr_base")
def m3p_transformer_xlmr_base(args):
    """A text encoder exactly like XLM-R base (fairseq's roberta base_architecture), so that
    --pretrained-text-encoder can load xlmr.base into it, and a 12-layer decoder of its width;
    all embeddings shared. Options given on the command line win (e.g. smaller sizes in tests)."""
    _set_sizes(args, embed_dim=768, ffn_dim=3072, heads=12, encoder_layers=12, decoder_layers=12)
    set_default(args, "max_source_positions", 512)  # + padding offset = xlmr.base's 514 position rows
    set_default(args, "encoder_learned_pos", True)
    set_default(args, "layernorm_embedding", True)
    set_default(args, "no_scale_embedding", True)  # RoBERTa does not scale its embeddings
    set_default(args, "activation_fn", "gelu")
    set_default(args, "encoder_normalize_before", False)  # post-norm
    set_default(args, "attention_dropout", 0.1)
    # The decoder shares XLM-R's (unscaled) embeddings and, as in mBART, the encoder's conventions;
    # layernorm_embedding, no_scale_embedding and activation_fn apply to it too.
    set_default(args, "decoder_learned_pos", True)
    set_default(args, "decoder_normalize_before", False)
    m3p_base_architecture(args)
