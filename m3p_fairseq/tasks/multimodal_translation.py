"""Many-to-many translation with images: fairseq's translation task, plus

* one shared dictionary holding a ``__xx__`` tag per language; the tag of the *target* language
  is prefixed to every source sentence (paper Eq. 2), at training and at generation time, and
  with ``--decoder-langtok`` also to every target, as fairseq's ``translation_multi_simple_epoch
  --decoder-langtok`` does (generation forces it as the first token and strips it from the output);
* every ``--lang-pairs`` direction loaded at once, mixed by temperature-based sampling (Eq. 7);
* image features looked up in HDF5 through an image-id list aligned with the text, and the
  images' object tags from the same file for a model that reads them (``--arch vlp_mmt*
  --object-tags``; data/object_tags.py);
* MMA augmentation of the training examples (``--mma-*``, Sec. 2.5); a ``<mask>`` symbol is
  added to the dictionary for it.

The task delegates: the data directory's layout is ``data.data_dir.DataDirectory``'s, finding
and loading splits is ``data.data_manager.MultimodalDataManager``'s, the temperature schedule
``data.temperature_sampling.TemperatureSchedule``'s and fairseq-interactive's input
``data.interactive_input.InteractiveInput``'s. Batches follow ``data.batch_keys``.

For models: ``task.data_directory`` (the files of DATA) and ``task.image_feature_dim`` (the
data's feature dimension; ``task.require_image_feature_dim(fusion)`` raises when a fusion has
no features to read) are what a model's ``build_model`` may ask; the task never writes into a
model's config or into datasets after loading.
"""

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from fairseq.data import Dictionary
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from ..data.batch_keys import SOURCE_LANG, MultimodalModelInterface
from ..data.data_dir import DICTIONARY_FILE, SHARED_FEATURE_FILE, DataDirectory  # noqa: F401 (re-exported)
from ..data.data_manager import MultimodalDataManager
from ..data.image_features import ImageFeatureError
from ..data.interactive_input import InteractiveInput
from ..data.languages import parse_lang_pairs  # noqa: F401 (re-exported for scripts)
from ..data.multimodal_pair_dataset import MultimodalLanguagePairDataset
from ..data.temperature_sampling import TemperatureSchedule
from ..data.vocabulary import MASK_SYMBOL, lang_tag, tagged_languages  # noqa: F401 (lang_tag re-exported)
from .m3p_data import DataLoaderConfig

logger = logging.getLogger(__name__)
SOURCE_LANG_NEEDED = ("the model's instruction prompt names the source language: pass --source-lang "
                      "(-s), e.g. -s en -t de")


@dataclass
class MultimodalTranslationConfig(TranslationConfig, DataLoaderConfig):
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
    mma_translation_only: bool = field(
        default=False, metadata={"help": "MMA augments only the translation input; by default each training "
                                          "example also brings MMA's augmented pair {T(x_k), I(z_k)} (source "
                                          "masked afresh, view with masked patches) as an extra positive pair "
                                          "of MMCL (paper Sec. 2.5; README 'MMA inside MMCL')"},
    )
    decoder_langtok: bool = field(
        default=False, metadata={"help": "also prefix the target language's tag to every target, as fairseq's "
                                          "--decoder-langtok (the source keeps its tag): generation forces it "
                                          "as the first token and strips it from the output. fairseq-generate "
                                          "takes the setting from the checkpoint, fairseq-interactive needs the "
                                          "flag again"},
    )
    seed: int = II("common.seed")  # seeds the per-epoch draw of the pair mix and MMA


@register_task("multimodal_translation", dataclass=MultimodalTranslationConfig)
class MultimodalTranslationTask(TranslationTask):
    cfg: MultimodalTranslationConfig

    def __init__(self, cfg: MultimodalTranslationConfig, dictionary: Dictionary):
        super().__init__(cfg, dictionary, dictionary)
        self.languages = tagged_languages(dictionary.symbols)
        self.lang_pairs = parse_lang_pairs(cfg.lang_pairs) if cfg.lang_pairs else []
        if cfg.source_lang and cfg.target_lang:
            self.lang_pairs = self.lang_pairs or [(cfg.source_lang, cfg.target_lang)]
        if not self.lang_pairs:
            raise ValueError("multimodal_translation needs --lang-pairs (or --source-lang and --target-lang)")
        named = {lang for pair in self.lang_pairs for lang in pair} | {cfg.source_lang, cfg.target_lang}
        for lang in named - {None}:
            self._check_language(lang)
        self.data_manager = MultimodalDataManager(cfg, dictionary)
        self.temperature = TemperatureSchedule(cfg.sampling_temperature, cfg.sampling_temperature_init,
                                               cfg.sampling_warmup_updates)
        self.interactive_input = InteractiveInput(cfg.image_features, self.data_manager.feature_store,
                                                  self.data_manager.object_tags)
        self._model_image_dim: Optional[int] = None  # None: no model yet, or a text-only one
        # set by build_model for models whose prompt names the source language (the decoder-only
        # model): inference then needs --source-lang
        self._reads_source_language = False

    # ---- set-up -----------------------------------------------------------------------------
    @classmethod
    def setup_task(cls, cfg: MultimodalTranslationConfig, **kwargs):
        directory = DataDirectory.of_task_data(cfg.data)
        dictionary = directory.load_dictionary()
        logger.info("dictionary %s: %d types", directory.dictionary, len(dictionary))
        return cls(cfg, dictionary)

    @property
    def data_directory(self) -> DataDirectory:
        """The (first) data directory: dict.txt, spm.model, binarized splits, features."""
        return self.data_manager.data_directory()

    def _check_language(self, lang: str) -> None:
        if lang_tag(lang) not in self.src_dict.indices:
            raise ValueError(
                f"unknown language {lang!r}: {DataDirectory.of_task_data(self.cfg.data).dictionary} "
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

    def load_dataset(self, split, epoch=1, combine=False, task_cfg=None, **kwargs):
        # fairseq-generate passes the checkpoint's task config: a model trained on tagged targets
        # must generate with the tag forced first
        if task_cfg is not None and getattr(task_cfg, "decoder_langtok", False) and not self.cfg.decoder_langtok:
            logger.info("the checkpoint was trained with --decoder-langtok: generating with it")
            self.cfg.decoder_langtok = True
        training = split == self.cfg.train_subset
        dataset = self.data_manager.load_split(split, self._directions(split), epoch,
                                       temperature=self.temperature if training else None)
        for part in getattr(dataset, "datasets", [dataset]):
            self._check_model_compatible(split, part)
        self.datasets[split] = dataset

    @property
    def image_feature_dim(self) -> Optional[int]:
        """Feature dimension of the data, from the files opened so far (or the train split's)."""
        return self.data_manager.image_feature_dim

    def require_image_feature_dim(self, fusion: str) -> int:
        """The data's feature dimension for a model with ``--fusion fusion`` (an error without features)."""
        return self.data_directory.require_feature_dim(self.image_feature_dim, self.cfg.train_subset, f"--fusion {fusion}")

    @property
    def object_tags_available(self) -> bool:
        """Whether the training split's feature file carries object tags (a model's ``--object-tags auto``)."""
        return self.data_manager.object_tags_available

    @property
    def sentencepiece_model(self) -> Optional[str]:
        """The data's SentencePiece model (DATA/spm.model, as preprocess/binarize.py writes it), if any."""
        path = self.data_directory.spm_model
        return str(path) if path.is_file() else None

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq drops a final batch whose size is not a multiple of
        # --required-batch-size-multiple (fairseq issue #5036): harmless for training, but it
        # silently loses validation and test sentences, so every other split batches freely.
        if dataset is not self.datasets.get(self.cfg.train_subset):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    # ---- model ------------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        multimodal = isinstance(model, MultimodalModelInterface)  # any other model: text-only
        self.temperature.attach(model if multimodal else None)  # its update count drives the sampling warm-up
        self._model_image_dim = model.image_feature_dim if multimodal else None
        # batches of a text-only model carry no image features (the files are not read), and
        # object tags only for a model that reads them
        self.data_manager.image_demand.model_built(self._model_image_dim is not None,
                                                   multimodal and model.reads_object_tags)
        self._reads_source_language = multimodal and model.reads_source_language
        if self._reads_source_language and self.cfg.decoder_langtok:
            raise ValueError("--decoder-langtok is for encoder-decoder models: the decoder-only model's "
                             "instruction prompt already names the target language")
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
                f"{split}.{SHARED_FEATURE_FILE} or {SHARED_FEATURE_FILE} in the data directory, or --image-features"
            )
        if dataset.image_store.feature_dim != self._model_image_dim:
            raise ImageFeatureError(
                f"{dataset.image_store.path} holds {dataset.image_store.feature_dim}-dimensional image "
                f"features but the model expects --image-feature-dim {self._model_image_dim}"
            )
        if self._reads_object_tags:  # encoded now, once, before any data-loader worker starts
            dataset.object_tags.tokens(f"the model (--object-tags yes, split {split!r})")
            logger.info("split %s: the model reads the object tags of %s", split, dataset.object_tags.path)

    @property
    def _reads_object_tags(self) -> bool:
        """A model built (any model of an ensemble) reads the images' object tags."""
        return self.data_manager.image_demand.tags_wanted

    # ---- inference --------------------------------------------------------------------------
    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        """fairseq-interactive input, see :class:`InteractiveInput` (bad lines are skipped)."""
        if self._reads_source_language and not self.cfg.source_lang:
            # only fairseq-interactive calls this: a message and exit status 1, not a traceback
            raise SystemExit(f"fairseq-interactive: {SOURCE_LANG_NEEDED}")
        return super().get_interactive_tokens_and_lengths(self.interactive_input.read(lines), encode_fn)

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """Prefixes the target-language tag; images come from the ids that
        :meth:`get_interactive_tokens_and_lengths` read just before, for the same lines."""
        if not self.cfg.target_lang:
            raise ValueError("inference needs --target-lang (the tag prefixed to the source)")
        tag = torch.LongTensor([self.lang_tag_index(self.cfg.target_lang)])
        src_tokens = [torch.cat([tag, tokens]) for tokens in src_tokens]
        src_lengths = [int(length) + 1 for length in src_lengths]
        image_store, image_rows, example_ids = self.interactive_input.images_for(src_tokens)
        if image_store is None and self._model_image_dim is not None:
            raise ImageFeatureError("the model fuses images: pass --image-features FILE.h5 and "
                                    "give each input line as IMAGE_ID<TAB>sentence")
        if self._reads_source_language and not self.cfg.source_lang:
            raise ValueError(SOURCE_LANG_NEEDED)
        object_tags = self.data_manager.object_tags(image_store.path) if image_store is not None else None
        if self._reads_object_tags and object_tags is not None:
            object_tags.tokens("the model (--object-tags yes)")
        return MultimodalLanguagePairDataset(
            src_tokens, src_lengths, self.source_dictionary, tgt_dict=self.target_dictionary,
            constraints=constraints, image_store=image_store, image_rows=image_rows,
            source_lang_index=self.lang_tag_index(self.cfg.source_lang) if self.cfg.source_lang else None,
            example_ids=example_ids, image_demand=self.data_manager.image_demand, object_tags=object_tags,
        )

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        # fairseq-interactive hands the models only src_tokens and src_lengths: add the rest
        net_input = sample["net_input"]
        if self.data_manager.image_demand.wanted:
            self.interactive_input.add_images(net_input, self.src_dict.pad(),
                                              with_tags=self._reads_object_tags)
        if SOURCE_LANG not in net_input and self.cfg.source_lang:  # one direction per run
            net_input[SOURCE_LANG] = torch.full((net_input["src_tokens"].size(0),),
                                                self.lang_tag_index(self.cfg.source_lang),
                                                dtype=torch.long, device=net_input["src_tokens"].device)
        if self.cfg.decoder_langtok and prefix_tokens is None:
            prefix_tokens = self._target_tags(sample)
        return super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                      constraints=constraints)

    def _target_tags(self, sample) -> torch.Tensor:
        """[B, 1]: each sentence's target tag, the first output token under --decoder-langtok: the
        first target token of a loaded split (so a batch may mix directions), else --target-lang's."""
        src_tokens = sample["net_input"]["src_tokens"]
        if sample.get("target") is not None:
            return sample["target"][:, :1]
        if not self.cfg.target_lang:
            raise ValueError("generation with --decoder-langtok needs --target-lang (the first output token)")
        return torch.full((src_tokens.size(0), 1), self.lang_tag_index(self.cfg.target_lang),
                          dtype=src_tokens.dtype, device=src_tokens.device)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if self.cfg.decoder_langtok:  # the forced target tag is not part of the translation
            tags = {self.lang_tag_index(lang) for lang in self.languages}
            extra_gen_cls_kwargs = {**(extra_gen_cls_kwargs or {}), "symbols_to_strip_from_output": tags}
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs, **kwargs)
