from .image_features import ImageFeatureError, ImageFeatureStore, ImageFeatureWriter, read_image_ids  # noqa: F401
from .multimodal_pair_dataset import MultimodalLanguagePairDataset  # noqa: F401
from .temperature_sampling import TemperatureSampledDataset, sampling_probabilities, temperature_at  # noqa: F401
