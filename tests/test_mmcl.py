"""MMCL (Eq. 4-6): the symmetric InfoNCE, its gradients, the augmented-view negatives and the
gathering of negatives across data-parallel workers (2 gloo processes)."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from helpers import setup_task
from m3p_fairseq.criterions.m3p_loss import M3PLoss
from m3p_fairseq.criterions.mmcl import gather_across_workers, symmetric_info_nce
from m3p_fairseq.models.contrastive_head import ContrastiveHead, mean_over_tokens


def reference_pair_losses(text, image, scale, image_negatives=None):
    """Eq. 5 + Eq. 6 written out with Python floats, pair by pair."""
    n = len(text)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    losses = []
    for k in range(n):
        text_candidates = [scale * dot(text[k], image[j]) for j in range(n)]
        if image_negatives is not None:
            text_candidates += [scale * dot(text[k], image_negatives[j]) for j in range(n) if j != k]
        image_candidates = [scale * dot(image[k], text[j]) for j in range(n)]
        f_text = -text_candidates[k] + math.log(sum(math.exp(v) for v in text_candidates))
        f_image = -image_candidates[k] + math.log(sum(math.exp(v) for v in image_candidates))
        losses.append(f_text + f_image)
    return losses


def test_identity_pairs_closed_form():
    # cosine 1 with the own partner and 0 with the others: each direction costs log(1 + 2 e^{-s})
    loss, text_ok, image_ok = symmetric_info_nce(torch.eye(3), torch.eye(3), torch.tensor(1 / 0.5))
    expected = 2 * math.log(1 + 2 * math.exp(-2.0))
    torch.testing.assert_close(loss, torch.full((3,), expected))
    assert text_ok.all() and image_ok.all()


def test_three_by_three_equals_hand_computation():
    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(3, 4, generator=generator, dtype=torch.float64), dim=-1)
    image = F.normalize(torch.randn(3, 4, generator=generator, dtype=torch.float64), dim=-1)
    views = F.normalize(torch.randn(3, 4, generator=generator, dtype=torch.float64), dim=-1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    loss, _, _ = symmetric_info_nce(text, image, scale)
    assert loss.tolist() == pytest.approx(reference_pair_losses(text.tolist(), image.tolist(), 1 / 0.07), rel=1e-12)
    loss, _, _ = symmetric_info_nce(text, image, scale, image_negatives=views)
    assert loss.tolist() == pytest.approx(
        reference_pair_losses(text.tolist(), image.tolist(), 1 / 0.07, views.tolist()), rel=1e-12)


def test_own_augmented_view_is_neither_positive_nor_negative():
    text = image = torch.eye(3)
    plain, _, _ = symmetric_info_nce(text, image, torch.tensor(10.0))
    # views identical to the clean images: each text meets 2 extra negatives (the others' views)
    with_views, _, _ = symmetric_info_nce(text, image, torch.tensor(10.0), image_negatives=image.clone())
    expected_text_side = math.log(1 + 4 * math.exp(-10.0))
    torch.testing.assert_close(with_views - plain, torch.full((3,), expected_text_side - math.log(1 + 2 * math.exp(-10.0))))


def test_aligned_pairs_cost_less_than_shuffled_pairs():
    generator = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(16, 32, generator=generator), dim=-1)
    text = F.normalize(image + 0.05 * torch.randn(16, 32, generator=generator), dim=-1)
    aligned, text_ok, image_ok = symmetric_info_nce(text, image, torch.tensor(10.0))
    shuffled, _, _ = symmetric_info_nce(text, image[torch.roll(torch.arange(16), 1)], torch.tensor(10.0))
    assert aligned.mean() < shuffled.mean() - 1.0
    assert text_ok.all() and image_ok.all()


def test_gradients_reach_both_projections_and_a_learned_temperature():
    head = ContrastiveHead(8, 6, temperature=0.1, learn_temperature=True, min_temperature=0.01)
    generator = torch.Generator().manual_seed(2)
    states, image_states = torch.randn(5, 4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    keep = torch.ones(4, 5, dtype=torch.bool)
    keep[0, :2] = False
    text = head.embed_text(mean_over_tokens(states, keep))
    loss, _, _ = symmetric_info_nce(text, head.embed_image(image_states), head.logit_scale())
    loss.sum().backward()
    for parameter in (head.text_projection.weight, head.image_projection.weight, head.log_logit_scale):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(4))


def test_temperature_floor_and_fixed_temperature():
    head = ContrastiveHead(8, 8, temperature=0.05, learn_temperature=True, min_temperature=0.02)
    with torch.no_grad():
        head.log_logit_scale.fill_(math.log(1000.0))
    assert head.logit_scale().item() == pytest.approx(50.0)
    fixed = ContrastiveHead(8, 8, temperature=0.1, learn_temperature=False, min_temperature=0.01)
    assert not any(p is fixed.log_logit_scale for p in fixed.parameters())
    assert fixed.logit_scale().item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="--mmcl-min-temperature"):
        ContrastiveHead(8, 8, temperature=0.01, learn_temperature=True, min_temperature=0.05)


def test_mean_pooling_ignores_excluded_positions():
    states = torch.arange(12, dtype=torch.float).view(3, 2, 2)  # [T=3, B=2, C=2]
    keep = torch.tensor([[True, False, True], [False, False, True]])
    torch.testing.assert_close(mean_over_tokens(states, keep), torch.stack([(states[0, 0] + states[2, 0]) / 2, states[2, 1]]))


# ---- two workers ---------------------------------------------------------------------------
SIZES = [3, 5]  # workers hold different numbers of sentences, as token-based batching gives
IMAGE_IDS = torch.tensor([4, 9, 4, 9, 1, 2, 3, 2])  # image 9 on both workers


def _all_data():
    generator = torch.Generator().manual_seed(3)
    text = F.normalize(torch.randn(sum(SIZES), 6, generator=generator, dtype=torch.float64), dim=-1)
    image = F.normalize(torch.randn(sum(SIZES), 6, generator=generator, dtype=torch.float64), dim=-1)
    return text, image


def _worker(rank, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    text, image = _all_data()
    start = sum(SIZES[:rank])
    local_text = text[start:start + SIZES[rank]].clone().requires_grad_()
    local_image = image[start:start + SIZES[rank]].clone().requires_grad_()
    joined, offset = gather_across_workers(torch.cat([local_text, local_image], dim=1))
    loss, _, _ = symmetric_info_nce(joined[:, :6], joined[:, 6:], torch.tensor(5.0, dtype=torch.float64))
    loss.sum().backward()
    # the same with image identities, repeated within and across the workers' rows
    ids, _ = gather_across_workers(IMAGE_IDS[start:start + SIZES[rank]])
    with_ids, _, _ = symmetric_info_nce(joined[:, :6], joined[:, 6:], torch.tensor(5.0, dtype=torch.float64),
                                        image_ids=ids)
    results[rank] = (offset, loss.detach(), local_text.grad, local_image.grad, ids, with_ids.detach())
    dist.destroy_process_group()


def test_negatives_gathered_across_two_workers_give_the_single_process_loss_and_gradient(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    text, image = _all_data()
    text.requires_grad_()
    image.requires_grad_()
    loss, _, _ = symmetric_info_nce(text, image, torch.tensor(5.0, dtype=torch.float64))
    loss.sum().backward()
    for rank in range(2):
        offset, worker_loss, text_grad, image_grad, ids, with_ids = results[rank]
        assert offset == sum(SIZES[:rank])
        torch.testing.assert_close(worker_loss, loss.detach())
        assert torch.equal(ids, IMAGE_IDS)
        torch.testing.assert_close(with_ids, symmetric_info_nce(text.detach(), image.detach(),
                                                                torch.tensor(5.0, dtype=torch.float64),
                                                                image_ids=IMAGE_IDS)[0])
        local = slice(offset, offset + SIZES[rank])
        torch.testing.assert_close(text_grad, text.grad[local])
        torch.testing.assert_close(image_grad, image.grad[local])


def test_gather_is_the_identity_without_distributed_training():
    x = torch.randn(4, 3)
    gathered, offset = gather_across_workers(x)
    assert gathered is x and offset == 0


def test_the_criterion_refuses_a_model_outside_the_plugin_clearly():
    with pytest.raises(ValueError, match="m3p_loss trains the plugin's multimodal models .* not Linear"):
        M3PLoss.model_supports_mmcl(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("arch, fusion, reads_images", [
    ("m3p_transformer_tiny", "cvlm", True), ("m3p_transformer_tiny", "none", False),
    ("m3p_decoder_only_tiny", "prefix", True), ("m3p_decoder_only_tiny", "none", False)])
def test_capabilities_of_each_model(data_dir, arch, fusion, reads_images):
    task, cfg = setup_task(data_dir, "--fusion", fusion, "--source-lang", "en", "--target-lang", "de", arch=arch)
    model = task.build_model(cfg.model)
    assert model.supports_mmcl is reads_images and M3PLoss.model_supports_mmcl(model) is reads_images
    assert model.image_feature_dim == (16 if reads_images else None)
    assert model.reads_source_language is (arch == "m3p_decoder_only_tiny")
    model.set_num_updates(7)
    assert model.num_updates == 7
    task.load_dataset("valid")
    batch = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(2)])
    if not reads_images:
        with pytest.raises(ValueError, match=r"MMCL needs a model that reads images: train with --fusion "
                                             + ("gated\\|concat\\|selective\\|cvlm" if "transformer" in arch
                                                else "prefix")):
            model(**batch["net_input"], contrastive=True)


# ---- the same image in several pairs (issue 16) --------------------------------------------
def _unit(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_repeated_image_by_hand_four_pairs():
    # pairs 0 and 1 show image 7 (two translations of one caption); 2 and 3 other images
    text_angles, image_angles, ids, s = [0, 30, 90, 180], [0, 0, 90, 200], [7, 7, 3, 9], 2.0
    text = torch.tensor([_unit(a) for a in text_angles], dtype=torch.float64)
    image = torch.tensor([_unit(a) for a in image_angles], dtype=torch.float64)
    c = lambda k, j: s * math.cos(math.radians(text_angles[k] - image_angles[j]))  # noqa: E731
    lse = lambda *values: math.log(sum(math.exp(v) for v in values))  # noqa: E731
    # text -> image: one column per distinct image (7, 3, 9); image 7 merged, not counted twice
    text_to_image = [-c(k, own) + lse(c(k, 0), c(k, 2), c(k, 3)) for k, own in enumerate([0, 0, 2, 3])]
    # image -> text: image 7 against its own text and the texts of images 3 and 9 only
    image_to_text = [-c(0, 0) + lse(c(0, 0), c(2, 0), c(3, 0)),
                     -c(1, 1) + lse(c(1, 1), c(2, 1), c(3, 1)),
                     -c(2, 2) + lse(c(0, 2), c(1, 2), c(2, 2), c(3, 2)),
                     -c(3, 3) + lse(c(0, 3), c(1, 3), c(2, 3), c(3, 3))]
    expected = [a + b for a, b in zip(text_to_image, image_to_text)]
    # the first pair in plain numbers: text 0 vs images 7, 3, 9 at s cos = 2, 0, 2 cos 200 = -1.879;
    # image 7 vs texts 0, 2, 3 at 2, 0, -2:  (-2 + log(e^2 + 1 + e^-1.879)) + (-2 + log(e^2 + 1 + e^-2))
    assert expected[0] == pytest.approx(0.1450 + 0.1429, abs=1e-4)
    loss, text_ok, image_ok = symmetric_info_nce(text, image, torch.tensor(s, dtype=torch.float64),
                                                 image_ids=torch.tensor(ids))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    # text 1 (30 deg) ranks image 7 first; image 7 (row 1) ranks text 0 first, a positive: both hits
    assert text_ok.tolist() == [True, True, True, True]
    assert image_ok.tolist() == [True, True, True, True]


def test_aligned_pairs_with_a_repeated_image_cost_nothing_and_are_hits():
    a, b = [1.0, 0.0], [0.0, 1.0]
    vectors = torch.tensor([a, a, b])
    # positions alone (the old labelling): the copy is its own negative, log 4 = 1.386 per pair
    old, old_text_ok, _ = symmetric_info_nce(vectors, vectors, torch.tensor(10.0))
    torch.testing.assert_close(old[:2], torch.full((2,), 2 * math.log(2 + math.exp(-10))), rtol=1e-4, atol=0)
    assert old_text_ok.tolist() == [True, False, True]
    for scale in (10.0, 30.0):
        loss, text_ok, image_ok = symmetric_info_nce(vectors, vectors, torch.tensor(scale, dtype=torch.float64),
                                                     image_ids=torch.tensor([4, 4, 1]))
        # pairs of a: one negative (b) each way; pair b: image b has the two texts of a as negatives
        one = math.log1p(math.exp(-scale))
        expected = [2 * one, 2 * one, one + math.log1p(2 * math.exp(-scale))]
        torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-3, atol=1e-12)
        assert text_ok.all() and image_ok.all()
    assert float(loss.max()) < 1e-12  # zero in the limit, as without the repeat:
    unrepeated, _, _ = symmetric_info_nce(torch.tensor([a, b]), torch.tensor([a, b]), torch.tensor(10.0))
    torch.testing.assert_close(unrepeated, torch.full((2,), 2 * math.log1p(math.exp(-10.0))))


def test_distinct_ids_give_the_plain_loss_exactly():
    generator = torch.Generator().manual_seed(5)
    text, image, views = (F.normalize(torch.randn(5, 4, generator=generator), dim=-1) for _ in range(3))
    plain = symmetric_info_nce(text, image, torch.tensor(7.0), views)
    with_ids = symmetric_info_nce(text, image, torch.tensor(7.0), views, image_ids=torch.tensor([9, 2, 5, 0, 7]))
    for x, y in zip(plain, with_ids):
        assert torch.equal(x, y)


def test_a_view_of_an_image_is_no_negative_for_any_text_of_that_image():
    generator = torch.Generator().manual_seed(6)
    text, image, views = (F.normalize(torch.randn(4, 3, generator=generator), dim=-1) for _ in range(3))
    ids, scale = torch.tensor([1, 1, 2, 3]), torch.tensor(4.0)
    base, _, _ = symmetric_info_nce(text, image, scale, views, image_ids=ids)
    moved = views.clone()
    moved[0] = text[1]  # view of image 1, made to look exactly like text 1 (also image 1)
    loss, _, _ = symmetric_info_nce(text, image, scale, moved, image_ids=ids)
    torch.testing.assert_close(loss[:2], base[:2])  # left out for both texts of image 1
    assert (loss[2:] != base[2:]).all()  # still a negative for the texts of images 2 and 3
    # by hand for text 2: images {1 merged, 2, 3} and views of rows 0, 1, 3 (its own view 2 left out)
    dot = lambda u, v: float(scale * (u * v).sum())  # noqa: E731
    own = dot(text[2], image[2])
    merged_1 = math.log((math.exp(dot(text[2], image[0])) + math.exp(dot(text[2], image[1]))) / 2)
    candidates = [merged_1, own, dot(text[2], image[3])] + [dot(text[2], moved[j]) for j in (0, 1, 3)]
    text_to_image = -own + math.log(sum(math.exp(v) for v in candidates))
    image_to_text = -own + math.log(sum(math.exp(dot(image[2], text[j])) for j in range(4)))
    assert float(loss[2]) == pytest.approx(text_to_image + image_to_text, rel=1e-5)
