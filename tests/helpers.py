"""What several test files share: the tiny data's constants, a random feature file, and the task
and model set up exactly as fairseq's CLIs do. Fixtures live in conftest.py; import these with
``from helpers import ...`` (pytest puts tests/ on sys.path, as it is the rootdir of no package)."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import m3p_fairseq  # noqa: F401  (registers the task and models)
from m3p_fairseq.data.image_features import ImageFeatureWriter
from m3p_fairseq.models.fusion import ConditionalVisionLanguageMemory

REPO = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "fr"]
PAIRS = [("en", "de"), ("de", "en"), ("en", "fr")]
FEATURE_DIM = 16
NUM_PATCHES = 4

# Multi30k is not redistributable: the tests read the machine's copy (or $MULTI30K) in place.
MULTI30K_CANDIDATES = [Path(p) for p in filter(None, [os.environ.get("MULTI30K")])] + [
    REPO.parent / "shared" / "data" / "multi30k",
    Path("/work/shared/data/multi30k"),
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


def write_random_features(path: Path, image_ids, num_patches=NUM_PATCHES, feature_dim=FEATURE_DIM, seed=0,
                          num_views=0):
    rng = np.random.default_rng(seed)
    n = len(image_ids)
    writer = ImageFeatureWriter(path, image_ids, num_patches, feature_dim, "float32", num_views=num_views)
    views = {}
    if num_views:
        views = {"view_patches": rng.standard_normal((n, num_views, num_patches, feature_dim)).astype("float32"),
                 "view_global": rng.standard_normal((n, num_views, feature_dim)).astype("float32")}
    writer.write(rng.standard_normal((n, num_patches, feature_dim)).astype("float32"),
                 rng.standard_normal((n, feature_dim)).astype("float32"), **views)
    writer.close()


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
