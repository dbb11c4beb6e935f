"""m3p_fairseq.data.random_features: the generator of the test fixtures and the benchmark's
reader files writes the project's HDF5 layout, chunk by chunk, every image different."""

import h5py
import numpy as np

from m3p_fairseq.data.image_features import GLOBAL, IMAGE_IDS, PATCHES, VIEW_GLOBAL, VIEW_PATCHES
from m3p_fairseq.data.random_features import write_random_features


def test_chunks_views_and_the_npy_copy(tmp_path):
    ids = [f"img{i}" for i in range(5)]
    h5, npy = tmp_path / "f.h5", tmp_path / "f.npy"
    write_random_features(h5, ids, num_patches=3, feature_dim=4, seed=7, dtype="float16", num_views=2,
                          npy_path=npy, chunk=2)
    with h5py.File(h5, "r") as f:
        assert f[IMAGE_IDS].asstr()[()].tolist() == ids
        patches, global_ = f[PATCHES][()], f[GLOBAL][()]
        assert patches.shape == (5, 3, 4) and patches.dtype == np.float16 and global_.shape == (5, 4)
        assert f[VIEW_PATCHES].shape == (5, 2, 3, 4) and f[VIEW_GLOBAL].shape == (5, 2, 4)
        assert f.attrs["backbone"].startswith("random")
    # chunk k is chunk 0 shifted by k (to float16 precision): images 2-3 are images 0-1 plus 1, image 4 is
    # image 0 plus 2
    np.testing.assert_allclose(patches[2:4].astype(np.float32), patches[0:2].astype(np.float32) + 1, atol=1e-2)
    np.testing.assert_allclose(patches[4].astype(np.float32), patches[0].astype(np.float32) + 2, atol=1e-2)
    assert len({row.tobytes() for row in patches}) == 5
    np.testing.assert_array_equal(np.load(npy), patches)


def test_the_same_seed_gives_the_same_file_contents(tmp_path):
    for name in ("a.h5", "b.h5"):
        write_random_features(tmp_path / name, ["x", "y"], seed=3)
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        np.testing.assert_array_equal(a[PATCHES][()], b[PATCHES][()])
        assert a[PATCHES].shape == (2, 4, 16)  # the fixture's grid by default
