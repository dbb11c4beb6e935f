"""The base of every multimodal model of the plugin: what the encoder-decoder, the decoder-only
model and the systems still to come share, so that each of them only says how it reads text.

A model lists :class:`MultimodalModel` before fairseq's model class (whose ``forward`` it
replaces with one that takes the whole batch), its encoder lists
:class:`MultimodalEncoderMixin` before ``FairseqEncoder``::

    class M3PTransformerModel(MultimodalModel, TransformerModel): ...
    class M3PEncoder(MultimodalEncoderMixin, FairseqEncoder): ...

and its options dataclass extends :class:`MultimodalModelConfig`. The base owns

* the image side: the feature dimension (``--image-feature-dim``, else the task's data; recorded
  in the model's config, so a checkpoint rebuilds without the data) and the encoder's
  :class:`ImageFeatureEncoder` with its input checks;
* MDropNet (Sec. 2.7): each sentence's mode, drawn in training (:class:`MDropNet`);
* MMCL (Sec. 2.4): the contrastive head, built when the model reads images, and
  :meth:`MultimodalModel.mmcl_outputs`, computed inside ``forward``;
* update counting (``num_updates``) and the marks that say pretrained weights were copied in.

The task and the criterion read explicit capabilities, never probe attributes:
``image_feature_dim``, ``reads_source_language``, ``num_updates`` (the task's
:class:`MultimodalModelInterface`) and ``supports_mmcl`` (the criterion).
"""

from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
from fairseq.dataclass import FairseqDataclass
from omegaconf import OmegaConf, open_dict
from torch import Tensor

from ..data.batch_keys import (
    IMAGE_GLOBAL_STATE,
    IMAGE_INDEX,
    IMAGE_NEGATIVE_GLOBAL,
    IMAGE_USABLE,
    MMA_IMAGE_GLOBAL,
    MMA_SRC_LENGTHS,
    MMA_SRC_TOKENS,
    MMCL_IMAGE,
    MultimodalModelInterface,
)
from .contrastive_head import ContrastiveHead
from .fusion import to_rows
from .image_encoder import ImageFeatureEncoder
from .mdropnet import MDropNet


@dataclass
class MultimodalModelConfig(FairseqDataclass):
    """The options every multimodal model has; a model's own dataclass extends it."""

    image_feature_dim: Optional[int] = field(
        default=None, metadata={"help": "dimension D of the stored image features; default: read from the data"},
    )
    max_image_patches: int = field(
        default=256, metadata={"help": "learned patch positions: the most patches an image may have"},
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
    mdropnet_warmup_updates: int = field(
        default=0,
        metadata={"help": "MDropNet: raise both shares linearly from 0 over this many updates, so the "
                          "fused path (Eq. 11) is learnt first; 0 (the paper) uses them from the start"},
    )
    mmcl_projection_dim: Optional[int] = field(
        default=None, metadata={"help": "dimension of the joint text-image space of MMCL; default: the model width"},
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


def set_default(args, name: str, value) -> None:
    """An architecture's default: kept only where the command line left the option unset."""
    if getattr(args, name, None) is None:
        setattr(args, name, value)


def set_option_defaults(args, config: Type[FairseqDataclass]) -> None:
    for option in fields(config):
        set_default(args, option.name, option.default)


def record_in_config(args, values: Dict[str, object]) -> None:
    """Writes into the model's own config, which fairseq saves in every checkpoint: fairseq
    rebuilds a trained model from that config before loading its weights (fairseq-generate,
    resuming) and does not tell build_model so, so what build_model resolved from files (the
    feature dimension, "pretrained weights already copied") must travel with the config
    (cf. wav2vec2's w2v_args)."""
    with open_dict(args) if OmegaConf.is_config(args) else ExitStack():
        for name, value in values.items():
            setattr(args, name, value)


class MultimodalEncoderMixin:
    """The image side of an encoder: ``image_encoder`` (None for a text-only model), the
    ``--fusion`` name for messages, and MDropNet. Call :meth:`init_image_side` in ``__init__``
    where the image encoder should be registered (the parameter order is the checkpoint's)."""

    image_encoder: Optional[ImageFeatureEncoder]

    def init_image_side(self, args, image_encoder: Optional[ImageFeatureEncoder]) -> None:
        self.fusion_name = args.fusion
        self.mdropnet = MDropNet(args.mdropnet_text_only, args.mdropnet_image_only,
                                 getattr(args, "mdropnet_warmup_updates", 0))
        self.image_encoder = image_encoder

    def encode_images(self, image_patches: Optional[Tensor], image_global: Optional[Tensor],
                      dtype, image_index: Optional[Tensor] = None,
                      patches_per_row: bool = True) -> Tuple[Tensor, Tensor]:
        """(patch states [P, B, C], global state [B, C]); a clear error when the batch has no images.
        With ``image_index`` [B] (batch_keys.IMAGE_INDEX) the features hold each distinct image
        once: they are projected and encoded once and the states gathered to their rows; with
        ``patches_per_row=False`` the patch states stay one per distinct image [P, U, C], for a
        caller that gathers them itself (the attention fusions project them once per image)."""
        if image_patches is None or image_global is None:
            raise ValueError(f"--fusion {self.fusion_name} needs image features, but the batch has none "
                             "(no image features for this split, or an input line without an image id)")
        patches, global_state = self.image_encoder(image_patches.to(dtype), image_global.to(dtype))
        if patches_per_row:
            patches = to_rows(patches, image_index, dim=1)
        return patches, to_rows(global_state, image_index, dim=0)

    def set_num_updates(self, num_updates):
        self.mdropnet.num_updates = num_updates  # for the warm-up of the MDropNet shares
        super().set_num_updates(num_updates)

    def modes(self, modalities: Optional[Tensor], batch_size: int, image_usable: Optional[Tensor],
              device) -> Optional[Tensor]:
        """Each sentence's MDropNet mode [B], or None when every sentence uses text and image."""
        return self.mdropnet.modes(modalities, batch_size, self.training, image_usable, device)


def first_rows(image_index: Tensor) -> Tensor:
    """[U]: the first batch row of each distinct image of IMAGE_INDEX [B] (values 0..U-1)."""
    rows = torch.arange(image_index.numel(), device=image_index.device)
    first = torch.full((int(image_index.max()) + 1,), image_index.numel(), device=image_index.device)
    return first.scatter_reduce(0, image_index, rows, reduce="amin")


class MultimodalModel(MultimodalModelInterface):
    """Mixin of the multimodal models (listed before fairseq's model class). A model calls
    :meth:`init_multimodal` at the end of ``__init__`` and implements :meth:`pooled_text`."""

    #: the --fusion values that read images, for error messages
    image_fusions: Sequence[str] = ()

    def init_multimodal(self, args, width: int) -> None:
        """The MMCL head (Sec. 2.4) of a model that reads images; ``width`` is its states' width."""
        self.num_updates = 0
        self.contrastive_head = None
        if self.encoder.image_encoder is not None:
            self.contrastive_head = ContrastiveHead(width, args.mmcl_projection_dim or width, args.mmcl_temperature,
                                                    args.mmcl_learn_temperature, args.mmcl_min_temperature)

    # ---- capabilities the task and the criterion read ----------------------------------------
    @property
    def image_feature_dim(self) -> Optional[int]:
        image_encoder = self.encoder.image_encoder
        return None if image_encoder is None else image_encoder.feature_dim

    @property
    def supports_mmcl(self) -> bool:
        """True when forward(..., contrastive=True) gives the MMCL outputs (the model reads images)."""
        return self.contrastive_head is not None

    def set_num_updates(self, num_updates):
        # The task's sampling warm-up reads it (also right after a resume, when the trainer sets it).
        self.num_updates = num_updates
        super().set_num_updates(num_updates)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor,
                contrastive: bool = False, return_all_hiddens: bool = True, features_only: bool = False,
                alignment_layer: Optional[int] = None, alignment_heads: Optional[int] = None, **batch):
        """``batch`` is the rest of ``net_input`` (data/batch_keys.py), which the encoder reads
        what it needs of and ignores otherwise. The decoder gets fairseq's decoder options (as
        TransformerModel.forward passes them); a decoder without a use for some ignores them.
        With ``contrastive=True`` the extra output also holds the MMCL_* entries
        (:meth:`mmcl_outputs`)."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
                                   **batch)
        logits, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                                     alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                                     src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)
        if contrastive:
            extra.update(self.mmcl_outputs(src_tokens, encoder_out, batch.get(IMAGE_NEGATIVE_GLOBAL),
                                           batch.get(IMAGE_USABLE), batch.get(IMAGE_INDEX)))
            if MMA_SRC_TOKENS in batch:
                extra.update(self.augmented_mmcl_outputs(batch))
        return logits, extra

    # ---- MMCL --------------------------------------------------------------------------------
    def pooled_text(self, src_tokens: Tensor, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
        """s^k [B, C]: each sentence's source text states, pooled over its tokens."""
        raise NotImplementedError

    def mmcl_outputs(self, src_tokens: Tensor, encoder_out: Dict[str, List[Tensor]],
                     image_negative_global: Optional[Tensor] = None,
                     image_usable: Optional[Tensor] = None,
                     image_index: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The MMCL_* entries of the forward's extra output (data/batch_keys.py) for the
        ``m3p_loss`` criterion; computing them inside forward keeps them under
        DistributedDataParallel's gradient synchronisation. With ``image_index`` (IMAGE_INDEX)
        each distinct image's vector is projected once."""
        if self.contrastive_head is None:
            raise ValueError(f"MMCL needs a model that reads images: train with --fusion "
                             f"{'|'.join(self.image_fusions)}, or set --mmcl-weight 0")
        image_state = encoder_out[IMAGE_GLOBAL_STATE][0]
        negatives = (None if image_negative_global is None else
                     self.encoder.image_encoder.embed_global(image_negative_global.to(image_state.dtype)))
        outputs = self.contrastive_head.outputs(self.pooled_text(src_tokens, encoder_out),
                                                image_state if image_index is None else
                                                image_state[first_rows(image_index)],
                                                negatives, image_usable)
        if image_index is not None:
            outputs[MMCL_IMAGE] = outputs[MMCL_IMAGE].index_select(0, image_index)
        return outputs

    def pooled_text_of(self, src_tokens: Tensor, src_lengths: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        """s^k [B, C] of other source tokens (MMA's masked sources): a text-only encoding, pooled
        as :meth:`pooled_text` pools."""
        raise NotImplementedError

    def augmented_mmcl_outputs(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """MMA's augmented pairs {T(x_k), I(z_k)} of the batch (data/multimodal_augmentation.py)
        as extra MMCL rows, one per batch row (ContrastiveHead.augmented_outputs)."""
        tokens = batch[MMA_SRC_TOKENS]
        text = self.pooled_text_of(tokens, batch[MMA_SRC_LENGTHS], batch)
        image = self.encoder.image_encoder.embed_global(batch[MMA_IMAGE_GLOBAL].to(text.dtype))
        return self.contrastive_head.augmented_outputs(text, image, torch.arange(tokens.size(0), device=tokens.device))

    # ---- building ----------------------------------------------------------------------------
    @staticmethod
    def resolve_image_feature_dim(args, task) -> None:
        """--image-feature-dim, else the dimension of the task's image features, recorded in args
        (the task raises, naming the files it looked for, when the data has none)."""
        if args.image_feature_dim is not None:
            return
        dim = task.require_image_feature_dim(args.fusion)
        record_in_config(args, {"image_feature_dim": dim})

    @staticmethod
    def language_tags(task) -> Dict[int, str]:
        """{dictionary index: language code} of the task's language tags, in dictionary order."""
        return dict(sorted((task.lang_tag_index(lang), lang) for lang in task.languages))

    @staticmethod
    def pretrained_to_load(args, option: str, mark: str) -> Optional[str]:
        """The path given by ``option`` while its weights are still to be copied in; None when
        none is given, or when ``mark`` in the config says they were (a rebuilt checkpoint)."""
        path = getattr(args, option, None)
        return None if not path or getattr(args, mark, False) else path

    @staticmethod
    def mark_pretrained_loaded(args, mark: str) -> None:
        record_in_config(args, {mark: True})
