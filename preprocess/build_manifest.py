"""Provenance of what ``preprocess.binarize`` builds: ``OUTPUT.manifest.json`` beside each output.

A manifest is written after its outputs (atomically, last), with the content hashes of the
inputs they were built from and of the outputs themselves. An output is up to date only when
its manifest exists, names the same inputs and still describes the files on disk: a changed
input, a crash between two renames or a file replaced by hand all make it stale, and it is
rebuilt.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional

from m3p_fairseq.atomic_io import atomic_write_text
from m3p_fairseq.data.data_dir import DataDirectory

logger = logging.getLogger("preprocess.binarize")
MANIFEST_VERSION = 1


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(output) -> Optional[dict]:
    try:
        return json.loads(DataDirectory.manifest(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing, or not ours: the output is rebuilt


def write_manifest(output, inputs: dict, outputs: Dict[str, Path], **extra) -> None:
    """``OUTPUT.manifest.json``, written after the outputs: the hashes of what they were built from
    (``inputs``) and of the outputs themselves, and ``extra`` facts (the raw file's name, sizes)."""
    manifest = {"version": MANIFEST_VERSION, "inputs": inputs,
                "outputs": {key: file_hash(path) for key, path in outputs.items()}, **extra}
    atomic_write_text(DataDirectory.manifest(output), json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def up_to_date(output, inputs: dict, outputs: Dict[str, Path]) -> bool:
    """The manifest says ``outputs`` were built from ``inputs``, and they are still those files."""
    manifest = read_manifest(output)
    return (manifest is not None and manifest.get("version") == MANIFEST_VERSION
            and manifest.get("inputs") == inputs and all(path.is_file() for path in outputs.values())
            and manifest.get("outputs") == {key: file_hash(path) for key, path in outputs.items()})


def remove_stale_temporaries(dest_dir: Path) -> None:
    """Remove the hidden ``.NAME.PID.tmp`` files (m3p_fairseq.atomic_io) of processes that are gone."""
    for path in dest_dir.glob(".*.tmp"):
        pid = path.name.split(".")[-2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # a running process (maybe another binarize) owns it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        logger.info("removing %s, left by a run that was killed (pid %s)", path, pid)
        path.unlink(missing_ok=True)
