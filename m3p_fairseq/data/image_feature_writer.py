"""The writer of the image-feature file (the format is described in ``image_features.py``)."""

import errno
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import h5py
import numpy as np

from ..atomic_io import atomic_path
from .image_features import (
    FINGERPRINT,
    GLOBAL,
    IMAGE_IDS,
    NUM_UNUSABLE,
    NUM_VIEWS,
    PATCHES,
    ROWS_WRITTEN,
    USABLE,
    VIEW_GLOBAL,
    VIEW_PATCHES,
    ImageFeatureError,
)

logger = logging.getLogger(__name__)


class FeatureFileBusyError(ImageFeatureError):
    """Another process is writing the same feature file."""


class FeatureFileExistsError(ImageFeatureError):
    """The finished feature file exists and the writer was told not to replace it."""


def _create(f: h5py.File, name: str, shape: Tuple[int, ...], chunks: Tuple[int, ...], dtype, fill=None) -> None:
    # every chunk allocated now: later writes change data bytes only, never the chunk index
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    # HDF5 rejects chunks larger than the dataset, so an empty id list gets a contiguous one
    f.create_dataset(name, shape, dtype=dtype, chunks=chunks if shape[0] else None, dcpl=dcpl, fillvalue=fill)


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
                if error.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                    # as HDF5 on such file systems: write on, since refusing would block every run
                    logger.warning("%s: this file system has no locks (%s); a second run on %s would not be "
                                   "noticed", lock_path, error.strerror, target)
                    break
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
    Re-opening after an interruption (an exception, Ctrl-C, a SIGKILL at any point) continues at the first unwritten row; the id list, attributes and ``num_views`` must be the
    same (a fingerprint is stored), otherwise the ``.partial`` is left as it is and opening fails
    with what differs. Only a ``.partial`` that is not HDF5 at all (a crash before its header was
    written) is started over, with a warning. While open, the writer holds ``<path>.lock``; a
    second writer on the same file, in another process, fails at once (:class:`FeatureFileBusyError`).

    Every dataset is allocated (HDF5 writes it with zeros) when the file is created, so that
    writing rows only changes their bytes and the ``rows_written`` attribute: a kill mid-write
    cannot leave a half-updated layout, and the disk space is taken at the start, not days later.
    With ``num_views`` = K > 0 every :meth:`write` also takes the K augmented views of each image.
    Every row carries a ``usable`` flag (default True); :meth:`unusable_rows` and :meth:`rewrite`
    let a resumed run retry the images an earlier run could not decode. With ``replace_existing``
    False, a finished file at ``path`` is an error (:class:`FeatureFileExistsError`).
    """

    def __init__(self, path, image_ids: Sequence[str], num_patches: int, feature_dim: int,
                 dtype: str = "float16", attrs: Optional[dict] = None, num_views: int = 0,
                 replace_existing: bool = True):
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
            if not replace_existing and self.path.exists():  # checked under the lock: no run can publish meanwhile
                raise FeatureFileExistsError(f"{self.path} exists; delete it to write it again")
            self._file = self._open_or_resume(fingerprint, image_ids, job)
            if self._file is None:
                self._file = self._create_file(image_ids, dtype, attrs, fingerprint)
            if USABLE not in self._file:  # a .partial from before the flag: its rows were all decoded
                _create(self._file, USABLE, (self.num_images,), (min(self.num_images, 65536),), bool, fill=True)
                self._file.flush()
        except BaseException:
            self._lock.release()
            raise

    def _create_file(self, image_ids: Sequence[str], dtype: str, attrs: dict, fingerprint: str) -> h5py.File:
        # built under a temporary name and renamed: a .partial always holds the whole layout
        n, p, d, k = len(image_ids), self.num_patches, self.feature_dim, self.num_views
        with atomic_path(self.partial_path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset(IMAGE_IDS, data=list(image_ids), dtype=h5py.string_dtype())
            _create(f, PATCHES, (n, p, d), (1, p, d), dtype)
            _create(f, GLOBAL, (n, d), (min(n, 256), d), dtype)
            if k:
                _create(f, VIEW_PATCHES, (n, k, p, d), (1, 1, p, d), dtype)
                _create(f, VIEW_GLOBAL, (n, k, d), (1, k, d), dtype)
            _create(f, USABLE, (n,), (min(n, 65536),), bool, fill=True)
            f.attrs.update(attrs)
            # created now and later only overwritten in place (attrs.modify): no object-header changes mid-run
            f.attrs[FINGERPRINT] = fingerprint
            f.attrs[ROWS_WRITTEN] = np.int64(0)
            f.attrs[NUM_UNUSABLE] = np.int64(0)
        return h5py.File(self.partial_path, "a")

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
