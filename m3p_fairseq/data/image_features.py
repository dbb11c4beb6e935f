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

Writing is atomic, resumable and exclusive (see :class:`ImageFeatureWriter`): rows go to
``<file>.partial``, which a second writer on the same file refuses to touch, and ``rows_written``
counts only rows whose features are on disk, so a process killed at any moment leaves a file the
next run resumes. Readers refuse a file with ``rows_written`` < N.

Readers never share an open handle across ``fork``: the file is opened lazily by whichever
process reads first, so every data-loader worker gets its own handle, and a dataset keeps only
an int64 row index per example (memory independent of how many images the file holds).
"""

import errno
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

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

logger = logging.getLogger(__name__)


class ImageFeatureError(ValueError):
    """Bad or inconsistent image-feature input; the message names the file and what was expected."""


class FeatureFileBusyError(ImageFeatureError):
    """Another process is writing the same feature file."""


def read_image_ids(path) -> List[str]:
    """One image id per line; blank lines are an error because they would shift alignment."""
    path = Path(path)
    if not path.is_file():
        raise ImageFeatureError(f"image-id list not found: {path}")
    with open(path, encoding="utf-8") as f:
        ids = [line.rstrip("\r\n") for line in f]
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


def _differences(f: h5py.File, image_ids: Sequence[str], job: dict) -> str:
    """What differs between the job stored in ``f`` and ``job``, for an error message."""
    stored_ids = f[IMAGE_IDS].asstr()[()].tolist() if IMAGE_IDS in f else None
    found = [] if stored_ids == list(image_ids) else ["the image ids"]
    for key, value in job.items():
        if key == "shape":
            stored = [*f[PATCHES].shape[1:], str(f[PATCHES].dtype)] if PATCHES in f else None
        else:
            stored = f.attrs.get(key)
            stored = stored.tolist() if isinstance(stored, (np.ndarray, np.generic)) else stored
        if stored != (list(value) if isinstance(value, tuple) else value):
            found.append(f"{key} {'absent' if stored is None else stored} there, {value!r} now")
    return "; ".join(found) or "a fingerprint from another version"


def _fingerprint(image_ids: Sequence[str], attrs: dict) -> str:
    digest = hashlib.sha256(json.dumps([list(image_ids), attrs], sort_keys=True).encode())
    return digest.hexdigest()


class WriterLock:
    """An exclusive lock on ``lock_path`` for the writer of ``target``, taken at once or not at all.

    A POSIX (fcntl) lock: the kernel releases it when its process dies, so a killed writer never
    leaves a stale lock. The file holds the owner's process id for the error message and is
    removed on release.
    """

    def __init__(self, lock_path: Path, target: Path):
        self.path = lock_path
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                owner = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise FeatureFileBusyError(
                    f"{target}: another process{f' (pid {owner})' if owner else ''} is writing it (it holds "
                    f"{lock_path}). Wait for it to finish, or stop it and run again to resume its work"
                ) from None
            # the owner may have released and removed the file between our open and lock: that inode
            # is no longer the lock, so try again with the file now at lock_path
            try:
                current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: Optional[int] = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked, so no one else's file is removed
        finally:
            os.close(self._fd)  # releases the lock
            self._fd = None


class ImageFeatureWriter:
    """Atomic, resumable, exclusive writer.

    Rows go to ``<path>.partial``; :meth:`close` renames it to ``path`` once every row is there.
    Re-opening after an interruption (an exception, a kill, a power cut after the last flush)
    continues at the first unwritten row; the id list, attributes and ``num_views`` must be the
    same (a fingerprint is stored), otherwise the ``.partial`` is left as it is and opening fails
    with what differs. Only a ``.partial`` that is not HDF5 at all (a crash before its header was
    written) is started over, with a warning. While open, the writer holds ``<path>.lock``; a
    second writer on the same file, in another process, fails at once (:class:`FeatureFileBusyError`).

    Every dataset is allocated when the file is created, so that writing rows only changes their
    bytes and the ``rows_written`` attribute: a kill mid-write cannot leave a half-updated layout.
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
        job = {**attrs, "shape": [num_patches, feature_dim, dtype]}
        fingerprint = _fingerprint(image_ids, job)
        self._lock = WriterLock(self.path.with_name(self.path.name + ".lock"), self.partial_path)
        try:
            self._file = self._open_or_resume(fingerprint, image_ids, job)
            if self._file is None:
                self._file = self._create_file(image_ids, dtype, attrs, fingerprint)
            if USABLE not in self._file:  # a .partial from before the flag: its rows were all decoded
                self._create(USABLE, (self.num_images,), (min(self.num_images, 65536),), bool, fill=True)
                self._file.flush()
        except BaseException:
            self._lock.release()
            raise

    def _create_file(self, image_ids: Sequence[str], dtype: str, attrs: dict, fingerprint: str) -> h5py.File:
        self._file = h5py.File(self.partial_path, "w")
        self._file.create_dataset(IMAGE_IDS, data=list(image_ids), dtype=h5py.string_dtype())
        n, p, d, k = len(image_ids), self.num_patches, self.feature_dim, self.num_views
        self._create(PATCHES, (n, p, d), (1, p, d), dtype)
        self._create(GLOBAL, (n, d), (min(n, 256), d), dtype)
        if k:
            self._create(VIEW_PATCHES, (n, k, p, d), (1, 1, p, d), dtype)
            self._create(VIEW_GLOBAL, (n, k, d), (1, k, d), dtype)
        self._create(USABLE, (n,), (min(n, 65536),), bool, fill=True)
        self._file.attrs.update(attrs)
        # created now and later only overwritten in place (attrs.modify): no object-header changes mid-run
        self._file.attrs[FINGERPRINT] = fingerprint
        self._file.attrs[ROWS_WRITTEN] = np.int64(0)
        self._file.attrs[NUM_UNUSABLE] = np.int64(0)
        self._file.flush()
        return self._file

    def _create(self, name: str, shape: Tuple[int, ...], chunks: Tuple[int, ...], dtype, fill=None) -> None:
        # every chunk allocated now: later writes change data bytes only, never the chunk index
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        # HDF5 rejects chunks larger than the dataset, so an empty id list gets a contiguous one
        self._file.create_dataset(name, shape, dtype=dtype, chunks=chunks if shape[0] else None, dcpl=dcpl,
                                  fillvalue=fill)

    def _open_or_resume(self, fingerprint: str, image_ids: Sequence[str], job: dict) -> Optional[h5py.File]:
        if not self.partial_path.exists():
            return None
        if not h5py.is_hdf5(self.partial_path):
            logger.warning("%s is not an HDF5 file (%d bytes; a run killed before it wrote the file's header?): "
                           "starting over", self.partial_path, self.partial_path.stat().st_size)
            self.partial_path.unlink()
            return None
        try:
            f = h5py.File(self.partial_path, "a")
        except OSError as error:  # kept: it may hold hours of work that h5py's tools can still recover
            raise ImageFeatureError(
                f"{self.partial_path}: cannot resume this unfinished feature file, HDF5 cannot open it "
                f"({' '.join(str(error).split())}). It is left as it is; move or delete it to extract from the start"
            ) from error
        if f.attrs.get(FINGERPRINT) == fingerprint:
            return f
        differences = _differences(f, image_ids, job)
        f.close()
        raise ImageFeatureError(
            f"{self.partial_path}: unfinished features of another extraction ({differences}); it is left as it is. "
            f"Run again with the options it was started with to finish it, or move or delete it to start this one"
        )

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
        # the rows first, then the count: a kill between the two flushes leaves the count behind the
        # data, never ahead of it
        self._file.flush()
        self._file.attrs.modify(ROWS_WRITTEN, np.int64(end))
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
        self._file.flush()  # the features before their flags, as in write
        for i, row in enumerate(rows.tolist()):
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
        try:
            if not self._file:  # closed already, e.g. by a test standing in for a crash
                return
            done = self.rows_written == self.num_images
            self._file.attrs.modify(NUM_UNUSABLE, np.int64(len(self.unusable_rows())))
            self._file.close()
            if done and publish:
                with open(self.partial_path, "rb+") as f:  # on disk before it is renamed into place
                    os.fsync(f.fileno())
                os.replace(self.partial_path, self.path)
        finally:
            self._lock.release()
