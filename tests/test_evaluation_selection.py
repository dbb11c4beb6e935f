"""Which directions an evaluation covers: all of the model's, or those named, each of which the
model must translate."""

from types import SimpleNamespace

import pytest

from m3p_fairseq.evaluation.selection import UnknownDirectionError, select_directions

TASK = SimpleNamespace(lang_pairs=[("en", "de"), ("de", "en"), ("en", "fr")])


def test_all_directions_by_default_in_the_models_order():
    assert select_directions(TASK, None, "m") == [("en", "de"), ("de", "en"), ("en", "fr")]


def test_named_directions_keep_the_models_order():
    assert select_directions(TASK, "en-fr,en-de", "m") == [("en", "de"), ("en", "fr")]


def test_a_direction_the_model_lacks_is_named_with_the_models_directions():
    with pytest.raises(UnknownDirectionError) as error:
        select_directions(TASK, "en-de,fr-en,de-fr", "checkpoint m3p=runs/m3p.pt")
    assert str(error.value) == ("--lang-pairs: checkpoint m3p=runs/m3p.pt was not trained on fr-en,de-fr; "
                                "its directions are en-de,de-en,en-fr")


def test_a_malformed_list_is_refused():
    with pytest.raises(ValueError, match="'en' is not a direction like en-de"):
        select_directions(TASK, "en", "m")
