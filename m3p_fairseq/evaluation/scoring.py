"""Corpus scores with sacreBLEU: case-sensitive BLEU (13a tokenisation) and chrF, each with its
signature, so that a reported number says how it was computed."""

from typing import Dict, List, Optional, Sequence


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> Dict[str, object]:
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {
        "bleu": round(bleu.corpus_score(list(hypotheses), [list(references)]).score, 2),
        "chrf": round(chrf.corpus_score(list(hypotheses), [list(references)]).score, 2),
        "signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
    }


def average(values: List[Optional[float]]) -> Optional[float]:
    """Mean of the values that exist (None where a system lacks a direction); None if none do."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
