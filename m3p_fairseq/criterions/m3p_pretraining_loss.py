"""``--criterion m3p_pretraining``: the loss of the batch's objective (paper Sec. 3).

* xMLM, MMLM, xDAE, IC, DIC: cross-entropy of the target tokens (masked positions for the
  masked LMs, every token for generation), summed; sample size = target tokens.
* MRM: MSE(h(v_k), f(v_k)) averaged over the feature dimension, plus CE(g(v_k), C(v_k)) where
  the region has a class, summed over the masked regions k; sample size = masked regions.
* VLM: binary cross-entropy (a 2-way softmax) of matched / not matched; sample size = pairs.

Every objective's loss (per sample-size unit, in nats) and accuracy (masked/target tokens
predicted, region classes predicted, VLM labels predicted; MRM without classes has none) is
logged on its own as ``{objective}_loss`` / ``{objective}_acc``, beside fairseq's ``loss``.
"""

import math

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion

from ..data.batch_keys import (
    MRM_CLASSES,
    MRM_MASKED,
    MRM_TARGET,
    PRETRAINING_OBJECTIVE,
    REGION_CLASS_LOGITS,
    REGION_PREDICTION,
    TOKEN_LOGITS,
    VLM_LABELS,
    VLM_LOGITS,
)
from ..data.m3p_pretraining_schedule import OBJECTIVES
from ..data.m3p_regions import NO_CLASS


@register_criterion("m3p_pretraining")
class M3PPretrainingCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        objective = sample["net_input"][PRETRAINING_OBJECTIVE]
        outputs = model(**sample["net_input"])
        if objective == "mrm":
            loss, sample_size, correct, counted = self.region_loss(outputs, sample)
        elif objective == "vlm":
            logits, labels = outputs[VLM_LOGITS], sample[VLM_LABELS]
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            sample_size, correct, counted = labels.numel(), int((logits.argmax(-1) == labels).sum()), labels.numel()
        else:
            target = sample["target"]
            chosen = target.ne(self.padding_idx)
            logits = outputs[TOKEN_LOGITS][chosen]
            loss = F.cross_entropy(logits.float(), target[chosen], reduction="sum")
            sample_size = counted = int(chosen.sum())
            correct = int((logits.argmax(-1) == target[chosen]).sum())
        logging_output = {"loss": loss.data, "ntokens": sample.get("ntokens", sample_size),
                          "nsentences": sample["nsentences"], "sample_size": sample_size,
                          f"{objective}_loss": loss.data, f"{objective}_size": sample_size,
                          f"{objective}_correct": correct, f"{objective}_counted": counted}
        return loss, sample_size, logging_output

    @staticmethod
    def region_loss(outputs, sample):
        masked = sample[MRM_MASKED]
        prediction, target = outputs[REGION_PREDICTION][masked], sample[MRM_TARGET][masked]
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(-1).sum()
        correct = counted = 0
        if REGION_CLASS_LOGITS in outputs and MRM_CLASSES in sample:
            classes = sample[MRM_CLASSES][masked]
            labelled = classes != NO_CLASS
            logits = outputs[REGION_CLASS_LOGITS][masked][labelled]
            if labelled.any():
                loss = loss + F.cross_entropy(logits.float(), classes[labelled], reduction="sum")
            correct, counted = int((logits.argmax(-1) == classes[labelled]).sum()), int(labelled.sum())
        return loss, int(masked.sum()), correct, counted

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2), sample_size, round=3)
        for objective in OBJECTIVES:
            size = total(f"{objective}_size")
            if size:
                loss = total(f"{objective}_loss")
                metrics.log_scalar(f"{objective}_loss", float(loss) / size, size, round=4)
            counted = total(f"{objective}_counted")
            if counted:
                metrics.log_scalar(f"{objective}_acc", 100.0 * total(f"{objective}_correct") / counted, counted,
                                   round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
