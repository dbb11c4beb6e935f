from . import (
    m3p_loss,  # noqa: F401  (registers --criterion m3p_loss)
    mla_losses,  # noqa: F401  (registers --criterion mla_nlt, mla_le)
)
