import argparse
from fractions import Fraction

import numpy as np
import pytest
import torch

import m3p_fairseq  # noqa: F401  (registers the allow-list on import)


def test_fairseq_style_checkpoint_loads_with_weights_only(tmp_path):
    state = {
        "args": argparse.Namespace(arch="m3p_transformer_tiny", fusion="cvlm"),
        "extra_state": {"best": np.float64(3.5), "dtype": np.dtype("float32")},
        "model": {"w": torch.ones(2)},
    }
    torch.save(state, tmp_path / "checkpoint.pt")
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert loaded["args"].fusion == "cvlm"
    assert loaded["extra_state"]["best"] == 3.5
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_unlisted_classes_stay_refused(tmp_path):
    torch.save({"x": Fraction(1, 3)}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="weights_only"):
        torch.load(tmp_path / "bad.pt", weights_only=True)
