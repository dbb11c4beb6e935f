"""What goes wrong on clean sources? Counts the kinds of errors in translations of the
quickstart's synthetic captions, where a correct translation is exactly the reference.

    m3p-evaluate --data WORK/data-bin --checkpoint m3p=... --checkpoint text-only=... \\
        --splits test --beam 5 --output-dir EVAL
    python examples/quickstart/probes/clean_errors.py --eval-dir EVAL [--split test]

For every system and direction of EVAL/hyp/ (m3p-evaluate's layout), each hypothesis that
differs from its reference counts as one wrong sentence, and as each kind of error it makes:

- ``object left out``: the reference describes two objects (it has the target language's
  conjunction) and the hypothesis only one;
- ``colour``, ``shape``, ``position``: a word of that kind in the reference is replaced or
  missing in the hypothesis, or one is added (the words are the synthetic corpus's lexicon of
  that language);
- ``other``: a wrong sentence with none of these.
"""

import argparse
import difflib
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

from preprocess.synthetic_lexicons import LEXICONS

KINDS = ("object left out", "colour", "shape", "position", "other")


def words(line: str) -> List[str]:
    return line.lower().replace(".", " ").replace(",", " ").split()


@lru_cache(maxsize=None)  # once per language, not once per wrong sentence
def lexicon_words(lang: str) -> Dict[str, frozenset]:
    """The words that name colours, shapes and positions in ``lang``, every inflected form."""
    lexicon = LEXICONS[lang]

    def forms(value) -> set:
        values = value.values() if isinstance(value, dict) else [value]
        return {word for v in values for word in words(v)}

    shapes = {word for noun, _ in lexicon["shapes"].values() for word in words(noun)}
    colours = set().union(*(forms(v) for v in lexicon["colours"].values()))
    positions = set().union(*(forms(v) for v in lexicon["positions"].values()))
    return {"colour": frozenset(colours), "shape": frozenset(shapes),
            "position": frozenset(positions - colours - shapes)}


def error_kinds(hypothesis: str, reference: str, lang: str) -> List[str]:
    """The kinds of error of one wrong hypothesis (see the module's docstring)."""
    hyp, ref = words(hypothesis), words(reference)
    conjunction = LEXICONS[lang]["conjunction"]
    kinds = []
    if conjunction in ref and conjunction not in hyp:
        kinds.append("object left out")
    else:
        changed = set()
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
            if tag != "equal":  # words of the reference replaced or missing, or words added
                changed.update(ref[i1:i2] + hyp[j1:j2])
        kinds += [kind for kind, vocabulary in lexicon_words(lang).items() if changed & vocabulary]
    return kinds or ["other"]


def count_errors(eval_dir: Path, split: str) -> Dict[str, Dict[str, Dict[str, int]]]:
    """system -> direction -> {"sentences", "wrong", each kind: count}."""
    counts: Dict[str, Dict[str, Dict[str, int]]] = {}
    for system_dir in sorted((eval_dir / "hyp").iterdir()):
        for hyp_file in sorted(system_dir.glob(f"{split}.*-*.txt")):
            direction = hyp_file.name[len(split) + 1:-len(".txt")]
            hyps = hyp_file.read_text(encoding="utf-8").splitlines()
            refs = (eval_dir / "ref" / hyp_file.name).read_text(encoding="utf-8").splitlines()
            if len(hyps) != len(refs):
                raise ValueError(f"{hyp_file}: {len(hyps)} hypotheses for {len(refs)} references")
            row = dict.fromkeys(("sentences", "wrong", *KINDS), 0)
            row["sentences"] = len(hyps)
            for hyp, ref in zip(hyps, refs):
                if hyp.strip() != ref.strip():
                    row["wrong"] += 1
                    for kind in error_kinds(hyp, ref, direction.split("-")[1]):
                        row[kind] += 1
            counts.setdefault(system_dir.name, {})[direction] = row
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, required=True, help="m3p-evaluate's --output-dir")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    from m3p_fairseq.markdown import markdown_table

    counts = count_errors(args.eval_dir, args.split)
    rows = []
    for system, directions in counts.items():
        total = {key: sum(row[key] for row in directions.values()) for key in ("sentences", "wrong", *KINDS)}
        for direction, row in [*directions.items(), ("**all**", total)]:
            rows.append([system, direction, f"{row['wrong']} / {row['sentences']}", *(row[kind] for kind in KINDS)])
    print(markdown_table(["system", "direction", "wrong sentences", *KINDS], rows))
    return counts


if __name__ == "__main__":
    main()
