"""Where this process sits in a torchrun launch: start and end the process group, rank, device.

torchrun (`python -m torch.distributed.run`) starts one process per GPU with RANK, WORLD_SIZE and
LOCAL_RANK in the environment; without them the process is alone and nothing here does anything.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_rank() -> int:
    """RANK from torchrun's environment (known before the process group exists); 0 outside torchrun."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def torchrun_world_size() -> int:
    """WORLD_SIZE from torchrun's environment; 1 for a process started any other way."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


@contextlib.contextmanager
def torchrun_process_group(device: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Under torchrun: the default process group for the duration of the block, destroyed on exit.

    NCCL for a CUDA `device`, with this process pinned to GPU LOCAL_RANK (so "cuda" means one GPU per
    rank); gloo otherwise. A collective waiting longer than `timeout_s` for the other ranks fails
    (gloo raises it in the waiting rank; NCCL's watchdog aborts the process) instead of hanging.
    Outside torchrun, or when a group already exists, it does nothing. Whatever holds the group (a
    DDP wrapper) should let go of it inside the block, so the group really ends here.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = datetime.timedelta(seconds=timeout_s)
    # A torchrun restart may reuse the rendezvous store of the group it replaces: keys of this
    # attempt's own, so no rank reads an address a dead rank of an earlier attempt left there.
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore(f"gedi_fast/attempt_{attempt}", store),
                            rank=rank, world_size=world_size, timeout=timeout)
    try:
        yield
        # Every rank done with its collectives before any tears its connections down; not after an
        # error, where a rank may never arrive and the barrier would only add a timeout.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) in the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: str) -> torch.device:
    """`device` for this rank: with several ranks, a bare "cuda" is the current GPU (torchrun_process_group
    pins it to LOCAL_RANK); anything else is taken as given."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and rank_and_world_size()[1] > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved
