"""examples/quickstart/probes/clean_errors.py: kinds of error on clean sources, counted by hand."""

import pytest

from helpers import REPO, import_script

clean_errors = import_script(REPO / "examples" / "quickstart" / "probes" / "clean_errors.py")


def write_eval_dir(root, system, direction, pairs):
    (root / "hyp" / system).mkdir(parents=True, exist_ok=True)
    (root / "ref").mkdir(exist_ok=True)
    (root / "hyp" / system / f"test.{direction}.txt").write_text("".join(h + "\n" for h, _ in pairs))
    (root / "ref" / f"test.{direction}.txt").write_text("".join(r + "\n" for _, r in pairs))


def test_each_kind_of_error_is_counted_once_per_sentence(tmp_path, capsys):
    two_objects = "Ein kleines gelbes Dreieck unten und ein kleines gelbes Quadrat unten rechts."
    write_eval_dir(tmp_path, "m3p", "en-de", [
        (two_objects, two_objects),                                                   # right
        ("Ein kleines gelbes Dreieck unten.", two_objects),                           # object left out
        ("Ein kleines blaues Dreieck unten und ein kleines gelbes Kreuz unten rechts.", two_objects),  # colour, shape
        ("Ein kleines gelbes Dreieck unten links und ein kleines gelbes Quadrat unten rechts.", two_objects),  # position
        ("Ein kleines gelbes Dreieck unten und ein großes gelbes Quadrat unten rechts.", two_objects),  # size: other
    ])
    write_eval_dir(tmp_path, "text-only", "en-de", [(two_objects, two_objects)] * 5)
    counts = clean_errors.count_errors(tmp_path, "test")
    assert counts["m3p"]["en-de"] == {"sentences": 5, "wrong": 4, "object left out": 1, "colour": 1, "shape": 1,
                                      "position": 1, "other": 1}
    assert counts["text-only"]["en-de"]["wrong"] == 0
    write_eval_dir(tmp_path, "m3p", "de-en", [("A small red star.", "A small red star."),
                                               ("A small red star.", "A small blue star.")])  # colour
    clean_errors.main(["--eval-dir", str(tmp_path)])
    assert "| m3p | **all** | 5 / 7 | 1 | 2 | 1 | 1 | 1 |" in capsys.readouterr().out


def test_french_and_english_lexicons_name_their_own_words():
    assert clean_errors.error_kinds("A small black star at the top.", "A small white star at the top.", "en") == ["colour"]
    assert clean_errors.error_kinds("Une petite croix jaune en haut.", "Une petite croix jaune en haut à droite.",
                                    "fr") == ["position"]


def test_hypotheses_and_references_of_different_lengths_are_an_error(tmp_path):
    write_eval_dir(tmp_path, "m3p", "en-de", [("a", "a"), ("b", "b")])
    (tmp_path / "ref" / "test.en-de.txt").write_text("a\n")
    with pytest.raises(ValueError, match="test.en-de.txt: 2 hypotheses for 1 references"):
        clean_errors.count_errors(tmp_path, "test")
