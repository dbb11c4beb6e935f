"""Decoder-only m3P (paper Fig. 3a, Table 1's strongest system): one causal transformer LM over

    <s> Below is an instruction ... ### Instruction: Please translate the following sentence
    from {source language} to {target language}: [image patch tokens] [source]
    ### Response: [separator] [target]

(the template is ``--instruction-prompt``, instruction_prompt.py) and the loss covers the target
tokens only.

It is a FairseqEncoderDecoderModel so that the task, the criteria and fairseq-generate's beam
search drive it unchanged: the "encoder" (:class:`PrefixEncoder`) builds the prefix and runs the
causal stack over it once, returning every layer's keys and values; the "decoder"
(:class:`PrefixDecoder`) continues the *same* stack (one set of weights) over the target,
attending causally to the prefix and to the target so far, with a key/value cache for
incremental decoding. The separator is fairseq's </s>, which starts every decoder input.

The source arrives as the task makes it (``__tgt__ x </s>``): the target-language tag and the
source language (``net_input["source_lang"]``, data/batch_keys.SOURCE_LANG) choose the prompt; the tag and </s> themselves are not repeated in the prefix.

MDropNet (Sec. 2.7) hides, per training sentence, the image tokens (text only, Eq. 9) or the
source tokens (image only, Eq. 10; the prompt stays); MMCL (Sec. 2.4) contrasts the source states
pooled from a text-only pass over the prompt (so they cannot simply copy the image, which
is in the prefix) with the image's global vector.
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from torch import Tensor

from ..data.batch_keys import SOURCE_LANG
from .causal_lm import CausalTransformer
from .instruction_prompt import DEFAULT_TEMPLATE, InstructionPrompt
from .multimodal_model import (
    MultimodalModel,
    MultimodalModelConfig,
    record_in_config,
    set_default,
    set_option_defaults,
)
from .prefix_lm import PrefixDecoder, PrefixEncoder

PRETRAINED_LLAMA_LOADED = "pretrained_llama_loaded"


@dataclass
class M3PDecoderOnlyConfig(MultimodalModelConfig):
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
        metadata={"help": "the prompt (paper Fig. 3a by default): {src} and {tgt} become the languages' "
                          "English names (m3p_fairseq/data/languages.py), {image} the image tokens, {source} "
                          "the source sentence, \\n a newline; the target follows. Without {image} and "
                          "{source}: [image][prompt][source], the layout of earlier checkpoints"},
    )
    prompt_spm_model: Optional[str] = field(
        default=None, metadata={"help": "SentencePiece model that tokenises the prompt; default: DATA/spm.model "
                                        "(preprocess/binarize.py writes it), else whitespace words"})
    pretrained_llama: Optional[str] = field(
        default=None,
        metadata={"help": "initialise from a local Llama-style checkpoint: a directory with config.json, "
                          "*.safetensors and tokenizer.model (Hugging Face layout). The sizes come from "
                          "config.json; embedding rows are matched by SentencePiece piece, so binarize with "
                          "--spm-model DIR/tokenizer.model. Read once, when the model is first built"},
    )


@register_model("m3p_decoder_only")
class M3PDecoderOnlyModel(MultimodalModel, FairseqEncoderDecoderModel):
    """Decoder-only m3P behind fairseq's encoder-decoder interface (see the module docstring)."""

    reads_source_language = True  # its prompt names the source language: net_input[SOURCE_LANG]
    image_fusions = ["prefix"]

    @classmethod
    def add_args(cls, parser):
        gen_parser_from_dataclass(parser, M3PDecoderOnlyConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        m3p_decoder_only_architecture(args)
        llama_path = cls.pretrained_to_load(args, "pretrained_llama", PRETRAINED_LLAMA_LOADED)
        if llama_path:
            from .llama_checkpoint import apply_llama_sizes, read_llama_config
            record_in_config(args, apply_llama_sizes(read_llama_config(llama_path)))
        if args.fusion != "none":
            cls.resolve_image_feature_dim(args, task)
        dictionary = task.source_dictionary
        if task.target_dictionary is not dictionary:
            raise ValueError("the decoder-only model needs one dictionary for source and target")
        spm_model = args.prompt_spm_model or task.sentencepiece_model
        # may append the prompt's pieces to the dictionary
        prompt = InstructionPrompt(dictionary, cls.language_tags(task), args.instruction_prompt, spm_model)
        stack = CausalTransformer(
            len(dictionary), dictionary.pad(), args.decoder_embed_dim, args.decoder_ffn_embed_dim,
            args.decoder_layers, args.decoder_attention_heads, args.decoder_kv_heads or args.decoder_attention_heads,
            args.dropout, args.attention_dropout, args.rms_norm_eps, args.rope_theta,
            tie_embeddings=not args.untie_embeddings)
        model = cls(args, PrefixEncoder(args, dictionary, stack, prompt), PrefixDecoder(args, dictionary, stack))
        if llama_path:
            from .llama_checkpoint import load_llama_weights
            load_llama_weights(stack, dictionary, llama_path)
            cls.mark_pretrained_loaded(args, PRETRAINED_LLAMA_LOADED)
        return model

    def __init__(self, args, encoder: PrefixEncoder, decoder: PrefixDecoder):
        super().__init__(encoder, decoder)
        self.args = args
        self.init_multimodal(args, args.decoder_embed_dim)

    def pooled_text(self, src_tokens: Tensor, encoder_out) -> Tensor:
        """s^k from a text-only pass over [prompt][source] (PrefixEncoder.source_states)."""
        return self.encoder.source_states(encoder_out)

    def pooled_text_of(self, src_tokens: Tensor, src_lengths: Tensor, batch) -> Tensor:
        """s^k of other source tokens (MMA's masked sources), from the same text-only pass."""
        text_ids, is_source, _ = self.encoder.text_prefix(src_tokens, batch.get(SOURCE_LANG))
        return self.encoder.source_states({"text_ids": [text_ids], "is_source": [is_source]})


@register_model_architecture("m3p_decoder_only", "m3p_decoder_only")
def m3p_decoder_only_architecture(args):
    set_option_defaults(args, M3PDecoderOnlyConfig)
    set_default(args, "decoder_embed_dim", 512)
    set_default(args, "decoder_ffn_embed_dim", 1376)
    set_default(args, "decoder_layers", 8)
    set_default(args, "decoder_attention_heads", 8)


@register_model_architecture("m3p_decoder_only", "m3p_decoder_only_tiny")
def m3p_decoder_only_tiny(args):
    """For tests and the quickstart; about the parameter count of m3p_transformer_tiny
    (6 causal layers vs its 3 + 3 encoder/decoder layers)."""
    set_default(args, "decoder_embed_dim", 128)
    set_default(args, "decoder_ffn_embed_dim", 256)
    set_default(args, "decoder_layers", 6)
    set_default(args, "decoder_attention_heads", 4)
    m3p_decoder_only_architecture(args)


@register_model_architecture("m3p_decoder_only", "m3p_decoder_only_base")
def m3p_decoder_only_base(args):
    """24 layers, 768 wide, SwiGLU 2048: 170M parameters in the layers, vs 198M in
    m3p_transformer_base's 12 + 12."""
    set_default(args, "decoder_embed_dim", 768)
    set_default(args, "decoder_ffn_embed_dim", 2048)
    set_default(args, "decoder_layers", 24)
    set_default(args, "decoder_attention_heads", 12)
    m3p_decoder_only_architecture(args)
