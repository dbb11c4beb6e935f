"""The multimodal_translation task: language tags, directions, and every input error it names."""

import os

import pytest
import torch

from helpers import assert_epoch_workers_exit, setup_task, write_random_features
from m3p_fairseq.data.batch_keys import IMAGE_INPUTS, SOURCE_LANG
from m3p_fairseq.data.image_features import ImageFeatureError


def test_target_language_tag_prefixed_to_source(data_dir):
    task, _ = setup_task(data_dir)
    task.load_dataset("valid")
    sub_datasets = task.dataset("valid").datasets
    assert len(sub_datasets) == 3  # en-de, de-en, en-fr
    for dataset, tgt in zip(sub_datasets, ["de", "en", "fr"]):
        example = dataset[0]
        assert example["source"][0].item() == task.src_dict.index(f"__{tgt}__")
        assert example["source"][-1].item() == task.src_dict.eos()
        assert task.src_dict.index(f"__{tgt}__") not in example["target"].tolist()
    assert task.languages == ["de", "en", "fr"]


def test_generation_direction_from_source_and_target_lang(data_dir):
    task, _ = setup_task(data_dir, "--source-lang", "de", "--target-lang", "en")
    task.load_dataset("test")
    dataset = task.dataset("test")
    assert len(dataset) == 40
    assert dataset[0]["source"][0].item() == task.src_dict.index("__en__")
    assert dataset.has_images


def test_train_split_is_temperature_sampled_over_all_pairs(data_dir):
    task, cfg = setup_task(data_dir, "--sampling-temperature", "3")
    model = task.build_model(cfg.model)
    task.load_dataset("train")
    dataset = task.dataset("train")
    dataset.set_epoch(1)
    assert dataset.names == ["en-de", "de-en", "en-fr"]
    assert sum(dataset.realised_mix.values()) == 180
    assert model.num_updates == 0


def test_warmup_reads_the_models_update_count(data_dir):
    task, cfg = setup_task(data_dir, "--sampling-temperature", "5", "--sampling-temperature-init", "1",
                           "--sampling-warmup-updates", "100")
    model = task.build_model(cfg.model)
    assert task.temperature() == 1.0
    model.set_num_updates(50)  # what fairseq's trainer does every step and after a resume
    assert task.temperature() == 3.0


def test_text_only_works_without_image_features(data_copy):
    os.remove(data_copy / "image_features.h5")
    task, cfg = setup_task(data_copy, "--fusion", "none")
    task.load_dataset("valid")
    model = task.build_model(cfg.model)
    batch = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(3)])
    assert "image_patches" not in batch["net_input"]
    out, _ = model(**batch["net_input"])
    assert out.shape[0] == 3


def test_a_text_only_model_gets_batches_without_image_features(data_dir):
    # the data has features; a text-only model ignores them, so the dataset does not read them
    task, cfg = setup_task(data_dir, "--fusion", "none")
    task.load_dataset("valid")  # fairseq-train loads the validation split before the model
    dataset = task.dataset("valid")
    assert "image_patches" in dataset.collater([dataset[0], dataset[1]])["net_input"]  # no model yet
    text_only = task.build_model(cfg.model)
    batch = dataset.collater([dataset[i] for i in range(3)])
    assert not set(IMAGE_INPUTS) & set(batch["net_input"]) and SOURCE_LANG in batch["net_input"]
    assert text_only(**batch["net_input"])[0].shape[0] == 3
    # an ensemble with a model that reads images gets them again
    task.build_model(setup_task(data_dir, "--fusion", "gated")[1].model)
    assert {"image_patches", "image_global"} <= set(dataset.collater([dataset[0]])["net_input"])


def test_unknown_language(data_dir):
    with pytest.raises(ValueError, match=r"unknown language 'xx'.*tags for de, en, fr.*__xx__"):
        setup_task(data_dir, lang_pairs="en-de,en-xx")


def test_malformed_lang_pairs(data_dir):
    with pytest.raises(ValueError, match=r"'en_de' is not a direction like en-de"):
        setup_task(data_dir, lang_pairs="en_de")


def test_missing_split(data_dir):
    task, _ = setup_task(data_dir)
    with pytest.raises(FileNotFoundError, match=r"split 'test2016' of direction en-de not found: expected .*test2016\.en-de"):
        task.load_dataset("test2016")


def test_missing_dictionary(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dict\.txt not found"):
        setup_task(tmp_path)


def test_image_id_missing_from_hdf5(data_copy):
    ids = (data_copy / "valid.image_ids").read_text().splitlines()
    ids[2] = "not_extracted.png"
    (data_copy / "valid.image_ids").write_text("\n".join(ids) + "\n")
    task, _ = setup_task(data_copy)
    with pytest.raises(ImageFeatureError, match=r"valid\.image_ids:3: image id 'not_extracted\.png' is not in .*image_features\.h5"):
        task.load_dataset("valid")


def test_text_and_id_count_mismatch(data_copy):
    ids = (data_copy / "valid.image_ids").read_text().splitlines()
    (data_copy / "valid.image_ids").write_text("\n".join(ids[:-1]) + "\n")
    task, _ = setup_task(data_copy)
    with pytest.raises(ImageFeatureError, match=r"valid\.image_ids has 11 image ids but .*valid\.en\.bin has 12 sentences"):
        task.load_dataset("valid")


def test_features_without_id_list(data_copy):
    os.remove(data_copy / "valid.image_ids")
    task, _ = setup_task(data_copy)
    with pytest.raises(ImageFeatureError, match=r"has no image-id list: expected one of .*valid\.image_ids"):
        task.load_dataset("valid")


def test_feature_dimension_mismatch_when_training(data_dir):
    task, cfg = setup_task(data_dir, "--image-feature-dim", "32")
    task.load_dataset("valid")
    with pytest.raises(ImageFeatureError, match=r"holds 16-dimensional image features but the model expects --image-feature-dim 32"):
        task.build_model(cfg.model)


def test_feature_dimension_mismatch_when_generating(data_dir, tmp_path):
    # fairseq-generate builds the model from the checkpoint first, then loads the split
    task, cfg = setup_task(data_dir, "--source-lang", "en", "--target-lang", "de")
    task.build_model(cfg.model)
    wide = tmp_path / "wide.h5"
    ids = (data_dir / "test.image_ids").read_text().splitlines()
    write_random_features(wide, ids, feature_dim=8)
    task.cfg.image_features = str(wide)
    with pytest.raises(ImageFeatureError, match=r"holds 8-dimensional image features but the model expects --image-feature-dim 16"):
        task.load_dataset("test")


def test_image_dim_inferred_from_data(data_dir):
    task, cfg = setup_task(data_dir, "--fusion", "gated")
    model = task.build_model(cfg.model)
    assert model.image_feature_dim == 16


def test_fusion_without_any_features(data_copy):
    os.remove(data_copy / "image_features.h5")
    task, cfg = setup_task(data_copy, "--fusion", "cvlm")
    with pytest.raises(ImageFeatureError, match=r"--fusion cvlm reads images, but no image features were found"):
        task.build_model(cfg.model)


def test_model_refuses_a_batch_without_images(data_dir):
    task, cfg = setup_task(data_dir)
    model = task.build_model(cfg.model)
    tokens = torch.tensor([[task.src_dict.index("__de__"), 10, 11, task.src_dict.eos()]])
    with pytest.raises(ValueError, match=r"--fusion cvlm needs image features, but the batch has none"):
        model.encoder(tokens, torch.tensor([4]))


def test_validation_keeps_every_sentence(data_dir):
    # fairseq drops a last batch that is not a multiple of --required-batch-size-multiple (#5036)
    task, _ = setup_task(data_dir, "--source-lang", "en", "--target-lang", "de")
    task.load_dataset("test")
    iterator = task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=16,
                                       required_batch_size_multiple=8)
    assert sum(len(batch["id"]) for batch in iterator.next_epoch_itr(shuffle=False)) == 40


def test_batches_carry_the_source_language_for_every_model(data_dir):
    # the batch contract: loaded splits always emit source_lang; models ignore what they do not use
    task, cfg = setup_task(data_dir, "--fusion", "gated")
    task.load_dataset("valid")
    en_de, de_en = task.dataset("valid").datasets[:2]
    batch = task.dataset("valid").collater([en_de[0], de_en[0], en_de[1]])
    rows = {int(i): lang for i, lang in zip(batch["id"], batch["net_input"][SOURCE_LANG])}
    assert sorted(batch["net_input"][SOURCE_LANG].tolist()) == sorted(
        [task.src_dict.index("__en__")] * 2 + [task.src_dict.index("__de__")])
    assert rows[1] == task.src_dict.index("__en__")
    model = task.build_model(cfg.model)  # the encoder-decoder model does not read it
    assert model(**batch["net_input"])[0].shape[0] == 3
    assert all(not hasattr(part, "emit_source_lang") for part in task.dataset("valid").datasets)


def test_each_epochs_data_loader_workers_exit_with_it(data_dir):
    task, cfg = setup_task(data_dir)
    task.build_model(cfg.model)
    task.load_dataset("train")
    assert_epoch_workers_exit(task, task.dataset("train"), max_tokens=400)
