"""Initialise the decoder-only model from a local Llama-style checkpoint (no network):

    DIR/config.json          Hugging Face LlamaConfig fields (hidden_size, num_hidden_layers, ...)
    DIR/*.safetensors        the weights, possibly in shards (model.embed_tokens.weight,
                             model.layers.{i}.self_attn.q_proj.weight, ..., lm_head.weight)
    DIR/tokenizer.model      its SentencePiece model

The blocks of m3p_fairseq/models/causal_lm.py carry the same names, so every layer tensor is
copied as is; the sizes come from config.json. Embedding (and output) rows are matched by piece:
our dictionary's symbol -> the tokenizer's id, so binarize with ``--spm-model DIR/tokenizer.model``
and most rows are Llama's; the rest (fairseq's specials, the __xx__ language tags) keep their
random initialisation. Only ``safetensors`` (installed with timm) and sentencepiece are needed.
"""

import json
import logging
from pathlib import Path
from typing import Dict

import sentencepiece as spm
import torch
from fairseq.data import Dictionary

from .causal_lm import CausalTransformer

logger = logging.getLogger(__name__)

# config.json field -> our option
SIZE_OPTIONS = {
    "hidden_size": "decoder_embed_dim",
    "intermediate_size": "decoder_ffn_embed_dim",
    "num_hidden_layers": "decoder_layers",
    "num_attention_heads": "decoder_attention_heads",
    "num_key_value_heads": "decoder_kv_heads",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
}
VOCABULARY_TENSORS = ("embed_tokens.weight", "lm_head.weight")


class LlamaCheckpointError(ValueError):
    pass


def _files(directory) -> Dict[str, object]:
    directory = Path(directory)
    shards = sorted(directory.glob("*.safetensors"))
    missing = [name for name, found in (("config.json", (directory / "config.json").is_file()),
                                        ("*.safetensors", bool(shards)),
                                        ("tokenizer.model", (directory / "tokenizer.model").is_file())) if not found]
    if missing:
        raise LlamaCheckpointError(f"--pretrained-llama {directory}: missing {', '.join(missing)} (expected a "
                                   "directory with config.json, *.safetensors and tokenizer.model)")
    return {"config": directory / "config.json", "shards": shards, "tokenizer": directory / "tokenizer.model"}


def read_llama_config(directory) -> dict:
    path = _files(directory)["config"]
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise LlamaCheckpointError(f"{path}: not JSON ({error})") from error
    absent = [key for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
              if key not in config]
    if absent:
        raise LlamaCheckpointError(f"{path} lacks {', '.join(absent)}")
    if config.get("hidden_act", "silu") != "silu":
        raise LlamaCheckpointError(f"{path}: hidden_act {config['hidden_act']!r}; the Llama blocks use silu (SwiGLU)")
    return config


def apply_llama_sizes(config: dict) -> dict:
    """Our options for the checkpoint's sizes."""
    options = {ours: config[theirs] for theirs, ours in SIZE_OPTIONS.items() if theirs in config}
    options.setdefault("decoder_kv_heads", config["num_attention_heads"])
    options["untie_embeddings"] = not config.get("tie_word_embeddings", False)
    return options


def load_llama_weights(stack: CausalTransformer, dictionary: Dictionary, directory) -> None:
    from safetensors import safe_open

    files = _files(directory)
    tensors = {}
    for shard in files["shards"]:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                tensors[name[len("model."):] if name.startswith("model.") else name] = f.get_tensor(name)
    ours = stack.state_dict()
    problems = []
    for name, expected in ours.items():
        if name not in tensors:
            problems.append(f"  missing {name}: expected shape {tuple(expected.shape)}")
        elif name not in VOCABULARY_TENSORS and tensors[name].shape != expected.shape:
            problems.append(f"  {name}: shape {tuple(tensors[name].shape)} in the checkpoint, "
                            f"{tuple(expected.shape)} in the model")
        elif name in VOCABULARY_TENSORS and tensors[name].shape[1:] != expected.shape[1:]:
            problems.append(f"  {name}: shape {tuple(tensors[name].shape)} in the checkpoint, "
                            f"(vocabulary, {expected.shape[1]}) expected")
    if problems:
        raise LlamaCheckpointError(f"--pretrained-llama {directory} does not fit the model "
                                   f"({len(problems)} problems):\n" + "\n".join(problems))
    rows = _matching_rows(dictionary, str(files["tokenizer"]), tensors["embed_tokens.weight"].shape[0])
    ours_index = torch.tensor(list(rows.keys()), dtype=torch.long)
    theirs_index = torch.tensor(list(rows.values()), dtype=torch.long)
    with torch.no_grad():
        for name, parameter in stack.named_parameters():
            if name in VOCABULARY_TENSORS:
                parameter[ours_index] = tensors[name][theirs_index].to(parameter.dtype)
            else:
                parameter.copy_(tensors[name])
    unused = sorted(set(tensors) - set(ours))
    logger.info("loaded %s: %d tensors; %d of %d embedding rows matched by piece%s", directory, len(ours),
                len(rows), len(dictionary), f"; not used: {', '.join(unused[:10])}" if unused else "")


def _matching_rows(dictionary: Dictionary, tokenizer: str, vocab_size: int) -> Dict[int, int]:
    """Our row -> the checkpoint's row, for every dictionary symbol that is a piece of the tokenizer."""
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    rows = {}
    for index, symbol in enumerate(dictionary.symbols):
        piece_id = sp.piece_to_id(symbol)
        if sp.id_to_piece(piece_id) == symbol and not sp.is_unknown(piece_id) and piece_id < vocab_size:
            rows[index] = piece_id
    return rows
