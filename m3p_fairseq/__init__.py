"""m3p-fairseq: multimodal multilingual translation (m3P) as a fairseq plugin.

``--user-dir m3p_fairseq`` imports this package, which registers the task
``multimodal_translation`` and the ``m3p_transformer*`` architectures with fairseq.
"""

from .serialization import allow_fairseq_checkpoint_globals

allow_fairseq_checkpoint_globals()

from . import criterions, models, tasks  # noqa: E402,F401  (registration side effects)

__version__ = "0.1.0"
