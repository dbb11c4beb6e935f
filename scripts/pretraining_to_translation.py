"""Initialise a multimodal_translation model from an M3P pre-training checkpoint
(m3p_fairseq/models/m3p_pretraining_transfer.py); then fine-tune with
``fairseq-train ... --finetune-from-model OUTPUT.pt``. See ``--help``."""

import sys

from m3p_fairseq.models.m3p_pretraining_transfer import main

if __name__ == "__main__":
    sys.exit(main())
