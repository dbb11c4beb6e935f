from .data_dir import DataDirectory  # noqa: F401
from .image_features import ImageFeatureError, ImageFeatureStore, ImageFeatureWriter, read_image_ids  # noqa: F401
from .multimodal_pair_dataset import MultimodalLanguagePairDataset  # noqa: F401
from .temperature_sampling import (  # noqa: F401
    TemperatureSampledDataset,
    TemperatureSchedule,
    sampling_probabilities,
    temperature_at,
)
from .vocabulary import MASK_SYMBOL, MASK_WORD, is_lang_tag, lang_tag, tag_lang  # noqa: F401
