from . import (
    m3p_captioning,  # noqa: F401  (registers --task m3p_captioning)
    m3p_pretraining,  # noqa: F401  (registers --task m3p_pretraining)
    m3p_retrieval,  # noqa: F401  (registers --task m3p_retrieval)
    mla_acquisition,  # noqa: F401  (registers --task mla_acquisition)
)
from .multimodal_translation import MultimodalTranslationConfig, MultimodalTranslationTask  # noqa: F401
from .vlp_pretraining import VLPPretrainingTask  # noqa: F401
