"""Vision-language pre-training of the VLP-MMT encoder (vlp-for-mmt-modality-loss.md, Sec. 3.2;
Algorithm 1, steps 2 and 4): masked LM + paired-image prediction on image-caption pairs of one
language, read from a data directory laid out as ``--task multimodal_translation`` reads it::

    DATA/dict.txt, DATA/spm.model          the translation data's (binarize the captions with
                                           preprocess/binarize.py --spm-model --dict of that data)
    DATA/{split}.{lang}.bin/.idx           captions (or {split}.{a}-{b}.{lang}.bin/.idx)
    DATA/{split}.image_ids                 (or {split}.{a}-{b}.image_ids) one image id per caption
    DATA/{split}.image_features.h5         or DATA/image_features.h5, or --image-features;
                                           optional object tags in it (data/object_tags.py)

So step 4 ("continue on the MMT training set's (image, source) pairs") is this task on the
translation data directory itself, with --caption-lang the source language.

    fairseq-train DATA --user-dir m3p_fairseq --task vlp_pretraining --caption-lang en \\
        --arch vlp_encoder_tiny --criterion vlp_pretraining_loss ...
"""

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq import utils
from fairseq.data import Dictionary, data_utils
from fairseq.tasks import register_task
from omegaconf import II

from ..data.data_dir import SHARED_FEATURE_FILE, DataDirectory
from ..data.image_features import ImageFeatureError, ImageFeatureStore, read_image_ids
from ..data.object_tags import ObjectTagTokens
from ..data.vlp_caption_dataset import VLPCaptionDataset
from ..data.vocabulary import MASK_SYMBOL
from .m3p_data import DataLoaderConfig, TaggedDictionaryTask

logger = logging.getLogger(__name__)
SENTENCEPIECE_FILE = "spm.model"


@dataclass
class VLPPretrainingConfig(DataLoaderConfig):
    data: Optional[str] = field(default=None, metadata={"help": "data directory (see the module docstring)"})
    caption_lang: str = field(default="en", metadata={"help": "language of the captions (the MMT source language)"})
    image_features: Optional[str] = field(
        default=None, metadata={"help": "HDF5 feature file for every split; default: "
                                         "DATA/{split}.image_features.h5, else DATA/image_features.h5"},
    )
    mask_prob: float = field(default=0.15, metadata={"help": "masked LM: share of text tokens replaced by <mask>"})
    random_image_prob: float = field(
        default=0.5, metadata={"help": "paired-image prediction: share of captions shown a random image"},
    )
    no_object_tags: bool = field(
        default=False, metadata={"help": "ignore object tags in the feature file (input Cat[Emb(x), FFN(v)])"},
    )
    max_source_positions: int = field(default=1024, metadata={"help": "longest caption + tags + patches"})
    seed: int = II("common.seed")


@register_task("vlp_pretraining", dataclass=VLPPretrainingConfig)
class VLPPretrainingTask(TaggedDictionaryTask):
    cfg: VLPPretrainingConfig

    def __init__(self, cfg: VLPPretrainingConfig, dictionary: Dictionary):
        super().__init__(cfg, dictionary)  # self.languages: the language tags, never masked
        self._feature_dims = set()

    @classmethod
    def setup_task(cls, cfg: VLPPretrainingConfig, **kwargs):
        if not utils.split_paths(cfg.data or ""):
            raise ValueError("no data directory given")
        # as multimodal_translation loads it: same indices, same model size
        return super().setup_task(cfg, **kwargs)

    @property
    def image_feature_dim(self) -> Optional[int]:
        if not self._feature_dims:
            path = self._feature_file(utils.split_paths(self.cfg.data)[0], "train")
            return None if path is None else ImageFeatureStore(path).feature_dim
        return next(iter(self._feature_dims))

    def require_image_feature_dim(self, fusion: str) -> int:
        """The data's feature dimension for the encoder's image input (an error without features)."""
        directory = DataDirectory.of_task_data(self.cfg.data)
        return directory.require_feature_dim(self.image_feature_dim, "train", f"--fusion {fusion}")

    def _feature_file(self, data_path: str, split: str) -> Optional[str]:
        if self.cfg.image_features:
            if not os.path.isfile(self.cfg.image_features):
                raise ImageFeatureError(f"--image-features {self.cfg.image_features}: file not found")
            return self.cfg.image_features
        for name in (f"{split}.image_features.h5", SHARED_FEATURE_FILE):
            if os.path.isfile(os.path.join(data_path, name)):
                return os.path.join(data_path, name)
        return None

    def _caption_prefix(self, data_path: str, split: str) -> str:
        lang = self.cfg.caption_lang
        candidates = [os.path.join(data_path, f"{split}.{lang}")]
        candidates += sorted(p[:-len(".idx")] for p in glob.glob(os.path.join(data_path, f"{split}.*-*.{lang}.idx")))
        for prefix in candidates:
            if os.path.isfile(prefix + ".idx") and os.path.isfile(prefix + ".bin"):
                return prefix
        raise FileNotFoundError(f"no {lang} captions for split {split!r}: expected {candidates[0]}.bin/.idx "
                                f"or {os.path.join(data_path, f'{split}.SRC-TGT.{lang}')}.bin/.idx")

    def _image_ids_file(self, data_path: str, split: str, caption_prefix: str) -> str:
        direction = os.path.basename(caption_prefix).split(".")[1:-1]  # [] or ["en-de"]
        candidates = [os.path.join(data_path, ".".join([split, *direction, "image_ids"]))]
        if direction:
            src, tgt = direction[0].split("-")
            candidates.append(os.path.join(data_path, f"{split}.{tgt}-{src}.image_ids"))
        candidates.append(os.path.join(data_path, f"{split}.image_ids"))
        found = next((p for p in candidates if os.path.isfile(p)), None)
        if found is None:
            raise ImageFeatureError(f"split {split!r}: no image-id list for the captions {caption_prefix}: "
                                    f"expected one of {', '.join(dict.fromkeys(candidates))}")
        return found

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)]
        prefix = self._caption_prefix(data_path, split)
        captions = data_utils.load_indexed_dataset(prefix, self.dictionary)
        features = self._feature_file(data_path, split)
        if features is None:
            raise ImageFeatureError(f"vision-language pre-training needs image features for split {split!r}: "
                                    f"expected {split}.image_features.h5 or {SHARED_FEATURE_FILE} in "
                                    f"{data_path}, or --image-features")
        ids_path = self._image_ids_file(data_path, split, prefix)
        image_ids = read_image_ids(ids_path)
        if len(image_ids) != len(captions):
            raise ImageFeatureError(f"{ids_path} lists {len(image_ids)} image ids but {prefix} has "
                                    f"{len(captions)} captions")
        store = ImageFeatureStore(features)
        self._feature_dims.add(store.feature_dim)
        tags = None
        if not self.cfg.no_object_tags:
            spm_model = os.path.join(paths[0], SENTENCEPIECE_FILE)
            tags = ObjectTagTokens.from_feature_file(features, spm_model if os.path.isfile(spm_model) else None,
                                                     self.dictionary)
        never_masked = [self.dictionary.bos(), self.dictionary.eos(), self.dictionary.pad()]
        never_masked += [self.lang_tag_index(lang) for lang in self.languages]
        self.datasets[split] = VLPCaptionDataset(
            captions, captions.sizes, self.dictionary, store, store.rows_for(image_ids, ids_path), tags,
            self.dictionary.index(MASK_SYMBOL), never_masked, self.cfg.mask_prob, self.cfg.random_image_prob,
            seed=self.cfg.seed, shuffle=(split != "test"))
        logger.info("%s %s: %d %s captions with images%s", data_path, split, len(captions), self.cfg.caption_lang,
                    ", with object tags" if tags is not None else " (no object tags)")

    def max_positions(self):
        return self.cfg.max_source_positions
