"""Object tags for the synthetic corpus: the true colour and shape words of every scene, written into
an image-feature file (the optional ``object_tags`` dataset, m3p_fairseq/data/object_tags.py), as
a detector's tags would be for real images (vlp-for-mmt-modality-loss.md, Sec. 3.2).

    python -m preprocess.write_synthetic_tags --raw-dir RAW --features DATA/image_features.h5 \\
        [--splits train,valid,test]

The words are read from the clean English captions (RAW/{split}.en, aligned with
RAW/{split}.image_ids), which preprocess/make_synthetic_corpus.py renders from the scenes with a
fixed vocabulary: each object's colour and shape, in reading order ("red circle blue square").
The feature file is replaced atomically; running it again rewrites the same tags.
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from m3p_fairseq.data.image_features import ImageFeatureError, read_image_ids
from m3p_fairseq.data.object_tags import write_object_tags
from preprocess.make_synthetic_corpus import LEXICONS

TAG_LANG = "en"
_WORD = re.compile(r"[a-z]+")


def scene_tags(caption: str) -> str:
    """'A small red circle top left and a large blue square centre.' -> 'red circle blue square'."""
    lexicon = LEXICONS[TAG_LANG]
    colours = set(lexicon["colours"].values())
    shapes = {noun for noun, _ in lexicon["shapes"].values()}
    return " ".join(word for word in _WORD.findall(caption.lower()) if word in colours or word in shapes)


def tags_of_split(raw_dir: Path, split: str) -> Dict[str, str]:
    ids_path, captions_path = raw_dir / f"{split}.image_ids", raw_dir / f"{split}.{TAG_LANG}"
    for path in (ids_path, captions_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (the synthetic corpus's image ids and clean "
                                    f"{TAG_LANG} captions; make it with --langs including {TAG_LANG})")
    image_ids = read_image_ids(ids_path)
    captions = captions_path.read_text(encoding="utf-8").splitlines()
    if len(captions) != len(image_ids):
        raise ValueError(f"{captions_path} has {len(captions)} lines but {ids_path} lists {len(image_ids)} images")
    tags = {}
    for line_no, (image_id, caption) in enumerate(zip(image_ids, captions), start=1):
        words = scene_tags(caption)
        if not words:
            raise ValueError(f"{captions_path}:{line_no}: no colour or shape word in {caption!r} "
                             "(not a caption of preprocess/make_synthetic_corpus.py?)")
        if tags.setdefault(image_id, words) != words:
            raise ValueError(f"{ids_path}:{line_no}: image {image_id} appears twice with different captions")
    return tags


def write_synthetic_tags(raw_dir, features, splits: Sequence[str]) -> int:
    tags: Dict[str, str] = {}
    for split in splits:
        tags.update(tags_of_split(Path(raw_dir), split))
    return write_object_tags(features, tags)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.write_synthetic_tags",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-dir", required=True, help="the synthetic corpus (make_synthetic_corpus --output-dir)")
    parser.add_argument("--features", required=True, help="the HDF5 feature file holding those images")
    parser.add_argument("--splits", default="train,valid,test")
    args = parser.parse_args(argv)
    try:
        count = write_synthetic_tags(args.raw_dir, args.features, [s for s in args.splits.split(",") if s])
    except (OSError, ValueError, ImageFeatureError) as error:
        sys.exit(f"error: {error}")
    print(f"{args.features}: object tags for {count} images")
    return count


if __name__ == "__main__":
    main()
