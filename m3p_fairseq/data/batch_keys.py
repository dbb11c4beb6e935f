"""The batch contract: every key a multimodal batch or a model output may carry, defined once,
and what the task may ask of a model it built (:class:`MultimodalModelInterface`).

The collater writes these into ``batch["net_input"]``; models accept the whole ``net_input``
(``**net_input``) and ignore the keys they do not use; the criterion and evaluation read model
outputs by the ``MMCL_*`` names. Adding an input means adding a name here and reading it where
it is used, nothing else.
"""

from typing import Optional

# --- batch["net_input"] (besides fairseq's src_tokens, src_lengths, prev_output_tokens) ---
IMAGE_PATCHES = "image_patches"  # (B, P, D) float: patch features of each sentence's image
IMAGE_GLOBAL = "image_global"  # (B, D) float: the image's global vector
IMAGE_USABLE = "image_usable"  # (B,) bool: False where the image is missing or failed to decode
IMAGE_NEGATIVE_GLOBAL = "image_negative_global"  # (B, D) float: MMA's augmented view, an MMCL negative
SOURCE_LANG = "source_lang"  # (B,) long: dictionary index of the source-language tag
# (B,) long, optional: each sentence's MDropNet mode (models/mdropnet.py), fixed by a caller
# (tests, analysis) instead of drawn in training
MODALITIES = "modalities"

# --- keyword of a model's forward (not in the batch): ask for the MMCL outputs below ---
CONTRASTIVE = "contrastive"

# --- extras of a model's forward output (the dict beside the decoder's output) ---
IMAGE_GLOBAL_STATE = "image_global_state"
MMCL_TEXT = "mmcl_text"  # (B, E) normalised text vectors
MMCL_IMAGE = "mmcl_image"  # (B, E) normalised image vectors
MMCL_IMAGE_NEGATIVES = "mmcl_image_negatives"  # (B, E) normalised negative image vectors
MMCL_USABLE = "mmcl_usable"  # (B,) bool: rows that take part in MMCL
MMCL_LOGIT_SCALE = "mmcl_logit_scale"  # scalar tensor: 1 / temperature

IMAGE_INPUTS = (IMAGE_PATCHES, IMAGE_GLOBAL, IMAGE_USABLE, IMAGE_NEGATIVE_GLOBAL)


class MultimodalModelInterface:
    """What a task may ask of a model it built, beside fairseq's model API.

    Declared here, at the bottom layer, because the task (which sits below the models) reads
    it; ``models.multimodal_model.MultimodalModel`` implements it. A task checks
    ``isinstance(model, MultimodalModelInterface)``; any other model (e.g. fairseq's plain
    transformer) is text-only, reads no source language and counts no updates.
    """

    #: True when forward() needs ``net_input[SOURCE_LANG]`` (the decoder-only model's prompt)
    reads_source_language: bool = False
    #: updates trained so far (set by the trainer, also right after a resume)
    num_updates: int = 0

    @property
    def image_feature_dim(self) -> Optional[int]:
        """Dimension of the image features the model reads; None for a text-only model."""
        raise NotImplementedError

# --- M3P pre-training (tasks/m3p_pretraining.py, models/m3p_pretraining_model.py) ---
PRETRAINING_OBJECTIVE = "objective"  # net_input, str: the one objective of the batch (m3p_pretraining_schedule)
REGION_FEATURES = "region_features"  # net_input, (B, R, D) float: region features as noised for the objective
REGION_SPATIAL = "region_spatial"  # net_input, (B, R, 5) float: each region's 5-D box (data/m3p_regions.py)
# beside net_input in the sample: the targets of MRM and VLM (token targets are fairseq's "target")
MRM_TARGET = "mrm_target"  # (B, R, D) float: the un-masked region features
MRM_MASKED = "mrm_masked"  # (B, R) bool: the regions MRM masked
MRM_CLASSES = "mrm_classes"  # (B, R) long: each region's object class, -1 for none (only when classes exist)
VLM_LABELS = "vlm_labels"  # (B,) long: 1 = the image and the text match
# the pre-training model's outputs (a dict)
TOKEN_LOGITS = "token_logits"  # (B, T, V): masked-LM logits (understanding) or decoder logits (generation)
REGION_PREDICTION = "region_prediction"  # (B, R, D): h(v), regressed to the region features
REGION_CLASS_LOGITS = "region_class_logits"  # (B, R, K): g(v), only when the model has region classes
VLM_LOGITS = "vlm_logits"  # (B, 2): s(w, v) from the first token
