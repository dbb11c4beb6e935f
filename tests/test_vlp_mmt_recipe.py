"""Algorithm 1 through the real command lines at toy size (examples/vlp_mmt/recipe.py):
VLP pre-training on image-caption pairs -> continued on the MMT set's (image, source) pairs ->
stage 1 (frozen encoder) -> stage 2 -> fairseq-generate -> scripts/evaluate.py; then a second
run that finds everything done. The object tags go all the way: pre-training, both MMT stages,
fairseq-generate and fairseq-interactive."""

import json
import re
import shutil
import subprocess
import sys

import h5py
import pytest
import torch

from helpers import REPO, import_script
from m3p_fairseq.data.data_dir import DataDirectory
from m3p_fairseq.data.object_tags import OBJECT_TAGS_DATASET

TOY = ["--num-train", 40, "--num-valid", 8, "--num-test", 10, "--num-captions", 40, "--image-size", 32,
       "--spm-vocab-size", 150, "--vlp-updates", 4, "--mmt-updates", 6, "--max-tokens", 400, "--layers", 1,
       "--warmup-updates", 2]


def recipe(work):
    result = subprocess.run([sys.executable, "examples/vlp_mmt/recipe.py", "--work-dir", work, *map(str, TOY)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    work = tmp_path_factory.mktemp("vlp_mmt")
    return work, recipe(work)


def test_without_tags_the_encoder_is_pretrained_without_them_too(tmp_path, monkeypatch):
    script = import_script(REPO / "examples" / "vlp_mmt" / "recipe.py")
    commands = {}

    def record(work, name, command, updates):
        commands[name] = [str(part) for part in command(work / name)]
        return work / name

    monkeypatch.setattr(script, "train", record)
    for tags in ("auto", "no"):
        args = script.argparse.ArgumentParser()
        script.add_options(args)
        script.pretrain(tmp_path, tmp_path / "data-bin", tmp_path / "captions-bin",
                        args.parse_args(["--object-tags", tags]))
        for step in ("vlp-captions", "vlp-mmt-pairs"):
            assert ("--no-object-tags" in commands[step]) == (tags == "no"), (tags, step)


def encoder_weights(checkpoint):
    model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in model.items() if k.startswith(("encoder.text_encoder.", "encoder.image_encoder."))}


def log_values(log_text, kind):
    lines = [line for line in log_text.splitlines() if kind in line]
    assert lines, f"no {kind!r} line"
    return dict(re.findall(r"\| (\w+) ([-\d.]+)", lines[-1]))


def test_pretraining_steps_ran_with_tags_and_were_continued(ran):
    work, _ = ran
    captions_log = (work / "train-vlp-captions.log").read_text()
    continued_log = (work / "train-vlp-mmt-pairs.log").read_text()
    assert "40 en captions with images, with object tags" in captions_log
    values = log_values(captions_log, "valid on 'valid' subset")
    assert float(values["mlm"]) > 0 and 0 <= float(values["paired_accuracy"]) <= 100
    assert re.search(r"Loaded checkpoint .*vlp-captions/checkpoint_last\.pt", continued_log)
    assert f"{work}/data-bin train: 40 en captions" in continued_log


def test_stage_one_kept_the_pretrained_encoder_and_stage_two_trained_it(ran):
    work, _ = ran
    checkpoints = work / "checkpoints"
    pretrained = encoder_weights(checkpoints / "vlp-mmt-pairs" / "checkpoint_last.pt")
    stage1 = encoder_weights(checkpoints / "vlp-learned-stage1" / "checkpoint_last.pt")
    stage2 = encoder_weights(checkpoints / "vlp-learned-stage2" / "checkpoint_last.pt")
    assert pretrained.keys() == stage1.keys() == stage2.keys() and len(pretrained) > 10
    assert all(torch.equal(pretrained[k], stage1[k]) for k in pretrained)  # bitwise: frozen in stage 1
    assert any(not torch.equal(stage1[k], stage2[k]) for k in stage1)  # trained in stage 2
    stage1_log = (work / "train-vlp-learned-stage1.log").read_text()
    assert "stage 1: encoder frozen" in stage1_log
    values = log_values(stage1_log, "valid on 'valid' subset")
    assert 0 <= float(values["modality"]) <= 2 and 0 < float(values["modality_lambda"]) < 1
    stage2_log = (work / "train-vlp-learned-stage2.log").read_text()
    assert re.search(r"Loaded checkpoint .*vlp-learned-stage1/checkpoint_best\.pt", stage2_log)
    assert "encoder frozen" not in stage2_log


def test_the_mmt_stages_and_generation_read_the_object_tags(ran):
    work, _ = ran
    features = work / "data-bin" / "image_features.h5"
    for stage in ("stage1", "stage2"):
        log = (work / f"train-vlp-learned-{stage}.log").read_text()
        assert f"split train: the model reads the object tags of {features}" in log
        assert f"split valid: the model reads the object tags of {features}" in log
        checkpoint = work / "checkpoints" / f"vlp-learned-{stage}" / "checkpoint_last.pt"
        assert torch.load(checkpoint, map_location="cpu", weights_only=False)["cfg"]["model"].object_tags == "yes"
    assert "--object-tags auto: the feature file carries object tags" in \
        (work / "train-vlp-learned-stage1.log").read_text()
    assert f"split test: the model reads the object tags of {features}" in (work / "generate-test.txt").read_text()


def generate_args(data, checkpoint):
    return ["--user-dir", str(REPO / "m3p_fairseq"), "--task", "multimodal_translation", "-s", "en", "-t", "de",
            "--path", str(checkpoint), "--beam", "5"]


def test_fairseq_interactive_with_tags_matches_generate(ran):
    work, _ = ran
    data, raw = work / "data-bin", work / "raw"
    stem = DataDirectory(raw).raw_stem("test", "en", "de")
    sentences = (raw / f"{stem}.en").read_text().splitlines()[:3]
    image_ids = DataDirectory(raw).image_id_list(stem).read_text().splitlines()[:3]
    result = subprocess.run(
        ["fairseq-interactive", str(data), *generate_args(data, work / "checkpoints" / "vlp-learned-stage2" /
                                                           "checkpoint_last.pt"),
         "--image-features", str(data / "image_features.h5"), "--bpe", "sentencepiece",
         "--sentencepiece-model", str(data / "spm.model")],
        cwd=REPO, input="".join(f"{i}\t{s}\n" for i, s in zip(image_ids, sentences)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    hypotheses = dict(re.findall(r"^D-(\d+)\t\S+\t(.*)$", result.stdout, flags=re.M))
    generated = dict(re.findall(r"^D-(\d+)\t\S+\t(.*)$", (work / "generate-test.txt").read_text(), flags=re.M))
    assert len(hypotheses) == 3 and hypotheses == {i: generated[i] for i in hypotheses}


def test_generation_without_the_tags_the_model_reads_names_the_file(ran, tmp_path):
    work, _ = ran
    data = tmp_path / "data-bin"
    shutil.copytree(work / "data-bin", data)
    with h5py.File(data / "image_features.h5", "a") as f:
        del f[OBJECT_TAGS_DATASET]
    result = subprocess.run(
        ["fairseq-generate", str(data), *generate_args(data, work / "checkpoints" / "vlp-learned-stage2" /
                                                        "checkpoint_last.pt"), "--gen-subset", "test"],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{data / 'image_features.h5'} carries no object tags" in result.stderr


def test_generate_and_evaluate(ran):
    work, _ = ran
    generated = (work / "generate-test.txt").read_text()
    assert len(re.findall(r"^H-\d+\t", generated, flags=re.M)) == 10
    results = json.loads((work / "results.json").read_text())
    for split in ("test", "test_degraded"):
        assert 0 <= results["vlp-learned"][split]["en-de"]["bleu"] <= 100
    assert "learned lambda_j" in (work / "table6.md").read_text()


def test_a_second_run_trains_nothing_again(ran):
    work, _ = ran
    before = (work / "checkpoints" / "vlp-learned-stage2" / "checkpoint_last.pt").stat().st_mtime_ns
    output = recipe(work)
    assert "$ fairseq-train" not in output and "$ fairseq-generate" not in output
    assert "$ fairseq-train" in (ran[1])  # the first run did train
    assert (work / "checkpoints" / "vlp-learned-stage2" / "checkpoint_last.pt").stat().st_mtime_ns == before
