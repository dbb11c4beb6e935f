"""Augmented views for MMA: the operations, their determinism, and the extractor storing them."""

import json
import logging

import h5py
import numpy as np
import pytest
import timm.data
import torch
from PIL import Image, ImageDraw

from m3p_fairseq.data.image_features import ImageFeatureStore
from preprocess import extract_image_features
from preprocess.extract_image_features import ImageFolder, extract
from preprocess.image_augmentation import AugmentationPolicy, AugmentedViews, sobel_edges

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
BACKBONE = dict(backbone="vit_tiny_patch16_224", random_init_seed=0, image_size=32)


def scene(seed: int, size=(48, 40)) -> Image.Image:
    """Noise with a few rectangles, so crops, rotations and edges all change the pixels."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, size[0] - 10)), int(rng.integers(0, size[1] - 10))
        draw.rectangle([x, y, x + 10, y + 8], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


@pytest.fixture
def images(tmp_path):
    """Five generated images and an id list naming them."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    ids = [f"img{i}.png" for i in range(5)]
    for i, image_id in enumerate(ids):
        scene(i).save(images_dir / image_id)
    (tmp_path / "ids").write_text("\n".join(ids) + "\n")
    return images_dir, tmp_path / "ids", ids


def run_extract(images, output, **kwargs):
    images_dir, id_file, _ = images
    return extract(images_dir, [id_file], output, dtype="float32", device="cpu", **{**BACKBONE, **kwargs})


def datasets(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}


def test_sobel_responds_to_a_vertical_step_edge_only():
    image = torch.zeros(3, 12, 16)
    image[:, :, 8:] = 1.0  # step between columns 7 and 8
    edges = sobel_edges(image)
    assert edges.shape == (3, 12, 16)
    assert torch.equal(edges[0], edges[1]) and torch.equal(edges[0], edges[2])  # grey on 3 channels
    # full-contrast edge -> 1 (white's grey is 0.9999 with the luma weights)
    torch.testing.assert_close(edges[:, :, 7:9], torch.ones(3, 12, 2), atol=1e-3, rtol=0)
    flat = torch.cat([edges[:, :, :7], edges[:, :, 9:]], dim=2)
    assert flat.abs().max() < 1e-6  # including the image border (replicated, not zero-padded)
    torch.testing.assert_close(sobel_edges(image.unsqueeze(0))[0], edges)  # batched alike


def test_views_are_reproducible_and_leave_the_global_rng_alone():
    augment = AugmentedViews(32, MEAN, STD, num_views=4, seed=7)
    image = scene(0)
    rng_state = torch.get_rng_state()
    views = augment(image, "a.png")
    assert torch.equal(torch.get_rng_state(), rng_state)
    torch.manual_seed(1234)  # the global RNG has no say
    again = AugmentedViews(32, MEAN, STD, num_views=4, seed=7)(image, "a.png")
    assert views.shape == (4, 3, 32, 32) and views.dtype == torch.float32
    assert torch.equal(views, again)
    assert torch.equal(augment.view(image, "a.png", 2), views[2])


def test_views_differ_by_view_index_image_id_and_seed():
    image = scene(0)
    views = AugmentedViews(32, MEAN, STD, num_views=4, seed=7)(image, "a.png")
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(views[i], views[j])
    same_pixels_other_id = AugmentedViews(32, MEAN, STD, num_views=4, seed=7)(image, "b.png")
    other_seed = AugmentedViews(32, MEAN, STD, num_views=4, seed=8)(image, "a.png")
    for v in range(4):
        assert not torch.equal(views[v], same_pixels_other_id[v])
        assert not torch.equal(views[v], other_seed[v])


def test_view_without_augmentation_is_the_clean_transform():
    """Whole-image crop and every operation off: the normalisation and size of the clean path."""
    identity = AugmentationPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_p=0, cutout_p=0,
                                  color_jitter_p=0, blur_p=0, sobel_p=0)
    image = scene(3, size=(40, 40))
    view = AugmentedViews(32, MEAN, STD, num_views=1, policy=identity)(image, "x")[0]
    clean = timm.data.create_transform(input_size=(3, 32, 32), interpolation="bicubic", mean=MEAN, std=STD,
                                       crop_pct=1.0, is_training=False)(image)
    assert view.shape == clean.shape
    # PIL and torch resample slightly differently; a wrong mean or std would be off by far more
    assert (view - clean).abs().mean() < 0.05


def test_sobel_view_is_grey_edges():
    edges_only = AugmentationPolicy(rotation_p=0, cutout_p=0, color_jitter_p=0, blur_p=0, sobel_p=1)
    view = AugmentedViews(32, (0.5,) * 3, (0.5,) * 3, num_views=1, policy=edges_only)(scene(1), "x")[0]
    assert torch.equal(view[0], view[1]) and torch.equal(view[0], view[2])
    assert view.min() >= -1 and view.max() <= 1


def test_describe_names_every_operation_in_order():
    described = json.loads(AugmentedViews((32, 48), MEAN, STD, num_views=2, seed=3).describe())
    assert [op["op"] for op in described["ops"]] == [
        "random_resized_crop", "rotation", "cutout", "color_jitter", "gaussian_blur", "sobel", "normalize"]
    assert all(0 <= op["p"] <= 1 for op in described["ops"])
    assert described["size"] == [32, 48] and described["mean"] == list(MEAN)


def test_extracted_views_are_identical_across_runs(images, tmp_path):
    run_extract(images, tmp_path / "a.h5", batch_size=2, augmented_views=3, augmentation_seed=5)
    run_extract(images, tmp_path / "b.h5", batch_size=2, augmented_views=3, augmentation_seed=5)
    first, second = datasets(tmp_path / "a.h5"), datasets(tmp_path / "b.h5")
    assert first.keys() == second.keys() >= {"view_patches", "view_global"}
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def test_views_do_not_depend_on_batch_size_or_workers(images, tmp_path):
    images_dir, _, ids = images
    augment = AugmentedViews(32, MEAN, STD, num_views=3, seed=5)

    def loaded_views(batch_size, num_workers):
        loader = torch.utils.data.DataLoader(ImageFolder(images_dir, ids, lambda image: torch.zeros(1), augment),
                                             batch_size=batch_size, num_workers=num_workers)
        return torch.cat([views for _, views in loader])

    one_by_one = loaded_views(1, 0)
    assert one_by_one.shape == (5, 3, 3, 32, 32)
    assert torch.equal(one_by_one, loaded_views(3, 2))  # bitwise: nothing depends on the batch or worker

    run_extract(images, tmp_path / "b1.h5", batch_size=1, augmented_views=3, augmentation_seed=5)
    run_extract(images, tmp_path / "b3.h5", batch_size=3, num_workers=2, augmented_views=3, augmentation_seed=5)
    by_one, by_three = datasets(tmp_path / "b1.h5"), datasets(tmp_path / "b3.h5")
    for name in ("patches", "view_patches", "view_global"):
        # same inputs; only the backbone's matrix products see another batch shape
        np.testing.assert_allclose(by_one[name], by_three[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_views_are_stored_next_to_unchanged_clean_features(images, tmp_path):
    run_extract(images, tmp_path / "clean.h5", batch_size=2)
    run_extract(images, tmp_path / "views.h5", batch_size=2, augmented_views=2, augmentation_seed=1)
    run_extract(images, tmp_path / "reseeded.h5", batch_size=2, augmented_views=2, augmentation_seed=2)
    clean, views, reseeded = (ImageFeatureStore(tmp_path / f"{n}.h5") for n in ("clean", "views", "reseeded"))
    assert clean.num_views == 0 and "view_augmentations" not in clean.attrs
    assert views.num_views == 2 and views.attrs["augmentation_seed"] == 1
    assert [op["op"] for op in json.loads(views.attrs["view_augmentations"])["ops"]][0] == "random_resized_crop"
    for row in range(5):
        clean_patches, clean_global = clean.read(row)
        assert torch.equal(views.read(row)[0], clean_patches) and torch.equal(views.read(row)[1], clean_global)
        view_0, view_1 = views.read(row, 0), views.read(row, 1)
        assert view_0[0].shape == clean_patches.shape and view_0[1].shape == clean_global.shape
        assert not torch.equal(view_0[0], clean_patches)
        assert not torch.equal(view_0[0], view_1[0])
        assert not torch.equal(view_0[0], reseeded.read(row, 0)[0])


def test_interrupted_extraction_with_views_resumes(images, tmp_path, monkeypatch, caplog):
    run_extract(images, tmp_path / "whole.h5", batch_size=2, augmented_views=2)

    class DiesAfterOneBatch(extract_image_features.ImageFeatureWriter):
        def write(self, *args):
            if self.rows_written:
                self._file.close()  # what the process's death would leave behind
                raise KeyboardInterrupt
            super().write(*args)

    monkeypatch.setattr(extract_image_features, "ImageFeatureWriter", DiesAfterOneBatch)
    with pytest.raises(KeyboardInterrupt):
        run_extract(images, tmp_path / "resumed.h5", batch_size=2, augmented_views=2)
    with h5py.File(tmp_path / "resumed.h5.partial", "r") as f:
        assert f.attrs["rows_written"] == 2 and f.attrs["num_views"] == 2
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger=extract_image_features.logger.name)
    assert run_extract(images, tmp_path / "resumed.h5", batch_size=2, augmented_views=2) == 5
    assert "at image 2 of 5" in caplog.text  # continued, not started over
    assert not (tmp_path / "resumed.h5.partial").exists()
    whole, resumed = datasets(tmp_path / "whole.h5"), datasets(tmp_path / "resumed.h5")
    for name in whole:
        assert np.array_equal(whole[name], resumed[name]), name


def test_cli_options(images, tmp_path):
    images_dir, id_file, _ = images
    common = ["--images-dir", images_dir, "--image-ids", id_file, "--backbone", "vit_tiny_patch16_224",
              "--random-init-seed", 0, "--image-size", 32, "--batch-size", 4]
    extract_image_features.main([str(a) for a in common + ["--output", tmp_path / "f.h5", "--augmented-views", 2,
                                                           "--augmentation-seed", 9]])
    store = ImageFeatureStore(tmp_path / "f.h5")
    assert store.num_views == 2 and store.attrs["augmentation_seed"] == 9
    with pytest.raises(SystemExit):
        extract_image_features.main([str(a) for a in common + ["--output", tmp_path / "g.h5", "--augmented-views", -1]])
