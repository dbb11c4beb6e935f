"""Sweeps of fairseq-train configurations through submitit: submit, status, collect.

    python scripts/sweep.py submit  examples/sweeps/quickstart.yaml --cluster slurm|local|debug
    python scripts/sweep.py status  examples/sweeps/quickstart.yaml
    python scripts/sweep.py collect examples/sweeps/quickstart.yaml

The same as the ``m3p-sweep`` console script; the implementation (and the job that submitit
unpickles on the nodes) is the package m3p_fairseq/sweep/; docs/sweeps.md describes the sweep file.
"""

import sys

from m3p_fairseq.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
