"""The multitask schedule of M3P pre-training: which objective each update trains, and which
examples its batch holds (paper Sec. 3; languages sampled as in Sec. 3.1 xMLM, alpha = 0.3).

An epoch is a fixed list of batches, each of one objective, worked out from (seed, epoch) alone:
fairseq's epoch iterator checkpoints how many batches of the epoch were consumed, so a run
resumed from a checkpoint continues the very same schedule (``--task m3p_pretraining``
also records the schedule's settings in the checkpoint and refuses to resume under others).

Objectives (names used on the command line and in the logs):

====== =========== ==============================================================
xmlm   understand  masked LM on multilingual text
mmlm   understand  masked LM on a caption, given its image's regions
mrm    understand  masked region modelling, given the caption
vlm    understand  is this (image, caption) matched? (from the first token)
xdae   generate    multilingual denoising auto-encoding
ic     generate    image captioning from the regions
dic    generate    captioning from regions with zeroed n-gram spans
====== =========== ==============================================================
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .temperature_sampling import sampling_probabilities

OBJECTIVES = ("xmlm", "mmlm", "mrm", "vlm", "xdae", "ic", "dic")
UNDERSTANDING = ("xmlm", "mmlm", "mrm", "vlm")
GENERATION = ("xdae", "ic", "dic")
TEXT_OBJECTIVES = ("xmlm", "xdae")  # read the multilingual text corpus; the others image-caption pairs
WEIGHTED, ROUND_ROBIN = "weighted", "round_robin"


def parse_objective_weights(text: str) -> Dict[str, float]:
    """``"xmlm:2,mmlm:1,ic"`` -> {"xmlm": 2.0, "mmlm": 1.0, "ic": 1.0} (weight 1 when omitted),
    in the order given; a clear error for an unknown name, a repeat or a weight <= 0."""
    weights: Dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition(":")
        name = name.strip()
        if name not in OBJECTIVES:
            raise ValueError(f"--objectives: unknown objective {name!r} (expected some of {', '.join(OBJECTIVES)})")
        if name in weights:
            raise ValueError(f"--objectives names {name!r} twice: {text}")
        try:
            weight = float(value) if value.strip() else 1.0
        except ValueError:
            raise ValueError(f"--objectives: weight of {name!r} is {value!r}, expected a number") from None
        if weight <= 0:
            raise ValueError(f"--objectives: weight of {name!r} is {weight}, expected > 0 (leave it out instead)")
        weights[name] = weight
    if not weights:
        raise ValueError("--objectives names no objective")
    return weights


def language_probabilities(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """lambda_l = p_l^alpha / sum_k p_k^alpha, p_l the share of language l in the corpus (Sec. 3.1);
    Eq. 7's temperature sampling with tau = 1/alpha."""
    if not 0 < alpha:
        raise ValueError(f"--language-alpha must be > 0, got {alpha}")
    return sampling_probabilities(sizes, 1.0 / alpha)


class PretrainingSchedule:
    """Batches of indices into the corpora of each objective.

    ``text_sizes``: sentences per language of the text corpus (concatenated in that order);
    ``caption_count``: image-caption pairs. A batch is (objective, [example ids]); ids of text
    objectives index the concatenated text corpus, the others the caption corpus."""

    def __init__(self, weights: Dict[str, float], mode: str, text_sizes: Sequence[int], caption_count: int,
                 language_alpha: float = 0.3, seed: int = 1):
        mode = str(mode)  # a command-line choice arrives as fairseq's enum, which checkpoints cannot pickle
        if mode not in (WEIGHTED, ROUND_ROBIN):
            raise ValueError(f"--objective-schedule {mode!r}: expected {WEIGHTED} or {ROUND_ROBIN}")
        self.objectives = list(weights)
        self.probabilities = np.array([weights[o] for o in self.objectives], dtype=np.float64)
        self.probabilities /= self.probabilities.sum()
        self.mode, self.seed, self.language_alpha = mode, seed, language_alpha
        self.text_sizes = np.asarray(text_sizes, dtype=np.int64)
        self.caption_count = int(caption_count)
        needs_text = any(o in TEXT_OBJECTIVES for o in self.objectives)
        if needs_text and self.text_sizes.sum() == 0:
            raise ValueError(f"objectives {[o for o in self.objectives if o in TEXT_OBJECTIVES]} need text, "
                             "but the text corpus is empty")
        if any(o not in TEXT_OBJECTIVES for o in self.objectives) and self.caption_count == 0:
            raise ValueError(f"objectives {[o for o in self.objectives if o not in TEXT_OBJECTIVES]} need "
                             "image-caption pairs, but there are none (no image ids or feature file?)")
        self.language_probs = language_probabilities(self.text_sizes, language_alpha) if needs_text else None
        self.text_offsets = np.concatenate([[0], np.cumsum(self.text_sizes)[:-1]])

    def objective_of(self, epoch: int, num_batches: int) -> List[str]:
        """The objective of every batch of an epoch."""
        if self.mode == ROUND_ROBIN:
            return [self.objectives[b % len(self.objectives)] for b in range(num_batches)]
        rng = np.random.default_rng([self.seed, epoch, 0])
        return [self.objectives[i] for i in rng.choice(len(self.objectives), size=num_batches, p=self.probabilities)]

    def training_batches(self, epoch: int, num_batches: int, batch_size: int) -> List[Tuple[str, np.ndarray]]:
        """Every batch of a training epoch. A text batch draws each sentence's language with
        lambda_l, then a sentence of it uniformly; a caption batch draws pairs uniformly."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        batches = []
        for objective in self.objective_of(epoch, num_batches):
            if objective in TEXT_OBJECTIVES:
                langs = rng.choice(len(self.text_sizes), size=batch_size, p=self.language_probs)
                ids = self.text_offsets[langs] + (rng.random(batch_size) * self.text_sizes[langs]).astype(np.int64)
            else:
                ids = rng.integers(self.caption_count, size=batch_size)
            batches.append((objective, ids))
        return batches

    def evaluation_batches(self, batch_size: int) -> List[Tuple[str, np.ndarray]]:
        """Every example of each objective's corpus once, in order, objective after objective."""
        batches = []
        for objective in self.objectives:
            total = int(self.text_sizes.sum()) if objective in TEXT_OBJECTIVES else self.caption_count
            batches += [(objective, np.arange(start, min(start + batch_size, total)))
                        for start in range(0, total, batch_size)]
        return batches

    def settings(self) -> Dict[str, object]:
        """What must not change when a run resumes mid-schedule."""
        return {"objectives": dict(zip(self.objectives, self.probabilities.round(12).tolist())), "mode": self.mode,
                "language_alpha": self.language_alpha, "seed": self.seed, "text_sizes": self.text_sizes.tolist(), "caption_count": self.caption_count}
