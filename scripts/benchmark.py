"""Speed and memory of m3p_transformer against fairseq's own ``transformer``, side by side.

    python scripts/benchmark.py --output-dir docs/benchmarks [--tiny]

One invocation builds one binarized data set with the project's own preprocessing (synthetic
captions, en-de; random image features of a CLIP ViT-B/32-sized grid) and measures:

1. training words/s (target tokens per second, as fairseq-train's ``wps``) after warm-up of
   ``m3p_transformer`` with every fusion, with and without MMCL / MDropNet, divided by that of
   fairseq's ``transformer`` with the same dimensions, trained with ``--task translation`` on
   the same en-de sentences;
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
import cProfile
import ctypes
import gc
import json
import logging
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

warnings.filterwarnings("ignore", message=".*pin_memory.*")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")

import numpy as np  # noqa: E402
import torch  # noqa: E402

BASELINE = "transformer"
LANGS = ("en", "de")


@dataclass(frozen=True)
class ModelConfig:
    """One row of the table: what is trained, with which options."""
    name: str
    fusion: Optional[str]  # None: fairseq's transformer with --task translation (the baseline)
    mmcl: bool = False
    mdropnet: bool = False

    def train_options(self) -> List[str]:
        if self.fusion is None:
            return ["--task", "translation", "--arch", "transformer", "--share-all-embeddings",
                    "--criterion", "label_smoothed_cross_entropy"]
        options = ["--task", "multimodal_translation", "--arch", "m3p_transformer", "--fusion", self.fusion]
        options += (["--criterion", "m3p_loss", "--mmcl-weight", "0.1"] if self.mmcl
                    else ["--criterion", "label_smoothed_cross_entropy"])
        options += (["--mdropnet-text-only", "0.25", "--mdropnet-image-only", "0.25"] if self.mdropnet
                    else ["--mdropnet-text-only", "0", "--mdropnet-image-only", "0"])
        return options


def _configs() -> List[ModelConfig]:
    configs = [ModelConfig(BASELINE, None), ModelConfig("m3p none", "none")]
    for fusion in ("gated", "concat", "selective", "cvlm"):
        configs.append(ModelConfig(f"m3p {fusion}", fusion))
        if fusion == "cvlm":
            configs += [ModelConfig("m3p cvlm +MMCL", fusion, mmcl=True),
                        ModelConfig("m3p cvlm +MDropNet", fusion, mdropnet=True)]
        configs.append(ModelConfig(f"m3p {fusion} +MMCL +MDropNet", fusion, mmcl=True, mdropnet=True))
    return configs


CONFIGS = {config.name: config for config in _configs()}
SWEEP_CONFIGS = [BASELINE, "m3p cvlm +MMCL +MDropNet"]
TARGET_CONFIG = "m3p cvlm +MMCL"  # the training target: CVLM with MMCL
KEY_CONFIGS = [BASELINE, TARGET_CONFIG, "m3p cvlm +MMCL +MDropNet"]


@dataclass
class Settings:
    # data: synthetic captions (make_synthetic_corpus), one direction
    train_sentences: int = 1000
    test_sentences: int = 200
    num_patches: int = 49  # CLIP ViT-B/32 at 224 px
    feature_dim: int = 768
    # model: the same dimensions for the baseline and m3P
    embed_dim: int = 256
    ffn_dim: int = 1024
    heads: int = 4
    layers: int = 3  # encoder and decoder each
    # training
    batch_size: int = 32  # sentences per update
    sweep_batch_sizes: List[int] = field(default_factory=lambda: [8, 16, 32, 64])
    warmup_steps: int = 2
    timed_steps: int = 6
    # generation
    gen_batch_size: int = 20
    gen_batches: int = 2
    gen_length: int = 20
    beam: int = 5
    # protocol: every row once, the key rows (KEY_CONFIGS) in this many rounds in all
    repeats: int = 1
    key_repeats: int = 3
    sweep_repeats: int = 1
    threads: int = 1
    # reader: generated feature files of these sizes; every image read once, in random order
    reader_sizes: List[int] = field(default_factory=lambda: [1000, 10000, 50000])
    reader_patches: int = 49
    reader_dim: int = 512


TINY = Settings(train_sentences=40, test_sentences=12, num_patches=4, feature_dim=16, embed_dim=32,
                ffn_dim=64, heads=2, layers=1, batch_size=4, sweep_batch_sizes=[2, 4], warmup_steps=1,
                timed_steps=2, gen_batch_size=4, gen_batches=1, gen_length=4, repeats=1, key_repeats=2, sweep_repeats=1,
                reader_sizes=[50, 100, 200], reader_patches=4, reader_dim=16)


# ---- measuring -------------------------------------------------------------------------------
def _proc_status_mib(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    """Resident set size of this process now (Linux /proc)."""
    rss = _proc_status_mib("VmRSS")
    return rss if rss is not None else peak_rss_mib()


def peak_rss_mib() -> float:
    """High-water mark of the resident set since the last :func:`reset_peak_rss`."""
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release_memory() -> float:
    """Free what earlier runs of this process left behind, restart the peak-RSS count (Linux:
    ``clear_refs`` 5 resets VmHWM) and return the RSS now: the start of a run's memory growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand glibc's freed heap back to the OS
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return current_rss_mib()


class Clock:
    """Wall-clock and CPU seconds (all threads of the process) of a span of work. On a shared
    machine the CPU time is the work itself; the wall time also holds the waits for a core."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        _synchronize()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _synchronize()
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_round(job: dict) -> List[dict]:
    """One round: every (configuration, batch size) of the job, in its order, in this process."""
    import m3p_fairseq  # noqa: F401  (registers the task and model)

    logging.disable(logging.WARNING)  # fairseq's INFO/DEBUG lines would flood the log
    torch.set_num_threads(job["threads"])
    # The first training and generation in a process pay one-off costs (lazy imports, kernel
    # and allocator set-up) that would be charged to whichever run comes first: pay them here.
    model_run(job, {**job["runs"][0], "generate": True}, steps=2)
    return [model_run(job, run) for run in job["runs"]]


def model_run(job: dict, run: dict, steps: Optional[int] = None) -> dict:
    """Train one configuration on the job's fixed batches, then (optionally) generate."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    config = CONFIGS[run["config"]]
    s = job["settings"]
    rss_start = release_memory()
    argv = [job["baseline_dir"] if config.fusion is None else job["data_dir"], *config.train_options(),
            "--source-lang", LANGS[0], "--target-lang", LANGS[1],
            "--encoder-embed-dim", s["embed_dim"], "--encoder-ffn-embed-dim", s["ffn_dim"],
            "--encoder-attention-heads", s["heads"], "--encoder-layers", s["layers"],
            "--decoder-embed-dim", s["embed_dim"], "--decoder-ffn-embed-dim", s["ffn_dim"],
            "--decoder-attention-heads", s["heads"], "--decoder-layers", s["layers"],
            "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "5e-4", "--seed", "1",
            "--batch-size", run["batch_size"], "--max-tokens", "100000", "--dataset-impl", "mmap",
            "--num-workers", "0"]
    if not torch.cuda.is_available():
        argv.append("--cpu")
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_training_parser(), input_args=[str(a) for a in argv]))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    train = task.dataset("train")
    train = getattr(train, "datasets", [train])[0]  # m3P: the en-de dataset inside the sampler
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    wall = cpu = 0.0
    tokens = 0
    steps = steps or s["warmup_steps"] + s["timed_steps"]
    batches = fixed_batches(s["train_sentences"], run["batch_size"], steps, seed=1)
    # CPU time, not wall time: on a shared machine a preemption would land on a random function
    profiler = cProfile.Profile(time.process_time) if run.get("profile") else None
    data_cpu = 0.0
    for step, ids in enumerate(batches):
        timed = step >= min(s["warmup_steps"], steps - 1)
        if profiler is not None and timed:
            profiler.enable()
        with Clock() as clock:
            with Clock() as data_clock:
                sample = train.collater([train[i] for i in ids])
            trainer.train_step([sample])
        if profiler is not None and timed:
            profiler.disable()
        if timed:
            wall, cpu, tokens = wall + clock.wall, cpu + clock.cpu, tokens + int(sample["ntokens"])
            data_cpu += data_clock.cpu
    result = {
        "config": config.name, "batch_size": run["batch_size"], "round": job["round"],
        "train_wps": tokens / cpu, "train_wps_wall": tokens / wall, "train_tokens": tokens,
        "rss_start_mib": rss_start, "peak_rss_mib": peak_rss_mib(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    result["training_rss_growth_mib"] = result["peak_rss_mib"] - rss_start
    result["data_cpu_share"] = data_cpu / cpu  # reading features and collating, of the step's CPU time
    if profiler is not None:
        result["profile"] = profile_summary(profiler)
    if torch.cuda.is_available():
        result["cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if run["generate"]:
        result.update(_generation(task, model, s))
    return result


def _generation(task, model, s: dict) -> dict:
    from fairseq import utils
    from fairseq.dataclass.configs import GenerationConfig

    task.load_dataset("test")
    test = task.dataset("test")
    model.eval()
    # exactly gen_length steps for every sentence and model: no early EOS (min_len), forced EOS after
    generator = task.build_generator([model], GenerationConfig(
        beam=s["beam"], max_len_a=0, max_len_b=s["gen_length"], min_len=s["gen_length"]))
    wall = cpu = 0.0
    sentences = 0
    with torch.no_grad():
        for number in range(s["gen_batches"] + 1):  # the first batch warms up
            ids = list(range(number * s["gen_batch_size"], (number + 1) * s["gen_batch_size"]))
            sample = test.collater([test[i] for i in ids])
            if torch.cuda.is_available():
                sample = utils.move_to_cuda(sample)
            with Clock() as clock:
                outputs = task.inference_step(generator, [model], sample)
            lengths = {len(hypotheses[0]["tokens"]) for hypotheses in outputs}
            if lengths != {s["gen_length"] + 1}:  # + the forced EOS
                raise RuntimeError(f"generation lengths {lengths}, expected {s['gen_length'] + 1}")
            if number > 0:
                wall, cpu, sentences = wall + clock.wall, cpu + clock.cpu, sentences + len(ids)
    return {"gen_sentences_per_second": sentences / cpu, "gen_sentences_per_second_wall": sentences / wall}


def reader_round(job: dict) -> List[dict]:
    from m3p_fairseq.data.image_features import ImageFeatureStore

    torch.set_num_threads(1)
    return [reader_run(ImageFeatureStore, **run) for run in job["runs"]]


def reader_run(ImageFeatureStore, file_kind: str, path: str, num_images: int) -> dict:
    """Read every image of one generated file once, in random order, as a data-loader worker
    would: through ImageFeatureStore (HDF5) or from one .npy loaded into memory."""
    rss_start = release_memory()
    with Clock() as opening:
        if file_kind == "hdf5":
            store = ImageFeatureStore(path)
            rows = store.rows_for(_image_ids(num_images), path)  # as the task maps its id list
            read = store.read
        else:
            patches = np.load(path)  # the whole array in memory
            rows = np.arange(len(patches))

            def read(row):
                return torch.from_numpy(patches[row])
    order = np.random.default_rng(0).permutation(rows)
    checksum = 0.0
    with Clock() as reading:
        for row in order:
            image = read(int(row))
            checksum += float((image[0] if isinstance(image, tuple) else image)[0, 0])
    return {"kind": file_kind, "num_images": num_images, "open_seconds": opening.wall,
            "samples_per_second": len(order) / reading.cpu, "samples_per_second_wall": len(order) / reading.wall,
            "rss_start_mib": rss_start, "rss_growth_mib": current_rss_mib() - rss_start,
            "peak_rss_mib": peak_rss_mib(), "checksum": checksum}


def profile_summary(profiler: "cProfile.Profile", top: int = 18) -> dict:
    """The functions that take the most time: by own time (where the CPU goes, mostly torch's
    C++ ops) and, for the plugin's own functions, by cumulative time (what each part costs)."""
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, function), (_calls, calls, own, cumulative, _callers) in stats.stats.items():
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if path != "~" else "built-in"
        rows.append({"function": f"{where} {function}", "calls": calls, "own_seconds": own,
                     "cumulative_seconds": cumulative, "plugin": "m3p_fairseq" in path})
    return {"total_seconds": stats.total_tt,
            "by_own_time": sorted(rows, key=lambda r: -r["own_seconds"])[:top],
            "plugin_by_cumulative_time": sorted((r for r in rows if r["plugin"]),
                                                key=lambda r: -r["cumulative_seconds"])[:top]}


def profile_markdown(results: List[dict]) -> str:
    lines = []
    for r in results:
        profile = r["profile"]
        lines += [f"### {r['config']} (batch {r['batch_size']}): {profile['total_seconds']:.2f} s profiled, "
                  f"{100 * r['data_cpu_share']:.1f}% of the CPU time in reading and collating", "",
                  "| function (own time) | calls | own s | cumulative s |", "|---|---:|---:|---:|"]
        lines += [f"| {row['function']} | {row['calls']} | {row['own_seconds']:.3f} | {row['cumulative_seconds']:.3f} |"
                  for row in profile["by_own_time"]]
        if profile["plugin_by_cumulative_time"]:
            lines += ["", "| plugin function (cumulative time) | calls | own s | cumulative s |", "|---|---:|---:|---:|"]
            lines += [f"| {row['function']} | {row['calls']} | {row['own_seconds']:.3f} | {row['cumulative_seconds']:.3f} |"
                      for row in profile["plugin_by_cumulative_time"]]
        lines.append("")
    return "\n".join(lines)


WORKERS = {"model": model_round, "reader": reader_round}


def run_worker(job: dict) -> List[dict]:
    """``job`` in a fresh Python process (the same interpreter); its results are the last stdout line."""
    # A fixed mmap threshold (glibc raises it dynamically otherwise): large tensors freed by one
    # run go back to the OS, so the next run's memory growth starts from what it really holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
                             capture_output=True, text=True, cwd=str(REPO), env=env)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark worker ({job['worker']}) failed:\n{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


# ---- data --------------------------------------------------------------------------------------
def _image_ids(n: int) -> List[str]:
    return [f"img{i:07d}" for i in range(n)]


def write_random_features(path: Path, image_ids: List[str], num_patches: int, feature_dim: int,
                          seed: int, npy_path: Optional[Path] = None, chunk: int = 1000) -> None:
    """Random float16 features, written in chunks through the project's writer
    (and, when ``npy_path`` is given, the same patches as one .npy array)."""
    from m3p_fairseq.data.image_features import ImageFeatureWriter

    rng = np.random.default_rng(seed)
    block = rng.standard_normal((min(chunk, len(image_ids)), num_patches, feature_dim), dtype=np.float32)
    writer = ImageFeatureWriter(path, image_ids, num_patches, feature_dim, "float16",
                                attrs={"backbone": "random (benchmark)"})
    npy = (np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.float16,
                                     shape=(len(image_ids), num_patches, feature_dim))
           if npy_path is not None else None)
    for start in range(0, len(image_ids), chunk):
        n = min(chunk, len(image_ids) - start)
        # one random block, shifted per chunk: every image differs, at a fraction of the RNG's cost
        patches = (block[:n] + start / chunk).astype(np.float16)
        writer.write(patches, patches.mean(axis=1))
        if npy is not None:
            npy[start:start + n] = patches
    writer.close()
    if npy is not None:
        npy.flush()
        del npy


def prepare_data(work: Path, s: Settings) -> Dict[str, Path]:
    """The m3P data directory (preprocess.binarize + features) and the baseline's view of the
    same files under fairseq-preprocess names (dict.{en,de}.txt, train.en-de.{en,de}.bin/.idx)."""
    from m3p_fairseq.data.image_features import read_image_ids
    from preprocess.binarize import binarize
    from preprocess.make_synthetic_corpus import make_corpus

    raw, data, baseline = work / "raw", work / "data-bin", work / "data-bin-translation"
    if not (data / "image_features.h5").exists():
        make_corpus(raw, num_train=s.train_sentences, num_valid=1, num_test=s.test_sentences,
                    langs=list(LANGS), image_size=32, seed=1)
        binarize(raw, data, [LANGS], ["train", "test"], spm_vocab_size=1000)
        ids = [i for split in ("train", "test") for i in read_image_ids(raw / f"{split}.image_ids")]
        write_random_features(data / "image_features.h5", ids, s.num_patches, s.feature_dim, seed=0)
    baseline.mkdir(exist_ok=True)
    links = {f"dict.{lang}.txt": "dict.txt" for lang in LANGS}
    for split in ("train", "test"):
        for lang in LANGS:
            for ext in ("bin", "idx"):
                links[f"{split}.{LANGS[0]}-{LANGS[1]}.{lang}.{ext}"] = f"{split}.{lang}.{ext}"
    for name, target in links.items():
        if not (baseline / name).exists():
            (baseline / name).symlink_to((data / target).resolve())
    return {"data_dir": data, "baseline_dir": baseline}


def fixed_batches(num_sentences: int, batch_size: int, count: int, seed: int) -> List[List[int]]:
    """``count`` batches of sentence ids, drawn without repetition until the corpus is used up."""
    rng = np.random.default_rng(seed)
    order: List[int] = []
    while len(order) < batch_size * count:
        order += rng.permutation(num_sentences).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]


# ---- the protocol ----------------------------------------------------------------------------
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
        write_random_features(h5, _image_ids(n), s.reader_patches, s.reader_dim, seed=n, npy_path=npy)
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


# ---- reporting -------------------------------------------------------------------------------
def _spread(values: List[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


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


def markdown_tables(report: dict) -> str:
    s = report["settings"]
    main = [r for r in report["model_runs"] if r["batch_size"] == s["batch_size"]]
    train_ratio = ratios(main, "train_wps", s["batch_size"])
    gen_ratio = ratios(main, "gen_sentences_per_second", s["batch_size"])
    lines = [
        f"Training at {s['batch_size']} sentences per update, {s['timed_steps']} timed updates after "
        f"{s['warmup_steps']} warm-up; beam {s['beam']} generation of {s['gen_batches']} batches of "
        f"{s['gen_batch_size']} sentences, {s['gen_length']} steps each; every row in {s['repeats']} round(s), "
        f"the key rows ({', '.join(KEY_CONFIGS)}) in {s['key_repeats']} interleaved rounds: median (min–max over rounds). Words/s and sentences/s are per CPU second of the run's process "
        f"({s['threads']} torch thread(s)); results.json also holds the wall-clock rates.",
        "",
        "| model | parameters | train words/s | train ratio | generation sent/s | generation ratio "
        "| training peak RSS growth, MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CONFIGS:
        runs = [r for r in main if r["config"] == name]
        if not runs:
            continue
        lines.append(
            f"| {name} | {runs[0]['num_parameters'] / 1e6:.2f} M | {_spread([r['train_wps'] for r in runs], 0)} "
            f"| {_spread(train_ratio[name], 3)} "
            f"| {_spread([r['gen_sentences_per_second'] for r in runs], 2)} | {_spread(gen_ratio[name], 3)} "
            f"| {_spread([r['training_rss_growth_mib'] for r in runs], 0)} |")
    lines += ["", "Training words/s against batch size (sentences per update):", "",
              "| model | " + " | ".join(str(b) for b in report["sweep_batch_sizes"]) + " |",
              "|---|" + "---:|" * len(report["sweep_batch_sizes"])]
    sweep = sweep_points(report)
    for name, points in sweep.items():
        lines.append(f"| {name} | " + " | ".join(_spread(points[b], 0) for b in report["sweep_batch_sizes"]) + " |")
    lines += ["", f"Feature reader: every image of a generated file read once in random order, one process "
              f"({s['reader_patches']} × {s['reader_dim']} float16 patches per image).", "",
              "| reader | images | features, MiB | open or load, s | samples/s | samples/s (wall) | RSS growth, MiB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["reader_runs"]:
        size = r["num_images"] * s["reader_patches"] * s["reader_dim"] * 2 / 2 ** 20
        label = "ImageFeatureStore (HDF5)" if r["kind"] == "hdf5" else "one .npy, np.load"
        lines.append(f"| {label} | {r['num_images']} | {size:.0f} | {r['open_seconds']:.2f} "
                     f"| {r['samples_per_second']:.0f} | {r['samples_per_second_wall']:.0f} | {r['rss_growth_mib']:.1f} |")
    lines += ["", targets_table(report, train_ratio, gen_ratio)]
    return "\n".join(lines) + "\n"


def targets_table(report: dict, train_ratio, gen_ratio) -> str:
    rows = []
    if TARGET_CONFIG in train_ratio:
        rows.append(("training ratio, CVLM + MMCL", ">= 0.90", median(train_ratio[TARGET_CONFIG]),
                     lambda v: v >= 0.90, 3))
    if TARGET_CONFIG in gen_ratio:
        rows.append(("generation ratio, CVLM + MMCL", ">= 0.95", median(gen_ratio[TARGET_CONFIG]),
                     lambda v: v >= 0.95, 3))
    m3p_rows = [name for name in gen_ratio if name != BASELINE]
    if m3p_rows:
        worst = min(m3p_rows, key=lambda name: median(gen_ratio[name]))
        rows.append((f"generation ratio, lowest m3P row ({worst})", ">= 0.95", median(gen_ratio[worst]),
                     lambda v: v >= 0.95, 3))
    readers = {(r["kind"], r["num_images"]): r for r in report["reader_runs"]}
    sizes = report["settings"]["reader_sizes"]
    if readers:
        growth = readers[("hdf5", sizes[-1])]["rss_growth_mib"] - readers[("hdf5", sizes[0])]["rss_growth_mib"]
        rows.append((f"reader RSS growth, {sizes[0]} -> {sizes[-1]} images, MiB", "< 200 MB (190.7 MiB)",
                     growth, lambda v: v < 200e6 / 2 ** 20, 1))
        rows.append(("reader samples/s per worker, slowest file", ">= 5000",
                     min(readers[("hdf5", n)]["samples_per_second"] for n in sizes), lambda v: v >= 5000, 0))
    lines = ["| target | goal | measured (median) | met |", "|---|---|---:|---|"]
    for name, goal, value, met, digits in rows:
        lines.append(f"| {name} | {goal} | {value:.{digits}f} | {'yes' if met(value) else 'no'} |")
    return "\n".join(lines)


def sweep_points(report: dict) -> Dict[str, Dict[int, List[float]]]:
    points: Dict[str, Dict[int, List[float]]] = {}
    for r in report["model_runs"] + report["sweep_runs"]:
        if r["config"] in SWEEP_CONFIGS and r["batch_size"] in report["sweep_batch_sizes"]:
            points.setdefault(r["config"], {}).setdefault(r["batch_size"], []).append(r["train_wps"])
    return {name: points[name] for name in SWEEP_CONFIGS if name in points}


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
    figure.savefig(path, dpi=120)
    plt.close(figure)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--skip-reader", action="store_true", help="leave out the feature-reader part")
    parser.add_argument("--skip-sweep", action="store_true", help="leave out the batch-size sweep")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the benchmark: profile (cProfile) the training steps of --configs "
                             "and the baseline, one round, and write OUTPUT_DIR/profile.md")
    parser.add_argument("--from-results", type=Path,
                        help="only rewrite results.md and the plot from an earlier results.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(WORKERS[job["worker"]](job)))
        return
    if args.from_results:
        write_report(json.loads(args.from_results.read_text()), args.output_dir)
        return

    logging.basicConfig(level=logging.WARNING, force=True)
    s = replace(TINY if args.tiny else Settings())
    if args.repeats:
        s.repeats = args.repeats
    if args.key_repeats:
        s.key_repeats = args.key_repeats
    s.key_repeats = max(s.key_repeats, s.repeats)
    if args.threads:
        s.threads = args.threads
    names = [BASELINE] + [n.strip() for n in args.configs.split(",") if n.strip() and n.strip() != BASELINE]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {', '.join(CONFIGS)}")
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
        job = {"worker": "model", "round": 0, "settings": asdict(s), "threads": s.threads,
               "runs": [{"config": name, "batch_size": s.batch_size, "generate": False, "profile": True}
                        for name in names],
               "data_dir": str(paths["data_dir"]), "baseline_dir": str(paths["baseline_dir"])}
        text = f"Command: `{report['command']}`\n\n" + profile_markdown(run_worker(job))
        (args.output_dir / "profile.md").write_text(text)
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
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    print(write_report(report, args.output_dir))
    log(f"wrote {args.output_dir}/results.json, results.md, throughput_vs_batch_size.png")


def write_report(report: dict, output_dir: Path) -> str:
    output_dir.mkdir(parents=True, exist_ok=True)
    tables = markdown_tables(report)
    (output_dir / "results.md").write_text(
        f"Command: `{report['command']}`\n\nMachine: {report['machine']}\n\n{tables}")
    plot(report, output_dir / "throughput_vs_batch_size.png")
    return tables


if __name__ == "__main__":
    main()
