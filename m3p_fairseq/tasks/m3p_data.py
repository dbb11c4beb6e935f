"""What the tasks over one data directory share. DataLoaderConfig: every task's data-loader
option; TaggedDictionaryTask: the dictionary with its language tags (also vlp_pretraining's);
M3PDataTask (pre-training, retrieval, captioning): the data options and the region reader of each
split's feature file (data/m3p_regions.py)."""

from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask
from omegaconf import II

from ..data.data_dir import DataDirectory
from ..data.image_features import ImageFeatureError, ImageFeatureStore
from ..data.languages import split_languages
from ..data.m3p_regions import RegionFeatureReader
from ..data.vocabulary import lang_tag, tagged_languages


@dataclass
class DataLoaderConfig(FairseqDataclass):
    # fairseq reads this from the task's config (FairseqTask.get_batch_iterator), default on
    persistent_workers: bool = field(default=False, metadata={"help": (
        "keep --num-workers data-loader processes alive after their epoch (fairseq's default). Off here: "
        "these tasks build a new iterator for every epoch (temperature sampling draws a new mix, "
        "pre-training a new schedule), and each past epoch's workers would live on until Python's "
        "cycle collector ran, one more set per epoch")})


@dataclass
class M3PDataConfig(DataLoaderConfig):
    data: str = field(default="", metadata={"help": "data directory (dict.txt, {split}.{lang}.bin/.idx, "
                                                     "{split}.image_ids, image features)"})
    image_features: Optional[str] = field(default=None, metadata={"help": "feature file for every split; default: "
                                                                           "DATA/{split}.image_features.h5, else "
                                                                           "DATA/image_features.h5"})
    max_text_positions: int = field(default=128, metadata={"help": "longest text, <s> and </s> included"})
    seed: int = II("common.seed")
    # the model's feature dimension and region classes are the training split's
    train_subset: str = II("dataset.train_subset")


class TaggedDictionaryTask(FairseqTask):
    """A task whose text, source and target, is in the data directory's one dictionary, with its
    ``__xx__`` language tags."""

    def __init__(self, cfg, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.languages = tagged_languages(dictionary.symbols)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        return cls(cfg, DataDirectory.of_task_data(cfg.data).load_dictionary())

    def lang_tag_index(self, lang: str) -> int:
        if lang_tag(lang) not in self.dictionary.indices:
            raise ValueError(f"unknown language {lang!r}: {DataDirectory.of_task_data(self.cfg.data).dictionary} has "
                             f"tags for {', '.join(self.languages) or 'no language'} (expected a symbol {lang_tag(lang)})")
        return self.dictionary.index(lang_tag(lang))

    def parse_langs(self, value: str, option: str, purpose: str = "") -> List[str]:
        """The comma-separated languages of ``option``, each with its tag in the dictionary."""
        langs = split_languages(value, option)
        if not langs:
            raise ValueError(f"{option} names no language{purpose}")
        for lang in langs:
            self.lang_tag_index(lang)
        return langs

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary


class M3PDataTask(TaggedDictionaryTask):
    """A task over a ``DataDirectory`` with the shared dictionary and each split's regions."""

    def __init__(self, cfg: M3PDataConfig, dictionary: Dictionary):
        super().__init__(cfg, dictionary)
        self._regions = {}

    def regions(self, split: str, required_by: Optional[str] = None) -> Optional[RegionFeatureReader]:
        """The regions of ``split``'s feature file; None when there is none, unless ``required_by``
        (what needs them, plural: "the retrieval pairs") says it must exist."""
        if split not in self._regions:
            path = DataDirectory.of_task_data(self.cfg.data).feature_file(split, self.cfg.image_features)
            self._regions[split] = RegionFeatureReader(ImageFeatureStore(path)) if path else None
        if self._regions[split] is None and required_by:
            directory = DataDirectory.of_task_data(self.cfg.data)
            raise ImageFeatureError(f"{required_by} need image features: none found for split {split!r} in "
                                    f"{directory.path} (expected {' or '.join(p.name for p in directory.feature_files(split))}"
                                    ", or --image-features)")
        return self._regions[split]

    # the models record these in their config, so a checkpoint rebuilds without the data
    @property
    def image_feature_dim(self) -> Optional[int]:
        reader = self.regions(self.cfg.train_subset)
        return None if reader is None else reader.store.feature_dim

    @property
    def num_region_classes(self) -> int:
        reader = self.regions(self.cfg.train_subset)
        return 0 if reader is None else reader.num_classes

    def max_positions(self):
        return self.cfg.max_text_positions
