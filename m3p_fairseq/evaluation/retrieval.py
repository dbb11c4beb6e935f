"""Image-text retrieval scores: Recall@1/5/10 in both directions and their mean (mR).

The standard protocol for caption sets with several captions per image (Flickr30k, Multi30k,
MSCOCO): the similarity matrix has one row per image and one column per caption;

- image -> text: an image query is a hit at K if ANY of its captions is among the K
  best-scored captions;
- text -> image: a caption query is a hit at K if ITS image is among the K best-scored images.

Ties are broken pessimistically (against the query): an item that scores exactly as high as the
best correct one is ranked before it. The rank is therefore the number of wrong items scoring
``>=`` the best correct one, independent of the order of the rows and columns, so the same
matrix always gives the same numbers, and a degenerate model (e.g. all scores equal) scores 0
instead of a lucky recall. Recalls are percentages; mR is the mean of the six recalls (the
paper's "Average Recall", AR).

Test images that also occur in training make retrieval numbers meaningless:
:func:`check_disjoint_images` refuses them when both id lists are given.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

RECALL_AT = (1, 5, 10)


class RetrievalError(ValueError):
    """Inconsistent retrieval input; the message names what was expected."""


def caption_image_index(caption_image_ids: Sequence[str], image_ids: Sequence[str],
                        source: str = "captions") -> torch.Tensor:
    """Row of each caption's image in ``image_ids`` (which must be unique); ``source`` names the
    caption list in errors, whose line numbers start at 1."""
    row_of: Dict[str, int] = {}
    for row, image_id in enumerate(image_ids):
        if image_id in row_of:
            raise RetrievalError(f"image id {image_id!r} occurs twice in the image list "
                                 f"(rows {row_of[image_id]} and {row}); each image must be listed once")
        row_of[image_id] = row
    rows = []
    for line_no, image_id in enumerate(caption_image_ids, start=1):
        if image_id not in row_of:
            raise RetrievalError(f"{source}:{line_no}: image id {image_id!r} is not among the "
                                 f"{len(row_of)} images being ranked")
        rows.append(row_of[image_id])
    return torch.tensor(rows, dtype=torch.long)


def check_disjoint_images(test_image_ids: Sequence[str], train_image_ids: Sequence[str],
                          test_source: Optional[str] = None, train_source: Optional[str] = None) -> None:
    """Raise if any test image also occurs in training (a leak that inflates recall); the
    ``*_source`` names (e.g. the id files) are put in the message when given."""
    leaked = sorted(set(test_image_ids) & set(train_image_ids))
    if leaked:
        shown = ", ".join(repr(i) for i in leaked[:5]) + (" ..." if len(leaked) > 5 else "")
        test = f"test image(s) of {test_source}" if test_source else "test image(s)"
        train = f"the training images of {train_source}" if train_source else "the training images"
        raise RetrievalError(f"{len(leaked)} {test} also occur in {train} ({shown}); "
                             f"retrieval must be evaluated on images never seen in training")


def _check_inputs(similarity: torch.Tensor, caption_image: torch.Tensor) -> Tuple[int, int]:
    if similarity.dim() != 2:
        raise RetrievalError(f"similarity must be [images, captions], got shape {tuple(similarity.shape)}")
    num_images, num_captions = similarity.shape
    if caption_image.shape != (num_captions,):
        raise RetrievalError(f"{num_captions} captions (similarity columns) but {caption_image.numel()} "
                             f"caption->image entries")
    if num_captions and (caption_image.min() < 0 or caption_image.max() >= num_images):
        bad = int(((caption_image < 0) | (caption_image >= num_images)).nonzero()[0])
        raise RetrievalError(f"caption {bad} points to image {int(caption_image[bad])}, "
                             f"outside the {num_images} images")
    if not torch.isfinite(similarity).all():
        raise RetrievalError("similarity has NaN or infinite entries")
    without_caption = torch.ones(num_images, dtype=torch.bool)
    without_caption[caption_image] = False
    if without_caption.any():
        raise RetrievalError(f"image {int(without_caption.nonzero()[0])} has no caption "
                             f"({int(without_caption.sum())} such images): an image query needs one")
    return num_images, num_captions


def retrieval_ranks(similarity: torch.Tensor, caption_image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """0-based pessimistic ranks: (image->text rank of each image's best caption [images],
    text->image rank of each caption's image [captions])."""
    similarity = similarity.double()
    caption_image = caption_image.long()
    num_images, _ = _check_inputs(similarity, caption_image)
    relevant = F.one_hot(caption_image, num_images).T.bool()  # [images, captions]
    best_relevant = similarity.masked_fill(~relevant, float("-inf")).max(dim=1).values
    image_to_text = ((similarity >= best_relevant[:, None]) & ~relevant).sum(dim=1)
    own_score = similarity.gather(0, caption_image[None, :])  # [1, captions]
    text_to_image = ((similarity >= own_score) & ~relevant).sum(dim=0)
    return image_to_text, text_to_image


def recalls_from_ranks(image_to_text: torch.Tensor, text_to_image: torch.Tensor,
                       ks: Sequence[int] = RECALL_AT) -> Dict[str, float]:
    scores: Dict[str, float] = {}
    for direction, ranks in (("i2t", image_to_text), ("t2i", text_to_image)):
        for k in ks:
            scores[f"{direction}_r{k}"] = 100.0 * (ranks < k).double().mean().item()
    scores["mR"] = sum(scores.values()) / len(scores)
    return scores


def retrieval_scores(similarity: torch.Tensor, caption_image: torch.Tensor,
                     ks: Sequence[int] = RECALL_AT) -> Dict[str, float]:
    """``{"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", ..., "mR"}`` in percent, from a similarity
    matrix [images, captions] and each caption's image row."""
    return recalls_from_ranks(*retrieval_ranks(similarity, caption_image), ks=ks)


def embedding_retrieval_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                               caption_image: torch.Tensor, ks: Sequence[int] = RECALL_AT) -> Dict[str, float]:
    """Scores of cosine similarity between image [images, E] and caption [captions, E] embeddings."""
    if image_embeddings.shape[-1] != text_embeddings.shape[-1]:
        raise RetrievalError(f"image embeddings have {image_embeddings.shape[-1]} dims but text embeddings "
                             f"{text_embeddings.shape[-1]}: were they made by the same dual encoder?")
    similarity = F.normalize(image_embeddings.double(), dim=-1) @ F.normalize(text_embeddings.double(), dim=-1).T
    return retrieval_scores(similarity, caption_image, ks=ks)


def scores_table(scores_by_row: Mapping[str, Mapping[str, float]], first_column: str = "language") -> str:
    """Markdown table: one row per key of ``scores_by_row`` (e.g. a language), the six recalls
    and mR (one decimal)."""
    from ..markdown import markdown_table

    columns = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in RECALL_AT] + ["mR"]
    header = [first_column] + [f"{c[:3]} R@{c[5:]}" if c != "mR" else c for c in columns]
    return markdown_table(header, [[row] + [f"{scores[c]:.1f}" for c in columns]
                                   for row, scores in scores_by_row.items()])


def format_scores(scores: Mapping[str, float], label: Optional[str] = None) -> str:
    """One line, e.g. ``de: i2t R@1 50.0 R@5 ... | t2i R@1 ... | mR 61.2``."""
    parts = []
    for direction in ("i2t", "t2i"):
        recalls = " ".join(f"R@{k[len(direction) + 2:]} {v:.1f}" for k, v in scores.items()
                           if k.startswith(direction + "_r"))
        parts.append(f"{direction} {recalls}")
    line = " | ".join(parts) + f" | mR {scores['mR']:.1f}"
    return f"{label}: {line}" if label else line
