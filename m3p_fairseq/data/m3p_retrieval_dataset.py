"""Image-caption pairs of multilingual image-text retrieval on the M3P model (paper Sec. 5.2).

:func:`load_captions` reads one split's captions of some languages with the feature-file row of
each caption's image (``{split}.{lang}.bin/.idx`` multi-way, ``{split}.image_ids``, one id per
caption line; an image with several captions is listed once per caption). The fine-tuning task
and the retrieval evaluation both read the data through it.

:class:`RetrievalPairDataset` is the fine-tuning data: each item is one matched (caption, image)
pair plus ``negatives`` unmatched ones made from it, as the paper's fine-tuning does ("sample 3
negative cases in VLM", Sec. 5.1): the caption with another caption's image, or the image with
another caption of the same language, the partner always showing a different image (two captions
of one image are no negative). A batch is a ``vlm`` batch of the pre-training model (the same
keys as ``m3p_pretraining``'s), so ``--criterion m3p_pretraining`` trains it.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

from .batch_keys import PRETRAINING_OBJECTIVE, REGION_FEATURES, REGION_SPATIAL, SOURCE_LANG, VLM_LABELS
from .data_dir import DataDirectory
from .m3p_regions import RegionFeatureReader
from .split_captions import load_split_captions, read_split_image_ids

VLM_OBJECTIVE = "vlm"  # the pre-training objective whose head scores a pair
SWAP_IMAGE_PROB = 0.5  # a negative swaps the image (else the text), as VLM's pre-training negatives


@dataclass
class SplitCaptions:
    """Captions of one split: per language its token rows; per caption its image id and row."""
    split: str
    ids_path: str  # the {split}.image_ids file, named in errors
    image_ids: List[str]  # per caption (usable images only)
    image_rows: np.ndarray  # per caption: row of its image in the feature file
    text: Dict[str, List[torch.Tensor]]  # lang -> caption tokens (ending in </s>), aligned with image_ids
    left_out: int  # captions whose image the feature file flags unusable


def load_captions(data: str, split: str, langs: Sequence[str], dictionary: Dictionary,
                  regions: RegionFeatureReader) -> SplitCaptions:
    directory = DataDirectory(data)
    ids_path, image_ids = read_split_image_ids(directory, split)
    rows = regions.store.rows_for(image_ids, str(ids_path))
    keep = np.flatnonzero(regions.store.usable[rows])
    text = {}
    for lang in langs:
        dataset = load_split_captions(directory, split, lang, dictionary, ids_path, image_ids)
        text[lang] = [dataset[int(i)].long() for i in keep]
    return SplitCaptions(split, str(ids_path), [image_ids[i] for i in keep], rows[keep], text,
                         len(image_ids) - len(keep))


def with_bos(tokens: torch.Tensor, dictionary: Dictionary, max_positions: int) -> torch.Tensor:
    """``<s> pieces </s>``, the understanding encoder's text (``<s>`` is the [CLS] VLM reads), cut
    to ``max_positions`` keeping ``</s>``."""
    if tokens.numel() > max_positions - 1:
        tokens = torch.cat([tokens[:max_positions - 2], tokens[-1:]])
    return torch.cat([tokens.new_tensor([dictionary.bos()]), tokens])


class RetrievalPairDataset(FairseqDataset):
    """Item i = caption i (languages concatenated) with its image, label 1, and ``negatives``
    pairs with label 0; the negatives are drawn from (seed, epoch, i) alone."""

    def __init__(self, captions: SplitCaptions, regions: RegionFeatureReader, dictionary: Dictionary,
                 lang_tags: Dict[str, int], negatives: int, max_positions: int, seed: int):
        self.regions, self.dictionary, self.lang_tags = regions, dictionary, lang_tags
        self.negatives, self.max_positions, self.seed, self.epoch = negatives, max_positions, seed, 1
        self.langs = list(captions.text)
        self.captions = [(lang, tokens) for lang in self.langs for tokens in captions.text[lang]]
        per_lang = len(captions.image_ids)
        self.image_keys = np.asarray(captions.image_ids * len(self.langs), dtype=object)
        self.image_rows = np.tile(captions.image_rows, len(self.langs))
        self.lang_start = {lang: i * per_lang for i, lang in enumerate(self.langs)}
        self.per_lang = per_lang
        if negatives and len(set(captions.image_ids)) < 2:
            raise ValueError(f"{captions.ids_path}: retrieval fine-tuning with negatives needs captions of at "
                             f"least two different images, found {len(set(captions.image_ids))}")
        self.sizes = np.array([min(t.numel() + 1, max_positions) for _, t in self.captions], dtype=np.int64)

    def _partner(self, rng: np.random.Generator, index: int, same_lang: bool) -> int:
        """Another caption whose image differs from caption ``index``'s (of its language when
        ``same_lang``); drawn by rejection, which ends quickly unless nearly all show one image."""
        start, count = (self.lang_start[self.captions[index][0]], self.per_lang) if same_lang else (0, len(self))
        while True:
            other = start + int(rng.integers(count))
            if self.image_keys[other] != self.image_keys[index]:
                return other

    def pairs(self, index: int) -> List[tuple]:
        """(caption index, image row, label) of item ``index``: the match first."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        pairs = [(index, int(self.image_rows[index]), 1)]
        for _ in range(self.negatives):
            if rng.random() < SWAP_IMAGE_PROB:
                pairs.append((index, int(self.image_rows[self._partner(rng, index, False)]), 0))
            else:
                pairs.append((self._partner(rng, index, True), int(self.image_rows[index]), 0))
        return pairs

    def __getitem__(self, index):
        items = []
        for caption, row, label in self.pairs(index):
            lang, tokens = self.captions[caption]
            features, spatial, _ = self.regions.read(row)
            items.append({"lang": lang, "source": with_bos(tokens, self.dictionary, self.max_positions),
                          "regions": features, "spatial": spatial, "label": label})
        return {"id": int(index), "pairs": items}

    def __len__(self):
        return len(self.captions)

    def num_tokens(self, index):
        return int(self.sizes[index]) * (1 + self.negatives)

    def size(self, index):
        return int(self.sizes[index])

    def set_epoch(self, epoch):
        self.epoch = epoch

    def collater(self, samples):
        if not samples:
            return {}
        pairs = [pair for sample in samples for pair in sample["pairs"]]
        return {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(pairs),
            "ntokens": len(pairs),
            "net_input": {
                PRETRAINING_OBJECTIVE: VLM_OBJECTIVE,
                SOURCE_LANG: torch.tensor([self.lang_tags[p["lang"]] for p in pairs]),
                "src_tokens": data_utils.collate_tokens([p["source"] for p in pairs], self.dictionary.pad()),
                "src_lengths": torch.tensor([p["source"].numel() for p in pairs]),
                REGION_FEATURES: torch.stack([p["regions"] for p in pairs]),
                REGION_SPATIAL: torch.stack([p["spatial"] for p in pairs]),
            },
            VLM_LABELS: torch.tensor([p["label"] for p in pairs]),
        }
