"""Shared fixtures: a tiny binarized multimodal data directory built with the project's own
preprocessing, and helpers to set up the task and model exactly as fairseq's CLIs do."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # preprocess/ and scripts/ are run from the repository root

import m3p_fairseq  # noqa: E402,F401  (registers the task and models)
from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

from m3p_fairseq.data.image_features import read_image_ids  # noqa: E402
from m3p_fairseq.data.random_features import write_random_features  # noqa: E402,F401  (re-exported)
from m3p_fairseq.models.fusion import ConditionalVisionLanguageMemory  # noqa: E402
from preprocess.binarize import binarize  # noqa: E402
from preprocess.make_synthetic_corpus import make_corpus  # noqa: E402

LANGS = ["en", "de", "fr"]
PAIRS = [("en", "de"), ("de", "en"), ("en", "fr")]
FEATURE_DIM = 16
NUM_PATCHES = 4


@pytest.fixture(scope="session")
def raw_corpus(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    make_corpus(raw, num_train=60, num_valid=12, num_test=40, langs=["en", "de", "fr", "cs"], image_size=48, seed=3)
    return raw


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, raw_corpus) -> Path:
    """Multi-way binarized splits (train/valid/test) of en, de, fr with random image features."""
    data = tmp_path_factory.mktemp("data-bin")
    binarize(raw_corpus, data, PAIRS, ["train", "valid", "test"], spm_vocab_size=200,
             spm_user_defined_symbols=["[MASK]"])
    ids = [i for split in ("train", "valid", "test") for i in read_image_ids(raw_corpus / f"{split}.image_ids")]
    write_random_features(data / "image_features.h5", ids)
    return data


@pytest.fixture
def data_copy(tmp_path, data_dir) -> Path:
    """A private copy of the data directory, for tests that break it."""
    copy = tmp_path / "data-bin"
    shutil.copytree(data_dir, copy)
    return copy


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
