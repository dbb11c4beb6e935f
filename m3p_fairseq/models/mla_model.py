"""``--arch mla_acquisition``: the language acquisition encoder as a fairseq model.

Its parameters are exactly the trainable ones of the paper (the shared non-native embedding
block with W_e, and the acquirers of every language); the frozen native dual encoder, loaded
here from the task's ``--native-checkpoint`` and handed to the task (which tokenizes native
captions with it), appears in neither the optimizer nor the checkpoint. The forward output carries t
(Eq. 11), the native s (Eq. 3, without gradient) when the batch has native translations, and the
image embeddings v when it has images; the criteria ``mla_nlt`` and ``mla_le`` turn them into
Eq. 12 or Eqs. 13-15.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model

from ..data.mla_dataset import check_dictionary_extends
from .language_acquisition import DEFAULT_BOTTLENECK, LanguageAcquisitionEncoder
from .native_dual_encoder import NativeDualEncoder, load_native

logger = logging.getLogger(__name__)

MLA_TEXT = "mla_text"  # (B, E) t of Eq. 11
MLA_NATIVE = "mla_native"  # (B, E) s of Eq. 3 for the batch's native translations
MLA_IMAGE = "mla_image"  # (B, E) v of Eq. 6


@dataclass
class MlaModelConfig(FairseqDataclass):
    acquirer_bottleneck: int = field(default=DEFAULT_BOTTLENECK, metadata={"help": "hidden size of each "
                                                                                    "language acquirer (Eq. 10)"})
    nonnative_embed_dim: int = field(default=0, metadata={"help": "size of the non-native word embeddings "
                                                                   "before W_e (0 = the native text width)"})
    no_acquirers: bool = field(default=False, metadata={"help": "ablation (Table 5): skip the acquirers, "
                                                                 "train only the non-native embedding block"})
    finetune_text_tower: bool = field(default=False, metadata={"help": "costly baseline: train a copy of the "
                                                                        "native text layers and W_a (shared by the "
                                                                        "non-native languages) instead of acquirers"})
    nonnative_embed_init: Optional[str] = field(
        default=None, metadata={"help": "local word-embedding matrix to start the non-native embeddings from "
                                        "(the paper uses M-BERT's): a torch file {'symbols': [V words], "
                                        "'weight': [V, D] tensor}; dictionary words found there start from their "
                                        "row, the others at random; D replaces --nonnative-embed-dim"})
    init_from: Optional[str] = field(
        default=None, metadata={"help": "checkpoint of an earlier MLA run to start from (NLT -> LE, or before "
                                        "adding a language); refused if made against another native model"})


def load_embedding_matrix(path: str) -> Tuple[List[str], torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--nonnative-embed-init: file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    symbols, weight = (state.get("symbols"), state.get("weight")) if isinstance(state, dict) else (None, None)
    if not isinstance(symbols, list) or not isinstance(weight, torch.Tensor) or weight.dim() != 2 \
            or weight.shape[0] != len(symbols):
        raise ValueError(f"{path}: expected {{'symbols': [V words], 'weight': [V, D] tensor}} with one row per word")
    return symbols, weight


@register_model("mla_acquisition", dataclass=MlaModelConfig)
class MlaAcquisitionModel(BaseFairseqModel):
    def __init__(self, encoder: LanguageAcquisitionEncoder):
        super().__init__()
        self.encoder = encoder

    @property
    def native(self) -> NativeDualEncoder:
        return self.encoder.native

    @classmethod
    def build_model(cls, cfg: MlaModelConfig, task):
        native = load_native(task.cfg.native_checkpoint, task.cfg.native_open_clip_model)
        logger.info(f"native model {native.name!r} ({native.identity.fingerprint[:12]})")
        d = task.dictionary
        pretrained = load_embedding_matrix(cfg.nonnative_embed_init) if cfg.nonnative_embed_init else None
        encoder = LanguageAcquisitionEncoder(native, len(d), d.pad(), d.eos(), task.langs,
                                             embed_dim=pretrained[1].shape[1] if pretrained else
                                             cfg.nonnative_embed_dim or None,
                                             bottleneck=cfg.acquirer_bottleneck, use_acquirers=not cfg.no_acquirers,
                                             finetune_text_tower=cfg.finetune_text_tower)
        model = cls(encoder)
        if pretrained:
            found = encoder.init_embeddings(d.symbols[d.nspecial:], *pretrained)
            logger.info(f"--nonnative-embed-init {cfg.nonnative_embed_init}: {found} of {len(d) - d.nspecial} "
                        f"words start from it")
        frozen = [lang for lang in task.langs if lang not in task.train_langs]
        known_vocab = model.init_from(cfg.init_from, task) if cfg.init_from else None
        if frozen:
            if known_vocab is None:
                raise ValueError(f"--train-langs leaves {frozen} untrained, but no --init-from gives their acquirers")
            encoder.freeze_for_extension(task.train_langs, known_vocab)
        logger.info(f"MLA: languages {task.langs}, training {task.train_langs}; "
                    f"{encoder.trainable_parameter_count()} trainable parameters")
        return model

    def init_from(self, path: str, task) -> int:
        """Load an earlier run's weights (new languages keep fresh acquirers, new words fresh
        rows); returns the earlier vocabulary size."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"--init-from: checkpoint not found: {path}")
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        weights = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
        old_langs = sorted({k.split(".")[1] for k in weights if k.startswith("acquirers.")})
        unknown = sorted(set(old_langs) - set(task.langs))
        if unknown:
            raise ValueError(f"--init-from {path} has acquirers for {unknown}, which --langs {task.langs} drops")
        old_dict = (state.get("cfg") or {}).get("task", {}).get("nonnative_dict")
        if old_dict and Path(old_dict).is_file():
            check_dictionary_extends(Dictionary.load(old_dict).symbols, task.dictionary, f"--init-from {path}")
        old_rows = weights["embed_tokens.weight"]
        if old_rows.shape[0] > len(task.dictionary):
            raise ValueError(f"--init-from {path} has {old_rows.shape[0]} words, the dictionary only "
                             f"{len(task.dictionary)}: use the dictionary it was trained with, or an extension")
        fresh = self.encoder.embed_tokens.weight.detach().clone()
        fresh[: old_rows.shape[0]] = old_rows
        weights["embed_tokens.weight"] = fresh
        self.encoder.check_native(weights)
        missing, unexpected = self.encoder.load_state_dict(weights, strict=False)
        new = sorted({k.split(".")[1] for k in missing})
        logger.info(f"--init-from {path}: languages {old_langs}, {old_rows.shape[0]} words; fresh acquirers for {new}")
        return int(old_rows.shape[0])

    def max_positions(self):
        return self.encoder.native.context_length

    # keyword names = the batch keys of m3p_fairseq.data.mla_dataset and batch_keys.IMAGE_GLOBAL
    def forward(self, src_tokens, src_lengths=None, lang: Optional[str] = None, native_tokens=None,
                image_global=None, **unused) -> Dict[str, torch.Tensor]:
        out = {MLA_TEXT: self.encoder(src_tokens, lang)}
        if native_tokens is not None:
            with torch.no_grad():
                out[MLA_NATIVE] = self.encoder.native.encode_tokens(native_tokens)
        if image_global is not None:
            out[MLA_IMAGE] = image_global
        return out

