"""Score fairseq-generate's captions (--task m3p_captioning) with BLEU-4 and CIDEr
(m3p_fairseq/evaluation/captioning_cli.py). See ``--help``."""

import sys

from m3p_fairseq.evaluation.captioning_cli import main

if __name__ == "__main__":
    sys.exit(main())
