"""m3P encoder-decoder: fairseq's transformer whose encoder also reads image features and fuses
them with the text states (``--fusion none|gated|concat|selective|cvlm``), trained with
MDropNet and, through the ``m3p_loss`` criterion, the MMCL contrastive objective."""

from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import FairseqEncoder, register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerModel,
    base_architecture,
)

from ..data.vocabulary import is_lang_tag
from .contrastive_head import ContrastiveHead, mean_over_tokens
from .fusion import FUSION_CHOICES, build_fusion
from .image_encoder import ImageFeatureEncoder
from .mdropnet import TEXT_AND_IMAGE, TEXT_ONLY, check_probabilities, draw_modalities, per_sentence_memory
from .pretrained_text_encoder import load_pretrained_text_encoder

# Set in the model config once --pretrained-text-encoder has been copied in, and saved with it.
PRETRAINED_TEXT_ENCODER_LOADED = "pretrained_text_encoder_loaded"


@dataclass
class M3PModelConfig(FairseqDataclass):
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
    mdropnet_text_only: float = field(
        default=0.25,
        metadata={"help": "MDropNet: share of training sentences translated from the text alone "
                          "(Eq. 9); 0 with --mdropnet-image-only 0 turns MDropNet off"},
    )
    mdropnet_image_only: float = field(
        default=0.25,
        metadata={"help": "MDropNet: share of training sentences translated from the image alone "
                          "(Eq. 10); the rest use text and image (Eq. 11), as inference always does"},
    )
    mmcl_projection_dim: Optional[int] = field(
        default=None, metadata={"help": "dimension of the joint text-image space of MMCL; default: "
                                         "--encoder-embed-dim"},
    )
    mmcl_temperature: float = field(
        default=0.1, metadata={"help": "MMCL temperature tau of Eq. 5-6 (its initial value with "
                                        "--mmcl-learn-temperature)"},
    )
    mmcl_learn_temperature: bool = field(
        default=False, metadata={"help": "learn the MMCL temperature (CLIP-style, in log space)"},
    )
    mmcl_min_temperature: float = field(
        default=0.01, metadata={"help": "floor of a learned MMCL temperature"},
    )
    pretrained_text_encoder: Optional[str] = field(
        default=None,
        metadata={"help": "initialise the text encoder and the (shared) token embeddings from a local "
                          "XLM-R/RoBERTa checkpoint: a directory with model.pt and dict.txt (fairseq's "
                          "xlmr.base layout), or its model.pt. Needs --arch m3p_transformer_xlmr_base "
                          "(or its sizes); embedding rows are matched by symbol, so binarize with "
                          "--dict DIR/dict.txt --spm-model DIR/sentencepiece.bpe.model. Read once, "
                          "when the model is first built: checkpoints of the trained model (generation, "
                          "resuming) do not need these files"},
    )


class M3PEncoder(FairseqEncoder):
    """The text encoder (fairseq's TransformerEncoder) followed by image fusion.

    Its output has the text encoder's keys; ``encoder_out``/``encoder_padding_mask`` hold the
    fused states, so fairseq's decoder and beam search use them unchanged, and the image side is
    computed once per sentence and reordered with the beams like any encoder state. With images
    it adds ``text_states`` (unfused, for MMCL's pooled s^k) and ``image_global_state``.
    """

    def __init__(self, args, text_encoder: FairseqEncoder):
        super().__init__(text_encoder.dictionary)
        self.text_encoder = text_encoder
        self.fusion_name = args.fusion
        self.image_encoder = self.fusion = None
        check_probabilities(args.mdropnet_text_only, args.mdropnet_image_only)
        self.mdropnet_text_only = args.mdropnet_text_only
        self.mdropnet_image_only = args.mdropnet_image_only
        if args.fusion != "none":
            cfg = TransformerConfig.from_namespace(args)
            self.image_encoder = ImageFeatureEncoder(cfg, args.image_feature_dim, args.max_image_patches,
                                                     args.image_encoder_layers)
            self.fusion = build_fusion(args.fusion, cfg.encoder.embed_dim,
                                       args.fusion_attention_heads or cfg.encoder.attention_heads,
                                       cfg.dropout, cfg.attention_dropout)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                image_patches: Optional[Tensor] = None, image_global: Optional[Tensor] = None,
                modalities: Optional[Tensor] = None, image_usable: Optional[Tensor] = None,
                return_all_hiddens: bool = False, token_embeddings: Optional[Tensor] = None, **unused):
        """``modalities`` [B] (mdropnet.TEXT_ONLY / IMAGE_ONLY / TEXT_AND_IMAGE) fixes what each
        sentence's decoder sees; by default MDropNet draws it in training, and inference uses both.
        Sentences whose ``image_usable`` is False (image missing at extraction) are text-only."""
        out = self.text_encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
                                token_embeddings=token_embeddings)
        if self.fusion is None:
            return out
        if image_patches is None or image_global is None:
            raise ValueError(f"--fusion {self.fusion_name} needs image features, but the batch has none "
                             "(no image features for this split, or an input line without an image id)")
        text, text_padding_mask = out["encoder_out"][0], out["encoder_padding_mask"][0]
        patches, global_state = self.image_encoder(image_patches.to(text.dtype), image_global.to(text.dtype))
        fused, padding_mask = self.fusion(text, text_padding_mask, patches, global_state)
        if modalities is None and self.training and self.mdropnet_text_only + self.mdropnet_image_only > 0:
            modalities = draw_modalities(src_tokens.size(0), self.mdropnet_text_only,
                                         self.mdropnet_image_only, device=src_tokens.device)
        if image_usable is not None and not image_usable.all():
            if modalities is None:
                modalities = torch.full_like(image_usable, TEXT_AND_IMAGE, dtype=torch.long)
            modalities = modalities.masked_fill(~image_usable, TEXT_ONLY)
        if modalities is not None:
            image_prompt = torch.cat([self._target_language(src_tokens), patches], dim=0)
            fused, padding_mask = per_sentence_memory(modalities, text, text_padding_mask, fused,
                                                      padding_mask, image_prompt)
        return {**out, "encoder_out": [fused], "encoder_padding_mask": [padding_mask],
                "text_states": [text], "image_global_state": [global_state]}

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
class M3PTransformerModel(TransformerModel):
    """Transformer encoder-decoder with an image-fusing encoder (paper Fig. 2)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, M3PModelConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        m3p_base_architecture(args)
        if args.fusion != "none" and args.image_feature_dim is None:
            args.image_feature_dim = task.require_image_feature_dim(args.fusion)  # the data's
        text_model = TransformerModel.build_model(args, task)
        model = cls(args, M3PEncoder(args, text_model.encoder), text_model.decoder)
        if args.pretrained_text_encoder and not getattr(args, PRETRAINED_TEXT_ENCODER_LOADED, False):
            load_pretrained_text_encoder(model.encoder.text_encoder, args.pretrained_text_encoder,
                                         other_embeddings=[model.decoder.embed_tokens])
            _mark_pretrained_text_encoder_loaded(args)
        return model

    def __init__(self, args, encoder, decoder):
        super().__init__(args, encoder, decoder)
        self.num_updates = 0
        self.contrastive_head = None
        if encoder.fusion is not None:
            embed_dim = args.encoder_embed_dim
            self.contrastive_head = ContrastiveHead(
                embed_dim, args.mmcl_projection_dim or embed_dim, args.mmcl_temperature,
                args.mmcl_learn_temperature, args.mmcl_min_temperature)
        # Pooled text representations leave out the target-language tag, which says nothing
        # about the sentence and would make the same sentence's vectors differ by direction.
        symbols = encoder.dictionary.symbols
        self.register_buffer("_pooling_excluded", torch.tensor(
            [is_lang_tag(s) for s in symbols]), persistent=False)
        self._pooling_excluded[encoder.dictionary.pad()] = True

    @property
    def image_feature_dim(self) -> Optional[int]:
        image_encoder = self.encoder.image_encoder
        return None if image_encoder is None else image_encoder.feature_dim

    def set_num_updates(self, num_updates):
        # The task reads this to schedule the sampling temperature (also right after a resume).
        self.num_updates = num_updates
        super().set_num_updates(num_updates)

    def pooled_text(self, src_tokens: Tensor, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
        """s^k: the unfused text states averaged over the source tokens (tag and padding left out)."""
        states = encoder_out.get("text_states", encoder_out["encoder_out"])[0]
        return mean_over_tokens(states, ~self._pooling_excluded[src_tokens])

    def forward(self, src_tokens, src_lengths, prev_output_tokens,
                image_patches: Optional[Tensor] = None, image_global: Optional[Tensor] = None,
                image_negative_global: Optional[Tensor] = None, modalities: Optional[Tensor] = None,
                image_usable: Optional[Tensor] = None, contrastive: bool = False, return_all_hiddens: bool = True, features_only: bool = False,
                alignment_layer: Optional[int] = None, alignment_heads: Optional[int] = None, **unused):
        """With ``contrastive=True`` the decoder's extra output also holds the MMCL embeddings
        (``mmcl_text``, ``mmcl_image`` [B, d], ``mmcl_image_negatives`` [B, d] when the batch
        carries ``image_negative_global``), ``mmcl_logit_scale`` and, when some images are
        unusable, ``mmcl_usable`` [B] (the pairs MMCL may use); computing them inside
        forward keeps them under DistributedDataParallel's gradient synchronisation."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, image_patches=image_patches,
                                   image_global=image_global, modalities=modalities,
                                   image_usable=image_usable, return_all_hiddens=return_all_hiddens)
        logits, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                                     alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                                     src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)
        if contrastive:
            if self.contrastive_head is None:
                raise ValueError("MMCL needs a model that reads images: train with --fusion "
                                 "gated|concat|selective|cvlm, or set --mmcl-weight 0")
            negatives = (None if image_negative_global is None else
                         self.encoder.image_encoder.embed_global(image_negative_global.to(logits.dtype)))
            extra.update(self.contrastive_head.outputs(self.pooled_text(src_tokens, encoder_out),
                                                       encoder_out["image_global_state"][0], negatives,
                                                       image_usable))
        return logits, extra


def _mark_pretrained_text_encoder_loaded(args):
    # fairseq rebuilds a trained model from the config saved in its checkpoint and then loads
    # the trained weights over it (fairseq-generate, fairseq.checkpoint_utils); build_model is
    # not told so (models.build_model drops from_checkpoint). The mark, saved with the config,
    # skips the copy then, so XLM-R's files need not exist (cf. wav2vec2's w2v_args).
    with open_dict(args) if OmegaConf.is_config(args) else ExitStack():
        setattr(args, PRETRAINED_TEXT_ENCODER_LOADED, True)


def _set_default(args, name, value):
    if getattr(args, name, None) is None:
        setattr(args, name, value)


@register_model_architecture("m3p_transformer", "m3p_transformer")
def m3p_base_architecture(args):
    for option in fields(M3PModelConfig):
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


@register_model_architecture("m3p_transformer", "m3p_transformer_xlmr_base")
def m3p_transformer_xlmr_base(args):
    """A text encoder exactly like XLM-R base (fairseq's roberta base_architecture), so that
    --pretrained-text-encoder can load xlmr.base into it, and a 12-layer decoder of its width;
    all embeddings shared. Options given on the command line win (e.g. smaller sizes in tests)."""
    _set_sizes(args, embed_dim=768, ffn_dim=3072, heads=12, encoder_layers=12, decoder_layers=12)
    _set_default(args, "max_source_positions", 512)  # + padding offset = xlmr.base's 514 position rows
    _set_default(args, "encoder_learned_pos", True)
    _set_default(args, "layernorm_embedding", True)
    _set_default(args, "no_scale_embedding", True)  # RoBERTa does not scale its embeddings
    _set_default(args, "activation_fn", "gelu")
    _set_default(args, "encoder_normalize_before", False)  # post-norm
    _set_default(args, "attention_dropout", 0.1)
    # The decoder shares XLM-R's (unscaled) embeddings and, as in mBART, the encoder's conventions;
    # layernorm_embedding, no_scale_embedding and activation_fn apply to it too.
    _set_default(args, "decoder_learned_pos", True)
    _set_default(args, "decoder_normalize_before", False)
    m3p_base_architecture(args)
