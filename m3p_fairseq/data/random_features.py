"""Random image features in the project's HDF5 layout, for test fixtures and the benchmark's
reader files: no images, no backbone, just the shape a data directory needs.

Not for training anything real: the features carry no information about any image.
"""

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .image_features import ImageFeatureWriter

# the test fixture's grid: 4 patches (a 2x2 grid) of 16 dimensions
FIXTURE_NUM_PATCHES = 4
FIXTURE_FEATURE_DIM = 16


def write_random_features(path: Path, image_ids: Sequence[str], num_patches: int = FIXTURE_NUM_PATCHES,
                          feature_dim: int = FIXTURE_FEATURE_DIM, seed: int = 0, dtype: str = "float32",
                          num_views: int = 0, npy_path: Optional[Path] = None, chunk: int = 1000,
                          attrs: Optional[Dict[str, str]] = None) -> None:
    """Standard-normal ``patches``, ``global`` (and ``num_views`` augmented views) for
    ``image_ids``, written through :class:`ImageFeatureWriter` in chunks of ``chunk`` images.

    One block of ``chunk`` images is drawn from ``seed`` and shifted by ``start / chunk`` for
    each later chunk: every image differs, at a fraction of the generator's cost for the
    benchmark's 50k-image files. With ``npy_path``, the same patches also go to one .npy array
    (the in-memory reader the benchmark compares against).
    """
    rng = np.random.default_rng(seed)
    n, rows = len(image_ids), min(chunk, len(image_ids))
    views = {}
    if num_views:
        views = {"view_patches": rng.standard_normal((rows, num_views, num_patches, feature_dim)),
                 "view_global": rng.standard_normal((rows, num_views, feature_dim))}
    patches = rng.standard_normal((rows, num_patches, feature_dim))
    global_ = rng.standard_normal((rows, feature_dim))
    writer = ImageFeatureWriter(path, image_ids, num_patches, feature_dim, dtype, num_views=num_views,
                                attrs={"backbone": "random (m3p_fairseq.data.random_features)", **(attrs or {})})
    npy = (np.lib.format.open_memmap(npy_path, mode="w+", dtype=dtype, shape=(n, num_patches, feature_dim))
           if npy_path is not None else None)
    for start in range(0, n, chunk):
        size, shift = min(chunk, n - start), start / chunk
        block = (patches[:size] + shift).astype(dtype)
        writer.write(block, (global_[:size] + shift).astype(dtype),
                     **{name: (value[:size] + shift).astype(dtype) for name, value in views.items()})
        if npy is not None:
            npy[start:start + size] = block
    writer.close()
    if npy is not None:
        npy.flush()
        del npy
