"""Train on the prepared Multi30k data with one of the recipe's configurations.

    python examples/multi30k/train.py --config cpu-text-only [--work-dir work/multi30k] [-- EXTRA FAIRSEQ ARGS]
    python examples/multi30k/train.py --config paper --dry-run     # print the command only

Configurations (the target-language tag is prefixed to the source). Each trains the 6 directions
of the paper's Table 1, en<->{de,fr,cs}; the same name with ``-12`` trains all 12 directions
among en, de, fr and cs in one model:

  paper            m3P as in the paper (Sec. 3.3): m3p_transformer_base (12+12 layers, 768,
                   shared embeddings), --fusion cvlm, m3p_loss (label smoothing 0.1, MMCL),
                   MDropNet, MMA; Adam (0.9, 0.98), lr 5e-4, 4000 warm-up updates, 2048 tokens
                   per GPU (the paper used 8 V100s). Needs image features.
  paper-text-only  the same transformer, text only (--fusion none).
  cpu-text-only    a small model for a CPU (3+3 layers, 256 wide, FFN 1024, 4 heads, pre-norm),
                   text only, lr 2e-3, 1000 warm-up updates, dropout 0.3, language pairs sampled
                   with temperature 1.5, the target's tag also starting the decoder
                   (--decoder-langtok); stopped after --hours (default 1). The settings of the
                   plain-fairseq baseline (baseline.py), so that a comparison measures the plugin.
  cpu-m3p          the same small model with CVLM, MDropNet, MMCL and MMA. Needs image features.

Anything after ``--`` is passed to fairseq-train and wins over the configuration (e.g.
``-- --max-update 20000`` or ``-- --pretrained-text-encoder xlmr.base``).
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from prepare import LANG_PAIRS, PAPER_LANG_PAIRS, REPO  # noqa: E402

COMMON = [
    "--task", "multimodal_translation",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr-scheduler", "inverse_sqrt",
    "--label-smoothing", "0.1", "--share-all-embeddings",
    "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "100",
]
M3P_TRAINING = [
    "--fusion", "cvlm", "--criterion", "m3p_loss", "--mmcl-weight", "0.1",
    "--mdropnet-text-only", "0.25", "--mdropnet-image-only", "0.25",
    "--mma-text-mask-ratio", "0.15", "--mma-patch-mask-ratio", "0.25",
]
TEXT_ONLY = ["--fusion", "none", "--criterion", "label_smoothed_cross_entropy"]
PAPER = ["--arch", "m3p_transformer_base", "--lr", "5e-4", "--warmup-updates", "4000",
         "--max-tokens", "2048", "--dropout", "0.1", "--max-update", "100000"]
# The small model and the optimiser settings it shares with the plain-fairseq baseline
# (baseline.py): pre-norm trains stably at lr 2e-3, where post-norm needed half of it.
CPU_MODEL = ["--encoder-layers", "3", "--decoder-layers", "3",
             "--encoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024", "--encoder-attention-heads", "4",
             "--decoder-embed-dim", "256", "--decoder-ffn-embed-dim", "1024", "--decoder-attention-heads", "4",
             "--encoder-normalize-before", "--decoder-normalize-before"]
CPU_OPTIMISATION = ["--lr", "2e-3", "--max-tokens", "4096",
                    "--validate-interval-updates", "500", "--save-interval-updates", "500",
                    "--keep-interval-updates", "5"]
# The baseline keeps the settings issue 17 measured it with; the recipe's warm-up and dropout
# were chosen for a budget of hours on the validation split (README "Why the CPU configuration
# changed": NLL 4.44 against 5.40 at update 500).
BASELINE_SCHEDULE = ["--warmup-updates", "1000", "--dropout", "0.3"]
CPU_SCHEDULE = ["--warmup-updates", "500", "--dropout", "0.1"]
CPU_TEMPERATURE = 1.5
# The target's tag also starts every target, as the baseline's fairseq --decoder-langtok does
# (README "Why the CPU configuration changed": validation and the one-hour comparison).
CPU = ["--arch", "m3p_transformer", *CPU_MODEL, *CPU_OPTIMISATION, *CPU_SCHEDULE,
       "--sampling-temperature", str(CPU_TEMPERATURE), "--decoder-langtok"]
BASE_CONFIGS = {
    "paper": PAPER + M3P_TRAINING,
    "paper-text-only": PAPER + TEXT_ONLY,
    "cpu-text-only": CPU + TEXT_ONLY,
    "cpu-m3p": CPU + M3P_TRAINING,
}
# "X": the paper's 6 directions (Table 1); "X-12": all 12 directions among en, de, fr, cs
CONFIGS = {**{name: ["--lang-pairs", ",".join(PAPER_LANG_PAIRS), *args] for name, args in BASE_CONFIGS.items()},
           **{f"{name}-12": ["--lang-pairs", ",".join(LANG_PAIRS), *args] for name, args in BASE_CONFIGS.items()}}


def lang_pairs(config: str) -> list:
    """The directions a configuration trains."""
    return LANG_PAIRS if config.endswith("-12") else PAPER_LANG_PAIRS


def command(config: str, work: Path, hours: float, extra, save_dir: Path = None) -> list:
    data, save_dir = work / "data-bin", save_dir or work / "checkpoints" / config
    stop = ["--stop-time-hours", str(hours)] if config.startswith("cpu") else []
    return (["fairseq-train", str(data), "--user-dir", str(REPO / "m3p_fairseq"), *COMMON, *CONFIGS[config],
             *stop, "--save-dir", str(save_dir), "--tensorboard-logdir", str(save_dir / "tensorboard")]
            + list(extra))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "multi30k")
    parser.add_argument("--hours", type=float, default=1.0, help="wall-clock budget of the cpu-* configurations")
    parser.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and exit")
    args = parser.parse_args(own)
    cmd = command(args.config, args.work_dir.resolve(), args.hours, extra)
    print("$ " + " ".join(shlex.quote(part) for part in cmd), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(cmd, cwd=REPO).returncode)


if __name__ == "__main__":
    main()
