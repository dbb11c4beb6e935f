"""A sweep on a real single-node Slurm (run by tests/slurm/run_slurm_test.sh, which starts the
daemons and sets SLURM_CONF; skipped otherwise):

1. a 2-configuration sweep of tiny trainings (text-only, m3P) is submitted through submitit with
   --cluster slurm; both finish with checkpoints and validation numbers in `collect`;
2. a third run is added to the sweep file and the sweep submitted again: the two finished runs are
   skipped, and the new one, whose Slurm time limit (4 min) is too short for its --max-update,
   gets Slurm's warning signal, checkpoints, is requeued (`scontrol requeue`) and resumes from
   checkpoint_last.pt until it finishes.
"""

import json
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
        "no-epoch-checkpoints": True, "log-interval": 5, "num-workers": 0}
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


def json_records(train_log, tag):
    """fairseq's --log-format json records with this tag (its logger name), read here with json
    rather than through the sweep's own reader: ``... | INFO | valid | {"valid_loss": ...}``."""
    records = []
    for line in train_log.read_text().splitlines():
        head, _, message = line.partition(f" | {tag} | ")
        if message.startswith("{") and " | INFO" in head:
            records.append(json.loads(message))
    return records


def updates_per_second(train_log) -> float:
    rates = [float(r["ups"]) for r in json_records(train_log, "train_inner") if "ups" in r]
    return max(rates[-1] if rates else 1.0, 0.5)


def test_sweep_on_slurm_with_a_time_limit_requeue(tmp_path, data_dir):
    spec = {"name": "slurm-test", "output_dir": "runs", "data": str(data_dir), "base": TINY,
            "runs": [TEXT_ONLY, M3P],
            "resources": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 30,
                          "setup": ["export OMP_NUM_THREADS=1"]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = sweep_cli("submit", path, "--cluster", "slurm", cwd=tmp_path)
    job_ids = dict(re.findall(r"^(text-only|m3p): submitted job (\d+)$", out, re.M))
    assert set(job_ids) == {"text-only", "m3p"}, out
    sweep, states = wait_until_finished(path, tmp_path, ["text-only", "m3p"])
    logs = {run.name: (run.directory / "train.log").read_text() for run in sweep.runs}
    assert states == {"text-only": "done", "m3p": "done"}, logs
    for run in sweep.runs:
        assert (run.directory / "checkpoints" / "checkpoint_last.pt").exists()
        assert (run.directory / "command.sh").read_text().splitlines()[-1].startswith("fairseq-train ")
    table = sweep_cli("collect", path, cwd=tmp_path)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:3]}
    for name in ("text-only", "m3p"):
        last_validation = json_records(tmp_path / "runs" / name / "train.log", "valid")[-1]
        # run, state, attempt, job id, num_updates, loss, nll_loss, ppl, best_loss
        assert rows[name][:5] == [name, "done", "1", job_ids[name], "10"]
        assert [float(v) for v in rows[name][5:9]] == [float(last_validation[f"valid_{k}"])
                                                       for k in ("loss", "nll_loss", "ppl", "best_loss")]
    assert "valid_mmcl" in json_records(tmp_path / "runs" / "m3p" / "train.log", "valid")[-1]

    # 2. a run that cannot finish within its time limit: Slurm signals it (USR2, signal_delay_s
    # before the limit; slurmctld checks every 30 s), submitit calls TrainingJob.checkpoint and
    # requeues it. Its length is set from the measured speed: ~300 s of training, so the first
    # attempt (signalled 150-180 s after it starts) cannot finish.
    max_update = int(updates_per_second(tmp_path / "runs" / "m3p" / "train.log") * 300)
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
    loaded = r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)"
    resumed = [int(n) for n in re.findall(loaded, log)]
    assert resumed and resumed[0] > 0 and resumed == sorted(resumed)
    assert float(json_records(run_dir / "train.log", "valid")[-1]["valid_num_updates"]) == max_update
    submitit_log = "".join(p.read_text() for p in (run_dir / "submitit").glob(f"{job_id}_*.err"))
    assert f"Requeued job {job_id}" in submitit_log
    job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert re.search(r"Restarts=[1-9]", job), job
    print(f"requeued run: {max_update} updates in {state['attempt']} attempts, resumed at {resumed}")
