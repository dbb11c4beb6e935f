"""``--task m3p_pretraining``: M3P's multitask multilingual multimodal pre-training (paper Sec. 3).

Data (a ``DataDirectory``, as ``preprocess/binarize.py`` writes it): ``dict.txt`` with a
``__xx__`` tag per language, multi-way text ``{split}.{lang}.bin/.idx``, ``{split}.image_ids``
and a feature file (``{split}.image_features.h5`` or ``image_features.h5``; regions as in
``data/m3p_regions.py``). ``--langs`` are the text corpus (xMLM, xDAE), ``--caption-langs`` the
captions paired with images (MMLM, MRM, VLM, IC, DIC; the paper uses English only).

Every update trains one objective, drawn by ``--objectives`` weights or in ``round_robin``
order (data/m3p_pretraining_schedule.py); an epoch is ``--updates-per-epoch`` batches of
``--batch-size`` examples. The schedule's position is fairseq's epoch iterator state (in every
checkpoint); :class:`ScheduleIterator` adds the schedule's settings to that state and refuses to
resume under other settings. Validation runs every objective over its whole corpus.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq.data import Dictionary, iterators
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data.data_dir import DataDirectory
from ..data.languages import split_languages
from ..data.m3p_pretraining_dataset import CaptionCorpus, M3PPretrainingDataset, NoiseSettings
from ..data.m3p_pretraining_schedule import (
    OBJECTIVES,
    ROUND_ROBIN,
    TEXT_OBJECTIVES,
    WEIGHTED,
    PretrainingSchedule,
    parse_objective_weights,
)
from ..data.split_captions import load_split_captions, load_split_text, read_split_image_ids
from ..data.vocabulary import MASK_SYMBOL, is_lang_tag
from .m3p_data import M3PDataConfig, M3PDataTask

logger = logging.getLogger(__name__)
SCHEDULE_STATE = "m3p_pretraining_schedule"


@dataclass
class M3PPretrainingConfig(M3PDataConfig):
    langs: Optional[str] = field(default=None, metadata={"help": "languages of the text corpus (xMLM, xDAE), "
                                                                  "comma-separated; default: every tagged language"})
    caption_langs: str = field(default="en", metadata={"help": "languages of the captions paired with images "
                                                                "(MMLM, MRM, VLM, IC, DIC)"})
    objectives: str = field(default=",".join(OBJECTIVES),
                            metadata={"help": "objectives and their weights, e.g. xmlm:2,mmlm,mrm,vlm,xdae,ic,dic "
                                              "(weight 1 when omitted)"})
    objective_schedule: ChoiceEnum([WEIGHTED, ROUND_ROBIN]) = field(
        default=WEIGHTED, metadata={"help": "weighted: each update draws its objective by weight; round_robin: "
                                            "the objectives in turn (weights ignored)"})
    language_alpha: float = field(default=0.3, metadata={"help": "text languages sampled with p_l^alpha (Sec. 3.1)"})
    updates_per_epoch: int = field(default=100, metadata={"help": "batches in one training epoch"})
    mask_prob: float = field(default=0.15, metadata={"help": "xMLM/MMLM: share of tokens masked (80/10/10)"})
    region_mask_prob: float = field(default=0.15, metadata={"help": "MRM: share of regions masked"})
    xdae_shuffle_distance: float = field(default=3.0, metadata={"help": "xDAE: index noise U(0, k)"})
    xdae_drop_prob: float = field(default=0.3, metadata={"help": "xDAE: word drop probability"})
    xdae_span_ratio: float = field(default=0.3, metadata={"help": "xDAE: share of the remaining tokens covered by "
                                                                   "Poisson(3) spans, each replaced by one <mask> "
                                                                   "(the paper gives no value)"})
    dic_span_ratio: float = field(default=0.3, metadata={"help": "DIC: share of regions zeroed in Poisson(3) spans "
                                                                  "(the paper gives no value)"})
    vlm_negative_prob: float = field(default=0.5, metadata={"help": "VLM: share of negatives (image or text swapped)"})
    # train_subset (M3PDataConfig) is the split the schedule draws from; the others are evaluated
    # whole, objective by objective


@register_task("m3p_pretraining", dataclass=M3PPretrainingConfig)
class M3PPretrainingTask(M3PDataTask):
    cfg: M3PPretrainingConfig

    def __init__(self, cfg: M3PPretrainingConfig, dictionary: Dictionary):
        super().__init__(cfg, dictionary)
        self.text_langs = split_languages(cfg.langs, "--langs") or list(self.languages)
        self.caption_langs = split_languages(cfg.caption_langs, "--caption-langs")
        for lang in self.text_langs + self.caption_langs:
            self.lang_tag_index(lang)
        self.weights = parse_objective_weights(cfg.objectives)
        self.noise = NoiseSettings(cfg.mask_prob, cfg.region_mask_prob, cfg.xdae_shuffle_distance, cfg.xdae_drop_prob,
                                   cfg.xdae_span_ratio, cfg.dic_span_ratio, cfg.vlm_negative_prob)

    # ---- data -------------------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        directory = DataDirectory.of_task_data(self.cfg.data, epoch)
        needs_text = any(o in TEXT_OBJECTIVES for o in self.weights)
        needs_captions = any(o not in TEXT_OBJECTIVES for o in self.weights)
        text = {lang: load_split_text(directory, split, lang, self.dictionary) for lang in self.text_langs} if needs_text else {}
        captions, reader = [], None
        if needs_captions:
            reader = self.regions(split, required_by=f"objectives {[o for o in self.weights if o not in TEXT_OBJECTIVES]}")
            ids_path, image_ids = read_split_image_ids(directory, split)
            rows = reader.store.rows_for(image_ids, str(ids_path))
            usable = reader.store.usable[rows]
            for lang in self.caption_langs:
                dataset = load_split_captions(directory, split, lang, self.dictionary, ids_path, image_ids)
                keep = np.flatnonzero(usable)
                captions.append(CaptionCorpus(lang, _Subset(dataset, keep), rows[keep]))
            if not usable.all():
                logger.info("%s: %d captions without a usable image left out", split, int((~usable).sum()))
        schedule = PretrainingSchedule(self.weights, self.cfg.objective_schedule, [len(d) for d in text.values()],
                                       sum(len(c.image_rows) for c in captions), self.cfg.language_alpha, self.cfg.seed)
        random_tokens = [i for i, symbol in enumerate(self.dictionary.symbols)
                         if i >= self.dictionary.nspecial and not is_lang_tag(symbol) and symbol != MASK_SYMBOL]
        self.datasets[split] = M3PPretrainingDataset(
            self.dictionary, text, captions, reader, {lang: self.lang_tag_index(lang) for lang in self.languages},
            schedule, self.noise, self.cfg.max_text_positions, self.cfg.seed, random_tokens)
        logger.info("%s: text %s, captions %s", split, {k: len(v) for k, v in text.items()},
                    {c.lang: len(c.image_rows) for c in captions})

    def get_batch_iterator(self, dataset, max_sentences=None, seed=1, num_shards=1, shard_id=0, num_workers=0,
                           epoch=1, **kwargs):
        if not isinstance(dataset, M3PPretrainingDataset):
            return super().get_batch_iterator(dataset, max_sentences=max_sentences, seed=seed, num_shards=num_shards,
                                              shard_id=shard_id, num_workers=num_workers, epoch=epoch, **kwargs)
        if not max_sentences:
            raise ValueError("m3p_pretraining batches a fixed number of examples: pass --batch-size")
        training = dataset is self.datasets.get(self.cfg.train_subset)

        def batches(data, batch_epoch):
            return data.batches(training, batch_epoch, self.cfg.updates_per_epoch, max_sentences)

        # the schedule fixes the order of an epoch's batches: fairseq must not shuffle them. The
        # buffer (--data-buffer-size) reads each epoch's loader to its end, so that its workers exit
        return ScheduleIterator(dataset.schedule.settings() if training else None, dataset, dataset.collater,
                                batches, seed=seed, num_shards=num_shards, shard_id=shard_id,
                                num_workers=num_workers, epoch=epoch, disable_shuffling=True,
                                buffer_size=kwargs.get("data_buffer_size", 0),
                                persistent_workers=self.cfg.persistent_workers)


class ScheduleIterator(iterators.EpochBatchIterator):
    """fairseq's epoch iterator, whose state (in every checkpoint, restored on resume unless
    --reset-dataloader) also holds the schedule's settings: the position in an epoch means
    something only under the schedule that made the epoch, so a resume under others is refused."""

    def __init__(self, settings, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule_settings = settings

    def state_dict(self):
        return {**super().state_dict(), SCHEDULE_STATE: self.schedule_settings}

    def load_state_dict(self, state_dict):
        saved = state_dict.get(SCHEDULE_STATE)
        if saved is not None and self.schedule_settings is not None and saved != self.schedule_settings:
            raise ValueError(f"the checkpoint was trained with the pre-training schedule {saved}, this run has "
                             f"{self.schedule_settings}: resuming mid-schedule needs the same --objectives, "
                             "--objective-schedule, --language-alpha, --seed and data (or --reset-dataloader "
                             "to start a new schedule from the checkpoint's weights)")
        return super().load_state_dict(state_dict)


class _Subset:
    """Some rows of an indexed dataset (captions whose image is usable)."""

    def __init__(self, dataset, rows: np.ndarray):
        self.dataset, self.rows = dataset, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.dataset[int(self.rows[index])]
