"""MMA augmentation (Sec. 2.5): text span masking, patch masking and augmented views; seeded,
reproducible, different every epoch, and only on the training split."""

import os

import numpy as np
import pytest
import torch

from helpers import setup_task
from m3p_fairseq.data.image_features import ImageFeatureError
from m3p_fairseq.data.multimodal_augmentation import MultimodalAugmentation

MASK = 99


def augmentation(**options):
    return MultimodalAugmentation(mask_index=MASK, seed=7, direction="en-de", **options)


def sentence(length=22):
    return torch.tensor([5] + list(range(10, 10 + length)) + [2])  # tag, words, </s>


def test_span_masking_masks_the_ratio_in_spans_and_keeps_tag_and_eos():
    mma = augmentation(text_mask_ratio=0.3, text_mask_span=3.0)
    lengths = []
    for index in range(200):
        masked = mma.mask_source(sentence(), mma.generator(epoch=1, index=index))
        assert masked[0] == 5 and masked[-1] == 2
        is_mask = (masked == MASK).tolist()
        assert sum(is_mask) == round(0.3 * 22)
        runs = "".join("x" if m else "." for m in is_mask).split(".")
        lengths += [len(run) for run in runs if run]
    assert 1.5 < np.mean(lengths) < 6  # spans, not isolated tokens


def test_augmentation_is_seeded_per_example_and_epoch():
    mma = augmentation(text_mask_ratio=0.3, patch_mask_ratio=0.5)
    patches = torch.randn(8, 4)

    def draw(epoch, index, seed=7):
        rng = MultimodalAugmentation(**{**mma.__dict__, "seed": seed}).generator(epoch, index)
        return mma.mask_source(sentence(), rng), mma.mask_patches(patches, rng)

    text, image = draw(1, 3)
    again_text, again_image = draw(1, 3)
    assert torch.equal(text, again_text) and torch.equal(image, again_image)
    assert not torch.equal(draw(2, 3)[0], text)  # a new epoch, a new mask
    assert not torch.equal(draw(1, 4)[0], text)
    assert not torch.equal(draw(1, 3, seed=8)[0], text)
    assert int((image.abs().sum(-1) == 0).sum()) == 4
    kept = image.abs().sum(-1) > 0
    assert torch.equal(image[kept], patches[kept])


def test_bad_options():
    with pytest.raises(ValueError, match="--mma-text-mask-ratio must be in"):
        augmentation(text_mask_ratio=1.5)
    with pytest.raises(ValueError, match="<mask> symbol"):
        MultimodalAugmentation(text_mask_ratio=0.2)


def test_only_the_training_split_is_augmented(data_dir):
    task, _ = setup_task(data_dir, "--mma-text-mask-ratio", "0.5", "--mma-patch-mask-ratio", "0.5")
    mask = task.src_dict.index("<mask>")
    assert mask != task.src_dict.unk()
    task.load_dataset("train")
    task.load_dataset("valid")
    train = task.dataset("train").datasets[0]
    valid = task.dataset("valid").datasets[0]
    assert (train[0]["source"] == mask).sum() > 0
    assert (train[0]["image_patches"].abs().sum(-1) == 0).sum() == 2  # half of 4 patches
    assert (valid[0]["source"] == mask).sum() == 0
    assert (valid[0]["image_patches"].abs().sum(-1) == 0).sum() == 0
    # the same example, another epoch: another mask; back to epoch 1: the first one again
    first = train[0]["source"]
    train.set_epoch(2)
    assert not torch.equal(train[0]["source"], first)
    train.set_epoch(1)
    assert torch.equal(train[0]["source"], first)


@pytest.fixture
def data_with_views(data_copy, raw_corpus):
    from helpers import write_random_features
    from m3p_fairseq.data.image_features import read_image_ids

    ids = [i for split in ("train", "valid", "test") for i in read_image_ids(raw_corpus / f"{split}.image_ids")]
    os.remove(data_copy / "image_features.h5")
    write_random_features(data_copy / "image_features.h5", ids, num_views=3)
    return data_copy


def _global_source(store, row, vector):
    """Which stored vector this is: None for the clean one, else the view index."""
    candidates = [None, *range(store.num_views)]
    matches = [v for v in candidates if torch.equal(store.read(row, v)[1], vector)]
    assert len(matches) == 1
    return matches[0]


def test_training_examples_use_augmented_views_at_the_configured_rate(data_with_views):
    task, _ = setup_task(data_with_views, "--mma-image-view-prob", "0.5", "--mma-view-negatives")
    task.load_dataset("train")
    dataset = task.dataset("train").datasets[0]
    store = dataset.image_store
    used, negatives = [], []
    for epoch in (1, 2, 3, 4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            example = dataset[index]
            row = int(dataset.image_rows[index])
            used.append(_global_source(store, row, example["image_global"]))
            negatives.append(_global_source(store, row, example["image_negative_global"]))
            assert negatives[-1] is not None and negatives[-1] != used[-1]
    clean_share = used.count(None) / len(used)
    assert 0.4 < clean_share < 0.6  # 240 draws at p = 0.5
    assert {v for v in used if v is not None} == {0, 1, 2}
    batch = dataset.collater([dataset[i] for i in range(5)])
    assert batch["net_input"]["image_negative_global"].shape == (5, store.feature_dim)
    task.load_dataset("valid")
    valid = task.dataset("valid").datasets[0]
    assert "image_negative_global" not in valid[0]
    assert torch.equal(valid[0]["image_global"], valid.image_store.read(int(valid.image_rows[0]))[1])


def test_views_asked_for_but_not_extracted(data_dir):
    task, _ = setup_task(data_dir, "--mma-image-view-prob", "0.5")
    with pytest.raises(ImageFeatureError, match=r"image_features.h5 has 0 augmented views per image.*--augmented-views K"):
        task.load_dataset("train")
