"""Data preparation: binarizing text, extracting image features, subsetting a data directory.

The plugin is imported first so that its quiet import (no fairseq/torch warnings, no library
DEBUG lines; see m3p_fairseq/__init__.py) holds for every module here."""

import m3p_fairseq  # noqa: F401
