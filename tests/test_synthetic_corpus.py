import os
import re

import numpy as np
import pytest
from PIL import Image

from preprocess.make_synthetic_corpus import (
    BACKGROUND_RGB,
    COLOURS,
    GRID_CELLS,
    LEXICONS,
    MASK_TOKEN,
    SHAPES,
    SPLITS,
    SUPPORTED_LANGS,
    SceneObject,
    cell_centre,
    main,
    make_corpus,
    render_caption,
    render_image,
    sample_scene,
)

COUNTS = {"train": 20, "valid": 5, "test": 5}
IMAGE_SIZE = 64


def build(output_dir, seed=1, langs=SUPPORTED_LANGS):
    return make_corpus(
        output_dir, COUNTS["train"], COUNTS["valid"], COUNTS["test"], langs, IMAGE_SIZE, seed
    )


def read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def split_files(output_dir, split):
    names = [f"{split}.image_ids"]
    for lang in SUPPORTED_LANGS:
        names += [f"{split}.{lang}", f"{split}.degraded.{lang}"]
    return [output_dir / name for name in names]


def parse_english_caption(caption):
    """Invert the English lexicon: caption -> list of SceneObject."""
    english = LEXICONS["en"]
    colour_by_word = {word: name for name, word in english["colours"].items()}
    shape_by_word = {noun: name for name, (noun, _) in english["shapes"].items()}
    cell_by_phrase = {phrase: cell for cell, phrase in english["positions"].items()}
    pattern = re.compile(
        r"a (small|large) (\w+) (\w+) (" + "|".join(map(re.escape, cell_by_phrase)) + r")$"
    )
    sentence = caption[0].lower() + caption[1:].removesuffix(".")
    objects = []
    for phrase in sentence.split(" and "):
        size, colour, shape, position = pattern.match(phrase).groups()
        objects.append(
            SceneObject(colour_by_word[colour], shape_by_word[shape], size, cell_by_phrase[position])
        )
    return objects


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("corpus")
    build(output_dir)
    return output_dir


def test_returns_line_counts_and_aligned_files(corpus, tmp_path):
    assert build(tmp_path) == COUNTS
    for split in SPLITS:
        for path in split_files(corpus, split):
            assert len(read_lines(path)) == COUNTS[split], path.name
        for image_id in read_lines(corpus / f"{split}.image_ids"):
            assert image_id.startswith(f"{split}_") and image_id.endswith(".png")
            with Image.open(corpus / "images" / image_id) as image:
                assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
    all_ids = [i for split in SPLITS for i in read_lines(corpus / f"{split}.image_ids")]
    assert len(set(all_ids)) == len(all_ids)


def test_no_temporary_files_left_behind(corpus):
    leftovers = [p.name for p in corpus.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_same_seed_is_byte_identical_and_other_seed_differs(corpus, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    build(again)
    build(other, seed=2)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (corpus / relative).read_bytes() == (again / relative).read_bytes(), relative
    assert read_lines(corpus / "train.en") != read_lines(other / "train.en")


def test_rerun_keeps_intact_images_and_repairs_broken_ones(tmp_path):
    build(tmp_path)
    images = sorted((tmp_path / "images").iterdir())
    expected_broken_bytes = images[1].read_bytes()
    old_time = 1_000_000_000
    for image in images:
        os.utime(image, (old_time, old_time))
    images[0].unlink()
    images[1].write_bytes(b"not a png")

    build(tmp_path)

    assert images[0].exists()
    assert images[1].read_bytes() == expected_broken_bytes
    assert all(image.stat().st_mtime == old_time for image in images[2:])


@pytest.mark.parametrize("lang", SUPPORTED_LANGS)
def test_degraded_caption_masks_exactly_colour_and_shape_words(corpus, lang):
    clean_lines = read_lines(corpus / f"train.{lang}")
    degraded_lines = read_lines(corpus / f"train.degraded.{lang}")
    english_lines = read_lines(corpus / "train.en")
    for clean, degraded, english in zip(clean_lines, degraded_lines, english_lines):
        num_objects = len(parse_english_caption(english))
        clean_words, degraded_words = clean.split(), degraded.split()
        assert len(clean_words) == len(degraded_words)
        masked_positions = [i for i, word in enumerate(degraded_words) if word == MASK_TOKEN]
        assert len(masked_positions) == 2 * num_objects
        for i, (clean_word, degraded_word) in enumerate(zip(clean_words, degraded_words)):
            if i not in masked_positions:
                assert clean_word == degraded_word


def test_english_masks_sit_on_colour_and_shape_words():
    scene = [SceneObject("red", "circle", "small", "top left"), SceneObject("blue", "star", "large", "centre")]
    assert render_caption(scene, "en") == "A small red circle at the top left and a large blue star in the centre."
    assert render_caption(scene, "en", masked=True) == (
        "A small [MASK] [MASK] at the top left and a large [MASK] [MASK] in the centre."
    )


def test_caption_examples_from_every_language():
    scene = [SceneObject("red", "circle", "small", "top left"), SceneObject("blue", "star", "large", "centre")]
    assert render_caption(scene, "fr") == "Un petit cercle rouge en haut à gauche et une grande étoile bleue au centre."
    assert render_caption(scene, "cs") == "Malý červený kruh vlevo nahoře a velká modrá hvězda uprostřed."
    triangle_scene = [SceneObject("red", "circle", "small", "top left"), SceneObject("blue", "triangle", "large", "centre")]
    assert render_caption(triangle_scene, "de") == (
        "Ein kleiner roter Kreis oben links und ein großes blaues Dreieck in der Mitte."
    )


def test_objects_are_captioned_in_reading_order():
    scene = [SceneObject("blue", "star", "large", "bottom right"), SceneObject("red", "circle", "small", "top")]
    assert render_caption(scene, "en") == "A small red circle at the top and a large blue star at the bottom right."


@pytest.mark.parametrize(
    "lang, obj, expected",
    [
        ("de", SceneObject("red", "diamond", "small", "top"), "Eine kleine rote Raute oben."),
        ("de", SceneObject("orange", "square", "large", "top"), "Ein großes orangefarbenes Quadrat oben."),
        ("de", SceneObject("purple", "star", "small", "top"), "Ein kleiner violetter Stern oben."),
        ("de", SceneObject("white", "cross", "large", "left"), "Ein großes weißes Kreuz links."),
        ("fr", SceneObject("blue", "star", "small", "top"), "Une petite étoile bleue en haut."),
        ("fr", SceneObject("white", "cross", "large", "right"), "Une grande croix blanche à droite."),
        ("fr", SceneObject("purple", "diamond", "small", "bottom"), "Un petit losange violet en bas."),
        ("fr", SceneObject("red", "star", "small", "bottom"), "Une petite étoile rouge en bas."),
        ("cs", SceneObject("blue", "star", "large", "top"), "Velká modrá hvězda nahoře."),
        ("cs", SceneObject("white", "cross", "small", "bottom right"), "Malý bílý kříž vpravo dole."),
    ],
)
def test_grammatical_agreement(lang, obj, expected):
    assert render_caption([obj], lang) == expected


def test_every_caption_is_capitalised_and_ends_with_a_period(corpus):
    for lang in SUPPORTED_LANGS:
        for line in read_lines(corpus / f"train.{lang}"):
            assert line[0].isupper() and line.endswith(".") and not line.endswith(".."), line


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("colour", COLOURS)
def test_rendered_object_has_its_colour_at_its_cell_centre(shape, colour):
    for size in ("small", "large"):
        cell = "top right"
        image = render_image([SceneObject(colour, shape, size, cell)], IMAGE_SIZE)
        x, y = cell_centre(cell, IMAGE_SIZE)
        assert image.getpixel((int(x), int(y))) == COLOURS[colour]


def test_corpus_images_match_their_english_captions(corpus):
    for split in SPLITS:
        ids = read_lines(corpus / f"{split}.image_ids")
        captions = read_lines(corpus / f"{split}.en")
        for image_id, caption in zip(ids, captions):
            objects = parse_english_caption(caption)
            with Image.open(corpus / "images" / image_id) as image:
                pixels = image.convert("RGB")
                occupied = {obj.cell: obj for obj in objects}
                for cell in GRID_CELLS:
                    x, y = cell_centre(cell, IMAGE_SIZE)
                    expected = COLOURS[occupied[cell].colour] if cell in occupied else BACKGROUND_RGB
                    assert pixels.getpixel((int(x), int(y))) == expected, (image_id, caption, cell)


def test_large_objects_in_neighbouring_cells_do_not_touch_each_others_cells():
    image = np.asarray(
        render_image(
            [SceneObject("red", "square", "large", "top left"), SceneObject("blue", "square", "large", "top")],
            IMAGE_SIZE,
        )
    )
    boundary = IMAGE_SIZE // 3
    assert not (image[:, :boundary] == COLOURS["blue"]).all(axis=-1).any()
    assert not (image[:, boundary + 1:] == COLOURS["red"]).all(axis=-1).any()


def test_sampled_scenes_use_distinct_cells_in_reading_order():
    rng = np.random.default_rng(0)
    for _ in range(200):
        cells = [GRID_CELLS.index(obj.cell) for obj in sample_scene(rng)]
        assert 1 <= len(cells) <= 2 and cells == sorted(set(cells))


def test_unknown_language_error_names_supported_ones(tmp_path):
    with pytest.raises(ValueError, match="xx") as error:
        build(tmp_path, langs=["en", "xx"])
    for lang in SUPPORTED_LANGS:
        assert lang in str(error.value)
    with pytest.raises(ValueError, match="supported"):
        render_caption([SceneObject("red", "circle", "small", "top")], "xx")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_train": 0}, "num-train"),
        ({"num_valid": -3}, "num-valid"),
        ({"num_test": 1.5}, "num-test"),
        ({"image_size": 8}, "image-size"),
        ({"seed": -1}, "seed"),
        ({"langs": []}, "no languages"),
        ({"langs": ["en", "en"]}, "duplicate"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    arguments = dict(
        output_dir=tmp_path, num_train=2, num_valid=2, num_test=2, langs=["en"], image_size=IMAGE_SIZE, seed=1
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        make_corpus(**arguments)
    assert not (tmp_path / "images").exists()


def test_bad_scene_objects_are_rejected():
    with pytest.raises(ValueError, match="colour"):
        SceneObject("pink", "circle", "small", "top")
    with pytest.raises(ValueError, match="different grid cells"):
        render_caption([SceneObject("red", "circle", "small", "top")] * 2, "en")
    with pytest.raises(ValueError, match="at least one"):
        render_image([], IMAGE_SIZE)


def test_cli_writes_corpus_and_reports_each_split(tmp_path, capsys):
    output_dir = tmp_path / "cli"
    counts = main(
        ["--output-dir", str(output_dir), "--num-train", "3", "--num-valid", "2", "--num-test", "1",
         "--langs", "en, fr", "--image-size", "48", "--seed", "7"]
    )
    assert counts == {"train": 3, "valid": 2, "test": 1}
    summary = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in summary] == list(SPLITS)
    assert sorted(p.name for p in output_dir.glob("test.*")) == [
        "test.degraded.en", "test.degraded.fr", "test.en", "test.fr", "test.image_ids", "test.scenes.jsonl"
    ]


def test_cli_rejects_unknown_language_with_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--output-dir", str(tmp_path), "--langs", "en,jp"])
    assert exit_info.value.code == 2
    assert f"supported: {', '.join(SUPPORTED_LANGS)}" in capsys.readouterr().err
