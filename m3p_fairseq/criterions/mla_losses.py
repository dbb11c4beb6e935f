"""The two training stages of MLA (paper Sec. 3.2) as fairseq criteria.

``--criterion mla_nlt``  Native Language Transfer, Eq. 12: L = 1/B sum_i ||s_i - t_i||^2 between the
                        frozen native encoding s_i of a sentence and the acquisition encoding t_i of
                        its translation.
``--criterion mla_le``   Language Exposure, Eqs. 13-15: L = 1/2 (L_v2t + L_t2v), the symmetric InfoNCE
                        over the batch with cosine similarity and temperature tau (0.01), against
                        the frozen vision tower's image embeddings v_i (the project's
                        :func:`~m3p_fairseq.criterions.mmcl.symmetric_info_nce`, halved).

Both return the summed loss with sample_size = B, so fairseq's normalisation gives the
equations' batch mean; logged losses are in nats. Every other caption of the batch is a negative
(batches hold one language; a caption set with several captions per image makes the other
captions of the same image negatives too, as in CLIP's training).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..data.mla_dataset import MlaDataError
from ..models.mla_model import MLA_IMAGE, MLA_NATIVE, MLA_TEXT
from .mmcl import symmetric_info_nce


def native_transfer_loss(native: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """sum_i ||s_i - t_i||^2 (Eq. 12 times B)."""
    return (native.float() - text.float()).pow(2).sum()


def language_exposure_loss(text: torch.Tensor, image: torch.Tensor, temperature: float):
    """B * L_LE (Eqs. 13-15) and the number of texts and of images whose partner ranks first."""
    per_pair, text_ok, image_ok = symmetric_info_nce(F.normalize(text.float(), dim=-1),
                                                     F.normalize(image.float(), dim=-1),
                                                     torch.tensor(1.0 / temperature, device=text.device))
    return 0.5 * per_pair.sum(), int(text_ok.sum()) + int(image_ok.sum())


class _MlaCriterion(FairseqCriterion):
    def _logging(self, loss, sample, batch_size, **extra):
        return {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": batch_size,
                "sample_size": batch_size, **extra}

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        loss_sum = utils.item(sum(log.get("loss", 0) for log in logging_outputs))
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1), sample_size, round=4)
        correct = sum(log.get("correct", 0) for log in logging_outputs)
        if any("correct" in log for log in logging_outputs):
            metrics.log_scalar("in_batch_accuracy", 100.0 * correct / max(2 * sample_size, 1), sample_size, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("mla_nlt", dataclass=FairseqDataclass)
class NativeLanguageTransferLoss(_MlaCriterion):
    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        if MLA_NATIVE not in out:
            raise MlaDataError("--criterion mla_nlt needs native translations: DATA/{split}.<native-lang> "
                               "aligned with each non-native caption file")
        loss = native_transfer_loss(out[MLA_NATIVE], out[MLA_TEXT])
        batch_size = out[MLA_TEXT].shape[0]
        return loss, batch_size, self._logging(loss, sample, batch_size)


@dataclass
class LanguageExposureConfig(FairseqDataclass):
    temperature: float = field(default=0.01, metadata={"help": "tau of Eqs. 14-15"})


@register_criterion("mla_le", dataclass=LanguageExposureConfig)
class LanguageExposureLoss(_MlaCriterion):
    def __init__(self, task, temperature: float = 0.01):
        super().__init__(task)
        if temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        if MLA_IMAGE not in out:
            raise MlaDataError("--criterion mla_le needs image embeddings: --image-embeddings FILE.h5 "
                               "(python -m preprocess.mla_image_embeddings) and DATA/{split}.image_ids")
        loss, correct = language_exposure_loss(out[MLA_TEXT], out[MLA_IMAGE], self.temperature)
        batch_size = out[MLA_TEXT].shape[0]
        return loss, batch_size, self._logging(loss, sample, batch_size, correct=correct)
