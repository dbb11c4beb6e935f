"""``--task m3p_captioning``: multilingual image captioning, M3P's IC objective fine-tuned (paper
Sec. 3.2, 4): the caption of an image in a given language, generated from its regions alone.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_captioning --caption-langs de \
        --arch m3p_captioning_tiny --criterion label_smoothed_cross_entropy --max-tokens 2048 \
        [--finetune-from-model PRETRAINING/checkpoint_best.pt] ...
    fairseq-generate DATA --user-dir m3p_fairseq --task m3p_captioning --target-lang de \
        --path CKPT --gen-subset test --beam 5 --post-process sentencepiece > gen.de.txt
    python scripts/score_captions.py --data DATA --split test --generated de=gen.de.txt

DATA is what ``preprocess/binarize.py`` writes (``dict.txt`` with ``__xx__`` tags, multi-way
``{split}.{lang}.bin/.idx``, ``{split}.image_ids``, a feature file); examples and batches are
``data/caption_dataset.py``'s. The caption language is given as its tag (``__de__``'s index in
``SOURCE_LANG``), which selects the decoder's language embedding, as in pre-training: the
source has no text at all, so there is no source sentence to prefix a tag to (and
fairseq-generate prints no ``S-`` line: the task has no source dictionary, as fairseq's speech
tasks). Training reads every ``--caption-langs`` language; the other splits (validation,
fairseq-generate) read ``--target-lang`` when given, else the same languages. Sizes of
``--arch`` must be the pre-training model's when initialising from it (models/m3p_captioning_model.py).
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq.data import Dictionary
from fairseq.tasks import register_task

from ..data.caption_dataset import CaptioningDataset, load_language_captions
from ..data.data_dir import DataDirectory
from ..data.m3p_regions import RegionFeatureReader
from .m3p_data import M3PDataConfig, M3PDataTask

logger = logging.getLogger(__name__)


@dataclass
class M3PCaptioningConfig(M3PDataConfig):
    caption_langs: str = field(default="en", metadata={"help": "languages of the captions trained on, "
                                                                "comma-separated (one model captions in each)"})
    target_lang: Optional[str] = field(default=None, metadata={"help": "the caption language of the other splits "
                                                                        "(validation, fairseq-generate); default: "
                                                                        "every --caption-langs language",
                                                                "argparse_alias": "-t"})
    max_text_positions: int = field(default=128, metadata={"help": "longest caption, </s> included (longer ones "
                                                                    "are cut)"})


@register_task("m3p_captioning", dataclass=M3PCaptioningConfig)
class M3PCaptioningTask(M3PDataTask):
    cfg: M3PCaptioningConfig

    def __init__(self, cfg: M3PCaptioningConfig, dictionary: Dictionary):
        super().__init__(cfg, dictionary)
        self.caption_langs = self.parse_langs(cfg.caption_langs, "--caption-langs")
        self.eval_langs = self.parse_langs(cfg.target_lang, "--target-lang") if cfg.target_lang else self.caption_langs

    @property
    def source_dictionary(self):
        return None  # the source is an image (no S- lines in fairseq-generate)

    # ---- data -------------------------------------------------------------------------------
    def regions(self, split: str, required_by: Optional[str] = "the captioned images") -> RegionFeatureReader:
        return super().regions(split, required_by)

    @property
    def image_feature_dim(self) -> int:
        return self.regions(self.cfg.train_subset).store.feature_dim

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        directory = DataDirectory.of_task_data(self.cfg.data, epoch)
        training = split == self.cfg.train_subset
        reader = self.regions(split)
        languages = [load_language_captions(directory, split, lang, self.dictionary, reader, per_image=not training)
                     for lang in (self.caption_langs if training else self.eval_langs)]
        self.datasets[split] = CaptioningDataset(
            self.dictionary, languages, reader, {lang: self.lang_tag_index(lang) for lang in self.languages},
            self.cfg.max_text_positions, shuffle=training)
        logger.info("%s: %s %s", split, "captions" if training else "images",
                    {c.lang: len(c.caption_rows) for c in languages})

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq drops a last batch that is not a multiple of --required-batch-size-multiple:
        # harmless in training, but it would lose test images
        if dataset is not self.datasets.get(self.cfg.train_subset):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        self.build_dataset_for_inference(None, None)

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        # fairseq-interactive reads text lines, and a caption's source is an image
        raise SystemExit("fairseq-interactive: m3p_captioning captions images, it reads no text; caption a split "
                         "with fairseq-generate DATA --task m3p_captioning --gen-subset SPLIT --target-lang LANG")
