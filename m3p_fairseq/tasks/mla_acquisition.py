"""``--task mla_acquisition``: teach a frozen native dual encoder new languages (MLA, paper Sec. 3).

Both training stages run through fairseq-train with this task and the ``mla_acquisition`` model;
the criterion picks the stage: ``--criterion mla_nlt`` (Native Language Transfer, Eq. 12, needs
``DATA/{split}.en``) or ``--criterion mla_le`` (Language Exposure, Eqs. 13-15, needs image
embeddings). A stage continues the previous one with ``--init-from``; a language is added later
the same way, with ``--train-langs`` naming only the new one (see docs/mla.md).

Data layout: see :mod:`m3p_fairseq.data.mla_dataset`.

The frozen native model is loaded by the model's ``build_model`` (from ``--native-checkpoint``)
and handed back through :meth:`MlaAcquisitionTask.build_model`; fairseq-train and checkpoint
loading build the model before they load any split, so the task never imports a model.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fairseq.data import Dictionary
from fairseq.tasks import FairseqTask, register_task

from ..data.image_features import ImageFeatureStore
from ..data.languages import split_languages
from ..data.mla_dataset import NATIVE_IDENTITY_ATTR, MlaDataError, MlaMultilingualDataset, load_caption_dataset
from ..data.native_identity import NativeIdentity
from .m3p_data import DataLoaderConfig

logger = logging.getLogger(__name__)

NONNATIVE_DICT_FILE = "dict.nonnative.txt"
IMAGE_EMBEDDINGS_FILE = "image_embeddings.h5"


def open_image_embeddings(path: Path, native: NativeIdentity) -> ImageFeatureStore:
    store = ImageFeatureStore(path)
    stored = store.attrs.get(NATIVE_IDENTITY_ATTR)
    if stored is None:
        raise MlaDataError(f"{path}: not an MLA image-embedding file (no '{NATIVE_IDENTITY_ATTR}' attribute); "
                           f"write it with `python -m preprocess.mla_image_embeddings` from the native model")
    NativeIdentity.from_dict(json.loads(stored)).check_matches(native, f"image-embedding file {path}")
    return store


@dataclass
class MlaAcquisitionConfig(DataLoaderConfig):
    data: str = field(default="", metadata={"help": "directory of {split}.{lang} captions and {split}.image_ids"})
    langs: str = field(default="de,fr", metadata={"help": "comma-separated non-native languages the model "
                                                           "has acquirers for"})
    train_langs: Optional[str] = field(
        default=None, metadata={"help": "languages trained in this run (default: all --langs); the others "
                                        "keep their acquirers from --init-from unchanged, and so does the "
                                        "shared embedding block except for rows of words new in this run"})
    native_lang: str = field(default="en", metadata={"help": "the native model's language (NLT's pivot)"})
    native_checkpoint: str = field(default="", metadata={"help": "local checkpoint of the frozen native dual "
                                                                  "encoder (scripts/mla.py train-native, or an "
                                                                  "open_clip checkpoint with --native-open-clip-model)"})
    native_open_clip_model: Optional[str] = field(
        default=None, metadata={"help": "open_clip architecture of --native-checkpoint, e.g. ViT-B-32; "
                                        "unset for the project's own native checkpoint"})
    nonnative_dict: Optional[str] = field(
        default=None, metadata={"help": f"shared non-native word dictionary (default DATA/{NONNATIVE_DICT_FILE}; "
                                        "scripts/mla.py build-dict)"})
    image_embeddings: Optional[str] = field(
        default=None, metadata={"help": f"HDF5 of the native vision tower's image embeddings (default "
                                        f"DATA/{IMAGE_EMBEDDINGS_FILE} if present; python -m preprocess.mla_image_embeddings); "
                                        "needed by --criterion mla_le"})


@register_task("mla_acquisition", dataclass=MlaAcquisitionConfig)
class MlaAcquisitionTask(FairseqTask):
    def __init__(self, cfg: MlaAcquisitionConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self._native = None  # set by build_model: the model loads the native checkpoint
        self.dictionary = dictionary
        self.langs = split_languages(cfg.langs, "--langs")
        self.train_langs = split_languages(cfg.train_langs, "--train-langs") or list(self.langs)
        missing = sorted(set(self.train_langs) - set(self.langs))
        if missing:
            raise ValueError(f"--train-langs {missing} are not among --langs {self.langs}")
        if cfg.native_lang in self.langs:
            raise ValueError(f"--langs lists the native language {cfg.native_lang!r}; the native text tower "
                             f"handles it unchanged")
        self._images = None

    @classmethod
    def setup_task(cls, cfg: MlaAcquisitionConfig, **kwargs):
        if not cfg.data:
            raise ValueError("give the data directory (fairseq-train DATA --task mla_acquisition ...)")
        if not cfg.native_checkpoint:
            raise ValueError("--native-checkpoint is required: the frozen dual encoder to extend")
        dict_path = Path(cfg.nonnative_dict or Path(cfg.data) / NONNATIVE_DICT_FILE)
        if not dict_path.is_file():
            raise MlaDataError(f"non-native dictionary not found: {dict_path} (scripts/mla.py build-dict)")
        dictionary = Dictionary.load(str(dict_path))
        logger.info(f"non-native dictionary {dict_path}: {len(dictionary)} types")
        return cls(cfg, dictionary)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self._native = model.native
        return model

    @property
    def native(self):
        """The frozen native dual encoder, as the model loaded it."""
        if self._native is None:
            raise RuntimeError("the mla_acquisition task has no native model yet: build the model "
                               "(task.build_model) before loading data")
        return self._native

    @property
    def image_store(self):
        if self._images is None:
            path = Path(self.cfg.image_embeddings or Path(self.cfg.data) / IMAGE_EMBEDDINGS_FILE)
            if self.cfg.image_embeddings or path.is_file():
                self._images = open_image_embeddings(path, self.native.identity)
        return self._images

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        data = Path(self.cfg.data)
        datasets = {lang: load_caption_dataset(data, split, lang, self.dictionary, self.native, self.cfg.native_lang,
                                               self.image_store, self.native.context_length)
                    for lang in self.train_langs}
        self.datasets[split] = MlaMultilingualDataset(datasets)
        logger.info(f"{split}: " + ", ".join(f"{lang} {len(d)}" for lang, d in datasets.items()))

    def max_positions(self):
        return self.native.context_length

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return None
