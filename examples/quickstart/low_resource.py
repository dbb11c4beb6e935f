"""The paper's Fig. 5 on the synthetic quickstart data: the text-only model and m3P trained on
10 %, 25 %, 50 % and 100 % of the training sentences, then BLEU against the share of data.
Like each panel of the paper's figure, one direction (--lang-pairs, default en-de), which also
keeps the eight trainings affordable on a CPU.

    python examples/quickstart/low_resource.py [--quickstart-dir work/quickstart] [--work-dir work/low-resource]

Reuses the quickstart's binarized data (run examples/quickstart/run.py first, or let this
script's --quickstart-dir point at its work directory), cuts its training split with
``python -m preprocess.subsample`` (nested subsets, the same seed for every share), trains every
(model, share) with the quickstart's options and a smaller budget (--max-update, default 120),
--parallel at a time, and draws ``python scripts/figures.py low-resource``. Finished steps are skipped,
so an interrupted run resumes.
"""

import argparse
import sys
import time
from pathlib import Path

from run import MODELS, REPO, _finished, run, run_side_by_side, train_command  # noqa: E402

from m3p_fairseq.data.data_dir import DataDirectory  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart-dir", type=Path, default=REPO / "work" / "quickstart",
                        help="the quickstart's work directory (its data-bin/ is read, never written)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "low-resource")
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1", help="shares of the training sentences")
    parser.add_argument("--split", default="test_degraded", help="the split scored for the figure")
    parser.add_argument("--output", type=Path, help="PNG (default WORK/fig5_low_resource.png)")
    parser.add_argument("--lang-pairs", default="en-de", help="the directions trained and scored")
    parser.add_argument("--parallel", type=int, default=2, help="trainings run at once, one thread each (each takes about 1.3 GB)")
    parser.add_argument("--max-update", type=int, default=120)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-updates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tensorboard", action="store_true")
    args = parser.parse_args(argv)
    began = time.time()
    source = args.quickstart_dir.resolve() / "data-bin"
    if not DataDirectory(source).dictionary.is_file():
        parser.error(f"{source}: no quickstart data; run examples/quickstart/run.py first")
    work = args.work_dir.resolve()
    pairs = args.lang_pairs.split(",")
    runs, todo = [], []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        label = f"{round(100 * fraction)}pct"
        data = work / f"data-{label}"
        (work / label).mkdir(parents=True, exist_ok=True)
        print(f"== training data: {fraction:.0%}", flush=True)
        run([sys.executable, "-m", "preprocess.subsample", "--data", source, "--output", data,
             "--fraction", fraction, "--seed", args.seed])
        for name, options in MODELS.items():
            save_dir = work / label / "checkpoints" / name
            runs.append((name, fraction, save_dir / "checkpoint_last.pt"))
            if not _finished(save_dir / "checkpoint_last.pt", args.max_update):
                # no validation or per-epoch checkpoints: at 10 % an epoch is a handful of updates
                command = train_command(data, save_dir, options, args, pairs) + [
                    "--disable-validation", "--save-interval", "100000"]
                todo.append((command, work / label / f"train-{name}.log"))
    print(f"== training ({len(todo)} runs, {args.parallel} at a time)", flush=True)
    for start in range(0, len(todo), args.parallel):
        run_side_by_side(todo[start:start + args.parallel])
    print("== figure", flush=True)
    output = args.output or work / "fig5_low_resource.png"
    run([sys.executable, "scripts/figures.py", "low-resource", "--data", source, "--split", args.split,
         "--lang-pairs", args.lang_pairs, "--output", output] + [str(a) for name, fraction, checkpoint in runs
                                for a in ("--run", name, fraction, checkpoint)])
    print(f"total {time.time() - began:.0f} s; {output}")


if __name__ == "__main__":
    main()
