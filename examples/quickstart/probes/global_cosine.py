"""How alike are the quickstart's global image vectors? The mean cosine similarity between the
global vectors (and, for comparison, the mean patch features) of two different images.

    python examples/quickstart/probes/global_cosine.py [--work-dir work/quickstart] [--images 1000]

Reads WORK/data-bin/image_features.h5, as ``python examples/quickstart/run.py`` makes it: every
pair of the first --images training images.
"""

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean of cos(v_i, v_j) over all pairs i != j."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = unit @ unit.T
    n = len(unit)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "quickstart")
    parser.add_argument("--images", type=int, default=1000, help="the first N images of the file")
    args = parser.parse_args(argv)
    import h5py

    from m3p_fairseq.data.data_dir import DataDirectory
    from m3p_fairseq.data.image_features import GLOBAL, PATCHES

    with h5py.File(DataDirectory(args.work_dir / "data-bin").shared_features, "r") as f:
        global_vectors = f[GLOBAL][:args.images].astype(np.float64)
        mean_patches = f[PATCHES][:args.images].astype(np.float64).mean(axis=1)
    results = {"global": mean_pairwise_cosine(global_vectors), "mean patch": mean_pairwise_cosine(mean_patches)}
    for name, value in results.items():
        print(f"mean cosine between the {name} vectors of two different images: {value:.4f} "
              f"({len(global_vectors)} images)")
    return results


if __name__ == "__main__":
    main()
