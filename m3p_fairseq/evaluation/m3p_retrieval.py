"""Multilingual image-text retrieval with the M3P model, scored per language (paper Table 2):

    python scripts/m3p_retrieval.py --data DATA --checkpoint NAME=PATH [--checkpoint ...] \
        --langs en,de,fr,cs [--split test] [--output results.json]

A checkpoint is either a pre-training checkpoint (``--task m3p_pretraining``: Table 2's "without
fine-tuning") or a fine-tuned one (``--task m3p_retrieval``); both rank with the VLM head: the
score of (image i, caption c) is log p(match) of the understanding encoder over ``<s> c </s>``
followed by i's regions, for every image-caption pair of the split (a cross-encoder, as the
paper's fine-tuned model; the cost is images x captions forward passes).

Each image of the split is ranked once however many captions it has (``{split}.image_ids`` lists
one id per caption); Recall@1/5/10 in both directions and mR come from
:mod:`m3p_fairseq.evaluation.retrieval`. A split sharing an image with the training split
(``{train-split}.image_ids``) is refused, naming the id and both files. Prints one Markdown table
per checkpoint (rows = languages); ``--output`` writes ``{name: {lang: scores}}`` as JSON.
"""

import argparse
import json
import logging
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..atomic_io import atomic_write_text
from ..data.batch_keys import PRETRAINING_OBJECTIVE, REGION_FEATURES, REGION_SPATIAL, SOURCE_LANG, VLM_LOGITS
from ..data.data_dir import DataDirectory
from ..data.image_features import read_image_ids
from ..data.languages import split_languages
from ..data.m3p_retrieval_dataset import VLM_OBJECTIVE, load_captions, with_bos
from .retrieval import caption_image_index, check_disjoint_images, retrieval_scores, scores_table

logger = logging.getLogger(__name__)
MATCHED = 1  # the VLM label of a matched pair (batch_keys.VLM_LABELS)


def load_retrieval_model(checkpoint: str, data: str):
    """(model, task) of an M3P pre-training or retrieval checkpoint, reading ``data``."""
    from ..models.m3p_pretraining_model import M3PPretrainingModel
    from .translation import load

    models, task = load(checkpoint, data)
    model = models[0]
    if not isinstance(model, M3PPretrainingModel):
        raise ValueError(f"{checkpoint}: a {type(model).__name__}, not an M3P pre-training or retrieval model "
                         "(--arch m3p_pretraining_*): only those have the VLM head retrieval ranks with")
    if not model.embeddings.has_images:
        raise ValueError(f"{checkpoint}: the model was pre-trained on text alone (no image stream)")
    return model, task


@torch.no_grad()
def vlm_similarity(model, captions: Sequence[torch.Tensor], lang_index: int, features: torch.Tensor,
                   spatial: torch.Tensor, pad: int, batch_size: int = 256) -> torch.Tensor:
    """[images, captions] log p(match) of every (image, caption) pair; ``captions`` are token rows
    starting with ``<s>``, ``features``/``spatial`` the images' regions [images, P, D] / [images, P, 5]."""
    device = next(model.parameters()).device
    tokens = torch.nn.utils.rnn.pad_sequence(list(captions), batch_first=True, padding_value=pad).to(device)
    features, spatial = features.to(device), spatial.to(device)
    num_images, num_captions = features.size(0), tokens.size(0)
    scores = torch.empty(num_images * num_captions, dtype=torch.float64)
    for start in range(0, scores.numel(), batch_size):
        pair = torch.arange(start, min(start + batch_size, scores.numel()), device=device)
        image, caption = pair // num_captions, pair % num_captions
        text = tokens[caption]
        text = text[:, :int(text.ne(pad).sum(1).max())]  # drop the columns that are padding in this chunk
        logits = model(**{PRETRAINING_OBJECTIVE: VLM_OBJECTIVE, SOURCE_LANG: torch.full_like(pair, lang_index),
                          "src_tokens": text, REGION_FEATURES: features[image],
                          REGION_SPATIAL: spatial[image]})[VLM_LOGITS]
        scores[pair.cpu()] = F.log_softmax(logits.double(), dim=-1)[:, MATCHED].cpu()
    return scores.view(num_images, num_captions)


def evaluate_checkpoint(checkpoint: str, data: str, langs: Sequence[str], split: str = "test",
                        train_split: Optional[str] = "train", batch_size: int = 256) -> Dict[str, Dict[str, float]]:
    """``{lang: scores}`` of one checkpoint on ``split``'s captions of each language."""
    model, task = load_retrieval_model(checkpoint, data)
    dictionary = task.source_dictionary
    regions = task.regions(split, required_by="retrieval scores")
    captions = load_captions(data, split, langs, dictionary, regions)
    if captions.left_out:
        logger.warning("%s: %d captions left out: the feature file flags their images unusable", captions.ids_path,
                       captions.left_out)
    images: List[str] = list(dict.fromkeys(captions.image_ids))
    train_ids = DataDirectory(data).image_id_list(train_split) if train_split and train_split != split else None
    if train_ids is not None:
        check_disjoint_images(images, read_image_ids(train_ids), captions.ids_path, str(train_ids))
    caption_image = caption_image_index(captions.image_ids, images, captions.ids_path)
    read = [regions.read(int(row)) for row in regions.store.rows_for(images, captions.ids_path)]
    features, spatial = torch.stack([r[0] for r in read]), torch.stack([r[1] for r in read])
    max_positions = model.max_positions()
    results = {}
    for lang in langs:
        rows = [with_bos(tokens, dictionary, max_positions) for tokens in captions.text[lang]]
        similarity = vlm_similarity(model, rows, task.lang_tag_index(lang), features, spatial, dictionary.pad(),
                                    batch_size)
        results[lang] = retrieval_scores(similarity, caption_image)
        logger.info("%s %s: %d images, %d captions, mR %.1f", checkpoint, lang, len(images), len(rows),
                    results[lang]["mR"])
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..logging_setup import setup_logging
    from .selection import named_checkpoints

    parser = argparse.ArgumentParser(prog="scripts/m3p_retrieval.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data directory the checkpoints were trained on")
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="NAME=PATH (or PATH, named by its file stem); repeat for several")
    parser.add_argument("--langs", required=True, help="caption languages to score, comma-separated")
    parser.add_argument("--split", default="test", help="split to rank (its captions against its images)")
    parser.add_argument("--train-split", default="train",
                        help="split whose images the scored split must not share ('' to skip the check)")
    parser.add_argument("--batch-size", type=int, default=256, help="image-caption pairs per forward pass")
    parser.add_argument("--output", help="JSON file of {name: {lang: scores}} (written atomically)")
    args = parser.parse_args(argv)
    setup_logging()
    langs = split_languages(args.langs, "--langs")
    results = {}
    for name, path in named_checkpoints(args.checkpoint, parser).items():
        try:
            results[name] = evaluate_checkpoint(path, args.data, langs, args.split, args.train_split or None,
                                                args.batch_size)
        except (ValueError, FileNotFoundError) as error:  # RetrievalError and ImageFeatureError are ValueErrors
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"\n{name} ({args.split}):\n\n{scores_table(results[name])}\n", flush=True)
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    return 0
