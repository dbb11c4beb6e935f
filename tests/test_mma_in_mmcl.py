"""MMA inside MMCL (paper Sec. 2.5): every training example brings the augmented pair
{T(x_k), I(z_k)}; it enters the InfoNCE as one more positive pair, showing the same image as the
row it augments. Expected values are worked out here with Python floats."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import setup_task
from m3p_fairseq.criterions.m3p_loss import M3PLoss
from m3p_fairseq.criterions.mmcl import symmetric_info_nce
from m3p_fairseq.data.batch_keys import (
    MMA_IMAGE_GLOBAL,
    MMA_SRC_LENGTHS,
    MMA_SRC_TOKENS,
    MMCL_AUGMENTED_IMAGE,
    MMCL_AUGMENTED_ROW,
    MMCL_AUGMENTED_TEXT,
    MMCL_IMAGE,
    MMCL_LOGIT_SCALE,
    MMCL_TEXT,
    MMCL_USABLE,
)

MMA = ["--mma-text-mask-ratio", "0.5", "--mma-patch-mask-ratio", "0.5"]


def training_set(data_dir, *options, arch="m3p_transformer_tiny"):
    task, cfg = setup_task(data_dir, *options, arch=arch)
    task.load_dataset("train")
    return task, cfg, task.dataset("train").datasets[0]


def test_each_example_brings_a_masked_source_and_the_masked_images_global_vector(data_dir):
    task, _, dataset = training_set(data_dir, *MMA)
    mask = task.src_dict.index("<mask>")
    store = dataset.image_store
    for index in range(6):
        example = dataset[index]
        clean = dataset.src[index]
        text = example[MMA_SRC_TOKENS]
        # T(x_k): the clean source with half of its words masked (tag and </s> kept), drawn afresh
        assert text[0] == clean[0] and text[-1] == clean[-1] and len(text) == len(clean)
        assert int((text == mask).sum()) == round(0.5 * (len(clean) - 2))
        kept = text != mask
        assert torch.equal(text[kept], clean[kept])
        # I(z_k): half of the 4 stored patches masked; its global vector is the mean of the 2 kept
        patches, stored_global = store.read(int(dataset.image_rows[index]))
        means = [patches[list(pair)].float().mean(0) for pair in itertools.combinations(range(4), 2)]
        matches = [m for m in means if torch.allclose(m, example[MMA_IMAGE_GLOBAL], atol=1e-6)]
        assert len(matches) == 1
        assert not torch.allclose(example[MMA_IMAGE_GLOBAL], stored_global.float())


def test_the_pair_changes_none_of_the_translation_inputs_and_can_be_turned_off(data_dir):
    _, _, with_pair = training_set(data_dir, *MMA)
    _, _, without = training_set(data_dir, *MMA, "--mma-translation-only")
    for index in range(5):
        a, b = with_pair[index], without[index]
        assert torch.equal(a["source"], b["source"]) and torch.equal(a["image_patches"], b["image_patches"])
        assert MMA_SRC_TOKENS not in b
    batch = with_pair.collater([with_pair[i] for i in range(5)])
    net_input = batch["net_input"]
    assert net_input[MMA_SRC_TOKENS].shape == net_input["src_tokens"].shape  # same lengths, same padding
    assert torch.equal(net_input[MMA_SRC_LENGTHS], net_input["src_lengths"])
    for row, sample_id in enumerate(batch["id"].tolist()):  # in the batch's order
        assert torch.equal(net_input[MMA_IMAGE_GLOBAL][row], with_pair[sample_id][MMA_IMAGE_GLOBAL])


def test_the_augmented_pair_is_one_more_positive_pair_by_hand():
    """Texts and images [a, b] and the augmented pair (c, d) of row 0, at scale 10. The rows of
    image 0 (0 and 2) leave each other out; everything else is an ordinary negative."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    c, d = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
    text, image = torch.stack([a, b, c]), torch.stack([a, b, d])
    loss, _, _ = symmetric_info_nce(text, image, torch.tensor(10.0), identity=torch.tensor([0, 1, 0]))
    dot = lambda u, v: float(u @ v)  # noqa: E731

    def nll(positive, others):
        return -10 * positive + math.log(sum(math.exp(10 * o) for o in [positive, *others]))

    expected = [
        nll(dot(a, a), [dot(a, b)]) + nll(dot(a, a), [dot(a, b)]),  # row 0: d and c left out
        nll(dot(b, b), [dot(b, a), dot(b, d)]) + nll(dot(b, b), [dot(b, a), dot(b, c)]),
        nll(dot(c, d), [dot(c, b)]) + nll(dot(d, c), [dot(d, b)]),  # the augmented pair: positive
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # without identities row 2 would be a negative of row 0: the loss of row 0 grows
    plain, _, _ = symmetric_info_nce(text, image, torch.tensor(10.0))
    assert float(plain[0]) > expected[0] + 1e-3


def test_the_criterion_appends_the_augmented_rows_of_usable_images():
    """Rows 0..2, row 1's image unusable: the kept pairs are rows 0 and 2, their augmented pairs
    follow with identities [0, 1]; the term averages over all 4 InfoNCE rows."""
    criterion = M3PLoss.__new__(M3PLoss)
    criterion.mmcl_weight = 1.0
    eye = torch.eye(3)
    augmented = F.normalize(eye + 0.5, dim=1)
    extra = {MMCL_TEXT: eye, MMCL_IMAGE: eye, MMCL_LOGIT_SCALE: torch.tensor(10.0),
             MMCL_USABLE: torch.tensor([True, False, True]), MMCL_AUGMENTED_TEXT: augmented,
             MMCL_AUGMENTED_IMAGE: augmented, MMCL_AUGMENTED_ROW: torch.tensor([0, 1, 2])}
    text, image, identity = M3PLoss.augmented_rows(extra, extra[MMCL_USABLE], 0, 2, None)
    assert identity.tolist() == [0, 1, 0, 1]
    assert torch.equal(text, augmented[[0, 2]]) and torch.equal(image, augmented[[0, 2]])
    term, logs = criterion.contrastive_loss(extra, sample_size=8)
    reference, _, _ = symmetric_info_nce(torch.cat([eye[[0, 2]], augmented[[0, 2]]]),
                                         torch.cat([eye[[0, 2]], augmented[[0, 2]]]), torch.tensor(10.0),
                                         identity=torch.tensor([0, 1, 0, 1]))
    assert float(term) == pytest.approx(8 / 4 * float(reference.sum()), rel=1e-6)
    assert logs["mmcl_pairs"] == 2  # the logs count the batch's own pairs


@pytest.mark.parametrize("arch", ["m3p_transformer_tiny", "m3p_decoder_only_tiny"])
def test_models_embed_the_augmented_pair_from_the_masked_source_and_image(data_dir, arch):
    task, cfg, dataset = training_set(data_dir, *MMA, "--dropout", "0", "--mdropnet-text-only", "0",
                                      "--mdropnet-image-only", "0", "--criterion", "m3p_loss",
                                      "--label-smoothing", "0.1", arch=arch)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    batch = dataset.collater([dataset[i] for i in range(4)])
    net_input = batch["net_input"]
    with torch.no_grad():
        _, extra = model(**net_input, contrastive=True)
        assert extra[MMCL_AUGMENTED_ROW].tolist() == [0, 1, 2, 3]
        head, image_encoder = model.contrastive_head, model.encoder.image_encoder
        expected_image = head.embed_image(image_encoder.embed_global(net_input[MMA_IMAGE_GLOBAL]))
        torch.testing.assert_close(extra[MMCL_AUGMENTED_IMAGE], expected_image)
        # the augmented text vector is the clean pooling applied to the masked source
        masked_only = {**net_input, "src_tokens": net_input[MMA_SRC_TOKENS]}
        _, masked_extra = model(**masked_only, contrastive=True)
        torch.testing.assert_close(extra[MMCL_AUGMENTED_TEXT], masked_extra[MMCL_TEXT], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(extra[MMCL_AUGMENTED_TEXT], extra[MMCL_TEXT])
    loss, _, logs = task.build_criterion(cfg.criterion)(model, batch)
    assert torch.isfinite(loss) and logs["mmcl_pairs"] == 4
