"""--criterion m3p_loss (Eq. 12): label-smoothed CE + lambda * MMCL, its normalisation and logs.
Expected values are worked out here from the model's outputs with Python floats, not with the
criterion's own functions."""

import math

import pytest
import torch
from fairseq import metrics

from helpers import by_hand, setup_task
from m3p_fairseq.criterions.m3p_loss import M3PLoss


def criterion_and_batch(data_dir, *extra):
    task, cfg = setup_task(data_dir, "--criterion", "m3p_loss", "--label-smoothing", "0.1",
                           "--dropout", "0", "--mdropnet-text-only", "0", "--mdropnet-image-only", "0", *extra)
    model = task.build_model(cfg.model).eval()
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    return task, model, task.build_criterion(cfg.criterion), dataset.collater([dataset[i] for i in range(8)])


def test_loss_is_cross_entropy_plus_lambda_times_mean_mmcl_per_token(data_dir):
    task, model, criterion, batch = criterion_and_batch(data_dir, "--mmcl-weight", "0.5")
    loss, sample_size, logs = criterion(model, batch)
    expected = by_hand(model, batch, 0.5)
    assert sample_size == batch["ntokens"]
    assert float(loss.detach()) == pytest.approx(expected["loss"], rel=1e-5)
    assert float(logs["loss"]) == pytest.approx(expected["loss"], rel=1e-5)
    assert float(logs["nll_loss"]) == pytest.approx(expected["nll"], rel=1e-5)
    assert float(logs["mmcl_loss"]) == pytest.approx(expected["mmcl_sum"], rel=1e-5)
    assert logs["mmcl_pairs"] == 8 and logs["mmcl_correct"] == expected["correct"]
    assert logs["mmcl_temperature"] == pytest.approx(0.1 * 8)


def test_contrastive_term_on_hand_made_embeddings():
    """Two orthogonal pairs at scale 10: each retrieval costs log(1 + e^-10); a view at cosine 0.6
    adds e^-4 to the other text's sum. The term is lambda * sample_size / N * the pairs' sum."""
    criterion = M3PLoss.__new__(M3PLoss)  # contrastive_loss needs only the weight, no task
    criterion.mmcl_weight = 0.5
    eye = torch.eye(2, dtype=torch.float64)
    extra = {"mmcl_text": eye, "mmcl_image": eye, "mmcl_logit_scale": torch.tensor(10.0, dtype=torch.float64)}
    term, logs = criterion.contrastive_loss(extra, sample_size=6)
    pair = 2 * math.log(1 + math.exp(-10))
    assert float(term) == pytest.approx(0.5 * 6 / 2 * 2 * pair, rel=1e-12)
    assert float(logs["mmcl_loss"]) == pytest.approx(2 * pair, rel=1e-12)
    assert logs["mmcl_pairs"] == 2 and logs["mmcl_correct"] == 4
    assert logs["mmcl_temperature"] == pytest.approx(0.1 * 2)

    views = torch.tensor([[0.8, 0.6], [0.6, 0.8]], dtype=torch.float64)  # each text meets the other's view at 0.6
    _, logs = criterion.contrastive_loss({**extra, "mmcl_image_negatives": views}, sample_size=6)
    pair = math.log(1 + math.exp(-10) + math.exp(-4)) + math.log(1 + math.exp(-10))
    assert float(logs["mmcl_loss"]) == pytest.approx(2 * pair, rel=1e-12)

    # a pair whose image was unusable is left out of MMCL altogether
    _, logs = criterion.contrastive_loss({**extra, "mmcl_usable": torch.tensor([True, False])}, sample_size=6)
    assert logs["mmcl_pairs"] == 1 and float(logs["mmcl_loss"]) == pytest.approx(0.0, abs=1e-12)


def test_weight_zero_is_plain_label_smoothed_cross_entropy_and_keeps_the_head_in_the_graph(data_dir):
    task, model, criterion, batch = criterion_and_batch(data_dir, "--mmcl-weight", "0")
    loss, _, _ = criterion(model, batch)
    plain = task.build_criterion(setup_task(data_dir, "--criterion", "label_smoothed_cross_entropy",
                                            "--label-smoothing", "0.1")[1].criterion)
    plain_loss, _, _ = plain(model, batch)
    torch.testing.assert_close(loss, plain_loss)
    loss.backward()
    head = model.contrastive_head
    assert head.text_projection.weight.grad is not None  # used (zero) under DistributedDataParallel
    assert head.text_projection.weight.grad.abs().sum() == 0


def test_mmcl_gradient_reaches_the_text_encoder_and_the_image_encoder(data_dir):
    _, model, criterion, batch = criterion_and_batch(data_dir, "--mmcl-weight", "1")
    logits, extra = model(**batch["net_input"], contrastive=True)
    term, _ = criterion.contrastive_loss(extra, batch["ntokens"])
    term.backward()
    assert model.encoder.text_encoder.layers[0].fc1.weight.grad.abs().sum() > 0
    assert model.encoder.image_encoder.projection.weight.grad.abs().sum() > 0
    assert model.decoder.layers[0].fc1.weight.grad is None  # MMCL does not touch the decoder


def test_augmented_view_negatives_enter_the_loss(data_dir):
    _, model, criterion, batch = criterion_and_batch(data_dir)
    plain, _, _ = criterion(model, batch)
    net_input = dict(batch["net_input"], image_negative_global=batch["net_input"]["image_global"].flip(0))
    with_views = {**batch, "net_input": net_input}
    loss, _, logs = criterion(model, with_views)
    expected = by_hand(model, with_views, 0.1)
    assert float(loss.detach()) == pytest.approx(expected["loss"], rel=1e-5)
    assert float(logs["mmcl_loss"]) == pytest.approx(expected["mmcl_sum"], rel=1e-5)
    assert loss > plain  # more negatives, higher loss


def test_reduced_metrics(data_dir):
    _, model, criterion, batch = criterion_and_batch(data_dir, "--mmcl-weight", "1")
    logs = [criterion(model, batch)[2], criterion(model, batch)[2]]
    with metrics.aggregate() as aggregator:
        M3PLoss.reduce_metrics(logs)
        values = aggregator.get_smoothed_values()
    expected = by_hand(model, batch, 1)
    bits = math.log(2)
    # the same batch twice: the means are those of one batch, in bits, rounded to 3 decimals
    assert values["mmcl"] == pytest.approx(expected["mmcl_mean"] / bits, abs=1e-3)
    assert values["mmcl_accuracy"] == pytest.approx(100 * expected["correct"] / 16, abs=0.01)
    assert values["mmcl_temperature"] == pytest.approx(0.1)
    assert values["nll_loss"] == pytest.approx(expected["nll"] / batch["ntokens"] / bits, abs=1e-3)
    # the logged loss is label-smoothed CE per token + lambda * mmcl, both in bits
    assert values["loss"] == pytest.approx(expected["smoothed"] / batch["ntokens"] / bits + expected["mmcl_mean"] / bits,
                                           abs=2e-3)


def test_text_only_model_with_mmcl_is_refused(data_dir):
    task, cfg = setup_task(data_dir, "--criterion", "m3p_loss", "--fusion", "none")
    model = task.build_model(cfg.model)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(2)])
    with pytest.raises(ValueError, match="--mmcl-weight 0.1 needs a model that reads images"):
        task.build_criterion(cfg.criterion)(model, batch)


@pytest.mark.parametrize("smoothing, warns", [(None, True), ("0.1", False)])
def test_no_label_smoothing_warns_that_the_paper_uses_0_1(data_dir, caplog, smoothing, warns):
    options = [] if smoothing is None else ["--label-smoothing", smoothing]
    task, cfg = setup_task(data_dir, "--criterion", "m3p_loss", *options)
    with caplog.at_level("WARNING", logger="m3p_fairseq.criterions.m3p_loss"):
        criterion = task.build_criterion(cfg.criterion)
    assert criterion.eps == (0.0 if smoothing is None else 0.1)
    messages = [r.getMessage() for r in caplog.records if r.name == "m3p_fairseq.criterions.m3p_loss"]
    assert messages == (["--criterion m3p_loss without --label-smoothing: the paper trains with "
                         "--label-smoothing 0.1 (Eq. 12's L_m is label-smoothed)"] if warns else [])
