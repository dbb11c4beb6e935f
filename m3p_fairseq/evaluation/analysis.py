"""What a trained model computes inside, for the figures: pooled encoder representations of
source sentences (Fig. 4) and the CVLM cross-attention of source tokens over image patches
(Fig. 6). Both run the model's ordinary encoder in eval mode; nothing of its code is replaced."""

from typing import List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from ..data.image_features import IMAGE_IDS
from ..models.fusion import ConditionalVisionLanguageMemory, to_rows


def encoder_inputs(dataset, indices: Sequence[int]):
    """(the encoder's inputs, ids in batch order) of the given examples, collated as fairseq
    batches them: the whole net_input but the decoder's input (encoders ignore the keys they
    do not read, as in fairseq's beam search)."""
    sample = dataset.collater([dataset[int(i)] for i in indices])
    inputs = {key: value for key, value in sample["net_input"].items() if key != "prev_output_tokens"}
    return inputs, sample["id"].tolist()


@torch.no_grad()
def pooled_representations(model, dataset, indices: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """[len(indices), C]: s^k, each sentence's text-encoder states averaged over its tokens (the
    target-language tag and padding left out, :meth:`MultimodalModel.pooled_text`), in the
    order of ``indices``. A model that reads images gets the sentence's image, as in translation."""
    model.eval()
    by_id = {}
    for start in range(0, len(indices), batch_size):
        inputs, ids = encoder_inputs(dataset, indices[start:start + batch_size])
        encoder_out = model.encoder(**inputs)
        pooled = model.pooled_text(inputs["src_tokens"], encoder_out)
        by_id.update(zip(ids, pooled.float().cpu().numpy()))
    return np.stack([by_id[int(i)] for i in indices])


def same_label_neighbours(vectors: np.ndarray, labels: Sequence[str], k: int = 10) -> float:
    """The share of each vector's k nearest neighbours (Euclidean, itself excluded) that have its
    label: 1 when every language forms its own cluster, 1/number-of-languages (for equal-sized
    groups) when the languages are mixed at random."""
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    squared = (vectors ** 2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2 * vectors @ vectors.T
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def cvlm_module(model) -> ConditionalVisionLanguageMemory:
    fusion = getattr(model.encoder, "fusion", None)
    if not isinstance(fusion, ConditionalVisionLanguageMemory):
        raise ValueError(f"the model's fusion is {getattr(model.encoder, 'fusion_name', 'none')!r}: "
                         "CVLM attention needs a model trained with --fusion cvlm")
    return fusion


@torch.no_grad()
def cvlm_attention(model, dataset, index: int) -> torch.Tensor:
    """[T, P]: how much each source token of example ``index`` (target-language tag first,
    </s> last) attends to each image patch in the CVLM (Eq. 8), averaged over heads.

    A forward hook records the CVLM's inputs during the model's ordinary encoder pass; the
    weights are then recomputed from them by the same attention module, asked for its weights
    (inference itself calls it with need_weights=False)."""
    model.eval()
    fusion = cvlm_module(model)
    recorded = {}

    def record(_module, args, _output):
        # the patches of each distinct image once when the batch carries IMAGE_INDEX (args[4])
        image_index = args[4] if len(args) > 4 else None
        recorded["text"], recorded["padding"] = args[0], args[1]
        recorded["patches"] = to_rows(args[2], image_index, dim=1)

    handle = fusion.register_forward_hook(record)
    try:
        inputs, _ = encoder_inputs(dataset, [index])
        model.encoder(**inputs)
    finally:
        handle.remove()
    _, weights = fusion.attention(query=recorded["text"], key=recorded["patches"], value=recorded["patches"],
                                  need_weights=True, need_head_weights=True)
    if weights.dim() == 4:  # [heads, B, T, P]; torch's fused path returns the head average [B, T, P]
        weights = weights.mean(dim=0)
    return weights[0][~recorded["padding"][0]].float().cpu()  # [T, P] of the one sentence


def image_id_of(dataset, index: int) -> str:
    """The image id of example ``index`` (as stored in its feature file)."""
    if not getattr(dataset, "has_images", False):
        raise ValueError("the split has no image features")
    with h5py.File(dataset.image_store.path, "r") as f:
        return f[IMAGE_IDS].asstr()[int(dataset.image_rows[index])]


def source_pieces(dataset, index: int) -> List[str]:
    """The dictionary symbols of example ``index``'s source, one per token, as the model sees them."""
    dictionary = dataset.src_dict
    return [dictionary[int(t)] for t in dataset.src[index]]


def word_spans(pieces: Sequence[str], ignored: Sequence[str] = ()) -> List[Tuple[str, List[int]]]:
    """(word, positions of its pieces) of a SentencePiece-encoded sentence: a piece starting
    with "\u2581" begins a word, and a bare "\u2581" belongs to the word after it; ``ignored``
    symbols (the language tag, </s>) belong to no word."""
    words: List[Tuple[str, List[int]]] = []
    pending: List[int] = []
    new_word = True
    for position, piece in enumerate(pieces):
        if piece in ignored:
            new_word = True
        elif piece == "\u2581":
            pending.append(position)
            new_word = True
        elif piece.startswith("\u2581") or new_word:
            words.append((piece.lstrip("\u2581"), pending + [position]))
            pending, new_word = [], False
        else:
            words[-1] = (words[-1][0] + piece, words[-1][1] + [position])
    return words


def patch_grid(num_patches: int, grid: Optional[Sequence[int]] = None):
    """(rows, columns) of the patch layout: given, or the square that ``num_patches`` fills."""
    if grid is not None:
        rows, columns = grid
        if rows * columns != num_patches:
            raise ValueError(f"--patch-grid {rows}x{columns} has {rows * columns} cells but the image has "
                             f"{num_patches} patches")
        return rows, columns
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patches are not a square grid: give --patch-grid ROWSxCOLUMNS")
    return side, side
