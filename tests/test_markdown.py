"""m3p_fairseq.markdown: the one Markdown table renderer (evaluation tables, benchmark report)."""

import pytest

from m3p_fairseq.markdown import markdown_table


def test_header_alignment_row_and_cells():
    text = markdown_table(["system", "en-de", "average"], [["a", "1.0", "2.0"], ["b", 3, None]])
    assert text.splitlines() == ["| system | en-de | average |", "|---|---:|---:|",
                                 "| a | 1.0 | 2.0 |", "| b | 3 | None |"]


def test_alignment_letters_and_the_default_for_uncovered_columns():
    assert markdown_table(["a", "b", "c", "d"], [], align="llr").splitlines()[1] == "|---|---|---:|---:|"
    assert markdown_table(["a", "b"], [], align="ll").splitlines()[1] == "|---|---|"


def test_a_row_of_the_wrong_width_or_a_bad_alignment_is_an_error():
    with pytest.raises(ValueError, match=r"row 1 has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["x", "y"], ["z"]])
    with pytest.raises(ValueError, match="align 'lc' must give l or r for each of the 2 columns"):
        markdown_table(["a", "b"], [], align="lc")
    with pytest.raises(ValueError, match="align 'lll'"):
        markdown_table(["a", "b"], [], align="lll")
