"""A sweep on a real single-node Slurm (run by tests/slurm/run_slurm_test.sh, which starts the
daemons and sets SLURM_CONF; skipped otherwise):

1. a 2-configuration sweep of tiny trainings (text-only, m3P) is submitted through submitit with
   --cluster slurm; both finish with checkpoints and validation numbers in `collect`;
2. a third run is added to the sweep file and the sweep submitted again: the two finished runs are
   skipped, and the new one, whose Slurm time limit (4 min) is too short for its --max-update,
   gets Slurm's warning signal, checkpoints, is requeued (`scontrol requeue`) and resumes from
   checkpoint_last.pt until it finishes.
"""

import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from helpers import REPO
from m3p_fairseq import sweep as sweeps

pytestmark = pytest.mark.skipif(not os.environ.get("M3P_SLURM_TEST"),
                                reason="needs a running Slurm: bash tests/slurm/run_slurm_test.sh")

TINY = {"user-dir": str(REPO / "m3p_fairseq"), "task": "multimodal_translation", "lang-pairs": "en-de,de-en",
        "arch": "m3p_transformer_tiny", "encoder-layers": 1, "decoder-layers": 1, "encoder-embed-dim": 32,
        "decoder-embed-dim": 32, "encoder-ffn-embed-dim": 64, "decoder-ffn-embed-dim": 64, "cpu": True,
        "label-smoothing": 0.1, "optimizer": "adam", "lr": 0.001, "max-tokens": 300, "max-update": 10,
        "no-epoch-checkpoints": True, "log-format": "simple", "log-interval": 5, "num-workers": 0}
TEXT_ONLY = {"name": "text-only", "fusion": "none", "criterion": "label_smoothed_cross_entropy"}
M3P = {"name": "m3p", "fusion": "cvlm", "criterion": "m3p_loss", "mmcl-weight": 0.5}
WAIT_S = 1800  # a bound on waiting, not a speed goal


def sweep_cli(*args, cwd):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def wait_until_finished(path, cwd, names):
    deadline = time.time() + WAIT_S
    while True:
        sweep = sweeps.load_sweep(path, cwd=cwd)
        states = {row["run"]: row["state"] for row in sweeps.collect(sweep)}
        if all(states[name] in ("done", "failed", "lost") for name in names):
            return sweep, states
        assert time.time() < deadline, f"still not finished after {WAIT_S} s: {states}\n" + \
            subprocess.run(["squeue"], capture_output=True, text=True).stdout
        time.sleep(5)


def updates_per_second(train_log: str) -> float:
    rates = [float(u) for u in re.findall(r"\bups[= ]([\d.]+)", train_log)]
    return max(rates[-1] if rates else 1.0, 0.5)


def test_sweep_on_slurm_with_a_time_limit_requeue(tmp_path, data_dir):
    spec = {"name": "slurm-test", "output_dir": "runs", "data": str(data_dir), "base": TINY,
            "runs": [TEXT_ONLY, M3P],
            "resources": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 30,
                          "setup": ["export OMP_NUM_THREADS=1"]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = sweep_cli("submit", path, "--cluster", "slurm", cwd=tmp_path)
    assert re.search(r"^text-only: submitted job \d+$", out, re.M) and re.search(r"^m3p: submitted job \d+$", out, re.M)
    sweep, states = wait_until_finished(path, tmp_path, ["text-only", "m3p"])
    logs = {run.name: (run.directory / "train.log").read_text() for run in sweep.runs}
    assert states == {"text-only": "done", "m3p": "done"}, logs
    for run in sweep.runs:
        assert (run.directory / "checkpoints" / "checkpoint_last.pt").exists()
        assert (run.directory / "command.sh").read_text().splitlines()[-1].startswith("fairseq-train ")
    table = sweep_cli("collect", path, cwd=tmp_path)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:3]}
    assert rows["text-only"][1:5] == ["done", "1", rows["text-only"][3], "10"] and float(rows["m3p"][5]) > 0
    assert "mmcl" in logs["m3p"]

    # 2. a run that cannot finish within its time limit: Slurm signals it (USR2, signal_delay_s
    # before the limit; slurmctld checks every 30 s), submitit calls TrainingJob.checkpoint and
    # requeues it. Its length is set from the measured speed: ~300 s of training, so the first
    # attempt (signalled 150-180 s after it starts) cannot finish.
    max_update = int(updates_per_second(logs["m3p"]) * 300)
    spec["runs"].append({"name": "requeued", **{k: v for k, v in M3P.items() if k != "name"},
                         "max-update": max_update, "save-interval-updates": 10, "keep-interval-updates": 1,
                         "validate-interval-updates": 10, "log-interval": 10,
                         "resources.time_min": 4, "resources.signal_delay_s": 60, "resources.max_requeues": 8})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = sweep_cli("submit", path, "--cluster", "slurm", cwd=tmp_path)
    assert "text-only: skipped (done)" in out and "m3p: skipped (done)" in out
    job_id = re.search(r"^requeued: submitted job (\d+)$", out, re.M)[1]
    sweep, states = wait_until_finished(path, tmp_path, ["requeued"])
    run_dir = tmp_path / "runs" / "requeued"
    log = (run_dir / "train.log").read_text()
    state = sweeps.read_state(run_dir)
    assert state["state"] == "done", log[-5000:]
    assert state["attempt"] >= 2, f"never requeued (the run finished within its time limit): {max_update} updates"
    resumed = [int(n) for n in re.findall(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", log)]
    assert resumed and resumed[0] > 0 and resumed == sorted(resumed)
    assert sweeps.final_metrics(run_dir)["num_updates"] == max_update
    submitit_log = "".join(p.read_text() for p in (run_dir / "submitit").glob(f"{job_id}_*.err"))
    assert f"Requeued job {job_id}" in submitit_log
    job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert re.search(r"Restarts=[1-9]", job), job
    print(f"requeued run: {max_update} updates in {state['attempt']} attempts, resumed at {resumed}")
