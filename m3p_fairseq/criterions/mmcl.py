"""MMCL, the multilingual multimodal contrastive loss (paper Sec. 2.4, Eq. 4-6), in the style of
open_clip's loss: a symmetric InfoNCE over the batch, gathered from every data-parallel worker.
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def gather_across_workers(local: Tensor, group=None) -> Tuple[Tensor, int]:
    """Rows of ``local`` [b, ...] from all workers, concatenated in rank order, and the offset of
    this worker's rows. Workers may hold different numbers of rows (fairseq batches by tokens).
    Only the local rows carry gradient; since every worker computes the loss over all rows,
    DistributedDataParallel's gradient sum is then the exact gradient of the full loss."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return local, 0
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    size = torch.tensor([local.size(0)], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.size(0)] = local.detach()
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    parts = [rows[:n] for rows, n in zip(gathered, sizes)]
    parts[rank] = local
    return torch.cat(parts), sum(sizes[:rank])


def symmetric_info_nce(text: Tensor, image: Tensor, logit_scale: Tensor,
                       image_negatives: Optional[Tensor] = None,
                       identity: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Per pair k: f(x_k, z_k) + f(z_k, x_k) (Eq. 4), where f(x_k, z_k) is the softmax cross-entropy
    of image k against all texts (Eq. 5) and f(z_k, x_k) that of text k against all images (Eq. 6).

    text, image: [N, d], L2-normalised, row k of each forming a positive pair; every other row
    is an in-batch negative. image_negatives [N, d]: augmented views of the same images (MMA);
    view j is one more negative for every text except text j, for which it is left out (it shows
    text j's own image, so it is neither a positive nor a fair negative).

    identity [N]: the image each row shows (MMA's augmented pairs repeat their batch row's);
    two different rows of the same image are left out of each other's sums, as a view is.

    Returns the per-pair loss [N] and whether text->image and image->text retrieval ranked the
    positive first ([N] bool each).
    """
    labels = torch.arange(text.size(0), device=text.device)
    if identity is None:
        identity = labels
    same_image = identity.unsqueeze(1) == identity.unsqueeze(0)
    other_row_same_image = same_image & ~torch.eye(text.size(0), dtype=torch.bool, device=text.device)
    logits_per_text = (logit_scale * text @ image.t()).masked_fill(other_row_same_image, float("-inf"))
    if image_negatives is not None:
        view_logits = logit_scale * text @ image_negatives.t()
        own_view = same_image[:, :image_negatives.size(0)]
        logits_per_text = torch.cat([logits_per_text, view_logits.masked_fill(own_view, float("-inf"))], dim=1)
    logits_per_image = (logit_scale * image @ text.t()).masked_fill(other_row_same_image, float("-inf"))
    loss = (F.cross_entropy(logits_per_text, labels, reduction="none")
            + F.cross_entropy(logits_per_image, labels, reduction="none"))
    return loss, logits_per_text.argmax(1) == labels, logits_per_image.argmax(1) == labels


def split_columns(joined: Tensor, widths: Sequence[int]) -> Tuple[Tensor, ...]:
    return tuple(torch.split(joined, list(widths), dim=1))
