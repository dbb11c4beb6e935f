"""The README's main command and the Table-5 ablation, at toy scale: every step runs, outputs
are reused, and the summaries are printed."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO, import_script


def test_quickstart_runs_end_to_end_and_resumes(tmp_path):
    command = [sys.executable, "examples/quickstart/run.py", "--work-dir", str(tmp_path), "--num-train", "40",
               "--num-test", "12", "--max-update", "8", "--m3p-updates", "4", "--max-tokens", "600",
               "--warmup-updates", "4"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"text-only", "m3p"}
    for model in results.values():
        assert set(model) == {"test", "test_degraded"}
        for split in model.values():
            assert len(split) == 4  # directions
            assert all(score["sentences"] == 12 for score in split.values())
    assert "m3p - text-only on test_degraded:" in first.stdout

    # a second run finds every output in place and only re-evaluates
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "make_synthetic_corpus" not in again.stdout
    assert "fairseq-train" not in again.stdout

    # m3P started from the text-only model, and trained its own updates
    m3p = torch.load(tmp_path / "checkpoints" / "m3p" / "checkpoint_last.pt", weights_only=False)
    assert m3p["cfg"]["model"].init_from_text_model == str(tmp_path / "checkpoints" / "text-only" / "checkpoint_last.pt")
    assert m3p["optimizer_history"][-1]["num_updates"] == 4

    # the ablation reuses the data and the text-only model, and trains its seven others from scratch
    ablation = subprocess.run([sys.executable, "examples/quickstart/ablation.py", *command[2:]],
                              cwd=REPO, capture_output=True, text=True)
    assert ablation.returncode == 0, ablation.stdout[-3000:] + ablation.stderr[-3000:]
    assert ablation.stdout.count("fairseq-train") == 7
    assert "checkpoints/m3p " not in ablation.stdout
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert table[0] == "| model | en-de clean | de-en clean | en-de degraded | de-en degraded |"
    assert [row.split(" |")[0] for row in table[2:]] == [
        "| (1) m3P", "| (1') (1), MMA outside MMCL", "| (2) (1) - MMCL", "| (3) (2) - CVLM", "| (4) (3) - MDropNet",
        "| (5) (4) - multilingual", "| text-only transformer"]
    scores = json.loads((tmp_path / "ablation.json").read_text())
    assert set(scores["bilingual-en-de"]["test"]) == {"en-de"}
    assert set(scores["m3p-from-scratch"]["test"]) == {"en-de", "de-en"}  # only the directions in the table
    assert scores["text-only"]["test"]["en-de"] == results["text-only"]["test"]["en-de"]

    # --from-text-only: rows (1') to (4) start from the text-only model; (1) is the quickstart's m3P
    staged = subprocess.run([sys.executable, "examples/quickstart/ablation.py", "--from-text-only", *command[2:]],
                            cwd=REPO, capture_output=True, text=True)
    assert staged.returncode == 0, staged.stdout[-3000:] + staged.stderr[-3000:]
    assert staged.stdout.count("fairseq-train") == 4
    table = (tmp_path / "ablation-from-text-only.md").read_text().splitlines()
    assert [row.split(" |")[0] for row in table[2:]] == [
        "| (1) m3P", "| (1') (1), MMA outside MMCL", "| (2) (1) - MMCL", "| (3) (2) - CVLM", "| (4) (3) - MDropNet",
        "| text-only transformer"]
    scores = json.loads((tmp_path / "ablation-from-text-only.json").read_text())
    assert scores["m3p"]["test"]["en-de"] == results["m3p"]["test"]["en-de"]
    for name in ("m3p-mma-translation-only", "no-mmcl", "no-mmcl-cvlm", "no-mmcl-cvlm-mdropnet"):
        checkpoint = torch.load(tmp_path / "checkpoints" / f"{name}-from-text-only" / "checkpoint_last.pt",
                                weights_only=False)
        assert checkpoint["cfg"]["model"].init_from_text_model.endswith("text-only/checkpoint_last.pt")
        assert checkpoint["optimizer_history"][-1]["num_updates"] == 4
    assert torch.load(tmp_path / "checkpoints" / "no-mmcl-cvlm-from-text-only" / "checkpoint_last.pt",
                      weights_only=False)["cfg"]["model"].fusion == "concat"


def write_raw(raw):
    """The files write_directions reads: 20 numbered captions per split and language, each
    with a degraded twin."""
    raw.mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("en", "de", "fr"):
            (raw / f"{split}.{lang}").write_text("".join(f"{lang} {i}\n" for i in range(20)))
            (raw / f"{split}.degraded.{lang}").write_text("".join(f"{lang} [MASK] {i}\n" for i in range(20)))
    (raw / "test.image_ids").write_text("".join(f"img{i}\n" for i in range(20)))


def test_degraded_fraction_sets_the_share_of_degraded_sources_and_is_kept_with_the_data(tmp_path):
    run = import_script(REPO / "examples" / "quickstart" / "run.py")
    for fraction, expected in ((0.0, 0), (1.0, 20)):
        raw = tmp_path / f"raw-{fraction}"
        write_raw(raw)
        run.write_directions(raw, degraded_fraction=fraction, seed=1)
        for split in ("train", "valid"):
            for pair in run.LANG_PAIRS:
                sources = (raw / f"{split}.{pair}.{pair[:2]}").read_text().splitlines()
                assert sum("[MASK]" in line for line in sources) == expected
                assert (raw / f"{split}.{pair}.{pair[3:]}").read_text() == (raw / f"{split}.{pair[3:]}").read_text()
        assert all("[MASK]" in line for line in (raw / "test_degraded.en-de.en").read_text().splitlines())

    # a work directory made before the option has the default share; another share is refused
    run.check_degraded_fraction(tmp_path / "raw-0.0", 0.5)
    (tmp_path / "raw-0.0" / run.DEGRADED_FRACTION_FILE).write_text("0.0\n")
    run.check_degraded_fraction(tmp_path / "raw-0.0", 0.0)
    with pytest.raises(SystemExit, match=r"made with --degraded-fraction 0.0 .*use another --work-dir for 0.5"):
        run.check_degraded_fraction(tmp_path / "raw-0.0", 0.5)


def test_an_m3p_trained_from_scratch_by_an_earlier_quickstart_is_not_resumed(tmp_path):
    import argparse

    run = import_script(REPO / "examples" / "quickstart" / "run.py")
    checkpoint = tmp_path / "checkpoints" / "m3p" / "checkpoint_last.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"cfg": {"model": argparse.Namespace(fusion="cvlm")}, "optimizer_history": [{"num_updates": 1600}]},
               checkpoint)
    with pytest.raises(SystemExit, match=r"checkpoint_last\.pt was trained from scratch .* use another --work-dir"):
        run.train_from_text_only(tmp_path, tmp_path / "data-bin", "m3p", [], argparse.Namespace(m3p_updates=800))
