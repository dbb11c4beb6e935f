"""Checkpoint averaging: the element-wise mean of the model parameters of several checkpoints of
one training run (what fairseq's scripts/average_checkpoints.py does; that script is not part of
the installed fairseq package, so the recipe has its own).

    python examples/multi30k/averaging.py --inputs ckpt_1_500.pt ckpt_1_1000.pt --output averaged.pt
"""

import argparse
from pathlib import Path
from typing import Sequence

import torch


def average_checkpoints(inputs: Sequence[Path], output: Path) -> Path:
    """Write ``output``: the newest input (its configuration, counters, optimizer state) with
    every model tensor replaced by the mean over ``inputs``. Floating-point tensors are summed in
    float64 and cast back; the files must share the parameter names and shapes (an error names
    the first file and tensor that does not)."""
    import m3p_fairseq  # noqa: F401  (allow-lists fairseq's checkpoint classes for torch.load)
    from m3p_fairseq.atomic_io import atomic_path

    if len(inputs) < 1:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    sums, newest = None, None
    for path in inputs:
        state = torch.load(path, map_location="cpu")  # as saved: fairseq upgrades it when it loads the average
        model = state["model"]
        if sums is None:
            sums = {name: tensor.to(torch.float64) if tensor.is_floating_point() else tensor.clone()
                    for name, tensor in model.items()}
            reference = path
        else:
            if set(model) != set(sums):
                raise ValueError(f"{path}: its parameters differ from {reference}'s: "
                                 f"{sorted(set(model) ^ set(sums))[:5]}")
            for name, tensor in model.items():
                if tensor.shape != sums[name].shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                     f"{reference} {tuple(sums[name].shape)}")
                if tensor.is_floating_point():
                    sums[name] += tensor.to(torch.float64)
        newest = state
    newest["model"] = {name: (total / len(inputs)).to(newest["model"][name].dtype)
                       if total.is_floating_point() else newest["model"][name] for name, total in sums.items()}
    with atomic_path(output) as tmp:
        torch.save(newest, tmp)
    return Path(output)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=Path, nargs="+", required=True, help="checkpoints of one run")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    print(average_checkpoints(args.inputs, args.output))


if __name__ == "__main__":
    main()
