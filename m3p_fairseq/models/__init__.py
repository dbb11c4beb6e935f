from . import (
    m3p_captioning_model,  # noqa: F401  (registers --arch m3p_captioning_*)
    m3p_pretraining_model,  # noqa: F401  (registers --arch m3p_pretraining_*)
    mla_model,  # noqa: F401  (registers --arch mla_acquisition)
)
from .m3p_decoder_only import M3PDecoderOnlyModel  # noqa: F401
from .m3p_transformer import M3PEncoder, M3PTransformerModel  # noqa: F401
from .vlp_mmt import VLPTranslationModel  # noqa: F401
from .vlp_pretraining_model import VLPPretrainingModel  # noqa: F401
