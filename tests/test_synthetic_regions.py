"""The synthetic corpus's true objects as region boxes and classes of its feature file
(preprocess/write_synthetic_regions.py), read back by M3P's RegionFeatureReader."""

import json

import numpy as np
import pytest

from m3p_fairseq.data.image_features import ImageFeatureStore, read_image_ids
from m3p_fairseq.data.m3p_regions import RegionFeatureReader
from m3p_fairseq.data.random_features import write_random_features
from preprocess.make_synthetic_corpus import SceneObject, make_corpus
from preprocess.write_synthetic_regions import main, patch_labels

# a large red circle top left (half side 0.16 around (1/6, 1/6)) and a small blue square in the
# centre (half side 0.11 around (1/2, 1/2)); class = shape index * 8 colours + colour index
SCENE = [SceneObject("red", "circle", "large", "top left"), SceneObject("blue", "square", "small", "centre")]
CIRCLE_BOX = [1 / 6 - 0.16, 1 / 6 - 0.16, 1 / 6 + 0.16, 1 / 6 + 0.16]
SQUARE_BOX = [0.39, 0.39, 0.61, 0.61]


def test_scene_cells_on_a_3x3_grid_by_hand():
    boxes, classes = patch_labels(SCENE, 3, 3)
    assert classes.tolist() == [0, -1, -1, -1, 10, -1, -1, -1, -1]  # circle 0*8+red 0, square 1*8+blue 2
    assert boxes[0] == pytest.approx(CIRCLE_BOX)
    assert boxes[4] == pytest.approx(SQUARE_BOX)
    assert boxes[5] == pytest.approx([2 / 3, 1 / 3, 1, 2 / 3])  # the right cell: its own grid box


def test_a_finer_grid_labels_every_patch_whose_centre_is_on_the_object():
    # 6x6 patch centres at 1/12, 3/12, 5/12, ...: the circle (0.007..0.327) covers columns and rows
    # 0 and 1, the square (0.39..0.61) columns and rows 2 and 3
    _, classes = patch_labels(SCENE, 6, 6)
    grid = classes.reshape(6, 6)
    assert (np.argwhere(grid == 0) == [[0, 0], [0, 1], [1, 0], [1, 1]]).all()
    assert (np.argwhere(grid == 10) == [[2, 2], [2, 3], [3, 2], [3, 3]]).all()
    assert (grid == -1).sum() == 36 - 8


def test_written_into_the_feature_file_and_read_by_the_pretraining(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw, num_train=6, num_valid=2, num_test=2, langs=["en"], image_size=48, seed=4)
    ids = [i for split in ("train", "valid", "test") for i in read_image_ids(raw / f"{split}.image_ids")]
    features = tmp_path / "image_features.h5"
    write_random_features(features, ids, num_patches=9)
    assert main(["--raw-dir", str(raw), "--features", str(features)]) == 0
    first = [RegionFeatureReader(ImageFeatureStore(features)).read(row) for row in range(len(ids))]
    size = features.stat().st_size
    assert main(["--raw-dir", str(raw), "--features", str(features)]) == 0  # again: the same labels
    reader = RegionFeatureReader(ImageFeatureStore(features))
    for row in range(len(ids)):
        assert all(np.array_equal(a, b) for a, b in zip(first[row], reader.read(row)))
    assert features.stat().st_size == size
    assert reader.num_classes == 48 and reader.user_boxes
    scenes = (raw / "train.scenes.jsonl").read_text().splitlines()
    for row, line in enumerate(scenes):
        objects = json.loads(line)
        _, spatial, classes = reader.read(row)
        assert int((classes >= 0).sum()) == len(objects)  # a 3x3 grid: one patch per object
        assert spatial.shape == (9, 5)


def test_missing_scenes_are_a_clear_error(tmp_path, capsys):
    raw = tmp_path / "raw"
    make_corpus(raw, num_train=2, num_valid=1, num_test=1, langs=["en"], image_size=48, seed=4)
    (raw / "valid.scenes.jsonl").unlink()
    features = tmp_path / "image_features.h5"
    write_random_features(features, [i for s in ("train", "valid", "test") for i in read_image_ids(raw / f"{s}.image_ids")],
                          num_patches=9)
    assert main(["--raw-dir", str(raw), "--features", str(features)]) == 2
    assert f"{raw / 'valid.scenes.jsonl'} not found" in capsys.readouterr().err
    assert not RegionFeatureReader(ImageFeatureStore(features)).has_classes  # the file is unchanged
