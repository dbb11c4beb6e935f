"""Many-to-many translation with images: fairseq's translation task, plus

* one shared dictionary (``DATA/dict.txt``) holding a ``__xx__`` tag per language; the tag of
  the *target* language is prefixed to every source sentence (paper Eq. 2), at training and at
  generation time;
* every ``--lang-pairs`` direction loaded at once, mixed by temperature-based sampling (Eq. 7);
* image features looked up in HDF5 through an image-id list aligned with the text;
* MMA augmentation of the training examples (``--mma-*``, Sec. 2.5); a ``<mask>`` symbol is
  added to the dictionary for it.

Data layout (``preprocess/binarize.py`` writes it)::

    DATA/dict.txt                          shared dictionary with __en__, __de__, ... tags
    DATA/{split}.{src}-{tgt}.{lang}.bin/.idx  fairseq-preprocess output (either direction's
                                           files serve both directions), or
    DATA/{split}.{lang}.bin/.idx           a multi-way parallel split, aligned across languages
    DATA/{split}.{src}-{tgt}.image_ids     image id per sentence; or DATA/{split}.image_ids
                                           for a multi-way parallel split
    DATA/{split}.image_features.h5         or DATA/image_features.h5, or --image-features
"""

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from fairseq import utils
from fairseq.data import (
    AppendTokenDataset,
    ConcatDataset,
    Dictionary,
    PrependTokenDataset,
    StripTokenDataset,
    TruncateDataset,
    data_utils,
    indexed_dataset,
)
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from ..data.batch_keys import MultimodalModelInterface
from ..data.image_features import ImageFeatureError, ImageFeatureStore, read_image_ids
from ..data.multimodal_augmentation import MultimodalAugmentation
from ..data.multimodal_pair_dataset import MultimodalLanguagePairDataset, stack_images
from ..data.temperature_sampling import TemperatureSampledDataset, temperature_at

logger = logging.getLogger(__name__)

DICTIONARY_FILE = "dict.txt"
SHARED_FEATURE_FILE = "image_features.h5"
MASK_SYMBOL = "<mask>"
_LANG_TAG = re.compile(r"^__([A-Za-z0-9_-]+?)__$")


def lang_tag(lang: str) -> str:
    return f"__{lang}__"


def parse_lang_pairs(text: str) -> List[Tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        src, sep, tgt = item.strip().partition("-")
        if not sep or not src or not tgt or src == tgt:
            raise ValueError(f"--lang-pairs: {item.strip()!r} is not a direction like en-de")
        pairs.append((src, tgt))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"--lang-pairs lists a direction twice: {text}")
    return pairs


@dataclass
class MultimodalTranslationConfig(TranslationConfig):
    lang_pairs: Optional[str] = field(
        default=None,
        metadata={"help": "comma-separated directions, e.g. en-de,de-en,en-fr. Training uses all "
                          "of them; other splits use --source-lang/--target-lang when given"},
    )
    image_features: Optional[str] = field(
        default=None,
        metadata={"help": "HDF5 image-feature file for every split (and for fairseq-interactive); "
                          "default: DATA/{split}.image_features.h5, else DATA/image_features.h5; "
                          "when none exists the task is text-only"},
    )
    sampling_temperature: float = field(
        default=1.0,
        metadata={"help": "peak temperature tau of language-pair sampling, Eq. 7 (1 = proportional "
                          "to corpus size, larger = flatter)"},
    )
    sampling_temperature_init: float = field(
        default=1.0, metadata={"help": "initial temperature tau_0 of the warm-up"},
    )
    sampling_warmup_updates: int = field(
        default=0,
        metadata={"help": "updates W over which the temperature rises linearly from tau_0 to tau; "
                          "0 = tau from the start. The mix is re-drawn every epoch"},
    )
    mma_text_mask_ratio: float = field(
        default=0.0, metadata={"help": "MMA: share of each training source sentence replaced by <mask> "
                                        "in contiguous spans (0 = off)"},
    )
    mma_text_mask_span: float = field(
        default=3.0, metadata={"help": "MMA: mean length of a masked span (Poisson)"},
    )
    mma_image_view_prob: float = field(
        default=0.0, metadata={"help": "MMA: chance that a training example uses one of its image's "
                                        "augmented views (feature files written with --augmented-views) "
                                        "instead of the clean features"},
    )
    mma_patch_mask_ratio: float = field(
        default=0.0, metadata={"help": "MMA: share of a training image's patch tokens zeroed (masked "
                                        "image modelling)"},
    )
    mma_view_negatives: bool = field(
        default=False, metadata={"help": "MMA: every training example also brings another augmented view "
                                          "of its image, an extra MMCL negative for the other texts"},
    )
    seed: int = II("common.seed")  # seeds the per-epoch draw of the pair mix and MMA


@register_task("multimodal_translation", dataclass=MultimodalTranslationConfig)
class MultimodalTranslationTask(TranslationTask):
    cfg: MultimodalTranslationConfig

    def __init__(self, cfg: MultimodalTranslationConfig, dictionary: Dictionary):
        super().__init__(cfg, dictionary, dictionary)
        self.languages = sorted(
            m.group(1) for m in map(_LANG_TAG.match, dictionary.symbols) if m
        )
        self.lang_pairs = parse_lang_pairs(cfg.lang_pairs) if cfg.lang_pairs else []
        if cfg.source_lang and cfg.target_lang:
            self.lang_pairs = self.lang_pairs or [(cfg.source_lang, cfg.target_lang)]
        if not self.lang_pairs:
            raise ValueError("multimodal_translation needs --lang-pairs (or --source-lang and --target-lang)")
        named = {lang for pair in self.lang_pairs for lang in pair} | {cfg.source_lang, cfg.target_lang}
        for lang in named - {None}:
            self._check_language(lang)
        self._feature_stores: Dict[str, ImageFeatureStore] = {}
        self._pending_image_ids: Optional[List[str]] = None
        self._image_row_of_source: Dict[tuple, int] = {}  # fairseq-interactive's current chunk
        self._model_image_dim: Optional[int] = None  # None: no model yet, or a text-only one
        self._training_model: Optional[MultimodalModelInterface] = None  # its update count drives the warm-up
        # set by build_model for models whose prompt names the source language (the decoder-only
        # model): inference then needs --source-lang
        self._source_lang_in_batch = False

    # ---- set-up -----------------------------------------------------------------------------
    @classmethod
    def setup_task(cls, cfg: MultimodalTranslationConfig, **kwargs):
        paths = utils.split_paths(cfg.data)
        if not paths:
            raise ValueError("no data directory given")
        dict_path = os.path.join(paths[0], DICTIONARY_FILE)
        if not os.path.isfile(dict_path):
            raise FileNotFoundError(
                f"{dict_path} not found: the shared dictionary (with __lang__ tags) that "
                "preprocess/binarize.py writes"
            )
        dictionary = cls.load_dictionary(dict_path)
        dictionary.add_symbol(MASK_SYMBOL)  # MMA text masking (a no-op when dict.txt has it)
        logger.info("dictionary %s: %d types", dict_path, len(dictionary))
        return cls(cfg, dictionary)

    def _check_language(self, lang: str) -> None:
        if lang_tag(lang) not in self.src_dict.indices:
            raise ValueError(
                f"unknown language {lang!r}: {os.path.join(utils.split_paths(self.cfg.data)[0], DICTIONARY_FILE)} "
                f"has language tags for {', '.join(self.languages) or 'no language'} "
                f"(expected a symbol {lang_tag(lang)})"
            )

    def lang_tag_index(self, lang: str) -> int:
        self._check_language(lang)
        return self.src_dict.index(lang_tag(lang))

    # ---- data -------------------------------------------------------------------------------
    def _directions(self, split: str) -> List[Tuple[str, str]]:
        if split != self.cfg.train_subset and self.cfg.source_lang and self.cfg.target_lang:
            return [(self.cfg.source_lang, self.cfg.target_lang)]
        return self.lang_pairs

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)]
        datasets = {
            f"{src}-{tgt}": self._load_direction(data_path, split, src, tgt)
            for src, tgt in self._directions(split)
        }
        for direction, dataset in datasets.items():
            logger.info("%s %s %s: %d examples%s", data_path, split, direction, len(dataset),
                        " with images" if dataset.has_images else " (text only)")
            if dataset.num_without_usable_image:
                logger.warning(
                    "%s %s: %d sentences refer to images that were missing or undecodable at "
                    "extraction (see %s.bad_images.tsv); they are trained and translated text-only",
                    split, direction, dataset.num_without_usable_image, dataset.image_store.path)
            self._check_model_compatible(split, dataset)
        if split == self.cfg.train_subset:
            self.datasets[split] = TemperatureSampledDataset(datasets, self._sampling_temperature,
                                                             seed=self.cfg.seed)
        elif len(datasets) == 1:
            self.datasets[split] = next(iter(datasets.values()))
        else:
            self.datasets[split] = ConcatDataset(list(datasets.values()))

    def _sampling_temperature(self) -> float:
        num_updates = 0 if self._training_model is None else self._training_model.num_updates
        return temperature_at(num_updates, self.cfg.sampling_temperature,
                              self.cfg.sampling_temperature_init, self.cfg.sampling_warmup_updates)

    def _load_direction(self, data_path: str, split: str, src: str, tgt: str) -> MultimodalLanguagePairDataset:
        prefix = self._binarized_prefix(data_path, split, src, tgt)
        src_data = data_utils.load_indexed_dataset(prefix + src, self.src_dict, self.cfg.dataset_impl)
        tgt_data = data_utils.load_indexed_dataset(prefix + tgt, self.tgt_dict, self.cfg.dataset_impl)
        if len(src_data) != len(tgt_data):
            raise ValueError(f"{prefix}{src} has {len(src_data)} sentences but {prefix}{tgt} has {len(tgt_data)}")
        if self.cfg.truncate_source:  # room for the language tag and </s>
            src_data = AppendTokenDataset(
                TruncateDataset(StripTokenDataset(src_data, self.src_dict.eos()),
                                self.cfg.max_source_positions - 2),
                self.src_dict.eos(),
            )
        src_data = PrependTokenDataset(src_data, self.lang_tag_index(tgt))
        image_store, image_rows = self._image_rows(data_path, split, src, tgt, len(src_data), prefix)
        return MultimodalLanguagePairDataset(
            src_data, src_data.sizes, self.src_dict, tgt_data, tgt_data.sizes, self.tgt_dict,
            left_pad_source=self.cfg.left_pad_source, left_pad_target=self.cfg.left_pad_target,
            num_buckets=self.cfg.num_batch_buckets, shuffle=(split != "test"),
            pad_to_multiple=self.cfg.required_seq_len_multiple,
            image_store=image_store, image_rows=image_rows,
            augmentation=self._augmentation(f"{src}-{tgt}") if split == self.cfg.train_subset else None,
            source_lang_index=self.lang_tag_index(src), emit_source_lang=True,
        )

    def _augmentation(self, direction: str) -> Optional[MultimodalAugmentation]:
        cfg = self.cfg
        if not (cfg.mma_text_mask_ratio or cfg.mma_image_view_prob or cfg.mma_patch_mask_ratio
                or cfg.mma_view_negatives):
            return None
        return MultimodalAugmentation(
            text_mask_ratio=cfg.mma_text_mask_ratio, text_mask_span=cfg.mma_text_mask_span,
            mask_index=self.src_dict.index(MASK_SYMBOL), image_view_prob=cfg.mma_image_view_prob,
            patch_mask_ratio=cfg.mma_patch_mask_ratio, view_negatives=cfg.mma_view_negatives,
            seed=cfg.seed, direction=direction)

    def _binarized_prefix(self, data_path: str, split: str, src: str, tgt: str) -> str:
        for name in (f"{split}.{src}-{tgt}.", f"{split}.{tgt}-{src}.", f"{split}."):
            prefix = os.path.join(data_path, name)
            if all(indexed_dataset.dataset_exists(prefix + lang, self.cfg.dataset_impl) for lang in (src, tgt)):
                return prefix
        expected = os.path.join(data_path, f"{split}.{src}-{tgt}.{{{src},{tgt}}}.bin/.idx")
        raise FileNotFoundError(
            f"split {split!r} of direction {src}-{tgt} not found: expected {expected} (or the "
            f"{tgt}-{src} files, or multi-way {split}.{{{src},{tgt}}}.bin/.idx), as written by "
            "preprocess/binarize.py or fairseq-preprocess"
        )

    def _feature_file(self, data_path: str, split: str) -> Optional[str]:
        if self.cfg.image_features:
            if not os.path.isfile(self.cfg.image_features):
                raise ImageFeatureError(f"--image-features {self.cfg.image_features}: file not found")
            return self.cfg.image_features
        for name in (f"{split}.image_features.h5", SHARED_FEATURE_FILE):
            path = os.path.join(data_path, name)
            if os.path.isfile(path):
                return path
        return None

    def _feature_store(self, path: str) -> ImageFeatureStore:
        if path not in self._feature_stores:
            self._feature_stores[path] = ImageFeatureStore(path)
        return self._feature_stores[path]

    def _image_rows(self, data_path, split, src, tgt, num_sentences, prefix):
        path = self._feature_file(data_path, split)
        if path is None:
            return None, None
        candidates = [os.path.join(data_path, f"{split}.{a}-{b}.image_ids") for a, b in ((src, tgt), (tgt, src))]
        candidates.append(os.path.join(data_path, f"{split}.image_ids"))
        ids_path = next((p for p in candidates if os.path.isfile(p)), None)
        if ids_path is None:
            raise ImageFeatureError(
                f"image features {path} exist but split {split!r} ({src}-{tgt}) has no image-id list: "
                f"expected one of {', '.join(candidates)}"
            )
        image_ids = read_image_ids(ids_path)
        if len(image_ids) != num_sentences:
            raise ImageFeatureError(
                f"{ids_path} has {len(image_ids)} image ids but {prefix}{src}.bin has {num_sentences} "
                "sentences; the id list must be aligned line by line with the text"
            )
        store = self._feature_store(path)
        return store, store.rows_for(image_ids, ids_path)

    @property
    def image_feature_dim(self) -> Optional[int]:
        """Feature dimension of the data, from the files opened so far (or the train split's)."""
        if not self._feature_stores:
            path = self._feature_file(utils.split_paths(self.cfg.data)[0], self.cfg.train_subset)
            if path is not None:
                self._feature_store(path)
        dims = {store.feature_dim for store in self._feature_stores.values()}
        if len(dims) > 1:
            raise ImageFeatureError(f"image-feature files disagree on the dimension: {sorted(dims)}")
        return dims.pop() if dims else None

    @property
    def sentencepiece_model(self) -> Optional[str]:
        """The data's SentencePiece model (DATA/spm.model, as preprocess/binarize.py writes it), if any."""
        path = os.path.join(utils.split_paths(self.cfg.data)[0], "spm.model")
        return path if os.path.isfile(path) else None

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq drops a final batch whose size is not a multiple of
        # --required-batch-size-multiple (fairseq issue #5036): harmless for training, but it
        # silently loses validation and test sentences, so every other split batches freely.
        if dataset is not self.datasets.get(self.cfg.train_subset):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    # ---- model ------------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        # the model takes its image-feature dimension from self.image_feature_dim
        model = super().build_model(cfg, from_checkpoint)
        multimodal = isinstance(model, MultimodalModelInterface)  # any other model: text-only
        self._training_model = model if multimodal else None
        self._model_image_dim = model.image_feature_dim if multimodal else None
        self._source_lang_in_batch = multimodal and model.reads_source_language
        for split, dataset in self.datasets.items():
            for part in getattr(dataset, "datasets", [dataset]):
                self._check_model_compatible(split, part)
        return model

    def _check_model_compatible(self, split: str, dataset: MultimodalLanguagePairDataset) -> None:
        if self._model_image_dim is None:
            return
        if not dataset.has_images:
            raise ImageFeatureError(
                f"the model fuses images but split {split!r} has no image features: expected "
                f"{split}.image_features.h5 or {SHARED_FEATURE_FILE} in the data directory, or --image-features"
            )
        if dataset.image_store.feature_dim != self._model_image_dim:
            raise ImageFeatureError(
                f"{dataset.image_store.path} holds {dataset.image_store.feature_dim}-dimensional image "
                f"features but the model expects --image-feature-dim {self._model_image_dim}"
            )

    # ---- inference --------------------------------------------------------------------------
    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        """fairseq-interactive input: ``IMAGE_ID<TAB>sentence`` when --image-features is given
        (the id is looked up there), a plain sentence otherwise."""
        sentences, image_ids = [], []
        for line_no, line in enumerate(lines, start=1):
            if self.cfg.image_features:
                image_id, tab, sentence = line.partition("\t")
                if not tab or not image_id:
                    raise ImageFeatureError(
                        f"input line {line_no}: expected IMAGE_ID<TAB>sentence (--image-features is set), got {line!r}"
                    )
                image_ids.append(image_id)
                sentences.append(sentence)
            else:
                sentences.append(line)
        self._pending_image_ids = image_ids or None
        return super().get_interactive_tokens_and_lengths(sentences, encode_fn)

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """Prefixes the target-language tag; images come from the ids that
        :meth:`get_interactive_tokens_and_lengths` read just before, for the same lines."""
        if not self.cfg.target_lang:
            raise ValueError("inference needs --target-lang (the tag prefixed to the source)")
        tag = torch.LongTensor([self.lang_tag_index(self.cfg.target_lang)])
        src_tokens = [torch.cat([tag, tokens]) for tokens in src_tokens]
        src_lengths = [int(length) + 1 for length in src_lengths]
        image_store = image_rows = None
        image_ids, self._pending_image_ids = self._pending_image_ids, None
        self._image_row_of_source = {}
        if image_ids is not None:
            if len(image_ids) != len(src_tokens):
                raise RuntimeError(f"{len(image_ids)} image ids for {len(src_tokens)} sentences")
            image_store = self._feature_store(self.cfg.image_features)
            image_rows = image_store.rows_for(image_ids, "input")
            for line_no, (tokens, row) in enumerate(zip(src_tokens, image_rows), start=1):
                key = tuple(tokens.tolist())
                if self._image_row_of_source.setdefault(key, row) != row:
                    raise ImageFeatureError(
                        f"input line {line_no} repeats an earlier sentence of the same chunk with a "
                        "different image; translate with --buffer-size 1 (the default) to tell them apart"
                    )
        elif self._model_image_dim is not None:
            raise ImageFeatureError("the model fuses images: pass --image-features FILE.h5 and "
                                    "give each input line as IMAGE_ID<TAB>sentence")
        if self._source_lang_in_batch and not self.cfg.source_lang:
            raise ValueError("the model's instruction prompt names the source language: pass --source-lang")
        return MultimodalLanguagePairDataset(
            src_tokens, src_lengths, self.source_dictionary, tgt_dict=self.target_dictionary,
            constraints=constraints, image_store=image_store, image_rows=image_rows,
            source_lang_index=self.lang_tag_index(self.cfg.source_lang) if self.cfg.source_lang else None,
            emit_source_lang=self._source_lang_in_batch,
        )

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        net_input = sample["net_input"]
        if "image_patches" not in net_input and self._image_row_of_source:
            # fairseq-interactive hands the models only src_tokens and src_lengths: find each
            # sentence's image again through its tokens (unique per chunk, see above).
            net_input["image_patches"], net_input["image_global"], usable = self._images_of(net_input["src_tokens"])
            if usable is not None:
                net_input["image_usable"] = usable
        if self._source_lang_in_batch and "source_lang" not in net_input:
            # fairseq-interactive drops it too; one direction per run
            if not self.cfg.source_lang:
                raise ValueError("the model's instruction prompt names the source language: pass --source-lang")
            net_input["source_lang"] = torch.full((net_input["src_tokens"].size(0),),
                                                  self.lang_tag_index(self.cfg.source_lang),
                                                  dtype=torch.long, device=net_input["src_tokens"].device)
        return super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                      constraints=constraints)

    def _images_of(self, src_tokens: torch.Tensor):
        store = self._feature_store(self.cfg.image_features)
        rows = [self._image_row_of_source[tuple(utils.strip_pad(tokens, self.src_dict.pad()).tolist())]
                for tokens in src_tokens.cpu()]
        patches, global_vectors = stack_images([store.read(int(row)) for row in rows])
        usable = torch.from_numpy(store.usable[rows])
        return (patches.to(src_tokens.device), global_vectors.to(src_tokens.device),
                None if usable.all() else usable.to(src_tokens.device))
