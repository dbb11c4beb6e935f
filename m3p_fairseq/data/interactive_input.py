"""fairseq-interactive's input lines for the multimodal task: ``IMAGE_ID<TAB>sentence`` with
``--image-features`` (the id is looked up there), a plain sentence otherwise.

A blank line, a line without an image id and an unknown image id are reported (naming the
input line) and skipped; the session goes on, and the other lines of the chunk keep their
numbers in fairseq's ``S-``/``H-`` output. fairseq-interactive hands the models only
``src_tokens`` and ``src_lengths``, so the images are found again through each sentence's
tokens (unique within a chunk), and with them their object tags when the model reads tags.
"""

import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch
from fairseq import utils

from .batch_keys import IMAGE_PATCHES, IMAGE_ROW, IMAGE_USABLE, OBJECT_TAGS
from .image_features import ImageFeatureError, ImageFeatureStore
from .multimodal_pair_dataset import stack_distinct_images
from .object_tags import FeatureFileTags, collate_tags

logger = logging.getLogger(__name__)


class InteractiveInput:
    def __init__(self, image_features: Optional[str], feature_store: Callable[[str], ImageFeatureStore],
                 object_tags: Optional[Callable[[str], FeatureFileTags]] = None):
        self.image_features = image_features
        self._feature_store = feature_store
        self._object_tags = object_tags
        self.lines_read = 0  # over the whole session, for the messages' line numbers
        self._pending: Optional[Tuple[int, List[int], List[str]]] = None  # chunk start, kept positions, ids
        self._row_of_source: Dict[tuple, int] = {}  # the current chunk's images by source tokens

    def _skip(self, line_no: int, reason: str) -> None:
        logger.warning("input line %d skipped: %s", line_no, reason)

    def read(self, lines: List[str]) -> List[str]:
        """The sentences to translate; the positions and image ids of the kept lines are kept
        for :meth:`images_for`."""
        sentences, positions, image_ids = [], [], []
        store = self._feature_store(self.image_features) if self.image_features else None
        for position, line in enumerate(lines):
            line_no = self.lines_read + position + 1
            if not line.strip():
                self._skip(line_no, "blank line (nothing to translate)")
                continue
            if store is not None:
                image_id, tab, sentence = line.partition("\t")
                if not tab or not image_id.strip():
                    self._skip(line_no, f"expected IMAGE_ID<TAB>sentence (--image-features is set), got {line!r}")
                    continue
                try:
                    store.rows_for([image_id], "input")
                except ImageFeatureError:
                    self._skip(line_no, f"image id {image_id!r} is not in {store.path} ({store.num_images} images)")
                    continue
                if not sentence.strip():
                    self._skip(line_no, f"no sentence after image id {image_id!r}")
                    continue
                image_ids.append(image_id)
                line = sentence
            sentences.append(line)
            positions.append(position)
        self._pending = (self.lines_read, positions, image_ids)
        self.lines_read += len(lines)
        return sentences

    def images_for(self, src_tokens: List[torch.Tensor]):
        """(store, rows, example ids) of the sentences :meth:`read` returned last; the store and
        rows are None without --image-features, the ids None for a dataset not built from
        :meth:`read` (e.g. the hub interface)."""
        pending, self._pending = self._pending, None
        self._row_of_source = {}
        if pending is None:
            return None, None, None
        first_line, positions, image_ids = pending
        if len(positions) != len(src_tokens):
            raise RuntimeError(f"{len(positions)} input lines read for {len(src_tokens)} sentences")
        if not self.image_features:
            return None, None, positions
        store = self._feature_store(self.image_features)
        rows = store.rows_for(image_ids, "input")
        for position, tokens, row in zip(positions, src_tokens, rows):
            if self._row_of_source.setdefault(tuple(tokens.tolist()), int(row)) != row:
                raise ImageFeatureError(
                    f"input line {first_line + position + 1} repeats an earlier sentence of the same chunk with "
                    "a different image; translate with --buffer-size 1 (the default) to tell them apart")
        return store, rows, positions

    def add_images(self, net_input: dict, pad: int, with_tags: bool = False) -> None:
        """Put the current chunk's images (``with_tags``: and their object tags) into a batch
        fairseq-interactive reduced to tokens."""
        if IMAGE_PATCHES in net_input or not self._row_of_source:
            return
        src_tokens = net_input["src_tokens"]
        store = self._feature_store(self.image_features)
        rows = [self._row_of_source[tuple(utils.strip_pad(tokens, pad).tolist())] for tokens in src_tokens.cpu()]
        read = {row: store.read(row) for row in dict.fromkeys(rows)}  # each distinct image once
        images = stack_distinct_images(rows, [read[row] for row in rows])
        net_input.update({key: value.to(src_tokens.device) for key, value in images.items()})
        net_input[IMAGE_ROW] = torch.tensor(rows, device=src_tokens.device)
        usable = torch.from_numpy(store.usable[rows])
        if not usable.all():
            net_input[IMAGE_USABLE] = usable.to(src_tokens.device)
        if with_tags:
            tags = self._object_tags(self.image_features).tokens("the model")
            net_input[OBJECT_TAGS] = collate_tags([tags[row] for row in rows], pad).to(src_tokens.device)
