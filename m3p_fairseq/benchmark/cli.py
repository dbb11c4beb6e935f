"""Speed and memory of m3p_transformer against fairseq's own ``transformer``, side by side.

    python scripts/benchmark.py --output-dir docs/benchmarks [--tiny]

One invocation builds one binarized data set with the project's own preprocessing (synthetic
captions, en-de; random image features of a CLIP ViT-B/32-sized grid) and measures:

1. training words/s (target tokens per second, as fairseq-train's ``wps``) after warm-up of
   ``m3p_transformer`` with every fusion, with and without MMCL / MDropNet, divided by that of
   fairseq's ``transformer`` with the same dimensions, trained with ``--task translation`` on
   the same en-de sentences, each source starting with the target-language tag as the m3P
   task's do (row "transformer untagged": without it, what that one token costs);
2. beam-5 generation sentences/s of each, divided by the plain transformer's;
3. the HDF5 feature reader (ImageFeatureStore): random-access samples/s of one worker and its
   resident-memory growth while reading 1k, 10k and 50k generated images, against loading the
   same features from one .npy into memory, as public MMT code bases do;
4. peak resident memory of training at a fixed batch size;

and a sweep of training throughput over batch sizes for the plot.

How it is made fair: every run is a fresh subprocess (so peak RSS belongs to that run alone)
with the same number of torch threads; it trains through fairseq's own ``Trainer`` (forward,
backward, Adam, fairseq's logging) on *identical* batches, the same sentence ids in the same
order, batched by sentences, each built by the run's own dataset (HDF5 reads and collation are
timed too, as with ``--num-workers 0``); generation decodes the same test sentences for exactly
``gen_length`` steps (min_len = max_len), so an untrained model's output length cannot favour
anyone. Runs are interleaved (order reversed every round) and each ratio is taken against
the baseline of the same round; the table gives the median and the range over rounds.

Writes ``OUTPUT_DIR/results.json`` (every run), ``OUTPUT_DIR/results.md`` (the tables) and
``OUTPUT_DIR/throughput_vs_batch_size.png``.
"""

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from m3p_fairseq.logging_setup import setup_logging

from ..atomic_io import atomic_write_text
from .configs import BASELINE, CONFIGS, KEY_CONFIGS, TINY, Settings
from .harness import (
    REPO,
    machine_info,
    model_job,
    plan_model_jobs,
    prepare_data,
    reader_runs,
    run_model_job,
    run_worker,
)
from .report import profile_markdown, write_report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "docs" / "benchmarks",
                        help="where results.json, results.md and the plot go")
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "benchmark",
                        help="data and generated feature files (reader files are deleted after use)")
    parser.add_argument("--tiny", action="store_true", help="the smallest setting (seconds, for tests)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated rows to measure (the baseline is always added); default all: "
                             f"{', '.join(CONFIGS)}")
    parser.add_argument("--repeats", type=int, help="interleaved rounds of every row (default 1)")
    parser.add_argument("--key-repeats", type=int,
                        help=f"rounds of the key rows {KEY_CONFIGS} in all (default 3, tiny 2)")
    parser.add_argument("--threads", type=int, help="torch threads of every run (default 1)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="worker processes at once (default 1). The rates are per CPU second of "
                             "each process, so on a machine shared with other work N > 1 finishes "
                             "sooner without favouring any row")
    parser.add_argument("--rows-per-round", type=int,
                        help="split every-row rounds into processes of this many rows plus the "
                             "baseline (default: all rows in one), to spread them over --parallel")
    parser.add_argument("--length-sorted-batches", action="store_true",
                        help="train on batches as fairseq-train forms them (sentences sorted by length, "
                             "consecutive ones batched, batches in random order) instead of random "
                             "sentences: little padding, as in real training")
    parser.add_argument("--skip-reader", action="store_true", help="leave out the feature-reader part")
    parser.add_argument("--skip-sweep", action="store_true", help="leave out the batch-size sweep")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the benchmark: profile (cProfile) the training steps of --configs "
                             "and the baseline, one round, and write OUTPUT_DIR/profile.md")
    parser.add_argument("--from-results", type=Path,
                        help="only rewrite results.md and the plot from an earlier results.json")
    return parser


def settings_of(args) -> Settings:
    s = replace(TINY if args.tiny else Settings())
    if args.repeats:
        s.repeats = args.repeats
    if args.key_repeats:
        s.key_repeats = args.key_repeats
    s.key_repeats = max(s.key_repeats, s.repeats)
    if args.threads:
        s.threads = args.threads
    s.length_sorted_batches = args.length_sorted_batches
    return s


def main(argv=None):
    cli = parser()
    args = cli.parse_args(argv)
    if args.from_results:
        write_report(json.loads(args.from_results.read_text()), args.output_dir)
        return

    setup_logging(logging.WARNING)
    s = settings_of(args)
    names = [BASELINE] + [n.strip() for n in args.configs.split(",") if n.strip() and n.strip() != BASELINE]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        cli.error(f"unknown --configs {unknown}; choose from {', '.join(CONFIGS)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    began = time.time()

    def log(message):
        print(f"[{time.time() - began:6.0f} s] {message}", flush=True)

    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": asdict(s),
              "machine": machine_info(s), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    paths = prepare_data(args.work_dir, s)
    log(f"data in {paths['data_dir']}")
    if args.profile:
        job = model_job(0, names, [s.batch_size], False, s, paths)
        for run in job["runs"]:
            run["profile"] = True
        text = f"Command: `{report['command']}`\n\n" + profile_markdown(run_worker(job))
        atomic_write_text(args.output_dir / "profile.md", text)
        print(text)
        return
    jobs = plan_model_jobs(names, s, paths, args.rows_per_round or len(names), args.skip_sweep)
    report["sweep_batch_sizes"] = sorted(set(s.sweep_batch_sizes) | {s.batch_size}) if not args.skip_sweep \
        else [s.batch_size]
    # Every job is its own process; with --parallel N, N run at once (rates are per CPU second)
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {"model_runs": [pool.submit(run_model_job, job, log) for job in jobs["model_runs"]]}
        readers = pool.submit(lambda: [] if args.skip_reader else reader_runs(args.work_dir, s, log))
        futures["sweep_runs"] = [pool.submit(run_model_job, job, log) for job in jobs["sweep_runs"]]
        for part, part_futures in futures.items():
            report[part] = [result for future in part_futures for result in future.result()]
        report["reader_runs"] = readers.result()
    report["seconds"] = time.time() - began
    atomic_write_text(args.output_dir / "results.json", json.dumps(report, indent=1) + "\n")
    print(write_report(report, args.output_dir))
    log(f"wrote {args.output_dir}/results.json, results.md, throughput_vs_batch_size.png")

