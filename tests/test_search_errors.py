"""examples/quickstart/probes/search_errors.py: wrong hypotheses split into search and model errors."""

import pytest

from helpers import REPO, import_script

search_errors = import_script(REPO / "examples" / "quickstart" / "probes" / "search_errors.py")

BEAM = """S-0\t__de__ a red star
T-0\tein roter Stern
H-0\t-0.25\tein roter Stern
D-0\t-0.25\tein roter Stern
P-0\t-0.20 -0.30 -0.25
H-1\t-0.90\tein Stern
H-2\t-0.40\tein blauer Kreis
H-3\t-1.50\t
"""
REFERENCE = """H-0\t-0.25\tein roter Stern
H-1\t-0.35\tein roter Stern
H-2\t-0.60\tein roter Kreis
H-3\t-0.70\tein Kreis
"""


def test_a_wrong_hypothesis_is_a_search_error_when_the_model_scores_the_reference_higher():
    beam = search_errors.parse_hypotheses(BEAM.splitlines())
    reference = search_errors.parse_hypotheses(REFERENCE.splitlines())
    assert beam[3] == (-1.5, "")  # an empty hypothesis keeps its id
    # 0 is right; 1 (-0.35 > -0.90) and 3 (-0.70 > -1.50) are search errors; 2 (-0.60 < -0.40) a model error
    assert search_errors.classify(beam, reference) == {
        "sentences": 4, "wrong": 3, "search errors": 2, "model errors": 1}


def test_different_sentence_ids_are_an_error_not_a_silent_miscount():
    beam = search_errors.parse_hypotheses(BEAM.splitlines())
    reference = search_errors.parse_hypotheses(REFERENCE.splitlines()[:3])
    with pytest.raises(ValueError, match=r"different sentence ids \(4 and 3; e.g. \[3\]\)"):
        search_errors.classify(beam, reference)
