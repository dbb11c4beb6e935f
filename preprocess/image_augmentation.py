"""Deterministic augmented views of an image, for MMA training on precomputed features.

MMA augments the original image "by cropping, resizing, rotation, cutout, color distortion,
Gaussian blur, and Sobel filtering". Since the backbone runs once, at extraction time, the
extractor stores K augmented views per image (``--augmented-views K``) next to the clean features.

A view is a random composition, in the order the paper lists the operations::

    random_resized_crop (always) -> rotation -> cutout -> color_jitter -> gaussian_blur -> sobel
    -> normalize (the backbone's mean and std, like the clean transform)

where every operation but the crop is applied with its own probability (:class:`AugmentationPolicy`).

All randomness of view ``v`` of image ``image_id`` comes from a ``torch.Generator`` seeded from
``(seed, image_id, v)`` alone, never from the global RNG or the position in a batch, so a view
is the same across runs, resumes, batch sizes and data-loader workers.
"""

import dataclasses
import hashlib
import json
import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

SEEDING = ("torch.Generator().manual_seed(int.from_bytes("
           "sha256(json.dumps([seed, image_id, view]).encode()).digest()[:8], 'little') >> 1)")


@dataclasses.dataclass(frozen=True)
class AugmentationPolicy:
    """Probabilities (``*_p``) and parameter ranges of the operations; the crop is always applied."""

    crop_scale: Tuple[float, float] = (0.35, 1.0)  # fraction of the image area kept
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio of the crop
    rotation_p: float = 0.5
    rotation_degrees: float = 20.0  # uniform in [-degrees, degrees]
    cutout_p: float = 0.5
    cutout_scale: Tuple[float, float] = (0.02, 0.2)  # fraction of the view erased
    cutout_ratio: Tuple[float, float] = (0.3, 3.3)
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    blur_p: float = 0.5
    blur_sigma: Tuple[float, float] = (0.1, 2.0)  # kernel: about a tenth of the view, odd
    sobel_p: float = 0.2

    def describe(self) -> List[dict]:
        """The operations in the order they are applied, for the feature file's attributes."""
        return [
            {"op": "random_resized_crop", "p": 1.0, "scale": list(self.crop_scale), "ratio": list(self.crop_ratio)},
            {"op": "rotation", "p": self.rotation_p, "degrees": self.rotation_degrees, "fill": "mean"},
            {"op": "cutout", "p": self.cutout_p, "scale": list(self.cutout_scale), "ratio": list(self.cutout_ratio),
             "fill": "mean"},
            {"op": "color_jitter", "p": self.color_jitter_p, "brightness": self.brightness,
             "contrast": self.contrast, "saturation": self.saturation, "hue": self.hue},
            {"op": "gaussian_blur", "p": self.blur_p, "sigma": list(self.blur_sigma)},
            {"op": "sobel", "p": self.sobel_p},
            {"op": "normalize", "p": 1.0},
        ]


def view_generator(seed: int, image_id: str, view_index: int) -> torch.Generator:
    """The only source of randomness of one view: a stable hash, unlike Python's ``hash``."""
    digest = hashlib.sha256(json.dumps([seed, image_id, view_index]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sobel_edges(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image, replicated to 3 channels.

    ``image`` is [3, H, W] or [B, 3, H, W] with values in [0, 1]; so is the result. A full-contrast
    step edge gives 1. The border is replicated, so flat regions give 0 up to the image edge.
    """
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    grey = F.rgb_to_grayscale(batched, num_output_channels=1)
    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=grey.dtype)
    kernels = torch.stack([kernel_x, kernel_x.t()]).unsqueeze(1)  # [2, 1, 3, 3]: d/dx, d/dy
    gradients = nnf.conv2d(nnf.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = (gradients.square().sum(1, keepdim=True).sqrt() / 4).clamp(0, 1)
    edges = magnitude.expand(-1, 3, -1, -1)
    return edges if image.dim() == 4 else edges[0]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _chance(generator: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=generator, dtype=torch.float64).item() < p


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


def _random_box(generator: torch.Generator, height: int, width: int, scale: Sequence[float],
                ratio: Sequence[float]) -> Tuple[int, int, int, int]:
    """(top, left, h, w) covering a random fraction ``scale`` of the area with aspect ``ratio``;
    the whole image when ten tries do not fit (only with extreme aspect ratios)."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = height * width * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(generator, height - h + 1), _randint(generator, width - w + 1), h, w
    return 0, 0, height, width


class AugmentedViews:
    """``views(image, image_id)`` -> [K, 3, H, W] tensor of K augmented, normalised views.

    ``image_size``, ``mean``, ``std`` and ``interpolation`` are those of the clean transform
    (timm's ``resolve_model_data_config``), so views and clean images look alike to the backbone.
    """

    def __init__(self, image_size: Union[int, Sequence[int]], mean: Sequence[float], std: Sequence[float],
                 num_views: int, seed: int = 0, interpolation: str = "bicubic",
                 policy: AugmentationPolicy = AugmentationPolicy()):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.size = [image_size, image_size] if isinstance(image_size, int) else [int(s) for s in image_size]
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.num_views, self.seed, self.policy = num_views, seed, policy
        self.interpolation = InterpolationMode(interpolation)
        shorter = min(self.size)
        self.blur_kernel = max(3, int(0.1 * shorter) // 2 * 2 + 1)

    def describe(self) -> str:
        """JSON for the ``view_augmentations`` attribute of the feature file."""
        return json.dumps({"ops": self.policy.describe(), "size": self.size, "interpolation": self.interpolation.value,
                           "mean": self.mean, "std": self.std, "seeding": SEEDING})

    def __call__(self, image: Image.Image, image_id: str) -> torch.Tensor:
        pixels = self._to_float(image)
        return torch.stack([self._augment(pixels, view_generator(self.seed, image_id, v))
                            for v in range(self.num_views)])

    def view(self, image: Image.Image, image_id: str, view_index: int) -> torch.Tensor:
        """View ``view_index`` alone, [3, H, W]; equal to ``self(image, image_id)[view_index]``."""
        return self._augment(self._to_float(image), view_generator(self.seed, image_id, view_index))

    @staticmethod
    def _to_float(image: Image.Image) -> torch.Tensor:
        return F.to_dtype(F.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)

    def _augment(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        policy = self.policy
        top, left, h, w = _random_box(generator, *pixels.shape[-2:], policy.crop_scale, policy.crop_ratio)
        # bicubic can overshoot [0, 1]; the colour and Sobel operations expect that range
        x = F.resized_crop(pixels, top, left, h, w, self.size, self.interpolation, antialias=True).clamp(0, 1)
        if _chance(generator, policy.rotation_p):
            angle = _uniform(generator, -policy.rotation_degrees, policy.rotation_degrees)
            x = F.rotate(x, angle, InterpolationMode.BILINEAR, fill=self.mean)
        if _chance(generator, policy.cutout_p):
            x = self._cutout(x, generator)
        if _chance(generator, policy.color_jitter_p):
            x = self._color_jitter(x, generator)
        if _chance(generator, policy.blur_p):
            sigma = _uniform(generator, *policy.blur_sigma)
            x = F.gaussian_blur(x, [self.blur_kernel, self.blur_kernel], [sigma, sigma])
        if _chance(generator, policy.sobel_p):
            x = sobel_edges(x)
        return F.normalize(x, self.mean, self.std)

    def _cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # filled with the mean colour, i.e. 0 after normalisation, as random erasing usually is
        top, left, h, w = _random_box(generator, *x.shape[-2:], self.policy.cutout_scale, self.policy.cutout_ratio)
        return F.erase(x, top, left, h, w, torch.tensor(self.mean).view(3, 1, 1))

    def _color_jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        policy = self.policy
        brightness = _uniform(generator, 1 - policy.brightness, 1 + policy.brightness)
        contrast = _uniform(generator, 1 - policy.contrast, 1 + policy.contrast)
        saturation = _uniform(generator, 1 - policy.saturation, 1 + policy.saturation)
        hue = _uniform(generator, -policy.hue, policy.hue)
        adjustments = [(F.adjust_brightness, brightness), (F.adjust_contrast, contrast),
                       (F.adjust_saturation, saturation), (F.adjust_hue, hue)]
        for index in torch.randperm(4, generator=generator).tolist():  # random order, as ColorJitter
            adjust, factor = adjustments[index]
            x = adjust(x, factor)
        return x
