"""Decoder-only vs encoder-decoder m3P on the synthetic quickstart data, same options, updates
and batch size (the paper's Table 1 compares the two).

    python examples/quickstart/decoder_only.py [--work-dir work/quickstart] [--max-update 1600]

  m3p-from-scratch        m3p_transformer_tiny, --fusion cvlm     (the quickstart's m3P options)
  decoder-only-m3p        m3p_decoder_only_tiny, --fusion prefix  (image tokens + prompt + source)

Both train from scratch with the quickstart's MDropNet, MMA and MMCL options, side by side (the
quickstart's own m3P starts from its text-only model, which a decoder-only model cannot). Shares
the quickstart's data (made if missing) and the ablation's m3p-from-scratch model; writes
``decoder_only.md`` and ``decoder_only.json`` into the work directory. Hypotheses are capped at
--max-len-b tokens (the captions have fewer than 40).
"""

import argparse
import json
import sys
import time
from pathlib import Path

from ablation import without  # noqa: E402
from run import FROM_SCRATCH, LANG_PAIRS, M3P, add_options, prepare_data, run, train  # noqa: E402

from m3p_fairseq.data.data_dir import DataDirectory  # noqa: E402

DECODER_ONLY = ["--arch", "m3p_decoder_only_tiny", "--fusion", "prefix"] + without(M3P, "--fusion")
MODELS = {FROM_SCRATCH: M3P, "decoder-only-m3p": DECODER_ONLY}
SPLITS = [("test", "clean"), ("test_degraded", "degraded")]


def parameter_count(checkpoint: Path) -> int:
    import torch

    import m3p_fairseq  # noqa: F401  (allow-lists the checkpoint's classes)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    # shared embeddings appear under several names but share one storage (torch.save keeps the
    # sharing): count each storage once; the decoder-only model keeps one copy of its stack
    storages = {}
    for name, tensor in state.items():
        if not name.endswith(("log_logit_scale", ".version")):  # buffers, not parameters
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes() // tensor.element_size()
    return sum(storages.values())


def table(results: dict, parameters: dict) -> str:
    from m3p_fairseq.markdown import markdown_table

    header = (["model", "parameters"] + [f"{pair} {label}" for _, label in SPLITS for pair in LANG_PAIRS]
              + ["average clean", "average degraded"])
    rows = []
    for name in MODELS:
        cells = [f"{results[name][split][pair]['bleu']:.1f}" for split, _ in SPLITS for pair in LANG_PAIRS]
        averages = [sum(results[name][split][pair]["bleu"] for pair in LANG_PAIRS) / len(LANG_PAIRS)
                    for split, _ in SPLITS]
        rows.append([name, f"{parameters[name] / 1e6:.2f}M", *cells, *(f"{a:.1f}" for a in averages)])
    return markdown_table(header, rows) + "\n"


def main(argv=None):
    began = time.time()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--max-len-b", type=int, default=60, help="longest hypothesis, in tokens")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    data = work / "data-bin"
    if not DataDirectory(data).image_ids("test_degraded").exists():  # the quickstart's data, made once
        data = prepare_data(work, args)
    checkpoints = train(work, data, {name: (options, LANG_PAIRS) for name, options in MODELS.items()}, args)
    output = work / "decoder_only.json"
    run([sys.executable, "scripts/evaluate.py", "--data", data, "--splits", ",".join(s for s, _ in SPLITS),
         "--beam", 5, "--max-len-b", args.max_len_b, "--output", output]
        + [arg for name, path in checkpoints.items() for arg in ("--checkpoint", f"{name}={path}")])
    results = json.loads(output.read_text(encoding="utf-8"))
    parameters = {name: parameter_count(work / "checkpoints" / name / "checkpoint_last.pt") for name in MODELS}
    markdown = table(results, parameters)
    (work / "decoder_only.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"total {time.time() - began:.0f} s; written to {work / 'decoder_only.md'}")


if __name__ == "__main__":
    main()
