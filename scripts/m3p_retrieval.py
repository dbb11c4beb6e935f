"""Score M3P checkpoints on multilingual image-text retrieval per language (Recall@1/5/10 both
ways, mR): m3p_fairseq/evaluation/m3p_retrieval.py. See ``--help``."""

import sys

from m3p_fairseq.evaluation.m3p_retrieval import main

if __name__ == "__main__":
    sys.exit(main())
