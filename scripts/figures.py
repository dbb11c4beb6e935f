"""The paper's analysis figures: ``m3p-figures`` (m3p_fairseq/evaluation/figures_cli.py), kept here so
that ``python scripts/figures.py ...`` works from a checkout. See ``--help``."""

import sys

from m3p_fairseq.evaluation.figures_cli import main

if __name__ == "__main__":
    sys.exit(main())
