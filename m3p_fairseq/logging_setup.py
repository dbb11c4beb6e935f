"""The one logging set-up of the command-line entry points (console scripts, ``python -m
preprocess.*``): records to stderr in fairseq's own format, at the level the command wants.

``force=True`` because importing fairseq already attached a DEBUG handler to the root logger
(its wav2vec2_classification module calls ``logging.basicConfig(level=DEBUG)``); without
replacing it every library's debug lines would be printed."""

import logging
import sys

FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"  # fairseq-train's


def setup_logging(level: int = logging.INFO, fmt: str = FORMAT) -> None:
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
