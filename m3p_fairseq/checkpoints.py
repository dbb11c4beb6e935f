"""Resuming fairseq-train after a kill: find the newest checkpoint that loads and put it back
where fairseq looks for it.

What fairseq 0.12 writes (``fairseq/checkpoint_utils.py``, ``save_checkpoint``): at each save it
writes ONE file with ``torch_persistent_save`` -- to ``NAME.tmp``, then renamed, so that file is
whole or absent -- and then makes every other file of that save (``checkpoint_best.pt``,
``checkpoint_last.pt``, ``checkpoint.best_*.pt``) with ``PathManager.copy``, a plain
``shutil.copyfile`` onto the destination. With ``--save-interval-updates`` (or epoch
checkpoints) the renamed file is ``checkpoint_E_U.pt`` (``checkpointE.pt``) and
``checkpoint_last.pt`` is such a copy: a kill during the copy leaves a truncated
``checkpoint_last.pt``, which the next ``fairseq-train`` tries to load and dies on, at every
restart. A kill during the atomic write leaves a stale ``NAME.tmp``.

:func:`repair` undoes exactly that, before fairseq-train starts: an unloadable
``checkpoint_last.pt`` (or ``checkpoint_best.pt``) is replaced by a byte copy of the complete
file it was being copied from -- what fairseq would have left had the copy finished -- so the
same fairseq-train command resumes as usual; the unloadable file is kept beside it as
``NAME.unloadable``. A save killed after its atomic write but before its copy to
``checkpoint_last.pt`` left that file older than the newest checkpoint: it is brought up to date
the same way. Stale ``*.pt.tmp`` files are removed. The sweep job runs it before every
attempt; by hand::

    python -m m3p_fairseq.checkpoints SAVE_DIR [--dry-run]
"""

import argparse
import logging
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from .atomic_io import atomic_path
from .serialization import allow_fairseq_checkpoint_globals

logger = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
# every file fairseq's save_checkpoint names (without model-parallel/FSDP shard suffixes)
CHECKPOINT_NAME = re.compile(r"^checkpoint(\d+|_\d+_\d+|_last|_best|\.best_.+)\.pt$")
UNLOADABLE_SUFFIX = ".unloadable"


class CheckpointError(RuntimeError):
    """A save directory that cannot be resumed from; the message names the files and why."""


@dataclass
class CheckpointInfo:
    path: Path
    problem: Optional[str] = None  # why it does not load; None: it loads
    num_updates: Optional[int] = None
    val_loss: Optional[float] = None
    best: Optional[float] = None

    @property
    def loads(self) -> bool:
        return self.problem is None


def inspect_checkpoint(path) -> CheckpointInfo:
    """Whether ``path`` loads as fairseq loads it, and its update count and validation scores.

    torch.save writes a zip archive whose directory is at the end and whose members carry
    CRC-32s: a truncated copy has no directory, a damaged one fails a CRC. Every byte is read
    (``testzip``) but nothing is kept in memory; the pickle is then opened with ``mmap`` under
    the same ``weights_only`` default fairseq's ``load_checkpoint_to_cpu`` uses."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            if damaged is not None:
                return CheckpointInfo(path, f"member {damaged} fails its CRC check (damaged file)")
        allow_fairseq_checkpoint_globals()  # timm's loader can reset torch's allow-list
        state = torch.load(path, map_location="cpu", mmap=True)
    except zipfile.BadZipFile as error:
        return CheckpointInfo(path, f"truncated or not a checkpoint ({error}; a copy that was interrupted?)")
    except Exception as error:  # noqa: BLE001  (any reason it does not load is reported, by name)
        return CheckpointInfo(path, f"{type(error).__name__}: {error}")
    try:
        num_updates = int(state["optimizer_history"][-1]["num_updates"])
        extra = state.get("extra_state") or {}
        val_loss, best = extra.get("val_loss"), extra.get("best")
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        return CheckpointInfo(path, f"not a fairseq training checkpoint (missing {error})")
    return CheckpointInfo(path, None, num_updates,
                          None if val_loss is None else float(val_loss), None if best is None else float(best))


def checkpoint_files(save_dir) -> List[Path]:
    """fairseq's checkpoints in ``save_dir``, most recently written first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    files = [p for p in save_dir.iterdir() if CHECKPOINT_NAME.match(p.name) and p.is_file()]
    # file times have the kernel's tick resolution: on a tie, the file a copy was made from first
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, not _is_copy(p)), reverse=True)


class _Inspections(dict):
    """inspect_checkpoint once per file (each reads the whole file)."""

    def __missing__(self, path: Path) -> CheckpointInfo:
        self[path] = inspect_checkpoint(path)
        return self[path]


def newest_loadable_checkpoint(save_dir, inspections: Optional[dict] = None) -> Optional[CheckpointInfo]:
    """The checkpoint a resumed run should start from: the newest that loads; None if none does.

    A complete save ends with its copy to checkpoint_last.pt, so only files written after it --
    those of a save a kill interrupted before that copy -- can be newer: checkpoint_last.pt and
    those are read, and the one with the most updates wins (checkpoint_last.pt on a tie). When
    checkpoint_last.pt is missing or does not load, the files are tried from the most recently
    written, and the first that loads is the newest save that completed (named by the file it
    was copied from, if that reads the same)."""
    inspections = _Inspections() if inspections is None else inspections
    files = checkpoint_files(save_dir)
    last = Path(save_dir) / LAST
    if last in files and inspections[last].loads:
        written = last.stat().st_mtime_ns
        later = [inspections[p] for p in files if p != last and p.stat().st_mtime_ns >= written]
        return max([inspections[last]] + [info for info in later if info.loads], key=lambda info: info.num_updates)
    loadable = (inspections[p] for p in files if p != last and inspections[p].loads)
    newest = next(loadable, None)
    if newest is not None and _is_copy(newest.path):
        # name the file it was copied from (written just before it, the same update count)
        source = next(loadable, None)
        if source is not None and source.num_updates == newest.num_updates and not _is_copy(source.path):
            return source
    return newest


def _is_copy(path: Path) -> bool:
    """Whether fairseq makes this file by copying another (checkpoint_best.pt is written
    atomically only when a save has no epoch or interval checkpoint)."""
    return path.name == BEST or path.name.startswith("checkpoint.best_")


def _replace_keeping_aside(broken: Path, source: Optional[Path]) -> Path:
    """Keeps ``broken`` as NAME.unloadable and, if a source is given, puts a byte copy of it at
    ``broken``'s name. The name never disappears in between (hard link, then rename over)."""
    kept = broken.with_name(broken.name + UNLOADABLE_SUFFIX)
    kept.unlink(missing_ok=True)
    if source is None:
        os.replace(broken, kept)
        return kept
    try:
        os.link(broken, kept)
    except OSError:  # a file system without hard links
        shutil.copyfile(broken, kept)
    with atomic_path(broken) as tmp:
        shutil.copyfile(source, tmp)
    return kept


def repair(save_dir, dry_run: bool = False) -> List[str]:
    """Makes ``save_dir`` resumable by an unchanged fairseq-train command; returns what it did
    (or, with ``dry_run``, would do), one line per file. Raises :class:`CheckpointError` when
    checkpoint_last.pt does not load and no other checkpoint does: starting over would silently
    throw the run away."""
    save_dir = Path(save_dir)
    actions: List[str] = []
    for stale in sorted(save_dir.glob("checkpoint*.pt.tmp")) if save_dir.is_dir() else []:
        actions.append(f"removed {stale.name}: an unfinished write of a killed save (fairseq never reads it)")
        if not dry_run:
            stale.unlink(missing_ok=True)
    others = [p for p in checkpoint_files(save_dir) if p.name not in (LAST, BEST)]
    infos = _Inspections()
    info_of = infos.__getitem__
    newest = newest_loadable_checkpoint(save_dir, infos)

    last = save_dir / LAST
    if last.is_file() and not info_of(last).loads:
        if newest is None:
            raise CheckpointError(f"{last} does not load ({info_of(last).problem}) and no other checkpoint in "
                                  f"{save_dir} does; move it away to start training over")
        actions.append(f"{LAST} does not load ({info_of(last).problem}): kept as {LAST}{UNLOADABLE_SUFFIX}, "
                       f"replaced by a copy of {newest.path.name} ({newest.num_updates} updates)")
        if not dry_run:
            _replace_keeping_aside(last, newest.path)
    elif newest is not None and newest.path != last:
        had = f"had {info_of(last).num_updates} updates" if last.is_file() else "was missing"
        actions.append(f"{LAST} {had}: the save of {newest.path.name} ({newest.num_updates} updates) was "
                       f"interrupted before its copy to {LAST}; copied it there")
        if not dry_run:
            with atomic_path(last) as tmp:
                shutil.copyfile(newest.path, tmp)

    best = save_dir / BEST
    if best.is_file() and not info_of(best).loads:
        # a checkpoint saved as the best so far has its own validation loss as the best
        source = next((info_of(p) for p in others if info_of(p).loads and info_of(p).val_loss is not None
                       and info_of(p).val_loss == info_of(p).best), None)
        if source is not None:
            actions.append(f"{BEST} does not load ({info_of(best).problem}): kept as {BEST}{UNLOADABLE_SUFFIX}, "
                           f"replaced by a copy of {source.path.name} (the best, loss {source.val_loss:g})")
        else:
            actions.append(f"{BEST} does not load ({info_of(best).problem}): moved to {BEST}{UNLOADABLE_SUFFIX}; "
                           "no complete copy of it is left, fairseq writes a new one at the next best validation")
        if not dry_run:
            _replace_keeping_aside(best, source.path if source else None)

    # copies of the best that do not load are moved aside; files fairseq wrote atomically are left
    for path in others:
        if path.name.startswith("checkpoint.best_") and not info_of(path).loads:
            actions.append(f"{path.name} does not load ({info_of(path).problem}): moved to "
                           f"{path.name}{UNLOADABLE_SUFFIX}")
            if not dry_run:
                _replace_keeping_aside(path, None)
    return actions


def repair_for_resume(save_dir, log=None) -> Optional[CheckpointInfo]:
    """:func:`repair`, with each action logged (and written to ``log``, a text stream, if
    given); returns the checkpoint fairseq-train will resume from (None: it starts afresh)."""
    for action in repair(save_dir):
        logger.warning("%s: %s", save_dir, action)
        if log is not None:
            log.write(f"# {save_dir}: {action}\n")
    return newest_loadable_checkpoint(save_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m m3p_fairseq.checkpoints", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Before re-running a killed fairseq-train: make SAVE_DIR's checkpoint_last.pt (and "
                    "checkpoint_best.pt) load again, from the newest complete checkpoint.\n\n" + __doc__)
    parser.add_argument("save_dir", type=Path, help="fairseq-train's --save-dir")
    parser.add_argument("--dry-run", action="store_true", help="only say what would be done")
    args = parser.parse_args(argv)
    try:
        actions = repair(args.save_dir, dry_run=args.dry_run)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for action in actions:
        print(("would do: " if args.dry_run else "") + action)
    newest = newest_loadable_checkpoint(args.save_dir) if not args.dry_run else None
    if newest is not None:
        print(f"fairseq-train resumes from {newest.path} ({newest.num_updates} updates)")
    elif not args.dry_run:
        print(f"no checkpoint in {args.save_dir}: fairseq-train starts afresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
