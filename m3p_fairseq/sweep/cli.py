"""``m3p-sweep`` / ``python scripts/sweep.py``: submit, status, collect.

    m3p-sweep submit  SWEEP_FILE [--cluster slurm|local|debug] [--dry-run]
    m3p-sweep status  SWEEP_FILE
    m3p-sweep collect SWEEP_FILE [--output results.tsv]

A sweep file (YAML, or Python defining ``SWEEP = {...}``) holds base fairseq-train options, a
``grid`` (every combination) and/or a list of ``runs`` (each combined with every grid point),
and the ``resources`` of a job; see docs/sweeps.md. Each run gets its own directory under
``output_dir``: ``config.json``, ``command.sh``, ``checkpoints/``, ``train.log`` (fairseq's
``--log-format json`` records), ``submitit/`` and ``state.json``. ``submit`` again skips
finished runs and those still queued or running, and resubmits failed or lost ones, which
resume from their newest checkpoint that loads.
"""

import argparse
import logging
import sys
from pathlib import Path

from m3p_fairseq.logging_setup import setup_logging

from .results import collect, format_table, write_results
from .spec import SweepError, load_sweep
from .state import read_state
from .submission import CLUSTERS, submit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="m3p-sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [("submit", "submit every run that is not done or in progress"),
                            ("status", "each run's state and last validation numbers"),
                            ("collect", "gather final validation numbers (and BLEU) into one table")]:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("sweep_file", type=Path)
        command.add_argument("--output-dir", type=Path, help="where the run directories live (default: "
                             "the sweep file's output_dir, relative to the current directory)")
        if name == "submit":
            command.add_argument("--cluster", choices=CLUSTERS, default="slurm",
                                 help="slurm; local: subprocesses on this machine; debug: in this process")
            command.add_argument("--dry-run", action="store_true", help="show what would be submitted")
        if name == "collect":
            command.add_argument("--output", type=Path, help="also write the table here (.tsv or .json); "
                                 "default OUTPUT_DIR/results.tsv")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)  # importing fairseq turned on DEBUG
    try:
        sweep = load_sweep(args.sweep_file, args.output_dir)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "submit":
        actions = submit(sweep, args.cluster, args.dry_run)
        if args.cluster == "debug":
            return int(any(read_state(run.directory)["state"] != "done" for run in sweep.runs))
        return 0 if actions else 1
    rows = collect(sweep)
    print(format_table(rows))
    if args.command == "collect":
        output = args.output or sweep.output_dir / "results.tsv"
        write_results(rows, output)
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
