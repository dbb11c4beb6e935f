"""``--user-dir`` for tests that watch or stop a real fairseq-train: m3P plus a task that

- records, on each worker, which sample ids every update trained on and the MMCL rows before
  and after gathering across workers, to $M3P_PROBE_DIR/rank{R}.jsonl (when that is set;
  tests/test_distributed_training.py);
- a criterion ``m3p_loss_held`` (m3P's loss) that, with $M3P_PROBE_HOLD=N:FILE, holds the
  update after the N-th until FILE exists, so a test can stop training at a known update
  without racing it (tests/test_sweep.py, tests/test_checkpoints.py): fairseq saves the N-th
  update's checkpoint before the next forward pass. Only training needs this user-dir; the
  checkpoints load with the plain task and model (scripts/evaluate.py)."""

import json
import os
import time

import torch
import torch.distributed as dist
from fairseq.criterions import register_criterion
from fairseq.tasks import register_task

from m3p_fairseq.criterions import m3p_loss
from m3p_fairseq.tasks.multimodal_translation import MultimodalTranslationConfig, MultimodalTranslationTask

_current_update = None
_gather = m3p_loss.gather_across_workers


def _write(record):
    if "M3P_PROBE_DIR" not in os.environ:
        return
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(os.path.join(os.environ["M3P_PROBE_DIR"], f"rank{rank}.jsonl"), "a") as out:
        out.write(json.dumps(record) + "\n")


def _recording_gather(local, group=None):
    joined, offset = _gather(local, group)
    if _current_update is not None and local.dim() == 1:  # the pairs' image identities
        _write({"update": _current_update, "kind": "mmcl_image_rows", "offset": offset,
                "local": local.tolist(), "gathered": joined.tolist()})
    elif _current_update is not None:
        _write({"update": _current_update, "kind": "mmcl", "local_rows": local.size(0), "offset": offset,
                "local": local.detach().sum(1).tolist(), "gathered": joined.detach().sum(1).tolist()})
    return joined, offset


# the criterion looks the function up in its module at call time; record what it returns
m3p_loss.gather_across_workers = _recording_gather


@register_criterion("m3p_loss_held", dataclass=m3p_loss.M3PLossConfig)
class HeldM3PLoss(m3p_loss.M3PLoss):
    def forward(self, model, sample, reduce=True):
        hold = os.environ.get("M3P_PROBE_HOLD")
        if hold and model.training:
            after, gate = hold.split(":", 1)
            # the task's train_step has just given the model the number of updates done
            while model.num_updates >= int(after) and not os.path.exists(gate):
                time.sleep(0.05)
        return super().forward(model, sample, reduce)


@register_task("multimodal_translation_probe", dataclass=MultimodalTranslationConfig)
class RecordingMultimodalTranslationTask(MultimodalTranslationTask):
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        global _current_update
        # fairseq gives a worker whose shard ran out a dummy batch with ignore_grad: not data
        if not ignore_grad:
            _current_update = update_num
            # ids count within each direction: an example is (target-language tag, id)
            src = sample["net_input"]["src_tokens"]
            first_token = (src != self.source_dictionary.pad()).int().argmax(1)
            tags = src[torch.arange(src.size(0)), first_token]
            _write({"update": update_num, "kind": "batch",
                    "examples": [[int(t), int(i)] for t, i in zip(tags, sample["id"])]})
        try:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        finally:
            _current_update = None
