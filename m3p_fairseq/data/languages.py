"""The 102 languages of InstrMulti102: code -> English name.

The paper (Sec. 4, "Data Construction") builds InstrMulti102 by translating Multi30k's English
side into 101 languages with Microsoft Translator, but its Appendix A with the list is not part of
the text we have. This table is English plus 101 languages that Microsoft Translator supports,
with ISO 639-1 codes where one exists (ISO 639-3 otherwise, and zh-Hans/zh-Hant style codes
written as ``zh`` / ``zh_tw`` because fairseq splits language pairs on ``-``).

The names are what the decoder-only model's instruction prompt says ("... from English to
German:"), so they are the languages' usual English names.
"""

from typing import Dict, Iterable, List, Optional, Tuple

INSTRMULTI102_LANGUAGES: Dict[str, str] = {
    "en": "English",
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "ba": "Bashkir", "bg": "Bulgarian", "bn": "Bengali", "bo": "Tibetan", "bs": "Bosnian",
    "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German",
    "dv": "Divehi", "el": "Greek", "es": "Spanish", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "fi": "Finnish", "fil": "Filipino", "fj": "Fijian", "fo": "Faroese",
    "fr": "French", "ga": "Irish", "gl": "Galician", "gu": "Gujarati", "ha": "Hausa",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian",
    "hy": "Armenian", "id": "Indonesian", "ig": "Igbo", "is": "Icelandic", "it": "Italian",
    "iu": "Inuktitut", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh", "km": "Khmer",
    "kn": "Kannada", "ko": "Korean", "ku": "Kurdish", "ky": "Kyrgyz", "lo": "Lao",
    "lt": "Lithuanian", "lv": "Latvian", "mg": "Malagasy", "mi": "Maori", "mk": "Macedonian",
    "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "mt": "Maltese",
    "my": "Burmese", "nb": "Norwegian", "ne": "Nepali", "nl": "Dutch", "or": "Odia",
    "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "rw": "Kinyarwanda", "sk": "Slovak", "sl": "Slovenian", "sm": "Samoan",
    "sn": "Shona", "so": "Somali", "sq": "Albanian", "sr": "Serbian", "sv": "Swedish",
    "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "th": "Thai", "ti": "Tigrinya",
    "tk": "Turkmen", "to": "Tongan", "tr": "Turkish", "tt": "Tatar", "ty": "Tahitian",
    "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese",
    "xh": "Xhosa", "yo": "Yoruba", "yue": "Cantonese", "zh": "Chinese",
    "zh_tw": "Traditional Chinese", "zu": "Zulu",
}
assert len(INSTRMULTI102_LANGUAGES) == 102, len(INSTRMULTI102_LANGUAGES)

PIVOT_LANGUAGE = "en"  # InstrMulti102 translates the English side into every other language


class UnknownLanguageError(ValueError):
    pass


def language_name(code: str) -> str:
    """English name of an InstrMulti102 language code (the instruction prompt's wording)."""
    try:
        return INSTRMULTI102_LANGUAGES[code]
    except KeyError:
        raise UnknownLanguageError(unknown_language_message(code)) from None


def unknown_language_message(code: str) -> str:
    close = [c for c in INSTRMULTI102_LANGUAGES if c.startswith(code[:1].lower())]
    return (f"unknown language code {code!r}: not one of the {len(INSTRMULTI102_LANGUAGES)} InstrMulti102 "
            f"languages (m3p_fairseq/data/languages.py)"
            + (f"; codes starting with {code[:1].lower()!r}: {', '.join(close)}" if close else ""))


def check_language_codes(codes: Iterable[str]) -> List[str]:
    codes = list(codes)
    for code in codes:
        language_name(code)
    return codes


def split_languages(text: Optional[str], option: str = "a language list") -> List[str]:
    """``en, de,fr`` -> ["en", "de", "fr"]: the syntax of every comma-separated language option
    (empty items ignored, a language named twice is an error naming ``option``)."""
    langs = [lang.strip() for lang in (text or "").split(",") if lang.strip()]
    if len(set(langs)) != len(langs):
        raise ValueError(f"{option} lists a language twice: {text}")
    return langs


def parse_lang_pairs(text: str) -> List[Tuple[str, str]]:
    """``en-de,de-en`` -> [("en", "de"), ("de", "en")]; the syntax of ``--lang-pairs``."""
    pairs = []
    for item in text.split(","):
        src, sep, tgt = item.strip().partition("-")
        if not sep or not src or not tgt or src == tgt:
            raise ValueError(f"--lang-pairs: {item.strip()!r} is not a direction like en-de")
        pairs.append((src, tgt))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"--lang-pairs lists a direction twice: {text}")
    return pairs
