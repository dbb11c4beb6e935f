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


def corpus_bleu_multi_reference(hypotheses: Sequence[str], reference_sets: Sequence[Sequence[str]]
                                ) -> Dict[str, object]:
    """sacreBLEU's BLEU (4-grams, 13a, case-sensitive) of each hypothesis against all of its
    references (captioning: every caption of the image); their number may vary (the streams
    are padded with None, which sacreBLEU skips)."""
    import sacrebleu

    if len(hypotheses) != len(reference_sets):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(reference_sets)} reference sets")
    if any(not refs for refs in reference_sets):
        raise ValueError("a hypothesis without references")
    streams = [[refs[k] if k < len(refs) else None for refs in reference_sets]
               for k in range(max(map(len, reference_sets)))]
    bleu = sacrebleu.BLEU()
    return {"bleu": round(bleu.corpus_score(list(hypotheses), streams).score, 2),
            "signature": str(bleu.get_signature())}


def average(values: List[Optional[float]]) -> Optional[float]:
    """Mean of the values that exist (None where a system lacks a direction); None if none do."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
