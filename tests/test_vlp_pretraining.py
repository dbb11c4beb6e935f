"""Vision-language pre-training (vlp-for-mmt-modality-loss.md, Sec. 3.2): masking, paired images,
object tags from the feature file to the encoder input, and the encoder handed to the MMT model."""

import shutil

import h5py
import pytest
import torch
from fairseq import tasks

from helpers import parse_train_args, setup_task
from m3p_fairseq.data.batch_keys import OBJECT_TAGS, PAIRED_IMAGE_LABEL
from m3p_fairseq.data.image_features import ImageFeatureError, read_image_ids
from m3p_fairseq.data.object_tags import OBJECT_TAGS_DATASET, read_object_tags, write_object_tags
from m3p_fairseq.data.vlp_caption_dataset import OWN_IMAGE, RANDOM_IMAGE
from preprocess.write_synthetic_tags import scene_tags


def vlp_task(data, *extra):
    cfg = parse_train_args([data, "--task", "vlp_pretraining", "--caption-lang", "en", "--arch", "vlp_encoder_tiny",
                            "--encoder-layers", "1", "--criterion", "vlp_pretraining_loss", "--dropout", "0", *extra])
    return tasks.setup_task(cfg.task), cfg


def test_scene_tags_are_the_colour_and_shape_words():
    assert scene_tags("A small red circle top left and a large blue square centre.") == "red circle blue square"


def test_synthetic_tags_are_written_per_image(tagged_data, raw_corpus):
    tags = read_object_tags(tagged_data / "image_features.h5")
    with h5py.File(tagged_data / "image_features.h5", "r") as f:
        ids = list(f["image_ids"].asstr()[()])
    captions = (raw_corpus / "train.en").read_text().splitlines()
    train_ids = read_image_ids(raw_corpus / "train.image_ids")
    for image_id, caption in list(zip(train_ids, captions))[:10]:
        words = tags[ids.index(image_id)].split()
        assert len(words) in (2, 4)
        assert all(word in caption.lower() for word in words)


def test_write_object_tags_rejects_unknown_ids(tmp_path, data_dir):
    path = tmp_path / "features.h5"
    shutil.copyfile(data_dir / "image_features.h5", path)
    before = path.read_bytes()
    with pytest.raises(ImageFeatureError, match="does not hold, e.g. \\['nope.png'\\]"):
        write_object_tags(path, {"nope.png": "dog"})
    assert path.read_bytes() == before
    assert read_object_tags(path) is None


def test_masking_rate_and_targets_over_many_draws(tagged_data):
    task, _ = vlp_task(tagged_data)
    task.load_dataset("train")
    dataset = task.dataset("train")
    d = task.source_dictionary
    mask = d.index("<mask>")
    masked = maskable = 0
    for epoch in range(1, 21):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            example = dataset[index]
            text = torch.cat([example["source"], example["tags"]])
            target = example["target"]
            original = torch.where(target != d.pad(), target, text)
            special = torch.isin(original, torch.tensor([d.bos(), d.eos(), d.pad()]))
            assert not (text == mask)[special].any()
            assert ((text == mask) == (target != d.pad())).all()  # predicted exactly where masked
            assert original[0] == d.bos()
            masked += int((text == mask).sum())
            maskable += int((~special).sum())
    assert maskable > 10000
    assert masked / maskable == pytest.approx(0.15, abs=0.01)


def test_paired_image_labels_over_many_draws(tagged_data):
    task, _ = vlp_task(tagged_data, "--mask-prob", "0")
    task.load_dataset("train")
    dataset = task.dataset("train")
    labels = []
    for epoch in range(1, 21):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            example = dataset[index]
            own_patches, _ = dataset.image_store.read(int(dataset.image_rows[index]))
            own_tags = dataset.tags[int(dataset.image_rows[index])]
            same_image = torch.equal(example["image_patches"], own_patches)
            assert same_image == (example["label"] == OWN_IMAGE)
            if example["label"] == OWN_IMAGE:
                assert torch.equal(example["tags"], own_tags)  # the tags travel with the image
            labels.append(example["label"])
    random_share = labels.count(RANDOM_IMAGE) / len(labels)
    assert len(labels) == 1200 and random_share == pytest.approx(0.5, abs=0.05)
    # the draws depend on (seed, epoch, index) only: a resumed run sees the same examples
    dataset.set_epoch(3)
    first = [dataset[i]["label"] for i in range(len(dataset))]
    dataset.set_epoch(4)
    other = [dataset[i]["label"] for i in range(len(dataset))]
    dataset.set_epoch(3)
    assert [dataset[i]["label"] for i in range(len(dataset))] == first != other


def test_tags_reach_the_encoder_input(tagged_data, raw_corpus):
    task, cfg = vlp_task(tagged_data, "--mask-prob", "0", "--random-image-prob", "0")
    task.load_dataset("train")
    dataset = task.dataset("train")
    batch = dataset.collater([dataset[i] for i in range(4)])
    tags = batch["net_input"][OBJECT_TAGS]
    d = task.source_dictionary
    captions = (raw_corpus / "train.en").read_text().splitlines()
    for row, index in enumerate(batch["id"].tolist()):
        text = d.string(tags[row][tags[row] != d.pad()], bpe_symbol="sentencepiece")
        assert text == scene_tags(captions[index])
    model = task.build_model(cfg.model).eval()
    with torch.no_grad():
        out = model.encoder(**batch["net_input"])
        without = dict(batch["net_input"])
        del without[OBJECT_TAGS]
        plain = model.encoder(**without)
    assert out["encoder_out"][0].size(0) == plain["encoder_out"][0].size(0) + tags.size(1)
    assert not torch.allclose(out["encoder_out"][0][0], plain["encoder_out"][0][0])


def test_no_object_tags_option_and_untagged_files(data_dir, tagged_data):
    for data, extra in ((data_dir, []), (tagged_data, ["--no-object-tags"])):
        task, _ = vlp_task(data, *extra)
        task.load_dataset("valid")
        dataset = task.dataset("valid")
        assert OBJECT_TAGS not in dataset.collater([dataset[0], dataset[1]])["net_input"]


def test_pretraining_step_and_handover_to_the_mmt_model(tagged_data, tmp_path):
    torch.manual_seed(0)
    task, cfg = vlp_task(tagged_data)
    task.load_dataset("train")
    dataset = task.dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    batch = dataset.collater([dataset[i] for i in range(8)])
    loss, sample_size, logs = criterion(model, batch)
    assert sample_size == int(batch["target"].ne(task.source_dictionary.pad()).sum()) > 0
    assert logs["nsentences"] == 8 and 0 <= logs["paired_correct"] <= 8
    loss.backward()
    assert model.pair_classifier.weight.grad.abs().sum() > 0
    assert model.encoder.image_encoder.projection.weight.grad.abs().sum() > 0
    assert PAIRED_IMAGE_LABEL in batch

    checkpoint = tmp_path / "vlp.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    mmt_task, mmt_cfg = setup_task(tagged_data, "--arch", "vlp_mmt_tiny", "--encoder-layers", "1",
                                   "--pretrained-vlp-encoder", checkpoint, lang_pairs="en-de")
    mmt = mmt_task.build_model(mmt_cfg.model)
    pretrained = model.encoder.state_dict()
    for name, tensor in mmt.encoder.state_dict().items():
        if name.startswith(("text_encoder.", "image_encoder.")):
            assert torch.equal(tensor, pretrained[name]), name
    assert mmt_cfg.model.pretrained_vlp_encoder_loaded  # a rebuilt checkpoint does not read it again

    mmt_task, mmt_cfg = setup_task(tagged_data, "--arch", "vlp_mmt_tiny", "--encoder-layers", "2",
                                   "--pretrained-vlp-encoder", checkpoint, lang_pairs="en-de")
    with pytest.raises(ValueError, match="does not fit this model"):
        mmt_task.build_model(mmt_cfg.model)


def test_missing_features_name_what_is_expected(tmp_path, data_dir):
    data = tmp_path / "data-bin"
    shutil.copytree(data_dir, data)
    (data / "image_features.h5").unlink()
    task, _ = vlp_task(data)
    with pytest.raises(ImageFeatureError, match="needs image features for split 'valid'"):
        task.load_dataset("valid")
    task, _ = vlp_task(data, "--caption-lang", "cs")
    with pytest.raises(FileNotFoundError, match="no cs captions for split 'valid'"):
        task.load_dataset("valid")


def test_object_tags_dataset_shape_is_checked(tmp_path, data_dir):
    path = tmp_path / "features.h5"
    shutil.copyfile(data_dir / "image_features.h5", path)
    with h5py.File(path, "a") as f:
        f.create_dataset(OBJECT_TAGS_DATASET, data=["a", "b"], dtype=h5py.string_dtype())
    with pytest.raises(ImageFeatureError, match="one tag string per image"):
        read_object_tags(path)
