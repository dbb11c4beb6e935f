"""How often one image comes several times in one training batch of the Multi30k recipe (issue 16).

Every direction's line n shows image n, so a multi-way batch can hold one caption's image once
per direction. This simulates the training batches of ``fairseq-train --max-tokens 2048`` over
all directions: the epoch mix of ``TemperatureSampledDataset`` (equal-sized directions: every
example once), its order (shuffled, then stable-sorted by target and then source length, as
``ordered_indices`` does) and fairseq's own ``data_utils.batch_by_size`` (max(source, target)
tokens per sentence, batch sizes a multiple of 8 as fairseq-train's default), then counts the
batches that hold some image at least twice and the pairs whose image is not alone in its batch.

    python examples/multi30k/repeated_images.py --multi30k ../shared/data/multi30k

Lengths are SentencePiece pieces of the recipe's kind (a joint unigram model of 10k pieces
trained here on the normalised training text, or ``--spm-model``), or with
``--lengths whitespace`` whitespace tokens; the source adds the target-language tag, both add
</s>. Multi30k's text is read in place; nothing is written.
"""

import argparse
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import sentencepiece as spm
from fairseq.data import data_utils
from prepare import LANGS, find_layout, normalise, read_text

ENGLISH_CENTRIC = [f"{a}-{b}" for lang in LANGS[1:] for a, b in (("en", lang), (lang, "en"))]
ALL_DIRECTIONS = [f"{src}-{tgt}" for src in LANGS for tgt in LANGS if src != tgt]


def epoch_batches(lengths: Dict[str, np.ndarray], directions: Sequence[str], max_tokens: int,
                  seed: int, batch_multiple: int = 8) -> List[np.ndarray]:
    """The batches of one epoch over ``directions`` (``lengths[lang]``: tokens of line n), as arrays of
    image rows (= line numbers). Source length + 1 for the target-language tag, + 1 for </s>."""
    src, tgt, image = [], [], []
    for direction in directions:
        source_lang, target_lang = direction.split("-")
        src.append(lengths[source_lang] + 2)
        tgt.append(lengths[target_lang] + 1)
        image.append(np.arange(len(lengths[source_lang])))
    src, tgt, image = np.concatenate(src), np.concatenate(tgt), np.concatenate(image)
    with data_utils.numpy_seed(seed):  # fairseq seeds numpy for ordered_indices
        indices = np.random.permutation(len(src))
    indices = indices[np.argsort(tgt[indices], kind="mergesort")]
    indices = indices[np.argsort(src[indices], kind="mergesort")]
    num_tokens = np.maximum(src, tgt).astype(np.int64)
    batches = data_utils.batch_by_size(indices, num_tokens_fn=lambda i: num_tokens[i], max_tokens=max_tokens,
                                       required_batch_size_multiple=batch_multiple, num_tokens_vec=num_tokens[indices])
    return [image[batch] for batch in batches]


def repeated_image_shares(batches: Sequence[np.ndarray]) -> Dict[str, float]:
    """Share of batches with some image twice or more, and of pairs whose image is not alone."""
    with_repeat = pairs = hit_pairs = 0
    for rows in batches:
        _, counts = np.unique(rows, return_counts=True)
        with_repeat += bool((counts > 1).any())
        hit_pairs += int(counts[counts > 1].sum())
        pairs += len(rows)
    return {"batches": len(batches), "batches_with_repeat": with_repeat / len(batches),
            "pairs": pairs, "pairs_with_repeat": hit_pairs / pairs,
            "mean_batch_size": pairs / len(batches)}


def token_lengths(texts: Dict[str, List[str]], mode: str, spm_model: str = None) -> Dict[str, np.ndarray]:
    if mode == "whitespace":
        return {lang: np.array([len(line.split()) for line in lines]) for lang, lines in texts.items()}
    if spm_model:
        processor = spm.SentencePieceProcessor(model_file=spm_model)
    else:  # as preprocess/binarize.py trains the recipe's joint model (examples/multi30k/prepare.py)
        import io
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([line for lines in texts.values() for line in lines]), model_writer=model,
            vocab_size=10000, character_coverage=1.0, model_type="unigram", hard_vocab_limit=False,
            bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2, num_threads=1)
        processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return {lang: np.array([len(ids) for ids in processor.encode(lines)]) for lang, lines in texts.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multi30k", required=True, type=Path, help="Multi30k copy (raw/ and image_splits/)")
    parser.add_argument("--split", default="train", help="Multi30k split name (default: train)")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--lengths", choices=["spm", "whitespace"], default="spm")
    parser.add_argument("--spm-model", help="an existing SentencePiece model instead of training one")
    parser.add_argument("--seeds", default="1,2,3", help="shuffle seeds (one epoch each)")
    args = parser.parse_args(argv)
    text_dir, _ = find_layout(args.multi30k)
    texts = {lang: [normalise(line) for line in read_text(text_dir, f"{args.split}.{lang}")] for lang in LANGS}
    lengths = token_lengths(texts, args.lengths, args.spm_model)
    print("| directions | lengths | batches/epoch | mean sentences/batch | batches with a repeated image "
          "| pairs whose image repeats in its batch |\n|---|---|---|---|---|---|")
    for name, directions in (("6 (en<->de,fr,cs)", ENGLISH_CENTRIC), ("12 (all)", ALL_DIRECTIONS)):
        shares = [repeated_image_shares(epoch_batches(lengths, directions, args.max_tokens, int(seed)))
                  for seed in args.seeds.split(",")]
        mean = {key: float(np.mean([s[key] for s in shares])) for key in shares[0]}
        print(f"| {name} | {args.lengths} | {mean['batches']:.0f} | {mean['mean_batch_size']:.1f} "
              f"| {100 * mean['batches_with_repeat']:.1f} % | {100 * mean['pairs_with_repeat']:.2f} % |")


if __name__ == "__main__":
    main()
