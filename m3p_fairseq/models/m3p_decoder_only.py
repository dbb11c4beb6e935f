"""Decoder-only m3P (paper Fig. 3a, Table 1's strongest system): one causal transformer LM over

    [projected image patch tokens] [instruction prompt] [source] [separator] [target]

where the prompt is "Please translate the following sentence from {source language} to
{target language}:" and the loss covers the target tokens only.

It is a FairseqEncoderDecoderModel so that the task, the criteria and fairseq-generate's beam
search drive it unchanged: the "encoder" (:class:`PrefixEncoder`) builds the prefix and runs the
causal stack over it once, returning every layer's keys and values; the "decoder"
(:class:`PrefixDecoder`) continues the *same* stack (one set of weights) over the target,
attending causally to the prefix and to the target so far, with a key/value cache for
incremental decoding. The separator is fairseq's </s>, which starts every decoder input.

The source arrives as the task makes it (``__tgt__ x </s>``): the target-language tag and the
source language (``net_input["source_lang"]``, which the task adds for this model) choose the
prompt; the tag and </s> themselves are not repeated in the prefix.

MDropNet (Sec. 2.7) hides, per training sentence, the image tokens (text only, Eq. 9) or the
source tokens (image only, Eq. 10; the prompt stays); MMCL (Sec. 2.4) contrasts the source states
pooled from a text-only pass over [prompt][source] (so they cannot simply copy the image, which
comes first in the prefix) with the image's global vector.
"""

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.models.transformer import TransformerConfig
from omegaconf import OmegaConf, open_dict
from torch import Tensor

from .causal_lm import CausalTransformer
from .contrastive_head import ContrastiveHead, mean_over_tokens
from .image_encoder import ImageFeatureEncoder
from .instruction_prompt import DEFAULT_TEMPLATE, InstructionPrompt
from .m3p_transformer import M3PModelConfig, _set_default
from .mdropnet import IMAGE_ONLY, TEXT_AND_IMAGE, TEXT_ONLY, check_probabilities, draw_modalities

logger = logging.getLogger(__name__)

PRETRAINED_LLAMA_LOADED = "pretrained_llama_loaded"


def _as_in_encoder_decoder(name: str):
    """The same option (default and help) as the encoder-decoder model's."""
    option = M3PModelConfig.__dataclass_fields__[name]
    return field(default=option.default, metadata=dict(option.metadata))


@dataclass
class M3PDecoderOnlyConfig(FairseqDataclass):
    fusion: ChoiceEnum(["prefix", "none"]) = field(
        default="prefix",
        metadata={"help": "prefix: the projected image patches are the first tokens of the prefix; "
                          "none: a text-only decoder-only model"},
    )
    decoder_embed_dim: Optional[int] = field(default=None, metadata={"help": "model width"})
    decoder_ffn_embed_dim: Optional[int] = field(default=None, metadata={"help": "SwiGLU hidden size"})
    decoder_layers: Optional[int] = field(default=None, metadata={"help": "causal transformer layers"})
    decoder_attention_heads: Optional[int] = field(default=None, metadata={"help": "attention heads"})
    decoder_kv_heads: Optional[int] = field(
        default=None, metadata={"help": "key/value heads (grouped-query attention); default: as many as heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on embeddings and residual branches"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout of attention weights"})
    rope_theta: float = field(default=10000.0, metadata={"help": "base of the rotary position frequencies"})
    rms_norm_eps: float = field(default=1e-5, metadata={"help": "epsilon of the RMS norms"})
    untie_embeddings: bool = field(
        default=False, metadata={"help": "a separate output projection (Llama 2 has one); default: tied "
                                         "to the token embeddings"})
    instruction_prompt: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={"help": "the instruction between image and source; {src} and {tgt} become the languages' "
                          "English names (m3p_fairseq/data/languages.py)"},
    )
    prompt_spm_model: Optional[str] = field(
        default=None, metadata={"help": "SentencePiece model that tokenises the prompt; default: DATA/spm.model "
                                        "(preprocess/binarize.py writes it), else whitespace words"})
    image_feature_dim: Optional[int] = _as_in_encoder_decoder("image_feature_dim")
    max_image_patches: int = _as_in_encoder_decoder("max_image_patches")
    mdropnet_text_only: float = _as_in_encoder_decoder("mdropnet_text_only")
    mdropnet_image_only: float = _as_in_encoder_decoder("mdropnet_image_only")
    mmcl_projection_dim: Optional[int] = field(
        default=None, metadata={"help": "dimension of the joint text-image space of MMCL; default: the model width"})
    mmcl_temperature: float = _as_in_encoder_decoder("mmcl_temperature")
    mmcl_learn_temperature: bool = _as_in_encoder_decoder("mmcl_learn_temperature")
    mmcl_min_temperature: float = _as_in_encoder_decoder("mmcl_min_temperature")
    pretrained_llama: Optional[str] = field(
        default=None,
        metadata={"help": "initialise from a local Llama-style checkpoint: a directory with config.json, "
                          "*.safetensors and tokenizer.model (Hugging Face layout). The sizes come from "
                          "config.json; embedding rows are matched by SentencePiece piece, so binarize with "
                          "--spm-model DIR/tokenizer.model. Read once, when the model is first built"},
    )


def _lang_tag_positions(src_tokens: Tensor, pad: int) -> Tensor:
    return (src_tokens != pad).long().argmax(dim=1)


class PrefixEncoder(FairseqEncoder):
    """Builds [image tokens][prompt][source] and runs the causal stack over it once.

    Prefixes are right-aligned (left-padded) in the batch; padding and tokens hidden by MDropNet
    are masked as keys and skipped by the positions, so a sentence gets the same states alone
    or in a batch. Returns the layers' keys/values, the key mask and the prefix length (the
    target's first position); every tensor has the batch first, for beam-search reordering.
    """

    def __init__(self, args, dictionary, stack: CausalTransformer, prompt: InstructionPrompt):
        super().__init__(dictionary)
        # The decoder owns the stack (one set of weights for prefix and target); a plain
        # attribute in a list keeps it out of this module's parameters and state dict.
        self._stack = [stack]
        self.prompt = prompt
        self.max_source_positions = getattr(args, "max_source_positions", 1024)
        check_probabilities(args.mdropnet_text_only, args.mdropnet_image_only)
        self.mdropnet_text_only, self.mdropnet_image_only = args.mdropnet_text_only, args.mdropnet_image_only
        self.image_encoder = None
        if args.fusion != "none":
            cfg = TransformerConfig()
            cfg.encoder.embed_dim, cfg.dropout = args.decoder_embed_dim, args.dropout
            self.image_encoder = ImageFeatureEncoder(cfg, args.image_feature_dim, args.max_image_patches, 0)

    @property
    def stack(self) -> CausalTransformer:
        return self._stack[0]

    def text_prefix(self, src_tokens: Tensor, source_lang: Optional[Tensor]):
        """[prompt][source] per sentence, left-padded: token ids [B, L] and a source mask [B, L]."""
        if source_lang is None:
            raise ValueError("the decoder-only model's prompt names the source language, but the batch has no "
                             "net_input['source_lang'] (use --task multimodal_translation, which adds it)")
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        rows = []
        for tokens, source in zip(src_tokens.cpu(), source_lang.tolist()):
            tokens = tokens[tokens != pad]
            text = tokens[1:-1] if len(tokens) > 1 and tokens[-1] == eos else tokens[1:]
            rows.append((self.prompt.ids(source, int(tokens[0])), text))
        length = max(len(p) + len(t) for p, t in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        is_source = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (prompt, text) in enumerate(rows):
            ids[i, length - len(prompt) - len(text):] = torch.cat([prompt, text])
            is_source[i, length - len(text):] = True
        return ids.to(src_tokens.device), is_source.to(src_tokens.device)

    def run_stack(self, x: Tensor, keep: Tensor):
        """Causal pass over a prefix [B, L, C] whose keys ``keep`` [B, L] are visible."""
        length = x.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # a hidden token still attends to itself, so that no row is empty (its output is unused)
        allowed = (causal & keep.unsqueeze(1)) | torch.eye(length, dtype=torch.bool, device=x.device)
        positions = (keep.long().cumsum(dim=1) - 1).clamp(min=0)
        return self.stack(x, positions, allowed.unsqueeze(1))

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                source_lang: Optional[Tensor] = None, image_patches: Optional[Tensor] = None,
                image_global: Optional[Tensor] = None, modalities: Optional[Tensor] = None,
                image_usable: Optional[Tensor] = None, **unused):
        text_ids, is_source = self.text_prefix(src_tokens, source_lang)
        x = self.stack.embed_tokens(text_ids)
        keep = text_ids != self.dictionary.pad()
        out = {"text_ids": [text_ids], "is_source": [is_source]}
        if self.image_encoder is not None:
            if image_patches is None or image_global is None:
                raise ValueError("the decoder-only model reads images (--fusion prefix), but the batch has none "
                                 "(no image features for this split, or an input line without an image id)")
            patches, global_state = self.image_encoder(image_patches.to(x.dtype), image_global.to(x.dtype))
            out["image_global_state"] = [global_state]
            patches = patches.transpose(0, 1)
            image_keep = torch.ones(patches.shape[:2], dtype=torch.bool, device=x.device)
            if modalities is None and self.training and self.mdropnet_text_only + self.mdropnet_image_only > 0:
                modalities = draw_modalities(x.size(0), self.mdropnet_text_only, self.mdropnet_image_only,
                                             device=x.device)
            if image_usable is not None and not image_usable.all():
                if modalities is None:
                    modalities = torch.full_like(image_usable, TEXT_AND_IMAGE, dtype=torch.long)
                modalities = modalities.masked_fill(~image_usable, TEXT_ONLY)
            if modalities is not None:
                image_keep &= (modalities != TEXT_ONLY).unsqueeze(1)
                keep = keep & ~(is_source & (modalities == IMAGE_ONLY).unsqueeze(1))
            x, keep = torch.cat([patches, x], dim=1), torch.cat([image_keep, keep], dim=1)
        _, key_values = self.run_stack(x, keep)
        out.update({"prefix_key_values": [t for key_value in key_values for t in key_value],
                    "prefix_keep": [keep], "prefix_length": [keep.long().sum(dim=1)]})
        return out

    def source_states(self, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
        """s^k for MMCL: the source tokens' states from a pass over [prompt][source] alone, pooled."""
        text_ids, is_source = encoder_out["text_ids"][0], encoder_out["is_source"][0]
        keep = text_ids != self.dictionary.pad()
        states, _ = self.run_stack(self.stack.embed_tokens(text_ids), keep)
        return mean_over_tokens(states.transpose(0, 1), is_source & keep)

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        return {key: [t.index_select(0, new_order) for t in tensors] for key, tensors in encoder_out.items()}

    def max_positions(self):
        return self.max_source_positions


class PrefixDecoder(FairseqIncrementalDecoder):
    """The causal stack over the target, continuing the prefix the encoder ran."""

    def __init__(self, args, dictionary, stack: CausalTransformer):
        super().__init__(dictionary)
        self.stack = stack
        self.max_target_positions = getattr(args, "max_target_positions", 1024)

    def forward(self, prev_output_tokens: Tensor, encoder_out: Dict[str, List[Tensor]],
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                features_only: bool = False, **unused):
        prefix = encoder_out["prefix_key_values"]
        prefix_keep, prefix_length = encoder_out["prefix_keep"][0], encoder_out["prefix_length"][0]
        if incremental_state is not None:
            cache = self.get_incremental_state(incremental_state, "key_values")
            past = prefix if cache is None else [cache[str(i)] for i in range(len(prefix))]
            step = prev_output_tokens.size(1) - 1
            tokens = prev_output_tokens[:, -1:]
            positions = prefix_length.unsqueeze(1) + step
            allowed = torch.cat([prefix_keep, prefix_keep.new_ones(tokens.size(0), step + 1)], dim=1)
            allowed = allowed.unsqueeze(1).unsqueeze(1)
        else:
            past, tokens = prefix, prev_output_tokens
            batch, length = tokens.shape
            positions = prefix_length.unsqueeze(1) + torch.arange(length, device=tokens.device)
            causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
            allowed = torch.cat([prefix_keep.unsqueeze(1).expand(batch, length, -1),
                                 causal.unsqueeze(0).expand(batch, -1, -1)], dim=2).unsqueeze(1)
        states, key_values = self.stack(self.stack.embed_tokens(tokens), positions, allowed,
                                        past=list(zip(past[0::2], past[1::2])))
        if incremental_state is not None:
            flat = [t for key_value in key_values for t in key_value]
            self.set_incremental_state(incremental_state, "key_values", {str(i): t for i, t in enumerate(flat)})
        out = states if features_only else self.stack.output_projection(states)
        return out, {"attn": [None], "inner_states": [states]}

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        cache = self.get_incremental_state(incremental_state, "key_values")
        if cache is not None:
            self.set_incremental_state(incremental_state, "key_values",
                                       {key: t.index_select(0, new_order) for key, t in cache.items()})

    def max_positions(self):
        return self.max_target_positions


@register_model("m3p_decoder_only")
class M3PDecoderOnlyModel(FairseqEncoderDecoderModel):
    """Decoder-only m3P behind fairseq's encoder-decoder interface (see the module docstring)."""

    reads_source_language = True  # the task then adds net_input["source_lang"]

    @classmethod
    def add_args(cls, parser):
        gen_parser_from_dataclass(parser, M3PDecoderOnlyConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        m3p_decoder_only_architecture(args)
        llama_config = None
        if args.pretrained_llama and not getattr(args, PRETRAINED_LLAMA_LOADED, False):
            from .llama_checkpoint import apply_llama_sizes, read_llama_config
            llama_config = read_llama_config(args.pretrained_llama)
            _set_in_config(args, apply_llama_sizes(llama_config))
        if args.fusion != "none" and args.image_feature_dim is None:
            args.image_feature_dim = task.require_image_feature_dim(args.fusion)  # the data's
        dictionary = task.source_dictionary
        if task.target_dictionary is not dictionary:
            raise ValueError("the decoder-only model needs one dictionary for source and target")
        spm_model = args.prompt_spm_model
        if spm_model is None:
            data_spm = task.data_directory.spm_model
            spm_model = str(data_spm) if data_spm.is_file() else None
        prompt = InstructionPrompt(dictionary, args.instruction_prompt, spm_model)  # may add pieces
        stack = CausalTransformer(
            len(dictionary), dictionary.pad(), args.decoder_embed_dim, args.decoder_ffn_embed_dim,
            args.decoder_layers, args.decoder_attention_heads, args.decoder_kv_heads or args.decoder_attention_heads,
            args.dropout, args.attention_dropout, args.rms_norm_eps, args.rope_theta,
            tie_embeddings=not args.untie_embeddings)
        model = cls(args, PrefixEncoder(args, dictionary, stack, prompt), PrefixDecoder(args, dictionary, stack))
        if llama_config is not None:
            from .llama_checkpoint import load_llama_weights
            load_llama_weights(stack, dictionary, args.pretrained_llama)
            _set_in_config(args, {PRETRAINED_LLAMA_LOADED: True})
        return model

    def __init__(self, args, encoder: PrefixEncoder, decoder: PrefixDecoder):
        super().__init__(encoder, decoder)
        self.args = args
        self.num_updates = 0
        self.contrastive_head = None
        if encoder.image_encoder is not None:
            width = args.decoder_embed_dim
            self.contrastive_head = ContrastiveHead(width, args.mmcl_projection_dim or width, args.mmcl_temperature,
                                                    args.mmcl_learn_temperature, args.mmcl_min_temperature)

    @property
    def image_feature_dim(self) -> Optional[int]:
        image_encoder = self.encoder.image_encoder
        return None if image_encoder is None else image_encoder.feature_dim

    def set_num_updates(self, num_updates):
        self.num_updates = num_updates  # the task's sampling warm-up reads it
        super().set_num_updates(num_updates)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, source_lang: Optional[Tensor] = None,
                image_patches: Optional[Tensor] = None, image_global: Optional[Tensor] = None,
                image_negative_global: Optional[Tensor] = None, modalities: Optional[Tensor] = None,
                image_usable: Optional[Tensor] = None, contrastive: bool = False, features_only: bool = False,
                **unused):
        """As M3PTransformerModel.forward: with ``contrastive=True`` the extra output holds
        ``mmcl_text``, ``mmcl_image``, ``mmcl_logit_scale`` (and ``mmcl_image_negatives``,
        ``mmcl_usable``) for the m3p_loss criterion."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, source_lang=source_lang,
                                   image_patches=image_patches, image_global=image_global,
                                   modalities=modalities, image_usable=image_usable)
        logits, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only)
        if contrastive:
            if self.contrastive_head is None:
                raise ValueError("MMCL needs a model that reads images: train with --fusion prefix, "
                                 "or set --mmcl-weight 0")
            negatives = (None if image_negative_global is None else
                         self.encoder.image_encoder.embed_global(image_negative_global.to(logits.dtype)))
            extra.update(self.contrastive_head.outputs(self.encoder.source_states(encoder_out),
                                                       encoder_out["image_global_state"][0], negatives,
                                                       image_usable))
        return logits, extra


def _set_in_config(args, values: dict):
    # saved with the config: fairseq-generate rebuilds the model from it without the Llama files
    with open_dict(args) if OmegaConf.is_config(args) else ExitStack():
        for name, value in values.items():
            setattr(args, name, value)


@register_model_architecture("m3p_decoder_only", "m3p_decoder_only")
def m3p_decoder_only_architecture(args):
    for option in fields(M3PDecoderOnlyConfig):
        _set_default(args, option.name, option.default)
    _set_default(args, "decoder_embed_dim", 512)
    _set_default(args, "decoder_ffn_embed_dim", 1376)
    _set_default(args, "decoder_layers", 8)
    _set_default(args, "decoder_attention_heads", 8)


@register_model_architecture("m3p_decoder_only", "m3p_decoder_only_tiny")
def m3p_decoder_only_tiny(args):
    """For tests and the quickstart; about the parameter count of m3p_transformer_tiny
    (6 causal layers vs its 3 + 3 encoder/decoder layers)."""
    _set_default(args, "decoder_embed_dim", 128)
    _set_default(args, "decoder_ffn_embed_dim", 256)
    _set_default(args, "decoder_layers", 6)
    _set_default(args, "decoder_attention_heads", 4)
    m3p_decoder_only_architecture(args)


@register_model_architecture("m3p_decoder_only", "m3p_decoder_only_base")
def m3p_decoder_only_base(args):
    """24 layers, 768 wide, SwiGLU 2048: 170M parameters in the layers, vs 198M in
    m3p_transformer_base's 12 + 12."""
    _set_default(args, "decoder_embed_dim", 768)
    _set_default(args, "decoder_ffn_embed_dim", 2048)
    _set_default(args, "decoder_layers", 24)
    _set_default(args, "decoder_attention_heads", 12)
    m3p_decoder_only_architecture(args)
