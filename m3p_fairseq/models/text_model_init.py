"""Start a multimodal model from a text-only one (``--init-from-text-model``).

The paper builds m3P on a pretrained multilingual text model: its language encoder starts as
XLM-R (Sec. 2.1, 3.3). With this option the text encoder, the decoder and the shared
embeddings start from a checkpoint of the plugin's text-only model (``--fusion none``, same
sizes, same data-bin), and only the image side (image encoder, fusion, MMCL head) starts fresh.
MDropNet's text-only path (Eq. 9) then translates exactly as the text-only model, and the fused
path differs from it only by the CVLM's layer norm until training lets the image in (the CVLM's
output projection starts at zero).
"""

from torch import nn

from .checkpoint_weights import mismatches, read_model_state

OPTION = "--init-from-text-model"
# What a text-only model does not have: the modules of the image side.
IMAGE_SIDE_PREFIXES = ("encoder.image_encoder.", "encoder.fusion.", "contrastive_head.")


class TextModelInitError(ValueError):
    pass


def init_from_text_model(model: nn.Module, path: str) -> int:
    """Copies every weight of the checkpoint at ``path`` into ``model``; the model's weights the
    checkpoint lacks must all be image-side. Returns the number of tensors copied."""
    weights = read_model_state(path, OPTION, "a checkpoint of a text-only model, e.g. "
                               "CHECKPOINTS/text-only/checkpoint_last.pt", TextModelInitError)
    missing, unexpected, mismatched = mismatches(weights, model.state_dict())
    text_side_missing = [name for name in missing if not name.startswith(IMAGE_SIDE_PREFIXES)]
    problems = ([f"not in this model: {', '.join(unexpected)}"] if unexpected else []) + \
               ([f"missing from the checkpoint: {', '.join(text_side_missing)}"] if text_side_missing else []) + \
               ([f"other shapes: {'; '.join(mismatched)}"] if mismatched else [])
    if problems:
        raise TextModelInitError(f"{OPTION} {path}: expected a text-only model of this architecture and sizes, "
                                 f"trained on the same data-bin (--fusion none); " + " | ".join(problems))
    model.load_state_dict(weights, strict=False)
    return len(weights)
