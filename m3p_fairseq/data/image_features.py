"""Precomputed image features in one HDF5 file: the format, its reader and its writer.

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

Readers never share an open handle across ``fork``: the file is opened lazily by whichever
process reads first, so every data-loader worker gets its own handle, and a dataset keeps only
an int64 row index per example (memory independent of how many images the file holds).
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from .text_lines import read_lines

PATCHES = "patches"
GLOBAL = "global"
IMAGE_IDS = "image_ids"
VIEW_PATCHES = "view_patches"
VIEW_GLOBAL = "view_global"
NUM_VIEWS = "num_views"
ROWS_WRITTEN = "rows_written"
USABLE = "usable"
NUM_UNUSABLE = "num_unusable"


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
            self.num_views = int(f.attrs.get(NUM_VIEWS, 0))
            if self.num_views:
                self._check_view_shapes(f)
            self.usable = self._read_usable(f)
            self.num_unusable = int(n - np.count_nonzero(self.usable))
            self.attrs = dict(f.attrs)
        self._file: Optional[h5py.File] = None
        self._owner_pid: Optional[int] = None
        self._open_datasets = None

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
        """(patches [P, D], global [D]) of one image, as stored (float16 or float32).

        ``view`` None gives the clean image's features, 0 <= view < num_views an augmented view's.
        """
        patches, global_vectors, view_patches, view_global = self._datasets()
        if view is None:
            return torch.from_numpy(patches[row]), torch.from_numpy(global_vectors[row])
        if not 0 <= view < self.num_views:
            valid = f"0..{self.num_views - 1}" if self.num_views else "none: extracted without --augmented-views"
            raise ImageFeatureError(f"{self.path}: no augmented view {view} (valid views: {valid})")
        return torch.from_numpy(view_patches[row, view]), torch.from_numpy(view_global[row, view])

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
        state.update(_file=None, _owner_pid=None, _open_datasets=None)
        return state


def _fingerprint(image_ids: Sequence[str], attrs: dict) -> str:
    digest = hashlib.sha256(json.dumps([list(image_ids), attrs], sort_keys=True).encode())
    return digest.hexdigest()


class ImageFeatureWriter:
    """Atomic, resumable writer.

    Rows go to ``<path>.partial``; :meth:`close` renames it to ``path`` once every row is there.
    Re-opening after an interruption continues at the first unwritten row, provided the id list,
    attributes and ``num_views`` are the same (a fingerprint is stored), otherwise it starts over.
    With ``num_views`` = K > 0 every :meth:`write` also takes the K augmented views of each image.
    Every row carries a ``usable`` flag (default True); :meth:`unusable_rows` and :meth:`rewrite`
    let a resumed run retry the images an earlier run could not decode.
    """

    def __init__(self, path, image_ids: Sequence[str], num_patches: int, feature_dim: int,
                 dtype: str = "float16", attrs: Optional[dict] = None, num_views: int = 0):
        if len(set(image_ids)) != len(image_ids):
            raise ImageFeatureError(f"{path}: duplicate image ids in the list to extract")
        if num_views < 0:
            raise ImageFeatureError(f"{path}: num_views must be >= 0, got {num_views}")
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.num_images, self.num_patches, self.feature_dim = len(image_ids), num_patches, feature_dim
        self.num_views = num_views
        attrs = {**(attrs or {}), NUM_VIEWS: num_views}
        fingerprint = _fingerprint(image_ids, {**attrs, "shape": [num_patches, feature_dim, dtype]})
        self._file = self._open_or_resume(fingerprint)
        if self._file is None:
            self._file = h5py.File(self.partial_path, "w")
            self._file.create_dataset(IMAGE_IDS, data=list(image_ids), dtype=h5py.string_dtype())
            n, p, d, k = len(image_ids), num_patches, feature_dim, num_views
            self._create(PATCHES, (n, p, d), (1, p, d), dtype)
            self._create(GLOBAL, (n, d), (min(n, 256), d), dtype)
            if k:
                self._create(VIEW_PATCHES, (n, k, p, d), (1, 1, p, d), dtype)
                self._create(VIEW_GLOBAL, (n, k, d), (1, k, d), dtype)
            self._file.attrs.update(attrs)
            self._file.attrs["fingerprint"] = fingerprint
            self._file.attrs[ROWS_WRITTEN] = 0
        if USABLE not in self._file:  # also in a .partial from before the flag: its rows were all decoded
            self._file.create_dataset(USABLE, data=np.ones(self.num_images, dtype=bool))

    def _create(self, name: str, shape: Tuple[int, ...], chunks: Tuple[int, ...], dtype: str) -> None:
        # HDF5 rejects chunks larger than the dataset, so an empty id list gets a contiguous one
        self._file.create_dataset(name, shape, dtype=dtype, chunks=chunks if shape[0] else None)

    def _open_or_resume(self, fingerprint: str) -> Optional[h5py.File]:
        if not self.partial_path.exists():
            return None
        try:
            f = h5py.File(self.partial_path, "a")
        except OSError:  # truncated by a crash mid-write: start over
            self.partial_path.unlink()
            return None
        if f.attrs.get("fingerprint") == fingerprint:
            return f
        f.close()
        self.partial_path.unlink()
        return None

    @property
    def rows_written(self) -> int:
        return int(self._file.attrs[ROWS_WRITTEN])

    def write(self, patches: np.ndarray, global_vectors: np.ndarray,
              view_patches: Optional[np.ndarray] = None, view_global: Optional[np.ndarray] = None,
              usable: Optional[np.ndarray] = None) -> None:
        """Append the next rows ([B, P, D] and [B, D]; views [B, K, P, D] and [B, K, D]) and
        record progress. Views are required iff the writer was opened with num_views > 0.
        ``usable`` [B] bool flags the rows (default: all usable)."""
        start = self.rows_written
        end = start + len(patches)
        if end > self.num_images:
            raise ImageFeatureError(f"{self.path}: more rows written than the {self.num_images} ids")
        self._check_views(len(patches), view_patches, view_global)
        usable = self._check_usable(len(patches), usable)
        self._file[PATCHES][start:end] = patches
        self._file[GLOBAL][start:end] = global_vectors
        if self.num_views:
            self._file[VIEW_PATCHES][start:end] = view_patches
            self._file[VIEW_GLOBAL][start:end] = view_global
        self._file[USABLE][start:end] = usable
        self._file.attrs[ROWS_WRITTEN] = end
        self._file.flush()

    def unusable_rows(self) -> np.ndarray:
        """Rows written so far with ``usable`` False, ascending."""
        return np.flatnonzero(~self._file[USABLE][: self.rows_written].astype(bool))

    def rewrite(self, rows: Sequence[int], patches: np.ndarray, global_vectors: np.ndarray,
                view_patches: Optional[np.ndarray] = None, view_global: Optional[np.ndarray] = None,
                usable: Optional[np.ndarray] = None) -> None:
        """Overwrite already written ``rows``, with the arrays :meth:`write` takes;
        e.g. when an image flagged unusable by an interrupted run can be decoded now."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(patches):
            raise ImageFeatureError(f"{self.path}: {len(rows)} rows to rewrite but {len(patches)} rows of features")
        if len(rows) and not (0 <= rows.min() and rows.max() < self.rows_written):
            raise ImageFeatureError(f"{self.path}: only written rows (0..{self.rows_written - 1}) can be "
                                    f"rewritten, got {rows.tolist()}")
        self._check_views(len(patches), view_patches, view_global)
        usable = self._check_usable(len(patches), usable)
        for i, row in enumerate(rows.tolist()):
            self._file[PATCHES][row] = patches[i]
            self._file[GLOBAL][row] = global_vectors[i]
            if self.num_views:
                self._file[VIEW_PATCHES][row] = view_patches[i]
                self._file[VIEW_GLOBAL][row] = view_global[i]
            self._file[USABLE][row] = usable[i]
        self._file.flush()

    def _check_usable(self, batch_size: int, usable: Optional[np.ndarray]) -> np.ndarray:
        if usable is None:
            return np.ones(batch_size, dtype=bool)
        usable = np.asarray(usable)
        if usable.shape != (batch_size,) or usable.dtype != bool:
            raise ImageFeatureError(f"{self.path}: usable must be a bool array of shape ({batch_size},), "
                                    f"got {usable.dtype} {usable.shape}")
        return usable

    def _check_views(self, batch_size: int, view_patches, view_global) -> None:
        k, p, d = self.num_views, self.num_patches, self.feature_dim
        if not k:
            if view_patches is not None or view_global is not None:
                raise ImageFeatureError(f"{self.path}: augmented views given, but the writer was opened "
                                        f"with num_views=0; open it with num_views=K to store them")
            return
        if view_patches is None or view_global is None:
            raise ImageFeatureError(f"{self.path}: the writer stores {k} augmented views per image; every "
                                    f"write() needs view_patches [B, {k}, {p}, {d}] and view_global [B, {k}, {d}]")
        for name, array, expected in (("view_patches", view_patches, (batch_size, k, p, d)),
                                      ("view_global", view_global, (batch_size, k, d))):
            if tuple(array.shape) != expected:
                raise ImageFeatureError(f"{self.path}: {name} has shape {tuple(array.shape)}, expected {expected}")

    def close(self, publish: bool = True) -> None:
        """Close, and rename a complete file to ``path``; with ``publish=False`` a complete file
        stays ``.partial``, so that a later run resumes it instead of extracting again."""
        done = self.rows_written == self.num_images
        self._file.attrs[NUM_UNUSABLE] = len(self.unusable_rows())
        self._file.close()
        if done and publish:
            os.replace(self.partial_path, self.path)
