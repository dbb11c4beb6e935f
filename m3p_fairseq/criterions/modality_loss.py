"""The VLP-MMT objective (vlp-for-mmt-modality-loss.md, Eqs. 3-5): label-smoothed cross-entropy
plus the attention-based modality loss of the chosen decoder layers,

    L = L_XENT + sum_l sum_j lambda_j^(l) (1 - cos(h_x,j^(l), h_v,j^(l)))

with lambda either one fixed number (Eq. 4; 0.4 in the paper's Table 6) or learned per target
token (Eq. 5, ``--modality-lambda learned``, the paper's main results; trained as
:func:`gated_modality_loss` says, so that it does not collapse to 0). Like fairseq's
cross-entropy, the modality term is a sum over the (non-padding) target tokens, so after
fairseq divides by the number of target tokens both are means per token. It is logged on its
own (``modality``: mean 1 - cos per token and layer; ``modality_lambda``: mean lambda).
"""

from dataclasses import dataclass, field
from typing import List, Optional

import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from torch import Tensor

from ..data.batch_keys import (
    MODALITY_LAMBDA,
    MODALITY_LAYERS,
    MODALITY_TARGET,
    MODALITY_TEXT,
    MODALITY_VALID,
    MODALITY_VISUAL,
)

LEARNED = "learned"


def modality_distance(h_x: Tensor, h_v: Tensor) -> Tensor:
    """1 - cos(h_x, h_v) per position (Eq. 3's summand): [..., C] -> [...]."""
    return 1.0 - F.cosine_similarity(h_x, h_v, dim=-1, eps=1e-8)


def modality_loss(h_x: Tensor, h_v: Tensor, token_mask: Tensor, weight) -> Tensor:
    """sum_j weight_j (1 - cos(h_x,j, h_v,j)) over the positions where ``token_mask`` is True
    (Eq. 3 with a fixed ``weight``, Eq. 5 with a [B, T] tensor of lambda_j)."""
    return (weight * modality_distance(h_x, h_v) * token_mask.to(h_x.dtype)).sum()


def gated_modality_loss(h_x: Tensor, h_v: Tensor, token_mask: Tensor, lambdas: Tensor) -> Tensor:
    """Eq. 5 with a learned lambda_j that cannot learn to switch itself off.

    Its value is Eq. 5's, sum_j lambda_j d_j with d_j = 1 - cos(h_x,j, h_v,j). Its gradients:
    the model gets Eq. 5's, lambda_j d_j with lambda_j a given weight; the gate gets the centred
    distance, dL/dlambda_j = d_j - mean(d) (mean over the batch's counted tokens, both detached).
    Eq. 5's own gradient on the gate, d_j >= 0 for every token, only ever lowers lambda_j: its
    minimum is lambda = 0 and the modality loss gone (measured: mean lambda 0.5 -> 0.0002). The
    centred signal keeps what the paper asks of the gate (Sec. 3.3: more weight where the text
    and image attention agree, e.g. content words the detector also saw; less where they do not,
    e.g. function words) without the common push to 0: it raises lambda_j for tokens closer than
    the batch's mean and lowers it for the others."""
    mask = token_mask.to(h_x.dtype)
    distance = modality_distance(h_x, h_v)
    weight = lambdas.detach()
    model_term = (weight * distance * mask).sum()
    detached = distance.detach()
    mean = (detached * mask).sum() / mask.sum().clamp(min=1)
    gate_term = ((lambdas - weight) * (detached - mean) * mask).sum()  # value 0, gradient to the gate only
    return model_term + gate_term


def parse_layers(text: str, num_layers: int) -> List[int]:
    """--modality-layers: "last", "all" or 1-based numbers "1,6" -> 0-based layer indices."""
    text = text.strip().lower()
    if text == "last":
        return [num_layers - 1]
    if text == "all":
        return list(range(num_layers))
    try:
        layers = [int(item) - 1 for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--modality-layers {text!r}: expected last, all, or 1-based layer numbers like 1,6") from None
    if not layers or any(not 0 <= layer < num_layers for layer in layers):
        raise ValueError(f"--modality-layers {text!r}: the decoder has layers 1..{num_layers}")
    return sorted(set(layers))


def parse_lambda(text: str) -> Optional[float]:
    """--modality-lambda: "learned" -> None, else a fixed weight >= 0."""
    if text.strip().lower() == LEARNED:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--modality-lambda {text!r}: expected 'learned' or a number such as 0.4") from None
    if value < 0:
        raise ValueError(f"--modality-lambda must be >= 0, got {value}")
    return value


@dataclass
class ModalityLossConfig(LabelSmoothedCrossEntropyCriterionConfig):
    modality_lambda: str = field(
        default=LEARNED,
        metadata={"help": "weight of the modality loss: 'learned' (lambda_j per target token, Eq. 5, "
                          "the paper's main setting) or a fixed number (Eq. 4; the paper's fixed value "
                          "is 0.4); 0 = cross-entropy only"},
    )
    modality_layers: str = field(
        default="last",
        metadata={"help": "decoder layers whose modality loss is added: last (the paper's choice), "
                          "all, or 1-based layer numbers such as 1,6"},
    )


@register_criterion("vlp_mmt_loss", dataclass=ModalityLossConfig)
class ModalityLossCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 modality_lambda=LEARNED, modality_layers="last"):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.fixed_lambda = parse_lambda(modality_lambda)
        self.layers_option = modality_layers
        parse_layers(modality_layers, 1000)  # syntax errors now, not at the first batch

    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        if self.fixed_lambda == 0:
            net_output = model(**net_input)
        else:
            try:
                num_layers = model.num_decoder_layers
            except AttributeError:
                raise ValueError(f"--criterion vlp_mmt_loss trains --arch vlp_mmt*, not {type(model).__name__}; "
                                 "use --criterion label_smoothed_cross_entropy") from None
            layers = parse_layers(self.layers_option, num_layers)
            extra_args = {MODALITY_LAYERS: layers}
            if self.fixed_lambda is None:
                extra_args[MODALITY_TARGET] = sample["target"]
            net_output = model(**net_input, **extra_args)
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data, "nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0), "sample_size": sample_size,
        }
        if self.fixed_lambda != 0:
            term, logs = self.modality_term(net_output[1], sample["target"])
            loss = loss + term
            logging_output["loss"] = loss.data
            logging_output.update(logs)
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    def modality_term(self, extra, target: Tensor):
        """(sum over layers of Eq. 3/5, logging sums)."""
        mask = target.ne(self.padding_idx) & extra[MODALITY_VALID][:, None]
        term = target.new_zeros((), dtype=extra[MODALITY_TEXT][0].dtype)
        distance_sum, lambda_sum = 0.0, 0.0
        for index, (h_x, h_v) in enumerate(zip(extra[MODALITY_TEXT], extra[MODALITY_VISUAL])):
            if self.fixed_lambda is None:
                weight = extra[MODALITY_LAMBDA][index]
                term = term + gated_modality_loss(h_x, h_v, mask, weight)
            else:
                weight = self.fixed_lambda
                term = term + modality_loss(h_x, h_v, mask, weight)
            distance_sum += modality_loss(h_x.detach(), h_v.detach(), mask, 1.0)
            if self.fixed_lambda is None:
                lambda_sum += (weight.detach() * mask).sum()
        count = int(mask.sum()) * len(extra[MODALITY_TEXT])
        logs = {"modality_loss": utils.item(distance_sum), "modality_count": count}
        if self.fixed_lambda is None:
            logs["modality_lambda"] = utils.item(lambda_sum)
        return term, logs

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        count = sum(log.get("modality_count", 0) for log in logging_outputs)
        if count == 0:
            return
        distance = sum(log.get("modality_loss", 0) for log in logging_outputs)
        metrics.log_scalar("modality", distance / count, count, round=4)
        if any("modality_lambda" in log for log in logging_outputs):
            lambdas = sum(log.get("modality_lambda", 0) for log in logging_outputs)
            metrics.log_scalar("modality_lambda", lambdas / count, count, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
