"""Start a multimodal model from a text-only one (``--init-from-text-model``).

The paper builds m3P on a multilingual text model: its language encoder is XLM-R (Sec. 2.1,
3.3), and "our multilingual model is first trained on the multilingual data" (model ④ of
Table 5) before images join. With this option the text encoder, the decoder and the shared
embeddings start from a checkpoint of the plugin's text-only model (``--fusion none``, same
sizes, same data-bin), and only the image side (image encoder, fusion, MMCL head) starts fresh.
MDropNet's text-only path (Eq. 9) then translates exactly as the text-only model, and the fused
path differs from it only by the CVLM's layer norm until training lets the image in (the CVLM's
output projection starts at zero).
"""

import os
from typing import Dict

import torch
from torch import Tensor, nn

OPTION = "--init-from-text-model"
# What a text-only model does not have: the modules of the image side.
IMAGE_SIDE_PREFIXES = ("encoder.image_encoder.", "encoder.fusion.", "contrastive_head.")


class TextModelInitError(ValueError):
    pass


def read_model_state(path: str) -> Dict[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{OPTION} {path}: no such file (expected a checkpoint of a text-only model, "
                                "e.g. CHECKPOINTS/text-only/checkpoint_last.pt)")
    # weights_only: a checkpoint is a pickle; importing the plugin allow-lists what fairseq stores in one.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise TextModelInitError(f"{OPTION} {path}: not a fairseq checkpoint (no 'model' entry)")
    return state["model"]


def init_from_text_model(model: nn.Module, path: str) -> int:
    """Copies every weight of the checkpoint at ``path`` into ``model``; the model's weights the
    checkpoint lacks must all be image-side. Returns the number of tensors copied."""
    weights = read_model_state(path)
    own = model.state_dict()
    unexpected = sorted(set(weights) - set(own))
    text_side_missing = sorted(name for name in set(own) - set(weights) if not name.startswith(IMAGE_SIDE_PREFIXES))
    mismatched = [f"{name}: checkpoint {tuple(weights[name].shape)}, model {tuple(own[name].shape)}"
                  for name in sorted(set(weights) & set(own)) if weights[name].shape != own[name].shape]
    problems = ([f"not in this model: {', '.join(unexpected)}"] if unexpected else []) + \
               ([f"missing from the checkpoint: {', '.join(text_side_missing)}"] if text_side_missing else []) + \
               ([f"other shapes: {'; '.join(mismatched)}"] if mismatched else [])
    if problems:
        raise TextModelInitError(f"{OPTION} {path}: expected a text-only model of this architecture and sizes, "
                                 f"trained on the same data-bin (--fusion none); " + " | ".join(problems))
    model.load_state_dict(weights, strict=False)
    return len(weights)
