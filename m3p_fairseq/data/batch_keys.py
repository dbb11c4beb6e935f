"""The batch contract: every key a multimodal batch or a model output may carry, defined once,
and what the task may ask of a model it built (:class:`MultimodalModelInterface`).

The collater writes these into ``batch["net_input"]``; models accept the whole ``net_input``
(``**net_input``) and ignore the keys they do not use; the criterion and evaluation read model
outputs by the ``MMCL_*`` names. Adding an input means adding a name here and reading it where
it is used, nothing else.
"""

from typing import Optional

# --- batch["net_input"] (besides fairseq's src_tokens, src_lengths, prev_output_tokens) ---
IMAGE_PATCHES = "image_patches"  # (B, P, D) float: patch features of each sentence's image (see IMAGE_INDEX)
IMAGE_GLOBAL = "image_global"  # (B, D) float: the image's global vector
IMAGE_USABLE = "image_usable"  # (B,) bool: False where the image is missing or failed to decode
IMAGE_NEGATIVE_GLOBAL = "image_negative_global"  # (B, D) float: MMA's augmented view, an MMCL negative
# MMA's augmented pair {T(x_k), I(z_k)} of each training sentence, for MMCL (paper Sec. 2.5):
MMA_SRC_TOKENS = "mma_src_tokens"  # (B, S) long: the masked source T(x_k), padded like src_tokens
MMA_SRC_LENGTHS = "mma_src_lengths"  # (B,) long
MMA_IMAGE_GLOBAL = "mma_image_global"  # (B, D) float: global vector of the augmented, masked image I(z_k)
# (B,) long: the image's identity, its row in the split's feature file. Sentences of one image
# (its translations, one per direction) are MMCL positives of that image, never negatives
IMAGE_ROW = "image_row"
# (B,) long, optional: row b's image is IMAGE_PATCHES[IMAGE_INDEX[b]] / IMAGE_GLOBAL[IMAGE_INDEX[b]];
# with it those two hold each distinct image of the batch once ([U, P, D], [U, D], U <= B), so
# the model projects and encodes every distinct image once. Without it they are per row.
IMAGE_INDEX = "image_index"
SOURCE_LANG = "source_lang"  # (B,) long: dictionary index of the source-language tag
# (B,) long, optional: each sentence's MDropNet mode (models/mdropnet.py), fixed by a caller
# (tests, analysis) instead of drawn in training
MODALITIES = "modalities"
# (B, T) long, optional: each image's object tags as text tokens, right-padded (Eq. 1's t;
# data/object_tags.py); read by the VLP encoder (models/vlp_encoder.py)
OBJECT_TAGS = "object_tags"

# --- keyword of a model's forward (not in the batch): ask for the MMCL outputs below ---
CONTRASTIVE = "contrastive"
# --- keywords of the VLP-MMT model's forward: ask for the modality-loss outputs (Eqs. 2-5) ---
MODALITY_LAYERS = "modality_layers"  # decoder layers (0-based) whose h_x, h_v to return
MODALITY_TARGET = "modality_target"  # (B, T) target tokens y_j: also return the learned lambda_j

# --- VLP pre-training batch (tasks/vlp_pretraining.py), besides net_input and "target" ---
PAIRED_IMAGE_LABEL = "paired_image_label"  # (B,) long: 1 = the caption's own image, 0 = a random one
MASKED_TOKENS = "masked_tokens"  # keyword of the VLP model's forward: (B, L) bool, predict only these
PAIRED_IMAGE_LOGITS = "paired_image_logits"  # VLP model output: (B, 2) own-vs-random image logits

# --- extras of a model's forward output (the dict beside the decoder's output) ---
IMAGE_GLOBAL_STATE = "image_global_state"
MMCL_TEXT = "mmcl_text"  # (B, E) normalised text vectors
MMCL_IMAGE = "mmcl_image"  # (B, E) normalised image vectors
MMCL_IMAGE_NEGATIVES = "mmcl_image_negatives"  # (B, E) normalised negative image vectors
# MMA's augmented pairs, extra rows of the InfoNCE (A <= B of them); row a augments batch row
# MMCL_AUGMENTED_ROW[a], so it shows that row's image (its image identity)
MMCL_AUGMENTED_TEXT = "mmcl_augmented_text"  # (A, E) normalised
MMCL_AUGMENTED_IMAGE = "mmcl_augmented_image"  # (A, E) normalised
MMCL_AUGMENTED_ROW = "mmcl_augmented_row"  # (A,) long
MMCL_USABLE = "mmcl_usable"  # (B,) bool: rows that take part in MMCL
MMCL_LOGIT_SCALE = "mmcl_logit_scale"  # scalar tensor: 1 / temperature
MODALITY_TEXT = "modality_text"  # list per selected layer of (B, T, C): h_x of Eq. 2
MODALITY_VISUAL = "modality_visual"  # list per selected layer of (B, T, C): h_v of Eq. 2
MODALITY_VALID = "modality_valid"  # (B,) bool: sentences with text and a usable image
MODALITY_LAMBDA = "modality_lambda"  # list per selected layer of (B, T): learned lambda_j (Eq. 5)
VISUAL_POSITIONS = "visual_positions"  # encoder output: (B, S) bool, True at image positions

IMAGE_INPUTS = (IMAGE_PATCHES, IMAGE_GLOBAL, IMAGE_USABLE, IMAGE_NEGATIVE_GLOBAL, IMAGE_ROW, IMAGE_INDEX,
                MMA_IMAGE_GLOBAL)


class MultimodalModelInterface:
    """What a task may ask of a model it built, beside fairseq's model API.

    Declared here, at the bottom layer, because the task (which sits below the models) reads
    it; ``models.multimodal_model.MultimodalModel`` implements it. A task checks
    ``isinstance(model, MultimodalModelInterface)``; any other model (e.g. fairseq's plain
    transformer) is text-only, reads no source language and counts no updates.
    """

    #: True when forward() needs ``net_input[SOURCE_LANG]`` (the decoder-only model's prompt)
    reads_source_language: bool = False
    #: True when forward() reads ``net_input[OBJECT_TAGS]`` (a VLP-MMT model trained with tags)
    reads_object_tags: bool = False
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
