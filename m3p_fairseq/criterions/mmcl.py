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


def log_mean_exp_by_identity(logits: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """logits [N, M], group [M] in 0..G-1 -> [N, G]: log of the mean of exp(logit) over the
    columns of each group (-inf where all of a group's columns are -inf). Identical columns merge
    into exactly their common logit."""
    shift = logits.detach().max(dim=1, keepdim=True).values
    summed = logits.new_zeros(logits.size(0), num_groups).index_add(1, group, (logits - shift).exp())
    count = torch.bincount(group, minlength=num_groups).to(logits.dtype)
    return (summed / count).log() + shift


def symmetric_info_nce(text: Tensor, image: Tensor, logit_scale: Tensor,
                       image_negatives: Optional[Tensor] = None,
                       image_ids: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Per pair k: f(x_k, z_k) + f(z_k, x_k) (Eq. 4), where f(x_k, z_k) is the softmax cross-entropy
    of image k against the texts (Eq. 5) and f(z_k, x_k) that of text k against the images (Eq. 6).

    text, image: [N, d], L2-normalised, row k of each forming a positive pair. ``image_ids`` [N]
    (the image's row in the feature file; default: every row its own image) says which rows show
    the same image: on multi-way data one image comes with several texts, its translations, and
    Eq. 5 makes every "text clip overlapping with image z_k" a positive. The multi-positive form:

    * image -> text (Eq. 5): pair k's term is -log(e^{s(z_k,x_k)} / (e^{s(z_k,x_k)} + sum over
      texts of other images)). The other texts of the same image are left out of the denominator,
      not negatives; summed over an image's pairs this is the mean of -log p over all its positives
      (SupCon's 'outside' form) times their number, each positive contrasted with the negatives
      alone. Unlike a log-sum-exp over the positives (MIL-NCE), which is satisfied once one
      translation matches, it pulls every translation to the image, the paper's image as the
      central language; unlike SupCon's denominator with all positives, aligned pairs reach 0.
    * text -> image (Eq. 6): the columns of one image merge into one (the log-mean-exp of their
      logits, exactly their logit when they are copies), so each text has one positive image
      and a repeated image counts once among the negatives.
    * ``image_negatives`` [N, d]: augmented views (MMA); view j is one more negative for the texts
      of other images and is left out for the texts of its own image (it shows that image, so it
      is neither a positive nor a fair negative).

    With distinct ids this is the plain symmetric InfoNCE. Returns the per-pair loss [N] and
    whether text->image and image->text retrieval ranked a positive first ([N] bool each).
    """
    n = text.size(0)
    if image_ids is None:
        image_ids = torch.arange(n, device=text.device)
    distinct, group = torch.unique(image_ids, return_inverse=True)
    similarity = logit_scale * text @ image.t()  # [text, image]
    if distinct.numel() == n:  # no repeated image: the plain form, column k is image k
        group = torch.arange(n, device=text.device)
        per_image = similarity
    else:
        per_image = log_mean_exp_by_identity(similarity, group, distinct.numel())
    same_image = group.unsqueeze(0) == group.unsqueeze(1)
    columns = [per_image]
    if image_negatives is not None:
        view_logits = logit_scale * text @ image_negatives.t()
        # views belong to the first rows (MMA's augmented pairs, appended after them, bring none)
        columns.append(view_logits.masked_fill(same_image[:, :image_negatives.size(0)], float("-inf")))
    logits_per_text = torch.cat(columns, dim=1)
    text_to_image = F.cross_entropy(logits_per_text, group, reduction="none")

    logits_per_image = similarity.t()  # [image, text]
    own_pair = torch.eye(n, dtype=torch.bool, device=text.device)
    image_to_text = F.cross_entropy(logits_per_image.masked_fill(same_image & ~own_pair, float("-inf")),
                                    torch.arange(n, device=text.device), reduction="none")
    text_hit = logits_per_text.argmax(1) == group
    image_hit = same_image.gather(1, logits_per_image.argmax(1, keepdim=True)).squeeze(1)
    return text_to_image + image_to_text, text_hit, image_hit


def split_columns(joined: Tensor, widths: Sequence[int]) -> Tuple[Tensor, ...]:
    return tuple(torch.split(joined, list(widths), dim=1))
