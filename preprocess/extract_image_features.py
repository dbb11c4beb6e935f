"""Extract image features once, with a timm backbone, into the HDF5 file the task reads.

    python -m preprocess.extract_image_features --images-dir IMAGES \
        --image-ids RAW/train.image_ids RAW/valid.image_ids --output DATA/image_features.h5 \
        --backbone vit_base_patch32_clip_224 --checkpoint open_clip_pytorch_model.bin

Per image it stores the backbone's patch tokens [P, D] (prefix tokens such as CLS removed; a
CNN's feature map flattened) and its pooled pre-logits vector [D] as ``global``. Weights come
from a local file (--checkpoint, loaded through timm's own pretrained-weight filters); nothing is
downloaded. ``--random-init-seed`` instead builds a randomly initialised backbone, which is what
the synthetic quickstart and the tests use on machines without weights.

Backbones of the paper's Table 4 (P x D measured at timm's default 224 x 224 input)::

    --backbone                        model                       patches P x D   global D
    vit_base_patch32_clip_224         CLIP ViT-B/32               49 x 768        768
    vit_base_patch16_clip_224         CLIP ViT-B/16               196 x 768       768
    vit_large_patch14_clip_224        CLIP ViT-L/14               256 x 1024      1024
    resnet50, resnet101               ImageNet ResNet-50/101      49 x 2048       2048 (average pool)
    resnet50_clip, resnet101_clip     CLIP ResNet-50/101          49 x 2048       2048 (attention pool)

The stored ``global`` is the pre-logits vector: CLIP's final projection (``visual.proj``) is not
applied. ``--checkpoint`` takes

- a timm state dict (``.pth``/``.bin`` through ``torch.load``, or ``.safetensors``), also when
  nested under ``state_dict`` or ``model`` as training checkpoints are;
- an OpenAI / open_clip CLIP state dict (``visual.conv1.weight``, ``visual.class_embedding``,
  ``visual.transformer.resblocks.N.*``, ...), which timm converts for its CLIP ViTs and CLIP
  ResNets; the text tower's weights are ignored. OpenAI's original ``ViT-B-32.pt`` files are
  TorchScript: save their ``torch.jit.load(path).state_dict()`` first.

A pretrained tag after the name picks timm's preprocessing (mean, std, crop) for those weights;
without one timm's default tag applies (``vit_large_patch14_clip_224``'s normalises with mean =
std = 0.5). For OpenAI's weights use e.g. ``vit_base_patch32_clip_quickgelu_224.openai``: OpenAI's
normalisation and its QuickGELU activation. A checkpoint that does not fit the backbone (a tensor
of another shape, a backbone weight it lacks, a weight the backbone has no place for) is an error.

``--augmented-views K`` also stores, per image, the features of K augmented views for MMA
(random crops with rotation, cutout, colour jitter, blur and Sobel edges; see
``preprocess/image_augmentation.py``) as ``view_patches`` [N, K, P, D] and ``view_global``
[N, K, D]. View v of an image depends only on ``--augmentation-seed``, the image id and v, and
the clean features are computed exactly as without views.

Bad images (a missing or empty file, or one whose bytes PIL cannot decode: corrupt, truncated) are listed in
``OUT.bad_images.tsv`` (columns image_id, path, reason) and fail the run, after every other
image is extracted; ``OUT`` is not created but ``OUT.partial`` is kept. Re-running resumes it:
images that decode by then are extracted, and with ``--skip-bad-images`` the rest are stored
flagged: zero features and ``usable`` False (see ``m3p_fairseq/data/image_features.py``). Only
decoding errors make an image bad: an error reading the file (permissions, I/O) or any other
exception (a bug) stops the run, with what was extracted kept in ``OUT.partial``.

Writing is atomic (``OUT.partial``, renamed when complete) and resumable: re-running the same
command after an interruption, even a SIGKILL mid-batch, continues after the last batch written
and ends with the file an uninterrupted run writes. A second extraction on the same ``OUT`` while
one runs fails at once, naming the file and the process writing it; a ``OUT.partial`` of other
options is kept and the run fails, saying what differs (see ``m3p_fairseq/data/image_feature_writer.py``).
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.data.data_dir import BAD_IMAGES_SUFFIX, DataDirectory
from m3p_fairseq.data.image_features import (
    FeatureFileExistsError,
    ImageFeatureError,
    ImageFeatureWriter,
    read_image_ids,
)
from m3p_fairseq.logging_setup import setup_logging
from preprocess.image_augmentation import AugmentedViews
from preprocess.image_backbone import (  # noqa: F401 (CheckpointError, patch_and_global_features: the CLI's API)
    FIRST_FEW,
    CheckpointError,
    backbone_features,
    build_backbone,
    patch_and_global_features,
)
from preprocess.image_folder import ImageFolder, UnreadableImage, collate_readable

logger = logging.getLogger("preprocess.extract_image_features")

REPORT_COLUMNS = ("image_id", "path", "reason")
EXISTS_MESSAGE = "%s exists; delete it to extract again"


class BadImagesError(ImageFeatureError):
    """Some images are missing or undecodable and --skip-bad-images was not given."""


def unique_image_ids(id_files: Sequence[Path]) -> List[str]:
    """Ids of all lists, first occurrence order."""
    seen, ordered = set(), []
    for id_file in id_files:
        for image_id in read_image_ids(id_file):
            if image_id not in seen:
                seen.add(image_id)
                ordered.append(image_id)
    return ordered


def missing_images(images_dir: Path, image_ids: Sequence[str]) -> List[str]:
    """Ids without an image file: one stat each, so they are known before the long part."""
    return [image_id for image_id in image_ids if not (images_dir / image_id).is_file()]


def features_with_zero_rows(model: torch.nn.Module, batch, usable: torch.Tensor, device: str,
                            shape: Tuple[int, int, int]):
    """What ``ImageFeatureWriter.write`` takes for one batch, as numpy: patches, global, view
    patches and view global (None without views), usable. Unusable images get zero rows; only the
    readable ones go through the backbone."""
    num_patches, dim, num_views = shape
    n = len(usable)
    patches, global_vectors = torch.zeros(n, num_patches, dim), torch.zeros(n, dim)
    view_patches = torch.zeros(n, num_views, num_patches, dim) if num_views else None
    view_global = torch.zeros(n, num_views, dim) if num_views else None
    if batch is not None:
        images, views = batch if num_views else (batch, None)
        patches[usable], global_vectors[usable] = backbone_features(model, images, device)
        if views is not None:
            # a separate forward pass, so the clean features do not depend on --augmented-views
            flat_patches, flat_global = backbone_features(model, views.flatten(0, 1), device)
            view_patches[usable] = flat_patches.unflatten(0, views.shape[:2])
            view_global[usable] = flat_global.unflatten(0, views.shape[:2])
    views = (view_patches.numpy(), view_global.numpy()) if num_views else (None, None)
    return patches.numpy(), global_vectors.numpy(), *views, usable.numpy()


def write_report(path: Path, bad: Sequence[UnreadableImage]) -> None:
    """TSV with a header, written atomically; tabs and newlines cannot occur in its fields."""
    rows = [REPORT_COLUMNS] + [(image.image_id, image.path, image.reason) for image in bad]
    atomic_write_text(path, "".join("\t".join(field.replace("\t", " ") for field in row) + "\n" for row in rows))


def bad_images_message(bad: Sequence[UnreadableImage], total: int, report: Path, partial: Path) -> str:
    named = ", ".join(f"{image.image_id!r} ({image.reason})" for image in bad[:FIRST_FEW])
    more = f" and {len(bad) - FIRST_FEW} more" if len(bad) > FIRST_FEW else ""
    return (f"{len(bad)} of {total} images are missing or cannot be decoded: {named}{more}; all are listed in "
            f"{report}. Fix them and run again, or run again with --skip-bad-images to store them flagged "
            f"(zero features, usable=False). The other images' features are kept in {partial}, so neither "
            f"extracts them again.")


# ---------------------------------------------------------------------------------------------
# extraction

def extract_rows(writer: ImageFeatureWriter, image_ids: Sequence[str], batches) -> List[UnreadableImage]:
    """Retries the rows an earlier run flagged unusable, then writes the rows not written yet;
    returns the images that could not be read, in row order."""
    start = writer.rows_written
    if start:
        logger.info("resuming %s at image %d of %d", writer.partial_path, start, len(image_ids))
    bad: List[UnreadableImage] = []
    retry = writer.unusable_rows()
    if len(retry):  # an earlier run could not read them; maybe they are fixed now
        logger.info("retrying %d images flagged unusable in %s", len(retry), writer.partial_path)
        done = 0
        for features, unreadable in batches([image_ids[row] for row in retry]):
            writer.rewrite(retry[done:done + len(features[0])], *features)
            done += len(features[0])
            bad += unreadable
    began, done = time.time(), start
    with logging_redirect_tqdm(), tqdm(total=len(image_ids), initial=start, unit="img", disable=None) as progress:
        for features, unreadable in batches(image_ids[start:]):
            writer.write(*features)  # positionally, as subclasses in tests expect
            bad += unreadable
            done += len(features[0])
            progress.update(len(features[0]))
            logger.info("%d/%d images (%.1f images/s)", done, len(image_ids), (done - start) / (time.time() - began))
    return bad


@torch.no_grad()
def extract(images_dir: Path, id_files: Sequence[Path], output: Path, backbone: str,
            checkpoint: Optional[Path] = None, random_init_seed: Optional[int] = None,
            image_size: Optional[int] = None, batch_size: int = 64, dtype: str = "float16",
            num_workers: int = 0, device: Optional[str] = None, augmented_views: int = 0,
            augmentation_seed: int = 0, skip_bad_images: bool = False,
            model_kwargs: Optional[dict] = None) -> int:
    """Returns the number of images in ``output``. ``augmented_views`` K > 0 also stores K
    augmented views per image, drawn from ``augmentation_seed`` (see the module docstring).
    Raises :class:`BadImagesError` after extracting if some images are bad and not
    ``skip_bad_images``."""
    import timm.data

    if augmented_views < 0:
        raise ValueError(f"--augmented-views must be >= 0, got {augmented_views}")
    images_dir, output = Path(images_dir), Path(output)
    if output.exists():
        logger.info(EXISTS_MESSAGE, output)
        return 0
    report = DataDirectory.bad_images_report(output)
    image_ids = unique_image_ids(id_files)
    missing = missing_images(images_dir, image_ids)
    if missing:
        logger.warning("%d of %d images are not in %s (e.g. %s); %s", len(missing), len(image_ids), images_dir,
                       ", ".join(missing[:FIRST_FEW]), "they will be flagged unusable" if skip_bad_images else
                       "the run fails after extracting the others (or run with --skip-bad-images)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_backbone(backbone, checkpoint, random_init_seed, image_size, model_kwargs).to(device)
    data_config = timm.data.resolve_model_data_config(model)
    if image_size is not None:  # the whole image at the requested resolution, no centre crop
        data_config.update(input_size=(3, image_size, image_size), crop_pct=1.0)
    transform = timm.data.create_transform(**data_config, is_training=False)
    probe = torch.zeros(1, *data_config["input_size"], device=device)
    patches, global_vector = patch_and_global_features(model, probe)
    # --skip-bad-images is not an attribute: it must not change the fingerprint, so that a run
    # failed on bad images resumes with it
    attrs = {"backbone": backbone, "checkpoint": str(checkpoint or ""), "random_init_seed": -1 if random_init_seed is None else random_init_seed,
             "input_size": list(data_config["input_size"]), "mean": list(data_config["mean"]), "std": list(data_config["std"])}
    if model_kwargs:
        attrs["model_kwargs"] = json.dumps(model_kwargs, sort_keys=True)
    augment = None
    if augmented_views:
        augment = AugmentedViews(data_config["input_size"][1:], data_config["mean"], data_config["std"],
                                 augmented_views, augmentation_seed, data_config["interpolation"])
        attrs.update(view_augmentations=augment.describe(), augmentation_seed=augmentation_seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    shape = (patches.size(1), patches.size(2), augmented_views)
    try:
        writer = ImageFeatureWriter(output, image_ids, shape[0], shape[1], dtype, attrs, augmented_views,
                                    replace_existing=False)
    except FeatureFileExistsError:  # another run finished it while this one loaded the backbone
        logger.info(EXISTS_MESSAGE, output)
        return 0

    def batches(ids: Sequence[str]):
        loader = torch.utils.data.DataLoader(ImageFolder(images_dir, ids, transform, augment), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=collate_readable)
        for batch, usable, unreadable in loader:
            yield features_with_zero_rows(model, batch, usable, device, shape), unreadable

    try:
        bad = extract_rows(writer, image_ids, batches)
    except BaseException:  # an error or Ctrl-C: what is written stays, for the next run to resume
        writer.close(publish=False)
        raise
    write_report(report, bad)
    if bad and not skip_bad_images:
        writer.close(publish=False)
        raise BadImagesError(bad_images_message(bad, len(image_ids), report, writer.partial_path))
    writer.close()
    if bad:
        logger.warning("flagged %d of %d images as unusable (zero features, usable=False); listed in %s",
                       len(bad), len(image_ids), report)
    logger.info("wrote %s: %d images (%d unusable), %d patches x %d dims, %s", output, len(image_ids), len(bad),
                shape[0], shape[1], dtype)
    return len(image_ids)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-dir", type=Path, required=True, help="folder holding the image files")
    parser.add_argument("--image-ids", type=Path, nargs="+", required=True,
                        help="image-id lists (one file name per line); their union is extracted")
    parser.add_argument("--output", type=Path, required=True, help="HDF5 file to write")
    parser.add_argument("--backbone", default="vit_base_patch32_clip_224",
                        help="timm model name, optionally with a pretrained tag (e.g. .openai) for its preprocessing")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path,
                         help="local weight file of the backbone: timm or OpenAI/open_clip CLIP state dict")
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
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="store missing or undecodable images flagged (zero features, usable=False) instead of "
                             f"failing; either way they are listed in OUTPUT{BAD_IMAGES_SUFFIX}")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        extract(args.images_dir, args.image_ids, args.output, args.backbone, args.checkpoint,
                args.random_init_seed, args.image_size, args.batch_size, args.dtype, args.num_workers, args.device,
                args.augmented_views, args.augmentation_seed, skip_bad_images=args.skip_bad_images)
    except (ImageFeatureError, CheckpointError) as error:  # not a usage error: no usage text
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
