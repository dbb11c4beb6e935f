"""What a run reports: fairseq's ``--log-format json`` records in ``train.log`` (the sweep sets
that format) and ``bleu.json`` from scripts/evaluate.py, gathered into one table.

fairseq's JSON progress bar (fairseq/logging/progress_bar.py, ``JsonProgressBar``) logs one
JSON object per line through a logger renamed to the record's tag: ``train_inner`` every
``--log-interval`` updates (unprefixed keys), and at the end of an epoch or a validation
``print`` with every key prefixed by the tag -- ``train`` for the epoch, the subset's name
(``valid``) for a validation: ``... | INFO | valid | {"epoch": 1, "valid_loss": "9.61", ...}``.
"""

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..atomic_io import atomic_write_text
from .state import effective_state

TRAINING_TAGS = {"train", "train_inner"}
UNPREFIXED_KEYS = {"epoch", "update"}
STATUS_COLUMNS = ["run", "state", "attempt", "job_id", "num_updates", "loss", "nll_loss", "ppl", "best_loss"]


def log_records(log_path) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(tag, record) for every JSON record fairseq logged, in order (all attempts)."""
    path = Path(log_path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            parts = line.rstrip("\n").split(" | ", 3)  # time | level | logger (the tag) | message
            if len(parts) != 4 or not parts[3].startswith("{"):
                continue
            try:
                record = json.loads(parts[3])
            except json.JSONDecodeError:  # a Python dict printed by fairseq (its configuration)
                continue
            if isinstance(record, dict):
                yield parts[2], record


def validation_records(log_path) -> Iterator[Dict[str, Any]]:
    """Each validation's numbers (``loss``, ``nll_loss``, ``ppl``, ``num_updates``,
    ``best_loss``, ``mmcl``...) as floats, with ``subset`` (the tag) and ``epoch``."""
    for tag, record in log_records(log_path):
        prefix = f"{tag}_"
        keys = set(record) - UNPREFIXED_KEYS
        if tag in TRAINING_TAGS or not keys or not all(key.startswith(prefix) for key in keys):
            continue
        values = {key[len(prefix):]: _number(value) for key, value in record.items() if key in keys}
        yield {**{k: v for k, v in values.items() if v is not None}, "subset": tag, "epoch": record.get("epoch")}


def final_metrics(run_dir: Path) -> Dict[str, Any]:
    """The run's last validation record in ``train.log`` and, if ``bleu.json``
    (scripts/evaluate.py --output) exists, its BLEU as ``bleu:SPLIT:PAIR``."""
    validations = list(validation_records(Path(run_dir) / "train.log"))
    metrics = {k: v for k, v in validations[-1].items() if k != "epoch"} if validations else {}
    bleu_file = Path(run_dir) / "bleu.json"
    if bleu_file.exists():
        for model, splits in json.loads(bleu_file.read_text(encoding="utf-8")).items():
            for split, pairs in splits.items():
                for pair, score in pairs.items():
                    metrics[f"bleu:{split}:{pair}"] = score["bleu"]
    return metrics


def collect(sweep) -> List[Dict[str, Any]]:
    rows = []
    for run in sweep.runs:
        state = effective_state(run.directory)
        rows.append({"run": run.name, "state": state["state"], "attempt": state.get("attempt", ""),
                     "job_id": state.get("job_id", ""), **final_metrics(run.directory)})
    return rows


def format_table(rows: List[Dict[str, Any]], columns: Optional[List[str]] = None) -> str:
    columns = columns or STATUS_COLUMNS + sorted({k for row in rows for k in row if k.startswith("bleu:")})
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def write_results(rows: List[Dict[str, Any]], output: Path) -> None:
    columns = STATUS_COLUMNS + sorted({k for row in rows for k in row} - set(STATUS_COLUMNS) - {"subset"})
    if output.suffix == ".json":
        atomic_write_text(output, json.dumps(rows, indent=1) + "\n")
    else:
        lines = ["\t".join(columns)] + ["\t".join(_cell(row.get(c, "")) for c in columns) for row in rows]
        atomic_write_text(output, "\n".join(lines) + "\n")


def _number(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
