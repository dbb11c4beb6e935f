"""Data-parallel training on the CPU with fairseq's own launcher: two fairseq-train processes
over gloo (--distributed-no-spawn, one process per rank, as a Slurm job's tasks run them).
Each worker trains on its own shard of the batches, and MMCL's negatives are gathered from both.

What fairseq 0.12 allows on the CPU (fairseq/distributed/utils.py, models/distributed_fairseq_model.py):
- ``--distributed-world-size 2`` alone spawns one process per GPU: _infer_single_node_init asserts
  world size <= torch.cuda.device_count() (0), and spawn would start min(0, 2) processes;
- torchrun's environment (RANK, WORLD_SIZE, ...) sets device_id = rank % torch.cuda.device_count():
  ZeroDivisionError without a GPU;
- ``--ddp-backend pytorch_ddp`` (the default) wraps the model with device_ids=[device_id], which
  torch refuses for a CPU model; ``legacy_ddp`` works.
So: an explicit --distributed-init-method, --distributed-rank and --distributed-no-spawn per
process, with --ddp-backend legacy_ddp and gloo. That is what the sweep job passes
(m3p_fairseq/sweep/job.py, with tcp://FIRST_HOST:PORT across nodes); here the rendezvous is a
file (``file://``), so no port has to be found free and then raced for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


def read_records(path: Path, kind: str):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("distributed")
    rendezvous = work / "rendezvous"  # torch's FileStore: created by the first worker, unique to this run
    command = ["fairseq-train", data_dir, "--user-dir", REPO / "tests" / "distributed_probe",
               "--task", "multimodal_translation_probe", "--lang-pairs", "en-de,de-en",
               "--arch", "m3p_transformer_tiny", "--encoder-layers", 1, "--decoder-layers", 1,
               "--encoder-embed-dim", 32, "--decoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64,
               "--decoder-ffn-embed-dim", 64, "--fusion", "cvlm", "--criterion", "m3p_loss", "--mmcl-weight", 1,
               "--optimizer", "adam", "--lr", 1e-3, "--max-tokens", 300, "--max-update", 3, "--cpu",
               "--save-dir", work / "checkpoints", "--no-epoch-checkpoints", "--log-format", "simple",
               "--log-interval", 1, "--num-workers", 0,
               "--distributed-world-size", 2, "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
               "--distributed-init-method", f"file://{rendezvous}", "--distributed-no-spawn"]
    env = {**os.environ, "M3P_PROBE_DIR": str(work), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    logs = [open(work / f"rank{rank}.log", "w") for rank in (0, 1)]
    workers = [subprocess.Popen([str(c) for c in command + ["--distributed-rank", rank]], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT) for rank, log in enumerate(logs)]
    try:
        codes = [worker.wait(timeout=900) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        for log in logs:
            log.close()
    outputs = [(work / f"rank{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], "\n".join(output[-3000:] for output in outputs)
    return work, outputs


def test_both_workers_trained_together(two_workers):
    work, (rank0_log, rank1_log) = two_workers
    assert f"distributed init (rank 0): file://{work / 'rendezvous'}" in rank0_log
    assert f"distributed init (rank 1): file://{work / 'rendezvous'}" in rank1_log
    assert "num_updates 3" in rank0_log or "num_updates=3" in rank0_log
    assert (work / "checkpoints" / "checkpoint_last.pt").exists()
    updates = [[r["update"] for r in read_records(work / f"rank{rank}.jsonl", "batch")] for rank in (0, 1)]
    assert updates[0] == updates[1] == [0, 1, 2]  # train_step gets the number of updates done before it


def test_each_worker_trains_on_its_own_shard(two_workers):
    work, _ = two_workers
    seen = [[tuple(e) for r in read_records(work / f"rank{rank}.jsonl", "batch") for e in r["examples"]]
            for rank in (0, 1)]
    assert seen[0] and seen[1]
    assert len({tag for tag, _ in seen[0] + seen[1]}) == 2  # both directions
    # an epoch holds each example once (temperature 1, equal pairs): no example on both workers
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])


def test_mmcl_negatives_are_gathered_from_both_workers(two_workers):
    work, _ = two_workers
    records = [read_records(work / f"rank{rank}.jsonl", "mmcl") for rank in (0, 1)]
    assert [r["update"] for r in records[0]] == [r["update"] for r in records[1]] == [0, 1, 2]
    for on_rank0, on_rank1 in zip(*records):
        # the same pairs, in rank order, on both workers: rank 0's rows, then rank 1's
        assert on_rank0["gathered"] == pytest.approx(on_rank1["gathered"], rel=1e-6)
        assert len(on_rank0["gathered"]) == on_rank0["local_rows"] + on_rank1["local_rows"]
        assert (on_rank0["offset"], on_rank1["offset"]) == (0, on_rank0["local_rows"])
        for mine in (on_rank0, on_rank1):
            rows = mine["gathered"][mine["offset"]:mine["offset"] + mine["local_rows"]]
            assert rows == pytest.approx(mine["local"], rel=1e-6)
    # the pairs' image identities travel with them (MMCL's positives across workers)
    image_rows = [read_records(work / f"rank{rank}.jsonl", "mmcl_image_rows") for rank in (0, 1)]
    assert [r["update"] for r in image_rows[0]] == [0, 1, 2]
    for on_rank0, on_rank1 in zip(*image_rows):
        assert on_rank0["gathered"] == on_rank1["gathered"] == on_rank0["local"] + on_rank1["local"]


EXIT_PROBE = """
import atexit, sys
import torch.distributed as dist
# registered before the plugin's handler, so it runs after it (exit handlers run last-in, first-out)
atexit.register(lambda: print("group at exit:", dist.is_initialized(), flush=True))
import m3p_fairseq
from m3p_fairseq.process_group_exit import destroy_gloo_process_group
print("without a group:", destroy_gloo_process_group())
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
print("group:", dist.get_backend())
"""


def test_the_plugin_destroys_a_gloo_group_before_the_interpreter_exits(tmp_path):
    """fairseq-train never destroys its process group; left to C++ destructors, gloo's threads can
    end a finished run in std::terminate (exit status 134). Importing the plugin prevents that."""
    result = subprocess.run([sys.executable, "-c", EXIT_PROBE, str(tmp_path / "rendezvous")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["without a group: False", "group: gloo", "group at exit: False"]
