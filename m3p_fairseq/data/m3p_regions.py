"""Image regions of M3P pre-training: each region's feature, its 5-D spatial embedding
(normalised top-left x, y, bottom-right x, y, fraction of the image area; paper Sec. 3 "Image
Stream") and, where known, its object class.

Two sources, read from one feature file (``data/image_features.py``'s format):

* **grid patches** (every feature file): the ``patches`` [N, P, D] of a vision backbone, row-major
  over a grid of ``rows x cols`` cells given by the file attribute ``patch_grid`` = [rows, cols],
  else a square grid (P must then be a square number). Their boxes follow from the grid.
* **a user's own regions**: a file that also holds ``region_boxes`` [N, P, 4] (x1, y1, x2, y2,
  normalised to [0, 1]) gives each ``patches`` row its box; ``region_classes`` [N, P] (int, -1 =
  no class) with the attribute ``num_region_classes`` = K gives MRM's class targets.
"""

import os
import shutil
from typing import Dict, Optional, Tuple

import h5py
import numpy as np
import torch
from torch import Tensor

from ..atomic_io import atomic_path
from .image_features import IMAGE_IDS, ImageFeatureError, ImageFeatureStore

PATCH_GRID = "patch_grid"
REGION_BOXES = "region_boxes"
REGION_CLASSES = "region_classes"
NUM_REGION_CLASSES = "num_region_classes"
NO_CLASS = -1  # a region without a class label (no MRM cross-entropy for it)
SPATIAL_DIM = 5


def spatial_embedding(boxes: Tensor) -> Tensor:
    """[..., 4] normalised (x1, y1, x2, y2) -> [..., 5] with the area fraction (x2-x1)(y2-y1)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return torch.cat([boxes, area.unsqueeze(-1)], dim=-1)


def grid_boxes(rows: int, cols: int) -> Tensor:
    """5-D boxes [rows*cols, 5] of a grid's cells, row-major (the order of the patch tokens)."""
    if rows < 1 or cols < 1:
        raise ValueError(f"a patch grid needs at least one row and column, got {rows}x{cols}")
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    boxes = torch.stack([c / cols, r / rows, (c + 1) / cols, (r + 1) / rows], dim=-1).view(-1, 4)
    return spatial_embedding(boxes).float()


def check_boxes(boxes: np.ndarray, where: str) -> None:
    """Boxes must be normalised and ordered: 0 <= x1 <= x2 <= 1, 0 <= y1 <= y2 <= 1."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    bad = ~((0 <= x1) & (x1 <= x2) & (x2 <= 1) & (0 <= y1) & (y1 <= y2) & (y2 <= 1))
    if bad.any():
        region = np.argwhere(bad)[0].tolist()
        raise ImageFeatureError(f"{where}: box {boxes[tuple(region)].tolist()} at {region} is not a normalised "
                                "(x1, y1, x2, y2) with 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1")


class RegionFeatureReader:
    """Regions of the images of one feature file: ``read(row)`` -> (features [P, D], 5-D boxes
    [P, 5], classes [P] long or None). ``num_classes`` is K (0: the file has no classes)."""

    def __init__(self, store: ImageFeatureStore):
        self.store = store
        self.path = store.path
        with h5py.File(self.path, "r") as f:
            self.user_boxes = REGION_BOXES in f
            self.has_classes = REGION_CLASSES in f
            expected = (store.num_images, store.num_patches)
            if self.user_boxes and f[REGION_BOXES].shape != (*expected, 4):
                raise ImageFeatureError(f"{self.path}: dataset {REGION_BOXES} is {f[REGION_BOXES].shape}, expected "
                                        f"{(*expected, 4)} (one normalised x1, y1, x2, y2 per region)")
            if self.has_classes and f[REGION_CLASSES].shape != expected:
                raise ImageFeatureError(f"{self.path}: dataset {REGION_CLASSES} is {f[REGION_CLASSES].shape}, "
                                        f"expected {expected} (one class per region, {NO_CLASS} for none)")
            self.num_classes = int(f.attrs.get(NUM_REGION_CLASSES, 0)) if self.has_classes else 0
            if self.has_classes and self.num_classes < 1:
                raise ImageFeatureError(f"{self.path}: has {REGION_CLASSES} but no attribute {NUM_REGION_CLASSES} "
                                        "(the number K of object classes)")
        self.grid = None if self.user_boxes else grid_boxes(*self.patch_grid(store))
        self._file, self._owner_pid = None, None

    @staticmethod
    def patch_grid(store: ImageFeatureStore) -> Tuple[int, int]:
        """(rows, cols) of the file's patch grid: the ``patch_grid`` attribute, else square."""
        patches = store.num_patches
        if PATCH_GRID in store.attrs:
            rows, cols = (int(v) for v in store.attrs[PATCH_GRID])
            if rows * cols != patches:
                raise ImageFeatureError(f"{store.path}: attribute {PATCH_GRID} = {rows}x{cols} but the file has "
                                        f"{patches} patches per image")
            return rows, cols
        side = int(round(patches ** 0.5))
        if side * side != patches:
            raise ImageFeatureError(f"{store.path}: {patches} patches per image is not a square grid; set the "
                                    f"attribute {PATCH_GRID} = [rows, cols] or store {REGION_BOXES}")
        return side, side

    def _h5(self) -> h5py.File:
        if self._file is None or self._owner_pid != os.getpid():  # never share a handle across fork
            self._file, self._owner_pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def read(self, row: int) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        features, _ = self.store.read(row)
        if self.user_boxes:
            raw = self._h5()[REGION_BOXES][row].astype(np.float64)
            check_boxes(raw, f"{self.path}: image {row}")
            boxes = spatial_embedding(torch.from_numpy(raw)).float()
        else:
            boxes = self.grid.clone()
        classes = None
        if self.has_classes:
            classes = torch.from_numpy(self._h5()[REGION_CLASSES][row].astype(np.int64))
            bad = (classes < NO_CLASS) | (classes >= self.num_classes)
            if bad.any():
                raise ImageFeatureError(f"{self.path}: image {row} has region class {int(classes[bad][0])}, "
                                        f"expected {NO_CLASS} or 0..{self.num_classes - 1}")
        return features.float(), boxes, classes

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _owner_pid=None)
        return state


def write_region_labels(path, boxes: Dict[str, np.ndarray], classes: Dict[str, np.ndarray], num_classes: int) -> int:
    """Adds (or replaces) ``region_boxes``/``region_classes``/``num_region_classes`` of a feature
    file: ``boxes[id]`` [P, 4] and ``classes[id]`` [P] for the images given; the others keep their
    grid cells' boxes with no class. The file is copied, changed and renamed over the original
    (atomic_io): a crash leaves the old file whole. Returns the number of images labelled."""
    store = ImageFeatureStore(path)
    with h5py.File(store.path, "r") as f:
        image_ids = list(f[IMAGE_IDS].asstr()[()])
    unknown = sorted(set(boxes) - set(image_ids))
    if unknown or set(classes) != set(boxes):
        raise ImageFeatureError(f"{store.path}: regions given for image ids it does not hold, e.g. {unknown[:3]}"
                                if unknown else "every labelled image needs both its boxes and its classes")
    grid = grid_boxes(*RegionFeatureReader.patch_grid(store))[:, :4].numpy()
    all_boxes = np.repeat(grid[None], len(image_ids), axis=0)
    all_classes = np.full((len(image_ids), store.num_patches), NO_CLASS, dtype=np.int64)
    for row, image_id in enumerate(image_ids):
        if image_id in boxes:
            all_boxes[row], all_classes[row] = boxes[image_id], classes[image_id]
    check_boxes(all_boxes, str(store.path))
    if ((all_classes < NO_CLASS) | (all_classes >= num_classes)).any():
        raise ImageFeatureError(f"{store.path}: region classes outside {NO_CLASS}..{num_classes - 1}")
    with atomic_path(store.path) as tmp:
        shutil.copyfile(store.path, tmp)
        with h5py.File(tmp, "a") as f:
            for name, data in ((REGION_BOXES, all_boxes), (REGION_CLASSES, all_classes)):
                if name in f and f[name].shape == data.shape and f[name].dtype == data.dtype:
                    f[name][...] = data  # in place: HDF5 does not reclaim a deleted dataset's space
                else:
                    if name in f:
                        del f[name]
                    f.create_dataset(name, data=data)
            f.attrs[NUM_REGION_CLASSES] = num_classes
    return len(boxes)
