"""Is the plugin's text-only path exactly plain fairseq? Put the baseline's trained weights into
the recipe's model and translate with the recipe's evaluation; equal hypotheses mean that the
two pipelines (data, language tags, beam search, detokenization) agree, so a score gap between
the two systems of a comparison comes from their training, not from the plugin's generation.

    python examples/multi30k/same_weights.py --work-dir work/multi30k \
        --out-dir work/multi30k/compare-cpu-text-only --directions de-en,en-cs

Reads OUT/checkpoints/{CONFIG,fairseq-baseline}/checkpoint_last.pt and compares with the
baseline's saved hypotheses OUT/hyp/fairseq-baseline/SPLIT.SRC-TGT.txt (compare.py writes both).
The recipe's dictionary may have symbols the baseline's lacks (<mask>); their rows keep the
recipe's weights, which is harmless as long as the text never contains them.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import baseline  # noqa: E402
import compare  # noqa: E402
import torch
from prepare import REPO  # noqa: E402

from m3p_fairseq.evaluation import hypotheses as saved_hypotheses
from m3p_fairseq.evaluation.translation import direction_dataset, load, translate_dataset


def baseline_weights_in_recipe_model(recipe_checkpoint: Path, baseline_checkpoint: Path, work: Path):
    """(models, task) of the recipe's checkpoint whose model carries the baseline's weights:
    fairseq's encoder.* is the plugin's encoder.text_encoder.*, vocabulary rows are matched by
    symbol."""
    models, task = load(str(recipe_checkpoint), str(work / "data-bin"))
    theirs, their_task = baseline.load(baseline_checkpoint, work / baseline.DATA_DIR)
    ours, their_dict = task.target_dictionary, their_task.target_dictionary
    rows = [(i, their_dict.index(ours[i])) for i in range(len(ours))]
    rows = torch.tensor([(i, j) for i, j in rows if their_dict[j] == ours[i]])
    state = models[0].state_dict()
    for name, value in theirs[0].state_dict().items():
        name = "encoder.text_encoder." + name[len("encoder."):] if name.startswith("encoder.") else name
        if name not in state:
            raise KeyError(f"{baseline_checkpoint}: parameter {name} has no place in the recipe's model")
        if value.shape != state[name].shape and value.shape[0] == len(their_dict):
            state[name][rows[:, 0]] = value[rows[:, 1]]
        else:
            state[name].copy_(value)
    return models, task


def reproduced_hypotheses(out: Path, work: Path, split: str, directions: List[str], config: str = "cpu-text-only",
                          beam: int = 5, batch_size: int = 64, max_len_b: int = 200) -> Dict[str, Tuple[int, int]]:
    """{direction: (how many of the baseline's saved hypotheses the recipe's pipeline
    reproduces, how many there are)}; decoding options as compare.py translated them."""
    save = out / "checkpoints"
    models, task = baseline_weights_in_recipe_model(save / config / "checkpoint_last.pt",
                                                    save / baseline.NAME / "checkpoint_last.pt", work)
    equal = {}
    for direction in directions:
        src, tgt = direction.split("-")
        ours, _references = translate_dataset(models, task, direction_dataset(task, split, src, tgt),
                                              beam, batch_size, max_len_b)
        theirs = saved_hypotheses.read_lines(saved_hypotheses.hypothesis_path(out, baseline.NAME, split, direction))
        equal[direction] = (sum(a == b for a, b in zip(ours, theirs)), len(theirs))
        print(f"{split} {direction}: {equal[direction][0]} of {len(theirs)} hypotheses equal", flush=True)
    return equal


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "multi30k")
    parser.add_argument("--out-dir", type=Path, required=True, help="compare.py's output directory")
    parser.add_argument("--config", default="cpu-text-only", help="compare.py's --config (the recipe's system)")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--directions", default="de-en", help="comma-separated, e.g. de-en,en-cs")
    compare.add_decoding_arguments(parser)  # as compare.py translated
    args = parser.parse_args(argv)
    equal = reproduced_hypotheses(args.out_dir.resolve(), args.work_dir.resolve(), args.split,
                                  args.directions.split(","), args.config, args.beam, args.batch_size,
                                  args.max_len_b)
    sys.exit(0 if all(same == total for same, total in equal.values()) else 1)


if __name__ == "__main__":
    main()
