"""What does each of MDropNet's paths translate? Scores one m3P checkpoint's text-only path
(Eq. 9), image-only path (Eq. 10: captioning from the image and the target tag) and the fused
path on the first sentences of several splits, each sentence forced through each path.

    python examples/quickstart/probes/mdropnet_paths.py --data WORK/data-bin --checkpoint CKPT \\
        [--splits train,test] [--lang-pairs en-de,de-en] [--sentences 300] [--beam 1]

With the training split beside a test split, the image-only path shows whether the model reads
images it was trained on better than new ones (memorised them): its input is the image alone,
whatever the source. The training sources are read as they are on disk, without MMA's masking
(in the quickstart, half of them are degraded), so the text paths are not comparable across splits.
A synthetic caption has one correct translation: ``exact`` is the share of hypotheses equal to
their reference; BLEU is sacreBLEU's, as ``m3p-evaluate`` reports it.
"""

import argparse
from typing import Dict

from m3p_fairseq.evaluation.probes import first_sentences, through_mdropnet_path
from m3p_fairseq.evaluation.scoring import corpus_scores
from m3p_fairseq.evaluation.translation import load, translate_dataset
from m3p_fairseq.markdown import markdown_table
from m3p_fairseq.models.mdropnet import IMAGE_ONLY, MODALITY_NAMES, TEXT_AND_IMAGE, TEXT_ONLY

PATHS = (IMAGE_ONLY, TEXT_ONLY, TEXT_AND_IMAGE)


def exact_share(hypotheses, references) -> float:
    return 100.0 * sum(h == r for h, r in zip(hypotheses, references)) / len(references)


def main(argv=None) -> Dict[str, Dict[str, Dict[str, dict]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the binarized data directory (with image features)")
    parser.add_argument("--checkpoint", required=True, help="an m3P checkpoint trained with MDropNet")
    parser.add_argument("--splits", default="train,test")
    parser.add_argument("--lang-pairs", default="en-de,de-en")
    parser.add_argument("--sentences", type=int, default=300, help="the first N sentences of each split and direction")
    parser.add_argument("--beam", type=int, default=1)
    args = parser.parse_args(argv)
    models, task = load(args.checkpoint, args.data)
    manager = task.data_manager
    results: Dict[str, Dict[str, Dict[str, dict]]] = {}
    rows = []
    for split in args.splits.split(","):
        for pair in args.lang_pairs.split(","):
            src, tgt = pair.split("-")
            # one direction as an evaluation split loads it: no MMA masking, even for the training split
            dataset = first_sentences(manager.load_direction(manager.data_directory(), split, src, tgt), args.sentences)
            for mode in PATHS:
                hypotheses, references = translate_dataset(models, task, through_mdropnet_path(dataset, mode), args.beam)
                scores = {"exact": exact_share(hypotheses, references), "bleu": corpus_scores(hypotheses, references)["bleu"],
                          "sentences": len(references)}
                results.setdefault(split, {}).setdefault(pair, {})[MODALITY_NAMES[mode]] = scores
                rows.append([split, pair, MODALITY_NAMES[mode], scores["sentences"],
                             f"{scores['exact']:.1f}", f"{scores['bleu']:.1f}"])
    print(markdown_table(["split", "direction", "MDropNet path", "sentences", "exact, %", "BLEU"], rows, align="lll"))
    return results


if __name__ == "__main__":
    main()
