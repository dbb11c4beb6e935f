"""The paper's Table 5 ablation on the synthetic quickstart data: m3P, then one module removed
after another, every model with the quickstart's budget (same updates and batch size).

    python examples/quickstart/ablation.py [--work-dir work/quickstart]

  (1) m3P                      --fusion cvlm --criterion m3p_loss --mmcl-weight 0.1, MDropNet, MMA
  (2) (1) - MMCL               --mmcl-weight 0
  (3) (2) - CVLM               --fusion concat (the decoder attends to text and patch states)
  (4) (3) - MDropNet           --mdropnet-text-only 0 --mdropnet-image-only 0
  (5) (4) - multilingual       one bilingual model per direction (en-de, de-en)

  (1') (1), MMA outside MMCL  --mma-translation-only: MMA augments only the translation input
                               (README "MMA inside MMCL")

Every row trains from scratch: (1) is m3p-from-scratch, not the quickstart's m3P, which starts
from the text-only model. Shares the quickstart's data and its text-only model (trained here if
missing) and writes ``ablation.md`` and ``ablation.json`` into the work directory.

    python examples/quickstart/ablation.py --from-text-only [--work-dir work/quickstart]

starts every image row from the text-only model instead, as the quickstart's m3P (which is row
(1) here) starts: --m3p-updates updates with images at --m3p-lr. Row (5) is left out: a model
started from the multilingual text-only model is not bilingual. Writes
``ablation-from-text-only.md`` and ``.json``.

    python examples/quickstart/ablation.py --seeds 1 2 3 [--work-dir-pattern work/quickstart-seed{seed}]

runs the ablation in each seed's quickstart directory (the pattern of seeds.py, so the seeds'
quickstart models are reused) and writes ``ablation-seeds.md`` / ``.json`` beside them (with
--from-text-only ``ablation-from-text-only-seeds``): every cell as mean ± sd (min–max) over the
seeds.
"""

import argparse
import json
import time
from pathlib import Path

from run import FROM_SCRATCH, LANG_PAIRS, M3P, TEXT_ONLY, train_and_evaluate  # noqa: E402
from seeds import WORK_DIR_PATTERN, spread  # noqa: E402

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.markdown import markdown_table


def without(options, *names):
    """``options`` minus each named flag and its value (flags given alone have no value)."""
    result, skip = [], False
    for i, item in enumerate(options):
        if skip:
            skip = False
            continue
        if item in names:
            skip = i + 1 < len(options) and not options[i + 1].startswith("--")
            continue
        result.append(item)
    return result


NO_MMCL = without(M3P, "--mmcl-weight", "--mma-view-negatives") + ["--mmcl-weight", "0"]
NO_CVLM = without(NO_MMCL, "--fusion") + ["--fusion", "concat"]
NO_MDROPNET = without(NO_CVLM, "--mdropnet-text-only", "--mdropnet-image-only") + [
    "--mdropnet-text-only", "0", "--mdropnet-image-only", "0"]
REPORTED = ["en-de", "de-en"]
ROWS = [
    ("(1) m3P", {FROM_SCRATCH: (M3P, LANG_PAIRS)}),
    ("(1') (1), MMA outside MMCL", {"m3p-mma-translation-only": (M3P + ["--mma-translation-only"], LANG_PAIRS)}),
    ("(2) (1) - MMCL", {"no-mmcl": (NO_MMCL, LANG_PAIRS)}),
    ("(3) (2) - CVLM", {"no-mmcl-cvlm": (NO_CVLM, LANG_PAIRS)}),
    ("(4) (3) - MDropNet", {"no-mmcl-cvlm-mdropnet": (NO_MDROPNET, LANG_PAIRS)}),
    ("(5) (4) - multilingual", {f"bilingual-{pair}": (NO_MDROPNET, [pair]) for pair in REPORTED}),
    ("text-only transformer", {"text-only": (TEXT_ONLY, LANG_PAIRS)}),
]
# --from-text-only: rows (1) to (4) started from the text-only model; (1) is the quickstart's m3P
STAGED = "-from-text-only"
ROWS_FROM_TEXT_ONLY = [("(1) m3P", {"m3p": (M3P, LANG_PAIRS)})] + [
    (row, {name + STAGED: spec for name, spec in models.items()}) for row, models in ROWS[1:5]] + ROWS[-1:]


SPLITS = [("test", "clean"), ("test_degraded", "degraded")]


def table(rows: list, results_by_seed: dict) -> str:
    """``rows`` as in Table 5: BLEU of en-de and de-en on the clean and the degraded test set; with
    several seeds (seed -> results) each cell is mean ± sd (min–max)."""
    header = ["model"] + [f"{pair} {label}" for _, label in SPLITS for pair in REPORTED]
    lines = []
    for row, models in rows:
        cells = []
        for split, _ in SPLITS:
            for pair in REPORTED:
                name = next(n for n, (_, pairs) in models.items() if pair in pairs)
                values = [results[name][split][pair]["bleu"] for results in results_by_seed.values()]
                cells.append(spread(values) if len(values) > 1 else f"{values[0]:.1f}")
        lines.append([row, *cells])
    return markdown_table(header, lines, align="l" * len(header)) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --work-dir is not --work-dir-pattern
    parser.add_argument("--seeds", type=int, nargs="+", help="run in each seed's quickstart directory")
    parser.add_argument("--work-dir-pattern", default=WORK_DIR_PATTERN,
                        help="with --seeds: each seed's work directory; {seed} is replaced")
    parser.add_argument("--from-text-only", action="store_true",
                        help="start rows (1) to (4) from the text-only model, as the quickstart's m3P")
    args, rest = parser.parse_known_args(argv)
    rows = ROWS_FROM_TEXT_ONLY if args.from_text_only else ROWS
    stem = "ablation-from-text-only" if args.from_text_only else "ablation"
    models = {name: spec for _, models in rows for name, spec in models.items()}
    if args.from_text_only:  # only the text-only model trains from scratch; the others start from it
        staged = {name: options for name, (options, _) in models.items() if name != "text-only"}
        models = {"text-only": models["text-only"]}
    else:
        staged = None
    began = time.time()

    def ablation(options):
        return train_and_evaluate(models, f"{stem}.json", __doc__, options, score_pairs=REPORTED,
                                  from_text_only=staged)

    if not args.seeds:
        results, work = ablation(rest)
        by_seed, output = {None: results}, work / f"{stem}.md"
    else:
        by_seed = {}
        for seed in args.seeds:
            work = Path(args.work_dir_pattern.format(seed=seed))
            print(f"=== seed {seed}: {work}", flush=True)
            by_seed[seed], _ = ablation(["--seed", str(seed), "--work-dir", str(work), *rest])
        output = Path(args.work_dir_pattern.format(seed="s")).parent / f"{stem}-seeds.md"
        atomic_write_text(output.with_suffix(".json"), json.dumps(by_seed, indent=1, ensure_ascii=False))
    markdown = table(rows, by_seed)
    atomic_write_text(output, markdown)
    print(markdown)
    print(f"total {time.time() - began:.0f} s; written to {output}")


if __name__ == "__main__":
    main()
