"""Copy the encoder of a ``--task vlp_pretraining`` checkpoint into a VLP-MMT model (Algorithm 1,
step 5 starts from the encoder of steps 2 and 4)."""

from typing import Dict

from torch import Tensor

from .checkpoint_weights import mismatches, read_model_state
from .vlp_encoder import VLPEncoder

ENCODER_PREFIX = "encoder."
# what pre-training trains of the encoder; the MMT model's linear layer to the decoder is new
PRETRAINED_PARTS = ("text_encoder.", "image_encoder.")


class VLPCheckpointError(ValueError):
    pass


def encoder_state(checkpoint: str) -> Dict[str, Tensor]:
    model = read_model_state(checkpoint, "--pretrained-vlp-encoder",
                             "a checkpoint written by fairseq-train --task vlp_pretraining", VLPCheckpointError)
    wanted = {key[len(ENCODER_PREFIX):]: value for key, value in model.items()
              if key.startswith(ENCODER_PREFIX) and key[len(ENCODER_PREFIX):].startswith(PRETRAINED_PARTS)}
    if not wanted:
        raise VLPCheckpointError(f"{checkpoint} holds no VLP encoder (keys encoder.text_encoder.*, "
                                 f"encoder.image_encoder.*): was it trained with --task vlp_pretraining?")
    return wanted


def load_vlp_encoder(encoder: VLPEncoder, checkpoint: str) -> None:
    """Every pre-trained tensor must find its place with its shape; one error lists what does not."""
    wanted = encoder_state(checkpoint)
    own = {key: value for key, value in encoder.state_dict().items() if key.startswith(PRETRAINED_PARTS)}
    missing, unexpected, mismatched = mismatches(wanted, own)
    if missing or unexpected or mismatched:
        raise VLPCheckpointError(
            f"the encoder of {checkpoint} does not fit this model (give it the pre-training's encoder "
            f"sizes and the same data dictionary): missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"different shapes {mismatched[:5]}")
    encoder.load_state_dict(wanted, strict=False)
