"""m3p-evaluate's (scripts/evaluate.py's) table and raw references."""


import pytest

from m3p_fairseq.evaluation.cli import raw_references
from m3p_fairseq.evaluation.tables import directions_table


def test_table_marks_directions_a_model_was_not_trained_on():
    results = {
        "multi": {"test": {"en-de": {"bleu": 40.0}, "de-en": {"bleu": 44.0}}},
        "bilingual": {"test": {"de-en": {"bleu": 41.5}}},
    }
    lines = directions_table(results).splitlines()
    assert lines[0] == "| direction | multi test | bilingual test |"
    assert lines[2] == "| en-de | 40.0 | - |"
    assert lines[3] == "| de-en | 44.0 | 41.5 |"
    assert lines[4] == "| average | 42.0 | 41.5 |"
    assert lines[5] == "| directions averaged | 2 | 1 |"


def test_the_average_covers_every_one_of_many_directions():
    bleu = {f"l{i:03d}-en": {"bleu": float(i % 7)} for i in range(101)}
    lines = directions_table({"m": {"test": bleu}}).splitlines()
    assert len(lines) == 2 + 101 + 2
    assert lines[-2] == f"| average | {sum(i % 7 for i in range(101)) / 101:.1f} |"
    assert lines[-1] == "| directions averaged | 101 |"


def test_raw_references_follow_the_binarize_layout(tmp_path):
    (tmp_path / "test.de").write_text("Ein Hund.\nZwei Katzen.\n", encoding="utf-8")
    assert raw_references(tmp_path, "test", "en", "de", 2) == ["Ein Hund.", "Zwei Katzen."]
    (tmp_path / "test.en-de.de").write_text("Ein Hund.\n", encoding="utf-8")  # a direction's own file wins
    with pytest.raises(ValueError, match=r"test.en-de.de has 1 lines but split 'test' has 2 sentences"):
        raw_references(tmp_path, "test", "en", "de", 2)
