"""The synthetic corpus's world: the colours, shapes, sizes and grid cells a scene is drawn
from, and how each language names them (word order, articles, agreement). Used by
preprocess/make_synthetic_corpus.py.
"""

from __future__ import annotations

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 20),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "orange": (255, 140, 0),
    "purple": (140, 40, 170),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
# Side of the object's bounding box as a fraction of the image side. Large stays below
# the 1/3 grid cell so objects in different cells can never overlap.
SIZES = {"small": 0.22, "large": 0.32}
# Row-major, so sorting by index gives reading order.
GRID_CELLS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)


def _with_endings(stem: str, endings: dict[str, str]) -> dict[str, str]:
    return {gender: stem + ending for gender, ending in endings.items()}


_GERMAN_ENDINGS = {"m": "er", "n": "es", "f": "e"}  # strong endings after ein/eine
_CZECH_ENDINGS = {"m": "ý", "f": "á", "n": "é"}

# Per language: the order of words in one object phrase, the article, and the
# vocabulary. Shapes map to (noun, grammatical gender); an adjective or article is either
# an invariable string or a dict gender -> inflected form.
LEXICONS = {
    "en": {
        "word_order": ("article", "size", "colour", "shape", "position"),
        "article": "a",
        "conjunction": "and",
        "shapes": {
            "circle": ("circle", None), "square": ("square", None),
            "triangle": ("triangle", None), "star": ("star", None),
            "cross": ("cross", None), "diamond": ("diamond", None),
        },
        "colours": {
            "red": "red", "green": "green", "blue": "blue", "yellow": "yellow",
            "black": "black", "white": "white", "orange": "orange", "purple": "purple",
        },
        "sizes": {"small": "small", "large": "large"},
        "positions": {
            "top left": "at the top left", "top": "at the top",
            "top right": "at the top right", "left": "on the left",
            "centre": "in the centre", "right": "on the right",
            "bottom left": "at the bottom left", "bottom": "at the bottom",
            "bottom right": "at the bottom right",
        },
    },
    "de": {
        "word_order": ("article", "size", "colour", "shape", "position"),
        "article": {"m": "ein", "n": "ein", "f": "eine"},
        "conjunction": "und",
        "shapes": {
            "circle": ("Kreis", "m"), "square": ("Quadrat", "n"),
            "triangle": ("Dreieck", "n"), "star": ("Stern", "m"),
            "cross": ("Kreuz", "n"), "diamond": ("Raute", "f"),
        },
        "colours": {
            "red": _with_endings("rot", _GERMAN_ENDINGS),
            "green": _with_endings("grün", _GERMAN_ENDINGS),
            "blue": _with_endings("blau", _GERMAN_ENDINGS),
            "yellow": _with_endings("gelb", _GERMAN_ENDINGS),
            "black": _with_endings("schwarz", _GERMAN_ENDINGS),
            "white": _with_endings("weiß", _GERMAN_ENDINGS),
            "orange": _with_endings("orangefarben", _GERMAN_ENDINGS),
            "purple": _with_endings("violett", _GERMAN_ENDINGS),
        },
        "sizes": {
            "small": _with_endings("klein", _GERMAN_ENDINGS),
            "large": _with_endings("groß", _GERMAN_ENDINGS),
        },
        "positions": {
            "top left": "oben links", "top": "oben", "top right": "oben rechts",
            "left": "links", "centre": "in der Mitte", "right": "rechts",
            "bottom left": "unten links", "bottom": "unten", "bottom right": "unten rechts",
        },
    },
    "fr": {
        # Size adjectives precede the noun, colour adjectives follow it.
        "word_order": ("article", "size", "shape", "colour", "position"),
        "article": {"m": "un", "f": "une"},
        "conjunction": "et",
        "shapes": {
            "circle": ("cercle", "m"), "square": ("carré", "m"),
            "triangle": ("triangle", "m"), "star": ("étoile", "f"),
            "cross": ("croix", "f"), "diamond": ("losange", "m"),
        },
        "colours": {
            "red": "rouge",
            "green": {"m": "vert", "f": "verte"},
            "blue": {"m": "bleu", "f": "bleue"},
            "yellow": "jaune",
            "black": {"m": "noir", "f": "noire"},
            "white": {"m": "blanc", "f": "blanche"},
            "orange": "orange",
            "purple": {"m": "violet", "f": "violette"},
        },
        "sizes": {
            "small": {"m": "petit", "f": "petite"},
            "large": {"m": "grand", "f": "grande"},
        },
        "positions": {
            "top left": "en haut à gauche", "top": "en haut",
            "top right": "en haut à droite", "left": "à gauche",
            "centre": "au centre", "right": "à droite",
            "bottom left": "en bas à gauche", "bottom": "en bas",
            "bottom right": "en bas à droite",
        },
    },
    "cs": {
        "word_order": ("size", "colour", "shape", "position"),
        "conjunction": "a",
        "shapes": {
            "circle": ("kruh", "m"), "square": ("čtverec", "m"),
            "triangle": ("trojúhelník", "m"), "star": ("hvězda", "f"),
            "cross": ("kříž", "m"), "diamond": ("kosočtverec", "m"),
        },
        "colours": {
            "red": _with_endings("červen", _CZECH_ENDINGS),
            "green": _with_endings("zelen", _CZECH_ENDINGS),
            "blue": _with_endings("modr", _CZECH_ENDINGS),
            "yellow": _with_endings("žlut", _CZECH_ENDINGS),
            "black": _with_endings("čern", _CZECH_ENDINGS),
            "white": _with_endings("bíl", _CZECH_ENDINGS),
            "orange": _with_endings("oranžov", _CZECH_ENDINGS),
            "purple": _with_endings("fialov", _CZECH_ENDINGS),
        },
        "sizes": {
            "small": _with_endings("mal", _CZECH_ENDINGS),
            "large": _with_endings("velk", _CZECH_ENDINGS),
        },
        "positions": {
            "top left": "vlevo nahoře", "top": "nahoře", "top right": "vpravo nahoře",
            "left": "vlevo", "centre": "uprostřed", "right": "vpravo",
            "bottom left": "vlevo dole", "bottom": "dole", "bottom right": "vpravo dole",
        },
    },
}
SUPPORTED_LANGS = tuple(LEXICONS)
