"""What an evaluation command covers: the checkpoints named on its command line and the
directions of each model it scores (shared by m3p-evaluate and m3p-figures)."""

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from m3p_fairseq.tasks.multimodal_translation import parse_lang_pairs


class UnknownDirectionError(ValueError):
    """--lang-pairs names a direction the model was not trained on."""


def named_checkpoints(items: Sequence[str], parser, default_name=lambda path: path.stem) -> Dict[str, str]:
    """{name: path} of ``--checkpoint NAME=PATH`` (or PATH, named by ``default_name(Path(PATH))``);
    a missing file is a usage error naming it."""
    checkpoints = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (default_name(Path(item)), item)
        if not os.path.isfile(path):
            parser.error(f"--checkpoint {path}: file not found")
        checkpoints[name] = path
    return checkpoints


def select_directions(task, lang_pairs: Optional[str], model_name: str) -> List[Tuple[str, str]]:
    """The directions the model of ``task`` was trained on, in its order, or those of them named
    by ``lang_pairs`` ("en-de,de-en"). A named direction the model does not translate is an
    error naming it and the model's directions: dropping it silently would average a table over
    fewer directions than asked for."""
    trained = list(task.lang_pairs)
    if not lang_pairs:
        return trained
    wanted = parse_lang_pairs(lang_pairs)
    unknown = [pair for pair in wanted if pair not in trained]
    if unknown:
        raise UnknownDirectionError(
            f"--lang-pairs: {model_name} was not trained on {','.join(f'{s}-{t}' for s, t in unknown)}; "
            f"its directions are {','.join(f'{s}-{t}' for s, t in trained)}")
    return [pair for pair in trained if pair in wanted]
