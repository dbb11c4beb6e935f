"""The vision-language pre-training objective (vlp-for-mmt-modality-loss.md, Sec. 3.2): masked-LM
cross-entropy over the masked text tokens plus the paired-image (own or random image)
cross-entropy of each caption. Like fairseq's masked_lm criterion the MLM term is a sum over
the masked tokens (sample_size); the paired-image term is added as weight * sample_size * its
mean over the captions, so after fairseq's division both are means. Logged apart: ``mlm``
(bits per masked token), ``paired`` (bits per caption), ``paired_accuracy``.
"""

import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..data.batch_keys import MASKED_TOKENS, PAIRED_IMAGE_LABEL, PAIRED_IMAGE_LOGITS


@dataclass
class VLPPretrainingLossConfig(FairseqDataclass):
    paired_image_weight: float = field(
        default=1.0, metadata={"help": "weight of the paired-image loss (mean per caption) against the "
                                        "masked-LM loss (mean per masked token)"},
    )


@register_criterion("vlp_pretraining_loss", dataclass=VLPPretrainingLossConfig)
class VLPPretrainingLoss(FairseqCriterion):
    def __init__(self, task, paired_image_weight=1.0):
        super().__init__(task)
        if paired_image_weight < 0:
            raise ValueError(f"--paired-image-weight must be >= 0, got {paired_image_weight}")
        self.paired_image_weight = paired_image_weight

    def forward(self, model, sample, reduce=True):
        target = sample["target"]
        masked = target.ne(self.padding_idx)
        lm_logits, extra = model(**sample["net_input"], **{MASKED_TOKENS: masked})
        masked_targets = target[masked]
        mlm_sum = F.cross_entropy(lm_logits.float(), masked_targets, reduction="sum")
        labels = sample[PAIRED_IMAGE_LABEL]
        pair_logits = extra[PAIRED_IMAGE_LOGITS].float()
        pair_sum = F.cross_entropy(pair_logits, labels, reduction="sum")
        num_masked = int(masked.sum())
        sample_size = max(num_masked, 1)  # a batch without a masked token still trains the pair head
        loss = mlm_sum + self.paired_image_weight * sample_size * pair_sum / labels.numel()
        logging_output = {
            "loss": loss.data, "mlm_loss": mlm_sum.data, "paired_loss": pair_sum.data,
            "paired_correct": int((pair_logits.argmax(-1) == labels).sum()),
            "ntokens": num_masked, "nsentences": labels.numel(), "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = lambda key: sum(log.get(key, 0) for log in logging_outputs)  # noqa: E731
        sample_size, ntokens, nsentences = total("sample_size"), total("ntokens"), total("nsentences")
        metrics.log_scalar("loss", utils.item(total("loss")) / max(sample_size, 1) / math.log(2),
                           sample_size, round=3)
        if ntokens:
            metrics.log_scalar("mlm", utils.item(total("mlm_loss")) / ntokens / math.log(2), ntokens, round=3)
        if nsentences:
            metrics.log_scalar("paired", utils.item(total("paired_loss")) / nsentences / math.log(2),
                               nsentences, round=3)
            metrics.log_scalar("paired_accuracy", 100.0 * total("paired_correct") / nsentences, nsentences,
                               round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
