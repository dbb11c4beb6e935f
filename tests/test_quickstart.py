"""The README's main command, at toy scale: every step runs and the summary is printed."""

import json
import subprocess
import sys

from conftest import REPO


def test_quickstart_runs_end_to_end_and_resumes(tmp_path):
    command = [sys.executable, "examples/quickstart/run.py", "--work-dir", str(tmp_path), "--num-train", "40",
               "--num-test", "12", "--max-update", "8", "--max-tokens", "600", "--warmup-updates", "4"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"text-only", "cvlm"}
    for model in results.values():
        assert set(model) == {"test", "test_degraded"}
        for split in model.values():
            assert len(split) == 4  # directions
            assert all(score["sentences"] == 12 for score in split.values())
    assert "cvlm - text-only on test_degraded:" in first.stdout

    # a second run finds every output in place and only re-evaluates
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "make_synthetic_corpus" not in again.stdout
