"""Generate a synthetic, multi-way parallel image-caption corpus where the image matters.

Each example is a drawn scene (1 or 2 coloured shapes on a 3x3 grid) with a caption in
every requested language. The "degraded" captions mask the colour and shape words, which
only the image can recover, so a multimodal model should beat a text-only one on them.

Usage (from the repository root):
    python -m preprocess.make_synthetic_corpus --output-dir DIR [--num-train 3000]
        [--num-valid 200] [--num-test 200] [--langs en,de,fr,cs] [--image-size 96] [--seed 1]

Output in DIR, all files of a split aligned line by line:
    images/{split}_{index:06d}.png
    {split}.image_ids           image file names
    {split}.{lang}              clean captions
    {split}.degraded.{lang}     captions with colour and shape words replaced by [MASK]
    {split}.scenes.jsonl        each scene's true objects (colour, shape, size, cell), a JSON list
                                per line: preprocess/write_synthetic_regions.py turns them into
                                region boxes and classes of the feature file
"""

from __future__ import annotations

import argparse
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from m3p_fairseq.atomic_io import write_if_changed
from m3p_fairseq.data.data_dir import DataDirectory
from m3p_fairseq.data.languages import split_languages
from m3p_fairseq.data.text_lines import write_lines
from m3p_fairseq.data.vocabulary import MASK_WORD as MASK_TOKEN
from preprocess.synthetic_lexicons import COLOURS, GRID_CELLS, LEXICONS, SHAPES, SIZES, SUPPORTED_LANGS  # noqa: F401

SPLITS = ("train", "valid", "test")
BACKGROUND_RGB = (200, 200, 200)
MIN_IMAGE_SIZE = 32

# Only the image can tell these apart, so the degraded captions hide them.
MASKED_SLOTS = frozenset({"colour", "shape"})
SCENES_SUFFIX = ".scenes.jsonl"
# an object's class is its (shape, colour): shape-major, as object_class numbers them
NUM_OBJECT_CLASSES = len(SHAPES) * len(COLOURS)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    cell: str

    def __post_init__(self):
        for field, allowed in (
            ("colour", COLOURS), ("shape", SHAPES), ("size", SIZES), ("cell", GRID_CELLS)
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(allowed)}")


def object_class(obj: SceneObject) -> int:
    return SHAPES.index(obj.shape) * len(COLOURS) + tuple(COLOURS).index(obj.colour)


def object_box(obj: SceneObject) -> tuple[float, float, float, float]:
    """The object's bounding box (x1, y1, x2, y2) as fractions of the image side (render_image's)."""
    row, column = divmod(GRID_CELLS.index(obj.cell), 3)
    cx, cy, half = (column + 0.5) / 3, (row + 0.5) / 3, SIZES[obj.size] / 2
    return (cx - half, cy - half, cx + half, cy + half)


def scene_to_json(objects: Sequence[SceneObject]) -> str:
    return json.dumps([asdict(obj) for obj in objects])


def scene_from_json(line: str) -> list[SceneObject]:
    return [SceneObject(**fields) for fields in json.loads(line)]


def _check_scene(objects: Sequence[SceneObject]) -> None:
    if not objects:
        raise ValueError("a scene needs at least one object")
    cells = [obj.cell for obj in objects]
    if len(set(cells)) != len(cells):
        raise ValueError(f"objects of one scene must use different grid cells, got {cells}")


def _agree(form: str | dict[str, str], gender: str | None) -> str:
    return form if isinstance(form, str) else form[gender]


def _object_phrase(obj: SceneObject, lexicon: dict, masked: bool) -> str:
    noun, gender = lexicon["shapes"][obj.shape]

    def word(slot: str) -> str:
        if masked and slot in MASKED_SLOTS:
            return MASK_TOKEN
        if slot == "shape":
            return noun
        if slot == "position":
            return lexicon["positions"][obj.cell]
        if slot == "article":
            return _agree(lexicon["article"], gender)
        if slot == "size":
            return _agree(lexicon["sizes"][obj.size], gender)
        return _agree(lexicon["colours"][obj.colour], gender)

    return " ".join(word(slot) for slot in lexicon["word_order"])


def render_caption(objects: Sequence[SceneObject], lang: str, masked: bool = False) -> str:
    """Caption of a scene in `lang`, objects in reading order; `masked` hides colours and shapes."""
    if lang not in LEXICONS:
        raise ValueError(f"unsupported language {lang!r}; supported: {', '.join(SUPPORTED_LANGS)}")
    _check_scene(objects)
    lexicon = LEXICONS[lang]
    in_reading_order = sorted(objects, key=lambda obj: GRID_CELLS.index(obj.cell))
    phrases = [_object_phrase(obj, lexicon, masked) for obj in in_reading_order]
    caption = f" {lexicon['conjunction']} ".join(phrases)
    return caption[0].upper() + caption[1:] + "."


def cell_centre(cell: str, image_size: int) -> tuple[float, float]:
    """(x, y) pixel coordinates of the centre of a grid cell."""
    row, column = divmod(GRID_CELLS.index(cell), 3)
    cell_side = image_size / 3
    return ((column + 0.5) * cell_side, (row + 0.5) * cell_side)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape with half-extent r centred on (cx, cy)."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        w = r / 3  # half width of an arm
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5  # five points, first one up
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for a, rad in zip(angles, radii)]
    raise ValueError(f"no polygon for shape {shape!r}")


def render_image(objects: Sequence[SceneObject], image_size: int) -> Image.Image:
    """Draw a scene: each object filled with its colour, centred on its grid cell."""
    _check_scene(objects)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        cx, cy = cell_centre(obj.cell, image_size)
        r = SIZES[obj.size] * image_size / 2
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_shape_polygon(obj.shape, cx, cy, r), fill=fill)
    return image


def sample_scene(rng: np.random.Generator) -> list[SceneObject]:
    """1 or 2 random objects in distinct cells, in reading order."""
    num_objects = int(rng.integers(1, 3))
    cells = sorted(int(i) for i in rng.choice(len(GRID_CELLS), size=num_objects, replace=False))
    colour_names, size_names = tuple(COLOURS), tuple(SIZES)
    return [
        SceneObject(
            colour=colour_names[int(rng.integers(len(colour_names)))],
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            size=size_names[int(rng.integers(len(size_names)))],
            cell=GRID_CELLS[cell],
        )
        for cell in cells
    ]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _validate_arguments(counts: dict[str, int], langs: Sequence[str], image_size: int, seed: int) -> None:
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ValueError(f"--num-{split} must be a positive integer, got {count!r}")
    if not langs:
        raise ValueError(f"no languages given; supported: {', '.join(SUPPORTED_LANGS)}")
    unknown = [lang for lang in langs if lang not in LEXICONS]
    if unknown:
        raise ValueError(
            f"unsupported language(s) {', '.join(unknown)}; supported: {', '.join(SUPPORTED_LANGS)}"
        )
    if len(set(langs)) != len(langs):
        raise ValueError(f"duplicate language in {','.join(langs)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image-size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")


def make_corpus(
    output_dir: str | os.PathLike,
    num_train: int = 3000,
    num_valid: int = 200,
    num_test: int = 200,
    langs: Sequence[str] = SUPPORTED_LANGS,
    image_size: int = 96,
    seed: int = 1,
) -> dict[str, int]:
    """Write the corpus to `output_dir` and return the number of lines per split."""
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    langs = list(langs)
    _validate_arguments(counts, langs, image_size, seed)
    output_dir = Path(output_dir)
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    for split_index, split in enumerate(SPLITS):
        # One generator per split, so changing one split's size leaves the others intact.
        rng = np.random.default_rng([seed, split_index])
        image_ids, scenes = [], []
        captions, degraded = {lang: [] for lang in langs}, {lang: [] for lang in langs}
        images_written = 0
        for index in range(counts[split]):
            scene = sample_scene(rng)
            image_id = f"{split}_{index:06d}.png"
            image_ids.append(image_id)
            scenes.append(scene_to_json(scene))
            images_written += write_if_changed(image_dir / image_id, _png_bytes(render_image(scene, image_size)))
            for lang in langs:
                captions[lang].append(render_caption(scene, lang))
                degraded[lang].append(render_caption(scene, lang, masked=True))

        write_lines(DataDirectory(output_dir).image_ids(split), image_ids)
        write_lines(output_dir / f"{split}{SCENES_SUFFIX}", scenes)
        for lang in langs:
            write_lines(output_dir / f"{split}.{lang}", captions[lang])
            write_lines(output_dir / f"{split}.degraded.{lang}", degraded[lang])
        print(
            f"{split}: {counts[split]} examples, langs {','.join(langs)}, "
            f"{images_written} images written, {counts[split] - images_written} already up to date "
            f"-> {output_dir}"
        )
    return counts


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.make_synthetic_corpus", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output-dir", required=True, help="directory to write the corpus to")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-valid", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument(
        "--langs", default=",".join(SUPPORTED_LANGS),
        help=f"comma-separated languages, from {','.join(SUPPORTED_LANGS)}",
    )
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    langs = split_languages(args.langs, "--langs")
    try:
        return make_corpus(
            args.output_dir, args.num_train, args.num_valid, args.num_test,
            langs, args.image_size, args.seed,
        )
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
