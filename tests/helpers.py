"""What several test files share: the tiny data's constants, a random feature file, and the task
and model set up exactly as fairseq's CLIs do. Fixtures live in conftest.py; import these with
``from helpers import ...`` (pytest puts tests/ on sys.path, as it is the rootdir of no package)."""

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.configs import GenerationConfig
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import m3p_fairseq  # noqa: F401  (registers the task and models)
from m3p_fairseq.data.random_features import write_random_features  # noqa: F401  (shared with the benchmark)
from m3p_fairseq.models.fusion import ConditionalVisionLanguageMemory

REPO = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "fr"]
PAIRS = [("en", "de"), ("de", "en"), ("en", "fr")]
FEATURE_DIM = 16
NUM_PATCHES = 4

# Multi30k is not redistributable: the tests read the machine's copy (or $MULTI30K) in place.
MULTI30K_CANDIDATES = [Path(p) for p in filter(None, [os.environ.get("MULTI30K")])] + [
    REPO.parent / "shared" / "data" / "multi30k",
]


def multi30k_dir() -> Path:
    """The machine's Multi30k copy. Without one a test is skipped on a developer's machine and
    FAILS under CI (CI=true), where the copy is always laid beside the clone: a CI run that
    silently skipped the real-data tests would pass without testing them."""
    found = next((path for path in MULTI30K_CANDIDATES if (path / "raw").is_dir()), None)
    if found is None:
        message = f"no Multi30k copy (a folder with raw/) in {', '.join(map(str, MULTI30K_CANDIDATES))}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: the real-data tests must run)", pytrace=False)
        pytest.skip(message)
    return found


def as_if_trained(model):
    """A fresh CVLM ignores the image by design (zero output projection); give it random
    weights there, as training would, so tests can see the image's effect."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, ConditionalVisionLanguageMemory):
            out_proj = module.attention.out_proj
            out_proj.weight.data = torch.randn(out_proj.weight.shape, generator=generator) * out_proj.in_features ** -0.5
    return model


def parse_train_args(argv):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[str(a) for a in argv])
    return convert_namespace_to_omegaconf(args)


def setup_task(data, *extra, lang_pairs="en-de,de-en,en-fr", arch="m3p_transformer_tiny"):
    cfg = parse_train_args([data, "--task", "multimodal_translation", "--lang-pairs", lang_pairs,
                            "--arch", arch, *extra])
    return tasks.setup_task(cfg.task), cfg


def import_script(path: Path):
    """A script that is not a package module (scripts/, examples/), imported from its file without
    putting its folder on sys.path; registered in sys.modules under its stem, as its own
    sibling imports (examples/multi30k/train.py: ``from prepare import``) expect."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


# --- the m3p_loss worked out by hand (Python floats), for test_m3p_loss and test_end_to_end ---
def cross_entropy_by_hand(logits, target, pad, epsilon=0.1):
    """(label-smoothed CE, plain NLL), summed over the non-padding target tokens. The smoothed
    target puts 1 - epsilon on the reference token and epsilon / (V - 1) on each other one."""
    smoothed = nll = 0.0
    for row, reference in zip(logits.double().reshape(-1, logits.size(-1)).tolist(), target.reshape(-1).tolist()):
        if reference == pad:
            continue
        log_z = math.log(sum(math.exp(v - max(row)) for v in row)) + max(row)
        log_probs = [v - log_z for v in row]
        nll -= log_probs[reference]
        others = sum(log_probs) - log_probs[reference]
        smoothed -= (1 - epsilon) * log_probs[reference] + epsilon / (len(row) - 1) * others
    return smoothed, nll


def mmcl_by_hand(extra, with_views=False, image_ids=None):
    """Per pair, Eqs. 4-6 with the texts of one image as its positives (``image_ids``, default
    all distinct): text k against one column per distinct image (the log of the mean exp of
    that image's columns) and the augmented views of other images, plus image k against its own
    text and the texts of other images; and how many of the 2N retrievals rank a positive first."""
    scale = float(extra["mmcl_logit_scale"])
    text, image = extra["mmcl_text"].double().tolist(), extra["mmcl_image"].double().tolist()
    views = extra["mmcl_image_negatives"].double().tolist() if with_views else []
    n = len(text)
    ids = list(range(n)) if image_ids is None else [int(i) for i in image_ids]
    distinct = list(dict.fromkeys(ids))

    def dot(a, b):
        return scale * sum(x * y for x, y in zip(a, b))

    def log_sum_exp(scores):
        return math.log(sum(math.exp(v) for v in scores))

    losses, correct = [], 0
    for k in range(n):
        per_image_id = [log_sum_exp([dot(text[k], image[j]) for j in range(n) if ids[j] == g])
                        - math.log(ids.count(g)) for g in distinct]
        per_text = per_image_id + [dot(text[k], views[j]) for j in range(len(views)) if ids[j] != ids[k]]
        own = distinct.index(ids[k])
        negatives_of_image = [dot(image[k], text[j]) for j in range(n) if ids[j] != ids[k]]
        positive = dot(image[k], text[k])
        losses.append(log_sum_exp(per_text) - per_text[own] + log_sum_exp([positive] + negatives_of_image) - positive)
        all_texts = [dot(image[k], text[j]) for j in range(n)]
        correct += (max(range(len(per_text)), key=per_text.__getitem__) == own) + \
            (ids[max(range(n), key=all_texts.__getitem__)] == ids[k])
    return losses, correct


def by_hand(model, batch, mmcl_weight):
    """The criterion's loss, nll_loss and MMCL sums, worked out from the model's outputs."""
    with torch.no_grad():
        logits, extra = model(**batch["net_input"], contrastive=True)
    smoothed, nll = cross_entropy_by_hand(logits, batch["target"], model.decoder.dictionary.pad())
    image_rows = batch["net_input"].get("image_row")
    losses, correct = mmcl_by_hand(extra, with_views="mmcl_image_negatives" in extra,
                                   image_ids=None if image_rows is None else image_rows.tolist())
    mean_mmcl = sum(losses) / len(losses)
    return {"loss": smoothed + mmcl_weight * batch["ntokens"] * mean_mmcl, "smoothed": smoothed, "nll": nll,
            "mmcl_sum": sum(losses), "mmcl_mean": mean_mmcl, "correct": correct}


def generate(task, model, dataset, indices, beam=5):
    """Beam search on the given examples of ``dataset``: {example id: hypothesis tokens}. To ask
    every sentence's encoder for one MDropNet mode, pass ``through_mdropnet_path(dataset, mode)``."""
    generator = task.build_generator([model], GenerationConfig(beam=beam, max_len_b=12))
    batch = dataset.collater([dataset[i] for i in indices])
    with torch.no_grad():
        outputs = task.inference_step(generator, [model], batch)
    return {int(i): output[0]["tokens"].tolist() for i, output in zip(batch["id"], outputs)}


def assert_batch_equals_alone(task, model, dataset, indices):
    """Beam search over ``indices`` in one batch gives each sentence the hypothesis it gets alone,
    and the hypotheses depend on the input (not one output for every sentence)."""
    batched = generate(task, model, dataset, indices)
    alone = {}
    for i in indices:
        alone.update(generate(task, model, dataset, [i]))
    assert batched == alone
    assert len({tuple(tokens) for tokens in batched.values()}) > 1


def assert_epoch_workers_exit(task, dataset, **batching):
    """Three epochs through fairseq's iterators, one data-loader worker each: each epoch's worker
    exits with it. The tasks build a new iterator every epoch, and fairseq's iterator and its batch
    sampler refer to each other, so a persistent worker lived on until the cycle collector ran
    (dozens in a quickstart run). gc is off here, as it is in effect between its rare full
    collections; data_buffer_size is fairseq-train's --data-buffer-size default."""
    import gc
    import multiprocessing
    import time

    assert task.cfg.persistent_workers is False
    gc.disable()
    try:
        for epoch in (1, 2, 3):
            epoch_itr = task.get_batch_iterator(dataset, num_workers=1, epoch=epoch, data_buffer_size=10, **batching)
            assert sum(1 for _ in epoch_itr.next_epoch_itr(shuffle=True)) > 1
            deadline = time.time() + 20
            while multiprocessing.active_children() and time.time() < deadline:
                time.sleep(0.1)
            assert multiprocessing.active_children() == [], f"epoch {epoch}'s worker is still alive"
    finally:
        gc.enable()
