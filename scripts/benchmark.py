"""Speed and memory of m3p_transformer against fairseq's own ``transformer``, side by side.

    python scripts/benchmark.py --output-dir docs/benchmarks [--tiny]

The harness, the worker and the report live in m3p_fairseq/benchmark/ (``--help`` for the
method); this file is the command line.
"""

from m3p_fairseq.benchmark.cli import main

if __name__ == "__main__":
    main()
