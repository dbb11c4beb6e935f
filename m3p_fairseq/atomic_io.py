"""The project's one atomic writer.

Everything a user keeps (dictionaries, binarized data, id lists, hypotheses, tables, sweep state)
is written to a hidden temporary file in the destination's directory, flushed to disk, and then
renamed over the destination: a reader, a crash or a second process sees the old file or the new
one, never half of one. The temporary name carries the process id, so two writers never share
one; a crash leaves at most a hidden ``.NAME.PID.tmp`` beside the target, never a wrong target.
"""

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def temporary_sibling(path: PathLike) -> Path:
    """A hidden name beside ``path`` (same file system, so ``os.replace`` is atomic), outside
    globs such as ``*.txt`` or ``images/*.png``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_directory(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed
    and ``path`` is left as it was. For writers that open the file themselves (numpy, h5py,
    sentencepiece, fairseq's indexed-dataset builder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_if_changed(path: PathLike, data: bytes) -> bool:
    """Atomically write ``data`` unless ``path`` already holds exactly it (a re-run leaves the
    file and its mtime alone); returns whether it wrote."""
    try:
        if Path(path).read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data)
    return True
