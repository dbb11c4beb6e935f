"""The images of a feature extraction, read by a torch DataLoader: each id's file decoded to
RGB, or an :class:`UnreadableImage` marker (missing, or not decodable by PIL) that the loader
passes on instead of stopping. Used by preprocess/extract_image_features.py.
"""

import dataclasses
import io
import struct
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate

from preprocess.image_augmentation import AugmentedViews

MISSING = "missing"
# What PIL raises for bytes it cannot decode (UnidentifiedImageError and "image file is truncated"
# are OSErrors; plugins also raise SyntaxError, ValueError, EOFError or struct.error on broken
# headers). Anything else, e.g. a TypeError or AttributeError, is a bug and stops the run.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class UnreadableImage:
    """What :class:`ImageFolder` gives instead of an image that is missing or cannot be decoded."""

    image_id: str
    path: str
    reason: str


def decode_rgb(path: Path):
    """The RGB image, or the reason why there is none (a one-line string): the file is missing,
    empty, or its bytes do not decode. An error reading the file (permissions, I/O) is no bad
    image and is raised, as is any error other than a decoding one."""
    if not path.is_file():
        return MISSING
    data = path.read_bytes()  # read apart from decoding, so that only decoding errors are caught below
    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")  # decodes everything now, so truncation shows here
    except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        return "undecodable: cannot identify image file (no format PIL reads)"
    except DECODE_ERRORS as error:
        return "undecodable: " + (" ".join(str(error).split()) or type(error).__name__)


class ImageFolder(torch.utils.data.Dataset):
    """The clean image tensor; with ``augment``, the pair (clean [3, H, W], views [K, 3, H, W]).
    An image that cannot be read gives an :class:`UnreadableImage` (see :func:`collate_readable`)."""

    def __init__(self, images_dir: Path, image_ids: Sequence[str], transform,
                 augment: Optional[AugmentedViews] = None):
        self.images_dir, self.image_ids, self.transform, self.augment = images_dir, image_ids, transform, augment

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, index):
        image_id = self.image_ids[index]
        path = self.images_dir / image_id
        image = decode_rgb(path)
        if isinstance(image, str):
            return UnreadableImage(image_id, str(path), image)
        if self.augment is None:
            return self.transform(image)
        return self.transform(image), self.augment(image, image_id)


def collate_readable(items):
    """(the readable items collated as usual, or None; usable [B] bool; the UnreadableImages)."""
    usable = [not isinstance(item, UnreadableImage) for item in items]
    readable = [item for item, ok in zip(items, usable) if ok]
    unreadable = [item for item, ok in zip(items, usable) if not ok]
    return default_collate(readable) if readable else None, torch.tensor(usable, dtype=torch.bool), unreadable
