"""The M3P multitask schedule (m3p_fairseq/data/m3p_pretraining_schedule.py): objective weights,
round robin, language sampling with alpha = 0.3, determinism per (seed, epoch)."""

import numpy as np
import pytest

from m3p_fairseq.data.m3p_pretraining_schedule import (
    PretrainingSchedule,
    language_probabilities,
    parse_objective_weights,
)


def test_parse_objective_weights():
    assert parse_objective_weights("xmlm:2, mmlm:0.5,ic") == {"xmlm": 2.0, "mmlm": 0.5, "ic": 1.0}
    with pytest.raises(ValueError, match="unknown objective 'mlm'"):
        parse_objective_weights("mlm:1")
    with pytest.raises(ValueError, match="names 'ic' twice"):
        parse_objective_weights("ic,ic:2")
    with pytest.raises(ValueError, match="weight of 'ic' is 0.0, expected > 0"):
        parse_objective_weights("ic:0")
    with pytest.raises(ValueError, match="weight of 'ic' is 'x'"):
        parse_objective_weights("ic:x")


def test_language_probabilities_alpha_0_3_by_hand():
    # shares 0.9 and 0.1: 0.9^0.3 = 0.968886, 0.1^0.3 = 0.501187 -> 0.659073, 0.340927
    assert language_probabilities([900, 100], 0.3) == pytest.approx([0.659073, 0.340927], abs=1e-6)
    assert language_probabilities([900, 100], 1.0) == pytest.approx([0.9, 0.1])


def test_round_robin_cycles_through_the_objectives():
    schedule = PretrainingSchedule({"xmlm": 1, "ic": 5, "vlm": 1}, "round_robin", [10], 10)
    assert schedule.objective_of(1, 7) == ["xmlm", "ic", "vlm", "xmlm", "ic", "vlm", "xmlm"]


def test_weighted_draw_follows_the_weights_and_is_deterministic():
    schedule = PretrainingSchedule({"xmlm": 3, "ic": 1}, "weighted", [10], 10, seed=4)
    drawn = schedule.objective_of(1, 20000)
    assert drawn.count("xmlm") / 20000 == pytest.approx(0.75, abs=0.02)
    assert drawn == schedule.objective_of(1, 20000)
    assert drawn != schedule.objective_of(2, 4000)


def test_text_batches_sample_languages_with_alpha_and_stay_in_their_corpus():
    schedule = PretrainingSchedule({"xmlm": 1}, "weighted", [900, 100], 0, language_alpha=0.3, seed=1)
    batches = schedule.training_batches(1, 200, 50)
    ids = np.concatenate([ids for _, ids in batches])
    assert all(objective == "xmlm" for objective, _ in batches)
    assert ids.min() >= 0 and ids.max() < 1000
    assert np.mean(ids >= 900) == pytest.approx(0.340927, abs=0.015)  # the small language, up-sampled
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, schedule.training_batches(1, 200, 50)))


def test_caption_batches_and_evaluation_batches():
    schedule = PretrainingSchedule({"xdae": 1, "mrm": 1}, "round_robin", [3, 2], 4)
    batches = schedule.training_batches(1, 4, 3)
    assert [o for o, _ in batches] == ["xdae", "mrm", "xdae", "mrm"]
    assert all(ids.max() < 4 for o, ids in batches if o == "mrm")
    evaluation = [(o, ids.tolist()) for o, ids in schedule.evaluation_batches(3)]
    assert evaluation == [("xdae", [0, 1, 2]), ("xdae", [3, 4]), ("mrm", [0, 1, 2]), ("mrm", [3])]


def test_refuses_objectives_without_their_data():
    with pytest.raises(ValueError, match=r"objectives \['ic'\] need image-caption pairs"):
        PretrainingSchedule({"xmlm": 1, "ic": 1}, "weighted", [5], 0)
    with pytest.raises(ValueError, match="need text"):
        PretrainingSchedule({"xdae": 1}, "weighted", [0], 5)
    with pytest.raises(ValueError, match="expected weighted or round_robin"):
        PretrainingSchedule({"xdae": 1}, "shuffled", [3], 5)
