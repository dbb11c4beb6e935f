"""Initialise the text encoder and the token embeddings from a local XLM-R (RoBERTa) checkpoint.

The checkpoint is read in fairseq's ``xlmr.base`` layout: a directory holding ``model.pt``
(``{"args" or "cfg": ..., "model": state_dict}`` of a RoBERTa model), ``dict.txt`` and
``sentencepiece.bpe.model`` (the latter is only needed to binarize the data, see
``preprocess/binarize.py --dict --spm-model``).

RoBERTa's ``encoder.sentence_encoder`` is a fairseq TransformerEncoder, so its weights map one
to one onto ours once the names of older checkpoints are brought up to date
(:func:`roberta_to_transformer_encoder`). Token embeddings are copied row by row *by symbol*,
so our dictionary (XLM-R's plus language tags and ``<mask>``) need not share XLM-R's indices;
symbols XLM-R does not know (the language tags) keep their random initialisation.
"""

import logging
import os
import re
from typing import Dict, Iterable, List, Tuple

import torch
from fairseq.data import Dictionary
from torch import Tensor, nn

from ..data.data_dir import DICTIONARY_FILE  # xlmr.base names it as fairseq does
from ..data.vocabulary import MASK_SYMBOL

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"
# Where RoBERTa keeps its TransformerEncoder; checkpoints of 2019 (roberta.base, xlmr.base)
# still call the RobertaEncoder "decoder".
ROBERTA_ENCODER_PREFIXES = ("encoder.sentence_encoder.", "decoder.sentence_encoder.")
# Buffers, not weights: nothing to copy, and their absence means nothing.
NON_PARAMETER_KEYS = re.compile(r"(^|\.)(version|_float_tensor)$")
_IN_PROJ = re.compile(r"^(layers\.\d+\.self_attn\.)in_proj_(weight|bias)$")
# Below this share of our symbols found in XLM-R's dictionary, the data most likely was not
# binarized with XLM-R's vocabulary.
_LOW_OVERLAP = 0.5


class PretrainedTextEncoderError(ValueError):
    pass


def checkpoint_files(path: str) -> Tuple[str, str]:
    """(model.pt, dict.txt) of ``path``: a directory in the xlmr.base layout, or its model.pt."""
    expected = (f"expected a directory with {CHECKPOINT_FILE} and {DICTIONARY_FILE}, as in fairseq's "
                f"xlmr.base.tar.gz, or its {CHECKPOINT_FILE}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--pretrained-text-encoder {path}: no such directory or file ({expected})")
    model_file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path
    dict_file = os.path.join(os.path.dirname(model_file), DICTIONARY_FILE)
    for required in (model_file, dict_file):
        if not os.path.isfile(required):
            raise FileNotFoundError(f"--pretrained-text-encoder {path}: {required} not found ({expected})")
    return model_file, dict_file


def load_roberta_state_dict(model_file: str) -> Dict[str, Tensor]:
    # weights_only: a checkpoint is a pickle; the plugin allow-lists what fairseq stores in one.
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises a bare UnpicklingError naming the class it refused
        raise PretrainedTextEncoderError(
            f"cannot read {model_file} safely (torch.load(weights_only=True)): {error}\nIf the file is "
            "trusted, keep only its weights: python -c \"import torch; s = torch.load('model.pt', "
            "weights_only=False); torch.save({'model': s['model']}, 'model.pt')\""
        ) from error
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise PretrainedTextEncoderError(f"{model_file} is not a fairseq checkpoint: no 'model' state dict")
    return state["model"]


def roberta_to_transformer_encoder(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """RoBERTa's ``*.sentence_encoder.*`` weights under the names of fairseq's TransformerEncoder.

    Handles the older names: the ``decoder.`` prefix of 2019 checkpoints, ``emb_layer_norm``
    (now ``layernorm_embedding``) and the fused ``self_attn.in_proj_{weight,bias}`` (now
    separate q/k/v projections, stacked in that order). The LM head and buffers are dropped.
    """
    prefix = next((p for p in ROBERTA_ENCODER_PREFIXES if any(k.startswith(p) for k in state_dict)), None)
    if prefix is None:
        raise PretrainedTextEncoderError(
            "no RoBERTa encoder weights in the checkpoint: expected keys starting with "
            f"{' or '.join(ROBERTA_ENCODER_PREFIXES)}, found e.g. {sorted(state_dict)[:5]}"
        )
    converted = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue  # lm_head, classification heads
        name = key[len(prefix):].replace("emb_layer_norm.", "layernorm_embedding.")
        if NON_PARAMETER_KEYS.search(name):
            continue
        fused = _IN_PROJ.match(name)
        if fused:
            layer, kind = fused.groups()
            if tensor.size(0) % 3:
                raise PretrainedTextEncoderError(f"{key}: {list(tensor.shape)} does not split into q, k, v")
            for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[f"{layer}{projection}.{kind}"] = part
        else:
            converted[name] = tensor
    return converted


def load_pretrained_dictionary(dict_file: str, embedding_rows: int) -> Dictionary:
    """XLM-R's dictionary with the indices of its embedding matrix: fairseq's masked-LM task
    appends ``<mask>`` after dict.txt, which therefore lists one symbol fewer than the rows."""
    dictionary = Dictionary.load(dict_file)
    if len(dictionary) == embedding_rows - 1:
        dictionary.add_symbol(MASK_SYMBOL)
    if len(dictionary) != embedding_rows:
        raise PretrainedTextEncoderError(
            f"{dict_file} has {len(dictionary)} symbols (with the special ones) but the checkpoint's "
            f"embedding matrix has {embedding_rows} rows: dict.txt and model.pt do not belong together"
        )
    return dictionary


def check_compatible(converted: Dict[str, Tensor], encoder: nn.Module, source: str) -> None:
    """One error naming every missing, unexpected or differently shaped parameter."""
    expected = {k: v.shape for k, v in encoder.state_dict().items() if not NON_PARAMETER_KEYS.search(k)}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = []
    for name in sorted(set(expected) & set(converted)):
        theirs, ours = converted[name].shape, expected[name]
        if name == "embed_tokens.weight":  # rows are matched by symbol; only the width must agree
            theirs, ours = theirs[1:], ours[1:]
        if theirs != ours:
            mismatched.append(f"  {name}: checkpoint {list(converted[name].shape)}, model {list(expected[name])}")
    problems = []
    if mismatched:
        problems.append("parameters of different shapes (another model size? e.g. --encoder-embed-dim, "
                        "--encoder-ffn-embed-dim, --max-source-positions):\n" + "\n".join(mismatched))
    if missing:
        problems.append("parameters of the model missing from the checkpoint (e.g. "
                        "--encoder-normalize-before, which XLM-R does not use):\n  " + "\n  ".join(missing))
    if unexpected:
        problems.append("checkpoint parameters the model has no place for (more layers than "
                        "--encoder-layers?):\n  " + "\n  ".join(unexpected))
    if problems:
        raise PretrainedTextEncoderError(
            f"the text encoder does not match the pretrained one in {source}; train with "
            "--arch m3p_transformer_xlmr_base (or its sizes). " + "\n".join(problems)
        )


def copy_rows_by_symbol(target: Tensor, dictionary: Dictionary, source: Tensor,
                        source_dictionary: Dictionary) -> Tuple[int, List[str]]:
    """Copies ``source``'s row of every symbol both dictionaries know into ``target``;
    returns (rows copied, symbols left as they were)."""
    ours, theirs, kept = [], [], []
    for index, symbol in enumerate(dictionary.symbols):
        their_index = source_dictionary.indices.get(symbol)
        if their_index is None:
            kept.append(symbol)
        else:
            ours.append(index)
            theirs.append(their_index)
    with torch.no_grad():
        target[torch.tensor(ours, dtype=torch.long)] = source[torch.tensor(theirs, dtype=torch.long)].to(target)
    return len(ours), kept


def load_pretrained_text_encoder(encoder: nn.Module, path: str,
                                 other_embeddings: Iterable[nn.Embedding] = ()) -> None:
    """Copies an XLM-R/RoBERTa checkpoint into ``encoder`` (a fairseq TransformerEncoder).

    Token embeddings are matched by symbol between XLM-R's dictionary and
    ``encoder.dictionary``; ``other_embeddings`` (the decoder's, when not shared with the
    encoder) over the same dictionary get the same rows.
    """
    model_file, dict_file = checkpoint_files(path)
    converted = roberta_to_transformer_encoder(load_roberta_state_dict(model_file))
    check_compatible(converted, encoder, model_file)
    pretrained_embeddings = converted.pop("embed_tokens.weight")
    pretrained_dictionary = load_pretrained_dictionary(dict_file, pretrained_embeddings.size(0))

    result = encoder.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # check_compatible saw to it

    dictionary = encoder.dictionary
    embeddings = [encoder.embed_tokens] + [e for e in other_embeddings if e is not encoder.embed_tokens]
    for embedding in embeddings:
        copied, kept = copy_rows_by_symbol(embedding.weight, dictionary, pretrained_embeddings,
                                           pretrained_dictionary)
    logger.info("text encoder initialised from %s: %d tensors; token embeddings: %d of %d symbols "
                "copied by symbol, %d kept their initialisation (%s)", model_file, len(converted) + 1,
                copied, len(dictionary), len(kept), _preview(kept))
    if copied < _LOW_OVERLAP * len(dictionary):
        logger.warning("only %d of %d symbols of the dictionary are in %s: was the data binarized with "
                       "XLM-R's vocabulary (preprocess/binarize.py --dict %s --spm-model ...)?",
                       copied, len(dictionary), dict_file, dict_file)


def _preview(symbols: List[str], limit: int = 10) -> str:
    shown = ", ".join(symbols[:limit])
    return shown + (f", ... {len(symbols) - limit} more" if len(symbols) > limit else "")
