"""NLT (Eq. 12) and LE (Eqs. 13-15) against values worked out by hand."""

import math

import pytest
import torch

from m3p_fairseq.criterions.mla_losses import (
    LanguageExposureLoss,
    NativeLanguageTransferLoss,
    language_exposure_loss,
    native_transfer_loss,
)
from m3p_fairseq.data.mla_dataset import MlaDataError
from m3p_fairseq.models.mla_model import MLA_IMAGE, MLA_NATIVE, MLA_TEXT


class FixedOutputs(torch.nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, **net_input):
        return self.outputs


def sample(batch_size):
    return {"net_input": {"src_tokens": torch.zeros(batch_size, 3, dtype=torch.long)}, "ntokens": 3 * batch_size}


def test_nlt_is_mean_squared_distance():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    # ||s1 - t1||^2 = 1 + 4 = 5, ||s2 - t2||^2 = 9 + 16 = 25; Eq. 12: (5 + 25) / 2 = 15
    assert native_transfer_loss(s, t).item() == pytest.approx(30.0)
    criterion = NativeLanguageTransferLoss(task=None)
    loss, sample_size, log = criterion(FixedOutputs({MLA_TEXT: t, MLA_NATIVE: s}), sample(2))
    assert loss.item() / sample_size == pytest.approx(15.0)
    assert log["nsentences"] == 2 and log["ntokens"] == 6
    with pytest.raises(MlaDataError, match="needs native translations"):
        criterion(FixedOutputs({MLA_TEXT: t}), sample(2))


def test_le_is_symmetric_info_nce_with_cosine_and_temperature():
    t = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cosine ignores the lengths
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # cos(v_i, t_k) / tau: v1 -> (2, 0), v2 -> (1.2, 1.6)
    # L_v2t: -log softmax over texts: log(1 + e^-2) for v1, log(1 + e^(1.2-1.6)) for v2
    v2t = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-0.4))) / 2
    # L_t2v: -log softmax over images: t1 sees (2, 1.2), t2 sees (0, 1.6)
    t2v = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2
    expected = 0.5 * (v2t + t2v)
    assert expected == pytest.approx(0.29874, abs=1e-5)
    total, correct = language_exposure_loss(t, v, tau)
    assert total.item() / 2 == pytest.approx(expected, rel=1e-6)
    assert correct == 4  # every text and every image ranks its partner first
    criterion = LanguageExposureLoss(task=None, temperature=tau)
    loss, sample_size, log = criterion(FixedOutputs({MLA_TEXT: t, MLA_IMAGE: v}), sample(2))
    assert loss.item() / sample_size == pytest.approx(expected, rel=1e-6)
    assert log["correct"] == 4


def test_le_defaults_to_paper_temperature_and_checks_inputs():
    assert LanguageExposureLoss(task=None).temperature == 0.01
    with pytest.raises(ValueError, match="temperature must be > 0"):
        LanguageExposureLoss(task=None, temperature=0.0)
    with pytest.raises(MlaDataError, match="needs image embeddings"):
        LanguageExposureLoss(task=None)(FixedOutputs({MLA_TEXT: torch.ones(2, 2)}), sample(2))


def test_le_gradient_flows_to_text_only():
    t = torch.randn(3, 4, requires_grad=True)
    v = torch.randn(3, 4)
    language_exposure_loss(t, v, 0.01)[0].backward()
    assert t.grad is not None and t.grad.abs().sum() > 0
