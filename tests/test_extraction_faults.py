"""Feature extraction under real faults: a run killed with SIGKILL (mid-write and at a random
moment) resumes to the file an uninterrupted run writes, and a second run on the same output is
refused while the first finishes untouched. Every run is a separate ``python`` process."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NUM_IMAGES, BATCH_SIZE = 80, 2
TIMEOUT = 600  # seconds; only reached if something hangs (7 helpers share 2 cores)

# The extraction CLI; with STALL_AT_FLUSH=n it blocks inside its n-th HDF5 flush until the file
# RELEASE exists, after touching STALLED. The writer flushes twice per batch: flush 2b - 1 puts
# batch b's rows on disk, flush 2b their count.
CHILD = r"""
import os, sys, time
from pathlib import Path
import h5py
stall_at = int(os.environ.get("STALL_AT_FLUSH", "0"))
if stall_at:
    real_flush, calls = h5py.File.flush, []
    def flush(self):
        real_flush(self)
        calls.append(1)
        if len(calls) == stall_at:
            Path(os.environ["STALLED"]).touch()
            while not Path(os.environ["RELEASE"]).exists():
                time.sleep(0.05)
    h5py.File.flush = flush
from preprocess.extract_image_features import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Images, their id list and the options every run of this module shares."""
    folder = tmp_path_factory.mktemp("extraction-faults")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"img{i:02d}.png" for i in range(NUM_IMAGES)]
    for image_id in ids:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / image_id)
    (folder / "ids").write_text("\n".join(ids) + "\n")
    options = ["--images-dir", images, "--image-ids", folder / "ids", "--backbone", "vit_tiny_patch16_224",
               "--random-init-seed", 0, "--image-size", 32, "--batch-size", BATCH_SIZE, "--dtype", "float32",
               "--augmented-views", 1, "--device", "cpu"]
    return folder, [str(option) for option in options]


def start(options, output, **env):
    return subprocess.Popen([sys.executable, "-c", CHILD, *options, "--output", str(output)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(options, output, **env) -> subprocess.CompletedProcess:
    process = start(options, output, **env)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(job):
    folder, options = job
    output = folder / "uninterrupted.h5"
    result = run(options, output)
    assert result.returncode == 0, result.stderr
    return output


def start_stalled(options, output, tmp_path, flush):
    stalled, release = tmp_path / "stalled", tmp_path / "release"
    process = start(options, output, STALL_AT_FLUSH=str(flush), STALLED=str(stalled), RELEASE=str(release))
    deadline = time.monotonic() + TIMEOUT
    while not stalled.exists():
        if process.poll() is not None:
            pytest.fail(f"the extraction ended (exit {process.returncode}) before it stalled:\n{process.stderr.read()}")
        assert time.monotonic() < deadline, "the extraction did not reach the stall"
        time.sleep(0.05)
    return process, release


def kill(process):
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=TIMEOUT)
    assert process.returncode == -signal.SIGKILL


def plain(value):
    array = np.asarray(value)
    return array.dtype.str, array.shape, array.tobytes()


def contents(path):
    """Every dataset (dtype, shape, bytes) and every attribute (of the file and of each dataset)."""
    with h5py.File(path, "r") as f:
        found = {"/ attrs": {key: plain(value) for key, value in f.attrs.items()}}

        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                data = item.asstr()[()].tolist() if item.dtype.kind == "O" else item[()].tobytes()
                found[name] = (item.dtype.str, item.shape, data)
                found[name + " attrs"] = {key: plain(value) for key, value in item.attrs.items()}
        f.visititems(visit)
    return found


def assert_same_file(path, expected_path):
    got, expected = contents(path), contents(expected_path)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs between {path} and {expected_path}"


def rows_written(partial):
    with h5py.File(partial, "r") as f:
        return int(f.attrs["rows_written"]), f["patches"][()]


def test_sigkill_mid_write_resumes_to_the_uninterrupted_file(job, uninterrupted, tmp_path):
    _, options = job
    output = tmp_path / "f.h5"
    partial, lock = tmp_path / "f.h5.partial", tmp_path / "f.h5.lock"
    # flush 5: the third batch's rows are on disk, their count is not
    process, _ = start_stalled(options, output, tmp_path, flush=5)
    kill(process)
    assert not output.exists() and lock.exists()  # a dead owner's lock file: the kernel released its lock
    written, patches = rows_written(partial)
    assert written == 2 * BATCH_SIZE
    assert np.abs(patches[written:written + BATCH_SIZE]).sum(axis=(1, 2)).all()  # rows beyond the count
    assert not patches[written + BATCH_SIZE:].any()

    resumed = run(options, output)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {partial} at image {written} of {NUM_IMAGES}" in resumed.stderr
    assert not partial.exists() and not lock.exists()
    assert_same_file(output, uninterrupted)


def test_sigkill_at_a_random_moment_resumes_to_the_uninterrupted_file(job, uninterrupted, tmp_path):
    _, options = job
    output, partial = tmp_path / "f.h5", tmp_path / "f.h5.partial"
    process = start(options, output)
    for line in process.stderr:  # killed as soon as 3 batches are reported, wherever it is then
        progress = re.search(rf"\| (\d+)/{NUM_IMAGES} images", line)
        if progress and int(progress.group(1)) >= 3 * BATCH_SIZE:
            kill(process)
            break
    else:
        pytest.fail(f"the extraction ended (exit {process.wait()}) without reporting progress")
    assert not output.exists()
    written, _ = rows_written(partial)
    assert 3 * BATCH_SIZE <= written < NUM_IMAGES

    resumed = run(options, output)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at image {written} of {NUM_IMAGES}" in resumed.stderr
    assert_same_file(output, uninterrupted)


def test_second_extraction_on_the_same_output_is_refused_and_the_first_finishes(job, uninterrupted, tmp_path):
    _, options = job
    output, partial = tmp_path / "f.h5", tmp_path / "f.h5.partial"
    first, release = start_stalled(options, output, tmp_path, flush=3)  # mid-way through its second batch
    before = hashlib.sha256(partial.read_bytes()).hexdigest()

    second = run(options, output)
    assert second.returncode == 1
    assert (f"error: {partial}: another process (pid {first.pid}) is writing it (it holds {tmp_path / 'f.h5.lock'}). "
            f"Wait for it to finish, or stop it and run again to resume its work") in second.stderr
    assert "Traceback" not in second.stderr and "usage:" not in second.stderr
    assert hashlib.sha256(partial.read_bytes()).hexdigest() == before
    assert not output.exists() and not (tmp_path / "f.h5.bad_images.tsv").exists()

    release.touch()
    _, stderr = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, stderr
    assert "resuming" not in stderr  # one uninterrupted run
    assert not partial.exists() and not (tmp_path / "f.h5.lock").exists()
    assert_same_file(output, uninterrupted)


def test_sigkill_while_retrying_fixed_images_resumes_to_the_uninterrupted_file(job, uninterrupted, tmp_path):
    folder, options = job
    images = tmp_path / "images"
    images.mkdir()
    bad = [f"img{i:02d}.png" for i in (10, 11)]  # one batch, so that the retry batch is the same batch
    for image in (folder / "images").iterdir():
        (images / image.name).write_bytes(b"not a PNG" if image.name in bad else image.read_bytes())
    options = [str(images) if option == str(folder / "images") else option for option in options]
    output, partial = tmp_path / "f.h5", tmp_path / "f.h5.partial"

    failed = run(options, output)
    assert failed.returncode == 1 and "2 of 80 images are missing or cannot be decoded" in failed.stderr
    for image_id in bad:  # the user restores the two files
        (images / image_id).write_bytes((folder / "images" / image_id).read_bytes())
    # flush 1 of the next run: the retried rows' features are on disk, their usable flags are not
    process, _ = start_stalled(options, output, tmp_path, flush=1)
    kill(process)
    with h5py.File(partial, "r") as f:
        assert f.attrs["rows_written"] == NUM_IMAGES and f["patches"][10:12].any(axis=(1, 2)).all()
        assert np.flatnonzero(~f["usable"][()]).tolist() == [10, 11]

    resumed = run(options, output)
    assert resumed.returncode == 0, resumed.stderr
    assert f"retrying 2 images flagged unusable in {partial}" in resumed.stderr
    assert_same_file(output, uninterrupted)
