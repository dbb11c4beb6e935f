"""Let fairseq checkpoints load under torch's ``weights_only=True`` default (torch >= 2.6).

fairseq stores the legacy command-line namespace (and a few plain Python/numpy objects) in
every checkpoint; torch refuses to unpickle them unless they are allow-listed. Registering them
here, on plugin import, makes ``fairseq-generate --user-dir m3p_fairseq`` load our checkpoints
with no environment variable.
"""

import argparse
import collections

import numpy as np
import torch

CHECKPOINT_GLOBALS = [
    argparse.Namespace,
    collections.OrderedDict,
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
    np.core.multiarray.scalar if hasattr(np, "core") else np._core.multiarray.scalar,
]


def allow_fairseq_checkpoint_globals() -> None:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads everything anyway
        add_safe_globals(CHECKPOINT_GLOBALS)
