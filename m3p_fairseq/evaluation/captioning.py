"""Captioning scores: BLEU-4 (sacreBLEU, evaluation/scoring.py) and CIDEr from pycocoevalcap, the
COCO caption evaluation's own scorer, against every reference caption of an image.

CIDEr (Vedantam et al., 2015; pycocoevalcap's ``Cider``: the COCO server's CIDEr-D, n = 1..4,
sigma = 6, clipped tf-idf, IDF over the reference sets of the evaluated images) is computed on
captions lower-cased and tokenized by pycocoevalcap's PTB tokenizer (Stanford CoreNLP, run with
``java``; it also drops punctuation), as the COCO evaluation does, and reported x100 as papers
do. The PTB tokenizer is English's; for de/fr/cs it splits on spaces and punctuation the same
way. BLEU-4 is sacreBLEU's on the detokenized text, case-sensitive, like every other BLEU of
the project.
"""

import re
import shutil
from pathlib import Path
from typing import Dict, Hashable, List, Sequence

from .scoring import corpus_bleu_multi_reference

JAVA_MISSING = ("pycocoevalcap's PTB tokenizer (used for CIDEr) runs Java, but no `java` is on PATH: install a Java "
                "runtime (Debian/Ubuntu: apt-get install default-jre-headless)")
_GENERATED = re.compile(r"^D-(\d+)\t[^\t]*\t(.*)$")


def require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(JAVA_MISSING)


def ptb_tokenize(captions: Dict[Hashable, List[str]]) -> Dict[Hashable, List[str]]:
    """pycocoevalcap's PTB tokenization (lower-cased, punctuation dropped) of every caption."""
    require_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({key: [{"caption": c} for c in texts] for key, texts in captions.items()})
    for key, texts in captions.items():
        if len(tokenized.get(key, [])) != len(texts):
            raise RuntimeError(f"the PTB tokenizer returned {len(tokenized.get(key, []))} captions for item {key}, "
                               f"expected {len(texts)}")
    return tokenized


def cider(hypotheses: Sequence[str], reference_sets: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr x100 of one hypothesis per image against all its references."""
    from pycocoevalcap.cider.cider import Cider

    if len(hypotheses) != len(reference_sets):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(reference_sets)} reference sets")
    if any(not refs for refs in reference_sets):
        raise ValueError("an image without reference captions")
    # one run of the tokenizer (one JVM start) for hypotheses and references
    tokenized = ptb_tokenize({**{("hyp", i): [h] for i, h in enumerate(hypotheses)},
                              **{("ref", i): list(refs) for i, refs in enumerate(reference_sets)}})
    score, _ = Cider().compute_score({i: tokenized[("ref", i)] for i in range(len(hypotheses))},
                                     {i: tokenized[("hyp", i)] for i in range(len(hypotheses))})
    return float(score) * 100


def caption_scores(hypotheses: Sequence[str], reference_sets: Sequence[Sequence[str]]) -> Dict[str, object]:
    """A language's entry of the results (tables.py reads "bleu" and "cider")."""
    bleu = corpus_bleu_multi_reference(hypotheses, reference_sets)
    return {"bleu": bleu["bleu"], "cider": round(cider(hypotheses, reference_sets), 2),
            "signature": bleu["signature"], "images": len(hypotheses),
            "references": sum(len(refs) for refs in reference_sets)}


def read_generated(path: Path) -> Dict[int, str]:
    """{example id: detokenized hypothesis} of fairseq-generate's output (its ``D-`` lines: the
    best hypothesis, after --post-process)."""
    found: Dict[int, str] = {}
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        match = _GENERATED.match(line)
        if match:
            if int(match[1]) in found:
                raise ValueError(f"{path}:{line_no}: a second hypothesis for example {match[1]} (run fairseq-generate "
                                 "with --nbest 1)")
            found[int(match[1])] = match[2]
    if not found:
        raise ValueError(f"{path}: no D-<id> lines (expected fairseq-generate's output, without --quiet)")
    return found


def in_example_order(generated: Dict[int, str], expected: int, source: str) -> List[str]:
    """The hypotheses of examples 0..expected-1; a missing or extra id is an error naming ``source``."""
    missing = [i for i in range(expected) if i not in generated]
    extra = sorted(i for i in generated if not 0 <= i < expected)
    if missing or extra:
        raise ValueError(f"{source}: hypotheses for {len(generated)} examples, the split has {expected} images "
                         f"(missing ids {missing[:5]}, unexpected ids {extra[:5]}): generate with --target-lang "
                         "of exactly this language and the same --gen-subset")
    return [generated[i] for i in range(expected)]
