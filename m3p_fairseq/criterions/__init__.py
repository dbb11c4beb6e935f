from . import (
    m3p_loss,  # noqa: F401  (registers --criterion m3p_loss)
    m3p_pretraining_loss,  # noqa: F401  (registers --criterion m3p_pretraining)
    mla_losses,  # noqa: F401  (registers --criterion mla_nlt, mla_le)
)
