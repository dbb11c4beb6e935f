"""MLA commands around fairseq-train (m3p_fairseq/mla/cli.py), kept here so that
``python scripts/mla.py ...`` works from a checkout. See ``--help`` and docs/mla.md."""

import sys

from m3p_fairseq.mla.cli import main

if __name__ == "__main__":
    sys.exit(main())
