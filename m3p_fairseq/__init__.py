"""m3p-fairseq: multimodal multilingual translation (m3P) as a fairseq plugin.

``--user-dir m3p_fairseq`` imports this package, which registers the task
``multimodal_translation`` and the ``m3p_transformer*`` architectures with fairseq.

Importing it prints nothing. Importing fairseq calls ``logging.basicConfig(level=DEBUG)``
(in fairseq/models/wav2vec/wav2vec2_classification.py), which would print h5py's DEBUG lines
when our feature store imports h5py, and fairseq calls the deprecated ``torch.jit.script`` at
import. Both are quietened here, for those two sources only; entry points set up logging with
``m3p_fairseq.logging_setup.setup_logging``.
"""

import logging
import warnings

logging.getLogger("h5py").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

from .serialization import allow_fairseq_checkpoint_globals  # noqa: E402
from .version import __version__  # noqa: E402,F401

allow_fairseq_checkpoint_globals()

from . import criterions, models, tasks  # noqa: E402,F401  (registration side effects)
