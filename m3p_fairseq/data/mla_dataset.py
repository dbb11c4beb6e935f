"""Data of the MLA stages: non-native captions with their native translation (NLT, Eq. 12) and
their image's embedding from the frozen vision tower (LE, Eqs. 13-15).

Layout of a data directory (plain text, read in place; ``.gz`` files are read too)::

    DATA/{split}.{lang}        one caption per line: en (native) and each non-native language
    DATA/{split}.image_ids     the image of each line (all languages of a split are aligned)

Multi30k fits by naming its files so, e.g. ``test.de.gz -> raw/test_2016_flickr.de.gz`` and
``test.image_ids -> image_splits/test_2016_flickr.txt`` (symbolic links, the data stays put).

The shared non-native vocabulary is a fairseq dictionary of words (:func:`build_nonnative_dictionary`);
adding a language appends its new words to the old dictionary, so the old rows keep their index.
Image embeddings come from an HDF5 file of the project's format whose ``global`` rows are the
projected embeddings v of Eq. 6 and whose attributes name the native model (``embed_images``).
"""

from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

from ..atomic_io import atomic_path
from . import text_lines
from .batch_keys import IMAGE_GLOBAL
from .data_dir import DataDirectory
from .image_features import ImageFeatureStore

NATIVE_TOKENS = "native_tokens"  # (B, T) long: the native-language translation of each caption (NLT)
LANG = "lang"  # str: the one non-native language of a batch (batches never mix languages)
NATIVE_IDENTITY_ATTR = "mla_native"  # attribute of an image-embedding file: the native model's identity (JSON)


class MlaDataError(ValueError):
    """Bad MLA input; the message names the file and line."""


def read_lines(path: Path) -> List[str]:
    """The non-empty lines of a caption or id file (``PATH`` or ``PATH.gz``), read by the one line
    reader (data/text_lines.py); an empty line is an error naming the file and line."""
    if not path.is_file() and Path(str(path) + ".gz").is_file():
        path = Path(str(path) + ".gz")
    if not path.is_file():
        raise MlaDataError(f"file not found: {path}")
    lines = text_lines.read_lines(path)
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            raise MlaDataError(f"{path}:{line_no}: empty line (expected one caption or id per line)")
    return lines


def pad_token_rows(rows: Sequence[torch.Tensor], pad: int, length: Optional[int] = None) -> torch.Tensor:
    """Right-pad 1-D token tensors into [B, length or the longest]; with a causal mask, padding
    after [EOS] never changes the [EOS] state."""
    length = length or max(len(r) for r in rows)
    out = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def encode_words(dictionary: Dictionary, sentence: str, max_length: int) -> torch.Tensor:
    """[SOS] words [EOS] (fairseq's bos/eos), truncated to ``max_length`` with [EOS] kept last."""
    words = dictionary.encode_line(sentence, add_if_not_exist=False, append_eos=False).long()
    words = words[: max_length - 2]
    return torch.cat([torch.tensor([dictionary.bos()]), words, torch.tensor([dictionary.eos()])])


def word_dictionary(lines: Sequence[str], extend: Optional[Dictionary] = None) -> Dictionary:
    """Whitespace words, most frequent first, after the symbols of ``extend`` (same indices)."""
    dictionary = extend if extend is not None else Dictionary()
    counts = Counter(word for line in lines for word in line.split())
    for word, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if word not in dictionary.indices:
            dictionary.add_symbol(word, n=count)
    return dictionary


def build_nonnative_dictionary(caption_files: Sequence[Path], output: Path, extend: Optional[Path] = None) -> Dictionary:
    """Words of ``caption_files``; with ``extend``, the old dictionary first (same indices), then
    the new words. Written atomically in fairseq's ``dict.txt`` format."""
    lines = [line for path in caption_files for line in read_lines(Path(path))]
    dictionary = word_dictionary(lines, Dictionary.load(str(extend)) if extend else None)
    with atomic_path(output) as tmp:
        dictionary.save(str(tmp))
    return dictionary


def check_dictionary_extends(old_symbols: Sequence[str], new: Dictionary, source: str) -> None:
    for index, old in enumerate(old_symbols):
        if index >= len(new.symbols) or new.symbols[index] != old:
            raise MlaDataError(f"{source}: the non-native dictionary does not extend the one the acquirers were "
                               f"trained with (index {index} was {old!r}); build it with "
                               f"`scripts/mla.py build-dict --extend OLD_DICT`")


class _SizedDataset(FairseqDataset):
    """Sizes in ``self.sizes`` (tokens per caption); batches are formed shortest first."""

    sizes: np.ndarray

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    def ordered_indices(self) -> np.ndarray:
        return np.argsort(self.sizes, kind="mergesort")


class MlaCaptionDataset(_SizedDataset):
    """Captions of one non-native language, each with its native translation and/or image row."""

    def __init__(self, lang: str, captions: List[torch.Tensor], dictionary: Dictionary,
                 native_tokens: Optional[List[torch.Tensor]], native_pad: int,
                 image_rows: Optional[np.ndarray], images: Optional[ImageFeatureStore]):
        self.lang, self.captions, self.dictionary = lang, captions, dictionary
        self.native_tokens, self.native_pad = native_tokens, native_pad
        self.image_rows, self.images = image_rows, images
        self.sizes = np.array([len(c) for c in captions], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> Dict:
        item = {"id": index, "source": self.captions[index]}
        if self.native_tokens is not None:
            item["native"] = self.native_tokens[index]
        if self.images is not None:
            item["image"] = self.images.read(int(self.image_rows[index]))[1].float()
        return item

    def collater(self, samples: List[Dict]) -> Dict:
        if not samples:
            return {}
        source = data_utils.collate_tokens([s["source"] for s in samples], self.dictionary.pad())
        net_input = {"src_tokens": source, "src_lengths": torch.tensor([len(s["source"]) for s in samples]),
                     LANG: self.lang}
        if "native" in samples[0]:
            net_input[NATIVE_TOKENS] = data_utils.collate_tokens([s["native"] for s in samples], self.native_pad)
        if "image" in samples[0]:
            net_input[IMAGE_GLOBAL] = torch.stack([s["image"] for s in samples])
        return {"id": torch.tensor([s["id"] for s in samples]), "nsentences": len(samples),
                "ntokens": int(source.ne(self.dictionary.pad()).sum()), "net_input": net_input}


def load_caption_dataset(data: Path, split: str, lang: str, dictionary: Dictionary, native,
                         native_lang: str, images: Optional[ImageFeatureStore], max_length: int) -> MlaCaptionDataset:
    """One language of one split; the native captions are read when ``DATA/{split}.{native_lang}``
    exists (NLT), the image rows when ``images`` is given (LE)."""
    captions = read_lines(data / f"{split}.{lang}")
    source = f"{data / f'{split}.{lang}'}"
    encoded = [encode_words(dictionary, line, max_length) for line in captions]
    native_tokens = None
    native_path = data / f"{split}.{native_lang}"
    if native_path.is_file() or Path(str(native_path) + ".gz").is_file():
        native_lines = read_lines(native_path)
        if len(native_lines) != len(captions):
            raise MlaDataError(f"{native_path}: {len(native_lines)} lines but {source} has {len(captions)}; "
                               f"translation pairs must be aligned line by line")
        native_tokens = [row[row.ne(native.pad_id)] for row in native.tokenize(native_lines)]
    rows = None
    if images is not None:
        ids_path = DataDirectory(data).image_ids(split)
        image_ids = read_lines(ids_path)
        if len(image_ids) != len(captions):
            raise MlaDataError(f"{ids_path}: {len(image_ids)} image ids but {source} has {len(captions)} captions")
        rows = images.rows_for(image_ids, str(ids_path))
    return MlaCaptionDataset(lang, encoded, dictionary, native_tokens, native.pad_id, rows, images)


class MlaMultilingualDataset(_SizedDataset):
    """The languages of a split side by side; every batch holds ONE language (its acquirers run on
    the whole batch, and LE's in-batch negatives never include another language's caption of the
    same image)."""

    def __init__(self, datasets: Dict[str, MlaCaptionDataset]):
        self.langs = list(datasets)
        self.datasets = [datasets[lang] for lang in self.langs]
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.sizes = np.concatenate([d.sizes for d in self.datasets]) if self.datasets else np.zeros(0, np.int64)

    def _locate(self, index: int):
        which = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return which, index - int(self.offsets[which])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Dict:
        which, local = self._locate(index)
        return {**self.datasets[which][local], "id": index, "dataset": which}

    def collater(self, samples: List[Dict]) -> Dict:
        if not samples:
            return {}
        which = {s["dataset"] for s in samples}
        if len(which) != 1:  # batch_by_size never builds such a batch
            raise MlaDataError(f"a batch mixes languages {sorted(self.langs[w] for w in which)}")
        batch = self.datasets[which.pop()].collater(samples)
        batch["id"] = torch.tensor([s["id"] for s in samples])
        return batch

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        indices = np.asarray(indices)
        language = np.searchsorted(self.offsets, indices, side="right") - 1
        batches = []
        for which in range(len(self.datasets)):
            batches.extend(data_utils.batch_by_size(
                indices[language == which], num_tokens_fn=self.num_tokens, max_tokens=max_tokens,
                max_sentences=max_sentences, required_batch_size_multiple=required_batch_size_multiple))
        return batches
