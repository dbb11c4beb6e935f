"""Translate test splits and score each direction: ``m3p-evaluate`` (m3p_fairseq/evaluation/cli.py),
kept here so that ``python scripts/evaluate.py ...`` works from a checkout. See ``--help``."""

import sys

from m3p_fairseq.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
