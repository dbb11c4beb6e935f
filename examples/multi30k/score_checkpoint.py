"""Score one saved checkpoint of both systems of a comparison, e.g. the ones at update 500, to see
how the two compare earlier in training (compare.py scores the one chosen on validation):

    python examples/multi30k/score_checkpoint.py --work-dir work/multi30k \
        --out-dir work/multi30k/compare-cpu-text-only --checkpoint checkpoint_1_500.pt

Reads OUT/checkpoints/{CONFIG,fairseq-baseline}/NAME, translates every test set the data has
with beam 5, as compare.py does, and writes the tables and hypotheses to OUT/at-NAME (kept on a
re-run, like compare.py's).
"""

import argparse
from pathlib import Path

import baseline  # noqa: E402
import compare  # noqa: E402
from prepare import REPO  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "multi30k")
    parser.add_argument("--out-dir", type=Path, required=True, help="compare.py's output directory")
    parser.add_argument("--checkpoint", required=True, help="a file name in both systems' checkpoint directories")
    parser.add_argument("--config", default="cpu-text-only", help="compare.py's --config (the recipe's system)")
    compare.add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    work, out = args.work_dir.resolve(), args.out_dir.resolve()
    systems = {}
    for system in (args.config, baseline.NAME):
        path = out / "checkpoints" / system / args.checkpoint
        if not path.is_file():
            raise SystemExit(f"{path}: no such checkpoint (expected a file of {path.parent})")
        systems[system] = {"checkpoint": str(path)}
    scored = out / f"at-{Path(args.checkpoint).stem}"
    compare.translate_and_score(systems, work, scored, args.config, args.beam, args.batch_size, args.max_len_b)
    print((scored / "multi30k.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
