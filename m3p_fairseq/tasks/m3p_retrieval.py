"""``--task m3p_retrieval``: fine-tune the M3P model for multilingual image-text retrieval
(paper Sec. 5.2, Table 2).

The model is the pre-training model itself (``--arch m3p_pretraining_tiny/_base``), started
from a pre-training checkpoint with fairseq's ``--finetune-from-model PRE/checkpoint_last.pt``
(or from random weights: the "without pre-training" baseline). It is fine-tuned with the
objective the paper fine-tunes retrieval with, VLM (Sec. 5.1: "sample 3 negative cases in
VLM"): the understanding encoder reads ``<s> caption </s>`` followed by the image's regions and
its VLM head s(w, v) on the first token says whether they match, a binary cross-entropy over
each matched pair and its ``--negatives`` unmatched ones (data/m3p_retrieval_dataset.py);
``--criterion m3p_pretraining`` computes it and logs ``vlm_loss``/``vlm_acc``. Retrieval ranks
by the same head (evaluation/m3p_retrieval.py), so a pre-training checkpoint is scored as is
("without fine-tuning").

``--langs`` are the caption languages fine-tuned on: ``en`` (Table 2 "fine-tune on en"), one
other language ("on each"), or all of them merged ("on all").
"""

import logging
from dataclasses import dataclass, field

from fairseq.data import Dictionary
from fairseq.tasks import register_task

from ..data.data_dir import DataDirectory
from ..data.m3p_retrieval_dataset import RetrievalPairDataset, load_captions
from .m3p_data import M3PDataConfig, M3PDataTask

logger = logging.getLogger(__name__)


@dataclass
class M3PRetrievalConfig(M3PDataConfig):
    langs: str = field(default="en", metadata={"help": "caption languages to fine-tune on, comma-separated "
                                                        "(Table 2: en, one language each, or all merged)"})
    negatives: int = field(default=3, metadata={"help": "unmatched pairs per matched pair (Sec. 5.1: 3); each "
                                                         "swaps the image or the text for another image's"})


@register_task("m3p_retrieval", dataclass=M3PRetrievalConfig)
class M3PRetrievalTask(M3PDataTask):
    cfg: M3PRetrievalConfig

    def __init__(self, cfg: M3PRetrievalConfig, dictionary: Dictionary):
        super().__init__(cfg, dictionary)
        self.langs = self.parse_langs(cfg.langs, "--langs", " to fine-tune on")
        if cfg.negatives < 0:
            raise ValueError(f"--negatives must be >= 0, got {cfg.negatives}")

    def build_model(self, cfg, from_checkpoint=False):
        from fairseq.models import ARCH_MODEL_REGISTRY

        from ..models.m3p_pretraining_model import M3PPretrainingModel

        arch = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
        if not issubclass(ARCH_MODEL_REGISTRY.get(arch, object), M3PPretrainingModel):
            raise ValueError(f"--task m3p_retrieval fine-tunes the M3P pre-training model (--arch "
                             f"m3p_pretraining_tiny or m3p_pretraining_base), got --arch {arch}")
        return super().build_model(cfg, from_checkpoint)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        directory = DataDirectory.of_task_data(self.cfg.data, epoch)
        regions = self.regions(split, required_by="the retrieval pairs")
        captions = load_captions(str(directory.path), split, self.langs, self.dictionary, regions)
        if captions.left_out:
            logger.info("%s: %d captions without a usable image left out", split, captions.left_out)
        self.datasets[split] = RetrievalPairDataset(
            captions, regions, self.dictionary, {lang: self.lang_tag_index(lang) for lang in self.languages},
            self.cfg.negatives, self.cfg.max_text_positions, self.cfg.seed)
        logger.info("%s: %d captions of %s, %d images, %d negatives each", split, len(self.datasets[split]),
                    ",".join(self.langs), len(set(captions.image_ids)), self.cfg.negatives)
