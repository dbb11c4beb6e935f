"""Sweeps of fairseq-train configurations, submitted through submitit (Slurm, local, debug).

    python scripts/sweep.py submit  SWEEP_FILE [--cluster slurm|local|debug] [--dry-run]
    python scripts/sweep.py status  SWEEP_FILE
    python scripts/sweep.py collect SWEEP_FILE [--output results.tsv]

A sweep file (YAML, or Python defining ``SWEEP = {...}``) holds base fairseq-train options, a
``grid`` (every combination) and/or a list of ``runs`` (each combined with every grid point),
and the ``resources`` of a job; see docs/sweeps.md. Each run gets its own directory under
``output_dir``: ``config.json`` (the resolved configuration), ``command.sh`` (the exact
command), ``checkpoints/``, ``train.log``, ``submitit/`` (the scheduler's logs) and
``state.json`` (submitted / running / requeued / done / failed).

The job (:class:`TrainingJob`) runs fairseq-train in a child process. On Slurm's warning
signal before a time limit or a preemption, submitit calls its ``checkpoint()``: the child is
stopped, the job requeued, and the next attempt resumes from ``checkpoint_last.pt`` (fairseq
writes it atomically every ``--save-interval-updates``; the task's sampling temperature follows
the restored update count). ``submit`` again skips finished runs and those still queued or
running, and resubmits failed or lost ones.
"""

import argparse
import hashlib
import itertools
import json
import logging
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import submitit

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm", "local", "debug")
SWEEP_KEYS = {"name", "output_dir", "command", "data", "base", "grid", "runs", "resources", "evaluate"}
EVALUATE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"
# name in the sweep file -> (submitit parameter, type); None: handled here, not by submitit
RESOURCES = {
    "partition": ("slurm_partition", str),
    "nodes": ("nodes", int),
    "gpus_per_node": ("gpus_per_node", int),
    "tasks_per_node": ("tasks_per_node", int),
    "cpus_per_task": ("cpus_per_task", int),
    "mem_gb": ("mem_gb", float),
    "time_min": ("timeout_min", int),
    "job_name": ("name", str),
    "signal_delay_s": ("slurm_signal_delay_s", int),
    "setup": ("slurm_setup", list),
    "slurm_extra": ("slurm_additional_parameters", dict),
    "max_requeues": (None, int),
}
DEFAULT_RESOURCES = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "time_min": 60,
                     "job_name": "{sweep}.{run}", "signal_delay_s": 120, "max_requeues": 3}
# options whose relative paths are resolved against the directory `submit` runs in
PATH_OPTIONS = {"user-dir", "image-features", "restore-file", "finetune-from-model", "tensorboard-logdir"}
SET_BY_SWEEP = {"save-dir", "distributed-rank", "distributed-init-method", "distributed-world-size",
                "distributed-no-spawn", "device-id"}
CPU_DDP_BACKENDS = {"legacy_ddp", "no_c10d"}
ACTIVE_STATES = {"submitted", "running", "requeued"}
VALID_LINE = re.compile(r"valid on '(?P<subset>[^']+)' subset \|(?P<values>.*)$")
LOGGED_VALUE = re.compile(r"\|?\s*(\w+)[ =]([-+\d.eE]+|inf|nan)\s*(?=\||$)")


class SweepError(ValueError):
    """A sweep file that cannot be expanded; the message names the file and the entry."""


@dataclass
class Run:
    name: str
    directory: Path
    overrides: Dict[str, Any]
    options: Dict[str, Any]
    resources: Dict[str, Any]
    argv: List[str] = field(default_factory=list)
    evaluate_argv: List[str] = field(default_factory=list)
    data: str = ""

    @property
    def world_size(self) -> int:
        return self.resources["nodes"] * self.tasks_per_node

    @property
    def tasks_per_node(self) -> int:
        return self.resources.get("tasks_per_node") or max(self.resources["gpus_per_node"], 1)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "overrides": self.overrides, "options": self.options,
                "resources": self.resources, "argv": self.argv, "world_size": self.world_size,
                "evaluate_argv": self.evaluate_argv}


@dataclass
class Sweep:
    name: str
    path: Path
    output_dir: Path
    runs: List[Run]


# ---- reading and expanding ------------------------------------------------------------------
def read_sweep_file(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    if path.suffix == ".py":
        spec = runpy.run_path(str(path)).get("SWEEP")
        if not isinstance(spec, dict):
            raise SweepError(f"{path}: a Python sweep file must define a dict SWEEP = {{...}}")
        return spec
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise SweepError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(spec, dict):
            raise SweepError(f"{path}: expected a mapping at the top level (name, base, grid, runs, resources)")
        return spec
    raise SweepError(f"{path}: expected a .yaml, .yml or .py sweep file")


def load_sweep(path, output_dir: Optional[Path] = None, cwd: Optional[Path] = None) -> Sweep:
    """Reads and expands a sweep file: one :class:`Run` per point of runs x grid."""
    path = Path(path).resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    spec = read_sweep_file(path)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown top-level keys {sorted(unknown)}; expected some of {sorted(SWEEP_KEYS)}")
    name = str(spec.get("name") or path.stem)
    out = Path(output_dir or spec.get("output_dir") or Path("sweeps") / name)
    out = (cwd / out).resolve() if not out.is_absolute() else out
    base = _mapping(spec.get("base", {}), path, "base")
    _check_not_set_by_sweep(base, path, "base")
    base_resources = {**DEFAULT_RESOURCES, **_mapping(spec.get("resources", {}), path, "resources")}

    runs = []
    for list_index, entry, grid_point in expand(spec, path):
        overrides = {**entry, **grid_point}
        given_name = overrides.pop("name", None)
        # a named list entry keeps its name, followed by its grid point
        run_name = (",".join([str(given_name)] + ([run_name_for(grid_point)] if grid_point else []))
                    if given_name else run_name_for(overrides))
        where = f"runs[{list_index}]" if list_index is not None else "grid"
        resources = dict(base_resources)
        options = dict(base)
        for key, value in overrides.items():
            if key.startswith("resources."):
                resources[key[len("resources."):]] = value
            else:
                options[key] = value
        _check_not_set_by_sweep(options, path, f"{where} ({run_name})")
        resources = check_resources(resources, path, f"{where} ({run_name})")
        resources["job_name"] = resources["job_name"].format(sweep=name, run=run_name)
        run = Run(run_name, out / run_name, overrides, options, resources)
        run.argv = training_command(spec, run, path, cwd)
        run.evaluate_argv = evaluation_command(spec, run, path)
        runs.append(run)
    seen = {}
    for run in runs:
        if run.name in seen:
            raise SweepError(f"{path}: two runs are both named {run.name!r} ({seen[run.name]} and {run.overrides}); "
                             "give them distinct 'name' entries")
        seen[run.name] = run.overrides
    return Sweep(name, path, out, runs)


def expand(spec: Dict[str, Any], path: Path):
    """(index in ``runs`` or None, list entry, grid point) for every run: the grid's cartesian
    product, crossed with every entry of the ``runs`` list (either may be absent)."""
    grid = _mapping(spec.get("grid", {}), path, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list of values, got {values!r}")
    entries = spec.get("runs", None)
    if entries is None:
        entries = [{}]
        indexed = [(None, {})]
    else:
        if not isinstance(entries, list) or not entries:
            raise SweepError(f"{path}: 'runs' must be a non-empty list of mappings of overrides")
        indexed = [(i, _mapping(entry, path, f"runs[{i}]")) for i, entry in enumerate(entries)]
    keys = list(grid)
    for index, entry in indexed:
        for values in itertools.product(*(grid[k] for k in keys)):
            yield index, entry, dict(zip(keys, values))


def run_name_for(overrides: Dict[str, Any]) -> str:
    """``key=value`` of each override, comma-joined (a hash stands in for very long names)."""
    if not overrides:
        return "base"
    parts = [f"{key.replace('resources.', '')}={_scalar(value)}" for key, value in overrides.items()]
    # one directory name, without separators or shell metacharacters; commas only between parts
    name = ",".join(re.sub(r"[^A-Za-z0-9._=+-]", "_", part) for part in parts)
    if len(name) > 100:
        name = name[:80] + "," + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def check_resources(resources: Dict[str, Any], path: Path, where: str) -> Dict[str, Any]:
    checked = {}
    for key, value in resources.items():
        if key not in RESOURCES:
            raise SweepError(f"{path}: {where}: unknown resource {key!r}; expected one of {sorted(RESOURCES)}")
        if value is None:
            continue
        kind = RESOURCES[key][1]
        try:
            checked[key] = value if kind in (list, dict) else kind(value)
        except (TypeError, ValueError):
            raise SweepError(f"{path}: {where}: resource {key} must be {kind.__name__}, got {value!r}") from None
        if kind in (list, dict) and not isinstance(value, kind):
            raise SweepError(f"{path}: {where}: resource {key} must be a {kind.__name__}, got {value!r}")
    for key in ("nodes", "time_min"):
        if checked.get(key, 1) < 1:
            raise SweepError(f"{path}: {where}: resource {key} must be at least 1, got {checked[key]}")
    return checked


def executor_parameters(resources: Dict[str, Any], tasks_per_node: int) -> Dict[str, Any]:
    """The configuration's resources as submitit's ``update_parameters`` arguments."""
    parameters = {RESOURCES[key][0]: value for key, value in resources.items() if RESOURCES[key][0]}
    parameters["tasks_per_node"] = tasks_per_node
    if not parameters.get("gpus_per_node"):
        parameters.pop("gpus_per_node", None)
    return parameters


def training_command(spec: Dict[str, Any], run: Run, path: Path, cwd: Path) -> List[str]:
    command = spec.get("command", "fairseq-train")
    command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    data = run.options.pop("data", spec.get("data"))
    if not data:
        raise SweepError(f"{path}: no data directory: set 'data' at the top level (or in base/grid/runs)")
    run.data = _resolve(str(data), cwd)
    argv = command + [run.data]
    for key, value in run.options.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key}")
        if value is not True:
            argv.append(_resolve(_scalar(value), cwd) if key in PATH_OPTIONS else _scalar(value))
    argv += ["--save-dir", str(run.directory / "checkpoints")]
    if run.world_size > 1:
        _check_distributed(run, path)
    return argv


def evaluation_command(spec: Dict[str, Any], run: Run, path: Path) -> List[str]:
    """scripts/evaluate.py on the run's checkpoint after training, when the sweep file has an
    ``evaluate`` mapping (its options, e.g. splits, beam, lang-pairs; ``checkpoint`` picks the
    file, default checkpoint_best.pt). Writes RUN/bleu.json, which ``collect`` reads."""
    options = _mapping(spec.get("evaluate"), path, "evaluate")
    if "evaluate" not in spec:
        return []
    checkpoint = options.pop("checkpoint", "checkpoint_best.pt")
    if "data" in options or "output" in options:
        raise SweepError(f"{path}: evaluate: 'data' and 'output' are set by the sweep (the run's data, RUN/bleu.json)")
    argv = [sys.executable, str(EVALUATE_SCRIPT), "--data", run.data,
            "--checkpoint", f"run={run.directory / 'checkpoints' / checkpoint}",
            "--output", str(run.directory / "bleu.json")]
    for key, value in options.items():
        if value is not None and value is not False:
            argv += [f"--{key}"] + ([] if value is True else [_scalar(value)])
    return argv


def _check_distributed(run: Run, path: Path) -> None:
    """fairseq 0.12's default --ddp-backend pytorch_ddp wraps the model with device_ids=[device_id]
    (fairseq/models/distributed_fairseq_model.py), which torch refuses for a CPU model."""
    options = run.options
    if options.get("cpu") or not run.resources["gpus_per_node"]:
        if options.get("distributed-backend") != "gloo":
            raise SweepError(f"{path}: run {run.name}: {run.world_size} CPU workers need "
                             "'distributed-backend: gloo' (NCCL is GPU-only)")
        if options.get("ddp-backend") not in CPU_DDP_BACKENDS:
            raise SweepError(f"{path}: run {run.name}: {run.world_size} CPU workers need 'ddp-backend: legacy_ddp' "
                             "(fairseq's pytorch_ddp passes device_ids, which torch refuses for a CPU model)")
        if not options.get("cpu"):
            raise SweepError(f"{path}: run {run.name}: no GPUs requested (gpus_per_node 0) but 'cpu' is not set")


def _mapping(value, path: Path, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{path}: {where} must be a mapping of option: value, got {value!r}")
    return {str(k).lstrip("-"): v for k, v in value.items()}


def _check_not_set_by_sweep(options: Dict[str, Any], path: Path, where: str) -> None:
    clash = sorted(set(options) & SET_BY_SWEEP)
    if clash:
        raise SweepError(f"{path}: {where} sets {clash}, which the sweep sets itself "
                         "(each run saves to RUN_DIR/checkpoints; workers get their ranks from the scheduler)")


def _scalar(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_scalar(v) for v in value)
    return str(value)


def _resolve(value: str, cwd: Path) -> str:
    return value if os.path.isabs(value) else str((cwd / value).resolve())


# ---- run directories and their state --------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_state(run_dir: Path) -> Dict[str, Any]:
    path = Path(run_dir) / "state.json"
    if not path.exists():
        return {"state": "new"}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {"state": "unreadable", "detail": f"{path} is not JSON"}


def write_state(run_dir: Path, state: str, **fields) -> Dict[str, Any]:
    record = {**read_state(run_dir), **fields, "state": state, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "detail" not in fields:  # an old failure's explanation does not outlive it
        record.pop("detail", None)
    write_atomic(Path(run_dir) / "state.json", json.dumps(record, indent=1) + "\n")
    return record


def prepare_run_dir(run: Run) -> None:
    run.directory.mkdir(parents=True, exist_ok=True)
    write_atomic(run.directory / "config.json", json.dumps(run.config(), indent=1) + "\n")
    lines = ["#!/usr/bin/env bash", f"# run {run.name}: the command each attempt runs (from {run.directory.parent})"]
    if run.world_size > 1:
        lines.append(f"# on each of the {run.world_size} workers, with --distributed-world-size {run.world_size} "
                     "--distributed-rank RANK --distributed-init-method tcp://HOST:PORT --distributed-no-spawn "
                     "--device-id LOCAL_RANK appended")
    lines.append(" ".join(shlex.quote(a) for a in run.argv))
    write_atomic(run.directory / "command.sh", "\n".join(lines) + "\n")


def job_alive(state: Dict[str, Any]) -> bool:
    """Whether the scheduler still holds the job named in a run's state."""
    job_id, cluster = state.get("job_id"), state.get("cluster")
    if not job_id:
        return False
    if cluster == "slurm":
        try:
            result = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                                    capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return True  # cannot tell: do not submit a second copy
        return result.returncode == 0 and bool(result.stdout.strip())
    if cluster == "local":
        try:
            os.kill(int(str(job_id).split("_")[0]), 0)
        except (OSError, ValueError):
            return False
        return True
    return False


def effective_state(run_dir: Path) -> Dict[str, Any]:
    """The recorded state, with 'lost' for a run whose job the scheduler no longer has although
    it never recorded an end (killed hard, node failure, cancelled)."""
    state = read_state(run_dir)
    if state["state"] in ACTIVE_STATES and not job_alive(state):
        return {**state, "state": "lost"}
    return state


# ---- the job --------------------------------------------------------------------------------
class TrainingJob(submitit.helpers.Checkpointable):
    """Runs one configuration's fairseq-train on every worker of a job; rank 0 keeps the state.

    Checkpointable: on Slurm's signal (time limit, preemption) submitit calls ``checkpoint``,
    which stops fairseq-train and returns this job for requeueing; the next attempt runs the
    same command, and fairseq resumes from ``checkpoint_last.pt``."""

    def __init__(self, stop_grace_s: float = 60.0):
        self.stop_grace_s = stop_grace_s
        self._process = None
        self._last_exit_code = None

    def __call__(self, run_dir: str) -> Dict[str, Any]:
        run_dir = Path(run_dir)
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        environment = submitit.JobEnvironment()
        rank = environment.global_rank
        argv = config["argv"] + self.distributed_arguments(environment, config["world_size"])
        if rank == 0:
            attempt = read_state(run_dir).get("attempt", 0) + 1
            write_state(run_dir, "running", attempt=attempt, job_id=str(environment.job_id),
                        host=environment.hostname)
        log_path = run_dir / ("train.log" if rank == 0 else f"train.rank{rank}.log")
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n# attempt started {time.strftime('%Y-%m-%d %H:%M:%S')} on {environment.hostname}, "
                      f"job {environment.job_id}, rank {rank}\n")
            log.flush()
            code = self._run(argv, log, run_dir)
        if code != 0:
            if rank == 0:
                write_state(run_dir, "failed", exit_code=code)
            raise RuntimeError(f"fairseq-train exited with code {code} (run {config['name']}); see {log_path}")
        if rank == 0 and config.get("evaluate_argv"):
            with open(run_dir / "evaluate.log", "w", encoding="utf-8") as log:
                code = self._run(config["evaluate_argv"], log, run_dir)
            if code != 0:
                write_state(run_dir, "failed", exit_code=code, detail="training finished; evaluation failed")
                raise RuntimeError(f"scripts/evaluate.py exited with code {code} (run {config['name']}); "
                                   f"see {run_dir / 'evaluate.log'}")
        if rank == 0:
            write_state(run_dir, "done", exit_code=0)
        return final_metrics(run_dir)

    def _run(self, argv: List[str], log, run_dir: Path) -> int:
        """Runs a child process to its end (or until checkpoint() stops it); its exit code."""
        # the child ignores the scheduler's warning signal (this process handles it) and writes
        # its log as it goes (Python buffers a redirected stdout)
        self._process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda: signal.signal(submitit.JobEnvironment._usr_sig(), signal.SIG_IGN))
        try:
            # poll rather than wait(): a signal handler that stops the child must not find
            # Popen's wait lock held
            while self._process.poll() is None:
                time.sleep(0.5)
        finally:  # cancelled or interrupted: no orphaned child
            self._stop_trainer()
        return self._last_exit_code

    @staticmethod
    def distributed_arguments(environment, world_size: int) -> List[str]:
        """fairseq's own launcher, one process per worker: the scheduler gives the rank and the
        first host is the rendezvous, on a port derived from the job id (all workers agree)."""
        if world_size <= 1:
            return []
        if environment.num_tasks != world_size:
            raise RuntimeError(f"the job has {environment.num_tasks} tasks but the run needs {world_size} workers")
        job_digits = int(re.sub(r"\D", "", str(environment.job_id)) or 0)
        port = 20000 + job_digits % 20000
        return ["--distributed-world-size", str(world_size), "--distributed-rank", str(environment.global_rank),
                "--distributed-init-method", f"tcp://{environment.hostnames[0]}:{port}",
                "--distributed-no-spawn", "--device-id", str(environment.local_rank)]

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:
        self._stop_trainer()
        write_state(Path(run_dir), "requeued")
        return submitit.helpers.DelayedSubmission(self, run_dir)

    def _stop_trainer(self) -> None:
        """SIGTERM, then SIGKILL after the grace period. fairseq writes checkpoints to a
        temporary file and renames it, so checkpoint_last.pt is never half-written."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            deadline = time.time() + self.stop_grace_s
            while process.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            if process.poll() is None:
                process.kill()
                process.wait()
        self._last_exit_code = process.returncode

    def __getstate__(self):
        return {"stop_grace_s": self.stop_grace_s, "_process": None, "_last_exit_code": None}


# ---- submit, status, collect ----------------------------------------------------------------
def make_executor(cluster: str, folder: Path, run: Run):
    if cluster not in CLUSTERS:
        raise SweepError(f"unknown cluster {cluster!r}; expected one of {CLUSTERS}")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=run.resources["max_requeues"])
    parameters = executor_parameters(run.resources, run.tasks_per_node)
    if cluster != "slurm":
        parameters = {k: v for k, v in parameters.items() if not k.startswith("slurm_")}
    executor.update_parameters(**parameters)
    return executor


def submit(sweep: Sweep, cluster: str = "slurm", dry_run: bool = False, out=sys.stdout) -> Dict[str, str]:
    """Submits every run that is not done or in progress; returns run name -> what happened."""
    actions, debug_jobs = {}, []
    for run in sweep.runs:
        state = effective_state(run.directory)
        if state["state"] == "done":
            actions[run.name] = "skipped (done)"
        elif state["state"] in ACTIVE_STATES:
            actions[run.name] = f"skipped ({state['state']}, job {state.get('job_id')})"
        elif dry_run:
            actions[run.name] = "would submit" + (f" (was {state['state']})" if state["state"] != "new" else "")
        else:
            prepare_run_dir(run)
            executor = make_executor(cluster, run.directory / "submitit", run)
            job = executor.submit(TrainingJob(), str(run.directory))
            write_state(run.directory, "submitted", job_id=str(job.job_id), cluster=cluster)
            again = f" (was {state['state']})" if state["state"] != "new" else ""
            actions[run.name] = f"submitted job {job.job_id}{again}"
            if cluster == "debug":
                debug_jobs.append((run, job))
        print(f"{run.name}: {actions[run.name]}", file=out, flush=True)
    for run, job in debug_jobs:  # submitit's debug executor runs a job in-process when asked for its result
        try:
            job.result()
        except Exception as error:  # noqa: BLE001  (the state file records the failure)
            print(f"{run.name}: failed: {error}", file=out, flush=True)
            if read_state(run.directory)["state"] != "failed":
                write_state(run.directory, "failed", detail=str(error))
    return actions


def final_metrics(run_dir: Path) -> Dict[str, Any]:
    """The last validation line of ``train.log`` (loss, nll_loss, ppl, mmcl, best_loss,
    num_updates...) and, if ``bleu.json`` (scripts/evaluate.py --output) exists, its BLEU."""
    metrics: Dict[str, Any] = {}
    log = Path(run_dir) / "train.log"
    if log.exists():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            found = VALID_LINE.search(line)
            if found:
                metrics = {key: float(value) for key, value in LOGGED_VALUE.findall(found["values"])}
                metrics["subset"] = found["subset"]
    bleu_file = Path(run_dir) / "bleu.json"
    if bleu_file.exists():
        for model, splits in json.loads(bleu_file.read_text(encoding="utf-8")).items():
            for split, pairs in splits.items():
                for pair, score in pairs.items():
                    metrics[f"bleu:{split}:{pair}"] = score["bleu"]
    return metrics


STATUS_COLUMNS = ["run", "state", "attempt", "job_id", "num_updates", "loss", "nll_loss", "ppl", "best_loss"]


def collect(sweep: Sweep) -> List[Dict[str, Any]]:
    rows = []
    for run in sweep.runs:
        state = effective_state(run.directory)
        rows.append({"run": run.name, "state": state["state"], "attempt": state.get("attempt", ""),
                     "job_id": state.get("job_id", ""), **final_metrics(run.directory)})
    return rows


def format_table(rows: List[Dict[str, Any]], columns: Optional[List[str]] = None) -> str:
    columns = columns or STATUS_COLUMNS + sorted({k for row in rows for k in row if k.startswith("bleu:")})
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def write_results(rows: List[Dict[str, Any]], output: Path) -> None:
    columns = STATUS_COLUMNS + sorted({k for row in rows for k in row} - set(STATUS_COLUMNS) - {"subset"})
    if output.suffix == ".json":
        write_atomic(output, json.dumps(rows, indent=1) + "\n")
    else:
        write_atomic(output, "\n".join(["\t".join(columns)]
                                       + ["\t".join(_cell(row.get(c, "")) for c in columns) for row in rows]) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/sweep.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [("submit", "submit every run that is not done or in progress"),
                            ("status", "each run's state and last validation numbers"),
                            ("collect", "gather final validation numbers (and BLEU) into one table")]:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("sweep_file", type=Path)
        command.add_argument("--output-dir", type=Path, help="where the run directories live (default: "
                             "the sweep file's output_dir, relative to the current directory)")
        if name == "submit":
            command.add_argument("--cluster", choices=CLUSTERS, default="slurm",
                                 help="slurm; local: subprocesses on this machine; debug: in this process")
            command.add_argument("--dry-run", action="store_true", help="show what would be submitted")
        if name == "collect":
            command.add_argument("--output", type=Path, help="also write the table here (.tsv or .json); "
                                 "default OUTPUT_DIR/results.tsv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)  # importing fairseq turned on DEBUG
    try:
        sweep = load_sweep(args.sweep_file, args.output_dir)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "submit":
        actions = submit(sweep, args.cluster, args.dry_run)
        if args.cluster == "debug":
            return int(any(read_state(run.directory)["state"] != "done" for run in sweep.runs))
        return 0 if actions else 1
    rows = collect(sweep)
    print(format_table(rows))
    if args.command == "collect":
        output = args.output or sweep.output_dir / "results.tsv"
        write_results(rows, output)
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
