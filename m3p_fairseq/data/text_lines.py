"""The one way a line-aligned text file (sentences, image-id lists) is read.

Line *n* of every file of a split belongs to sentence *n*, so all readers must agree on where
a line ends. Lines end at ``\\n`` only (as ``wc -l``, fairseq's indexed datasets and our id
lists count them); a ``\\r`` before the ``\\n`` (Windows line ends) is dropped. A lone ``\\r``
inside a line is not a line end (Python's text mode would split there and shift every later
sentence against its image and translation): it is read as a space, and reported.
"""

import gzip
import logging
from pathlib import Path
from typing import Iterable, List, Tuple, Union

from ..atomic_io import atomic_write_text

logger = logging.getLogger(__name__)


class TextFileError(ValueError):
    """A text file that cannot be read as UTF-8 lines; the message names the file and line."""


def read_lines(path: Union[str, Path]) -> List[str]:
    """The lines of ``path`` without their line ends (see the module docstring); a ``.gz``
    file is decompressed first."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_no = data.count(b"\n", 0, error.start) + 1
        raise TextFileError(f"{path}:{line_no}: not UTF-8 ({error.reason} at byte {error.start})") from None
    if text.endswith("\n"):
        text = text[:-1]
    lines = text.split("\n") if text else []
    lone = []
    for line_no, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = lines[line_no - 1] = line[:-1]
        if "\r" in line:
            lines[line_no - 1] = line.replace("\r", " ")
            lone.append(line_no)
    if lone:
        logger.warning("%s: a carriage return (\\r) inside line(s) %s, read as a space (lines end at \\n "
                       "only)", path, ", ".join(map(str, lone[:10])) + (" ..." if len(lone) > 10 else ""))
    return lines


def write_lines(path: Union[str, Path], lines: Iterable[str]) -> None:
    """Atomically (m3p_fairseq.atomic_io), one line per item, each ended by ``\n``. A line break
    inside an item would shift every later line against its image and translation: refused."""
    lines = list(lines)
    for number, line in enumerate(lines, start=1):
        if "\n" in line or "\r" in line:
            raise ValueError(f"{path}: sentence {number} contains a line break")
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def empty_lines(path: Union[str, Path], lines: List[str]) -> List[Tuple[str, int]]:
    """(file, line number) of every blank line of ``lines`` read from ``path``."""
    return [(str(path), line_no) for line_no, line in enumerate(lines, start=1) if not line.strip()]
