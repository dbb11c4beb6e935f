"""Off-target translation: the share of hypotheses whose detected language is not the target
language, with py3langid (langid.py's model, shipped inside the package: nothing is downloaded).

Detection is restricted to a candidate set: by default the languages the model translates
between, since an off-target output of a multilingual model is nearly always one of its other
languages (often a copy of the source); short outputs are then not mistaken for exotic ones."""

from functools import lru_cache
from typing import Iterable, List, Optional, Sequence, Tuple

# Language codes people use for our data that py3langid spells differently (its codes are ISO
# 639-1, with "nb"/"nn"/"no" for Norwegian and "he" for Hebrew).
_ALIASES = {
    "iw": "he", "in": "id", "fil": "tl", "nob": "nb", "nno": "nn",
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "ces": "cs", "cze": "cs",
    "spa": "es", "ita": "it", "por": "pt", "rus": "ru", "zho": "zh", "chi": "zh", "jpn": "ja",
}


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=False)


def supported_languages() -> List[str]:
    return sorted(_identifier().nb_classes)


def langid_code(lang: str) -> str:
    """py3langid's code of one of our language codes (en, de, pt_BR, zh-cn, ces, ...)."""
    base = lang.lower().replace("_", "-").split("-")[0]
    code = _ALIASES.get(base, base)
    if code not in _identifier().nb_classes:
        raise ValueError(f"language {lang!r} (as {code!r}) is not one py3langid identifies; it knows "
                         + ", ".join(supported_languages()))
    return code


def detect(sentences: Sequence[str], candidates: Optional[Iterable[str]] = None) -> List[Optional[str]]:
    """The detected py3langid code of each sentence (None for an empty one), among ``candidates``
    (our codes) or among all 97 languages."""
    identifier = _identifier()
    identifier.set_languages([langid_code(c) for c in candidates] if candidates else None)
    try:
        return [identifier.classify(s)[0] if s.strip() else None for s in sentences]
    finally:
        identifier.set_languages(None)


def off_target_rate(hypotheses: Sequence[str], target_lang: str,
                    candidates: Optional[Iterable[str]] = None) -> Tuple[float, int]:
    """(percentage, count) of hypotheses not detected as ``target_lang``; an empty hypothesis
    counts as off-target (it is not in the target language)."""
    if not hypotheses:
        return 0.0, 0
    target = langid_code(target_lang)
    candidates = sorted(set(candidates) | {target_lang}) if candidates else None
    off = sum(lang != target for lang in detect(hypotheses, candidates))
    return 100.0 * off / len(hypotheses), off
