"""Image captioning examples (tasks/m3p_captioning.py): the source is an image's regions alone,
the target a caption in one language.

The data is what ``preprocess/binarize.py`` writes for every task: multi-way captions
``{split}.{lang}.bin/.idx`` with ``{split}.image_ids`` (line n of each belongs to image n's id)
and a feature file read as regions with their 5-D boxes (``data/m3p_regions.py``). Several
lines may show one image (COCO and Flickr30k have five captions per image):

* training: one example per caption whose image is usable (every caption is a target);
* any other split: one example per distinct usable image (in first-seen order), whose target
  is its first caption and whose references are all its captions of that language.

Batches follow fairseq's convention for a source that is not text (its speech tasks):
``src_tokens`` holds the region features [B, R, D] (float), ``src_lengths`` the region counts;
beside them ``REGION_SPATIAL`` (the 5-D boxes) and ``SOURCE_LANG`` (the tag of the caption's
language, which the decoder's language embedding reads). No text token of any source enters a
batch: the decoder's only tokens are the caption's own, shifted (``prev_output_tokens``).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

from .batch_keys import REGION_SPATIAL, SOURCE_LANG
from .data_dir import DataDirectory
from .length_sorted_dataset import LengthSortedDataset
from .m3p_regions import RegionFeatureReader
from .split_captions import load_split_captions, read_split_image_ids


@dataclass
class LanguageCaptions:
    """The examples of one language: example k targets ``text[caption_rows[k]]`` about feature
    row ``image_rows[k]`` (image ``image_ids[k]``); ``references[k]``: rows of all its captions."""
    lang: str
    text: FairseqDataset
    caption_rows: np.ndarray
    image_rows: np.ndarray
    image_ids: List[str]
    references: List[np.ndarray]


def caption_examples(image_ids: Sequence[str], usable: np.ndarray, per_image: bool):
    """(caption rows, references per example) of captions whose image is usable: every caption
    (its reference is itself), or with ``per_image`` one example per distinct image, its
    first caption as target and all its captions as references."""
    if not per_image:
        rows = np.flatnonzero(usable)
        return rows, [rows[k:k + 1] for k in range(len(rows))]
    groups: Dict[str, List[int]] = {}
    for line, image_id in enumerate(image_ids):
        if usable[line]:
            groups.setdefault(image_id, []).append(line)
    references = [np.asarray(lines) for lines in groups.values()]
    return np.asarray([lines[0] for lines in references], dtype=np.int64), references


def load_language_captions(directory: DataDirectory, split: str, lang: str, dictionary: Dictionary,
                           regions: RegionFeatureReader, per_image: bool) -> LanguageCaptions:
    """The captions of ``lang`` in ``split`` of ``directory``, checked against the id list and
    the feature file (errors name the file and what was expected)."""
    ids_path, image_ids = read_split_image_ids(directory, split)
    text = load_split_captions(directory, split, lang, dictionary, ids_path, image_ids)
    feature_rows = regions.store.rows_for(image_ids, str(ids_path))
    caption_rows, references = caption_examples(image_ids, regions.store.usable[feature_rows], per_image)
    return LanguageCaptions(lang, text, caption_rows, feature_rows[caption_rows],
                            [image_ids[r] for r in caption_rows], references)


class CaptioningDataset(LengthSortedDataset):
    """The examples of several languages, one after the other (ids in that order)."""

    def __init__(self, dictionary: Dictionary, languages: Sequence[LanguageCaptions], regions: RegionFeatureReader,
                 lang_tags: Dict[str, int], max_positions: int, shuffle: bool):
        self.dictionary, self.languages, self.regions = dictionary, list(languages), regions
        self.lang_tags, self.max_positions, self.shuffle = lang_tags, max_positions, shuffle
        self.offsets = np.cumsum([0] + [len(c.caption_rows) for c in self.languages])
        self.sizes = np.concatenate([np.minimum(c.text.sizes[c.caption_rows], max_positions)
                                     for c in self.languages] or [np.zeros(0, dtype=np.int64)])

    def locate(self, index: int):
        """(the language's captions, the example's position among them)."""
        corpus = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.languages[corpus], int(index - self.offsets[corpus])

    def _caption(self, captions: LanguageCaptions, row: int) -> torch.Tensor:
        tokens = captions.text[int(row)].long()
        if tokens.numel() > self.max_positions:  # keep </s>: the decoder learns where to stop
            tokens = torch.cat([tokens[:self.max_positions - 1], tokens[-1:]])
        return tokens

    def references(self, index: int) -> List[torch.Tensor]:
        """Token tensors of every caption of the example's image in its language."""
        captions, k = self.locate(index)
        return [self._caption(captions, row) for row in captions.references[k]]

    def lang_of(self, index: int) -> str:
        return self.locate(index)[0].lang

    def image_id_of(self, index: int) -> str:
        captions, k = self.locate(index)
        return captions.image_ids[k]

    def __getitem__(self, index):
        captions, k = self.locate(index)
        features, spatial, _ = self.regions.read(int(captions.image_rows[k]))
        return {"id": int(index), "lang": captions.lang, "regions": features, "spatial": spatial,
                "target": self._caption(captions, captions.caption_rows[k])}

    def __len__(self):
        return int(self.offsets[-1])

    def collater(self, samples):
        if not samples:
            return {}
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        targets = [s["target"] for s in samples]
        regions = torch.stack([s["regions"] for s in samples])
        target = data_utils.collate_tokens(targets, pad)
        return {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(target.ne(pad).sum()),
            "net_input": {
                "src_tokens": regions,
                "src_lengths": torch.full((len(samples),), regions.size(1), dtype=torch.long),
                REGION_SPATIAL: torch.stack([s["spatial"] for s in samples]),
                SOURCE_LANG: torch.tensor([self.lang_tags[s["lang"]] for s in samples]),
                "prev_output_tokens": data_utils.collate_tokens(targets, pad, eos, move_eos_to_beginning=True),
            },
            "target": target,
        }


def reference_texts(dataset: CaptioningDataset, index: int, post_process: Optional[str] = "sentencepiece"
                    ) -> List[str]:
    """The example's reference captions as text (SentencePiece pieces joined)."""
    return [dataset.dictionary.string(tokens, post_process) for tokens in dataset.references(index)]
