"""Hypotheses and references saved per direction, so that a table can be re-scored (another
metric, raw references, a new table layout) without translating again:

    OUT/hyp/{system}/{split}.{src}-{tgt}.txt    one detokenized hypothesis per line
    OUT/ref/{split}.{src}-{tgt}.txt             the references they were scored against
"""

import re
from pathlib import Path
from typing import Dict, List, Tuple

from ..data.text_lines import read_lines, write_lines

_FILE = re.compile(r"^(?P<split>.+)\.(?P<direction>[^.\-]+-[^.\-]+)\.txt$")


def hypothesis_path(out_dir: Path, system: str, split: str, direction: str) -> Path:
    return Path(out_dir) / "hyp" / system / f"{split}.{direction}.txt"


def reference_path(out_dir: Path, split: str, direction: str) -> Path:
    return Path(out_dir) / "ref" / f"{split}.{direction}.txt"


def save(out_dir: Path, system: str, split: str, direction: str, hypotheses: List[str],
         references: List[str]) -> None:
    write_lines(hypothesis_path(out_dir, system, split, direction), hypotheses)
    write_lines(reference_path(out_dir, split, direction), references)


def saved(out_dir: Path) -> Dict[str, Dict[str, Dict[str, Tuple[List[str], List[str]]]]]:
    """{system: {split: {direction: (hypotheses, references)}}} of everything under OUT/hyp."""
    out_dir = Path(out_dir)
    systems = sorted(p for p in (out_dir / "hyp").iterdir() if p.is_dir()) if (out_dir / "hyp").is_dir() else []
    if not systems:
        raise FileNotFoundError(f"{out_dir / 'hyp'}: no saved hypotheses (expected hyp/SYSTEM/SPLIT.SRC-TGT.txt)")
    found: Dict[str, Dict[str, Dict[str, Tuple[List[str], List[str]]]]] = {}
    for system_dir in systems:
        for path in sorted(system_dir.glob("*.txt")):
            match = _FILE.match(path.name)
            if not match:
                raise ValueError(f"{path}: expected a name SPLIT.SRC-TGT.txt")
            split, direction = match["split"], match["direction"]
            hypotheses = read_lines(path)
            ref_file = reference_path(out_dir, split, direction)
            if not ref_file.is_file():
                raise FileNotFoundError(f"{ref_file}: references of {path} not found")
            references = read_lines(ref_file)
            if len(references) != len(hypotheses):
                raise ValueError(f"{path} has {len(hypotheses)} lines but {ref_file} has {len(references)}")
            found.setdefault(system_dir.name, {}).setdefault(split, {})[direction] = (hypotheses, references)
    return found
