"""Let fairseq checkpoints load under torch's ``weights_only=True`` default (torch >= 2.6).

fairseq stores the legacy command-line namespace (and a few plain Python/numpy objects) in
every checkpoint; torch refuses to unpickle them unless they are allow-listed. Registering them
here, on plugin import, makes ``fairseq-generate --user-dir m3p_fairseq`` load our checkpoints
with no environment variable.
"""

import argparse

import numpy as np
import torch

_numpy_core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core

CHECKPOINT_GLOBALS = [
    argparse.Namespace,  # the legacy command-line arguments, in every checkpoint
    # numpy scalars and dtypes, which fairseq can store as best-checkpoint scores
    _numpy_core.multiarray.scalar,
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
]


def allow_fairseq_checkpoint_globals() -> None:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads everything anyway
        add_safe_globals(CHECKPOINT_GLOBALS)
