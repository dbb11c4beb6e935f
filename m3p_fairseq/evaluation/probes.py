"""Test-time probes of how much a model uses its inputs: the same test set with the images of
other sentences (incongruent images), with no image at all, and with a share of the source
words masked (Fig. 7).

Each builds a modified copy of a loaded test dataset rather than adding task options: they are
for analysis only, must never reach training, and a copy leaves the task and the loaded split
untouched for the ordinary run that they are compared with."""

import copy
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ..data.batch_keys import MODALITIES
from ..data.multimodal_pair_dataset import MultimodalLanguagePairDataset
from ..data.vocabulary import MASK_SYMBOL, MASK_WORD


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (Sattolo's algorithm: a random n-cycle), so that
    every sentence gets another sentence's image. n must be at least 2."""
    if n < 2:
        raise ValueError(f"cannot shuffle images across {n} sentence(s): need at least 2")
    rng = np.random.default_rng(seed)
    permutation = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i, never i itself: the result is one cycle
        permutation[i], permutation[j] = permutation[j], permutation[i]
    return permutation


def require_images(dataset: MultimodalLanguagePairDataset, probe: str) -> None:
    if not getattr(dataset, "has_images", False):
        raise ValueError(f"the split has no image features: there are no images to {probe}")


def with_incongruent_images(dataset: MultimodalLanguagePairDataset, seed: int):
    """A copy of ``dataset`` in which sentence i has the image of sentence derangement[i].
    Returns (copy, number of sentences whose new image is still their own: the same image id
    appearing on several lines of the split)."""
    require_images(dataset, "shuffle")
    shuffled = copy.copy(dataset)
    rows = np.asarray(dataset.image_rows)
    shuffled.image_rows = rows[derangement(len(rows), seed)]
    return shuffled, int((shuffled.image_rows == rows).sum())


def without_images(dataset: MultimodalLanguagePairDataset) -> MultimodalLanguagePairDataset:
    """A copy of ``dataset`` in which every sentence's image counts as unusable, as if it had been
    missing at extraction: an image model then translates each sentence from its text alone,
    through the text-only path that MDropNet trains (Eq. 9)."""
    require_images(dataset, "withhold")
    store = copy.copy(dataset.image_store)
    store.usable = np.zeros_like(store.usable)
    store.num_unusable = len(store.usable)
    blind = copy.copy(dataset)
    blind.image_store = store
    return blind


def through_mdropnet_path(dataset: MultimodalLanguagePairDataset, mode: int) -> MultimodalLanguagePairDataset:
    """A copy of ``dataset`` whose batches ask every sentence's encoder for one MDropNet mode
    (models/mdropnet.py: TEXT_ONLY, Eq. 9; IMAGE_ONLY, Eq. 10, captioning from the image and the
    target tag; TEXT_AND_IMAGE), as MDropNet's draws do in training."""
    require_images(dataset, "translate through an MDropNet path")
    collate = dataset.collater

    def collater(samples, pad_to_length=None):
        batch = collate(samples, pad_to_length=pad_to_length)
        if "net_input" in batch:
            batch["net_input"][MODALITIES] = torch.full((len(batch["id"]),), mode)
        return batch

    forced = copy.copy(dataset)
    forced.collater = collater
    return forced


def masked_word_order(num_words: int, seed: int, sentence: int) -> np.ndarray:
    """The order in which a sentence's words get masked as the ratio grows: a permutation seeded
    by (seed, sentence), so a higher ratio masks the words of a lower one and more."""
    return np.random.default_rng([seed, sentence]).permutation(num_words)


def mask_words(sentence: str, ratio: float, order: np.ndarray, mask_word: str = MASK_WORD) -> str:
    """``sentence`` with round(ratio * words) of its whitespace-separated words, taken in
    ``order``, replaced by ``mask_word``."""
    words = sentence.split()
    for i in order[:round(ratio * len(words))]:
        words[i] = mask_word
    return " ".join(words)


def first_sentences(dataset: MultimodalLanguagePairDataset, count: Optional[int],
                    sources: Optional[List[torch.Tensor]] = None) -> MultimodalLanguagePairDataset:
    """The first ``count`` examples of ``dataset`` (all when None) as a dataset of their own,
    with their images; ``sources`` replaces their source sentences."""
    count = len(dataset) if count is None else min(count, len(dataset))
    if sources is None:
        sources = [dataset.src[i] for i in range(count)]
    targets = [dataset.tgt[i] for i in range(count)]
    return MultimodalLanguagePairDataset(
        sources, np.array([len(s) for s in sources]), dataset.src_dict, targets,
        np.array([len(t) for t in targets]), dataset.tgt_dict, left_pad_source=dataset.left_pad_source,
        left_pad_target=dataset.left_pad_target, shuffle=False, image_store=dataset.image_store,
        image_rows=None if dataset.image_rows is None else np.asarray(dataset.image_rows)[:count])


def masked_pieces(sp, sentence: str, masked_words: np.ndarray, mask_symbol: str = MASK_SYMBOL) -> List[str]:
    """The SentencePiece pieces of ``sentence`` with every piece of the words at ``masked_words``
    replaced by ``mask_symbol``: one symbol per piece, as MMA's span masking writes it in training
    (multimodal_augmentation.py). Words are encoded one by one, which gives the pieces of the
    whole sentence (SentencePiece never joins pieces across a space)."""
    masked = set(int(i) for i in masked_words)
    pieces: List[str] = []
    for index, word in enumerate(sentence.split()):
        word_pieces = sp.encode(word, out_type=str)
        pieces.extend([mask_symbol] * len(word_pieces) if index in masked else word_pieces)
    return pieces


def with_masked_source(dataset: MultimodalLanguagePairDataset, task, ratio: float, seed: int = 1,
                       mask_word: Optional[str] = None, spm_model: Optional[Path] = None,
                       max_sentences: Optional[int] = None):
    """A copy of ``dataset`` whose source sentences have ``ratio`` of their words masked.

    Each source is detokenized, masked word by word and encoded again with the data's
    SentencePiece model (DATA/spm.model by default), exactly as preprocess.binarize encodes text.
    By default every piece of a masked word becomes the dictionary's ``<mask>`` symbol, the one
    MMA text masking trains the model with. With ``mask_word`` (e.g. ``[MASK]``, the quickstart's
    degraded sources) the word is put into the raw text instead and encoded like any word (one the
    dictionary lacks becomes <unk>). The target-language tag in front is kept. With
    ``max_sentences`` only the first ones are kept."""
    import sentencepiece as spm

    if not 0 <= ratio <= 1:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if spm_model is None:
        spm_model = task.data_directory.spm_model
    if not Path(spm_model).is_file():
        raise FileNotFoundError(f"{spm_model}: SentencePiece model not found (needed to encode masked sources)")
    dictionary = dataset.src_dict
    if mask_word is None and dictionary.index(MASK_SYMBOL) == dictionary.unk():
        raise ValueError(f"the dictionary has no {MASK_SYMBOL} symbol to mask with; give a mask word "
                         f"(e.g. {MASK_WORD}) to put into the raw text instead")
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    sources: List[torch.Tensor] = []
    count = len(dataset) if max_sentences is None else min(max_sentences, len(dataset))
    for index in range(count):
        tokens = dataset.src[index]
        tag, body = tokens[:1], tokens[1:]
        text = dictionary.string(body, "sentencepiece")
        order = masked_word_order(len(text.split()), seed, index)
        if mask_word is None:
            pieces = masked_pieces(sp, text, order[:round(ratio * len(text.split()))])
        else:
            pieces = sp.encode(mask_words(text, ratio, order, mask_word), out_type=str)
        encoded = dictionary.encode_line(" ".join(pieces), add_if_not_exist=False, append_eos=True).long()
        sources.append(torch.cat([tag.long(), encoded]))
    return first_sentences(dataset, count, sources)
