"""Per-language retrieval evaluation: leaks, alignment and the image-embedding file's identity."""

import json

import numpy as np
import pytest

from m3p_fairseq.data.image_features import ImageFeatureStore, ImageFeatureWriter
from m3p_fairseq.data.mla_dataset import NATIVE_IDENTITY_ATTR, MlaDataError
from m3p_fairseq.evaluation.mla_retrieval import evaluate_languages
from m3p_fairseq.evaluation.retrieval import RetrievalError
from m3p_fairseq.models.native_dual_encoder import NativeModelMismatch
from m3p_fairseq.tasks.mla_acquisition import open_image_embeddings
from test_mla_encoders import make_native


def write_embeddings(path, ids, attrs):
    writer = ImageFeatureWriter(path, ids, 1, 16, "float32", attrs=attrs)
    vectors = np.random.default_rng(0).standard_normal((len(ids), 16)).astype("float32")
    writer.write(vectors[:, None], vectors)
    writer.close()


def write_split(data, split, ids, captions):
    (data / f"{split}.image_ids").write_text("\n".join(ids) + "\n")
    for lang, lines in captions.items():
        (data / f"{split}.{lang}").write_text("\n".join(lines) + "\n")


@pytest.fixture
def setup(tmp_path):
    native = make_native(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    attrs = {NATIVE_IDENTITY_ATTR: json.dumps(native.identity.to_dict())}
    write_embeddings(tmp_path / "emb.h5", ["a", "b", "c", "d"], attrs)
    write_split(data, "train", ["a", "b"], {"en": ["a red circle", "a blue square"]})
    return native, data, tmp_path


def test_zero_shot_scores_every_language(setup):
    native, data, tmp = setup
    write_split(data, "test", ["c", "d", "c"], {"en": ["a red circle", "a blue square", "small circle"],
                                                 "de": ["ein roter kreis", "ein blaues quadrat", "kleiner kreis"]})
    images = open_image_embeddings(tmp / "emb.h5", native.identity)
    scores = evaluate_languages(data, "test", ["de"], native, images)
    assert set(scores) == {"en", "de"}
    # R@1 worked out with numpy: images c, d (rows 2, 3 of the file), captions of c, d, c
    text = native.encode_text(["a red circle", "a blue square", "small circle"]).detach().numpy()
    image = np.stack([images.read(2)[1].numpy(), images.read(3)[1].numpy()])
    cos = (image / np.linalg.norm(image, axis=1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
    owner = np.array([0, 1, 0])
    i2t = np.mean([owner[np.argmax(cos[i])] == i for i in range(2)]) * 100
    t2i = np.mean([np.argmax(cos[:, j]) == owner[j] for j in range(3)]) * 100
    assert scores["en"]["i2t_r1"] == pytest.approx(i2t) and scores["en"]["t2i_r1"] == pytest.approx(t2i)
    assert scores["en"]["i2t_r5"] == 100.0  # 2 images: everything is within the top 5


def test_leaks_and_misalignment_are_refused(setup):
    native, data, tmp = setup
    images = ImageFeatureStore(tmp / "emb.h5")
    write_split(data, "test", ["b", "c"], {"en": ["x", "y"]})
    with pytest.raises(RetrievalError, match=r"1 test image\(s\) also occur in the training images \('b'\)"):
        evaluate_languages(data, "test", [], native, images)
    write_split(data, "test", ["c", "d"], {"en": ["x", "y"], "de": ["nur eine zeile"]})
    with pytest.raises(ValueError, match=r"test\.de: 1 captions but .*test\.image_ids has 2 image ids"):
        evaluate_languages(data, "test", ["de"], native, images)


def test_image_embeddings_must_come_from_the_same_native_model(setup):
    native, data, tmp = setup
    other = make_native(tmp, seed=1, name="other")
    with pytest.raises(NativeModelMismatch, match="image-embedding file .* was made with native model 'tiny-en'"):
        open_image_embeddings(tmp / "emb.h5", other.identity)
    write_embeddings(tmp / "plain.h5", ["a"], {})
    with pytest.raises(MlaDataError, match="not an MLA image-embedding file"):
        open_image_embeddings(tmp / "plain.h5", native.identity)
