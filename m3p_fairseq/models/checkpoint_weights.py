"""Weights of one fairseq checkpoint copied into (part of) another model: read safely, and every
tensor matched by name and shape, for the options that start a model from another one's file
(--pretrained-vlp-encoder, --init-from-text-model)."""

import os
from typing import Dict, List, Tuple

import torch
from torch import Tensor


def read_model_state(path: str, option: str, expected: str, error: type) -> Dict[str, Tensor]:
    """The ``model`` state dict of the checkpoint ``path`` given to ``option``; a missing file, an
    unsafe pickle or another kind of file raise (``error`` for the latter two), naming both."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{option} {path}: no such file (expected {expected})")
    try:  # weights_only: a checkpoint is a pickle; the plugin allow-lists what fairseq stores in one
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as failure:
        raise error(f"{option} {path}: cannot read it safely (torch.load(weights_only=True)): {failure}") from failure
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict):
        raise error(f"{option} {path}: not a fairseq checkpoint (no 'model' state dict; expected {expected})")
    return model


def mismatches(weights: Dict[str, Tensor], own: Dict[str, Tensor]) -> Tuple[List[str], List[str], List[str]]:
    """(names only ``own`` has, names only ``weights`` has, "name: checkpoint SHAPE, model SHAPE"
    of the common names whose shapes differ), each sorted."""
    mismatched = [f"{name}: checkpoint {tuple(weights[name].shape)}, model {tuple(own[name].shape)}"
                  for name in sorted(set(own) & set(weights)) if weights[name].shape != own[name].shape]
    return sorted(set(own) - set(weights)), sorted(set(weights) - set(own)), mismatched
