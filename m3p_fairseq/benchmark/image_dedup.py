"""Micro-benchmark of "each image once per batch" (issue 16) in the CVLM encoder: CPU time of one
encoder forward + backward (text encoder, image encoder, CVLM) on a batch whose images repeat.

    python -m m3p_fairseq.benchmark.image_dedup --arch m3p_transformer_tiny [--output FILE.json]

Three ways to run the same batch, interleaved (order reversed every round) in one process:

- ``per row``: the features stacked per row (a batch without IMAGE_INDEX);
- ``images once, K/V per row``: IMAGE_INDEX, the image encoder runs once per distinct image, and
  the patch states are gathered to the rows before the CVLM (what the code did before the CVLM
  took IMAGE_INDEX; reproduced by :class:`PerRowKeysValues` around the same fusion);
- ``images and K/V once``: IMAGE_INDEX down to the CVLM, which projects keys/values once per image.

And the CVLM module alone, forward + backward, given each row's patch states or each image's once.
Two batch shapes of 64 rows: 16 images shown 4 times each (InstrMulti102-like many-to-one data)
and 5 % repeated rows (Multi30k-like: a few images twice). CPU seconds of the process, one torch
thread, random weights and features (49 patches x 768, CLIP ViT-B/32's grid), sources of 16 tokens.
"""

import argparse
import json
import statistics
from argparse import Namespace
from typing import Callable, Dict, List

import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.models.transformer import TransformerEncoder
from torch import Tensor, nn

import m3p_fairseq  # noqa: F401  (registers the architectures)
from m3p_fairseq.benchmark.measuring import Clock
from m3p_fairseq.data.batch_keys import IMAGE_GLOBAL, IMAGE_INDEX, IMAGE_PATCHES
from m3p_fairseq.models.fusion import to_rows
from m3p_fairseq.models.m3p_transformer import M3PEncoder

ROWS, PATCHES, FEATURE_DIM, SOURCE_LENGTH, VOCABULARY = 64, 49, 768, 16, 8000
# the two batch shapes: name -> each row's image (values 0..U-1)
IMAGE_INDICES = {
    "16 images x 4 (InstrMulti102-like)": torch.arange(16).repeat_interleave(4),
    # 61 distinct images; 3 of them (5 % of the rows) shown twice
    "5 % repeats (Multi30k-like)": torch.cat([torch.arange(61), torch.tensor([0, 20, 40])]).sort().values,
}


class PerRowKeysValues(nn.Module):
    """The fusion as it was before it took IMAGE_INDEX: given each row's patch states."""

    def __init__(self, fusion: nn.Module):
        super().__init__()
        self.fusion = fusion

    def forward(self, text, text_padding_mask, patches, global_state, image_index=None):
        return self.fusion(text, text_padding_mask, to_rows(patches, image_index, dim=1), global_state)


def build_encoder(arch: str) -> M3PEncoder:
    args = Namespace(arch=arch, fusion="cvlm", image_feature_dim=FEATURE_DIM,
                     mdropnet_text_only=0.0, mdropnet_image_only=0.0)
    ARCH_CONFIG_REGISTRY[arch](args)
    dictionary = Dictionary()
    for i in range(VOCABULARY):
        dictionary.add_symbol(f"w{i}")
    embed_tokens = nn.Embedding(len(dictionary), args.encoder_embed_dim, padding_idx=dictionary.pad())
    encoder = M3PEncoder(args, TransformerEncoder(args, dictionary, embed_tokens)).train()
    # a trained CVLM's output projection is not zero (fresh ones are, by design); same work either way
    nn.init.normal_(encoder.fusion.attention.out_proj.weight, std=args.encoder_embed_dim ** -0.5)
    return encoder


def batch(image_index: Tensor, generator: torch.Generator) -> Dict[str, Dict[str, Tensor]]:
    """The net_input of each way: deduplicated (with IMAGE_INDEX) and per row."""
    distinct = int(image_index.max()) + 1
    tokens = torch.randint(4, 4 + VOCABULARY, (ROWS, SOURCE_LENGTH), generator=generator)
    patches = torch.randn(distinct, PATCHES, FEATURE_DIM, generator=generator)
    global_vectors = torch.randn(distinct, FEATURE_DIM, generator=generator)
    text = {"src_tokens": tokens, "src_lengths": torch.full((ROWS,), SOURCE_LENGTH)}
    return {"deduplicated": {**text, IMAGE_PATCHES: patches, IMAGE_GLOBAL: global_vectors, IMAGE_INDEX: image_index},
            "per row": {**text, IMAGE_PATCHES: patches[image_index], IMAGE_GLOBAL: global_vectors[image_index]}}


def encoder_step(encoder: M3PEncoder, net_input: Dict[str, Tensor], per_row_keys_values: bool) -> Callable:
    cvlm = encoder.fusion

    def step():
        encoder.fusion = PerRowKeysValues(cvlm) if per_row_keys_values else cvlm
        encoder.zero_grad(set_to_none=True)
        encoder(**net_input)["encoder_out"][0].pow(2).mean().backward()
        encoder.fusion = cvlm
    return step


def fusion_steps(encoder: M3PEncoder, image_index: Tensor, generator: torch.Generator) -> Dict[str, Callable]:
    """The CVLM module alone, forward + backward: given each row's patches, or each image's once."""
    cvlm, width = encoder.fusion, encoder.fusion.layer_norm.weight.numel()
    text = torch.randn(SOURCE_LENGTH, ROWS, width, generator=generator).requires_grad_()
    patches = torch.randn(PATCHES, int(image_index.max()) + 1, width, generator=generator).requires_grad_()
    padding = torch.zeros(ROWS, SOURCE_LENGTH, dtype=torch.bool)

    def step(deduplicated: bool):
        cvlm.zero_grad(set_to_none=True)
        if deduplicated:
            fused, _ = cvlm(text, padding, patches, None, image_index)
        else:
            fused, _ = cvlm(text, padding, patches.index_select(1, image_index), None)
        fused.pow(2).mean().backward()
    return {"CVLM alone, K/V per row": lambda: step(False), "CVLM alone, K/V once": lambda: step(True)}


def cpu_seconds(steps: Dict[str, Callable], rounds: int, steps_per_round: int) -> Dict[str, List[float]]:
    """CPU seconds per step of each way, per round; one untimed step of each first."""
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for round_number in range(rounds):
        order = list(steps) if round_number % 2 == 0 else list(reversed(steps))
        for name in order:
            with Clock() as clock:
                for _ in range(steps_per_round):
                    steps[name]()
            times[name].append(clock.cpu / steps_per_round)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="m3p_transformer_tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = build_encoder(args.arch)
    results = []
    for shape, image_index in IMAGE_INDICES.items():
        generator = torch.Generator().manual_seed(1)
        inputs = batch(image_index, generator)
        steps = {"per row": encoder_step(encoder, inputs["per row"], per_row_keys_values=False),
                 "images once, K/V per row": encoder_step(encoder, inputs["deduplicated"], per_row_keys_values=True),
                 "images and K/V once": encoder_step(encoder, inputs["deduplicated"], per_row_keys_values=False),
                 **fusion_steps(encoder, image_index, generator)}
        times = cpu_seconds(steps, args.rounds, args.steps_per_round)
        median = {name: statistics.median(values) for name, values in times.items()}
        result = {"arch": args.arch, "batch": shape, "rows": ROWS, "distinct_images": int(image_index.max()) + 1,
                  "cpu_ms_per_step": {name: round(1000 * value, 1) for name, value in median.items()},
                  "cpu_ms_per_round": {name: [round(1000 * v, 1) for v in values] for name, values in times.items()},
                  "speed-up vs images once, K/V per row": round(median["images once, K/V per row"]
                                                                / median["images and K/V once"], 3),
                  "speed-up vs per row": round(median["per row"] / median["images and K/V once"], 3),
                  "CVLM alone speed-up": round(median["CVLM alone, K/V per row"] / median["CVLM alone, K/V once"], 3)}
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
