"""m3p-fairseq: multimodal multilingual translation (m3P) as a fairseq plugin.

``--user-dir m3p_fairseq`` imports this package, which registers the task
``multimodal_translation`` and the ``m3p_transformer*`` architectures with fairseq.

Importing it prints nothing. Importing fairseq calls ``logging.basicConfig(level=DEBUG)``
(in fairseq/models/wav2vec/wav2vec2_classification.py), which would print the DEBUG lines that
h5py, matplotlib and PIL log when we import them, and fairseq calls the deprecated
``torch.jit.script`` at import. Those libraries' loggers are set to WARNING and that one warning
is ignored here, nothing else; entry points set up logging with
``m3p_fairseq.logging_setup.setup_logging``. It also registers an exit handler that destroys a
gloo process group before the interpreter ends (``process_group_exit``).
"""

import logging
import warnings

for _library in ("h5py", "matplotlib", "PIL"):
    logging.getLogger(_library).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

from .process_group_exit import register_exit_handler  # noqa: E402
from .serialization import allow_fairseq_checkpoint_globals  # noqa: E402
from .version import __version__  # noqa: E402,F401

allow_fairseq_checkpoint_globals()
register_exit_handler()

from . import criterions, models, tasks  # noqa: E402,F401  (registration side effects)
