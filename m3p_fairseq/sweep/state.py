"""A run directory and its state: ``config.json`` and ``command.sh`` (what every attempt runs),
``state.json`` (new / submitted / running / requeued / done / failed, plus ``lost`` for a run
whose job the scheduler no longer holds). Every file is written atomically, so a reader, a
kill or a second ``submit`` sees the old state or the new one."""

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Dict

from ..atomic_io import atomic_write_text
from .spec import Run

ACTIVE_STATES = {"submitted", "running", "requeued"}


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
    atomic_write_text(Path(run_dir) / "state.json", json.dumps(record, indent=1) + "\n")
    return record


def prepare_run_dir(run: Run) -> None:
    run.directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.directory / "config.json", json.dumps(run.config(), indent=1) + "\n")
    lines = ["#!/usr/bin/env bash", f"# run {run.name}: the command each attempt runs (from {run.directory.parent})"]
    if run.world_size > 1:
        lines.append(f"# on each of the {run.world_size} workers, with --distributed-world-size {run.world_size} "
                     "--distributed-rank RANK --distributed-init-method tcp://HOST:PORT --distributed-no-spawn "
                     "--device-id LOCAL_RANK appended")
    lines.append(f"# before each attempt: python -m m3p_fairseq.checkpoints {shlex.quote(str(run.save_dir))}")
    lines.append(" ".join(shlex.quote(a) for a in run.argv))
    atomic_write_text(run.directory / "command.sh", "\n".join(lines) + "\n")


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
