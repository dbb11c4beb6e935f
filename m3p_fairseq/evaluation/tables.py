"""The paper's Table-1 layout: one row per system, one column per direction, then the average
over directions; one table per split and metric, as Markdown and as CSV. And the Multi30k
layouts of the m3P paper (:func:`multi30k_tables`): Table 1 (test2016, 6 directions, Avg6),
Table 2 (test2017 and MSCOCO, 4 directions each, Avg4), and test2018.

``results[system][split][direction]`` holds a direction's scores (``{"bleu": .., "chrf": ..}``),
as scripts/evaluate.py writes them.
"""

import csv
import io
from typing import Dict, List, Optional, Sequence, Tuple

from ..markdown import markdown_table
from .scoring import average

METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "off_target": "off-target %", "cider": "CIDEr"}


def splits_of(results: dict) -> List[str]:
    return list(dict.fromkeys(split for by_split in results.values() for split in by_split))


def directions_of(results: dict, split: Optional[str] = None) -> List[str]:
    """Directions in first-seen order, over every system (and split, unless one is given)."""
    return list(dict.fromkeys(
        direction for by_split in results.values() for name, scores in by_split.items()
        if split is None or name == split for direction in scores))


def metric_rows(results: dict, split: str, metric: str, directions: Sequence[str]):
    """(system, [value or None per direction], average over the directions it has, number of
    those) for every system that has ``split`` scored with ``metric``."""
    rows = []
    for system, by_split in results.items():
        scores = by_split.get(split)
        if not scores:
            continue
        values = [scores[d].get(metric) if d in scores else None for d in directions]
        if all(v is None for v in values):
            continue
        rows.append((system, values, average(values), sum(v is not None for v in values)))
    return rows


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_tables(results: dict, metrics: Sequence[str] = ("bleu", "chrf")) -> str:
    """A section per split and metric: systems as rows, directions and their average as columns.
    "-" marks a direction a system was not scored on; its average (marked *) is over the
    directions it has."""
    sections = []
    for split in splits_of(results):
        directions = directions_of(results, split)
        for metric in metrics:
            rows = metric_rows(results, split, metric, directions)
            if not rows:
                continue
            marks = ["*" if count < len(directions) else "" for _, _, _, count in rows]
            body = [[system, *map(_cell, values), _cell(mean) + mark]
                    for (system, values, mean, _), mark in zip(rows, marks)]
            lines = [f"### {split}: {METRIC_NAMES.get(metric, metric)}", "",
                     markdown_table(["system", *directions, "average"], body)]
            if any(marks):
                lines += ["", "\\* averaged over the directions the system was scored on"]
            sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def directions_table(results: dict) -> str:
    """m3p-evaluate's printed table: directions as rows, (model, split) as columns, BLEU; "-"
    where a model lacks the direction. The average row is the unweighted mean over the
    directions the column has (the paper's Avg101), and the last row says how many that is."""
    columns = [(name, split) for name, by_split in results.items() for split in by_split]
    directions = list(dict.fromkeys(d for by_split in results.values() for scores in by_split.values() for d in scores))
    body = [[direction] + [f"{results[name][split][direction]['bleu']:.1f}" if direction in results[name][split]
                           else "-" for name, split in columns] for direction in directions]
    body.append(["average"] + [f"{average([s['bleu'] for s in results[name][split].values()]):.1f}"
                               for name, split in columns])
    body.append(["directions averaged"] + [str(len(results[name][split])) for name, split in columns])
    return markdown_table(["direction", *(f"{name} {split}" for name, split in columns)], body)


def csv_table(results: dict, metrics: Sequence[str] = ("bleu", "chrf")) -> str:
    """One row per (split, metric, system); columns: every direction, the average and how many
    directions it is over. Missing directions are empty cells; numbers keep two decimals."""
    directions = directions_of(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["split", "metric", "system", *directions, "average", "directions_averaged"])
    for split in splits_of(results):
        for metric in metrics:
            for system, values, mean, count in metric_rows(results, split, metric, directions):
                writer.writerow([split, metric, system, *("" if v is None else f"{v:.2f}" for v in values),
                                 f"{mean:.2f}", count])
    return out.getvalue()


def image_awareness_table(results: dict, pairs: Dict[str, str]) -> str:
    """BLEU with the correct images and with incongruent ones, and the drop, per system and
    direction. ``pairs`` maps a split to its incongruent-image counterpart in ``results``."""
    body = []
    for system, by_split in results.items():
        for split, shuffled in pairs.items():
            if split not in by_split or shuffled not in by_split:
                continue
            drops, correct_all, shuffled_all = [], [], []
            for direction, scores in by_split[split].items():
                if direction not in by_split[shuffled]:
                    continue
                correct, incongruent = scores["bleu"], by_split[shuffled][direction]["bleu"]
                drops.append(correct - incongruent)
                correct_all.append(correct)
                shuffled_all.append(incongruent)
                body.append([system, split, direction, f"{correct:.1f}", f"{incongruent:.1f}",
                             f"{correct - incongruent:+.1f}"])
            if drops:
                body.append([system, split, "**average**", f"{average(correct_all):.1f}",
                             f"{average(shuffled_all):.1f}", f"**{average(drops):+.1f}**"])
    header = ["system", "split", "direction", "BLEU, correct images", "BLEU, incongruent images", "drop"]
    return markdown_table(header, body, align="lll") + "\n"


# The m3P paper's Multi30k tables: (title, [(split, split's label, directions, average's label)])
TABLE1_DIRECTIONS = ["en-de", "en-fr", "en-cs", "de-en", "fr-en", "cs-en"]
TABLE2_DIRECTIONS = ["en-de", "en-fr", "de-en", "fr-en"]
MULTI30K_LAYOUTS = [
    ("Table 1: test2016 (Flickr)", [("test_2016_flickr", "", TABLE1_DIRECTIONS, "Avg6")]),
    ("Table 2: test2017 (Flickr) and MSCOCO", [("test_2017_flickr", "2017 ", TABLE2_DIRECTIONS, "Avg4"),
                                               ("test_2017_mscoco", "MSCOCO ", TABLE2_DIRECTIONS, "Avg4")]),
    ("test2018 (Flickr)", [("test_2018_flickr", "", TABLE1_DIRECTIONS, "Avg6")]),
]


def _layout_values(scores: Optional[dict], directions: Sequence[str], metric: str) -> List[Optional[float]]:
    """The directions' values and their average, which is None unless every direction is there
    (an average over fewer directions is not the paper's Avg6/Avg4)."""
    values = [scores[d].get(metric) if scores and d in scores else None for d in directions]
    return values + [average(values) if all(v is not None for v in values) else None]


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    return "-" if numerator is None or not denominator else f"{numerator / denominator:.2f}"


def _signature_lines(results: dict, splits: Sequence[str], metric: str) -> List[str]:
    key = "signature" if metric == "bleu" else f"{metric}_signature"
    found = sorted({scores[key] for by_split in results.values() for split in splits
                    for scores in by_split.get(split, {}).values() if key in scores})
    return [f"sacreBLEU signature `{signature}`" for signature in found]


def multi30k_tables(results: dict, metrics: Sequence[str] = ("bleu", "chrf"), commit: Optional[str] = None,
                    ratio: Optional[Tuple[str, str]] = None) -> str:
    """The paper's Multi30k layouts for every system (rows) and metric, each table only if some
    system was scored on one of its splits; under each, the sacreBLEU signature and ``commit``.
    ``ratio`` = (system A, system B) adds a row A / B per column (e.g. recipe / baseline)."""
    sections = []
    for title, parts in MULTI30K_LAYOUTS:
        splits = [split for split, *_ in parts]
        if not any(split in by_split for by_split in results.values() for split in splits):
            continue
        header = ["system"] + [f"{label}{column}" for _, label, directions, avg in parts
                               for column in [*directions, avg]]
        for metric in metrics:
            rows = {system: [v for split, _, directions, _ in parts
                             for v in _layout_values(by_split.get(split), directions, metric)]
                    for system, by_split in results.items() if any(split in by_split for split in splits)}
            rows = {system: values for system, values in rows.items() if any(v is not None for v in values)}
            if not rows:
                continue
            body = [[system, *map(_cell, values)] for system, values in rows.items()]
            if ratio and all(system in rows for system in ratio):
                body.append([f"ratio {ratio[0]} / {ratio[1]}",
                             *(_ratio(a, b) for a, b in zip(rows[ratio[0]], rows[ratio[1]]))])
            footer = _signature_lines(results, splits, metric) + ([f"commit `{commit}`"] if commit else [])
            lines = [f"### {title}: {METRIC_NAMES.get(metric, metric)}", "", markdown_table(header, body)]
            sections.append("\n".join(lines + (["", "; ".join(footer)] if footer else [])))
    return "\n\n".join(sections) + "\n" if sections else ""
