"""``--arch m3p_captioning_tiny/_base``: M3P's generation encoder-decoder as a captioner (paper
Sec. 3.2, IC fine-tuned): the encoder reads an image's regions alone (FC(feature) + FC(5-D box),
as in pre-training), the decoder writes the caption with the language embedding of its language.

Its parameters are named as the pre-training model's, under the side that owns them, so a
pre-training checkpoint initialises it by name (``fairseq-train --finetune-from-model
PRETRAINING.pt``; :meth:`M3PCaptioningModel.upgrade_state_dict_named` recognises such a state):

* ``embeddings.*`` (pieces, positions, languages, region and box projections) -> ``encoder.embeddings.*``
  and ``decoder.embeddings.*`` (one module, shared by both sides, as in pre-training);
* ``generation_encoder.*`` -> ``encoder.generation_encoder.*``;
* ``generation_decoder.*``, ``output_bias`` -> ``decoder.generation_decoder.*``, ``decoder.output_bias``.

Not carried over: the understanding encoder and every pre-training head (masked LM transform,
h(v), g(v), VLM). A text-only pre-training model (no image stream) leaves the region and box
projections fresh. Sizes come from ``--arch`` and the options: ``m3p_captioning_tiny`` has
``m3p_pretraining_tiny``'s, ``_base`` the paper's; a mismatch with the checkpoint is refused,
naming the parameters.

fairseq's ``SequenceGenerator`` drives it (fairseq-generate): the decoder is not incremental, it
re-reads the prefix at every step (captions are short).
"""

import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.models import (
    FairseqDecoder,
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    register_model,
    register_model_architecture,
)
from torch import Tensor, nn

from ..data.batch_keys import REGION_SPATIAL, SOURCE_LANG
from .m3p_pretraining_model import (
    M3PEmbeddings,
    M3PPretrainingModelConfig,
    _encoder,
    m3p_pretraining_base,
    m3p_pretraining_tiny,
)
from .multimodal_model import MultimodalModel, record_in_config, set_option_defaults

logger = logging.getLogger(__name__)
ENCODER_SIDE = ("embeddings.", "generation_encoder.")
DECODER_SIDE = ("embeddings.", "generation_decoder.", "output_bias")
NOT_CARRIED = ("understanding.", "lm_transform.", "region_regression.", "region_classifier.", "vlm_head.")


class CaptionEncoder(FairseqEncoder):
    """Regions (``src_tokens`` [B, R, D], fairseq's slot for a non-text source) + their 5-D boxes."""

    def __init__(self, dictionary, embeddings: M3PEmbeddings, args):
        super().__init__(dictionary)
        self.embeddings = embeddings
        self.generation_encoder = _encoder(args, args.generation_layers)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None, **batch):
        if src_tokens.dim() != 3 or not src_tokens.is_floating_point():
            raise ValueError(f"m3p_captioning reads region features [B, R, D] as src_tokens, got a "
                             f"{src_tokens.dtype} tensor of shape {tuple(src_tokens.shape)}")
        if SOURCE_LANG not in batch:
            raise ValueError(f"the batch has no {SOURCE_LANG}: the caption language's tag (the task adds it)")
        regions = self.embeddings.regions(src_tokens, batch.get(REGION_SPATIAL))
        padding = torch.zeros(regions.shape[:2], dtype=torch.bool, device=regions.device)
        memory = self.generation_encoder(regions, src_key_padding_mask=padding)
        return {"encoder_out": [memory], "encoder_padding_mask": [padding], SOURCE_LANG: [batch[SOURCE_LANG]]}

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        return {key: [value.index_select(0, new_order) for value in values] for key, values in encoder_out.items()}

    def max_positions(self):
        return int(1e6)  # any number of regions


class CaptionDecoder(FairseqDecoder):
    """The caption's tokens + positions + the language embedding; output tied to the pieces."""

    def __init__(self, dictionary, embeddings: M3PEmbeddings, args):
        super().__init__(dictionary)
        self.embeddings, self.padding_idx = embeddings, dictionary.pad()
        layer = nn.TransformerDecoderLayer(args.embed_dim, args.attention_heads, args.ffn_embed_dim, args.dropout,
                                           activation="gelu", batch_first=True)
        self.generation_decoder = nn.TransformerDecoder(layer, args.generation_layers)
        self.output_bias = nn.Parameter(torch.zeros(len(dictionary)))

    def forward(self, prev_output_tokens: Tensor, encoder_out: Dict[str, List[Tensor]], features_only=False,
                **unused):
        length = prev_output_tokens.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=prev_output_tokens.device).triu(1)
        text = self.embeddings.text(prev_output_tokens, encoder_out[SOURCE_LANG][0])
        states = self.generation_decoder(text, encoder_out["encoder_out"][0], tgt_mask=causal,
                                         tgt_key_padding_mask=prev_output_tokens.eq(self.padding_idx),
                                         memory_key_padding_mask=encoder_out["encoder_padding_mask"][0])
        if features_only:
            return states, {"attn": [None]}
        return self.output_layer(states), {"attn": [None]}

    def output_layer(self, features: Tensor) -> Tensor:
        return F.linear(features, self.embeddings.tokens.weight, self.output_bias)

    def max_positions(self):
        return self.embeddings.positions.num_embeddings


def carried_state(pretraining: Dict[str, Tensor], own: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The captioning model's full state from a pre-training model's (see the module's list);
    what pre-training lacks keeps ``own``'s value. Shape mismatches raise, naming them."""
    state, unknown = dict(own), []
    for name, value in pretraining.items():
        targets = [side + name for side, prefixes in (("encoder.", ENCODER_SIDE), ("decoder.", DECODER_SIDE))
                   if name.startswith(prefixes)]
        if not targets and not name.startswith(NOT_CARRIED):
            unknown.append(name)
        for target in targets:
            if target not in own:
                unknown.append(name)
            elif own[target].shape != value.shape:
                raise ValueError(f"{name} is {tuple(value.shape)} in the pre-training checkpoint but {target} is "
                                 f"{tuple(own[target].shape)} here: the captioning --arch and options must have the "
                                 "pre-training model's sizes, dictionary and image-feature width")
            else:
                state[target] = value
    if unknown:
        raise ValueError(f"pre-training parameters with no place in the captioning model: {sorted(unknown)[:5]}")
    fresh = sorted(k for k in own if state[k] is own[k])
    logger.info("initialised from a pre-training model: %d tensors carried over, fresh: %s",
                len(own) - len(fresh), fresh or "none")
    return state


@register_model("m3p_captioning", dataclass=M3PPretrainingModelConfig)
class M3PCaptioningModel(MultimodalModel, FairseqEncoderDecoderModel):
    def __init__(self, args, encoder: CaptionEncoder, decoder: CaptionDecoder):
        super().__init__(encoder, decoder)
        self.args = args
        self.num_updates = 0
        self.contrastive_head = None  # no MMCL: the source is the image alone

    @classmethod
    def build_model(cls, args, task):
        set_option_defaults(args, M3PPretrainingModelConfig)
        m3p_pretraining_base(args)  # fills only the sizes --arch and the command line left unset
        if args.image_feature_dim is None:
            # the data's, recorded so a checkpoint rebuilds without it
            record_in_config(args, {"image_feature_dim": task.image_feature_dim})
        dictionary = task.target_dictionary
        embeddings = M3PEmbeddings(len(dictionary), dictionary.pad(), cls.language_tags(task), args)
        return cls(args, CaptionEncoder(dictionary, embeddings, args), CaptionDecoder(dictionary, embeddings, args))

    @property
    def image_feature_dim(self) -> Optional[int]:
        return self.args.image_feature_dim

    def max_positions(self):
        return self.decoder.max_positions()

    def upgrade_state_dict_named(self, state_dict, name):
        """A pre-training model's state (fairseq-train --finetune-from-model) is mapped onto this
        model's names; this model's own checkpoints pass unchanged."""
        if any(key.startswith(name + "generation_encoder.") for key in state_dict):
            pretraining = {key[len(name):]: state_dict.pop(key) for key in list(state_dict) if key.startswith(name)}
            state_dict.update({name + key: value for key, value in
                               carried_state(pretraining, self.state_dict()).items()})
        super().upgrade_state_dict_named(state_dict, name)


@register_model_architecture("m3p_captioning", "m3p_captioning_tiny")
def m3p_captioning_tiny(args):
    """m3p_pretraining_tiny's sizes (its checkpoints initialise it)."""
    m3p_pretraining_tiny(args)


@register_model_architecture("m3p_captioning", "m3p_captioning_base")
def m3p_captioning_base(args):
    """m3p_pretraining_base's sizes (Sec. 5.1)."""
    m3p_pretraining_base(args)
