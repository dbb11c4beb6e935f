"""scripts/benchmark.py (m3p_fairseq/benchmark/): its tiniest setting end to end (files, table
structure, sane ratios, parameter counts worked out by hand) and the measuring helpers. No timed
assertion: speed is reported in docs/benchmarks.md, not tested."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO
from m3p_fairseq.benchmark.configs import TINY
from m3p_fairseq.benchmark.measuring import peak_rss_mib, profile_summary, release_memory
from m3p_fairseq.benchmark.report import markdown_tables, median_interval, ratios, sweep_points, targets_table
from m3p_fairseq.benchmark.worker import fixed_batches, length_sorted_batches


def transformer_parameters(vocabulary: int, width: int, ffn: int) -> int:
    """fairseq's post-norm ``transformer`` with one encoder and one decoder layer, all embeddings
    shared, sinusoidal positions: counted weight by weight."""
    attention = 4 * (width * width + width)  # q, k, v, out projections with biases
    feed_forward = width * ffn + ffn + ffn * width + width
    layer_norm = 2 * width
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm  # self- and encoder attention
    return vocabulary * width + encoder_layer + decoder_layer


def test_tiny_benchmark_writes_results_table_and_plot(tmp_path):
    out = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--tiny", "--output-dir", str(out),
         "--work-dir", str(tmp_path / "work"), "--configs", "m3p cvlm +MMCL +MDropNet,m3p cvlm +MMCL"],
        capture_output=True, text=True, cwd=REPO)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())

    names = {r["config"] for r in report["model_runs"]}
    assert names == {"transformer", "m3p cvlm +MMCL", "m3p cvlm +MMCL +MDropNet"}
    for key in ("train_wps", "gen_sentences_per_second"):
        for name, values in ratios(report["model_runs"], key, report["settings"]["batch_size"]).items():
            assert all(math.isfinite(v) and v > 0 for v in values), (key, name, values)
    # the transformer over itself is 1 in every round
    assert ratios(report["model_runs"], "train_wps", TINY.batch_size)["transformer"] == [1.0] * TINY.key_repeats
    # parameters: the baseline's, counted by hand (4 special symbols + the shared dict.txt)
    params = {r["config"]: r["num_parameters"] for r in report["model_runs"]}
    vocabulary = 4 + len((tmp_path / "work" / "data-bin" / "dict.txt").read_text().splitlines())
    assert params["transformer"] == transformer_parameters(vocabulary, TINY.embed_dim, TINY.ffn_dim)
    # the m3P model holds the baseline's parameters and more (image projection, CVLM, MMCL head)
    assert params["m3p cvlm +MMCL"] > params["transformer"]
    # sweep: every batch size of the plot, for both plotted models
    points = sweep_points(report)
    assert set(points) == {"transformer", "m3p cvlm +MMCL +MDropNet"}
    assert all(set(p) == {2, 4} for p in points.values())
    # reader: both readers, every generated size
    readers = {(r["kind"], r["num_images"]) for r in report["reader_runs"]}
    assert readers == {(kind, n) for kind in ("hdf5", "npy") for n in (50, 100, 200)}
    assert all(r["samples_per_second"] > 0 for r in report["reader_runs"])
    # the HDF5 and .npy readers read the same features
    checksums = {}
    for r in report["reader_runs"]:
        checksums.setdefault(r["num_images"], set()).add(round(r["checksum"], 3))
    assert all(len(c) == 1 for c in checksums.values()), checksums
    assert not list((tmp_path / "work").glob("reader_*")), "generated reader files are deleted"

    table = (out / "results.md").read_text()
    assert "| model | parameters | train words/s | train ratio |" in table
    assert "| m3p cvlm +MMCL | " in table and "| transformer | " in table
    assert "| ImageFeatureStore (HDF5) | 200 |" in table and "| one .npy, np.load | 50 |" in table
    assert "| training ratio, m3p cvlm +MMCL | >= 0.90 |" in table
    assert (out / "throughput_vs_batch_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_baseline_reads_the_same_tokens_as_m3p_and_without_the_tag_one_fewer(tmp_path):
    import m3p_fairseq  # noqa: F401  (registers the task)
    from m3p_fairseq.benchmark.configs import BASELINE, UNTAGGED_BASELINE
    from m3p_fairseq.benchmark.harness import model_job, prepare_data
    from m3p_fairseq.benchmark.worker import build_run, training_set

    job = model_job(0, [], [4], False, TINY, prepare_data(tmp_path, TINY))
    ids = [3, 0, 7, 12]
    batches, lengths = {}, {}
    for name in (BASELINE, UNTAGGED_BASELINE, "m3p none"):
        _, task, _ = build_run(job, name, 4)
        train = training_set(task)
        batches[name] = train.collater([train[i] for i in ids])
        lengths[name] = [train.size(i) for i in range(TINY.train_sentences)]
    # --length-sorted-batches sorts by these: the same for the baseline and m3P, so the same batches
    assert lengths[BASELINE] == lengths["m3p none"]
    tagged, untagged, m3p = batches[BASELINE], batches[UNTAGGED_BASELINE], batches["m3p none"]
    for key in ("src_tokens", "src_lengths"):
        assert torch.equal(tagged["net_input"][key], m3p["net_input"][key]), key
    assert torch.equal(tagged["net_input"]["prev_output_tokens"], m3p["net_input"]["prev_output_tokens"])
    assert torch.equal(tagged["target"], m3p["target"])
    assert torch.equal(untagged["net_input"]["src_lengths"] + 1, m3p["net_input"]["src_lengths"])
    de_tag = task.src_dict.index("__de__")
    for row in range(len(ids)):  # sources are padded on the left: the tag is the first real token
        with_tag = m3p["net_input"]["src_tokens"][row]
        with_tag = with_tag[with_tag != task.src_dict.pad()]
        without = untagged["net_input"]["src_tokens"][row]
        assert with_tag[0] == de_tag and torch.equal(with_tag[1:], without[without != task.src_dict.pad()])


def test_ratios_are_taken_against_the_baseline_of_the_same_round():
    runs = [{"config": "transformer", "round": 0, "batch_size": 8, "train_wps": 100.0},
            {"config": "m3p cvlm", "round": 0, "batch_size": 8, "train_wps": 90.0},
            {"config": "transformer", "round": 1, "batch_size": 8, "train_wps": 50.0},
            {"config": "m3p cvlm", "round": 1, "batch_size": 8, "train_wps": 40.0},
            {"config": "m3p cvlm", "round": 0, "batch_size": 16, "train_wps": 1.0}]
    assert ratios(runs, "train_wps", 8) == {"transformer": [1.0, 1.0], "m3p cvlm": [0.9, 0.8]}


def test_the_main_table_shows_the_data_share_and_leaves_out_skipped_parts():
    """A report of --skip-sweep --skip-reader: one batch size, no reader runs. The data column is
    the median (min-max) of the rounds' shares in per cent; no empty sweep or reader table."""
    def run(config, round_number, wps, data_share):
        return {"config": config, "round": round_number, "batch_size": 32, "num_parameters": 5_550_000,
                "train_wps": wps, "gen_sentences_per_second": 20.0, "data_cpu_share": data_share,
                "training_rss_growth_mib": 215.0}
    settings = {"batch_size": 32, "length_sorted_batches": True, "timed_steps": 6, "warmup_steps": 2, "beam": 5,
                "gen_batches": 9, "gen_batch_size": 20, "gen_length": 20, "repeats": 2, "key_repeats": 2,
                "threads": 1, "reader_patches": 49, "reader_dim": 512, "reader_sizes": []}
    report = {"settings": settings, "sweep_batch_sizes": [32], "sweep_runs": [], "reader_runs": [],
              "model_runs": [run("transformer", 0, 800.0, 0.004), run("m3p cvlm +MMCL", 0, 680.0, 0.017),
                             run("transformer", 1, 900.0, 0.005), run("m3p cvlm +MMCL", 1, 720.0, 0.019)]}
    text = markdown_tables(report)
    assert "| model | parameters | train words/s | train ratio | generation sent/s | generation ratio " \
           "| reading and collating, % of training CPU | training peak RSS growth, MiB |" in text
    # ratios 680/800 = 0.85 and 720/900 = 0.80; data shares 1.7 % and 1.9 %: median 1.8
    assert "| m3p cvlm +MMCL | 5.55 M | 700 (680–720) | 0.825 (0.800–0.850) | 20.00 (20.00–20.00) " \
           "| 1.000 (1.000–1.000) | 1.8 (1.7–1.9) | 215 (215–215) |" in text
    assert "| transformer | 5.55 M | 850 (800–900) | 1.000 (1.000–1.000) |" in text
    assert "against batch size" not in text and "Feature reader" not in text


def test_median_interval_is_the_order_statistics_of_the_binomial_table():
    # n = 10: P(B <= 1) = 11/1024, coverage of (x_(2), x_(9)) = 1 - 22/1024 = 0.979 >= 0.95, while
    # (x_(3), x_(8)) covers 1 - 2 * 56/1024 = 0.891: the 2nd smallest and the 2nd largest
    assert median_interval([7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]) == (2.0, 9.0)
    # n = 6: only (min, max) covers enough, 1 - 2/64 = 0.969; n = 5: even that covers 1 - 2/32 = 0.94
    assert median_interval([0.9, 0.8, 1.0, 0.7, 0.95, 0.85]) == (0.7, 1.0)
    assert median_interval([0.9, 0.8, 1.0, 0.7, 0.95]) is None
    assert median_interval([0.9, 0.8, 1.0, 0.7, 0.95], confidence=0.9) == (0.7, 1.0)


def test_a_ratio_goal_is_met_only_when_its_whole_interval_clears_it():
    report = {"reader_runs": [], "settings": {"reader_sizes": []}}
    train = {"m3p none": [0.99, 1.0, 0.985, 1.02, 0.98, 0.99],  # interval 0.98-1.02: met (>= 0.98)
             "m3p cvlm +MMCL": [0.85, 0.95, 0.91, 0.88, 0.93, 0.92],  # 0.85-0.95 contains 0.90
             "m3p cvlm +MMCL +MDropNet": [0.80, 0.87, 0.85, 0.86, 0.84, 0.83]}  # 0.80-0.87 < 0.88
    generation = {"m3p none": [1.0] * 4}  # 4 rounds: no interval, the median decides
    lines = targets_table(report, train, generation).splitlines()
    assert lines[0] == "| target | goal | measured (median) | 95 % interval of the median | met |"
    assert lines[2:] == [
        "| training ratio, m3p none | >= 0.98 | 0.990 | 0.980–1.020 | yes |",
        "| generation ratio, m3p none | >= 0.99 | 1.000 | (too few rounds: 4) | yes |",
        "| training ratio, m3p cvlm +MMCL | >= 0.90 | 0.915 | 0.850–0.950 | within the noise |",
        "| training ratio, m3p cvlm +MMCL +MDropNet | >= 0.88 | 0.845 | 0.800–0.870 | no |",
        "| generation ratio, lowest m3P row (m3p none) | >= 0.95 | 1.000 | (too few rounds: 4) | yes |"]


def test_fixed_batches_use_every_sentence_before_repeating_one():
    batches = fixed_batches(10, 4, 5, seed=1)
    assert [len(b) for b in batches] == [4] * 5
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert batches == fixed_batches(10, 4, 5, seed=1)


def test_length_sorted_batches_are_consecutive_sentences_in_length_order():
    lengths = [(5, 1), (2, 9), (5, 0), (1, 4), (2, 3), (9, 9)]  # (source, target)
    # by source, then target: 3 (1,4), 4 (2,3), 1 (2,9), 2 (5,0), 0 (5,1), 5 (9,9)
    batches = length_sorted_batches(lengths, 2, 3, seed=1)
    assert sorted(batches) == [[0, 5], [1, 2], [3, 4]]
    assert batches == length_sorted_batches(lengths, 2, 3, seed=1)  # fixed by the seed
    more = length_sorted_batches(lengths, 2, 5, seed=1)  # all 3 batches before one repeats
    assert sorted(more[:3]) == [[0, 5], [1, 2], [3, 4]] and all(b in more[:3] for b in more[3:])
    assert length_sorted_batches(lengths, 4, 1, seed=1) == [[3, 4, 1, 2]]  # the last, partial batch is left out
    with pytest.raises(ValueError, match="6 sentences make no batch of 8"):
        length_sorted_batches(lengths, 8, 1, seed=1)
    from m3p_fairseq.benchmark.cli import parser, settings_of
    assert settings_of(parser().parse_args(["--length-sorted-batches"])).length_sorted_batches
    assert not settings_of(parser().parse_args([])).length_sorted_batches


def test_peak_rss_sees_an_allocation_and_restarts_after_release():
    start = release_memory()
    block = np.ones(64 * 2 ** 20, dtype=np.uint8)  # 64 MiB, every page touched
    assert peak_rss_mib() - start >= 60
    del block
    start = release_memory()
    assert peak_rss_mib() - start < 30


def test_profile_summary_lists_the_plugins_functions():
    import cProfile

    import torch

    from m3p_fairseq.models.contrastive_head import mean_over_tokens

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        mean_over_tokens(torch.ones(5, 2, 4), torch.ones(2, 5, dtype=torch.bool))
    profiler.disable()
    summary = profile_summary(profiler)
    plugin = {row["function"].split()[-1]: row for row in summary["plugin_by_cumulative_time"]}
    assert plugin["mean_over_tokens"]["calls"] == 3
    assert "contrastive_head.py" in plugin["mean_over_tokens"]["function"]
    assert summary["by_own_time"] and summary["total_seconds"] > 0
