"""The VLP-MMT system (vlp-for-mmt-modality-loss.md, Sec. 3.3-3.4, Fig. 1-2, Algorithm 1): the
single-stream vision-language encoder (vlp_encoder.py, pre-trained with ``--task
vlp_pretraining``), a linear layer to the decoder width, and a transformer decoder whose
cross-attention reads the textual and visual keys/values (modality_attention.py), trained with
``--task multimodal_translation --criterion vlp_mmt_loss`` in two stages:

* stage 1 (``--freeze-encoder``): the pre-trained encoder (transformer, embeddings, FFN(v)) is
  frozen; the linear layer and the decoder learn with cross-entropy + modality loss;
* stage 2: everything is trained, starting from stage 1's checkpoint
  (``--restore-file STAGE1/checkpoint_best.pt --reset-optimizer ...``).

Each stage is an ordinary fairseq run, resumable like any other.

Object tags (Eq. 1's t) enter the encoder when the model reads them (``--object-tags``): ``auto``
(the default) reads them when the training data's feature file carries them, as ``--task
vlp_pretraining`` does; the choice is recorded in the model's config, so generation from the
checkpoint gives the model what it was trained with (and stops, naming the file, when a feature
file lacks the tags the model reads).
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel, base_architecture
from torch import Tensor, nn

from ..data.batch_keys import OBJECT_TAGS, VISUAL_POSITIONS
from .contrastive_head import mean_over_tokens
from .modality_attention import ModalityDecoder
from .multimodal_model import MultimodalModel, record_in_config, set_default, set_option_defaults
from .vlp_checkpoint import load_vlp_encoder
from .vlp_encoder import (
    VLPEncoder,
    VLPEncoderConfig,
    check_single_stream_options,
    load_text_encoder_once,
    set_bert_style,
    set_encoder_sizes,
    set_single_stream_defaults,
)

logger = logging.getLogger(__name__)
PRETRAINED_VLP_ENCODER_LOADED = "pretrained_vlp_encoder_loaded"
OBJECT_TAGS_CHOICES = ("auto", "yes", "no")


@dataclass
class VLPTranslationConfig(VLPEncoderConfig):
    pretrained_vlp_encoder: Optional[str] = field(
        default=None,
        metadata={"help": "a checkpoint of --task vlp_pretraining (Algorithm 1, steps 2 and 4): its "
                          "encoder initialises this model's encoder. Read once, when the model is "
                          "first built"},
    )
    freeze_encoder: bool = field(
        default=False,
        metadata={"help": "two-stage training, stage 1 (Sec. 3.4): keep the encoder (transformer, "
                          "embeddings, FFN(v)) fixed and train the linear layer and the decoder; "
                          "stage 2 drops this option and restores stage 1's checkpoint"},
    )
    object_tags: str = field(
        default="auto",
        metadata={"help": "feed the images' object tags to the encoder (Eq. 1: Cat[Emb(Cat[x, t]), FFN(v)]): "
                          "auto = when the training split's feature file carries them (the object_tags "
                          "dataset), yes = always (an error for a file without them), no = never "
                          "(Cat[Emb(x), FFN(v)]). Resolved to yes/no when the model is first built and "
                          "saved with it, so generation reads tags exactly when training did"},
    )


class VLPTranslationEncoder(VLPEncoder):
    """The VLP encoder followed by the linear layer to the decoder width (Sec. 3.3)."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(args, dictionary, embed_tokens)
        self.to_decoder = nn.Linear(self.embed_dim, args.decoder_embed_dim)
        self.reads_object_tags = args.object_tags == "yes"

    def forward(self, src_tokens, src_lengths=None, **batch):
        if not self.reads_object_tags:  # e.g. in an ensemble with a model that reads them
            batch.pop(OBJECT_TAGS, None)
        out = super().forward(src_tokens, src_lengths=src_lengths, **batch)
        out["encoder_states_before_projection"] = out["encoder_out"]
        out["encoder_out"] = [self.to_decoder(out["encoder_out"][0])]
        return out

    def reorder_encoder_out(self, encoder_out, new_order):
        reordered = super().reorder_encoder_out(encoder_out, new_order)
        reordered["encoder_states_before_projection"] = [
            state.index_select(1, new_order) for state in encoder_out["encoder_states_before_projection"]]
        return reordered

    def freeze(self) -> None:
        for parameter in self.encoder_parameters():
            parameter.requires_grad_(False)


@register_model("vlp_mmt")
class VLPTranslationModel(MultimodalModel, TransformerModel):
    image_fusions = ("single_stream",)

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, VLPTranslationConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        vlp_mmt_base_architecture(args)
        check_single_stream_options(args)
        if args.share_all_embeddings:
            raise ValueError("--arch vlp_mmt keeps the encoder's (BERT) and the decoder's embeddings apart: "
                             "drop --share-all-embeddings")
        cls.resolve_image_feature_dim(args, task)
        resolve_object_tags(args, task)
        encoder_embed = cls.build_embedding(args, task.source_dictionary, args.encoder_embed_dim)
        decoder_embed = cls.build_embedding(args, task.target_dictionary, args.decoder_embed_dim)
        encoder = VLPTranslationEncoder(args, task.source_dictionary, encoder_embed)
        decoder_cfg = TransformerConfig.from_namespace(args)
        decoder_cfg.encoder.embed_dim = args.decoder_embed_dim  # the decoder reads the projected states
        decoder = ModalityDecoder(decoder_cfg, task.target_dictionary, decoder_embed)
        model = cls(args, encoder, decoder)
        load_text_encoder_once(cls, args, encoder)
        if cls.pretrained_to_load(args, "pretrained_vlp_encoder", PRETRAINED_VLP_ENCODER_LOADED):
            load_vlp_encoder(encoder, args.pretrained_vlp_encoder)
            cls.mark_pretrained_loaded(args, PRETRAINED_VLP_ENCODER_LOADED)
        if args.freeze_encoder:
            encoder.freeze()
            logger.info("stage 1: encoder frozen (%d parameters), training the rest",
                        sum(p.numel() for p in encoder.encoder_parameters()))
        return model

    def __init__(self, args, encoder: VLPTranslationEncoder, decoder: ModalityDecoder):
        super().__init__(args, encoder, decoder)
        self.init_multimodal(args, args.encoder_embed_dim)
        # The paper trains no contrastive objective; without a head no parameter sits unused.
        self.contrastive_head = None

    @property
    def reads_object_tags(self) -> bool:
        return self.encoder.reads_object_tags

    @property
    def num_decoder_layers(self) -> int:
        return len(self.decoder.layers)

    def pooled_text(self, src_tokens: Tensor, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
        states = encoder_out["encoder_states_before_projection"][0]
        keep = ~(encoder_out["encoder_padding_mask"][0] | encoder_out[VISUAL_POSITIONS][0])
        return mean_over_tokens(states, keep)

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor,
                modality_layers: Optional[Sequence[int]] = None, modality_target: Optional[Tensor] = None,
                return_all_hiddens: bool = True, features_only: bool = False,
                alignment_layer: Optional[int] = None, alignment_heads: Optional[int] = None, **batch):
        """Translation as fairseq's encoder-decoder; with ``modality_layers`` (0-based) the extra
        output also holds h_x, h_v of those layers, and with ``modality_target`` lambda_j
        (data/batch_keys.py MODALITY_*), for the vlp_mmt_loss criterion."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
                                   **batch)
        decoder_args = dict(features_only=features_only, alignment_layer=alignment_layer,
                            alignment_heads=alignment_heads, src_lengths=src_lengths,
                            return_all_hiddens=return_all_hiddens)
        if modality_layers is None:
            return self.decoder(prev_output_tokens, encoder_out=encoder_out, **decoder_args)
        return self.decoder.forward_with_modality(prev_output_tokens, encoder_out, modality_layers,
                                                  target=modality_target, **decoder_args)


def resolve_object_tags(args, task) -> None:
    """--object-tags auto -> yes when the task's training feature file carries tags, else no;
    recorded in the config (a checkpoint keeps its choice, whatever data it meets later)."""
    choice = str(args.object_tags).lower()
    if choice not in OBJECT_TAGS_CHOICES:
        raise ValueError(f"--object-tags {args.object_tags!r}: expected one of {', '.join(OBJECT_TAGS_CHOICES)}")
    if choice == "auto":
        choice = "yes" if getattr(task, "object_tags_available", False) else "no"
        logger.info("--object-tags auto: %s", "the feature file carries object tags, the encoder reads them"
                    if choice == "yes" else "no object tags in the feature file, input Cat[Emb(x), FFN(v)]")
    record_in_config(args, {"object_tags": choice})


@register_model_architecture("vlp_mmt", "vlp_mmt")
def vlp_mmt_base_architecture(args):
    set_single_stream_defaults(args)
    set_option_defaults(args, VLPTranslationConfig)
    set_default(args, "share_all_embeddings", False)
    set_default(args, "share_decoder_input_output_embed", True)
    base_architecture(args)


@register_model_architecture("vlp_mmt", "vlp_mmt_tiny")
def vlp_mmt_tiny(args):
    """For tests and the quickstart: 128 wide, 3 + 3 layers."""
    set_encoder_sizes(args, 128, 256, 4, 3)
    _set_decoder_sizes(args, 128, 256, 4, 3)
    vlp_mmt_base_architecture(args)


@register_model_architecture("vlp_mmt", "vlp_mmt_xlmr_base")
def vlp_mmt_xlmr_base(args):
    """The paper's shape: a BERT-base-sized encoder (XLM-R base's conventions, so
    --pretrained-text-encoder loads xlmr.base) and a 6-layer, 512-wide transformer decoder."""
    set_bert_style(args)
    _set_decoder_sizes(args, 512, 2048, 8, 6)
    vlp_mmt_base_architecture(args)


def _set_decoder_sizes(args, embed_dim: int, ffn_dim: int, heads: int, layers: int) -> None:
    set_default(args, "decoder_embed_dim", embed_dim)
    set_default(args, "decoder_ffn_embed_dim", ffn_dim)
    set_default(args, "decoder_attention_heads", heads)
    set_default(args, "decoder_layers", layers)
