"""The m3P training objective (paper Eq. 12): L = L_m + lambda * L_c, label-smoothed
cross-entropy on the target tokens plus the MMCL contrastive loss of the source text and its image.

fairseq divides the summed loss by the number of target tokens (sample_size), so the
contrastive term is added as lambda * sample_size * (mean MMCL over the sentence pairs): after
that division the gradient is exactly that of  mean-per-token CE + lambda * mean-per-pair MMCL.
"""

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from fairseq import metrics, utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.distributed import utils as distributed_utils

from ..data.batch_keys import (
    CONTRASTIVE,
    IMAGE_ROW,
    MMCL_AUGMENTED_IMAGE,
    MMCL_AUGMENTED_ROW,
    MMCL_AUGMENTED_TEXT,
    MMCL_IMAGE,
    MMCL_IMAGE_NEGATIVES,
    MMCL_LOGIT_SCALE,
    MMCL_TEXT,
    MMCL_USABLE,
)
from .mmcl import gather_across_workers, split_columns, symmetric_info_nce

logger = logging.getLogger(__name__)
PAPER_LABEL_SMOOTHING = 0.1  # Sec. 3.3


@dataclass
class M3PLossConfig(LabelSmoothedCrossEntropyCriterionConfig):
    mmcl_weight: float = field(
        default=0.1,
        metadata={"help": "lambda of Eq. 12: weight of the MMCL contrastive loss (mean per sentence "
                          "pair) against the translation loss (mean per target token); 0 = no MMCL. "
                          "The paper gives no value; at 1 the MMCL gradient was 6x the translation "
                          "gradient on the quickstart and translation collapsed"},
    )


@register_criterion("m3p_loss", dataclass=M3PLossConfig)
class M3PLoss(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0,
                 report_accuracy=False, mmcl_weight=0.1):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if mmcl_weight < 0:
            raise ValueError(f"--mmcl-weight must be >= 0, got {mmcl_weight}")
        if label_smoothing == 0:
            logger.warning("--criterion m3p_loss without --label-smoothing: the paper trains with "
                           "--label-smoothing %s (Eq. 12's L_m is label-smoothed)", PAPER_LABEL_SMOOTHING)
        self.mmcl_weight = mmcl_weight

    def forward(self, model, sample, reduce=True):
        # A model with a contrastive head always computes MMCL, even at weight 0, so that every
        # parameter takes part in the backward pass as DistributedDataParallel expects.
        contrastive = self.model_supports_mmcl(model)
        if self.mmcl_weight > 0 and not contrastive:
            raise ValueError(f"--mmcl-weight {self.mmcl_weight} needs a model that reads images "
                             "(a --fusion other than none); a text-only model trains with "
                             "--mmcl-weight 0 or --criterion label_smoothed_cross_entropy")
        net_output = model(**sample["net_input"], **{CONTRASTIVE: contrastive})
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            "nll_loss": nll_loss.data,
        }
        logging_output["loss"] = loss.data
        if contrastive:
            mmcl_term, mmcl_logs = self.contrastive_loss(net_output[1], sample_size,
                                                         sample["net_input"].get(IMAGE_ROW))
            loss = loss + mmcl_term
            logging_output.update(mmcl_logs)
            # this worker's share: its own pairs (the gradient term covers all workers' pairs)
            logging_output["loss"] += (self.mmcl_weight * sample_size * mmcl_logs["mmcl_loss"]
                                       / max(mmcl_logs["mmcl_pairs"], 1))
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    @staticmethod
    def model_supports_mmcl(model) -> bool:
        """models.multimodal_model.MultimodalModel.supports_mmcl; read as an attribute because
        ``model`` may be fairseq's data-parallel wrapper, which forwards attributes to the model."""
        try:
            return model.supports_mmcl
        except AttributeError:
            raise ValueError(f"--criterion m3p_loss trains the plugin's multimodal models (--arch m3p_*), "
                             f"not {type(model).__name__}; use --criterion label_smoothed_cross_entropy") from None

    def contrastive_loss(self, extra, sample_size, image_rows=None):
        """lambda * (total sample size / N) * sum of the N pair losses over all workers (MMA's
        augmented pairs included), and the logging sums of this worker's own pairs. ``image_rows``
        [B] (the batch's IMAGE_ROW) makes the texts of one image its positives
        (mmcl.symmetric_info_nce), on every worker; an augmented pair shows its batch row's image."""
        parts = [extra[MMCL_TEXT], extra[MMCL_IMAGE]]
        if MMCL_IMAGE_NEGATIVES in extra:
            parts.append(extra[MMCL_IMAGE_NEGATIVES])
        usable = extra.get(MMCL_USABLE)
        if usable is not None:  # pairs whose image was missing at extraction have no image to match
            parts = [part[usable] for part in parts]
            image_rows = None if image_rows is None else image_rows[usable]
        text = parts[0]
        group = distributed_utils.get_data_parallel_group() if dist.is_initialized() else None
        joined, offset = gather_across_workers(torch.cat(parts, dim=1), group)
        text_all, image_all, *negatives_all = split_columns(joined, [p.size(1) for p in parts])
        image_ids = None if image_rows is None else gather_across_workers(image_rows, group)[0]
        if MMCL_AUGMENTED_TEXT in extra:
            augmented_text, augmented_image, identity = self.augmented_rows(extra, usable, offset, text_all.size(0),
                                                                            group)
            text_all, image_all = torch.cat([text_all, augmented_text]), torch.cat([image_all, augmented_image])
            # identity: positions, then each augmented pair's source position; as images:
            image_ids = identity if image_ids is None else image_ids[identity]
        pair_loss, text_correct, image_correct = symmetric_info_nce(
            text_all, image_all, extra[MMCL_LOGIT_SCALE], negatives_all[0] if negatives_all else None, image_ids)

        total_sample_size = torch.tensor(float(sample_size), device=text.device)
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(total_sample_size, group=group)
        # (no pair at all: every image of the batch was unusable; keep the head in the graph)
        term = self.mmcl_weight * total_sample_size / max(pair_loss.numel(), 1) * pair_loss.sum()

        local = slice(offset, offset + text.size(0))
        local_loss = pair_loss[local].sum().detach()
        logs = {
            "mmcl_loss": local_loss,
            "mmcl_pairs": text.size(0),
            "mmcl_correct": utils.item((text_correct[local].sum() + image_correct[local].sum()).data),
            "mmcl_temperature": utils.item(1.0 / extra[MMCL_LOGIT_SCALE].detach()) * text.size(0),
        }
        return term, logs

    @staticmethod
    def augmented_rows(extra, usable, offset: int, num_pairs: int, group):
        """MMA's augmented pairs of all workers (text [A, d], image [A, d]) and the image identity of
        every InfoNCE row [num_pairs + A]: the pairs' own positions, then, for each augmented
        pair, the position of the pair it augments."""
        text, image, rows = extra[MMCL_AUGMENTED_TEXT], extra[MMCL_AUGMENTED_IMAGE], extra[MMCL_AUGMENTED_ROW]
        if usable is not None:  # drop those of unusable images; renumber the rest as the kept pairs
            kept = usable[rows]
            text, image, rows = text[kept], image[kept], (usable.long().cumsum(0) - 1)[rows[kept]]
        joined, _ = gather_across_workers(torch.cat([text, image], dim=1), group)
        rows_all, _ = gather_across_workers(rows + offset, group)
        text_all, image_all = split_columns(joined, [text.size(1), image.size(1)])
        identity = torch.cat([torch.arange(num_pairs, device=rows_all.device), rows_all])
        return text_all, image_all, identity

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        pairs = sum(log.get("mmcl_pairs", 0) for log in logging_outputs)
        if pairs == 0:
            return
        mmcl_sum = utils.item(sum(log.get("mmcl_loss", 0) for log in logging_outputs))
        correct = sum(log.get("mmcl_correct", 0) for log in logging_outputs)
        temperature = sum(log.get("mmcl_temperature", 0) for log in logging_outputs)
        # bits, like fairseq's loss, so that loss = label-smoothed CE + lambda * mmcl in the logs
        metrics.log_scalar("mmcl", mmcl_sum / pairs / math.log(2), pairs, round=3)
        metrics.log_scalar("mmcl_accuracy", 100.0 * correct / (2 * pairs), pairs, round=2)
        metrics.log_scalar("mmcl_temperature", temperature / pairs, pairs, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
