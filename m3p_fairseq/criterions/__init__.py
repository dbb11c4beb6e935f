# Importing each module registers its criterion with fairseq.
from . import (  # noqa: F401
    m3p_loss,  # --criterion m3p_loss
    mla_losses,  # --criterion mla_nlt, mla_le
    modality_loss,  # --criterion vlp_mmt_loss
    vlp_pretraining_loss,  # --criterion vlp_pretraining_loss
)
