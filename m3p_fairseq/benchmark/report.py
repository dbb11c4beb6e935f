"""The benchmark's report: ratios against the baseline of the same round, the Markdown tables
(results.md, profile.md) and the plot of throughput against batch size."""

from math import comb
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional, Tuple

from ..atomic_io import atomic_path, atomic_write_text
from ..markdown import markdown_table
from .configs import BASELINE, CONFIGS, KEY_CONFIGS, SPEED_GOALS, SWEEP_CONFIGS


def _spread(values: List[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def median_interval(values: List[float], confidence: float = 0.95) -> Optional[Tuple[float, float]]:
    """A distribution-free interval for the median of the rounds' population: the order
    statistics (x_(j), x_(n+1-j)) with the largest j whose coverage, 1 - 2 P(Binomial(n, 1/2) < j),
    is at least ``confidence``. Rounds vary by several per cent on a shared machine, so a goal is
    met only when the whole interval clears it. None with too few rounds (fewer than 6 at 95 %)."""
    n, ordered = len(values), sorted(values)
    below, j = 0.0, 0  # below = P(B < j + 1) as j grows
    while j < n // 2:
        below += comb(n, j) / 2 ** n
        if 1 - 2 * below < confidence:
            break
        j += 1
    return None if j == 0 else (ordered[j - 1], ordered[n - j])


def ratios(results: List[dict], key: str, batch_size: int) -> Dict[str, List[float]]:
    """Per configuration: its ``key`` over the baseline's, one ratio per round."""
    by_round: Dict[int, Dict[str, dict]] = {}
    for r in results:
        if r["batch_size"] == batch_size and key in r:
            by_round.setdefault(r["round"], {})[r["config"]] = r
    out: Dict[str, List[float]] = {}
    for runs in by_round.values():
        for name, r in runs.items():
            out.setdefault(name, []).append(r[key] / runs[BASELINE][key])
    return out


def sweep_points(report: dict) -> Dict[str, Dict[int, List[float]]]:
    """Training words/s of the plotted configurations, per batch size, one value per round."""
    points: Dict[str, Dict[int, List[float]]] = {}
    for r in report["model_runs"] + report["sweep_runs"]:
        if r["config"] in SWEEP_CONFIGS and r["batch_size"] in report["sweep_batch_sizes"]:
            points.setdefault(r["config"], {}).setdefault(r["batch_size"], []).append(r["train_wps"])
    return {name: points[name] for name in SWEEP_CONFIGS if name in points}


def markdown_tables(report: dict) -> str:
    s = report["settings"]
    main = [r for r in report["model_runs"] if r["batch_size"] == s["batch_size"]]
    train_ratio = ratios(main, "train_wps", s["batch_size"])
    gen_ratio = ratios(main, "gen_sentences_per_second", s["batch_size"])
    models = []
    for name in CONFIGS:
        runs = [r for r in main if r["config"] == name]
        if runs:
            models.append([name, f"{runs[0]['num_parameters'] / 1e6:.2f} M",
                           _spread([r["train_wps"] for r in runs], 0), _spread(train_ratio[name], 3),
                           _spread([r["gen_sentences_per_second"] for r in runs], 2), _spread(gen_ratio[name], 3),
                           _spread([100 * r["data_cpu_share"] for r in runs], 1),
                           _spread([r["training_rss_growth_mib"] for r in runs], 0)])
    batch_sizes = report["sweep_batch_sizes"]
    sweep = [[name, *(_spread(points[b], 0) for b in batch_sizes)] for name, points in sweep_points(report).items()]
    readers = []
    for r in report["reader_runs"]:
        size = r["num_images"] * s["reader_patches"] * s["reader_dim"] * 2 / 2 ** 20
        label = "ImageFeatureStore (HDF5)" if r["kind"] == "hdf5" else "one .npy, np.load"
        readers.append([label, r["num_images"], f"{size:.0f}", f"{r['open_seconds']:.2f}",
                        f"{r['samples_per_second']:.0f}", f"{r['samples_per_second_wall']:.0f}",
                        f"{r['rss_growth_mib']:.1f}"])
    parts = [
        f"Training at {s['batch_size']} sentences per update ("
        f"{'length-sorted batches, as fairseq-train' if s.get('length_sorted_batches') else 'random sentences'}), "
        f"{s['timed_steps']} timed updates after "
        f"{s['warmup_steps']} warm-up; beam {s['beam']} generation of {s['gen_batches']} batches of "
        f"{s['gen_batch_size']} sentences, {s['gen_length']} steps each; every row in {s['repeats']} round(s), "
        f"the key rows ({', '.join(KEY_CONFIGS)}) in {s['key_repeats']} interleaved rounds: median (min–max over rounds). Words/s and sentences/s are per CPU second of the run's process "
        f"({s['threads']} torch thread(s)); results.json also holds the wall-clock rates.",
        markdown_table(["model", "parameters", "train words/s", "train ratio", "generation sent/s",
                        "generation ratio", "reading and collating, % of training CPU",
                        "training peak RSS growth, MiB"], models),
    ]
    if len(batch_sizes) > 1:  # --skip-sweep leaves one batch size: nothing to compare across
        parts += ["Training words/s against batch size (sentences per update):",
                  markdown_table(["model", *map(str, batch_sizes)], sweep)]
    if readers:
        parts += [f"Feature reader: every image of a generated file read once in random order, one process "
                  f"({s['reader_patches']} × {s['reader_dim']} float16 patches per image).",
                  markdown_table(["reader", "images", "features, MiB", "open or load, s", "samples/s",
                                  "samples/s (wall)", "RSS growth, MiB"], readers)]
    parts.append(targets_table(report, train_ratio, gen_ratio))
    return "\n\n".join(parts) + "\n"


def targets_table(report: dict, train_ratio, gen_ratio) -> str:
    """One row per goal: ratio goals are judged on the 95 % interval of their median over rounds
    (met, not met, or within the noise when it contains the goal); the reader's, measured once,
    on their value."""
    rows = []
    for name, kind, goal in SPEED_GOALS:
        measured = (train_ratio if kind == "train" else gen_ratio).get(name)
        if measured:
            rows.append(_ratio_goal(f"{'training' if kind == 'train' else 'generation'} ratio, {name}", measured, goal))
    m3p_rows = [name for name in gen_ratio if CONFIGS[name].fusion is not None]
    if m3p_rows:
        worst = min(m3p_rows, key=lambda name: median(gen_ratio[name]))
        rows.append(_ratio_goal(f"generation ratio, lowest m3P row ({worst})", gen_ratio[worst], 0.95))
    readers = {(r["kind"], r["num_images"]): r for r in report["reader_runs"]}
    sizes = report["settings"]["reader_sizes"]
    if readers:
        growth = readers[("hdf5", sizes[-1])]["rss_growth_mib"] - readers[("hdf5", sizes[0])]["rss_growth_mib"]
        rows.append([f"reader RSS growth, {sizes[0]} -> {sizes[-1]} images, MiB", "< 200 MB (190.7 MiB)",
                     f"{growth:.1f}", "", "yes" if growth < 200e6 / 2 ** 20 else "no"])
        slowest = min(readers[("hdf5", n)]["samples_per_second"] for n in sizes)
        rows.append(["reader samples/s per worker, slowest file", ">= 5000", f"{slowest:.0f}", "",
                     "yes" if slowest >= 5000 else "no"])
    return markdown_table(["target", "goal", "measured (median)", "95 % interval of the median", "met"], rows,
                          align="llrll")


def _ratio_goal(target: str, measured: List[float], goal: float) -> list:
    middle, interval = median(measured), median_interval(measured)
    if interval is None:  # too few rounds: the median alone decides
        spread, met = f"(too few rounds: {len(measured)})", "yes" if middle >= goal else "no"
    else:
        low, high = interval
        spread, met = f"{low:.3f}–{high:.3f}", "yes" if low >= goal else "no" if high < goal else "within the noise"
    return [target, f">= {goal:.2f}", f"{middle:.3f}", spread, met]


def profile_markdown(results: List[dict]) -> str:
    columns = ["calls", "own s", "cumulative s"]

    def rows(profile_rows):
        return [[row["function"], row["calls"], f"{row['own_seconds']:.3f}", f"{row['cumulative_seconds']:.3f}"]
                for row in profile_rows]

    lines = []
    for r in results:
        profile = r["profile"]
        lines += [f"### {r['config']} (batch {r['batch_size']}): {profile['total_seconds']:.2f} s profiled, "
                  f"{100 * r['data_cpu_share']:.1f}% of the CPU time in reading and collating", "",
                  markdown_table(["function (own time)", *columns], rows(profile["by_own_time"]))]
        if profile["plugin_by_cumulative_time"]:
            lines += ["", markdown_table(["plugin function (cumulative time)", *columns],
                                         rows(profile["plugin_by_cumulative_time"]))]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, points in sweep_points(report).items():
        sizes = sorted(points)
        axis.plot(sizes, [median(points[b]) for b in sizes], marker="o", label=name)
        for b in sizes:  # every round, so the spread shows
            axis.scatter([b] * len(points[b]), points[b], s=10, alpha=0.4, color=axis.lines[-1].get_color())
    axis.set_xscale("log", base=2)
    axis.set_xticks(report["sweep_batch_sizes"], [str(b) for b in report["sweep_batch_sizes"]])
    axis.set_xlabel("batch size (sentences per update)")
    axis.set_ylabel("training words per CPU second (target tokens)")
    s = report["settings"]
    axis.set_title(f"{s['layers']}+{s['layers']} layers, {s['embed_dim']} wide, {s['threads']} thread(s), "
                   f"{report['machine']['device']}", fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)



def write_report(report: dict, output_dir: Path) -> str:
    """OUTPUT_DIR/results.md and the plot from a report (results.json); returns the tables."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tables = markdown_tables(report)
    atomic_write_text(
        output_dir / "results.md", f"Command: `{report['command']}`\n\nMachine: {report['machine']}\n\n{tables}")
    plot(report, output_dir / "throughput_vs_batch_size.png")
    return tables
