"""Submitting a sweep's runs through submitit: skip what is done or still in the scheduler's
hands, (re)submit the rest."""

import sys
from pathlib import Path
from typing import Dict

import submitit
from submitit.slurm.slurm import SlurmExecutor

from .job import TrainingJob
from .spec import Run, Sweep, SweepError, executor_parameters
from .state import ACTIVE_STATES, effective_state, prepare_run_dir, read_state, write_state

CLUSTERS = ("slurm", "local", "debug")


def make_executor(cluster: str, folder: Path, run: Run):
    """submitit's executor for one run, with the run's resources (``slurm_*`` ones only on Slurm)."""
    if cluster not in CLUSTERS:
        raise SweepError(f"unknown cluster {cluster!r}; expected one of {CLUSTERS}")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=run.resources["max_requeues"])
    parameters = executor_parameters(run.resources, run.tasks_per_node)
    if cluster != "slurm":
        parameters = {k: v for k, v in parameters.items() if not k.startswith("slurm_")}
    executor.update_parameters(**parameters)
    return executor


class SbatchPreview(SlurmExecutor):
    """submitit's Slurm executor for writing a run's sbatch script where Slurm is not installed
    (SlurmExecutor refuses to start without ``srun``); it never submits anything."""

    @classmethod
    def affinity(cls) -> int:
        return 1

    def _internal_process_submissions(self, delayed_submissions):
        raise RuntimeError("SbatchPreview only writes sbatch scripts; submit with --cluster slurm")


def sbatch_script(run: Run, folder: Path, command: str = "python -u -m submitit.core._submit FOLDER") -> str:
    """The sbatch script ``make_executor('slurm', ...)`` produces for ``run``, without Slurm:
    the generic parameters translated by submitit's own table, ``slurm_*`` ones passed on
    unprefixed, as AutoExecutor does."""
    executor = SbatchPreview(folder, max_num_timeout=run.resources["max_requeues"])
    parameters = executor_parameters(run.resources, run.tasks_per_node)
    generic = executor._convert_parameters({k: v for k, v in parameters.items() if not k.startswith("slurm_")})
    specific = {k[len("slurm_"):]: v for k, v in parameters.items() if k.startswith("slurm_")}
    executor.update_parameters(**generic, **specific)
    return executor._make_submission_file_text(command, "UID")


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
