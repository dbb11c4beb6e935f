from . import m3p_loss  # noqa: F401  (registers --criterion m3p_loss)
