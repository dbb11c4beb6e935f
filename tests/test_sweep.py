"""Sweeps (m3p_fairseq/sweep/): expansion, run directories, resources and the sbatch script
(without Slurm; through submitit's Slurm executor where Slurm is installed), the state machine of
submit (skip finished, resubmit failed), status/collect from fairseq's JSON records, and a real
fairseq-train through submitit's local executor, interrupted by the timeout signal while its
checkpoint_last.pt is half-copied, requeued, and resumed."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
import yaml

from helpers import REPO
from m3p_fairseq import sweep as sweeps


def write_sweep(tmp_path: Path, spec: dict, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


BASE = {"name": "demo", "output_dir": "runs", "data": "data-bin",
        "base": {"task": "multimodal_translation", "arch": "m3p_transformer_tiny", "max-update": 10,
                 "no-epoch-checkpoints": True, "fp16": False}}


def test_grid_times_runs_expands_every_combination_in_order(tmp_path):
    spec = {**BASE, "grid": {"lr": [0.001, 0.0005], "seed": [1, 2]},
            "runs": [{"name": "text", "fusion": "none"}, {"fusion": "cvlm", "mmcl-weight": 0.1}]}
    sweep = sweeps.load_sweep(write_sweep(tmp_path, spec), cwd=tmp_path)
    assert [run.name for run in sweep.runs] == [
        "text,lr=0.001,seed=1", "text,lr=0.001,seed=2", "text,lr=0.0005,seed=1", "text,lr=0.0005,seed=2",
        "fusion=cvlm,mmcl-weight=0.1,lr=0.001,seed=1", "fusion=cvlm,mmcl-weight=0.1,lr=0.001,seed=2",
        "fusion=cvlm,mmcl-weight=0.1,lr=0.0005,seed=1", "fusion=cvlm,mmcl-weight=0.1,lr=0.0005,seed=2"]
    run = sweep.runs[5]
    assert run.directory == tmp_path / "runs" / run.name
    assert run.argv == ["fairseq-train", str(tmp_path / "data-bin"), "--task", "multimodal_translation",
                        "--arch", "m3p_transformer_tiny", "--max-update", "10", "--no-epoch-checkpoints",
                        "--fusion", "cvlm", "--mmcl-weight", "0.1", "--lr", "0.001", "--seed", "2",
                        "--log-format", "json", "--save-dir", str(run.directory / "checkpoints")]


def test_evaluation_after_training_when_asked(tmp_path):
    spec = {**BASE, "evaluate": {"splits": "test,test_degraded", "beam": 5, "checkpoint": "checkpoint_last.pt"}}
    (run,) = sweeps.load_sweep(write_sweep(tmp_path, spec), cwd=tmp_path).runs
    assert run.evaluate_argv == [sys.executable, "-m", "m3p_fairseq.evaluation.cli", "--data",
                                 str(tmp_path / "data-bin"), "--checkpoint",
                                 f"run={run.directory / 'checkpoints' / 'checkpoint_last.pt'}",
                                 "--output", str(run.directory / "bleu.json"), "--splits", "test,test_degraded",
                                 "--beam", "5"]
    assert sweeps.load_sweep(write_sweep(tmp_path, BASE), cwd=tmp_path).runs[0].evaluate_argv == []


def test_grid_alone_list_alone_and_neither(tmp_path):
    only_grid = sweeps.load_sweep(write_sweep(tmp_path, {**BASE, "grid": {"seed": [1, 2, 3]}}), cwd=tmp_path)
    assert [r.name for r in only_grid.runs] == ["seed=1", "seed=2", "seed=3"]
    only_list = sweeps.load_sweep(write_sweep(tmp_path, {**BASE, "runs": [{"lr": 1}, {"name": "b", "lr": 2}]}),
                                  cwd=tmp_path)
    assert [r.name for r in only_list.runs] == ["lr=1", "b"]
    neither = sweeps.load_sweep(write_sweep(tmp_path, BASE), cwd=tmp_path)
    assert [r.name for r in neither.runs] == ["base"]


def test_python_sweep_file(tmp_path):
    path = tmp_path / "sweep.py"
    path.write_text("SWEEP = dict(name='py', data='/data', base={'arch': 'm3p_transformer_tiny'},\n"
                    "             grid={'dropout': [0.1 * k for k in range(1, 3)]})\n")
    sweep = sweeps.load_sweep(path, cwd=tmp_path)
    assert [r.options["dropout"] for r in sweep.runs] == [0.1, 0.2]
    assert sweep.output_dir == tmp_path / "sweeps" / "py"


def test_run_names_are_safe_and_bounded(tmp_path):
    assert sweeps.run_name_for({"adam-betas": "(0.9, 0.98)", "lang-pairs": "en-de/x"}) == \
        "adam-betas=_0.9__0.98_,lang-pairs=en-de_x"
    long_a = sweeps.run_name_for({"arch": "a" * 120})
    long_b = sweeps.run_name_for({"arch": "a" * 119 + "b"})
    assert len(long_a) <= 100 and long_a != long_b


RESOURCES_SPEC = {**BASE, "resources": {"partition": "gpu", "nodes": 2, "gpus_per_node": 4, "cpus_per_task": 10,
                                          "mem_gb": 64, "time_min": 600, "job_name": "m3p-{run}",
                                          "signal_delay_s": 90, "setup": ["export OMP_NUM_THREADS=1"],
                                          "slurm_extra": {"account": "mt"}},
                  "runs": [{"name": "small", "resources.nodes": 1, "resources.time_min": 30}, {"name": "big"}]}
SBATCH_LINES = ["#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4",
                "#SBATCH --ntasks-per-node=4", "#SBATCH --cpus-per-task=10", "#SBATCH --mem=64GB",
                "#SBATCH --time=600", "#SBATCH --job-name=m3p-big", "#SBATCH --signal=USR2@90",
                "#SBATCH --account=mt", "export OMP_NUM_THREADS=1"]
NO_SLURM = shutil.which("srun") is None


def test_resources_map_to_submitit_and_vary_by_run(tmp_path):
    small, big = sweeps.load_sweep(write_sweep(tmp_path, RESOURCES_SPEC), cwd=tmp_path).runs
    assert sweeps.executor_parameters(big.resources, big.tasks_per_node) == {
        "slurm_partition": "gpu", "nodes": 2, "gpus_per_node": 4, "tasks_per_node": 4, "cpus_per_task": 10,
        "mem_gb": 64.0, "timeout_min": 600, "name": "m3p-big", "slurm_signal_delay_s": 90,
        "slurm_setup": ["export OMP_NUM_THREADS=1"], "slurm_additional_parameters": {"account": "mt"}}
    assert big.world_size == 8 and small.world_size == 4
    parameters = sweeps.executor_parameters(small.resources, small.tasks_per_node)
    assert (parameters["nodes"], parameters["timeout_min"], parameters["name"]) == (1, 30, "m3p-small")
    assert "resources.nodes" not in small.argv and "--nodes" not in small.argv


def test_sbatch_lines_without_slurm(tmp_path, monkeypatch):
    """The sbatch script a run gets, built by submitit's own Slurm executor with srun nowhere
    on PATH (as on a machine without Slurm)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("srun") is None
    small, big = sweeps.load_sweep(write_sweep(tmp_path, RESOURCES_SPEC), cwd=tmp_path).runs
    script = sweeps.sbatch_script(big, tmp_path / "submitit").splitlines()
    for line in SBATCH_LINES:
        assert line in script
    small_script = sweeps.sbatch_script(small, tmp_path / "submitit").splitlines()
    assert "#SBATCH --nodes=1" in small_script and "#SBATCH --time=30" in small_script
    with pytest.raises(RuntimeError, match='Could not detect "srun"'):  # why the preview exists
        sweeps.make_executor("slurm", tmp_path / "submitit", big)


@pytest.mark.skipif(NO_SLURM, reason="needs Slurm's srun on PATH (submitit's Slurm executor refuses to start "
                                     "without it); the sbatch lines are checked without Slurm in "
                                     "test_sbatch_lines_without_slurm")
def test_the_slurm_executor_writes_the_same_sbatch_script(tmp_path):
    _, big = sweeps.load_sweep(write_sweep(tmp_path, RESOURCES_SPEC), cwd=tmp_path).runs
    executor = sweeps.make_executor("slurm", tmp_path / "submitit", big)
    script = executor._executor._make_submission_file_text("python job.py", "UID")
    assert script == sweeps.sbatch_script(big, tmp_path / "submitit", "python job.py")
    for line in SBATCH_LINES:
        assert line in script.splitlines()


@pytest.mark.parametrize("spec_change, message", [
    ({"resources": {"gpus": 2}}, "unknown resource 'gpus'"),
    ({"resources": {"nodes": "two"}}, "resource nodes must be int, got 'two'"),
    ({"base": {"save-dir": "x"}}, "base sets ['save-dir'], which the sweep sets itself"),
    ({"runs": [{"log-format": "simple"}]}, "runs[0] (log-format=simple) sets ['log-format'], which the sweep sets"),
    ({"data": None}, "no data directory"),
    ({"grid": {"lr": 0.1}}, "grid.lr must be a non-empty list"),
    ({"runs": [{"name": "a", "lr": 1}, {"name": "a", "lr": 2}]}, "two runs are both named 'a'"),
    ({"gird": {"lr": [1]}}, "unknown top-level keys ['gird']"),
    ({"resources": {"tasks_per_node": 2}, "base": {"cpu": True}}, "need 'distributed-backend: gloo'"),
    ({"resources": {"tasks_per_node": 2}, "base": {"cpu": True, "distributed-backend": "gloo"}},
     "need 'ddp-backend: legacy_ddp'"),
])
def test_bad_sweep_files_name_the_file_and_the_problem(tmp_path, spec_change, message):
    path = write_sweep(tmp_path, {**BASE, **spec_change})
    with pytest.raises(sweeps.SweepError) as error:
        sweeps.load_sweep(path, cwd=tmp_path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_distributed_arguments_come_from_the_job_environment():
    environment = SimpleNamespace(num_tasks=4, global_rank=3, local_rank=1, job_id="12345_0",
                                  hostnames=["node7", "node8"])
    assert sweeps.TrainingJob.distributed_arguments(environment, 4) == [
        "--distributed-world-size", "4", "--distributed-rank", "3",
        "--distributed-init-method", f"tcp://node7:{20000 + 123450 % 20000}", "--distributed-no-spawn",
        "--device-id", "1"]
    assert sweeps.TrainingJob.distributed_arguments(environment, 1) == []
    with pytest.raises(RuntimeError, match="the job has 4 tasks but the run needs 2 workers"):
        sweeps.TrainingJob.distributed_arguments(environment, 2)


# ---- the state machine, with a stand-in trainer (fast) --------------------------------------
FAKE_TRAINER = """
import json, sys, pathlib
argv = sys.argv[1:]
save_dir = pathlib.Path(argv[argv.index('--save-dir') + 1])
lr = argv[argv.index('--lr') + 1]
if pathlib.Path(argv[0], 'FAIL-' + lr).exists():
    print('boom'); sys.exit(3)
save_dir.mkdir(parents=True, exist_ok=True)
(save_dir / 'checkpoint_last.pt').write_text('x')
assert argv[argv.index('--log-format') + 1] == 'json'
record = {"epoch": 1, "valid_loss": lr, "valid_nll_loss": "2.5", "valid_ppl": "5.66", "valid_num_updates": "7",
          "valid_best_loss": lr}
print("2026-11-29 06:00:00 | INFO | train | " + json.dumps({"epoch": 1, "train_loss": "9", "train_num_updates": "7"}))
print("2026-11-29 06:00:00 | INFO | valid | " + json.dumps(record))
print("2026-11-29 06:00:00 | INFO | fairseq_cli.train | {'not': 'json'}")
"""


@pytest.fixture
def fake_sweep(tmp_path):
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    data = tmp_path / "data"
    data.mkdir()
    spec = {"name": "fake", "output_dir": "runs", "data": "data", "command": [sys.executable, str(trainer)],
            "grid": {"lr": [1.5, 2.5]}}
    return write_sweep(tmp_path, spec), data


def run_cli(*args, cwd):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), *map(str, args)],
                            cwd=cwd, capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


def test_submit_skips_finished_runs_and_resubmits_failed_ones(tmp_path, fake_sweep):
    path, data = fake_sweep
    (data / "FAIL-2.5").write_text("")
    code, out, _ = run_cli("submit", path, "--cluster", "debug", cwd=tmp_path)
    assert code == 1  # one run failed
    assert re.search(r"^lr=1.5: submitted job \S+$", out, re.M)
    assert "lr=2.5: failed: fairseq-train exited with code 3" in out
    runs = tmp_path / "runs"
    assert sweeps.read_state(runs / "lr=1.5")["state"] == "done"
    failed = sweeps.read_state(runs / "lr=2.5")
    assert (failed["state"], failed["exit_code"], failed["attempt"]) == ("failed", 3, 1)
    assert "boom" in (runs / "lr=2.5" / "train.log").read_text()
    command = (runs / "lr=1.5" / "command.sh").read_text()
    assert command.splitlines()[-1].endswith(f"--lr 1.5 --log-format json --save-dir {runs / 'lr=1.5' / 'checkpoints'}")
    assert json.loads((runs / "lr=1.5" / "config.json").read_text())["overrides"] == {"lr": 1.5}

    (data / "FAIL-2.5").unlink()  # the user fixes the problem and submits again
    code, out, _ = run_cli("submit", path, "--cluster", "debug", cwd=tmp_path)
    assert code == 0
    assert "lr=1.5: skipped (done)" in out and re.search(r"^lr=2.5: submitted job \S+ \(was failed\)$", out, re.M)
    resubmitted = sweeps.read_state(runs / "lr=2.5")
    assert (resubmitted["state"], resubmitted["attempt"]) == ("done", 2)
    assert len(re.findall("# attempt started", (runs / "lr=1.5" / "train.log").read_text())) == 1

    code, out, _ = run_cli("collect", path, cwd=tmp_path)
    assert code == 0
    header, *rows = out.splitlines()[:3]
    assert header.split() == sweeps.STATUS_COLUMNS
    assert [row.split()[:2] + row.split()[4:] for row in rows] == [
        ["lr=1.5", "done", "7", "1.5", "2.5", "5.66", "1.5"], ["lr=2.5", "done", "7", "2.5", "2.5", "5.66", "2.5"]]
    table = (runs / "results.tsv").read_text().splitlines()
    assert table[0].split("\t")[:len(sweeps.STATUS_COLUMNS)] == sweeps.STATUS_COLUMNS
    assert len(table) == 3


def test_a_run_whose_only_checkpoint_does_not_load_fails_with_the_reason(tmp_path, fake_sweep):
    """The job repairs checkpoints before each attempt; with nothing loadable it does not start
    fairseq-train over from scratch but records why."""
    path, _ = fake_sweep
    broken = tmp_path / "runs" / "lr=1.5" / "checkpoints" / "checkpoint_last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PK\x03\x04 cut short")
    code, out, _ = run_cli("submit", path, "--cluster", "debug", cwd=tmp_path)
    assert code == 1 and "lr=2.5: submitted job" in out
    state = sweeps.read_state(broken.parents[1])
    assert state["state"] == "failed" and f"{broken} does not load (truncated or not a checkpoint" in state["detail"]
    assert "boom" not in (broken.parents[1] / "train.log").read_text()  # the trainer never ran
    assert "valid" not in (broken.parents[1] / "train.log").read_text()
    assert broken.read_bytes() == b"PK\x03\x04 cut short"  # left for the user to look at
    assert sweeps.read_state(tmp_path / "runs" / "lr=2.5")["state"] == "done"


def test_status_of_new_running_and_lost_runs(tmp_path, fake_sweep):
    path, _ = fake_sweep
    sweep = sweeps.load_sweep(path, cwd=tmp_path)
    first, second = sweep.runs
    sweeps.write_state(first.directory, "running", job_id=str(1 << 22), cluster="local")  # no such process
    rows = sweeps.collect(sweep)
    assert [(row["run"], row["state"]) for row in rows] == [("lr=1.5", "lost"), ("lr=2.5", "new")]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sweeps.write_state(first.directory, "running", job_id=str(sleeper.pid), cluster="local")
        actions = sweeps.submit(sweep, "debug", dry_run=True)
        assert actions == {"lr=1.5": f"skipped (running, job {sleeper.pid})", "lr=2.5": "would submit"}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sweeps.submit(sweep, "debug", dry_run=True)["lr=1.5"] == "would submit (was lost)"


def test_checkpoint_stops_the_trainer_and_returns_a_requeueable_job(tmp_path):
    run_dir = tmp_path / "run"
    sweeps.write_state(run_dir, "running", attempt=1)
    job = sweeps.TrainingJob(stop_grace_s=5)
    job._process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    began = time.time()
    delayed = job.checkpoint(str(run_dir))
    assert time.time() - began < 5 and job._process is None
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is job and delayed.args == (str(run_dir),)
    assert sweeps.read_state(run_dir)["state"] == "requeued" and sweeps.read_state(run_dir)["attempt"] == 1
    assert pickle.loads(pickle.dumps(delayed)).function.stop_grace_s == 5


# ---- a real fairseq-train through submitit's local executor ---------------------------------
def test_local_sweep_trains_is_interrupted_requeued_and_resumes(tmp_path, data_dir, monkeypatch):
    """The local executor sends the same signal as Slurm before a time limit; submitit calls
    TrainingJob.checkpoint, requeues, and the next attempt resumes. The probe criterion holds
    training after update 2 (saved) until the test opens a gate, so the signal always finds the
    first attempt training; by then its checkpoint_last.pt is cut to half, as a kill during
    fairseq's copy of it leaves it, and the second attempt puts back the complete checkpoint."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("M3P_PROBE_HOLD", f"2:{gate}")  # inherited by submitit's job and fairseq-train
    spec = {"name": "tiny", "output_dir": "runs", "data": str(data_dir),
            "base": {"user-dir": str(REPO / "tests" / "distributed_probe"), "task": "multimodal_translation",
                     "lang-pairs": "en-de,de-en", "arch": "m3p_transformer_tiny", "encoder-layers": 1,
                     "decoder-layers": 1, "encoder-embed-dim": 32, "decoder-embed-dim": 32,
                     "encoder-ffn-embed-dim": 64, "decoder-ffn-embed-dim": 64, "cpu": True,
                     "fusion": "cvlm", "criterion": "m3p_loss_held", "mmcl-weight": 0.5,
                     "sampling-temperature": 3, "sampling-temperature-init": 1, "sampling-warmup-updates": 100,
                     "optimizer": "adam", "lr": 0.001, "max-tokens": 300, "max-update": 12,
                     "save-interval-updates": 2, "keep-interval-updates": 1, "no-epoch-checkpoints": True,
                     "log-interval": 1, "num-workers": 0},
            "resources": {"time_min": 10},
            "evaluate": {"splits": "test", "lang-pairs": "en-de", "beam": 2, "checkpoint": "checkpoint_last.pt"}}
    sweep = sweeps.load_sweep(write_sweep(tmp_path, spec), cwd=tmp_path)
    (run,) = sweep.runs
    sweeps.prepare_run_dir(run)
    executor = sweeps.make_executor("local", run.directory / "submitit", run)
    job = executor.submit(sweeps.TrainingJob(), str(run.directory))
    sweeps.write_state(run.directory, "submitted", job_id=str(job.job_id), cluster="local")
    log = run.directory / "train.log"
    checkpoints = run.directory / "checkpoints"

    def wait_for(condition, what):
        deadline = time.time() + 900  # not a speed goal: a loaded machine starts fairseq slowly
        while not condition():
            assert time.time() < deadline and not job.done(), \
                f"waiting for {what}\n" + (log.read_text()[-3000:] if log.exists() else "no train.log")
            time.sleep(0.2)

    try:
        # fairseq logs "Saved checkpoint" after the copies to best and last: held from then on
        wait_for(lambda: log.exists() and "Saved checkpoint" in log.read_text(), "the checkpoint at update 2")
        complete = (checkpoints / "checkpoint_1_2.pt").read_bytes()
        (checkpoints / "checkpoint_last.pt").write_bytes(complete[:len(complete) // 2])
        # what Slurm, or the local executor at its timeout, sends the job's task before the
        # time limit: SIGUSR2 -> checkpoint and requeue (job._interrupt() would signal the local
        # controller, which does not handle it)
        (task_pid,) = Path(f"/proc/{job._process.pid}/task/{job._process.pid}/children").read_text().split()
        os.kill(int(task_pid), signal.SIGUSR2)
        # the first attempt's fairseq-train is stopped before the state says requeued
        wait_for(lambda: sweeps.read_state(run.directory)["state"] == "requeued"
                 or sweeps.read_state(run.directory).get("attempt", 0) >= 2, "the requeue")
        gate.write_text("")
        job.result()
    finally:
        job.cancel()  # stops the job and (TrainingJob) its fairseq-train if the test failed early

    text = log.read_text()
    state = sweeps.read_state(run.directory)
    assert (state["state"], state["attempt"]) == ("done", 2), text[-3000:]
    _, second = text.split("# attempt started")[1:]
    assert "checkpoint_last.pt does not load (truncated or not a checkpoint" in second
    assert "replaced by a copy of checkpoint_1_2.pt (2 updates)" in second
    assert (checkpoints / "checkpoint_last.pt.unloadable").stat().st_size == len(complete) // 2
    assert re.findall(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", second) == ["2"]
    # the temperature warm-up continues from the restored update count: tau = 1 + u/100 * 2
    temperatures = [float(t) for t in re.findall(r"sampling temperature ([\d.]+)", second)]
    assert temperatures[0] == pytest.approx(1 + 2 / 100 * 2)
    # collect reads fairseq's JSON validation records: one per save (every 2 updates), all attempts
    validations = list(sweeps.validation_records(log))
    assert [v["num_updates"] for v in validations] == [2, 4, 6, 8, 10, 12]
    metrics = sweeps.final_metrics(run.directory)
    assert (metrics["num_updates"], metrics["subset"], metrics["loss"]) == (12, "valid", validations[-1]["loss"])
    # scripts/evaluate.py ran after training; its BLEU joins the table
    bleu = json.loads((run.directory / "bleu.json").read_text())["run"]["test"]["en-de"]["bleu"]
    assert metrics["bleu:test:en-de"] == bleu and [k for k in metrics if k.startswith("bleu")] == ["bleu:test:en-de"]
