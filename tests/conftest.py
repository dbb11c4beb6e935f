"""Fixtures: a tiny binarized multimodal data directory built with the project's own
preprocessing. The helpers the tests share are in helpers.py."""

import shutil
from pathlib import Path

import pytest

from helpers import PAIRS, multi30k_dir, write_random_features
from m3p_fairseq.data.image_features import read_image_ids
from preprocess.binarize import binarize
from preprocess.make_synthetic_corpus import make_corpus
from preprocess.write_synthetic_tags import write_synthetic_tags


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


@pytest.fixture(scope="session")
def tagged_data(tmp_path_factory, data_dir, raw_corpus) -> Path:
    """data_dir with object tags in its feature file: each scene's true colour and shape words."""
    data = tmp_path_factory.mktemp("tagged") / "data-bin"
    shutil.copytree(data_dir, data)
    write_synthetic_tags(raw_corpus, data / "image_features.h5", ["train", "valid", "test"])
    return data


@pytest.fixture
def data_copy(tmp_path, data_dir) -> Path:
    """A private copy of the data directory, for tests that break it."""
    copy = tmp_path / "data-bin"
    shutil.copytree(data_dir, copy)
    return copy


@pytest.fixture(scope="session")
def multi30k() -> Path:
    """The machine's Multi30k copy: skipped without one, failed under CI=true (helpers.multi30k_dir)."""
    return multi30k_dir()
