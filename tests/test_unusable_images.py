"""Images flagged unusable at extraction (missing or undecodable): their sentences are trained and
translated text-only, and MMCL leaves their pairs out."""

import os

import numpy as np
import pytest
import torch

from helpers import FEATURE_DIM, NUM_PATCHES, as_if_trained, setup_task
from m3p_fairseq.data.image_features import ImageFeatureWriter, read_image_ids
from m3p_fairseq.models.mdropnet import TEXT_ONLY


@pytest.fixture
def data_with_bad_images(data_copy, raw_corpus):
    ids = [i for split in ("train", "valid", "test") for i in read_image_ids(raw_corpus / f"{split}.image_ids")]
    valid_ids = read_image_ids(raw_corpus / "valid.image_ids")
    bad = {valid_ids[0], valid_ids[3]}
    rng = np.random.default_rng(0)
    usable = np.array([i not in bad for i in ids])
    patches = rng.standard_normal((len(ids), NUM_PATCHES, FEATURE_DIM)).astype("float32") * usable[:, None, None]
    global_vectors = rng.standard_normal((len(ids), FEATURE_DIM)).astype("float32") * usable[:, None]
    os.remove(data_copy / "image_features.h5")
    writer = ImageFeatureWriter(data_copy / "image_features.h5", ids, NUM_PATCHES, FEATURE_DIM, "float32")
    writer.write(patches, global_vectors, usable=usable)
    writer.close()
    return data_copy


def test_sentences_without_a_usable_image_are_text_only(data_with_bad_images, caplog):
    task, cfg = setup_task(data_with_bad_images, "--criterion", "m3p_loss", "--dropout", "0",
                           "--source-lang", "en", "--target-lang", "de")
    model = as_if_trained(task.build_model(cfg.model)).eval()
    task.load_dataset("valid")
    assert "2 sentences refer to images that were missing or undecodable" in caplog.text
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(6)])
    net_input = batch["net_input"]
    usable = net_input["image_usable"]
    assert usable.tolist() == [int(i) not in (0, 3) for i in batch["id"]]

    logits, _ = model(**net_input)
    modes = torch.where(usable, 2, TEXT_ONLY)
    without_flags = {k: v for k, v in net_input.items() if k != "image_usable"}
    torch.testing.assert_close(logits, model(**without_flags, modalities=modes)[0])
    # the others are decoded exactly as without any flag
    torch.testing.assert_close(logits[usable], model(**without_flags)[0][usable])

    _, _, logs = task.build_criterion(cfg.criterion)(model, batch)
    assert logs["mmcl_pairs"] == 4


def test_a_batch_of_usable_images_carries_no_flag(data_dir):
    task, _ = setup_task(data_dir, "--source-lang", "en", "--target-lang", "de")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    assert "image_usable" not in dataset.collater([dataset[i] for i in range(4)])["net_input"]
