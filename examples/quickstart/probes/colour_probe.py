"""Does the quickstart's random ViT keep colour? A logistic-regression probe on each one-object
image's mean patch feature predicts the object's colour.

    python examples/quickstart/probes/colour_probe.py [--work-dir work/quickstart] [--train 900] [--test 300]

Reads the quickstart's corpus (WORK/raw) and features (WORK/data-bin/image_features.h5), as
``python examples/quickstart/run.py`` makes them; each image's colour comes from replaying the
corpus generator's scenes (checked against the English captions).
"""

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]

from m3p_fairseq.data.data_dir import DataDirectory  # noqa: E402
from m3p_fairseq.data.text_lines import read_lines  # noqa: E402
from preprocess.make_synthetic_corpus import COLOURS, SPLITS, render_caption, sample_scene  # noqa: E402


def train_scenes(raw: Path, seed: int):
    """The training split's scenes, replayed from the generator's seed and checked against the
    English captions (a corpus made with another seed or version is an error, not wrong labels)."""
    rng = np.random.default_rng([seed, SPLITS.index("train")])
    image_ids = read_lines(DataDirectory(raw).image_ids("train"))
    captions = read_lines(raw / "train.en")
    scenes = []
    for line, (image_id, caption) in enumerate(zip(image_ids, captions), start=1):
        scene = sample_scene(rng)
        if render_caption(scene, "en") != caption:
            raise SystemExit(f"{raw / 'train.en'} line {line}: {caption!r} is not the scene of seed {seed} "
                             f"({render_caption(scene, 'en')!r}); pass the corpus's --seed")
        scenes.append((image_id, scene))
    return scenes


def mean_patch_features(features: Path, image_ids):
    import h5py

    from m3p_fairseq.data.image_features import IMAGE_IDS, PATCHES

    with h5py.File(features, "r") as f:
        row_of = {image_id: row for row, image_id in enumerate(f[IMAGE_IDS].asstr()[()])}
        rows = [row_of[image_id] for image_id in image_ids]
        return np.stack([f[PATCHES][row].astype(np.float64).mean(axis=0) for row in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "quickstart")
    parser.add_argument("--seed", type=int, default=1, help="the corpus's --seed (the quickstart's default)")
    parser.add_argument("--train", type=int, default=900, help="one-object images to fit the probe on")
    parser.add_argument("--test", type=int, default=300, help="held-out one-object images it is scored on")
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    one_object = [(image_id, scene[0].colour) for image_id, scene in train_scenes(args.work_dir / "raw", args.seed)
                  if len(scene) == 1]
    if len(one_object) < args.train + args.test:
        raise SystemExit(f"only {len(one_object)} one-object training images; lower --train/--test")
    one_object = one_object[:args.train + args.test]
    features = mean_patch_features(DataDirectory(args.work_dir / "data-bin").shared_features, [i for i, _ in one_object])
    colours = np.array([colour for _, colour in one_object])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(features[:args.train], colours[:args.train])
    correct = int((probe.predict(features[args.train:]) == colours[args.train:]).sum())
    print(f"colour of the object recovered in {correct} of {args.test} held-out one-object images "
          f"(probe trained on {args.train}; {len(COLOURS)} colours, chance {100 / len(COLOURS):.0f} %)")
    return correct


if __name__ == "__main__":
    main()
