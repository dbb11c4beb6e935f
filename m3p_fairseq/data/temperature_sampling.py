"""Temperature-based sampling of language pairs (paper Eq. 7) with a temperature warm-up.

    q_m = (n_m / N)^(1/tau) / sum_i (n_i / N)^(1/tau)
    tau_i = min(tau, tau_0 + i / W * (tau - tau_0))      (i = updates so far, W = warm-up updates)

tau = 1 samples proportionally to corpus size; larger tau flattens the mix towards uniform,
which up-samples low-resource pairs.
"""

import logging
from typing import Callable, Dict, Sequence

import numpy as np
from fairseq.data import ConcatDataset, FairseqDataset

logger = logging.getLogger(__name__)


def sampling_probabilities(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """Eq. 7: probability of drawing from each corpus given its size."""
    if temperature <= 0:
        raise ValueError(f"sampling temperature must be > 0, got {temperature}")
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(sizes) == 0 or np.any(sizes < 0) or sizes.sum() == 0:
        raise ValueError(f"corpus sizes must be non-negative with a positive total, got {sizes.tolist()}")
    weights = (sizes / sizes.sum()) ** (1.0 / temperature)
    return weights / weights.sum()


def temperature_at(num_updates: int, temperature: float, temperature_init: float,
                   warmup_updates: int) -> float:
    """tau_i = min(tau, tau_0 + i/W (tau - tau_0)); no warm-up when W <= 0."""
    if warmup_updates <= 0:
        return temperature
    return min(temperature,
               temperature_init + num_updates / warmup_updates * (temperature - temperature_init))


class TemperatureSchedule:
    """The warm-up of Eq. 7's temperature, driven by the update count of the model being
    trained (fairseq's trainer sets it every step and after a resume); 0 updates before a model
    is attached."""

    def __init__(self, temperature: float, temperature_init: float = 1.0, warmup_updates: int = 0):
        self.temperature, self.temperature_init, self.warmup_updates = temperature, temperature_init, warmup_updates
        self.model = None

    def attach(self, model) -> None:
        self.model = model

    @property
    def num_updates(self) -> int:
        return getattr(self.model, "num_updates", 0)

    def __call__(self) -> float:
        return temperature_at(self.num_updates, self.temperature, self.temperature_init, self.warmup_updates)


class TemperatureSampledDataset(ConcatDataset):
    """Language-pair datasets concatenated, re-sampled every epoch with Eq. 7.

    An epoch holds as many examples as all pairs together; pair m contributes round(q_m * N) of
    them, drawn without replacement while it has examples left (whole passes, then a random
    subset), so small pairs are repeated and large ones subsampled.
    """

    def __init__(self, datasets: Dict[str, FairseqDataset], temperature_schedule: Callable[[], float],
                 seed: int = 1):
        self.names = list(datasets)
        super().__init__(list(datasets.values()))
        self.temperature_schedule = temperature_schedule
        self.seed = seed
        self.pair_sizes = np.array([len(d) for d in self.datasets])
        self._num_tokens = np.concatenate([
            np.maximum(d.src_sizes, d.tgt_sizes) if d.tgt_sizes is not None else d.src_sizes
            for d in self.datasets
        ])
        self.sampled_indices = np.arange(len(self))
        self.epoch = None

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return False  # a new mix every epoch

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        if epoch == self.epoch:
            return
        self.epoch = epoch
        temperature = self.temperature_schedule()
        probabilities = sampling_probabilities(self.pair_sizes, temperature)
        counts = np.round(probabilities * self.pair_sizes.sum()).astype(np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        chunks = []
        for pair, (size, count, offset) in enumerate(zip(self.pair_sizes, counts, self.cumulative_sizes)):
            start = offset - size
            passes, remainder = divmod(int(count), int(size)) if size else (0, 0)
            local = [rng.permutation(size) for _ in range(passes)] + [rng.permutation(size)[:remainder]]
            chunks.append(np.concatenate(local) + start)
        self.sampled_indices = np.concatenate(chunks)
        self.realised_mix = dict(zip(self.names, counts.tolist()))
        logger.info(
            "epoch %d: sampling temperature %.3f, pair mix %s", epoch, temperature,
            ", ".join(f"{name}={p:.3f} ({c})" for name, p, c in zip(self.names, probabilities, counts)),
        )

    def ordered_indices(self):
        """The sampled indices, shuffled, then sorted by target and source length (stable sorts,
        as LanguagePairDataset does; the caller seeds numpy for the shuffle)."""
        indices = self.sampled_indices[np.random.permutation(len(self.sampled_indices))]
        sizes = self.sizes
        indices = indices[np.argsort(sizes[indices, 1], kind="mergesort")]
        return indices[np.argsort(sizes[indices, 0], kind="mergesort")]

    def num_tokens_vec(self, indices):
        return self._num_tokens[indices]
