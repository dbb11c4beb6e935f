"""Weights of an M3P pre-training model carried over into a ``multimodal_translation`` model
(``m3p_transformer``): the generation encoder-decoder is the one that translates.

Carried over (names on the translation side):

* ``encoder.text_encoder.layers.i``  <- ``generation_encoder.layers.i`` (self-attention split into
  q/k/v, feed-forward, both layer norms)
* ``decoder.layers.i``               <- ``generation_decoder.layers.i`` (also the cross-attention)
* the piece embeddings (shared by encoder, decoder and output in ``m3p_transformer``)
* ``encoder.image_encoder.projection`` <- the region projection (same feature width)

Not carried over: positions (learned in pre-training, sinusoidal in ``m3p_transformer``), the
language embedding, the 5-D box projection (the translation model's image encoder has learned
patch positions instead), the understanding encoder and every pre-training head; the
translation model's fusion, MMCL head and image-encoder layers keep their fresh initialisation.
Both models must have the same width, heads, feed-forward width, layer counts, dictionary, and
GELU activations (``--activation-fn gelu``); anything else is refused with the parameter named.
"""

from typing import Dict, List, Tuple

from torch import Tensor


def _attention(src: str, dst: str, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """torch's packed in_proj -> fairseq's q/k/v projections."""
    mapped = {}
    for kind in ("weight", "bias"):
        for name, chunk in zip(("q_proj", "k_proj", "v_proj"), state[f"{src}.in_proj_{kind}"].chunk(3, dim=0)):
            mapped[f"{dst}.{name}.{kind}"] = chunk
        mapped[f"{dst}.out_proj.{kind}"] = state[f"{src}.out_proj.{kind}"]
    return mapped


def _linear(src: str, dst: str, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {f"{dst}.{kind}": state[f"{src}.{kind}"] for kind in ("weight", "bias")}


def encoder_layer(src: str, dst: str, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {**_attention(f"{src}.self_attn", f"{dst}.self_attn", state),
            **_linear(f"{src}.linear1", f"{dst}.fc1", state), **_linear(f"{src}.linear2", f"{dst}.fc2", state),
            **_linear(f"{src}.norm1", f"{dst}.self_attn_layer_norm", state),
            **_linear(f"{src}.norm2", f"{dst}.final_layer_norm", state)}


def decoder_layer(src: str, dst: str, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {**_attention(f"{src}.self_attn", f"{dst}.self_attn", state),
            **_attention(f"{src}.multihead_attn", f"{dst}.encoder_attn", state),
            **_linear(f"{src}.linear1", f"{dst}.fc1", state), **_linear(f"{src}.linear2", f"{dst}.fc2", state),
            **_linear(f"{src}.norm1", f"{dst}.self_attn_layer_norm", state),
            **_linear(f"{src}.norm2", f"{dst}.encoder_attn_layer_norm", state),
            **_linear(f"{src}.norm3", f"{dst}.final_layer_norm", state)}


def translation_weights(pretraining_state: Dict[str, Tensor], translation_state: Dict[str, Tensor],
                        encoder_layers: int, decoder_layers: int) -> Dict[str, Tensor]:
    """The translation-side parameters the pre-training state gives (see the module's list)."""
    mapped = {}
    for i in range(encoder_layers):
        mapped.update(encoder_layer(f"generation_encoder.layers.{i}", f"encoder.text_encoder.layers.{i}",
                                    pretraining_state))
    for i in range(decoder_layers):
        mapped.update(decoder_layer(f"generation_decoder.layers.{i}", f"decoder.layers.{i}", pretraining_state))
    for name in ("encoder.text_encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                 "decoder.output_projection.weight"):
        if name in translation_state:
            mapped[name] = pretraining_state["embeddings.tokens.weight"]
    if "embeddings.region_projection.weight" in pretraining_state:
        mapped.update(_linear("embeddings.region_projection", "encoder.image_encoder.projection", pretraining_state))
    return mapped


def load_pretraining_into_translation(pretraining_model, translation_model) -> Tuple[List[str], List[str]]:
    """Copies the carried-over weights in place; returns (copied names, translation parameters
    left as they were). Refuses a mismatch of sizes or activations, naming it."""
    layers = translation_model.encoder.text_encoder.layers
    if len(layers) != len(pretraining_model.generation_encoder.layers) or \
            len(translation_model.decoder.layers) != len(pretraining_model.generation_decoder.layers):
        raise ValueError(f"layer counts differ: the translation model has {len(layers)} encoder and "
                         f"{len(translation_model.decoder.layers)} decoder layers, the pre-training model "
                         f"{len(pretraining_model.generation_encoder.layers)} and "
                         f"{len(pretraining_model.generation_decoder.layers)}")
    if layers[0].activation_fn.__name__ != "gelu":
        raise ValueError(f"the pre-training model uses GELU, the translation model "
                         f"{layers[0].activation_fn.__name__}: train it with --activation-fn gelu")
    target = translation_model.state_dict()
    mapped = translation_weights(pretraining_model.state_dict(), target, len(layers),
                                 len(translation_model.decoder.layers))
    for name, value in mapped.items():
        if name not in target:
            raise ValueError(f"the translation model has no parameter {name} (a pre-training weight maps onto it)")
        if target[name].shape != value.shape:
            raise ValueError(f"{name}: the translation model's is {tuple(target[name].shape)}, the pre-training "
                             f"model gives {tuple(value.shape)} (width, heads, dictionary and feature width must "
                             "match)")
    translation_model.load_state_dict({**target, **mapped})
    return sorted(mapped), sorted(set(target) - set(mapped))


def write_initial_checkpoint(pretraining_checkpoint: str, output: str, translation_args: List[str]
                             ) -> Tuple[List[str], List[str]]:
    """A checkpoint of the translation model that ``translation_args`` (fairseq-train's
    arguments, DATA first) describe, with the pre-training weights carried over; start
    fine-tuning from it with ``fairseq-train ... --finetune-from-model OUTPUT`` (fairseq then
    resets optimizer, schedule and data position). Written atomically."""
    import torch
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    from ..atomic_io import atomic_path

    models, _ = checkpoint_utils.load_model_ensemble([pretraining_checkpoint])
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=translation_args))
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    copied, kept = load_pretraining_into_translation(models[0], model)
    # the config as fairseq's trainer saves it: plain containers (checkpoints load with weights_only)
    state = {"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": model.state_dict(), "extra_state": {"train_iterator": {"epoch": 1}},
             "optimizer_history": [{"criterion_name": "none (initialised from pre-training)",
                                    "optimizer_name": "none", "lr_scheduler_state": {"best": None},
                                    "num_updates": 0}],
             "m3p_pretraining_transfer": {"from": str(pretraining_checkpoint), "copied": copied, "kept": kept}}
    with atomic_path(output) as temporary:
        torch.save(state, temporary)
    return copied, kept


def main(argv=None) -> int:
    """``python scripts/pretraining_to_translation.py PRETRAINING.pt OUTPUT.pt DATA --task
    multimodal_translation --arch ... --activation-fn gelu ...``"""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    copied, kept = write_initial_checkpoint(argv[0], argv[1], argv[2:])
    print(f"{argv[1]}: {len(copied)} tensors carried over from {argv[0]}, {len(kept)} left as initialised")
    return 0
