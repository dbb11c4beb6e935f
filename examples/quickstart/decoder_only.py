"""Decoder-only vs encoder-decoder m3P on the synthetic quickstart data, same options, updates
and batch size (the paper's Table 1 compares the two).

    python examples/quickstart/decoder_only.py [--work-dir work/quickstart] [--max-update 800]

  m3p (encoder-decoder)   m3p_transformer_tiny, --fusion cvlm            (the quickstart's m3P)
  decoder-only m3p        m3p_decoder_only_tiny, --fusion prefix          (image tokens + prompt + source)
  decoder-only text       m3p_decoder_only_tiny, --fusion none, no MMCL   (prompt + source)

Every model trains with the quickstart's MDropNet/MMA/MMCL options where they apply. Shares the
quickstart's data and its m3P model (trained here if missing); writes ``decoder_only.md`` and
``decoder_only.json`` into the work directory.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import without  # noqa: E402
from run import LANG_PAIRS, M3P, add_options, evaluate, prepare_data, train  # noqa: E402

DECODER_ONLY = ["--arch", "m3p_decoder_only_tiny", "--fusion", "prefix"] + without(M3P, "--fusion")
DECODER_ONLY_TEXT = ["--arch", "m3p_decoder_only_tiny", "--fusion", "none",
                     "--criterion", "label_smoothed_cross_entropy"]
# trained two at a time, in this order
MODELS = {"decoder-only-m3p": DECODER_ONLY, "decoder-only-text": DECODER_ONLY_TEXT, "m3p": M3P}
SPLITS = [("test", "clean"), ("test_degraded", "degraded")]


def parameter_count(checkpoint: Path) -> int:
    import torch

    import m3p_fairseq  # noqa: F401  (allow-lists the checkpoint's classes)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    # the decoder-only model keeps one copy of its stack; buffers are not parameters
    return sum(t.numel() for name, t in state.items() if not name.endswith("log_logit_scale"))


def table(results: dict, parameters: dict) -> str:
    header = ("| model | parameters | " + " | ".join(f"{pair} {label}" for _, label in SPLITS for pair in LANG_PAIRS)
              + " | average clean | average degraded |")
    lines = [header, "|---|---:|" + "---:|" * (len(SPLITS) * len(LANG_PAIRS) + 2)]
    for name in MODELS:
        cells = [f"{results[name][split][pair]['bleu']:.1f}" for split, _ in SPLITS for pair in LANG_PAIRS]
        averages = [sum(results[name][split][pair]["bleu"] for pair in LANG_PAIRS) / len(LANG_PAIRS)
                    for split, _ in SPLITS]
        lines.append(f"| {name} | {parameters[name] / 1e6:.2f}M | " + " | ".join(cells) + " | "
                     + " | ".join(f"{a:.1f}" for a in averages) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    began = time.time()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    data = work / "data-bin"
    if not (data / "test_degraded.image_ids").exists():  # the quickstart's data, made once
        data = prepare_data(work, args)
    checkpoints = train(work, data, {name: (options, LANG_PAIRS) for name, options in MODELS.items()}, args)
    results = evaluate(data, checkpoints, work / "decoder_only.json")
    parameters = {name: parameter_count(work / "checkpoints" / name / "checkpoint_last.pt") for name in MODELS}
    markdown = table(results, parameters)
    (work / "decoder_only.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"total {time.time() - began:.0f} s; written to {work / 'decoder_only.md'}")


if __name__ == "__main__":
    main()
