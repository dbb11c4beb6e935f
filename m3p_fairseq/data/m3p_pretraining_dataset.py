"""The examples and batches of M3P pre-training: a multilingual text corpus and image-caption
pairs, noised for the objective of each batch (data/m3p_noising.py), batched by the schedule
(data/m3p_pretraining_schedule.py).

An item index encodes (objective, example): ``objective_id * stride + example``, so a batch
sampler can hand fairseq's epoch iterator plain integers and the collater knows the objective.
The noise of an item is drawn from (seed, epoch, index) alone: a resumed run draws the same.

Text stream: ``<s> pieces </s>`` (``<s>`` is the first token, VLM's [CLS]); the language is
given beside it (``SOURCE_LANG``, the tag's dictionary index) for the language embedding.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

from . import m3p_noising as noising
from .batch_keys import (
    MRM_CLASSES,
    MRM_MASKED,
    MRM_TARGET,
    PRETRAINING_OBJECTIVE,
    REGION_FEATURES,
    REGION_SPATIAL,
    SOURCE_LANG,
    VLM_LABELS,
)
from .m3p_pretraining_schedule import OBJECTIVES, TEXT_OBJECTIVES, PretrainingSchedule
from .m3p_regions import RegionFeatureReader

GENERATION_OBJECTIVES = ("xdae", "ic", "dic")
IMAGE_OBJECTIVES = ("mmlm", "mrm", "vlm", "ic", "dic")


@dataclass
class NoiseSettings:
    mask_prob: float = noising.MASK_PROB
    region_mask_prob: float = noising.REGION_MASK_PROB
    shuffle_distance: float = noising.SHUFFLE_DISTANCE
    drop_prob: float = noising.DROP_PROB
    xdae_span_ratio: float = 0.3
    dic_span_ratio: float = 0.3
    vlm_negative_prob: float = 0.5


@dataclass
class CaptionCorpus:
    """Captions of one language with the feature-file row of each caption's image."""
    lang: str
    text: FairseqDataset
    image_rows: np.ndarray


class M3PPretrainingDataset(FairseqDataset):
    def __init__(self, dictionary: Dictionary, text: Dict[str, FairseqDataset], captions: Sequence[CaptionCorpus],
                 regions: Optional[RegionFeatureReader], lang_tags: Dict[str, int], schedule: PretrainingSchedule,
                 noise: NoiseSettings, max_positions: int, seed: int, random_tokens: Sequence[int]):
        self.dictionary, self.regions, self.lang_tags = dictionary, regions, lang_tags
        self.schedule, self.noise, self.max_positions, self.seed = schedule, noise, max_positions, seed
        self.random_tokens = list(random_tokens)
        self.text_langs = list(text)
        self.text = [text[lang] for lang in self.text_langs]
        self.text_offsets = np.cumsum([0] + [len(d) for d in self.text])
        self.captions = list(captions)
        self.caption_offsets = np.cumsum([0] + [len(c.image_rows) for c in self.captions])
        self.stride = int(max(self.text_offsets[-1], self.caption_offsets[-1])) + 1
        self.epoch = 1

    # ---- indices ----------------------------------------------------------------------------
    def encode(self, objective: str, examples: np.ndarray) -> List[int]:
        return (OBJECTIVES.index(objective) * self.stride + np.asarray(examples, dtype=np.int64)).tolist()

    def decode(self, index: int):
        objective, example = divmod(int(index), self.stride)
        return OBJECTIVES[objective], example

    def batches(self, training: bool, epoch: int, num_batches: int, batch_size: int) -> List[List[int]]:
        batches = (self.schedule.training_batches(epoch, num_batches, batch_size) if training
                   else self.schedule.evaluation_batches(batch_size))
        return [self.encode(objective, ids) for objective, ids in batches]

    # ---- examples ---------------------------------------------------------------------------
    def _sentence(self, corpora, offsets, example: int):
        corpus = int(np.searchsorted(offsets, example, side="right") - 1)
        tokens = corpora[corpus][example - offsets[corpus]]
        if tokens.numel() > self.max_positions - 1:  # room for <s>; keep </s>
            tokens = torch.cat([tokens[:self.max_positions - 2], tokens[-1:]])
        return corpus, tokens.long()

    def _with_bos(self, tokens):
        return torch.cat([tokens.new_tensor([self.dictionary.bos()]), tokens])

    def _masked_text(self, tokens, rng):
        with_bos = self._with_bos(tokens)
        maskable = (with_bos != self.dictionary.bos()) & (with_bos != self.dictionary.eos())
        return noising.mask_tokens(with_bos, rng, self.dictionary.index("<mask>"), self.random_tokens, maskable,
                                   self.dictionary.pad(), self.noise.mask_prob)

    def __getitem__(self, index):
        objective, example = self.decode(index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        item = {"id": int(index), "objective": objective}
        if objective in TEXT_OBJECTIVES:
            corpus, tokens = self._sentence(self.text, self.text_offsets, example)
            item["lang"] = self.text_langs[corpus]
        else:
            corpus, tokens = self._sentence([c.text for c in self.captions], self.caption_offsets, example)
            caption = self.captions[corpus]
            item["lang"], item["image_row"] = caption.lang, int(caption.image_rows[example - self.caption_offsets[corpus]])
            item["regions"], item["spatial"], item["classes"] = self.regions.read(item["image_row"])
        if objective in ("xmlm", "mmlm"):
            item["source"], item["target"] = self._masked_text(tokens, rng)
        elif objective == "mrm":
            item["source"] = self._with_bos(tokens)
            item["regions"], item["mrm_masked"], item["mrm_target"] = noising.mask_regions(
                item["regions"], rng, self.noise.region_mask_prob)
        elif objective == "vlm":
            item["source"] = self._with_bos(tokens)
        elif objective == "xdae":
            corrupted = noising.denoising_corruption(
                tokens[:-1], rng, self.dictionary.index("<mask>"), self.noise.shuffle_distance, self.noise.drop_prob,
                self.noise.xdae_span_ratio)
            # zero-length spans insert <mask>s: cut a rare over-long source back to the model's positions
            item["source"], item["target"] = torch.cat([corrupted[:self.max_positions - 1], tokens[-1:]]), tokens
        else:  # ic, dic: the encoder reads the regions only
            item["target"] = tokens
            if objective == "dic":
                item["regions"], _ = noising.zero_region_spans(item["regions"], rng, self.noise.dic_span_ratio)
        return item

    def __len__(self):
        return self.stride * len(OBJECTIVES)

    def num_tokens(self, index):
        return self.max_positions

    def size(self, index):
        return self.max_positions

    def set_epoch(self, epoch):
        self.epoch = epoch

    # ---- batches ----------------------------------------------------------------------------
    def collater(self, samples):
        if not samples:
            return {}
        objective = samples[0]["objective"]
        if any(s["objective"] != objective for s in samples):
            raise ValueError("an M3P pre-training batch mixes objectives; batches come from the schedule only")
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        if objective == "vlm":
            samples = self._vlm_swap(samples)
        net_input = {PRETRAINING_OBJECTIVE: objective,
                     SOURCE_LANG: torch.tensor([self.lang_tags[s["lang"]] for s in samples])}
        batch = {"id": torch.tensor([s["id"] for s in samples]), "nsentences": len(samples), "net_input": net_input}
        if "source" in samples[0]:
            net_input["src_tokens"] = data_utils.collate_tokens([s["source"] for s in samples], pad)
            net_input["src_lengths"] = torch.tensor([s["source"].numel() for s in samples])
        if objective in IMAGE_OBJECTIVES:
            net_input[REGION_FEATURES] = torch.stack([s["regions"] for s in samples])
            net_input[REGION_SPATIAL] = torch.stack([s["spatial"] for s in samples])
        if "target" in samples[0]:
            batch["target"] = data_utils.collate_tokens([s["target"] for s in samples], pad)
            if objective in GENERATION_OBJECTIVES:
                net_input["prev_output_tokens"] = data_utils.collate_tokens(
                    [s["target"] for s in samples], pad, eos, move_eos_to_beginning=True)
            batch["ntokens"] = int((batch["target"] != pad).sum())
        if objective == "mrm":
            batch[MRM_TARGET] = torch.stack([s["mrm_target"] for s in samples])
            batch[MRM_MASKED] = torch.stack([s["mrm_masked"] for s in samples])
            if samples[0]["classes"] is not None:
                batch[MRM_CLASSES] = torch.stack([s["classes"] for s in samples])
            batch["ntokens"] = int(batch[MRM_MASKED].sum())
        if objective == "vlm":
            batch[VLM_LABELS] = torch.tensor([s["vlm_label"] for s in samples])
            batch["ntokens"] = len(samples)
        return batch

    def _vlm_swap(self, samples):
        """VLM negatives: some examples get another example's image or text (m3p_noising.vlm_pairs)."""
        rng = np.random.default_rng([self.seed, self.epoch, samples[0]["id"], len(samples)])
        image_index, text_index, labels = noising.vlm_pairs([s["image_row"] for s in samples], rng,
                                                            self.noise.vlm_negative_prob)
        swapped = []
        for b in range(len(samples)):
            text, image = samples[text_index[b]], samples[image_index[b]]
            swapped.append({**text, "regions": image["regions"], "spatial": image["spatial"],
                            "image_row": image["image_row"], "id": samples[b]["id"], "vlm_label": int(labels[b])})
        return swapped
