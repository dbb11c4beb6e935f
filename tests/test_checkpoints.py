"""Resuming after a kill (m3p_fairseq/checkpoints.py).

fairseq 0.12 writes one file per save atomically (NAME.tmp, renamed) and copies it to
checkpoint_last.pt / checkpoint_best.pt with a plain copy; a kill during that copy leaves a
truncated file that fairseq-train cannot load on restart. Here: the damage itself on small
torch.save files, then real fairseq-train processes killed with SIGKILL -- at a forced moment
with checkpoint_last.pt cut as an interrupted copy leaves it, and at a random moment -- and
resumed to the end."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO
from m3p_fairseq import checkpoints


def save_fake(path: Path, num_updates: int, val_loss=None, best=None) -> bytes:
    """A file shaped like a fairseq checkpoint (the fields the repair reads), with some weights."""
    state = {"model": {"w": torch.arange(4096, dtype=torch.float32) + num_updates},
             "optimizer_history": [{"num_updates": num_updates}],
             "extra_state": {"val_loss": val_loss, "best": best, "train_iterator": {"epoch": 1}}}
    torch.save(state, path)
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1])
def test_a_truncated_copy_does_not_load_and_says_why(tmp_path, keep):
    full = save_fake(tmp_path / "full.pt", 7)
    cut = tmp_path / "checkpoint_last.pt"
    cut.write_bytes(full[:int(len(full) * keep) if isinstance(keep, float) else keep])
    info = checkpoints.inspect_checkpoint(cut)
    assert not info.loads and "truncated or not a checkpoint" in info.problem
    with pytest.raises(Exception):  # and torch indeed cannot load it
        torch.load(cut)
    whole = checkpoints.inspect_checkpoint(tmp_path / "full.pt")
    assert (whole.loads, whole.num_updates) == (True, 7)


def test_a_damaged_byte_fails_the_crc(tmp_path):
    data = bytearray(save_fake(tmp_path / "checkpoint_1_2.pt", 2))
    weights = bytes((torch.arange(4096, dtype=torch.float32) + 2).numpy().tobytes())
    at = bytes(data).index(weights[:64]) + 1000  # inside the stored weights
    data[at] ^= 0xFF
    (tmp_path / "checkpoint_1_2.pt").write_bytes(bytes(data))
    info = checkpoints.inspect_checkpoint(tmp_path / "checkpoint_1_2.pt")
    assert not info.loads and "fails its CRC check" in info.problem


def test_repair_puts_back_the_checkpoint_the_copy_came_from(tmp_path):
    save_fake(tmp_path / "checkpoint_1_2.pt", 2, val_loss=3.0, best=3.0)
    time.sleep(0.01)
    newest = save_fake(tmp_path / "checkpoint_1_4.pt", 4, val_loss=2.5, best=2.5)
    truncated = newest[:len(newest) // 3]
    (tmp_path / "checkpoint_last.pt").write_bytes(truncated)
    (tmp_path / "checkpoint_1_6.pt.tmp").write_bytes(b"half of a save")  # a killed atomic save

    assert checkpoints.newest_loadable_checkpoint(tmp_path).path.name == "checkpoint_1_4.pt"
    planned = checkpoints.repair(tmp_path, dry_run=True)
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == truncated and (tmp_path / "checkpoint_1_6.pt.tmp").exists()
    actions = checkpoints.repair(tmp_path)
    assert actions == planned and len(actions) == 2
    assert "checkpoint_1_6.pt.tmp" in actions[0]
    assert "checkpoint_last.pt does not load" in actions[1] and "copy of checkpoint_1_4.pt (4 updates)" in actions[1]
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == newest
    assert (tmp_path / "checkpoint_last.pt.unloadable").read_bytes() == truncated  # kept, not deleted
    assert not (tmp_path / "checkpoint_1_6.pt.tmp").exists()
    assert checkpoints.repair(tmp_path) == []  # nothing left to do
    assert checkpoints.newest_loadable_checkpoint(tmp_path).path.name == "checkpoint_last.pt"


def test_a_save_killed_before_its_copy_to_checkpoint_last_is_not_lost(tmp_path):
    save_fake(tmp_path / "checkpoint_1_2.pt", 2)
    older = save_fake(tmp_path / "checkpoint_last.pt", 2)
    time.sleep(0.01)
    newer = save_fake(tmp_path / "checkpoint_1_4.pt", 4)  # renamed into place, then the kill
    assert checkpoints.newest_loadable_checkpoint(tmp_path).path.name == "checkpoint_1_4.pt"
    (action,) = checkpoints.repair(tmp_path)
    assert action == ("checkpoint_last.pt had 2 updates: the save of checkpoint_1_4.pt (4 updates) was "
                      "interrupted before its copy to checkpoint_last.pt; copied it there")
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == newer != older
    assert not (tmp_path / "checkpoint_last.pt.unloadable").exists()  # it loaded: nothing to keep aside

    (tmp_path / "checkpoint_last.pt").unlink()  # the first save of a run, killed before the copy
    (action,) = checkpoints.repair(tmp_path)
    assert action.startswith("checkpoint_last.pt was missing: the save of checkpoint_1_4.pt (4 updates)")
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == newer


def test_a_loading_checkpoint_last_is_left_alone(tmp_path):
    last = save_fake(tmp_path / "checkpoint_last.pt", 6)
    (tmp_path / "checkpoint_1_4.pt").write_bytes(b"junk")  # not something fairseq leaves; not touched
    assert checkpoints.repair(tmp_path) == []
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == last and (tmp_path / "checkpoint_1_4.pt").exists()
    assert checkpoints.newest_loadable_checkpoint(tmp_path).num_updates == 6


def test_a_half_copied_best_is_restored_from_the_checkpoint_that_was_best(tmp_path):
    best_source = save_fake(tmp_path / "checkpoint_1_4.pt", 4, val_loss=2.0, best=2.0)
    time.sleep(0.01)
    save_fake(tmp_path / "checkpoint_1_6.pt", 6, val_loss=2.2, best=2.0)  # newer, not the best
    save_fake(tmp_path / "checkpoint_last.pt", 6, val_loss=2.2, best=2.0)
    (tmp_path / "checkpoint_best.pt").write_bytes(best_source[:1000])
    (action,) = checkpoints.repair(tmp_path)
    assert "copy of checkpoint_1_4.pt (the best, loss 2)" in action
    assert (tmp_path / "checkpoint_best.pt").read_bytes() == best_source

    (tmp_path / "checkpoint_1_4.pt").unlink()  # the best's source is gone (keep-interval-updates)
    (tmp_path / "checkpoint_best.pt").write_bytes(best_source[:1000])
    (action,) = checkpoints.repair(tmp_path)
    assert "moved to checkpoint_best.pt.unloadable" in action and "no complete copy" in action
    assert not (tmp_path / "checkpoint_best.pt").exists()


def test_nothing_loadable_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint_last\.pt does not load .* no other checkpoint"):
        checkpoints.repair(tmp_path)
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == b"PK\x03\x04 not really"
    result = subprocess.run([sys.executable, "-m", "m3p_fairseq.checkpoints", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "error:" in result.stderr and "checkpoint_last.pt" in result.stderr


# ---- real fairseq-train processes, killed with SIGKILL ---------------------------------------
def train_command(data_dir, save_dir, max_update, save_interval):
    return ["fairseq-train", str(data_dir), "--user-dir", str(REPO / "tests" / "distributed_probe"),
            "--task", "multimodal_translation", "--lang-pairs", "en-de,de-en", "--arch", "m3p_transformer_tiny",
            "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
            "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--cpu", "--fusion", "cvlm",
            "--criterion", "m3p_loss_held", "--mmcl-weight", "0.5", "--optimizer", "adam", "--lr", "0.001",
            "--max-tokens", "300", "--max-update", str(max_update), "--save-interval-updates", str(save_interval),
            "--keep-interval-updates", "2", "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1",
            "--num-workers", "0", "--seed", "3", "--save-dir", str(save_dir)]


def environment(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra}


def start_and_kill(command, log_path, hold, kill_when):
    """Starts fairseq-train, waits until ``kill_when(log text)``, then SIGKILLs it."""
    with open(log_path, "w") as log:
        trainer = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment(M3P_PROBE_HOLD=hold))
    try:
        deadline = time.time() + 900  # a bound on waiting for a loaded machine, not a speed goal
        while not kill_when(log_path.read_text()):
            assert trainer.poll() is None, f"fairseq-train ended before the kill:\n{log_path.read_text()[-3000:]}"
            assert time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        trainer.send_signal(signal.SIGKILL)
    finally:
        if trainer.poll() is None:
            trainer.kill()
        trainer.wait()
    assert trainer.returncode == -signal.SIGKILL


def run_to_end(command, log_path):
    with open(log_path, "w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment(), timeout=900).returncode


def updates_in(path: Path):
    """The update count fairseq-train restores from ``path``, read with fairseq's own loader;
    None if fairseq cannot load it."""
    from fairseq import checkpoint_utils

    try:
        return checkpoint_utils.load_checkpoint_to_cpu(str(path))["optimizer_history"][-1]["num_updates"]
    except Exception:  # noqa: BLE001  (any failure to load)
        return None


def loaded_at(log_text):
    found = re.findall(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", log_text)
    return [int(n) for n in found]


def test_killed_while_copying_checkpoint_last_resumes_from_the_copied_checkpoint(tmp_path, data_dir):
    save_dir = tmp_path / "checkpoints"
    command = train_command(data_dir, save_dir, max_update=8, save_interval=2)
    # held after update 4 (saved as checkpoint_1_4.pt, then copied to best and last), then killed
    start_and_kill(command, tmp_path / "first.log", f"4:{tmp_path / 'never'}",
                   lambda log: re.search(r"Saved checkpoint \S+checkpoint_1_4\.pt", log))
    complete = (save_dir / "checkpoint_1_4.pt").read_bytes()
    # the kill came during the copy to checkpoint_last.pt: what shutil.copyfile had written so far
    (save_dir / "checkpoint_last.pt").write_bytes(complete[:len(complete) // 2])

    # before: fairseq-train dies on it, at every restart
    assert run_to_end(command, tmp_path / "plain_restart.log") != 0
    assert "PytorchStreamReader failed reading zip archive" in (tmp_path / "plain_restart.log").read_text()

    repaired = subprocess.run([sys.executable, "-m", "m3p_fairseq.checkpoints", str(save_dir)], cwd=REPO,
                              env=environment(), capture_output=True, text=True)
    assert repaired.returncode == 0, repaired.stderr
    assert "replaced by a copy of checkpoint_1_4.pt (4 updates)" in repaired.stdout
    assert run_to_end(command, tmp_path / "resumed.log") == 0
    log = (tmp_path / "resumed.log").read_text()
    assert loaded_at(log) == [4], log[-3000:]
    assert updates_in(save_dir / "checkpoint_last.pt") == 8
    assert (save_dir / "checkpoint_last.pt.unloadable").stat().st_size == len(complete) // 2


def test_killed_at_a_random_moment_resumes_from_the_newest_checkpoint_that_loads(tmp_path, data_dir):
    save_dir = tmp_path / "checkpoints"
    command = train_command(data_dir, save_dir, max_update=24, save_interval=1)  # a save every update
    delay = random.Random().uniform(0, 2.0)
    first_save = {}

    def after_first_save_and_delay(log):
        if "first" not in first_save and re.search(r"Saved checkpoint", log):
            first_save["first"] = time.time()
        return "first" in first_save and time.time() - first_save["first"] >= delay

    # held after update 20 at the latest, so the kill always lands in a running training
    start_and_kill(command, tmp_path / "first.log", f"20:{tmp_path / 'never'}", after_first_save_and_delay)
    # the expected point, worked out with fairseq's loader: the most updates any file still loads with
    loadable = {p.name: updates_in(p) for p in save_dir.glob("checkpoint*.pt")}
    expected = max(n for n in loadable.values() if n is not None)
    assert 1 <= expected <= 20, loadable

    repaired = subprocess.run([sys.executable, "-m", "m3p_fairseq.checkpoints", str(save_dir)], cwd=REPO,
                              env=environment(), capture_output=True, text=True)
    assert repaired.returncode == 0, repaired.stderr
    assert run_to_end(command, tmp_path / "resumed.log") == 0
    log = (tmp_path / "resumed.log").read_text()
    assert loaded_at(log) == [expected], f"killed {delay:.2f} s after the first save; {loadable}\n{log[-3000:]}"
    assert updates_in(save_dir / "checkpoint_last.pt") == 24
