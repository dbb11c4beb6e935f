"""--criterion m3p_loss (Eq. 12): label-smoothed CE + lambda * MMCL, its normalisation and logs."""

import math

import pytest
import torch
from fairseq import metrics

from helpers import setup_task
from m3p_fairseq.criterions.m3p_loss import M3PLoss
from m3p_fairseq.criterions.mmcl import symmetric_info_nce


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
    logits, extra = model(**batch["net_input"], contrastive=True)
    ce, _ = criterion.compute_loss(model, (logits, extra), batch)
    pairs, _, _ = symmetric_info_nce(extra["mmcl_text"], extra["mmcl_image"], extra["mmcl_logit_scale"])
    assert sample_size == batch["ntokens"]
    torch.testing.assert_close(loss, ce + 0.5 * batch["ntokens"] * pairs.mean())
    torch.testing.assert_close(logs["mmcl_loss"], pairs.sum())
    assert logs["mmcl_pairs"] == 8 and 0 <= logs["mmcl_correct"] <= 16
    assert logs["mmcl_temperature"] == pytest.approx(0.1 * 8)


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
    pairs, _, _ = symmetric_info_nce(extra["mmcl_text"], extra["mmcl_image"], extra["mmcl_logit_scale"])
    pairs.sum().backward()
    assert model.encoder.text_encoder.layers[0].fc1.weight.grad.abs().sum() > 0
    assert model.encoder.image_encoder.projection.weight.grad.abs().sum() > 0
    assert model.decoder.layers[0].fc1.weight.grad is None  # MMCL does not touch the decoder


def test_augmented_view_negatives_enter_the_loss(data_dir):
    _, model, criterion, batch = criterion_and_batch(data_dir)
    plain, _, _ = criterion(model, batch)
    net_input = dict(batch["net_input"], image_negative_global=batch["net_input"]["image_global"].flip(0))
    with_views, _, _ = criterion(model, {**batch, "net_input": net_input})
    assert with_views > plain


def test_reduced_metrics(data_dir):
    _, model, criterion, batch = criterion_and_batch(data_dir, "--mmcl-weight", "1")
    logs = [criterion(model, batch)[2], criterion(model, batch)[2]]
    with metrics.aggregate() as aggregator:
        M3PLoss.reduce_metrics(logs)
        values = aggregator.get_smoothed_values()
    assert values["mmcl"] == pytest.approx(float(logs[0]["mmcl_loss"]) / 8 / math.log(2), abs=1e-3)
    assert values["mmcl_accuracy"] == pytest.approx(100 * logs[0]["mmcl_correct"] / 16, abs=0.01)
    assert values["mmcl_temperature"] == pytest.approx(0.1)
    ce_bits = float(logs[0]["nll_loss"]) / batch["ntokens"] / math.log(2)
    assert values["nll_loss"] == pytest.approx(ce_bits, abs=1e-3)
    # the logged loss is label-smoothed CE + lambda * mmcl, both in bits
    assert values["loss"] > values["mmcl"]


def test_text_only_model_with_mmcl_is_refused(data_dir):
    task, cfg = setup_task(data_dir, "--criterion", "m3p_loss", "--fusion", "none")
    model = task.build_model(cfg.model)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(2)])
    with pytest.raises(ValueError, match="--mmcl-weight 0.1 needs a model that reads images"):
        task.build_criterion(cfg.criterion)(model, batch)
