"""The VLP-MMT system (vlp-for-mmt-modality-loss.md): the modality loss (Eqs. 2-5), the
single-stream encoder with its decoder, two-stage training and beam search."""

import math

import pytest
import torch
from fairseq import optim
from fairseq.modules import MultiheadAttention

from helpers import assert_batch_equals_alone, setup_task
from m3p_fairseq.criterions.modality_loss import modality_loss, parse_lambda, parse_layers
from m3p_fairseq.data.batch_keys import (
    MODALITY_LAMBDA,
    MODALITY_LAYERS,
    MODALITY_TARGET,
    MODALITY_TEXT,
    MODALITY_VALID,
    MODALITY_VISUAL,
    OBJECT_TAGS,
    VISUAL_POSITIONS,
)
from m3p_fairseq.models.modality_attention import split_cross_attention

# ---- Eqs. 2-3 by hand -------------------------------------------------------------------------

def test_modality_loss_of_two_positions_by_hand():
    # j=1: h_x=(1,0), h_v=(1,1): cos = 1/sqrt(2); j=2: h_x=(0,1), h_v=(0,-2): cos = -1
    h_x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    h_v = torch.tensor([[[1.0, 1.0], [0.0, -2.0]]])
    mask = torch.tensor([[True, True]])
    expected = (1 - 1 / math.sqrt(2)) + (1 - (-1))
    assert modality_loss(h_x, h_v, mask, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert modality_loss(h_x, h_v, mask, 0.4).item() == pytest.approx(0.4 * expected, abs=1e-6)
    # per-token lambda_j (Eq. 5) and a padded position that must not count
    lambdas = torch.tensor([[0.25, 0.5]])
    assert modality_loss(h_x, h_v, mask, lambdas).item() == pytest.approx(
        0.25 * (1 - 1 / math.sqrt(2)) + 0.5 * 2, abs=1e-6)
    assert modality_loss(h_x, h_v, torch.tensor([[True, False]]), 1.0).item() == pytest.approx(
        1 - 1 / math.sqrt(2), abs=1e-6)


def test_modality_loss_is_zero_for_parallel_vectors():
    h_x = torch.randn(3, 4, 8)
    h_v = h_x * (torch.rand(3, 4, 1) * 5 + 0.1)  # same directions, other lengths
    assert modality_loss(h_x, h_v, torch.ones(3, 4, dtype=torch.bool), 0.4).item() == pytest.approx(0, abs=1e-5)


def identity_attention(width=2):
    attention = MultiheadAttention(width, 1, kdim=width, vdim=width, encoder_decoder_attention=True)
    with torch.no_grad():
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.weight.copy_(torch.eye(width))
            projection.bias.zero_()
    return attention


def test_split_attention_follows_eq_2_by_hand():
    # one query q = (1, 0); text keys/values (1,0), (0,1); visual keys/values (0,2), (2,0), a pad
    attention = identity_attention()
    query = torch.tensor([[[1.0, 0.0]]])  # [T=1, B=1, C=2]
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [2.0, 0.0], [9.0, 9.0]])[:, None, :]
    visual = torch.tensor([[False, False, True, True, True]])
    padding = torch.tensor([[False, False, False, False, True]])
    h_x, h_v, valid = split_cross_attention(attention, query, memory, padding, visual)
    scale = 1 / math.sqrt(2)
    # text: scores (1, 0) * scale -> weights a, 1-a
    a = math.exp(scale) / (math.exp(scale) + 1)
    assert h_x[0, 0].tolist() == pytest.approx([a, 1 - a], abs=1e-6)
    # visual: scores (0, 2) * scale -> weights b, 1-b on values (0,2), (2,0)
    b = 1 / (1 + math.exp(2 * scale))
    assert h_v[0, 0].tolist() == pytest.approx([2 * (1 - b), 2 * b], abs=1e-6)
    assert valid.tolist() == [True]
    cos = (a * 2 * (1 - b) + (1 - a) * 2 * b) / (math.hypot(a, 1 - a) * math.hypot(2 * (1 - b), 2 * b))
    assert modality_loss(h_x.transpose(0, 1), h_v.transpose(0, 1), torch.tensor([[True]]), 1.0).item() == \
        pytest.approx(1 - cos, abs=1e-6)


def test_sentence_without_usable_image_is_not_valid():
    attention = identity_attention()
    memory = torch.randn(4, 2, 2)
    visual = torch.tensor([[False, False, True, True]] * 2)
    padding = torch.tensor([[False, False, False, False], [False, False, True, True]])
    h_x, h_v, valid = split_cross_attention(attention, torch.randn(3, 2, 2), memory, padding, visual)
    assert valid.tolist() == [True, False]
    assert torch.isfinite(h_v).all()


def test_option_parsing():
    assert parse_layers("last", 6) == [5]
    assert parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("1,6", 6) == [0, 5]
    with pytest.raises(ValueError, match="layers 1..6"):
        parse_layers("7", 6)
    assert parse_lambda("learned") is None and parse_lambda("0.4") == 0.4
    with pytest.raises(ValueError, match="expected 'learned' or a number"):
        parse_lambda("big")


# ---- the model --------------------------------------------------------------------------------

VLP_ARGS = ["--arch", "vlp_mmt_tiny", "--encoder-layers", "2", "--decoder-layers", "2", "--dropout", "0",
            "--source-lang", "en", "--target-lang", "de"]


@pytest.fixture
def built(data_dir):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--criterion", "vlp_mmt_loss", lang_pairs="en-de")
    task.load_dataset("train")
    task.load_dataset("test")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, cfg, model, criterion


def batch_of(task, split, n=6):
    dataset = task.dataset(split)
    inner = getattr(dataset, "datasets", {"": dataset})
    dataset = next(iter(inner.values())) if isinstance(inner, dict) else inner[0]
    return dataset, dataset.collater([dataset[i] for i in range(n)])


def test_encoder_sequence_is_text_then_image(built):
    task, _, model, _ = built
    _, batch = batch_of(task, "test")
    net_input = batch["net_input"]
    out = model.encoder(**net_input)
    num_patches = net_input["image_patches"].size(1)
    visual = out[VISUAL_POSITIONS][0]
    assert visual.shape == (net_input["src_tokens"].size(0), net_input["src_tokens"].size(1) + num_patches)
    assert visual[:, -num_patches:].all() and not visual[:, :-num_patches].any()
    assert out["encoder_out"][0].size(-1) == model.decoder.embed_dim


def test_object_tags_reach_the_encoder_input(built):
    task, _, model, _ = built
    _, batch = batch_of(task, "test", 2)
    net_input = batch["net_input"]
    model.eval()
    d = task.source_dictionary
    tags = torch.tensor([[d.nspecial + 10, d.nspecial + 11]] * 2)  # two ordinary vocabulary entries
    with torch.no_grad():
        plain = model.encoder(**net_input)["encoder_out"][0]
        # built on data without tags (--object-tags auto -> no): tags given anyway are not read
        assert torch.equal(model.encoder(**net_input, **{OBJECT_TAGS: tags})["encoder_out"][0], plain)
        model.encoder.reads_object_tags = True
        tagged = model.encoder(**net_input, **{OBJECT_TAGS: tags})
        other = model.encoder(**net_input, **{OBJECT_TAGS: tags + torch.tensor([0, 5])})["encoder_out"][0]
    length = net_input["src_tokens"].size(1)
    assert tagged["encoder_out"][0].size(0) == plain.size(0) + 2
    # the text states see the tags (single stream): other tags, other text states
    assert not torch.allclose(tagged["encoder_out"][0][:length], other[:length])


def test_modality_outputs_and_criterion_terms(built):
    task, _, model, criterion = built
    _, batch = batch_of(task, "train")
    model.train()
    logits, extra = model(**batch["net_input"], **{MODALITY_LAYERS: [0, 1], MODALITY_TARGET: batch["target"]})
    target = batch["target"]
    assert len(extra[MODALITY_TEXT]) == 2 and extra[MODALITY_TEXT][0].shape == (*target.shape, model.decoder.embed_dim)
    assert extra[MODALITY_VALID].all()
    # the gate starts at 0: lambda_j = sigmoid(0) = 0.5 everywhere
    assert torch.allclose(extra[MODALITY_LAMBDA][1], torch.full(target.shape, 0.5))
    # the criterion's term is the hand formula over the non-padding targets
    mask = target.ne(task.target_dictionary.pad())
    criterion.fixed_lambda = 0.4
    term, logs = criterion.modality_term(extra, target)
    by_hand = sum(0.4 * ((1 - torch.cosine_similarity(x, v, dim=-1)) * mask).sum()
                  for x, v in zip(extra[MODALITY_TEXT], extra[MODALITY_VISUAL]))
    assert term.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert logs["modality_count"] == 2 * int(mask.sum())
    # and the whole loss is CE + that term
    criterion.fixed_lambda = 0
    torch.manual_seed(1)
    ce, _, _ = criterion(model, batch)
    criterion.fixed_lambda = 0.4
    criterion.layers_option = "1,2"
    torch.manual_seed(1)
    total, _, logging = criterion(model, batch)
    assert total.item() == pytest.approx(ce.item() + by_hand.item(), rel=1e-5)
    assert logging["modality_loss"] == pytest.approx(by_hand.item() / 0.4, rel=1e-5)


def test_stage_one_freezes_the_encoder_and_trains_the_decoder_query(data_dir):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--criterion", "vlp_mmt_loss", "--freeze-encoder",
                           "--optimizer", "adam", "--lr", "0.01", lang_pairs="en-de")
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    before = {name: p.detach().clone() for name, p in model.encoder.named_parameters()}
    _, batch = batch_of(task, "train")
    # the optimizer fairseq's trainer builds: over the parameters that require gradients
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.build_optimizer(cfg.optimizer, params)
    model.train()
    loss, _, _ = criterion(model, batch)
    optimizer.backward(loss)
    query = model.decoder.layers[-1].encoder_attn.q_proj.weight
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert model.decoder.modality_gate.weight.grad.abs().sum() > 0  # learned lambda trains
    assert model.encoder.to_decoder.weight.grad.abs().sum() > 0  # the new linear layer trains in stage 1
    optimizer.step()
    frozen = {name for name, p in model.encoder.named_parameters() if not p.requires_grad}
    assert frozen == {name for name in before if not name.startswith("to_decoder.")}
    for name in frozen:
        assert torch.equal(before[name], model.encoder.get_parameter(name)), name
        assert model.encoder.get_parameter(name).grad is None
    assert not torch.equal(before["to_decoder.weight"], model.encoder.to_decoder.weight)


def test_stage_two_trains_the_encoder(data_dir):
    torch.manual_seed(0)
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--criterion", "vlp_mmt_loss", "--optimizer", "adam",
                           "--lr", "0.01", lang_pairs="en-de")
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    assert all(p.requires_grad for p in model.parameters())
    _, batch = batch_of(task, "train")
    before = model.encoder.text_encoder.layers[0].self_attn.q_proj.weight.detach().clone()
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    loss, _, _ = criterion(model, batch)
    optimizer.backward(loss)
    optimizer.step()
    assert not torch.equal(before, model.encoder.text_encoder.layers[0].self_attn.q_proj.weight)


def test_beam_output_alone_equals_in_a_batch(built):
    task, _, model, _ = built
    model.eval()
    dataset = task.dataset("test")
    assert_batch_equals_alone(task, model, dataset, list(range(16)))


def test_other_criteria_and_bad_options(data_dir):
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--share-all-embeddings", lang_pairs="en-de")
    with pytest.raises(ValueError, match="drop --share-all-embeddings"):
        task.build_model(cfg.model)
    task, cfg = setup_task(data_dir, *VLP_ARGS, "--mdropnet-text-only", "0.2", lang_pairs="en-de")
    with pytest.raises(ValueError, match="mdropnet"):
        task.build_model(cfg.model)
    task, cfg = setup_task(data_dir, "--arch", "m3p_transformer_tiny", "--fusion", "none",
                           "--criterion", "vlp_mmt_loss", lang_pairs="en-de")
    task.load_dataset("valid")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    _, batch = batch_of(task, "valid", 2)
    with pytest.raises(ValueError, match="trains --arch vlp_mmt"):
        criterion(model, batch)
