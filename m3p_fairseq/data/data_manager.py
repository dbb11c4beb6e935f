"""File discovery and loading for ``--task multimodal_translation`` (as fairseq's
``MultilingualDatasetManager`` is for ``translation_multi_simple_epoch``): finds a direction's
binarized text, its image-id list and feature file through the :class:`DataDirectory`
contract, and builds the split's dataset."""

import logging
from typing import Callable, Dict, List, Optional, Tuple

from fairseq.data import (
    AppendTokenDataset,
    ConcatDataset,
    Dictionary,
    PrependTokenDataset,
    StripTokenDataset,
    TruncateDataset,
    data_utils,
)

from .data_dir import DataDirectory
from .image_features import ImageFeatureError, ImageFeatureStore, read_image_ids
from .multimodal_augmentation import MultimodalAugmentation
from .multimodal_pair_dataset import ImageDemand, MultimodalLanguagePairDataset
from .object_tags import FeatureFileTags
from .temperature_sampling import TemperatureSampledDataset
from .vocabulary import MASK_SYMBOL, lang_tag

logger = logging.getLogger(__name__)


class MultimodalDataManager:
    """Loads splits for a task config ``cfg`` (the task's dataclass) and a shared ``dictionary``
    holding a tag per language. Feature files are opened once and shared by every split; whether
    batches carry them is ``image_demand``'s to say (the task tells it which models it built)."""

    def __init__(self, cfg, dictionary: Dictionary):
        self.cfg = cfg
        self.dictionary = dictionary
        self._feature_stores: Dict[str, ImageFeatureStore] = {}
        self._object_tags: Dict[str, FeatureFileTags] = {}
        self.image_demand = ImageDemand()

    def data_directory(self, epoch: int = 1) -> DataDirectory:
        return DataDirectory.of_task_data(self.cfg.data, epoch)

    def tag_index(self, lang: str) -> int:
        index = self.dictionary.index(lang_tag(lang))
        if index == self.dictionary.unk():
            raise ValueError(f"{self.data_directory().dictionary} has no language tag {lang_tag(lang)}")
        return index

    # ---- splits ----
    def load_split(self, split: str, directions: List[Tuple[str, str]], epoch: int = 1,
                   temperature: Optional[Callable[[], float]] = None):
        """All ``directions`` of ``split``: temperature-sampled (Eq. 7) when ``temperature`` is
        given (training), else concatenated."""
        directory = self.data_directory(epoch)
        training = temperature is not None
        datasets = {f"{src}-{tgt}": self.load_direction(directory, split, src, tgt, training)
                    for src, tgt in directions}
        for direction, dataset in datasets.items():
            logger.info("%s %s %s: %d examples%s", directory.path, split, direction, len(dataset),
                        " with images" if dataset.has_images else " (text only)")
            if dataset.num_without_usable_image:
                logger.warning(
                    "%s %s: %d sentences refer to images that were missing or undecodable at "
                    "extraction (see %s); they are trained and translated text-only", split, direction,
                    dataset.num_without_usable_image, directory.bad_images_report(dataset.image_store.path))
        if training:
            return TemperatureSampledDataset(datasets, temperature, seed=self.cfg.seed)
        if len(datasets) == 1:
            return next(iter(datasets.values()))
        return ConcatDataset(list(datasets.values()))

    def load_direction(self, directory: DataDirectory, split: str, src: str, tgt: str,
                       training: bool = False) -> MultimodalLanguagePairDataset:
        cfg = self.cfg
        stem = directory.binarized_stem(split, src, tgt, cfg.dataset_impl)
        src_prefix, tgt_prefix = directory.text(stem, src), directory.text(stem, tgt)
        src_data = data_utils.load_indexed_dataset(str(src_prefix), self.dictionary, cfg.dataset_impl)
        tgt_data = data_utils.load_indexed_dataset(str(tgt_prefix), self.dictionary, cfg.dataset_impl)
        if len(src_data) != len(tgt_data):
            raise ValueError(f"{src_prefix} has {len(src_data)} sentences but {tgt_prefix} has {len(tgt_data)}")
        if cfg.truncate_source:  # room for the language tag and </s>
            src_data = AppendTokenDataset(
                TruncateDataset(StripTokenDataset(src_data, self.dictionary.eos()), cfg.max_source_positions - 2),
                self.dictionary.eos())
        src_data = PrependTokenDataset(src_data, self.tag_index(tgt))  # Eq. 2: the target's tag
        if cfg.decoder_langtok:  # fairseq's --decoder-langtok: the target starts with its tag too
            tgt_data = PrependTokenDataset(tgt_data, self.tag_index(tgt))
        image_store, image_rows = self.image_rows(directory, split, stem, f"{src_prefix}.bin", len(src_data))
        return MultimodalLanguagePairDataset(
            src_data, src_data.sizes, self.dictionary, tgt_data, tgt_data.sizes, self.dictionary,
            left_pad_source=cfg.left_pad_source, left_pad_target=cfg.left_pad_target,
            num_buckets=cfg.num_batch_buckets, shuffle=(split != "test"),
            pad_to_multiple=cfg.required_seq_len_multiple,
            image_store=image_store, image_rows=image_rows,
            augmentation=self.augmentation(f"{src}-{tgt}") if training else None,
            source_lang_index=self.tag_index(src), image_demand=self.image_demand,
            object_tags=self.object_tags(image_store.path) if image_store is not None else None)

    def augmentation(self, direction: str) -> Optional[MultimodalAugmentation]:
        cfg = self.cfg
        if not (cfg.mma_text_mask_ratio or cfg.mma_image_view_prob or cfg.mma_patch_mask_ratio
                or cfg.mma_view_negatives):
            return None
        return MultimodalAugmentation(
            text_mask_ratio=cfg.mma_text_mask_ratio, text_mask_span=cfg.mma_text_mask_span,
            mask_index=self.dictionary.index(MASK_SYMBOL), image_view_prob=cfg.mma_image_view_prob,
            patch_mask_ratio=cfg.mma_patch_mask_ratio, view_negatives=cfg.mma_view_negatives,
            contrastive_pair=not getattr(cfg, "mma_translation_only", False),
            seed=cfg.seed, direction=direction)

    # ---- images ----
    def feature_store(self, path) -> ImageFeatureStore:
        path = str(path)
        if path not in self._feature_stores:
            self._feature_stores[path] = ImageFeatureStore(path)
        return self._feature_stores[path]

    def object_tags(self, path) -> FeatureFileTags:
        """The object tags of a feature file (shared by every split that reads the file)."""
        path = str(path)
        if path not in self._object_tags:
            spm_model = self.data_directory().spm_model
            self._object_tags[path] = FeatureFileTags(path, str(spm_model) if spm_model.is_file() else None,
                                                      self.dictionary)
        return self._object_tags[path]

    @property
    def object_tags_available(self) -> bool:
        """Whether the training split's feature file carries object tags (``--object-tags auto``)."""
        path = self.data_directory().feature_file(self.cfg.train_subset, self.cfg.image_features)
        return path is not None and self.object_tags(path).available

    def image_rows(self, directory: DataDirectory, split: str, stem: str, text_file: str, num_sentences: int):
        """(store, row of each sentence's image) of the text ``stem``; (None, None) without features."""
        path = directory.feature_file(split, self.cfg.image_features)
        if path is None:
            return None, None
        ids_path = directory.image_id_list(stem)
        if ids_path is None:
            raise ImageFeatureError(
                f"image features {path} exist but {stem} (split {split!r}) has no image-id list: expected "
                f"one of {', '.join(map(str, directory.image_id_lists(stem)))}")
        image_ids = read_image_ids(ids_path)
        if len(image_ids) != num_sentences:
            raise ImageFeatureError(
                f"{ids_path} has {len(image_ids)} image ids but {text_file} has {num_sentences} "
                "sentences; the id list must be aligned line by line with the text")
        store = self.feature_store(path)
        return store, store.rows_for(image_ids, str(ids_path))

    @property
    def image_feature_dim(self) -> Optional[int]:
        """Feature dimension of the data, from the files opened so far (or the train split's)."""
        if not self._feature_stores:
            path = self.data_directory().feature_file(self.cfg.train_subset, self.cfg.image_features)
            if path is not None:
                self.feature_store(path)
        dims = {store.feature_dim for store in self._feature_stores.values()}
        if len(dims) > 1:
            raise ImageFeatureError(f"image-feature files disagree on the dimension: {sorted(dims)}")
        return dims.pop() if dims else None
