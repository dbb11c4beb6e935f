"""Sweeps of fairseq-train configurations, submitted through submitit (Slurm, local, debug).

One module per concept: ``spec`` (the sweep file and the runs it expands to), ``state`` (a run
directory and its state.json), ``job`` (the job submitit runs: fairseq-train, requeue on the
scheduler's signal), ``submission`` (submitit executors, submit), ``results`` (fairseq's JSON
log records and BLEU, the results table), ``cli`` (``m3p-sweep``). docs/sweeps.md has the
sweep file's keys and the requeue story.
"""

from .cli import main  # noqa: F401
from .job import TrainingJob  # noqa: F401
from .results import STATUS_COLUMNS, collect, final_metrics, format_table, log_records, validation_records  # noqa: F401
from .spec import Run, Sweep, SweepError, executor_parameters, load_sweep, run_name_for  # noqa: F401
from .state import effective_state, prepare_run_dir, read_state, write_state  # noqa: F401
from .submission import CLUSTERS, make_executor, sbatch_script, submit  # noqa: F401
