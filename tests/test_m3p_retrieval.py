"""M3P image-text retrieval: the fine-tuning pairs (matched + 3 negatives), the cross-encoder
similarity, the refusal of test images seen in training, and the paper's Table 2 recipe through
the real command lines at toy size (examples/pretraining/retrieval.py: fairseq-train
pre-training -> fairseq-train --task m3p_retrieval -> scripts/m3p_retrieval.py)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, parse_train_args
from m3p_fairseq.data.batch_keys import (
    PRETRAINING_OBJECTIVE,
    REGION_FEATURES,
    REGION_SPATIAL,
    SOURCE_LANG,
    VLM_LABELS,
    VLM_LOGITS,
)
from m3p_fairseq.data.image_features import read_image_ids
from m3p_fairseq.data.m3p_retrieval_dataset import with_bos
from m3p_fairseq.evaluation.m3p_retrieval import vlm_similarity

LANGS = ["en", "de"]
TOY = ["--langs", ",".join(LANGS), "--num-train", 40, "--num-valid", 8, "--num-test", 12, "--image-size", 32,
       "--spm-vocab-size", 150, "--pretrain-updates", 4, "--finetune-updates", 3, "--batch-size", 4]
SETTINGS = ["w/o fine-tune", "fine-tune on en", "fine-tune on each", "fine-tune on all",
            "without pre-training (on all)"]


@pytest.fixture(scope="module")
def task(data_dir):
    from fairseq import tasks

    cfg = parse_train_args([data_dir, "--task", "m3p_retrieval", "--langs", "en,de", "--arch", "m3p_pretraining_tiny",
                            "--criterion", "m3p_pretraining", "--batch-size", "2", "--seed", "5"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    return task, cfg


def test_each_item_is_a_match_and_three_negatives_showing_another_image(task):
    task, _ = task
    dataset = task.dataset("train")
    ids = read_image_ids(task.cfg.data + "/train.image_ids")
    assert len(dataset) == 2 * len(ids)  # en and de captions, merged
    swapped_images = swapped_texts = 0
    for index in range(len(dataset)):
        pairs = dataset.pairs(index)
        assert [label for _, _, label in pairs] == [1, 0, 0, 0]
        caption, row, _ = pairs[0]
        assert caption == index
        for other_caption, other_row, _ in pairs[1:]:
            assert other_row != row or other_caption != caption
            if other_caption == caption:  # the image swapped: another image's row
                assert other_row != row
                swapped_images += 1
            else:  # the text swapped: a caption of the same language, of another image
                assert other_row == row
                assert dataset.captions[other_caption][0] == dataset.captions[caption][0]
                assert dataset.image_keys[other_caption] != dataset.image_keys[caption]
                swapped_texts += 1
        assert dataset.pairs(index) == pairs  # drawn from (seed, epoch, index) alone
    assert swapped_images > 0 and swapped_texts > 0


def test_a_negative_never_uses_another_caption_of_the_same_image():
    # 3 images with 3 captions each (as Flickr30k's 5): rows 0-2 show image a, 3-5 b, 6-8 c
    from fairseq.data import Dictionary

    from m3p_fairseq.data.m3p_retrieval_dataset import RetrievalPairDataset, SplitCaptions

    ids = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    text = {lang: [torch.tensor([4 + i, 2]) for i in range(9)] for lang in ("en", "de")}
    captions = SplitCaptions("train", "train.image_ids", ids, np.array([0] * 3 + [1] * 3 + [2] * 3), text, 0)
    dataset = RetrievalPairDataset(captions, None, Dictionary(), {"en": 0, "de": 1}, 3, 128, seed=1)
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            (caption, row, _), *negatives = dataset.pairs(index)
            for other_caption, other_row, label in negatives:
                assert label == 0
                if other_caption != caption:  # a swapped text: same language, another image
                    assert ids[other_caption % 9] != ids[caption % 9] and other_caption // 9 == caption // 9
                else:  # a swapped image
                    assert other_row != row


def test_a_batch_is_a_vlm_batch_of_the_pretraining_model(task):
    task, cfg = task
    dataset = task.dataset("train")
    batch = dataset.collater([dataset[0], dataset[len(dataset) - 1]])
    assert batch["net_input"][PRETRAINING_OBJECTIVE] == "vlm"
    assert batch[VLM_LABELS].tolist() == [1, 0, 0, 0, 1, 0, 0, 0]
    en, de = task.lang_tag_index("en"), task.lang_tag_index("de")
    assert batch["net_input"][SOURCE_LANG].tolist() == [en] * 4 + [de] * 4  # item 0 is English, the last German
    assert (batch["net_input"]["src_tokens"][:, 0] == task.dictionary.bos()).all()
    model = task.build_model(cfg.model)
    loss, sample_size, log = task.build_criterion(cfg.criterion)(model, batch)
    assert sample_size == 8 and torch.isfinite(loss) and log["vlm_loss"] == loss.data


def test_similarity_is_each_pairs_own_score(task):
    task, cfg = task
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    regions = task.regions("train")
    read = [regions.read(row) for row in (0, 1, 2)]
    features, spatial = torch.stack([r[0] for r in read]), torch.stack([r[1] for r in read])
    dataset = task.dataset("train")
    captions = [with_bos(dataset.captions[i][1], task.dictionary, 128) for i in (0, 5, 9, 11)]
    lang = task.lang_tag_index("en")
    similarity = vlm_similarity(model, captions, lang, features, spatial, task.dictionary.pad(), batch_size=5)
    assert similarity.shape == (3, 4)
    with torch.no_grad():
        for i in range(3):
            for c in range(4):
                logits = model(objective="vlm", source_lang=torch.tensor([lang]), src_tokens=captions[c][None],
                               **{REGION_FEATURES: features[i:i + 1], REGION_SPATIAL: spatial[i:i + 1]})[VLM_LOGITS]
                assert similarity[i, c].item() == pytest.approx(torch.log_softmax(logits.double(), -1)[0, 1].item(),
                                                                abs=1e-5)


def test_unknown_language_and_wrong_model_are_refused(data_dir):
    from fairseq import tasks

    cfg = parse_train_args([data_dir, "--task", "m3p_retrieval", "--langs", "en,xx", "--arch", "m3p_pretraining_tiny",
                            "--criterion", "m3p_pretraining", "--batch-size", "2"])
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        tasks.setup_task(cfg.task)
    cfg = parse_train_args([data_dir, "--task", "m3p_retrieval", "--arch", "m3p_transformer_tiny", "--batch-size", "2"])
    with pytest.raises(ValueError, match="fine-tunes the M3P pre-training model"):
        tasks.setup_task(cfg.task).build_model(cfg.model)


# ---- the recipe through the real command lines -------------------------------------------------
def recipe(work):
    result = subprocess.run([sys.executable, "examples/pretraining/retrieval.py", "--work-dir", work, *map(str, TOY)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    work = tmp_path_factory.mktemp("m3p_retrieval")
    return work, recipe(work)


def test_table2_has_every_setting_and_language(ran):
    work, stdout = ran
    lines = (work / "table2.md").read_text().splitlines()
    table = lines[lines.index("| setting (mR) | en | de |"):]
    assert [row.split(" | ")[0][2:] for row in table[2:]] == SETTINGS
    results = json.loads((work / "results.json").read_text())
    assert list(results) == SETTINGS
    for setting in SETTINGS:
        assert sorted(results[setting]) == sorted(LANGS)
        for scores in results[setting].values():
            assert sorted(scores) == sorted(["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"])
            assert all(0 <= v <= 100 for v in scores.values())
            assert scores["mR"] == pytest.approx(sum(v for k, v in scores.items() if k != "mR") / 6)
            # 12 test images, one caption each: every recall is a multiple of 1/12
            assert all(abs(v * 12 / 100 - round(v * 12 / 100)) < 1e-9 for k, v in scores.items() if k != "mR")
    # "on each" for English is the English model, as in the paper (both rows share the en number)
    assert results["fine-tune on each"]["en"] == results["fine-tune on en"]["en"]
    assert "| w/o fine-tune |" in stdout


def test_fine_tuning_starts_from_the_pretraining_checkpoint_or_from_scratch(ran):
    work, _ = ran

    def weights(name):
        return torch.load(work / "checkpoints" / name / "checkpoint_last.pt", map_location="cpu",
                          weights_only=True)["model"]

    pretrained, on_de, scratch = weights("pretraining"), weights("on-de"), weights("no-pretraining")
    # VLM fine-tuning never reaches the generation stack nor the MLM and MRM heads: they keep the
    # pre-trained weights, which pre-training changed (both runs draw the same initial weights)
    unused = [k for k in pretrained if k.startswith(("generation_", "lm_transform.", "output_bias", "region_"))]
    assert unused and all(torch.equal(pretrained[k], on_de[k]) for k in unused)
    assert any(not torch.equal(pretrained[k], scratch[k]) for k in unused)
    # the understanding encoder and the VLM head were fine-tuned
    assert not torch.equal(pretrained["vlm_head.weight"], on_de["vlm_head.weight"])
    assert "train: 40 captions of de, 40 images, 3 negatives each" in (work / "train-on-de.log").read_text()
    assert "checkpoints/pretraining/checkpoint_last.pt" in (work / "train-on-de.log").read_text()
    assert "checkpoints/pretraining" not in (work / "train-no-pretraining.log").read_text()


def test_a_second_run_finds_everything_done(ran):
    work, _ = ran
    before = (work / "scores" / "on-all.json").stat().st_mtime_ns
    stdout = recipe(work)
    assert "fairseq-train" not in stdout and "m3p_retrieval.py" not in stdout
    assert (work / "scores" / "on-all.json").stat().st_mtime_ns == before


def test_test_images_seen_in_training_are_refused(ran, tmp_path):
    work, _ = ran
    data = tmp_path / "data-bin"
    shutil.copytree(work / "data-bin", data)
    train_ids, test_ids = read_image_ids(data / "train.image_ids"), read_image_ids(data / "test.image_ids")
    (data / "test.image_ids").write_text("\n".join([test_ids[0], train_ids[3], *test_ids[2:]]) + "\n")
    result = subprocess.run([sys.executable, "scripts/m3p_retrieval.py", "--data", data, "--checkpoint",
                             work / "checkpoints" / "on-all" / "checkpoint_last.pt", "--langs", "en"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert (f"1 test image(s) of {data / 'test.image_ids'} also occur in the training images of "
            f"{data / 'train.image_ids'} ('{train_ids[3]}')") in result.stderr
    assert "|" not in result.stdout  # no table of a refused split


def test_an_image_with_several_captions_is_ranked_once(ran, tmp_path):
    work, _ = ran
    data = tmp_path / "data-bin"
    shutil.copytree(work / "data-bin", data)
    test_ids = read_image_ids(data / "test.image_ids")
    # captions 1 and 2 now describe image 0 too (as Flickr30k's five captions are five lines of one id)
    (data / "test.image_ids").write_text("\n".join([test_ids[0]] * 3 + test_ids[3:]) + "\n")
    result = subprocess.run([sys.executable, "scripts/m3p_retrieval.py", "--data", data, "--checkpoint",
                             f"all={work / 'checkpoints' / 'on-all' / 'checkpoint_last.pt'}", "--langs", "de",
                             "--output", tmp_path / "scores.json"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "de: 10 images, 12 captions" in result.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())["all"]["de"]
    # 10 image queries, 12 caption queries
    assert all(abs(scores[f"i2t_r{k}"] / 10 - round(scores[f"i2t_r{k}"] / 10)) < 1e-9 for k in (1, 5, 10))
    assert all(abs(scores[f"t2i_r{k}"] * 12 / 100 - round(scores[f"t2i_r{k}"] * 12 / 100)) < 1e-9 for k in (1, 5, 10))
