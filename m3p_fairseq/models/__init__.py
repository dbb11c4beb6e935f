from . import mla_model  # noqa: F401  (registers --arch mla_acquisition)
from .m3p_decoder_only import M3PDecoderOnlyModel  # noqa: F401
from .m3p_transformer import M3PEncoder, M3PTransformerModel  # noqa: F401
from .vlp_mmt import VLPTranslationModel  # noqa: F401
from .vlp_pretraining_model import VLPPretrainingModel  # noqa: F401
