"""Precomputed image features in one HDF5 file: the format and its reader.

Layout (written by ``preprocess/extract_image_features.py`` through :class:`ImageFeatureWriter`)::

    image_ids     [N]           UTF-8 strings, the key every text line refers to
    patches       [N, P, D]     float16 or float32, patch tokens of the vision backbone
    global        [N, D]        same dtype, one vector per image (pooled / CLS)
    view_patches  [N, K, P, D]  optional, same dtype: patches of K augmented views per image (MMA)
    view_global   [N, K, D]     optional, same dtype: global vectors of those views
    usable        [N]           bool, True when the features come from a decoded image; False marks an
                                image that was missing or undecodable at extraction (its rows are zero).
                                Absent in older files, which read as all usable
    attrs                       free-form provenance (backbone, image size, ...); ``num_views`` = K,
                                absent or 0 when the file holds no views; ``num_unusable`` = the
                                number of False in ``usable``

``view_patches`` is chunked per (image, view), so reading one view of one image reads one chunk.

The writer (:class:`ImageFeatureWriter` in ``image_feature_writer.py``, importable from here) is
atomic, resumable and exclusive: rows go to ``<file>.partial``, which a second writer on the same
file refuses to touch, and the attribute ``rows_written`` counts only rows whose features are on
disk, so a process killed at any moment leaves a file the next run resumes. Readers refuse a file
with ``rows_written`` < N (files made by other tools, without the attribute, count as complete).

Readers never share an open handle across ``fork``: the file is opened lazily by whichever
process reads first, so every data-loader worker gets its own handle, and a dataset keeps only
an int64 row index per example (memory independent of how many images the file holds).
"""

import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from .text_lines import read_lines

#: reads each store keeps (a few batches' images, ~20 MB of ViT-B/32 float16 features)
RECENT_READS = 256
PATCHES = "patches"
GLOBAL = "global"
IMAGE_IDS = "image_ids"
VIEW_PATCHES = "view_patches"
VIEW_GLOBAL = "view_global"
NUM_VIEWS = "num_views"
ROWS_WRITTEN = "rows_written"
USABLE = "usable"
NUM_UNUSABLE = "num_unusable"
FINGERPRINT = "fingerprint"


class ImageFeatureError(ValueError):
    """Bad or inconsistent image-feature input; the message names the file and what was expected."""


def read_image_ids(path) -> List[str]:
    """One image id per line; blank lines are an error because they would shift alignment."""
    path = Path(path)
    if not path.is_file():
        raise ImageFeatureError(f"image-id list not found: {path}")
    ids = read_lines(path)  # the one line reader: the text's line n is the id list's line n
    for line_no, image_id in enumerate(ids, start=1):
        if not image_id.strip():
            raise ImageFeatureError(f"{path}:{line_no}: empty image id (expected one id per line)")
    return ids


class ImageFeatureStore:
    """Read-only, fork-safe access to one feature file.

    ``usable`` ([N] bool, loaded at open) says which rows come from a decoded image, and
    ``num_unusable`` how many do not; a file without the dataset reads as all usable.
    """

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise ImageFeatureError(f"image-feature file not found: {self.path}")
        with h5py.File(self.path, "r") as f:
            missing = [k for k in (IMAGE_IDS, PATCHES, GLOBAL) if k not in f]
            if missing:
                raise ImageFeatureError(
                    f"{self.path}: not an m3p feature file, missing dataset(s) {missing} "
                    f"(expected {IMAGE_IDS}, {PATCHES} [N,P,D], {GLOBAL} [N,D])"
                )
            n, self.num_patches, self.feature_dim = f[PATCHES].shape
            if f[GLOBAL].shape != (n, self.feature_dim) or f[IMAGE_IDS].shape != (n,):
                raise ImageFeatureError(
                    f"{self.path}: inconsistent shapes {IMAGE_IDS}{f[IMAGE_IDS].shape}, "
                    f"{PATCHES}{f[PATCHES].shape}, {GLOBAL}{f[GLOBAL].shape}"
                )
            self.num_images = n
            self._check_complete(f)
            self.num_views = int(f.attrs.get(NUM_VIEWS, 0))
            if self.num_views:
                self._check_view_shapes(f)
            self.usable = self._read_usable(f)
            self.num_unusable = int(n - np.count_nonzero(self.usable))
            self.attrs = dict(f.attrs)
        self._file: Optional[h5py.File] = None
        self._owner_pid: Optional[int] = None
        self._open_datasets = None
        self._recent_reads: "OrderedDict[Tuple[int, Optional[int]], Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()

    def _check_complete(self, f: h5py.File) -> None:
        # files from the writer count their rows; files made otherwise have no count and are complete
        rows_written = int(f.attrs.get(ROWS_WRITTEN, self.num_images))
        if rows_written < self.num_images:
            raise ImageFeatureError(
                f"{self.path}: unfinished feature file, only {rows_written} of {self.num_images} images were "
                f"written ({ROWS_WRITTEN} = {rows_written}); the rest would read as zeros. Run the extraction "
                f"again to complete it"
            )

    def _check_view_shapes(self, f: h5py.File) -> None:
        n, k, p, d = self.num_images, self.num_views, self.num_patches, self.feature_dim
        if k < 0:
            raise ImageFeatureError(f"{self.path}: attribute {NUM_VIEWS} = {k}, expected >= 0")
        for name, expected in ((VIEW_PATCHES, (n, k, p, d)), (VIEW_GLOBAL, (n, k, d))):
            found = f[name].shape if name in f else "missing"
            if found != expected:
                raise ImageFeatureError(
                    f"{self.path}: {NUM_VIEWS} = {k} but dataset {name} is {found} "
                    f"(expected shape {expected} for {n} images, {p} patches, {d} dims)"
                )

    def _read_usable(self, f: h5py.File) -> np.ndarray:
        # loaded once: N bytes, and a dataset can look a flag up without touching the file
        if USABLE not in f:  # written before bad images were flagged: every row is a decoded image
            return np.ones(self.num_images, dtype=bool)
        if f[USABLE].shape != (self.num_images,):
            raise ImageFeatureError(f"{self.path}: dataset {USABLE} is {f[USABLE].shape}, "
                                    f"expected ({self.num_images},), one flag per image")
        return f[USABLE][()].astype(bool)

    def rows_for(self, image_ids: Sequence[str], source: str) -> np.ndarray:
        """Row of every id, in order; ``source`` names the id list for error messages."""
        with h5py.File(self.path, "r") as f:
            stored = f[IMAGE_IDS].asstr()[()]
        row_of: Dict[str, int] = {image_id: row for row, image_id in enumerate(stored)}
        rows = np.empty(len(image_ids), dtype=np.int64)
        for line_no, image_id in enumerate(image_ids, start=1):
            row = row_of.get(image_id)
            if row is None:
                raise ImageFeatureError(
                    f"{source}:{line_no}: image id {image_id!r} is not in {self.path} "
                    f"({len(stored)} images; extract features for this split first)"
                )
            rows[line_no - 1] = row
        return rows

    def read(self, row: int, view: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(patches [P, D], global [D]) of one image, as stored (float16 or float32); callers must
        not change them in place (a repeated read returns the same tensors).

        ``view`` None gives the clean image's features, 0 <= view < num_views an augmented view's.
        The last RECENT_READS reads are kept, so that an image repeated within a batch (one caption
        in several directions; fairseq reads a batch's examples in one process, then collates
        them) is read from the file once.
        """
        key = (int(row), view)
        if key in self._recent_reads:
            self._recent_reads.move_to_end(key)
            return self._recent_reads[key]
        patches, global_vectors, view_patches, view_global = self._datasets()
        if view is None:
            features = torch.from_numpy(patches[row]), torch.from_numpy(global_vectors[row])
        elif not 0 <= view < self.num_views:
            valid = f"0..{self.num_views - 1}" if self.num_views else "none: extracted without --augmented-views"
            raise ImageFeatureError(f"{self.path}: no augmented view {view} (valid views: {valid})")
        else:
            features = torch.from_numpy(view_patches[row, view]), torch.from_numpy(view_global[row, view])
        self._recent_reads[key] = features
        if len(self._recent_reads) > RECENT_READS:
            self._recent_reads.popitem(last=False)
        return features

    def _datasets(self) -> Tuple[h5py.Dataset, h5py.Dataset, Optional[h5py.Dataset], Optional[h5py.Dataset]]:
        # Re-open after a fork: HDF5 handles must not be shared between processes. The dataset
        # objects are kept because looking them up by name costs more than reading a row.
        if self._file is None or self._owner_pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._owner_pid = os.getpid()
            views = (self._file[VIEW_PATCHES], self._file[VIEW_GLOBAL]) if self.num_views else (None, None)
            self._open_datasets = (self._file[PATCHES], self._file[GLOBAL], *views)
        return self._open_datasets

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _owner_pid=None, _open_datasets=None, _recent_reads=OrderedDict())
        return state


# the writer's module imports this one's names, all defined by now
from .image_feature_writer import FeatureFileBusyError, FeatureFileExistsError, ImageFeatureWriter  # noqa: E402,F401
