"""Extract image features once, with a timm backbone, into the HDF5 file the task reads.

    python -m preprocess.extract_image_features --images-dir IMAGES \
        --image-ids RAW/train.image_ids RAW/valid.image_ids --output DATA/image_features.h5 \
        --backbone vit_base_patch32_clip_224 --checkpoint open_clip_pytorch_model.bin

Per image it stores the backbone's patch tokens [P, D] (prefix tokens such as CLS removed; a
CNN's feature map flattened) and its pooled pre-logits vector [D] as ``global``. Weights come
from a local file (--checkpoint, loaded through timm's own pretrained-weight filters); nothing is
downloaded. ``--random-init-seed`` instead builds a randomly initialised backbone, which is what
the synthetic quickstart and the tests use on machines without weights.

``--augmented-views K`` also stores, per image, the features of K augmented views for MMA
(random crops with rotation, cutout, colour jitter, blur and Sobel edges; see
``preprocess/image_augmentation.py``) as ``view_patches`` [N, K, P, D] and ``view_global``
[N, K, D]. View v of an image depends only on ``--augmentation-seed``, the image id and v, and
the clean features are computed exactly as without views.

Writing is atomic (``OUT.partial``, renamed when complete) and resumable: re-running the same
command after an interruption continues from the last written batch.
"""

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image

from m3p_fairseq.data.image_features import ImageFeatureError, ImageFeatureWriter, read_image_ids
from preprocess.image_augmentation import AugmentedViews

logger = logging.getLogger("preprocess.extract_image_features")


def unique_image_ids(id_files: Sequence[Path], images_dir: Path) -> List[str]:
    """Ids of all lists, first occurrence order; every one must name an image file."""
    seen, ordered = set(), []
    for id_file in id_files:
        for line_no, image_id in enumerate(read_image_ids(id_file), start=1):
            if image_id in seen:
                continue
            if not (images_dir / image_id).is_file():
                raise ImageFeatureError(f"{id_file}:{line_no}: image {image_id!r} not found in {images_dir}")
            seen.add(image_id)
            ordered.append(image_id)
    return ordered


def build_backbone(name: str, checkpoint: Optional[Path], random_init_seed: Optional[int],
                   image_size: Optional[int]) -> torch.nn.Module:
    import timm

    if (checkpoint is None) == (random_init_seed is None):
        raise ValueError("give exactly one of --checkpoint (local weights) or --random-init-seed")
    kwargs = {"num_classes": 0}
    if image_size is not None:
        kwargs["img_size"] = image_size  # vision transformers adapt their position table
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: file not found")
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(checkpoint)}, **kwargs)
    else:
        torch.manual_seed(random_init_seed)
        model = timm.create_model(name, pretrained=False, **kwargs)
    return model.eval()


def patch_and_global_features(model: torch.nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """[B, P, D] patch tokens and [B, D] pooled vector, for transformers and CNNs alike."""
    features = model.forward_features(images)
    global_vector = model.forward_head(features, pre_logits=True)
    if features.dim() == 4:  # CNN feature map [B, D, H, W]
        patches = features.flatten(2).transpose(1, 2)
    else:  # token sequence [B, prefix + P, D]
        patches = features[:, getattr(model, "num_prefix_tokens", 0):]
    return patches, global_vector


class ImageFolder(torch.utils.data.Dataset):
    """The clean image tensor; with ``augment``, the pair (clean [3, H, W], views [K, 3, H, W])."""

    def __init__(self, images_dir: Path, image_ids: Sequence[str], transform,
                 augment: Optional[AugmentedViews] = None):
        self.images_dir, self.image_ids, self.transform, self.augment = images_dir, image_ids, transform, augment

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, index):
        image_id = self.image_ids[index]
        path = self.images_dir / image_id
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except OSError as error:
            raise ImageFeatureError(f"cannot read image {path}: {error}") from error
        if self.augment is None:
            return self.transform(image)
        return self.transform(image), self.augment(image, image_id)


def backbone_features(model: torch.nn.Module, images: torch.Tensor, device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``patch_and_global_features`` on ``device`` (float16 autocast on CUDA), as float32 on the CPU."""
    with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
        patches, global_vector = patch_and_global_features(model, images.to(device))
    return patches.float().cpu(), global_vector.float().cpu()


@torch.no_grad()
def extract(images_dir: Path, id_files: Sequence[Path], output: Path, backbone: str,
            checkpoint: Optional[Path] = None, random_init_seed: Optional[int] = None,
            image_size: Optional[int] = None, batch_size: int = 64, dtype: str = "float16",
            num_workers: int = 0, device: Optional[str] = None, augmented_views: int = 0,
            augmentation_seed: int = 0) -> int:
    """Returns the number of images in ``output``. ``augmented_views`` K > 0 also stores K
    augmented views per image, drawn from ``augmentation_seed`` (see the module docstring)."""
    import timm.data

    if augmented_views < 0:
        raise ValueError(f"--augmented-views must be >= 0, got {augmented_views}")
    images_dir, output = Path(images_dir), Path(output)
    if output.exists():
        logger.info("%s exists; delete it to extract again", output)
        return 0
    image_ids = unique_image_ids(id_files, images_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_backbone(backbone, checkpoint, random_init_seed, image_size).to(device)
    data_config = timm.data.resolve_model_data_config(model)
    if image_size is not None:  # the whole image at the requested resolution, no centre crop
        data_config.update(input_size=(3, image_size, image_size), crop_pct=1.0)
    transform = timm.data.create_transform(**data_config, is_training=False)
    probe = torch.zeros(1, *data_config["input_size"], device=device)
    patches, global_vector = patch_and_global_features(model, probe)
    attrs = {"backbone": backbone, "checkpoint": str(checkpoint or ""), "random_init_seed": -1 if random_init_seed is None else random_init_seed,
             "input_size": list(data_config["input_size"]), "mean": list(data_config["mean"]), "std": list(data_config["std"])}
    augment = None
    if augmented_views:
        augment = AugmentedViews(data_config["input_size"][1:], data_config["mean"], data_config["std"],
                                 augmented_views, augmentation_seed, data_config["interpolation"])
        attrs.update(view_augmentations=augment.describe(), augmentation_seed=augmentation_seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    writer = ImageFeatureWriter(output, image_ids, patches.size(1), patches.size(2), dtype, attrs, augmented_views)
    start = writer.rows_written
    if start:
        logger.info("resuming %s at image %d of %d", writer.partial_path, start, len(image_ids))
    loader = torch.utils.data.DataLoader(ImageFolder(images_dir, image_ids[start:], transform, augment),
                                         batch_size=batch_size, num_workers=num_workers)
    began, done = time.time(), start
    for batch in loader:
        images, views = batch if augment else (batch, None)
        patches, global_vector = backbone_features(model, images, device)
        if views is None:
            writer.write(patches.numpy(), global_vector.numpy())
        else:
            # a separate forward pass, so the clean features do not depend on --augmented-views
            view_patches, view_global = backbone_features(model, views.flatten(0, 1), device)
            writer.write(patches.numpy(), global_vector.numpy(),
                         view_patches.unflatten(0, views.shape[:2]).numpy(),
                         view_global.unflatten(0, views.shape[:2]).numpy())
        done += len(images)
        logger.info("%d/%d images (%.1f images/s)", done, len(image_ids), (done - start) / (time.time() - began))
    writer.close()
    logger.info("wrote %s: %d images, %d patches x %d dims, %s", output, len(image_ids),
                patches.size(1), patches.size(2), dtype)
    return len(image_ids)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-dir", type=Path, required=True, help="folder holding the image files")
    parser.add_argument("--image-ids", type=Path, nargs="+", required=True,
                        help="image-id lists (one file name per line); their union is extracted")
    parser.add_argument("--output", type=Path, required=True, help="HDF5 file to write")
    parser.add_argument("--backbone", default="vit_base_patch32_clip_224", help="timm model name")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="local weight file of the backbone")
    weights.add_argument("--random-init-seed", type=int, help="use a randomly initialised backbone (no weights)")
    parser.add_argument("--image-size", type=int, help="input resolution (vision transformers only); default: the model's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage precision")
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding processes")
    parser.add_argument("--device", help="torch device; default: cuda when available, else cpu")
    parser.add_argument("--augmented-views", type=int, default=0, metavar="K",
                        help="number of augmented views per image stored for MMA; 0 = none")
    parser.add_argument("--augmentation-seed", type=int, default=0,
                        help="seed of the augmented views; view v of an image depends only on it, the image id and v")
    args = parser.parse_args(argv)
    # force: importing fairseq already attached a DEBUG-level root handler
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    try:
        extract(args.images_dir, args.image_ids, args.output, args.backbone, args.checkpoint,
                args.random_init_seed, args.image_size, args.batch_size, args.dtype, args.num_workers, args.device,
                args.augmented_views, args.augmentation_seed)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
