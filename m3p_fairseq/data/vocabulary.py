"""The vocabulary conventions, defined once: language tags and special symbols.

A language is named in the shared dictionary by a tag ``__xx__`` (paper Eq. 2: the target
language's tag is prefixed to every source sentence). ``<mask>`` is the dictionary symbol MMA
text masking writes (fairseq's masked-LM name for it, so XLM-R's dictionary and ours agree);
``[MASK]`` is the *word* the synthetic corpus and the masking probe put into raw text, which
SentencePiece then encodes like any other word.
"""

import re
from typing import Iterable, List, Optional

MASK_SYMBOL = "<mask>"  # dictionary symbol (MMA text masking, XLM-R's masked-LM symbol)
MASK_WORD = "[MASK]"  # raw-text word (degraded captions, the source-masking probe)

_LANG_TAG = re.compile(r"^__([A-Za-z0-9_-]+?)__$")


def lang_tag(lang: str) -> str:
    """The dictionary symbol of a language: ``en`` -> ``__en__``."""
    return f"__{lang}__"


def tag_lang(symbol: str) -> Optional[str]:
    """The language a tag names (``__en__`` -> ``en``), None for any other symbol."""
    match = _LANG_TAG.match(symbol)
    return match.group(1) if match else None


def is_lang_tag(symbol: str) -> bool:
    return tag_lang(symbol) is not None


def tagged_languages(symbols: Iterable[str]) -> List[str]:
    """The languages a dictionary has tags for, sorted."""
    return sorted(lang for lang in map(tag_lang, symbols) if lang is not None)
