"""5-D spatial embeddings of image regions (m3p_fairseq/data/m3p_regions.py): grid patches'
boxes worked out by hand, a user's own boxes and classes, and the errors on bad files."""

import h5py
import numpy as np
import pytest
import torch

from m3p_fairseq.data.image_features import ImageFeatureError, ImageFeatureStore
from m3p_fairseq.data.m3p_regions import RegionFeatureReader, grid_boxes, spatial_embedding


def write_file(path, patches, boxes=None, classes=None, num_classes=None, grid=None):
    n, p, d = patches.shape
    with h5py.File(path, "w") as f:
        f["image_ids"] = np.array([f"img{i}" for i in range(n)], dtype=h5py.string_dtype())
        f["patches"] = patches.astype(np.float32)
        f["global"] = patches.mean(axis=1).astype(np.float32)
        if boxes is not None:
            f["region_boxes"] = boxes
        if classes is not None:
            f["region_classes"] = classes
        if num_classes is not None:
            f.attrs["num_region_classes"] = num_classes
        if grid is not None:
            f.attrs["patch_grid"] = grid
    return ImageFeatureStore(path)


def test_grid_boxes_of_a_2x3_grid_by_hand():
    boxes = grid_boxes(2, 3)
    assert boxes.shape == (6, 5)
    third, sixth = 1 / 3, 1 / 6
    # row-major: (row 0, col 0), (row 0, col 1), ..., (row 1, col 2)
    assert torch.allclose(boxes[0], torch.tensor([0, 0, third, 0.5, sixth]))
    assert torch.allclose(boxes[1], torch.tensor([third, 0, 2 * third, 0.5, sixth]))
    assert torch.allclose(boxes[5], torch.tensor([2 * third, 0.5, 1, 1, sixth]))
    assert boxes[:, 4].sum() == pytest.approx(1.0)  # the cells tile the image


def test_spatial_embedding_adds_the_area_fraction():
    assert torch.allclose(spatial_embedding(torch.tensor([[0.1, 0.2, 0.5, 0.7]])),
                          torch.tensor([[0.1, 0.2, 0.5, 0.7, 0.2]]))


def test_reader_gives_grid_boxes_of_a_square_grid(tmp_path):
    patches = np.random.default_rng(0).standard_normal((2, 4, 3))
    reader = RegionFeatureReader(write_file(tmp_path / "f.h5", patches))
    features, boxes, classes = reader.read(1)
    assert torch.allclose(features, torch.from_numpy(patches[1]).float())
    assert torch.allclose(boxes, torch.tensor([[0, 0, .5, .5, .25], [.5, 0, 1, .5, .25],
                                               [0, .5, .5, 1, .25], [.5, .5, 1, 1, .25]]))
    assert classes is None and reader.num_classes == 0


def test_reader_uses_the_patch_grid_attribute_and_refuses_a_non_square_grid(tmp_path):
    patches = np.zeros((1, 6, 2))
    reader = RegionFeatureReader(write_file(tmp_path / "g.h5", patches, grid=[2, 3]))
    assert torch.allclose(reader.read(0)[1], grid_boxes(2, 3))
    with pytest.raises(ImageFeatureError, match=r"h\.h5: 6 patches per image is not a square grid"):
        RegionFeatureReader(write_file(tmp_path / "h.h5", patches))
    with pytest.raises(ImageFeatureError, match="patch_grid = 2x2 but the file has 6 patches"):
        RegionFeatureReader(write_file(tmp_path / "i.h5", patches, grid=[2, 2]))


def test_reader_gives_user_boxes_and_classes(tmp_path):
    patches = np.ones((2, 2, 3))
    boxes = np.array([[[0, 0, 0.5, 0.5], [0.25, 0.5, 1, 1]], [[0, 0, 1, 1], [0.1, 0.1, 0.2, 0.3]]], dtype=np.float32)
    classes = np.array([[2, -1], [0, 1]])
    reader = RegionFeatureReader(write_file(tmp_path / "u.h5", patches, boxes, classes, num_classes=3))
    _, got_boxes, got_classes = reader.read(0)
    assert torch.allclose(got_boxes, torch.tensor([[0, 0, .5, .5, .25], [.25, .5, 1, 1, .375]]))
    assert got_classes.tolist() == [2, -1] and reader.num_classes == 3
    assert torch.allclose(reader.read(1)[1][1], torch.tensor([.1, .1, .2, .3, .02]))


def test_reader_refuses_bad_boxes_and_classes(tmp_path):
    patches = np.ones((1, 2, 3))
    flipped = np.array([[[0.5, 0, 0.2, 1], [0, 0, 1, 1]]], dtype=np.float32)  # x1 > x2
    reader = RegionFeatureReader(write_file(tmp_path / "b.h5", patches, flipped))
    with pytest.raises(ImageFeatureError, match=r"b\.h5: image 0: box .* at \[0\] is not a normalised"):
        reader.read(0)
    with pytest.raises(ImageFeatureError, match="region_boxes is .*expected \\(1, 2, 4\\)"):
        RegionFeatureReader(write_file(tmp_path / "s.h5", patches, np.zeros((1, 3, 4))))
    with pytest.raises(ImageFeatureError, match="no attribute num_region_classes"):
        RegionFeatureReader(write_file(tmp_path / "c.h5", patches, classes=np.zeros((1, 2), dtype=np.int64), grid=[1, 2]))
    reader = RegionFeatureReader(write_file(tmp_path / "k.h5", patches, classes=np.array([[0, 5]]), num_classes=3, grid=[1, 2]))
    with pytest.raises(ImageFeatureError, match="region class 5, expected -1 or 0..2"):
        reader.read(0)
