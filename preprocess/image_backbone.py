"""The timm backbone of feature extraction: built without classifier, loaded from a local
checkpoint through timm's own pretrained-weight filters (every backbone weight must load), and
run to give each image's patch features and global vector. Used by
preprocess/extract_image_features.py.
"""

import re
import sys
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from m3p_fairseq.serialization import allow_fairseq_checkpoint_globals

FIRST_FEW = 5  # bad images and mismatched keys named in an error message


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded into the backbone; the message names both and what differs."""


def build_backbone(name: str, checkpoint: Optional[Path], random_init_seed: Optional[int],
                   image_size: Optional[int], model_kwargs: Optional[dict] = None) -> torch.nn.Module:
    """A timm model without classifier; ``model_kwargs`` go to ``timm.create_model`` (e.g. a
    smaller ``embed_dim``/``depth`` in tests)."""
    import timm

    if (checkpoint is None) == (random_init_seed is None):
        raise ValueError("give exactly one of --checkpoint (local weights) or --random-init-seed")
    kwargs = {**(model_kwargs or {}), "num_classes": 0}
    if image_size is not None:
        kwargs["img_size"] = image_size  # vision transformers adapt their position table
    if checkpoint is None:
        torch.manual_seed(random_init_seed)
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: file not found")
    if name.startswith(("hf-hub:", "hf_hub:")):  # timm would fetch that model's config and weights
        raise ValueError(f"--backbone {name}: give a timm model name, the weights come from --checkpoint")
    # pretrained=False still gives the model the pretrained_cfg of the name's tag (timm's default
    # tag without one), so timm.data.resolve_model_data_config finds that tag's mean, std and crop
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_checkpoint(model, Path(checkpoint), name)
    return model.eval()


def load_checkpoint(model: torch.nn.Module, checkpoint: Path, backbone: str) -> None:
    """Loads ``checkpoint`` as timm loads pretrained weights, but fails unless every backbone weight
    comes from it and every weight in it has a place.

    We load instead of timm (pretrained=True): once the classifier is dropped (our num_classes=0),
    timm loads non-strictly and would leave backbone weights the checkpoint lacks at random.
    """
    import timm.models

    try:
        # .safetensors or torch.load; unwraps state_dict/model of training checkpoints
        state = timm.models.load_state_dict(str(checkpoint))
        filter_fn = timm_checkpoint_filter(model)
        if filter_fn is not None:
            state = filter_fn(state, model)
        result = model.load_state_dict(without_classifier(state, model), strict=False)
    except RuntimeError as error:  # an unreadable file; strict=False still raises on size mismatches
        raise CheckpointError(describe_load_error(error, checkpoint, backbone)) from error
    finally:
        # timm loads inside torch.serialization.safe_globals([argparse.Namespace]), whose exit
        # removes Namespace from the allow-list again, also our registration of it: fairseq
        # checkpoints would no longer load in this process
        allow_fairseq_checkpoint_globals()
    # a BatchNorm's update counter is no weight
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(describe_mismatch(checkpoint, backbone, [], missing, result.unexpected_keys))


def timm_checkpoint_filter(model: torch.nn.Module):
    """The checkpoint converter timm passes as ``pretrained_filter_fn`` when it builds ``model``,
    or None if its family has none (ResNet).

    timm keeps no reference to it on the model or its pretrained_cfg; by timm's convention each
    model family's module defines it as ``checkpoint_filter_fn(state_dict, model)``, next to the
    model class: vision_transformer's converts OpenAI/open_clip CLIP layouts and resamples the
    position table, byobnet's converts CLIP ResNets. (Families that use another name, or ViT
    variants that bind other resampling options to it, get no or the plain filter; whatever does
    not fit then still fails the key check.)
    """
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def without_classifier(state: dict, model: torch.nn.Module) -> dict:
    """``state`` without the classifier weights the headless model has no place for, as timm drops
    them for num_classes=0: those named by the pretrained_cfg's ``classifier`` (``head`` of ViTs,
    where the CLIP filter puts ``visual.proj``; ``fc`` of ResNets; ``head.proj`` of CLIP ResNets)."""
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    in_model = model.state_dict().keys()
    dropped = {f"{name}.{param}" for name in classifiers for param in ("weight", "bias")} - in_model
    return {key: value for key, value in state.items() if key not in dropped}


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) "
                            r"from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")
_KEY_LIST = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)")


def describe_load_error(error: RuntimeError, checkpoint: Path, backbone: str) -> str:
    """torch's load_state_dict message, summarised; any other error as it is, with a hint."""
    message = str(error)
    sizes = [f"{key} (checkpoint {ours}, backbone {theirs})" for key, ours, theirs in _SIZE_MISMATCH.findall(message)]
    keys = {kind: re.findall(r'"([^"]+)"', listed) for kind, listed in _KEY_LIST.findall(message)}
    if sizes or keys:
        return describe_mismatch(checkpoint, backbone, sizes, keys.get("Missing", []), keys.get("Unexpected", []))
    reason = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    if is_torchscript(checkpoint):
        reason = ("it is a TorchScript archive (like OpenAI's original CLIP .pt files); save its weights first: "
                  f"torch.save(torch.jit.load('{checkpoint}', map_location='cpu').state_dict(), 'weights.pth')")
    return f"cannot load checkpoint {checkpoint} into backbone {backbone}: {reason}"


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def describe_mismatch(checkpoint: Path, backbone: str, sizes: Sequence[str], missing: Sequence[str],
                      unexpected: Sequence[str]) -> str:
    parts = []
    for items, what in ((sizes, "tensor(s) of another shape"),
                        (missing, "backbone weight(s) missing from the checkpoint"),
                        (unexpected, "checkpoint weight(s) the backbone has no place for")):
        if items:
            more = f", ... ({len(items) - FIRST_FEW} more)" if len(items) > FIRST_FEW else ""
            parts.append(f"{len(items)} {what}: {', '.join(items[:FIRST_FEW])}{more}")
    return (f"checkpoint {checkpoint} does not fit backbone {backbone}: {'; '.join(parts)}. Is --backbone the "
            f"architecture the checkpoint was trained as?")


def patch_and_global_features(model: torch.nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """[B, P, D] patch tokens and [B, D] pooled vector, for transformers and CNNs alike."""
    features = model.forward_features(images)
    global_vector = model.forward_head(features, pre_logits=True)
    if features.dim() == 4:  # CNN feature map [B, D, H, W]
        patches = features.flatten(2).transpose(1, 2)
    else:  # token sequence [B, prefix + P, D]
        patches = features[:, getattr(model, "num_prefix_tokens", 0):]
    return patches, global_vector


def backbone_features(model: torch.nn.Module, images: torch.Tensor, device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``patch_and_global_features`` on ``device`` (float16 autocast on CUDA), as float32 on the CPU."""
    with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
        patches, global_vector = patch_and_global_features(model, images.to(device))
    return patches.float().cpu(), global_vector.float().cpu()
