"""One round of the benchmark in this process: train (and generate with) each configuration of
a job on fixed batches, or read generated feature files. The harness starts every round as

    python -m m3p_fairseq.benchmark.worker JOB_JSON

in a fresh process, so that peak memory belongs to that round alone; the results are the last
line of stdout, as JSON.
"""

import cProfile
import json
import logging
import sys
import time
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..data.vocabulary import lang_tag
from .configs import CONFIGS, LANGS
from .measuring import Clock, current_rss_mib, peak_rss_mib, profile_summary, release_memory

warnings.filterwarnings("ignore", message=".*pin_memory.*")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")


def image_ids(n: int) -> List[str]:
    """The ids of the benchmark's generated feature files."""
    return [f"img{i:07d}" for i in range(n)]


def fixed_batches(num_sentences: int, batch_size: int, count: int, seed: int) -> List[List[int]]:
    """``count`` batches of sentence ids, drawn without repetition until the corpus is used up."""
    order = _each_once_before_repeating(list(range(num_sentences)), batch_size * count, np.random.default_rng(seed))
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]


def length_sorted_batches(lengths: List[Tuple[int, int]], batch_size: int, count: int,
                          seed: int) -> List[List[int]]:
    """``count`` batches as fairseq-train forms them: the sentences sorted by source, then target
    length (LanguagePairDataset.ordered_indices; ties in random order), cut into consecutive
    batches of ``batch_size``, drawn in random order. ``lengths``: (source, target) tokens of each
    sentence. Little padding, unlike :func:`fixed_batches`'s random sentences."""
    rng = np.random.default_rng(seed)
    sources, targets = np.array([s for s, _ in lengths]), np.array([t for _, t in lengths])
    order = rng.permutation(len(lengths))
    order = order[np.argsort(targets[order], kind="mergesort")]
    order = order[np.argsort(sources[order], kind="mergesort")]
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order) - batch_size + 1, batch_size)]
    if not batches:
        raise ValueError(f"{len(lengths)} sentences make no batch of {batch_size}")
    return _each_once_before_repeating(batches, count, rng)


def _each_once_before_repeating(items: list, count: int, rng: np.random.Generator) -> list:
    """``count`` draws from ``items``: random permutations of all of them, one after another."""
    drawn: list = []
    while len(drawn) < count:
        drawn += [items[i] for i in rng.permutation(len(items))]
    return drawn[:count]


def model_round(job: dict) -> List[dict]:
    """One round: every (configuration, batch size) of the job, in its order, in this process."""
    import m3p_fairseq  # noqa: F401  (registers the task and model)

    logging.disable(logging.WARNING)  # fairseq's INFO/DEBUG lines would flood the log
    torch.set_num_threads(job["threads"])
    # The first training and generation in a process pay one-off costs (lazy imports, kernel
    # and allocator set-up) that would be charged to whichever run comes first: pay them here.
    model_run(job, {**job["runs"][0], "generate": True}, steps=2)
    return [model_run(job, run) for run in job["runs"]]


def build_run(job: dict, config_name: str, batch_size: int):
    """The configuration's fairseq task (training set loaded) and model, built as fairseq-train
    would from the job's data directory."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    config = CONFIGS[config_name]
    s = job["settings"]
    argv = [job["baseline_dir"] if config.fusion is None else job["data_dir"], *config.train_options(),
            "--source-lang", LANGS[0], "--target-lang", LANGS[1],
            "--encoder-embed-dim", s["embed_dim"], "--encoder-ffn-embed-dim", s["ffn_dim"],
            "--encoder-attention-heads", s["heads"], "--encoder-layers", s["layers"],
            "--decoder-embed-dim", s["embed_dim"], "--decoder-ffn-embed-dim", s["ffn_dim"],
            "--decoder-attention-heads", s["heads"], "--decoder-layers", s["layers"],
            "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "5e-4", "--seed", "1",
            "--batch-size", batch_size, "--max-tokens", "100000", "--dataset-impl", "mmap",
            "--num-workers", "0"]
    if not torch.cuda.is_available():
        argv.append("--cpu")
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_training_parser(), input_args=[str(a) for a in argv]))
    task = tasks.setup_task(cfg.task)
    load_split(task, config, "train")
    return cfg, task, task.build_model(cfg.model)


def training_set(task):
    """The dataset that collates the training batches (for m3P, the en-de one inside the sampler)."""
    train = task.dataset("train")
    return getattr(train, "datasets", [train])[0]


def load_split(task, config, split: str) -> None:
    """Loads ``split``. The baseline's sources then start with the target-language tag, unless
    the configuration says otherwise: the m3P task tags them for every model (Eq. 2, as fairseq's
    ``--encoder-langtok tgt``), and so both read batches of exactly the same tokens."""
    from fairseq.data import PrependTokenDataset

    task.load_dataset(split)
    if config.fusion is None and config.source_tag:
        dataset = task.dataset(split)
        dataset.src = PrependTokenDataset(dataset.src, task.src_dict.index(lang_tag(LANGS[1])))
        dataset.src_sizes = dataset.src.sizes


def model_run(job: dict, run: dict, steps: Optional[int] = None) -> dict:
    """Train one configuration on the job's fixed batches, then (optionally) generate."""
    from fairseq.trainer import Trainer

    config = CONFIGS[run["config"]]
    s = job["settings"]
    rss_start = release_memory()
    cfg, task, model = build_run(job, run["config"], run["batch_size"])
    train = training_set(task)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    wall = cpu = 0.0
    tokens = 0
    steps = steps or s["warmup_steps"] + s["timed_steps"]
    if s["length_sorted_batches"]:
        batches = length_sorted_batches([train.size(i) for i in range(s["train_sentences"])], run["batch_size"],
                                        steps, seed=1)
    else:
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
        result.update(_generation(task, model, config, s))
    return result


def _generation(task, model, config, s: dict) -> dict:
    from fairseq import utils
    from fairseq.dataclass.configs import GenerationConfig

    load_split(task, config, "test")
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
            rows = store.rows_for(image_ids(num_images), path)  # as the task maps its id list
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


WORKERS = {"model": model_round, "reader": reader_round}


def main(argv=None) -> None:
    job = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(WORKERS[job["worker"]](job)))


if __name__ == "__main__":
    main()
