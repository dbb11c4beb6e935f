"""The paper's Table 5 ablation on the synthetic quickstart data: m3P, then one module removed
after another, every model with the quickstart's budget (same updates and batch size).

    python examples/quickstart/ablation.py [--work-dir work/quickstart]

  (1) m3P                      --fusion cvlm --criterion m3p_loss --mmcl-weight 0.1, MDropNet, MMA
  (2) (1) - MMCL               --mmcl-weight 0
  (3) (2) - CVLM               --fusion concat (the decoder attends to text and patch states)
  (4) (3) - MDropNet           --mdropnet-text-only 0 --mdropnet-image-only 0
  (5) (4) - multilingual       one bilingual model per direction (en-de, de-en)

Shares the quickstart's data and its m3P and text-only models (trained here if missing) and
writes ``ablation.md`` and ``ablation.json`` into the work directory.
"""

import time

from run import LANG_PAIRS, M3P, TEXT_ONLY, train_and_evaluate  # noqa: E402


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
    ("(1) m3P", {"m3p": (M3P, LANG_PAIRS)}),
    ("(2) (1) - MMCL", {"no-mmcl": (NO_MMCL, LANG_PAIRS)}),
    ("(3) (2) - CVLM", {"no-mmcl-cvlm": (NO_CVLM, LANG_PAIRS)}),
    ("(4) (3) - MDropNet", {"no-mmcl-cvlm-mdropnet": (NO_MDROPNET, LANG_PAIRS)}),
    ("(5) (4) - multilingual", {f"bilingual-{pair}": (NO_MDROPNET, [pair]) for pair in REPORTED}),
    ("text-only transformer", {"text-only": (TEXT_ONLY, LANG_PAIRS)}),
]


def table(results: dict) -> str:
    """Rows as in Table 5: BLEU of en-de and de-en on the clean and the degraded test set."""
    from m3p_fairseq.markdown import markdown_table

    splits = [("test", "clean"), ("test_degraded", "degraded")]
    header = ["model"] + [f"{pair} {label}" for _, label in splits for pair in REPORTED]
    rows = []
    for row, models in ROWS:
        cells = []
        for split, _ in splits:
            for pair in REPORTED:
                name = next(n for n, (_, pairs) in models.items() if pair in pairs)
                cells.append(f"{results[name][split][pair]['bleu']:.1f}")
        rows.append([row, *cells])
    return markdown_table(header, rows, align="l" * len(header)) + "\n"


def main(argv=None):
    began = time.time()
    results, work = train_and_evaluate({name: spec for _, models in ROWS for name, spec in models.items()},
                                       "ablation.json", __doc__, argv, score_pairs=REPORTED)
    markdown = table(results)
    (work / "ablation.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"total {time.time() - began:.0f} s; written to {work / 'ablation.md'}")


if __name__ == "__main__":
    main()
