"""A gloo process group is destroyed at interpreter exit, not left to C++ destructors.

fairseq-train never calls ``torch.distributed.destroy_process_group()``. With the gloo backend
(training on CPUs) the group's worker threads can then outlive the interpreter, and a run that
finished ends in ``terminate called without an active exception`` with exit status 134
(pytorch/pytorch#190489): a scheduler such as Slurm then reports a finished job as failed. The
plugin registers, when imported, an exit handler that destroys a gloo default group while the
interpreter is still alive. NCCL groups are left alone: destroying them is collective and can
hang when another rank has failed.
"""

import atexit

import torch.distributed as dist


def destroy_gloo_process_group() -> bool:
    """Destroy the default process group if it is gloo's; True if one was destroyed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() != "gloo":
        return False
    dist.destroy_process_group()
    return True


def register_exit_handler() -> None:
    atexit.register(destroy_gloo_process_group)
