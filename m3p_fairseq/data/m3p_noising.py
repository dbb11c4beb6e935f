"""The noising functions of M3P pre-training (paper Sec. 3.1-3.2, Fig. 1), one per objective.

Every function takes a ``numpy.random.Generator`` (the dataset seeds one per example, so a
resumed run draws the same noise) and returns new tensors; inputs are never modified.

* :func:`mask_tokens` - xMLM / MMLM: 15 % of the maskable tokens become targets; of those
  80 % are replaced by ``<mask>``, 10 % by a random token, 10 % kept.
* :func:`mask_regions` - MRM: 15 % of the regions are masked; a masked region is zeroed with
  probability 0.9 and kept with 0.1; the targets are the original (un-masked) features.
* :func:`shuffle_by_index_noise`, :func:`drop_words`, :func:`sample_spans`,
  :func:`replace_spans`, :func:`denoising_corruption` - xDAE's c(w): shuffle by adding
  U(0, k) to the indices (so no token moves more than k places), drop 30 % of the words, then
  replace Poisson(3)-length spans by one ``<mask>`` each (a zero-length span inserts one).
* :func:`zero_region_spans` - DIC's c(v): Poisson(3) n-gram spans of regions are zeroed.
* :func:`vlm_pairs` - VLM: matched pairs and negatives made by swapping the image or the text.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

MASK_PROB = 0.15
MASK_REPLACE = 0.8  # share of the selected tokens replaced by <mask>
MASK_RANDOM = 0.1  # ... by a random token (the rest are kept)
REGION_MASK_PROB = 0.15
REGION_ZERO_PROB = 0.9
SHUFFLE_DISTANCE = 3.0
DROP_PROB = 0.3
SPAN_POISSON_LAMBDA = 3.0


def _select(n: int, prob: float, rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray:
    """Bernoulli(prob) over the candidate positions; at least one when there is any, so every
    example has a target (on sentences longer than ~20 tokens this changes the rate negligibly)."""
    chosen = np.zeros(n, dtype=bool)
    if candidates.size == 0:
        return chosen
    picked = candidates[rng.random(candidates.size) < prob]
    if picked.size == 0:
        picked = candidates[[rng.integers(candidates.size)]]
    chosen[picked] = True
    return chosen


def mask_tokens(tokens: Tensor, rng: np.random.Generator, mask_index: int, random_tokens: Sequence[int],
                maskable: Optional[Tensor] = None, pad_index: int = 1, prob: float = MASK_PROB,
                replace_prob: float = MASK_REPLACE, random_prob: float = MASK_RANDOM) -> Tuple[Tensor, Tensor]:
    """xMLM/MMLM masking of one sentence [T]: (input [T], target [T]) where the target holds the
    original token at the selected positions and ``pad_index`` elsewhere. ``maskable`` [T] bool
    (default: all) excludes special tokens; ``random_tokens`` are the candidates of the 10 %
    random replacement (the ordinary pieces of the dictionary)."""
    n = tokens.numel()
    candidates = np.arange(n) if maskable is None else np.flatnonzero(maskable.numpy())
    selected = _select(n, prob, rng, candidates)
    how = rng.random(n)
    replace = selected & (how < replace_prob)
    randomise = selected & (how >= replace_prob) & (how < replace_prob + random_prob)
    noised = tokens.clone()
    noised[torch.from_numpy(replace)] = mask_index
    if randomise.any():
        pool = np.asarray(random_tokens, dtype=np.int64)
        noised[torch.from_numpy(randomise)] = torch.from_numpy(pool[rng.integers(pool.size, size=int(randomise.sum()))])
    target = torch.full_like(tokens, pad_index)
    target[torch.from_numpy(selected)] = tokens[torch.from_numpy(selected)]
    return noised, target


def mask_regions(features: Tensor, rng: np.random.Generator, prob: float = REGION_MASK_PROB,
                 zero_prob: float = REGION_ZERO_PROB) -> Tuple[Tensor, Tensor, Tensor]:
    """MRM masking of one image's regions [R, D]: (input [R, D], masked [R] bool, target [R, D]).
    A masked region is zeroed with ``zero_prob`` and kept otherwise; the target is the original
    feature of every region (the loss reads it where ``masked``)."""
    num_regions = features.size(0)
    masked = _select(num_regions, prob, rng, np.arange(num_regions))
    zeroed = masked & (rng.random(num_regions) < zero_prob)
    noised = features.clone()
    noised[torch.from_numpy(zeroed)] = 0
    return noised, torch.from_numpy(masked), features.clone()


def shuffle_by_index_noise(tokens: Tensor, rng: np.random.Generator, distance: float = SHUFFLE_DISTANCE) -> Tensor:
    """xDAE step 1: add U(0, distance) to each index and re-order by the noised indices. Token i
    can only be overtaken by j > i with j + u_j < i + u_i, i.e. j - i < distance: no token moves
    more than ``distance`` places."""
    if distance <= 0 or tokens.numel() < 2:
        return tokens.clone()
    scores = np.arange(tokens.numel()) + rng.uniform(0, distance, size=tokens.numel())
    return tokens[torch.from_numpy(np.argsort(scores, kind="stable"))]


def drop_words(tokens: Tensor, rng: np.random.Generator, prob: float = DROP_PROB) -> Tensor:
    """xDAE step 2: drop each token with ``prob``; one random token survives an all-dropped sentence."""
    keep = rng.random(tokens.numel()) >= prob
    if tokens.numel() and not keep.any():
        keep[rng.integers(tokens.numel())] = True
    return tokens[torch.from_numpy(keep)]


def sample_spans(length: int, rng: np.random.Generator, ratio: float,
                 poisson_lambda: float = SPAN_POISSON_LAMBDA) -> List[Tuple[int, int]]:
    """Non-overlapping spans (start, span length) over ``length`` tokens, sorted by start, with
    Poisson(lambda) lengths drawn until they cover round(ratio * length) tokens (the last is cut
    to fit). Zero-length spans are kept: they mean "insert one <mask> here"."""
    budget = int(round(ratio * length))
    lengths: List[int] = []
    covered = 0
    while covered < budget:
        span = min(int(rng.poisson(poisson_lambda)), budget - covered)
        lengths.append(span)
        covered += span
    if not lengths:
        return []
    # place the spans in order with random gaps: the free tokens split into len+1 gaps
    free = length - covered
    cuts = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    spans, consumed = [], 0
    for cut, span in zip(cuts, lengths):
        spans.append((int(cut) + consumed, span))
        consumed += span
    return spans


def replace_spans(tokens: Tensor, spans: Sequence[Tuple[int, int]], mask_index: int) -> Tensor:
    """Each (start, span length) - sorted, non-overlapping - becomes one ``mask_index``; a
    zero-length span inserts one before ``start``."""
    pieces, position = [], 0
    mask = tokens.new_tensor([mask_index])
    for start, span in spans:
        if start < position or start + span > tokens.numel():
            raise ValueError(f"span ({start}, {span}) overlaps another or leaves the {tokens.numel()} tokens")
        pieces += [tokens[position:start], mask]
        position = start + span
    pieces.append(tokens[position:])
    return torch.cat(pieces)


def denoising_corruption(tokens: Tensor, rng: np.random.Generator, mask_index: int,
                         shuffle_distance: float = SHUFFLE_DISTANCE, drop_prob: float = DROP_PROB,
                         span_ratio: float = 0.3, poisson_lambda: float = SPAN_POISSON_LAMBDA) -> Tensor:
    """xDAE's c(w), the three operations in the paper's order: shuffle, drop, span replacement."""
    shuffled = shuffle_by_index_noise(tokens, rng, shuffle_distance)
    kept = drop_words(shuffled, rng, drop_prob)
    return replace_spans(kept, sample_spans(kept.numel(), rng, span_ratio, poisson_lambda), mask_index)


def zero_region_spans(features: Tensor, rng: np.random.Generator, ratio: float,
                      poisson_lambda: float = SPAN_POISSON_LAMBDA) -> Tuple[Tensor, Tensor]:
    """DIC's c(v) on one image's regions [R, D]: (input [R, D], zeroed [R] bool); the n-gram
    spans of regions (Poisson lengths, covering ``ratio`` of the regions) become zero vectors."""
    zeroed = np.zeros(features.size(0), dtype=bool)
    for start, span in sample_spans(features.size(0), rng, ratio, poisson_lambda):
        zeroed[start:start + span] = True
    noised = features.clone()
    noised[torch.from_numpy(zeroed)] = 0
    return noised, torch.from_numpy(zeroed)


def vlm_pairs(image_keys: Sequence[str], rng: np.random.Generator,
              negative_prob: float = 0.5, swap_image_prob: float = 0.5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VLM pairs over a batch of matched (caption b, image b): (image index [B], text index [B],
    label [B]). Each example stays matched (label 1) or, with ``negative_prob``, becomes a
    negative (label 0) by swapping its image (``swap_image_prob``) or its text for another
    example's whose image differs (``image_keys`` name the images: two captions of one image
    are not a negative). An example with no such partner stays matched."""
    size = len(image_keys)
    keys = np.asarray(image_keys, dtype=object)
    image_index, text_index = np.arange(size), np.arange(size)
    labels = np.ones(size, dtype=np.int64)
    for b in range(size):
        if rng.random() >= negative_prob:
            continue
        partners = np.flatnonzero(keys != keys[b])
        if partners.size == 0:
            continue
        other = int(partners[rng.integers(partners.size)])
        if rng.random() < swap_image_prob:
            image_index[b] = other
        else:
            text_index[b] = other
        labels[b] = 0
    return image_index, text_index, labels
