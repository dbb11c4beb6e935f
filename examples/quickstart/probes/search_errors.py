"""Is a wrong translation the model's fault or beam search's? Splits the wrong hypotheses of
one checkpoint into search errors and model errors (Stahlberg and Byrne, 2019).

    python examples/quickstart/probes/search_errors.py --data WORK/data-bin --checkpoint CKPT \\
        [--lang-pairs en-de,de-en,en-fr,fr-en] [--split test] [--beam 5]

For each direction, fairseq-generate translates the split with beam search, and again with
``--score-reference`` scores each reference under the same model. Both scores are fairseq's:
the log-probability per target token, end of sentence included (beam search ranks its finished
hypotheses by it, with the default ``--lenpen 1``). A hypothesis that differs from its reference
is wrong; it is a **search error** when the model scores the reference higher (beam search
stopped without the better translation: fairseq's search ends a sentence once ``--beam``
hypotheses have finished) and a **model error** when the model prefers the wrong translation.
"""

import argparse
import shlex
import subprocess
from pathlib import Path
from typing import Dict, Iterable, Tuple

REPO = Path(__file__).resolve().parents[3]
COUNTS = ("sentences", "wrong", "search errors", "model errors")

Hypotheses = Dict[int, Tuple[float, str]]  # sentence id -> (score per token, detokenized text)


def parse_hypotheses(lines: Iterable[str]) -> Hypotheses:
    """fairseq-generate's ``H-{id}<TAB>{score}<TAB>{text}`` lines (the best hypothesis of each)."""
    hypotheses = {}
    for line in lines:
        if line.startswith("H-"):
            key, score, text = (line.rstrip("\n").split("\t") + [""])[:3]  # an empty hypothesis has no text
            hypotheses[int(key[2:])] = (float(score), text)
    return hypotheses


def classify(beam: Hypotheses, reference: Hypotheses) -> Dict[str, int]:
    """Counts of ``COUNTS`` for one direction: ``beam`` from beam search, ``reference`` from
    --score-reference, both keyed by sentence id."""
    if set(beam) != set(reference):
        raise ValueError(f"beam search and --score-reference output different sentence ids "
                         f"({len(beam)} and {len(reference)}; e.g. {sorted(set(beam) ^ set(reference))[:5]})")
    wrong = [i for i in beam if beam[i][1] != reference[i][1]]
    search = sum(reference[i][0] > beam[i][0] for i in wrong)
    return {"sentences": len(beam), "wrong": len(wrong), "search errors": search, "model errors": len(wrong) - search}


def generate(data: Path, checkpoint: Path, pair: str, split: str, beam: int, score_reference: bool) -> Hypotheses:
    src, tgt = pair.split("-")
    command = ["fairseq-generate", str(data), "--user-dir", str(REPO / "m3p_fairseq"),
               "--task", "multimodal_translation", "-s", src, "-t", tgt, "--gen-subset", split,
               "--path", str(checkpoint), "--beam", str(beam), "--batch-size", "100",
               "--post-process", "sentencepiece"] + (["--score-reference"] if score_reference else [])
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}")
    return parse_hypotheses(result.stdout.splitlines())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the data directory (as for fairseq-generate)")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--lang-pairs", default="en-de,de-en,en-fr,fr-en", help="the quickstart's four by default")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args(argv)
    from m3p_fairseq.markdown import markdown_table

    counts = {pair: classify(generate(args.data, args.checkpoint, pair, args.split, args.beam, False),
                             generate(args.data, args.checkpoint, pair, args.split, args.beam, True))
              for pair in args.lang_pairs.split(",")}
    total = {key: sum(row[key] for row in counts.values()) for key in COUNTS}
    rows = [[pair, f"{row['wrong']} / {row['sentences']}", row["search errors"], row["model errors"]]
            for pair, row in [*counts.items(), ("**all**", total)]]
    print(markdown_table(["direction", "wrong sentences", "search errors", "model errors"], rows))
    return counts


if __name__ == "__main__":
    main()
