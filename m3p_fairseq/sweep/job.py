"""The job submitit runs for one run: fairseq-train in a child process on every worker, rank 0
keeping the run's state; requeued on the scheduler's warning signal."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import submitit

from ..checkpoints import CheckpointError, repair_for_resume
from .results import final_metrics
from .state import read_state, write_state


class TrainingJob(submitit.helpers.Checkpointable):
    """Runs one configuration's fairseq-train on every worker of a job; rank 0 keeps the state.

    Checkpointable: on Slurm's signal (time limit, preemption) submitit calls ``checkpoint``,
    which stops fairseq-train and returns this job for requeueing; the next attempt runs the
    same command, and fairseq resumes from ``checkpoint_last.pt``. Before each attempt rank 0
    makes that file load again if a kill interrupted fairseq's copy of it
    (:func:`m3p_fairseq.checkpoints.repair`)."""

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
            if rank == 0:  # the other workers' fairseq-train load nothing before rank 0's has joined them
                self._prepare_checkpoints(Path(config["save_dir"]), log, run_dir)
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

    @staticmethod
    def _prepare_checkpoints(save_dir: Path, log, run_dir: Path) -> None:
        try:
            resume_from = repair_for_resume(save_dir, log)
        except CheckpointError as error:
            write_state(run_dir, "failed", detail=str(error))
            raise
        if resume_from is not None:
            log.write(f"# resuming from {resume_from.path.name} ({resume_from.num_updates} updates)\n")
        log.flush()

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
        """SIGTERM, then SIGKILL after the grace period. A stop in the middle of a save can
        leave a truncated checkpoint_last.pt (fairseq copies it with a plain copy); the next
        attempt puts back the complete checkpoint it was copied from before fairseq loads it."""
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
