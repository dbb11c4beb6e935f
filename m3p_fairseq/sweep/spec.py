"""The sweep file and what it expands to: one :class:`Run` (fairseq-train command, resources,
run directory) per point of ``runs`` x ``grid``. Nothing here touches the file system beyond
reading the sweep file; see docs/sweeps.md for the keys."""

import hashlib
import itertools
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

SWEEP_KEYS = {"name", "output_dir", "command", "data", "base", "grid", "runs", "resources", "evaluate"}
EVALUATE_MODULE = "m3p_fairseq.evaluation.cli"  # the m3p-evaluate console script
# name in the sweep file -> (submitit parameter, type); None: handled by the sweep, not by submitit
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
# set by the sweep on every run: where it saves, the log format `collect` reads, the ranks
SET_BY_SWEEP = {"save-dir", "log-format", "distributed-rank", "distributed-init-method",
                "distributed-world-size", "distributed-no-spawn", "device-id"}
LOG_FORMAT = "json"  # fairseq's --log-format whose records `collect` reads
CPU_DDP_BACKENDS = {"legacy_ddp", "no_c10d"}


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
    def save_dir(self) -> Path:
        return self.directory / "checkpoints"

    @property
    def world_size(self) -> int:
        return self.resources["nodes"] * self.tasks_per_node

    @property
    def tasks_per_node(self) -> int:
        return self.resources.get("tasks_per_node") or max(self.resources["gpus_per_node"], 1)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "overrides": self.overrides, "options": self.options,
                "resources": self.resources, "argv": self.argv, "world_size": self.world_size,
                "save_dir": str(self.save_dir), "evaluate_argv": self.evaluate_argv}


@dataclass
class Sweep:
    name: str
    path: Path
    output_dir: Path
    runs: List[Run]


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
    argv += ["--log-format", LOG_FORMAT, "--save-dir", str(run.save_dir)]
    if run.world_size > 1:
        _check_distributed(run, path)
    return argv


def evaluation_command(spec: Dict[str, Any], run: Run, path: Path) -> List[str]:
    """m3p-evaluate on the run's checkpoint after training, when the sweep file has an
    ``evaluate`` mapping (its options, e.g. splits, beam, lang-pairs; ``checkpoint`` picks the
    file, default checkpoint_best.pt). Writes RUN/bleu.json, which ``collect`` reads."""
    options = _mapping(spec.get("evaluate"), path, "evaluate")
    if "evaluate" not in spec:
        return []
    checkpoint = options.pop("checkpoint", "checkpoint_best.pt")
    if "data" in options or "output" in options:
        raise SweepError(f"{path}: evaluate: 'data' and 'output' are set by the sweep (the run's data, RUN/bleu.json)")
    argv = [sys.executable, "-m", EVALUATE_MODULE, "--data", run.data,
            "--checkpoint", f"run={run.save_dir / checkpoint}", "--output", str(run.directory / "bleu.json")]
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
        raise SweepError(f"{path}: {where} sets {clash}, which the sweep sets itself (each run saves to "
                         f"RUN_DIR/checkpoints and logs --log-format {LOG_FORMAT}, which `collect` reads; "
                         "workers get their ranks from the scheduler)")


def _scalar(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_scalar(v) for v in value)
    return str(value)


def _resolve(value: str, cwd: Path) -> str:
    return value if os.path.isabs(value) else str((cwd / value).resolve())
