from .m3p_transformer import M3PEncoder, M3PTransformerModel  # noqa: F401
