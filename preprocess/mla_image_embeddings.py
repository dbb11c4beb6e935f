"""Embed images with the frozen native vision tower (v = W_b z_[CLASS], Eq. 6) into the project's
HDF5 feature format, for MLA's Language Exposure stage and retrieval evaluation.

    python -m preprocess.mla_image_embeddings --native native.pt --images-dir IMAGES \
        --image-ids DATA/train.image_ids DATA/valid.image_ids DATA/test.image_ids \
        --output DATA/image_embeddings.h5

Stored per image: ``global`` [E] = the projected embedding v, ``patches`` [1, E] = the same vector
(the format requires patches; MLA reads only ``global``). The attribute ``mla_native`` records
the native model's identity (name, embedding size, weights fingerprint); the task refuses the
file with any other native model. Written through :class:`ImageFeatureWriter`: atomic, and an
interrupted run resumes at the first missing row.

(``preprocess/extract_image_features.py`` stores timm pre-logits features without CLIP's final
projection; to serve MLA from it, it would have to apply ``visual.proj`` and record the same
``mla_native`` identity of the full CLIP model the text side comes from.)
"""

import argparse
import json
from pathlib import Path
from typing import List, Sequence

import torch

from m3p_fairseq.data.image_features import ImageFeatureWriter
from m3p_fairseq.data.mla_dataset import NATIVE_IDENTITY_ATTR, read_lines
from m3p_fairseq.mla.native_training import load_pixels
from m3p_fairseq.models.native_dual_encoder import NativeDualEncoder, load_native


def unique_ids(id_files: Sequence[Path]) -> List[str]:
    seen, ids = set(), []
    for path in id_files:
        for image_id in read_lines(Path(path)):
            if image_id not in seen:
                seen.add(image_id)
                ids.append(image_id)
    return ids


@torch.no_grad()
def embed_images(native: NativeDualEncoder, images_dir: Path, image_ids: Sequence[str], output: Path,
                 batch_size: int = 64) -> int:
    attrs = {NATIVE_IDENTITY_ATTR: json.dumps(native.identity.to_dict()), "content": "mla native image embedding"}
    writer = ImageFeatureWriter(output, image_ids, 1, native.embed_dim, "float32", attrs=attrs)
    transform = native.image_transform()
    try:
        for start in range(writer.rows_written, len(image_ids), batch_size):
            chunk = image_ids[start:start + batch_size]
            v = native.encode_image(load_pixels(images_dir, chunk, transform)).float().numpy()
            writer.write(v[:, None, :], v)
    finally:
        writer.close()
    return len(image_ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.mla_image_embeddings",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--native", required=True, help="native dual encoder checkpoint")
    parser.add_argument("--native-open-clip-model", default=None, help="open_clip architecture of --native, "
                                                                       "for a user's open_clip checkpoint")
    parser.add_argument("--images-dir", required=True, type=Path)
    parser.add_argument("--image-ids", required=True, nargs="+", type=Path, help="id lists, one id per line")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    native = load_native(args.native, args.native_open_clip_model)
    n = embed_images(native, args.images_dir, unique_ids(args.image_ids), args.output, args.batch_size)
    print(f"{n} images embedded with {native.name!r} -> {args.output}")
    return n


if __name__ == "__main__":
    main()
