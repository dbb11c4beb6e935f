from .multimodal_translation import MultimodalTranslationConfig, MultimodalTranslationTask  # noqa: F401
