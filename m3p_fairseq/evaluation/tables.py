"""The paper's Table-1 layout: one row per system, one column per direction, then the average
over directions; one table per split and metric, as Markdown and as CSV.

``results[system][split][direction]`` holds a direction's scores (``{"bleu": .., "chrf": ..}``),
as scripts/evaluate.py writes them.
"""

import csv
import io
from typing import Dict, List, Optional, Sequence

from ..markdown import markdown_table
from .scoring import average

METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "off_target": "off-target %"}


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
