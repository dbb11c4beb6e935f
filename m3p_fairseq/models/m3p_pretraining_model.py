"""The M3P pre-training model (paper Sec. 3, Fig. 1): one set of input embeddings, a BERT-style
encoder for the understanding objectives and an encoder-decoder for the generation ones.

* Text stream: piece + position + language embedding (the language of ``SOURCE_LANG``).
* Image stream: FC(region feature) + FC(5-D box), summed (data/m3p_regions.py gives the boxes).
* Understanding (xMLM, MMLM, MRM, VLM): ``understanding`` encoder over the text, or the text
  followed by the regions; heads: masked-LM (tied to the piece embeddings), h(v) regressing the
  region feature, g(v) the region's class (when the data has classes), VLM from the first token.
* Generation (xDAE, IC, DIC): ``generation_encoder`` reads the text or the regions alone (Fig. 1
  bottom: never both), ``generation_decoder`` writes the text with the same language embedding
  (Sec. 5.1: "the same language ID into encoder and decoder"); output tied to the piece embeddings.

The paper's sizes are 768 wide, 12 layers (``m3p_pretraining_base``); ``m3p_pretraining_tiny``
is for tests. Layers are torch's ``nn.TransformerEncoderLayer``/``DecoderLayer`` (post-norm, GELU,
BERT's layout). Mapping these weights onto ``multimodal_translation``'s models is not built yet.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from torch import Tensor, nn

from ..data.batch_keys import (
    REGION_CLASS_LOGITS,
    REGION_PREDICTION,
    TOKEN_LOGITS,
    VLM_LOGITS,
)
from ..data.m3p_pretraining_schedule import OBJECTIVES
from ..data.m3p_regions import SPATIAL_DIM
from .multimodal_model import MultimodalModel, MultimodalModelConfig, record_in_config, set_option_defaults


@dataclass
class M3PPretrainingModelConfig(MultimodalModelConfig):
    embed_dim: Optional[int] = field(default=None, metadata={"help": "model width"})
    ffn_embed_dim: Optional[int] = field(default=None, metadata={"help": "feed-forward width"})
    attention_heads: Optional[int] = field(default=None, metadata={"help": "attention heads"})
    understanding_layers: Optional[int] = field(default=None, metadata={"help": "layers of the BERT-style encoder"})
    generation_layers: Optional[int] = field(default=None, metadata={"help": "layers of the generation encoder "
                                                                               "and of its decoder"})
    dropout: Optional[float] = field(default=None, metadata={"help": "dropout"})
    max_text_positions: Optional[int] = field(default=None, metadata={"help": "learned text positions"})
    num_region_classes: Optional[int] = field(default=None, metadata={"help": "object classes K of MRM's "
                                                                               "cross-entropy; default: the data's"})


class M3PEmbeddings(nn.Module):
    """The two input streams in the model width."""

    def __init__(self, num_tokens: int, padding_idx: int, lang_tags: Dict[int, str], args):
        super().__init__()
        width = args.embed_dim
        self.tokens = nn.Embedding(num_tokens, width, padding_idx=padding_idx)
        nn.init.normal_(self.tokens.weight, std=width ** -0.5)
        self.positions = nn.Embedding(args.max_text_positions, width)
        self.languages = nn.Embedding(len(lang_tags), width)
        # dictionary index of a language tag -> row of the language embedding (-1: not a tag)
        row_of_tag = torch.full((num_tokens,), -1, dtype=torch.long)
        row_of_tag[list(lang_tags)] = torch.arange(len(lang_tags))
        self.register_buffer("language_row", row_of_tag, persistent=False)
        self.text_norm = nn.LayerNorm(width)
        self.has_images = bool(args.image_feature_dim)  # False: pre-trained on text alone (xMLM, xDAE)
        if self.has_images:
            self.region_projection = nn.Linear(args.image_feature_dim, width)
            self.box_projection = nn.Linear(SPATIAL_DIM, width)
            self.image_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(args.dropout)

    def language(self, source_lang: Tensor) -> Tensor:
        rows = self.language_row[source_lang]
        if (rows < 0).any():
            raise ValueError(f"source_lang holds {source_lang[rows < 0].tolist()}, not language tags of the dictionary")
        return self.languages(rows)

    def text(self, tokens: Tensor, source_lang: Tensor) -> Tensor:
        if tokens.size(1) > self.positions.num_embeddings:
            raise ValueError(f"text of {tokens.size(1)} tokens, longer than --max-text-positions "
                             f"{self.positions.num_embeddings}")
        positions = torch.arange(tokens.size(1), device=tokens.device)
        embedded = self.tokens(tokens) + self.positions(positions)[None] + self.language(source_lang)[:, None]
        return self.dropout(self.text_norm(embedded))

    def regions(self, features: Optional[Tensor], spatial: Optional[Tensor]) -> Tensor:
        if not self.has_images:
            raise ValueError("this m3p_pretraining model was built without an image stream (its data had no "
                             "image features): only the text objectives xmlm and xdae can train it")
        if features is None or spatial is None:
            raise ValueError("an image objective's batch has no region features")
        return self.dropout(self.image_norm(self.region_projection(features) + self.box_projection(spatial)))


def _encoder(args, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(args.embed_dim, args.attention_heads, args.ffn_embed_dim, args.dropout,
                                       activation="gelu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@register_model("m3p_pretraining", dataclass=M3PPretrainingModelConfig)
class M3PPretrainingModel(MultimodalModel, BaseFairseqModel):
    def __init__(self, args, dictionary, lang_tags: Dict[int, str]):
        super().__init__()
        self.args, self.padding_idx = args, dictionary.pad()
        width = args.embed_dim
        self.embeddings = M3PEmbeddings(len(dictionary), dictionary.pad(), lang_tags, args)
        self.understanding = _encoder(args, args.understanding_layers)
        self.generation_encoder = _encoder(args, args.generation_layers)
        decoder_layer = nn.TransformerDecoderLayer(width, args.attention_heads, args.ffn_embed_dim, args.dropout,
                                                   activation="gelu", batch_first=True)
        self.generation_decoder = nn.TransformerDecoder(decoder_layer, args.generation_layers)
        self.lm_transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.output_bias = nn.Parameter(torch.zeros(len(dictionary)))
        images = bool(args.image_feature_dim)
        self.region_regression = nn.Linear(width, args.image_feature_dim) if images else None  # h(v) of MRM
        self.region_classifier = nn.Linear(width, args.num_region_classes) if images and args.num_region_classes else None
        self.vlm_head = nn.Linear(width, 2)
        self.num_updates = 0
        self.contrastive_head = None  # no MMCL in pre-training (supports_mmcl is False)

    @classmethod
    def build_model(cls, args, task):
        set_option_defaults(args, M3PPretrainingModelConfig)
        m3p_pretraining_base(args)  # fills only the sizes --arch and the command line left unset
        if args.image_feature_dim is None and task.image_feature_dim is not None:
            # the data's, recorded so a checkpoint rebuilds without it; no features: a text-only model
            record_in_config(args, {"image_feature_dim": task.image_feature_dim})
        if args.num_region_classes is None:
            record_in_config(args, {"num_region_classes": task.num_region_classes})
        return cls(args, task.source_dictionary, cls.language_tags(task))

    @property
    def image_feature_dim(self) -> Optional[int]:
        return self.args.image_feature_dim

    def max_positions(self):
        return self.args.max_text_positions

    # ---- forward ----------------------------------------------------------------------------
    def token_logits(self, states: Tensor) -> Tensor:
        return F.linear(states, self.embeddings.tokens.weight, self.output_bias)

    def forward(self, objective: str, source_lang: Tensor, src_tokens: Optional[Tensor] = None,
                prev_output_tokens: Optional[Tensor] = None, region_features: Optional[Tensor] = None,
                region_spatial: Optional[Tensor] = None, **unused) -> Dict[str, Tensor]:
        """The outputs the objective's loss reads (data/batch_keys.py names)."""
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown pre-training objective {objective!r} (expected one of {OBJECTIVES})")
        if objective in ("xdae", "ic", "dic"):
            return self._generate(objective, source_lang, src_tokens, prev_output_tokens, region_features,
                                  region_spatial)
        return self._understand(objective, source_lang, src_tokens, region_features, region_spatial)

    def _understand(self, objective, source_lang, src_tokens, region_features, region_spatial):
        inputs, padding = [self.embeddings.text(src_tokens, source_lang)], [src_tokens.eq(self.padding_idx)]
        if objective != "xmlm":
            regions = self.embeddings.regions(region_features, region_spatial)
            inputs.append(regions)
            padding.append(regions.new_zeros(regions.shape[:2], dtype=torch.bool))
        states = self.understanding(torch.cat(inputs, dim=1), src_key_padding_mask=torch.cat(padding, dim=1))
        text_states, region_states = states[:, :src_tokens.size(1)], states[:, src_tokens.size(1):]
        if objective in ("xmlm", "mmlm"):
            return {TOKEN_LOGITS: self.token_logits(self.lm_transform(text_states))}
        if objective == "vlm":
            return {VLM_LOGITS: self.vlm_head(states[:, 0])}
        outputs = {REGION_PREDICTION: self.region_regression(region_states)}  # mrm
        if self.region_classifier is not None:
            outputs[REGION_CLASS_LOGITS] = self.region_classifier(region_states)
        return outputs

    def _generate(self, objective, source_lang, src_tokens, prev_output_tokens, region_features, region_spatial):
        if objective == "xdae":
            source, padding = self.embeddings.text(src_tokens, source_lang), src_tokens.eq(self.padding_idx)
        else:
            source = self.embeddings.regions(region_features, region_spatial)
            padding = source.new_zeros(source.shape[:2], dtype=torch.bool)
        memory = self.generation_encoder(source, src_key_padding_mask=padding)
        length = prev_output_tokens.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=memory.device).triu(1)  # True: may not attend
        states = self.generation_decoder(self.embeddings.text(prev_output_tokens, source_lang), memory,
                                         tgt_mask=causal, tgt_key_padding_mask=prev_output_tokens.eq(self.padding_idx),
                                         memory_key_padding_mask=padding)
        return {TOKEN_LOGITS: self.token_logits(states)}


def _architecture(args, embed_dim, ffn, heads, understanding_layers, generation_layers, dropout, positions):
    for name, value in (("embed_dim", embed_dim), ("ffn_embed_dim", ffn), ("attention_heads", heads),
                        ("understanding_layers", understanding_layers), ("generation_layers", generation_layers),
                        ("dropout", dropout), ("max_text_positions", positions)):
        if getattr(args, name, None) is None:
            setattr(args, name, value)


@register_model_architecture("m3p_pretraining", "m3p_pretraining_tiny")
def m3p_pretraining_tiny(args):
    _architecture(args, 32, 64, 2, 2, 1, 0.1, 128)


@register_model_architecture("m3p_pretraining", "m3p_pretraining_base")
def m3p_pretraining_base(args):
    """Sec. 5.1: 768 wide, 12 heads, GELU, dropout 0.1, 128 positions, 12 layers."""
    _architecture(args, 768, 3072, 12, 12, 12, 0.1, 128)
