"""M3P pre-training through the real fairseq-train (one update per objective, per-objective
logs, resuming mid-schedule) and the batches its dataset builds (MRM targets, VLM labels)."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, assert_epoch_workers_exit, parse_train_args
from m3p_fairseq.data.batch_keys import (
    MRM_MASKED,
    MRM_TARGET,
    PRETRAINING_OBJECTIVE,
    REGION_FEATURES,
    REGION_SPATIAL,
    VLM_LABELS,
)
from m3p_fairseq.data.image_features import ImageFeatureStore, read_image_ids
from m3p_fairseq.data.m3p_pretraining_schedule import OBJECTIVES

FAIRSEQ_TRAIN = shutil.which("fairseq-train") or "fairseq-train"


def train(data, save_dir, *extra):
    command = [FAIRSEQ_TRAIN, data, "--user-dir", REPO / "m3p_fairseq", "--task", "m3p_pretraining",
               "--arch", "m3p_pretraining_tiny", "--criterion", "m3p_pretraining", "--batch-size", "4",
               "--optimizer", "adam", "--lr", "1e-3", "--cpu", "--num-workers", "0", "--no-progress-bar",
               "--log-interval", "1", "--log-format", "json", "--save-dir", save_dir, "--seed", "3", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True, env=env)
    return result


def updates(log: str):
    """{update number: its train_inner record} from fairseq's JSON log."""
    records = [json.loads(line.split("| train_inner | ", 1)[1]) for line in log.splitlines() if "| train_inner | " in line]
    return {int(r["num_updates"]): r for r in records}


def objective_of(record):
    trained = [o for o in OBJECTIVES if record.get(f"{o}_loss") not in (None, "null")]
    assert len(trained) == 1, record
    return trained[0]


def test_one_update_per_objective_through_fairseq_train(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "ckpt", "--objective-schedule", "round_robin", "--updates-per-epoch", "7",
                   "--max-update", "7")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    records = updates(log)
    assert [objective_of(records[u]) for u in range(1, 8)] == list(OBJECTIVES)
    for update, objective in enumerate(OBJECTIVES, start=1):
        assert math.isfinite(float(records[update][f"{objective}_loss"]))
        if objective != "mrm":  # random features have no region classes: MRM has no accuracy
            assert 0 <= float(records[update][f"{objective}_acc"]) <= 100
    valid = json.loads(next(line for line in log.splitlines() if "| valid | " in line).split("| valid | ", 1)[1])
    assert all(f"valid_{o}_loss" in valid for o in OBJECTIVES)
    saved = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    schedule = saved["extra_state"]["train_iterator"]["m3p_pretraining_schedule"]
    assert schedule["mode"] == "round_robin" and schedule["objectives"] == pytest.approx({o: 1 / 7 for o in OBJECTIVES})


def test_weighted_schedule_trains_only_the_objectives_named(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "ckpt", "--objectives", "xdae:1,vlm:3", "--updates-per-epoch", "6",
                   "--max-update", "6", "--disable-validation")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {objective_of(r) for r in updates(result.stdout + result.stderr).values()} <= {"xdae", "vlm"}


def test_resume_mid_schedule_continues_the_same_schedule_and_weights(data_dir, tmp_path):
    common = ["--updates-per-epoch", "10", "--max-update", "6", "--save-interval-updates", "3",
              "--disable-validation", "--dropout", "0"]
    whole = train(data_dir, tmp_path / "whole", *common)
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "whole" / "checkpoint_1_3.pt", resumed_dir / "checkpoint_last.pt")
    resumed = train(data_dir, resumed_dir, *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole_log, resumed_log = updates(whole.stdout + whole.stderr), updates(resumed.stdout + resumed.stderr)
    assert sorted(resumed_log) == [4, 5, 6]  # only the rest of the schedule
    assert [objective_of(resumed_log[u]) for u in (4, 5, 6)] == [objective_of(whole_log[u]) for u in (4, 5, 6)]
    for u in (4, 5, 6):
        assert resumed_log[u]["loss"] == whole_log[u]["loss"]
    a = torch.load(tmp_path / "whole" / "checkpoint_last.pt", weights_only=False)["model"]
    b = torch.load(resumed_dir / "checkpoint_last.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_under_another_schedule_is_refused(data_dir, tmp_path):
    first = train(data_dir, tmp_path / "ckpt", "--updates-per-epoch", "10", "--max-update", "2", "--disable-validation")
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(data_dir, tmp_path / "ckpt", "--updates-per-epoch", "10", "--max-update", "4", "--disable-validation",
                   "--objectives", "xmlm,ic")
    assert second.returncode != 0
    assert "resuming mid-schedule needs the same --objectives" in second.stderr
    third = train(data_dir, tmp_path / "ckpt", "--updates-per-epoch", "10", "--max-update", "4", "--disable-validation",
                  "--objectives", "xmlm,ic", "--reset-dataloader")
    assert third.returncode == 0, third.stderr[-3000:]


@pytest.fixture(scope="module")
def task(data_dir):
    from fairseq import tasks

    cfg = parse_train_args([data_dir, "--task", "m3p_pretraining", "--arch", "m3p_pretraining_tiny",
                            "--criterion", "m3p_pretraining", "--batch-size", "6", "--seed", "5"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    return task


def batch_of(task, objective, examples):
    dataset = task.datasets["train"]
    return dataset.collater([dataset[i] for i in dataset.encode(objective, np.asarray(examples))])


def test_mrm_batch_targets_are_the_unmasked_features_of_the_file(task, data_dir):
    batch = batch_of(task, "mrm", range(12))
    store = ImageFeatureStore(data_dir / "image_features.h5")
    rows = store.rows_for(read_image_ids(data_dir / "train.image_ids")[:12], "train.image_ids")
    stored = torch.stack([store.read(int(r))[0].float() for r in rows])
    assert torch.equal(batch[MRM_TARGET], stored)
    masked = batch[MRM_MASKED]
    net = batch["net_input"]
    assert masked.any(dim=1).all()  # every image has a masked region
    assert torch.equal(net[REGION_FEATURES][~masked], stored[~masked])
    assert net[PRETRAINING_OBJECTIVE] == "mrm"
    # the 2x2 grid of the fixture's 4 patches, by hand
    grid = torch.tensor([[0, 0, .5, .5, .25], [.5, 0, 1, .5, .25], [0, .5, .5, 1, .25], [.5, .5, 1, 1, .25]])
    assert torch.allclose(net[REGION_SPATIAL], grid.expand(12, 4, 5))


def test_vlm_batch_labels_say_whether_the_regions_belong_to_the_caption(task, data_dir):
    dataset = task.datasets["train"]
    store = ImageFeatureStore(data_dir / "image_features.h5")
    ids = read_image_ids(data_dir / "train.image_ids")
    rows = store.rows_for(ids, "train.image_ids")
    texts = [dataset.captions[0].text[i] for i in range(len(ids))]
    labels_seen, checked = set(), 0
    for start in range(0, 48, 8):
        examples = np.arange(start, start + 8)
        batch = batch_of(task, "vlm", examples)
        tokens, regions = batch["net_input"]["src_tokens"], batch["net_input"][REGION_FEATURES]
        for b in range(8):
            text = tokens[b][tokens[b] != task.dictionary.pad()][1:]  # without <s>
            # the batch's examples whose caption is this text (the corpus repeats some captions)
            caption_images = {int(rows[e]) for e in examples if torch.equal(texts[e], text)}
            image_row = next(int(rows[e]) for e in examples if torch.equal(store.read(int(rows[e]))[0].float(),
                                                                            regions[b]))
            if len(caption_images) > 1 and image_row in caption_images:
                continue  # the same caption for several images: which one it came with is unknown
            assert batch[VLM_LABELS][b] == int(image_row in caption_images)
            labels_seen.add(int(batch[VLM_LABELS][b]))
            checked += 1
    assert checked >= 40
    assert labels_seen == {0, 1}


def test_each_epochs_data_loader_workers_exit_with_it(task):
    assert_epoch_workers_exit(task, task.datasets["train"], max_sentences=6)


def test_a_batch_never_mixes_objectives(task):
    dataset = task.datasets["train"]
    mixed = [dataset[dataset.encode("xmlm", np.array([0]))[0]], dataset[dataset.encode("ic", np.array([0]))[0]]]
    with pytest.raises(ValueError, match="mixes objectives"):
        dataset.collater(mixed)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def with_region_classes(data_copy):
    """The fixture's features plus user boxes and classes (K = 3) for every region."""
    import h5py

    with h5py.File(data_copy / "image_features.h5", "a") as f:
        n, p = f["patches"].shape[:2]
        classes = np.arange(n * p).reshape(n, p) % 4 - 1  # -1 (no class), 0, 1, 2
        f["region_classes"] = classes
        f.attrs["num_region_classes"] = 3
        f["region_boxes"] = np.tile(np.array([0.1, 0.2, 0.6, 0.7], dtype=np.float32), (n, p, 1))
    return data_copy


def test_mrm_loss_is_mse_plus_class_cross_entropy_by_hand(data_copy):
    import torch.nn.functional as F
    from fairseq import tasks

    from m3p_fairseq.criterions.m3p_pretraining_loss import M3PPretrainingCriterion
    from m3p_fairseq.data.batch_keys import MRM_CLASSES, REGION_CLASS_LOGITS, REGION_PREDICTION

    data = with_region_classes(data_copy)
    cfg = parse_train_args([data, "--task", "m3p_pretraining", "--arch", "m3p_pretraining_tiny",
                            "--criterion", "m3p_pretraining", "--batch-size", "8"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model).eval()
    assert model.region_classifier.out_features == 3
    batch = batch_of(task, "mrm", range(16))
    # user boxes: 0.1, 0.2, 0.6, 0.7 and area 0.5 * 0.5
    assert torch.allclose(batch["net_input"][REGION_SPATIAL][0, 0], torch.tensor([0.1, 0.2, 0.6, 0.7, 0.25]))
    criterion = M3PPretrainingCriterion(task)
    torch.manual_seed(0)
    loss, sample_size, log = criterion(model, batch)
    outputs = model(**batch["net_input"])
    masked = batch[MRM_MASKED]
    expected = 0.0
    for b, r in masked.nonzero().tolist():
        expected += ((outputs[REGION_PREDICTION][b, r] - batch[MRM_TARGET][b, r]) ** 2).mean()
        label = int(batch[MRM_CLASSES][b, r])
        if label >= 0:
            expected += -F.log_softmax(outputs[REGION_CLASS_LOGITS][b, r], -1)[label]
    assert sample_size == int(masked.sum())
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert log["mrm_counted"] == int((batch[MRM_CLASSES][masked] >= 0).sum()) > 0



def test_text_only_pretraining_without_image_features(data_copy):
    from fairseq import tasks

    from m3p_fairseq.criterions.m3p_pretraining_loss import M3PPretrainingCriterion
    from m3p_fairseq.data.image_features import ImageFeatureError

    (data_copy / "image_features.h5").unlink()
    args = [data_copy, "--task", "m3p_pretraining", "--arch", "m3p_pretraining_tiny", "--criterion", "m3p_pretraining"]
    task = tasks.setup_task(parse_train_args(args).task)
    with pytest.raises(ImageFeatureError, match=r"objectives \['mmlm', 'mrm', 'vlm', 'ic', 'dic'\] need image "
                                                 r"features: none found for split 'train'"):
        task.load_dataset("train")
    cfg = parse_train_args([*args, "--objectives", "xmlm,xdae"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    assert model.image_feature_dim is None and model.region_regression is None
    criterion = M3PPretrainingCriterion(task)
    for objective in ("xmlm", "xdae"):
        loss, sample_size, log = criterion(model, batch_of(task, objective, range(4)))
        assert torch.isfinite(loss) and sample_size > 0 and log[f"{objective}_size"] == sample_size
    with pytest.raises(ValueError, match="built without an image stream"):
        model.embeddings.regions(torch.zeros(1, 4, 16), torch.zeros(1, 4, 5))


def test_xdae_sources_stay_within_the_model_positions(task):
    dataset = task.datasets["train"]
    saved = dataset.max_positions
    dataset.max_positions = 8  # shorter than most captions: truncation and insertions both happen
    try:
        for index in dataset.encode("xdae", np.arange(40)):
            item = dataset[index]
            assert item["source"].numel() <= 8 and item["source"][-1] == task.dictionary.eos()
            assert item["target"].numel() <= 7 and item["target"][-1] == task.dictionary.eos()  # room for <s>
    finally:
        dataset.max_positions = saved


def test_bad_data_gets_errors_naming_the_file(data_copy):
    from fairseq import tasks

    args = [data_copy, "--task", "m3p_pretraining", "--arch", "m3p_pretraining_tiny"]
    task = tasks.setup_task(parse_train_args(args).task)
    ids = data_copy / "train.image_ids"
    lines = ids.read_text().splitlines()
    ids.write_text("\n".join(lines[:-1]) + "\n")  # one id short
    with pytest.raises(ValueError, match=r"train\.en\.bin has 60 captions but .*train\.image_ids has 59 image ids"):
        task.load_dataset("train")
    ids.unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.image_ids not found"):
        task.load_dataset("train")
    (data_copy / "valid.fr.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"text of 'fr' for split 'valid' not found: expected .*valid\.fr\.bin"):
        tasks.setup_task(parse_train_args([*args, "--langs", "en,fr"]).task).load_dataset("valid")
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        tasks.setup_task(parse_train_args([*args, "--caption-langs", "xx"]).task)
