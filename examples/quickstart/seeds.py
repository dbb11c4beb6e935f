"""The quickstart over several seeds: mean and spread of text-only and m3P per direction.

    python examples/quickstart/seeds.py [--seeds 1 2 3] [--work-dir-pattern work/quickstart-seed{seed}]

Each seed is a whole quickstart (its own synthetic corpus, features and models, as
``python examples/quickstart/run.py --seed S`` makes them) in its own work directory, so a
finished seed is skipped and an interrupted one resumes. Writes ``seeds.md`` and ``seeds.json``
beside the work directories.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import run

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.markdown import markdown_table

MODELS = ("text-only", "m3p")
SPLITS = (("test", "clean"), ("test_degraded", "degraded"))
# each seed's quickstart directory (ablation.py --seeds reuses the same ones)
WORK_DIR_PATTERN = str(run.REPO / "work" / "quickstart-seed{seed}")


def spread(values) -> str:
    """mean ± sample standard deviation (min–max), one decimal."""
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f} ({min(values):.1f}–{max(values):.1f})"


def seed_table(results_by_seed: dict) -> str:
    """results_by_seed: seed -> the quickstart's results.json. One row per direction and the
    average; per split the two models and m3P − text-only, each as mean ± sd (min–max) over seeds."""
    any_results = next(iter(results_by_seed.values()))
    pairs = list(any_results["m3p"]["test"])
    header = ["direction"]
    for _, label in SPLITS:
        header += [f"text-only, {label}", f"m3P, {label}", f"m3P − text-only, {label}"]
    rows = []
    for pair in pairs + ["average"]:
        cells = [f"**{pair}**" if pair == "average" else pair]
        for split, _ in SPLITS:
            per_model = {model: [_bleu(results[model][split], pair) for results in results_by_seed.values()]
                         for model in MODELS}
            margin = [m - t for m, t in zip(per_model["m3p"], per_model["text-only"])]
            cells += [spread(per_model["text-only"]), spread(per_model["m3p"]), spread(margin)]
        rows.append(cells)
    return markdown_table(header, rows)


def _bleu(scores: dict, pair: str) -> float:
    if pair == "average":
        return statistics.mean(score["bleu"] for score in scores.values())
    return scores[pair]["bleu"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # quickstart options pass through whole
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--work-dir-pattern", default=WORK_DIR_PATTERN,
                        help="each seed's work directory; {seed} is replaced")
    args, quickstart_options = parser.parse_known_args(argv)
    began, results = time.time(), {}
    for seed in args.seeds:
        work = Path(args.work_dir_pattern.format(seed=seed))
        print(f"=== seed {seed}: {work}", flush=True)
        run.main(["--seed", str(seed), "--work-dir", str(work), *quickstart_options])
        results[seed] = json.loads((work / "results.json").read_text(encoding="utf-8"))
    markdown = seed_table(results) + "\n"
    output = Path(args.work_dir_pattern.format(seed="s")).parent
    atomic_write_text(output / "seeds.md", markdown)
    atomic_write_text(output / "seeds.json", json.dumps(results, indent=1, ensure_ascii=False))
    print(f"seeds {' '.join(map(str, args.seeds))}: BLEU mean ± sd (min–max)\n{markdown}")
    print(f"total {time.time() - began:.0f} s; written to {output / 'seeds.md'}")


if __name__ == "__main__":
    main()
