"""The instruction prompt of the decoder-only model (paper Fig. 3a):
"Please translate the following sentence from {src} to {tgt}:", with the languages' English
names (m3p_fairseq/data/languages.py) filled in from the direction's language tags.

Every prompt of every ordered pair of the dictionary's languages is tokenised once, when the
model is built, with the data's SentencePiece model (DATA/spm.model, as preprocess/binarize.py
writes it) or, without one, split on whitespace. Pieces that the dictionary lacks (a small
SentencePiece model trained on captions may never have produced "▁Please") are appended to the
dictionary before the embeddings are built; the same data directory gives the same pieces in
the same order when fairseq-generate rebuilds the model, so training and generation agree.
"""

import logging
from typing import Dict, Optional, Tuple

import sentencepiece as spm
import torch
from fairseq.data import Dictionary
from torch import Tensor

from ..data.languages import INSTRMULTI102_LANGUAGES
from ..data.vocabulary import is_lang_tag, tag_lang

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Please translate the following sentence from {src} to {tgt}:"


def check_template(template: str) -> None:
    try:
        filled = template.format(src="S", tgt="T")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"--instruction-prompt {template!r}: only {{src}} and {{tgt}} may be filled in ({error})")
    if "{src}" not in template or "{tgt}" not in template or not filled.strip():
        raise ValueError(f"--instruction-prompt {template!r} must name both {{src}} and {{tgt}}")


class InstructionPrompt:
    def __init__(self, dictionary: Dictionary, template: str = DEFAULT_TEMPLATE,
                 spm_model: Optional[str] = None):
        check_template(template)
        self.template = template
        sp = spm.SentencePieceProcessor(model_file=spm_model) if spm_model else None
        languages = {index: tag_lang(symbol) for index, symbol in enumerate(dictionary.symbols)
                     if is_lang_tag(symbol)}
        unnamed = sorted(code for code in languages.values() if code not in INSTRMULTI102_LANGUAGES)
        if unnamed:
            logger.warning("no English name for language tag(s) %s (m3p_fairseq/data/languages.py): "
                           "the prompt names them by their code", ", ".join(unnamed))
        pairs = [(s, t) for s in languages for t in languages if s != t]
        texts = [self.text(languages[s], languages[t], template) for s, t in pairs]
        if sp is not None:
            pieces = sp.encode(texts, out_type=str)
        else:
            pieces = [text.split() for text in texts]
        size_before = len(dictionary)
        self._ids: Dict[Tuple[int, int], Tensor] = {
            pair: torch.tensor([dictionary.add_symbol(p) for p in piece_list], dtype=torch.long)
            for pair, piece_list in zip(pairs, pieces)
        }
        if len(dictionary) > size_before:
            logger.info("instruction prompt: %d pieces added to the dictionary: %s", len(dictionary) - size_before,
                        " ".join(dictionary.symbols[size_before:size_before + 30]))
        self.dictionary = dictionary
        self.languages = languages

    @staticmethod
    def text(src: str, tgt: str, template: str = DEFAULT_TEMPLATE) -> str:
        return template.format(src=INSTRMULTI102_LANGUAGES.get(src, src), tgt=INSTRMULTI102_LANGUAGES.get(tgt, tgt))

    def ids(self, source_tag: int, target_tag: int) -> Tensor:
        """Token ids of the prompt of a direction, from the language tags' dictionary indices."""
        ids = self._ids.get((source_tag, target_tag))
        if ids is None:
            names = [self.dictionary[i] if 0 <= i < len(self.dictionary) else str(i) for i in (source_tag, target_tag)]
            raise ValueError(f"no instruction prompt from {names[0]!r} to {names[1]!r}: both must be language "
                             f"tags of the dictionary ({', '.join(sorted(self.languages.values()))}), and differ")
        return ids
