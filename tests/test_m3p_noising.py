"""The M3P pre-training noising functions (m3p_fairseq/data/m3p_noising.py) against hand-made
examples and rates counted over many draws."""

import numpy as np
import pytest
import torch

from m3p_fairseq.data.m3p_noising import (
    denoising_corruption,
    drop_words,
    mask_regions,
    mask_tokens,
    replace_spans,
    sample_spans,
    shuffle_by_index_noise,
    vlm_pairs,
    zero_region_spans,
)

MASK, PAD = 3, 1
RANDOM_POOL = list(range(100, 110))  # disjoint from the sentence's tokens 10..209


def test_mask_tokens_rates_over_many_draws():
    rng = np.random.default_rng(0)
    tokens = torch.arange(10, 210)
    selected = replaced = randomised = kept = 0
    for _ in range(400):
        noised, target = mask_tokens(tokens, rng, MASK, RANDOM_POOL, pad_index=PAD)
        chosen = target != PAD
        assert torch.equal(target[chosen], tokens[chosen])  # targets are the original tokens
        assert torch.equal(noised[~chosen], tokens[~chosen])  # nothing else changes
        selected += int(chosen.sum())
        replaced += int((noised[chosen] == MASK).sum())
        randomised += int(((noised[chosen] >= 100) & (noised[chosen] < 110) & (noised[chosen] != tokens[chosen])).sum())
        kept += int((noised[chosen] == tokens[chosen]).sum())
    total = 400 * 200
    assert selected / total == pytest.approx(0.15, abs=0.005)
    assert replaced / selected == pytest.approx(0.8, abs=0.01)
    # a random draw can hit the original token (tokens 100..109 are in the sentence): counted as kept
    assert randomised / selected == pytest.approx(0.1, abs=0.01)
    assert kept / selected == pytest.approx(0.1, abs=0.01)


def test_mask_tokens_never_touches_unmaskable_and_always_has_a_target():
    rng = np.random.default_rng(1)
    tokens = torch.tensor([0, 20, 21, 22, 2])  # <s> w w w </s>
    maskable = torch.tensor([False, True, True, True, False])
    for _ in range(200):
        noised, target = mask_tokens(tokens, rng, MASK, RANDOM_POOL, maskable=maskable, pad_index=PAD)
        assert noised[0] == 0 and noised[4] == 2
        assert target[0] == PAD and target[4] == PAD
        assert (target != PAD).sum() >= 1


def test_mask_regions_rates_and_targets_are_the_unmasked_features():
    rng = np.random.default_rng(2)
    features = torch.arange(1, 1 + 100 * 4, dtype=torch.float).view(100, 4)  # no zero row
    masked_total = zeroed_total = 0
    for _ in range(300):
        noised, masked, target = mask_regions(features, rng)
        assert torch.equal(target, features)
        assert torch.equal(noised[~masked], features[~masked])
        zero_rows = (noised == 0).all(dim=1)
        assert not zero_rows[~masked].any()
        # a masked region is either all zeros or exactly its original feature
        assert all(zero_rows[i] or torch.equal(noised[i], features[i]) for i in torch.nonzero(masked).flatten())
        masked_total += int(masked.sum())
        zeroed_total += int(zero_rows.sum())
    assert masked_total / (300 * 100) == pytest.approx(0.15, abs=0.006)
    assert zeroed_total / masked_total == pytest.approx(0.9, abs=0.015)
    features.add_(0)  # the input was not modified
    assert features[0, 0] == 1


def test_shuffle_moves_no_token_more_than_three_places_and_does_shuffle():
    rng = np.random.default_rng(3)
    tokens = torch.arange(50)
    moved = 0
    for _ in range(200):
        shuffled = shuffle_by_index_noise(tokens, rng, 3.0)
        assert sorted(shuffled.tolist()) == tokens.tolist()
        displacement = (torch.arange(50) - shuffled).abs()  # new position - old position
        assert displacement.max() <= 3
        moved += int((displacement > 0).sum())
    assert moved > 0
    assert torch.equal(shuffle_by_index_noise(tokens, rng, 0.0), tokens)


def test_drop_words_rate_keeps_order_and_one_word():
    rng = np.random.default_rng(4)
    tokens = torch.arange(100)
    kept = 0
    for _ in range(200):
        out = drop_words(tokens, rng, 0.3)
        assert torch.equal(out, torch.sort(out).values)  # order kept
        kept += out.numel()
    assert kept / (200 * 100) == pytest.approx(0.7, abs=0.01)
    assert drop_words(torch.tensor([7, 8]), rng, 1.0).numel() == 1


def test_replace_spans_hand_made():
    tokens = torch.tensor([10, 11, 12, 13, 14, 15])
    # span (1, 2) -> one mask; zero-length span at 4 inserts one mask before token 14; (5, 1) -> mask
    assert replace_spans(tokens, [(1, 2), (4, 0), (5, 1)], MASK).tolist() == [10, MASK, 13, MASK, 14, MASK]
    assert replace_spans(tokens, [(0, 6)], MASK).tolist() == [MASK]
    assert replace_spans(tokens, [(6, 0)], MASK).tolist() == [10, 11, 12, 13, 14, 15, MASK]
    with pytest.raises(ValueError, match="overlaps"):
        replace_spans(tokens, [(1, 3), (2, 1)], MASK)


def test_sample_spans_cover_the_ratio_without_overlap():
    rng = np.random.default_rng(5)
    zero_length = 0
    for _ in range(500):
        spans = sample_spans(40, rng, 0.3)
        assert sum(length for _, length in spans) == 12  # round(0.3 * 40)
        ends = [start + length for start, length in spans]
        assert all(e <= s for e, (s, _) in zip(ends, spans[1:]))  # sorted, non-overlapping
        assert ends[-1] <= 40
        zero_length += sum(length == 0 for _, length in spans)
    assert zero_length > 0  # Poisson(3) gives 0 about 5 % of the time: insertions happen
    assert sample_spans(40, rng, 0.0) == []


def test_span_lengths_are_poisson_3():
    # one long budget: thousands of draws, only the last one cut to fit
    lengths = [length for _, length in sample_spans(30000, np.random.default_rng(9), 1.0)][:-1]
    assert np.mean(lengths) == pytest.approx(3.0, abs=0.1)
    assert np.var(lengths) == pytest.approx(3.0, abs=0.2)  # Poisson: variance = mean
    assert np.mean(np.asarray(lengths) == 0) == pytest.approx(np.exp(-3), abs=0.01)


def test_denoising_corruption_only_loses_words_and_adds_masks():
    rng = np.random.default_rng(6)
    tokens = torch.arange(10, 40)
    for _ in range(100):
        out = denoising_corruption(tokens, rng, MASK)
        words = out[out != MASK]
        assert len(set(words.tolist())) == words.numel() and set(words.tolist()) <= set(tokens.tolist())
        assert (out == MASK).sum() >= 1


def test_zero_region_spans_are_contiguous_runs_of_zeros():
    rng = np.random.default_rng(7)
    features = torch.ones(20, 3)
    total = 0
    for _ in range(100):
        noised, zeroed = zero_region_spans(features, rng, 0.3)
        assert int(zeroed.sum()) == 6  # round(0.3 * 20), spans non-overlapping
        assert torch.equal((noised == 0).all(dim=1), zeroed)
        total += int(zeroed.sum())
    assert torch.equal(features, torch.ones(20, 3))


def test_vlm_pairs_labels_say_whether_image_and_text_match():
    rng = np.random.default_rng(8)
    image_keys = ["a", "b", "a", "c", "d", "e"]  # examples 0 and 2 are two captions of image a
    negatives = image_swaps = 0
    for _ in range(300):
        image_index, text_index, labels = vlm_pairs(image_keys, rng)
        for b in range(6):
            assert image_index[b] == b or text_index[b] == b  # one side is swapped at most
            matched = image_keys[image_index[b]] == image_keys[text_index[b]]
            assert labels[b] == int(matched)
        negatives += int((labels == 0).sum())
        image_swaps += int((image_index != np.arange(6)).sum())
    assert negatives / 1800 == pytest.approx(0.5, abs=0.04)
    assert image_swaps / negatives == pytest.approx(0.5, abs=0.05)
    image_index, text_index, labels = vlm_pairs(["x", "x"], rng, negative_prob=1.0)
    assert labels.tolist() == [1, 1]  # no image differs: no negative possible
