"""Region boxes and classes for the synthetic corpus: each scene's true objects, written into its
image-feature file as ``region_boxes``/``region_classes`` (m3p_fairseq/data/m3p_regions.py), so
that M3P pre-training's MRM also predicts each masked region's object class (paper Sec. 3.1).

    python -m preprocess.write_synthetic_regions --raw-dir RAW --features DATA/image_features.h5 \\
        [--splits train,valid,test]

The objects are read from RAW/{split}.scenes.jsonl (preprocess/make_synthetic_corpus.py, aligned
with RAW/{split}.image_ids). The regions stay the feature file's grid patches: a patch whose
centre lies in an object's bounding box shows that object, and gets its box (x1, y1, x2, y2 as
fractions of the image side) and class (shape x colour, ``make_synthetic_corpus.object_class``);
any other patch keeps its grid cell's box and no class (-1). With ``--image-size 48`` and a
16-pixel-patch ViT the grid is the scenes' own 3 x 3 cells, one patch per possible object. The
feature file is replaced atomically; running it again writes the same labels.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from m3p_fairseq.data.image_features import ImageFeatureError, ImageFeatureStore, read_image_ids
from m3p_fairseq.data.m3p_regions import NO_CLASS, RegionFeatureReader, grid_boxes, write_region_labels
from m3p_fairseq.data.text_lines import read_lines
from preprocess.make_synthetic_corpus import (
    NUM_OBJECT_CLASSES,
    SCENES_SUFFIX,
    SceneObject,
    object_box,
    object_class,
    scene_from_json,
)


def patch_labels(objects: Sequence[SceneObject], rows: int, cols: int) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes [rows*cols, 4], classes [rows*cols]) of a row-major patch grid over one scene."""
    boxes = grid_boxes(rows, cols)[:, :4].numpy().copy()
    classes = np.full(rows * cols, NO_CLASS, dtype=np.int64)
    for patch in range(rows * cols):
        r, c = divmod(patch, cols)
        x, y = (c + 0.5) / cols, (r + 0.5) / rows
        for obj in objects:
            x1, y1, x2, y2 = object_box(obj)
            if x1 <= x <= x2 and y1 <= y <= y2:
                boxes[patch], classes[patch] = (x1, y1, x2, y2), object_class(obj)
    return boxes, classes


def labels_of_split(raw_dir: Path, split: str, rows: int, cols: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    ids_path, scenes_path = raw_dir / f"{split}.image_ids", raw_dir / f"{split}{SCENES_SUFFIX}"
    if not scenes_path.is_file():
        raise FileNotFoundError(f"{scenes_path} not found (each scene's objects, written by "
                                "preprocess/make_synthetic_corpus.py)")
    image_ids, scenes = read_image_ids(ids_path), read_lines(scenes_path)
    if len(scenes) != len(image_ids):
        raise ValueError(f"{scenes_path} has {len(scenes)} scenes but {ids_path} has {len(image_ids)} image ids")
    labels = {}
    for line_no, (image_id, line) in enumerate(zip(image_ids, scenes), start=1):
        try:
            objects = scene_from_json(line)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{scenes_path}:{line_no}: not a scene ({error})") from None
        labels[image_id] = patch_labels(objects, rows, cols)
    return labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.write_synthetic_regions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-dir", type=Path, required=True, help="the synthetic corpus")
    parser.add_argument("--features", type=Path, required=True, help="its image-feature file (rewritten)")
    parser.add_argument("--splits", default="train,valid,test")
    args = parser.parse_args(argv)
    try:
        rows, cols = RegionFeatureReader.patch_grid(ImageFeatureStore(args.features))
        labels = {}
        for split in filter(None, (s.strip() for s in args.splits.split(","))):
            labels.update(labels_of_split(args.raw_dir, split, rows, cols))
        written = write_region_labels(args.features, {k: v[0] for k, v in labels.items()},
                                      {k: v[1] for k, v in labels.items()}, NUM_OBJECT_CLASSES)
    except (FileNotFoundError, ValueError, ImageFeatureError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.features}: region boxes and classes of {written} images ({rows}x{cols} patches, "
          f"{NUM_OBJECT_CLASSES} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
