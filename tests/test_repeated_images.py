"""examples/multi30k/repeated_images.py: fairseq's batching of a multi-way epoch and the counts
of batches and pairs with a repeated image."""

import numpy as np

from helpers import REPO, import_script

import_script(REPO / "examples" / "multi30k" / "prepare.py")
measure = import_script(REPO / "examples" / "multi30k" / "repeated_images.py")


def test_shares_counted_by_hand():
    shares = measure.repeated_image_shares([np.array([0, 1, 0]), np.array([2, 3]), np.array([4, 4, 4, 5])])
    assert shares["batches"] == 3 and shares["pairs"] == 9
    assert shares["batches_with_repeat"] == 2 / 3
    assert shares["pairs_with_repeat"] == (2 + 3) / 9  # image 0 twice, image 4 three times


def test_epoch_batches_hold_every_example_once_within_the_token_budget():
    lengths = {"en": np.array([3, 8, 5, 2, 9, 4]), "de": np.array([4, 7, 5, 3, 10, 4])}
    batches = measure.epoch_batches(lengths, ["en-de", "de-en"], max_tokens=24, seed=1, batch_multiple=1)
    images = np.concatenate(batches)
    assert sorted(images.tolist()) == sorted(list(range(6)) * 2)  # each line once per direction
    # a batch costs its longest sentence (source + tag + </s>, or target + </s>) times its size;
    # either direction of line n costs at least max(en, de) + 1
    longest = {line: max(lengths["en"][line], lengths["de"][line]) + 1 for line in range(6)}
    for rows in batches:
        assert max(longest[r] for r in rows) * len(rows) <= 24
    # length-sorted: line 3 (4 and 5 tokens) and line 0 come first, line 4 (11 and 12) last
    assert set(batches[0].tolist()) <= {0, 3} and 4 in batches[-1]
