import numpy as np
import pytest
import torch
from fairseq.data import Dictionary, LanguagePairDataset

from m3p_fairseq.data.temperature_sampling import (
    TemperatureSampledDataset,
    sampling_probabilities,
    temperature_at,
)


def test_temperature_one_is_proportional():
    np.testing.assert_allclose(sampling_probabilities([300, 100], 1.0), [0.75, 0.25])


def test_eq7_values():
    # q ∝ (n/N)^(1/τ): sizes 900 and 100, τ = 2 -> sqrt(0.9) : sqrt(0.1) = 3 : 1
    np.testing.assert_allclose(sampling_probabilities([900, 100], 2.0), [0.75, 0.25])


def test_high_temperature_flattens_towards_uniform():
    q = sampling_probabilities([10000, 100, 1], 1000.0)
    assert np.all(np.abs(q - 1 / 3) < 0.01)
    assert sampling_probabilities([10000, 100, 1], 5.0)[2] > sampling_probabilities([10000, 100, 1], 1.0)[2]


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="must be > 0"):
        sampling_probabilities([1, 2], bad)


def test_empty_corpora_rejected():
    with pytest.raises(ValueError, match="positive total"):
        sampling_probabilities([0, 0], 1.0)


def test_warmup_schedule():
    # τ_i = min(τ, τ0 + i/W (τ − τ0)) with τ0 = 1, τ = 5, W = 100
    assert temperature_at(0, 5.0, 1.0, 100) == 1.0
    assert temperature_at(50, 5.0, 1.0, 100) == 3.0
    assert temperature_at(100, 5.0, 1.0, 100) == 5.0
    assert temperature_at(10_000, 5.0, 1.0, 100) == 5.0
    assert temperature_at(0, 5.0, 1.0, 0) == 5.0  # no warm-up


def pair_dataset(num, length, dictionary):
    tokens = [torch.full((length,), dictionary.index("a"), dtype=torch.long) for _ in range(num)]
    sizes = np.full(num, length)
    return LanguagePairDataset(tokens, sizes, dictionary, tokens, sizes, dictionary)


def sampled(temperature_box, seed=1):
    dictionary = Dictionary()
    dictionary.add_symbol("a")
    return TemperatureSampledDataset(
        {"big": pair_dataset(900, 3, dictionary), "small": pair_dataset(100, 5, dictionary)},
        lambda: temperature_box[0], seed=seed,
    )


def counts_by_pair(dataset):
    indices = dataset.ordered_indices()
    return int((indices < 900).sum()), int((indices >= 900).sum())


def test_epoch_mix_follows_eq7_and_is_resampled():
    temperature = [1.0]
    dataset = sampled(temperature)
    dataset.set_epoch(1)
    assert counts_by_pair(dataset) == (900, 100)
    assert dataset.realised_mix == {"big": 900, "small": 100}

    temperature[0] = 2.0  # as if the warm-up advanced: 3:1 of an epoch of 1000
    dataset.set_epoch(2)
    assert counts_by_pair(dataset) == (750, 250)
    small = dataset.sampled_indices[dataset.sampled_indices >= 900]
    # up-sampled: every small example at least twice, none more than three times
    assert set(np.bincount(small - 900, minlength=100)) <= {2, 3}


def test_sampling_is_deterministic_per_epoch_and_differs_across_epochs():
    temperature = [2.0]
    first, second = sampled(temperature), sampled(temperature)
    first.set_epoch(3)
    second.set_epoch(3)
    np.testing.assert_array_equal(first.sampled_indices, second.sampled_indices)
    big_epoch3 = np.sort(first.sampled_indices[first.sampled_indices < 900])
    first.set_epoch(4)
    big_epoch4 = np.sort(first.sampled_indices[first.sampled_indices < 900])
    assert not np.array_equal(big_epoch3, big_epoch4)  # a different subsample of the big pair


def test_ordered_indices_sorted_by_length_and_cover_the_sample():
    dataset = sampled([2.0])
    dataset.set_epoch(1)
    np.random.seed(0)  # fairseq seeds numpy around ordered_indices()
    indices = dataset.ordered_indices()
    assert sorted(indices.tolist()) == sorted(dataset.sampled_indices.tolist())
    lengths = dataset.sizes[indices, 0]
    assert np.all(np.diff(lengths) >= 0)
    assert not dataset.can_reuse_epoch_itr_across_epochs
