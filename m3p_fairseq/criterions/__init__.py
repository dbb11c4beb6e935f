from . import m3p_loss  # noqa: F401  (registers --criterion m3p_loss)
from . import modality_loss  # noqa: F401  (registers --criterion vlp_mmt_loss)
from . import vlp_pretraining_loss  # noqa: F401  (registers --criterion vlp_pretraining_loss)
