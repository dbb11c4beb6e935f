"""The benchmark's harness: one data set for every run, the plan of interleaved rounds, and the
worker processes that run them (:mod:`.worker`). The protocol, and why it is fair, is described in :mod:`.cli`.
"""

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from ..data.data_dir import DICTIONARY_FILE, DataDirectory
from ..data.image_features import read_image_ids
from ..data.random_features import write_random_features
from .configs import BASELINE, KEY_CONFIGS, LANGS, SWEEP_CONFIGS, Settings
from .worker import image_ids

REPO = Path(__file__).resolve().parents[2]


def run_worker(job: dict) -> List[dict]:
    """``job`` in a fresh Python process (the same interpreter); its results are the last stdout line."""
    # A fixed mmap threshold (glibc raises it dynamically otherwise): large tensors freed by one
    # run go back to the OS, so the next run's memory growth starts from what it really holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    # from the repository root, so that the worker imports this checkout's m3p_fairseq
    process = subprocess.run([sys.executable, "-m", "m3p_fairseq.benchmark.worker", json.dumps(job)],
                             capture_output=True, text=True, cwd=str(REPO), env=env)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark worker ({job['worker']}) failed:\n{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def prepare_data(work: Path, s: Settings) -> Dict[str, Path]:
    """The m3P data directory (preprocess.binarize + features) and the baseline's view of the
    same files under fairseq-preprocess names (dict.{en,de}.txt, train.en-de.{en,de}.bin/.idx)."""
    from preprocess.binarize import binarize
    from preprocess.make_synthetic_corpus import make_corpus

    raw, data, baseline = work / "raw", work / "data-bin", work / "data-bin-translation"
    if not DataDirectory(data).shared_features.exists():
        make_corpus(raw, num_train=s.train_sentences, num_valid=1, num_test=s.test_sentences,
                    langs=list(LANGS), image_size=32, seed=1)
        binarize(raw, data, [LANGS], ["train", "test"], spm_vocab_size=1000)
        ids = [i for split in ("train", "test") for i in read_image_ids(DataDirectory(raw).image_ids(split))]
        write_random_features(DataDirectory(data).shared_features, ids, s.num_patches, s.feature_dim, seed=0,
                              dtype="float16")
    baseline.mkdir(exist_ok=True)
    links = {f"dict.{lang}.txt": DICTIONARY_FILE for lang in LANGS}
    for split in ("train", "test"):
        for lang in LANGS:
            for ext in ("bin", "idx"):
                links[f"{split}.{LANGS[0]}-{LANGS[1]}.{lang}.{ext}"] = f"{split}.{lang}.{ext}"
    for name, target in links.items():
        if not (baseline / name).exists():
            (baseline / name).symlink_to((data / target).resolve())
    return {"data_dir": data, "baseline_dir": baseline}


def model_job(round_number: int, names: List[str], batch_sizes: List[int], generate: bool, s: Settings,
              paths: Dict[str, Path]) -> dict:
    """One round: one worker process running every (configuration, batch size) once; the
    order is reversed every other round, so a drift of the machine's load hits both ends alike."""
    runs = [{"config": name, "batch_size": b, "generate": generate} for b in batch_sizes for name in names]
    if round_number % 2:
        runs.reverse()
    return {"worker": "model", "round": round_number, "runs": runs, "settings": asdict(s), "threads": s.threads,
            "data_dir": str(paths["data_dir"]), "baseline_dir": str(paths["baseline_dir"])}


def run_model_job(job: dict, log) -> List[dict]:
    results = run_worker(job)
    for result in results:
        log(f"round {job['round']} {result['config']:26s} batch {result['batch_size']:3d}: "
            f"{result['train_wps']:7.0f} wps ({result['train_wps_wall']:7.0f} wall)"
            + (f", {result['gen_sentences_per_second']:6.2f} sent/s" if "gen_sentences_per_second" in result else "")
            + f", training RSS +{result['training_rss_growth_mib']:.0f} MiB")
    return results


def plan_model_jobs(names: List[str], s: Settings, paths: Dict[str, Path], rows_per_round: int,
                    skip_sweep: bool) -> Dict[str, List[dict]]:
    """The rounds of the main table (each with the baseline: every row in ``repeats`` rounds of
    at most ``rows_per_round`` rows, the key rows up to ``key_repeats`` rounds) and of the sweep."""
    if (s.gen_batches + 1) * s.gen_batch_size > s.test_sentences:
        raise ValueError("(gen_batches + 1) x gen_batch_size exceeds the test sentences")
    rows = [n for n in names if n != BASELINE]
    main = []
    for _ in range(s.repeats):
        for start in range(0, len(rows), rows_per_round):
            main.append([BASELINE, *rows[start:start + rows_per_round]])
    key_rows = [n for n in KEY_CONFIGS if n in names]
    main += [key_rows] * max(0, s.key_repeats - s.repeats)
    jobs = {"model_runs": [model_job(r, group, [s.batch_size], True, s, paths) for r, group in enumerate(main)],
            "sweep_runs": []}
    if not skip_sweep:
        sweep_names = [n for n in SWEEP_CONFIGS if n in names]
        for r in range(s.sweep_repeats):
            jobs["sweep_runs"] += [model_job(r, sweep_names, [b], False, s, paths)
                                   for b in s.sweep_batch_sizes if b != s.batch_size]
    return jobs


def reader_runs(work: Path, s: Settings, log) -> List[dict]:
    runs = []
    for n in s.reader_sizes:
        h5, npy = work / f"reader_{n}.h5", work / f"reader_{n}.npy"
        write_random_features(h5, image_ids(n), s.reader_patches, s.reader_dim, seed=n, dtype="float16",
                              npy_path=npy)
        runs += [{"file_kind": "hdf5", "path": str(h5), "num_images": n},
                 {"file_kind": "npy", "path": str(npy), "num_images": n}]
    try:
        results = run_worker({"worker": "reader", "runs": runs})
    finally:
        for run in runs:
            Path(run["path"]).unlink(missing_ok=True)
    for r in results:
        log(f"reader {r['kind']:4s} {r['num_images']:6d} images: {r['samples_per_second']:9.0f} samples/s "
            f"({r['samples_per_second_wall']:.0f} wall), RSS +{r['rss_growth_mib']:.1f} MiB")
    return results


def machine_info(s: Settings) -> dict:
    import fairseq
    import h5py

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": s.threads,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
            "python": platform.python_version(), "torch": torch.__version__, "fairseq": fairseq.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__, "load_average_at_start": os.getloadavg()}

