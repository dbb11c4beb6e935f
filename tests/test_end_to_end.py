"""The real command lines, in subprocesses: synthetic corpus -> timm features -> binarize ->
fairseq-train (with images) -> resume -> fairseq-generate and fairseq-interactive."""

import math
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO, import_script

PYTHON = sys.executable


def run(command, stdin=None):
    result = subprocess.run([str(c) for c in command], cwd=REPO, input=stdin, capture_output=True, text=True)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    raw, data, save_dir = work / "raw", work / "data-bin", work / "checkpoints"
    run([PYTHON, "-m", "preprocess.make_synthetic_corpus", "--output-dir", raw, "--num-train", 40,
         "--num-valid", 8, "--num-test", 10, "--langs", "en,de", "--image-size", 32, "--seed", 5])
    run([PYTHON, "-m", "preprocess.extract_image_features", "--images-dir", raw / "images",
         "--image-ids", raw / "train.image_ids", raw / "valid.image_ids", raw / "test.image_ids",
         "--output", data / "image_features.h5", "--backbone", "vit_tiny_patch16_224",
         "--random-init-seed", 0, "--image-size", 32, "--batch-size", 16, "--augmented-views", 2])
    run([PYTHON, "-m", "preprocess.binarize", "--raw-dir", raw, "--dest-dir", data,
         "--lang-pairs", "en-de,de-en", "--spm-vocab-size", 150])
    train = ["fairseq-train", data, "--user-dir", REPO / "m3p_fairseq", "--task", "multimodal_translation",
             "--lang-pairs", "en-de,de-en", "--arch", "m3p_transformer_tiny", "--fusion", "cvlm",
             "--encoder-layers", 1, "--decoder-layers", 1,
             "--sampling-temperature", 3, "--sampling-temperature-init", 1, "--sampling-warmup-updates", 8,
             "--criterion", "m3p_loss", "--label-smoothing", 0.1, "--mmcl-weight", 1,
             "--mma-text-mask-ratio", 0.2, "--mma-patch-mask-ratio", 0.25, "--mma-image-view-prob", 0.5,
             "--mma-view-negatives",
             "--optimizer", "adam", "--lr", 1e-3, "--max-tokens", 400, "--save-dir", save_dir,
             "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", 1, "--num-workers", 2]
    first_log = run(train + ["--max-update", 6, "--tensorboard-logdir", work / "tensorboard"])
    resumed_log = run(train + ["--max-update", 9])
    return {"raw": raw, "data": data, "checkpoint": save_dir / "checkpoint_last.pt", "work": work,
            "first_log": first_log, "resumed_log": resumed_log}


def test_training_ran_and_resumed_with_the_warmed_up_temperature(trained):
    assert "num_updates 6" in trained["first_log"] or "num_updates=6" in trained["first_log"]
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 6 updates\)", trained["resumed_log"])
    temperatures = [float(t) for t in re.findall(r"sampling temperature ([\d.]+)", trained["resumed_log"])]
    # the first mix after the resume is drawn at update 6: tau = 1 + 6/8 * (3 - 1)
    assert temperatures[0] == pytest.approx(2.5)
    assert "with images" in trained["first_log"]


def logged_values(line):
    return {key: float(value) for key, value in re.findall(r"(\w+)[= ]([-\d.]+)", line)}


def test_m3p_loss_logs_each_term(trained):
    train_lines = [line.split("| train_inner |")[1] for line in trained["first_log"].splitlines()
                   if "| train_inner |" in line]
    assert train_lines
    for line in train_lines:
        values = logged_values(line)
        assert {"loss", "nll_loss", "mmcl", "mmcl_accuracy"} <= set(values)
        assert values["mmcl_temperature"] == pytest.approx(0.1)


def test_the_last_validation_line_equals_the_loss_worked_out_by_hand(trained):
    """The resumed run validates at update 9 and saves that model as checkpoint_last.pt: its logged
    loss, nll_loss, mmcl and mmcl_accuracy are recomputed here from the checkpoint's outputs on
    the same validation batches (label-smoothed CE and MMCL with Python floats)."""
    from fairseq import checkpoint_utils, utils

    from helpers import by_hand

    last = [line for line in trained["resumed_log"].splitlines() if "valid on 'valid' subset |" in line][-1]
    logged = logged_values(last.split("subset |")[1])
    assert logged["num_updates"] == 9
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(trained["checkpoint"])])
    model = models[0].eval()
    task.load_dataset("valid")
    batches = task.get_batch_iterator(
        dataset=task.dataset("valid"), max_tokens=cfg.dataset.max_tokens_valid,
        max_sentences=cfg.dataset.batch_size_valid,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple, seed=cfg.common.seed,
    ).next_epoch_itr(shuffle=False)
    loss = nll = mmcl = tokens = pairs = correct = 0
    for batch in batches:
        expected = by_hand(model, batch, mmcl_weight=1)
        loss, nll, mmcl = loss + expected["loss"], nll + expected["nll"], mmcl + expected["mmcl_sum"]
        tokens, pairs, correct = tokens + batch["ntokens"], pairs + batch["target"].size(0), correct + expected["correct"]
    assert pairs == 16  # the 8 validation sentences in both directions
    bits = math.log(2)
    assert logged["loss"] == pytest.approx(loss / tokens / bits, abs=1.5e-3)
    assert logged["nll_loss"] == pytest.approx(nll / tokens / bits, abs=1.5e-3)
    assert logged["mmcl"] == pytest.approx(mmcl / pairs / bits, abs=1.5e-3)
    assert logged["mmcl_accuracy"] == pytest.approx(100 * correct / (2 * pairs), abs=0.01)


def test_tensorboard_logging_when_asked(trained):
    event_files = list((trained["work"] / "tensorboard").rglob("events.out.tfevents.*"))
    assert event_files and all(f.stat().st_size > 0 for f in event_files)
    for tag in (b"mmcl", b"mmcl_accuracy", b"nll_loss"):
        assert any(tag in f.read_bytes() for f in event_files)


def test_checkpoint_loads_with_weights_only(trained):
    import m3p_fairseq  # noqa: F401  (registers the allow-list)

    state = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    assert state["args"] is not None or state["cfg"] is not None
    probe = ("import torch, sys; torch.load(sys.argv[1], map_location='cpu', weights_only=True)")
    without_plugin = subprocess.run([PYTHON, "-c", probe, str(trained["checkpoint"])], capture_output=True, text=True)
    assert without_plugin.returncode != 0 and "weights_only" in without_plugin.stderr


@pytest.fixture(scope="module")
def generated(trained):
    return run(["fairseq-generate", trained["data"], "--user-dir", REPO / "m3p_fairseq",
                "--task", "multimodal_translation", "-s", "en", "-t", "de", "--gen-subset", "test",
                "--path", trained["checkpoint"], "--beam", 5, "--batch-size", 4,
                "--post-process", "sentencepiece", "--scoring", "sacrebleu"])


def detokenized_hypotheses(output):
    return {int(i): text for i, text in re.findall(r"^D-(\d+)\t\S+\t(.*)$", output, flags=re.M)}


def test_fairseq_generate_with_images(generated):
    hypotheses = re.findall(r"^H-(\d+)\t", generated, flags=re.M)
    assert sorted(map(int, hypotheses)) == list(range(10))  # every test sentence, none dropped
    sources = re.findall(r"^S-\d+\t(\S+)", generated, flags=re.M)
    assert set(sources) == {"__de__"}  # the target-language tag leads every source
    assert re.search(r"Generate test with beam=5: BLEU = [\d.]+", generated)


def interactive(trained, lines, *extra):
    return subprocess.run(
        ["fairseq-interactive", str(trained["data"]), "--user-dir", str(REPO / "m3p_fairseq"),
         "--task", "multimodal_translation", "-s", "en", "-t", "de",
         "--image-features", str(trained["data"] / "image_features.h5"), "--path", str(trained["checkpoint"]),
         "--beam", "5", "--bpe", "sentencepiece", "--sentencepiece-model", str(trained["data"] / "spm.model"),
         *map(str, extra)],
        cwd=REPO, input=lines, capture_output=True, text=True)


@pytest.mark.parametrize("buffer_size", [1, 3])
def test_fairseq_interactive_matches_generate(trained, generated, buffer_size):
    test_ids = (trained["raw"] / "test.image_ids").read_text().splitlines()
    test_en = (trained["raw"] / "test.en").read_text().splitlines()
    lines = "".join(f"{image_id}\t{sentence}\n" for image_id, sentence in zip(test_ids[:3], test_en[:3]))
    result = interactive(trained, lines, "--buffer-size", buffer_size, "--batch-size", buffer_size)
    assert result.returncode == 0, result.stderr[-3000:]
    from_generate = detokenized_hypotheses(generated)
    assert detokenized_hypotheses(result.stdout) == {i: from_generate[i] for i in range(3)}


def test_fairseq_interactive_refuses_a_repeated_sentence_with_another_image(trained):
    sentence = (trained["raw"] / "test.en").read_text().splitlines()[0]
    ids = (trained["raw"] / "test.image_ids").read_text().splitlines()
    result = interactive(trained, f"{ids[0]}\t{sentence}\n{ids[1]}\t{sentence}\n", "--buffer-size", 2)
    assert result.returncode != 0
    assert "input line 2 repeats an earlier sentence of the same chunk with a different image" in result.stderr


def test_fairseq_interactive_skips_a_line_without_image_id(trained):
    result = interactive(trained, "A small red circle.\n")
    assert result.returncode == 0  # reported and skipped; tests/test_direction_images.py has the rest
    assert "input line 1 skipped: expected IMAGE_ID<TAB>sentence" in result.stdout + result.stderr
    assert not re.search(r"^H-", result.stdout, flags=re.M)


def test_search_errors_probe_splits_every_wrong_test_sentence(trained, capsys):
    probe = import_script(REPO / "examples" / "quickstart" / "probes" / "search_errors.py")
    counts = probe.main(["--data", str(trained["data"]), "--checkpoint", str(trained["checkpoint"]),
                         "--lang-pairs", "en-de,de-en"])
    for pair in ("en-de", "de-en"):
        row = counts[pair]
        assert row["sentences"] == 10  # --num-test 10
        assert row["search errors"] + row["model errors"] == row["wrong"] <= 10
    assert "| **all** |" in capsys.readouterr().out


def test_mdropnet_paths_probe_scores_each_path_of_each_split(trained, capsys):
    probe = import_script(REPO / "examples" / "quickstart" / "probes" / "mdropnet_paths.py")
    results = probe.main(["--data", str(trained["data"]), "--checkpoint", str(trained["checkpoint"]),
                          "--splits", "train,test", "--lang-pairs", "en-de,de-en", "--sentences", "6"])
    for split in ("train", "test"):
        for pair in ("en-de", "de-en"):
            assert sorted(results[split][pair]) == ["image only", "text and image", "text only"]
            for scores in results[split][pair].values():
                assert scores["sentences"] == 6
                assert scores["exact"] in {100.0 * k / 6 for k in range(7)}
    assert "| train | en-de | image only | 6 |" in capsys.readouterr().out
    assert torch.is_grad_enabled()  # it runs in the test process: no global switch may stay behind
