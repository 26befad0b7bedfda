"""Run a function on two gloo ranks on the CPU and collect what each rank returns (distributed tests).

The parent saves the cases once; every spawned rank joins one process group through a FileStore,
calls `work(rank, cases)` and saves its result, which the parent loads back.
"""
from __future__ import annotations

import datetime
import pathlib
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def run_ranks(work: Callable[[int, object], object], cases: object, folder: pathlib.Path) -> list:
    """[work(rank, cases) for each rank], each computed in its own process of a WORLD-rank gloo group."""
    torch.save(cases, folder / "cases.pt")
    mp.spawn(_rank_main, args=(work, str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _rank_main(rank: int, work: Callable[[int, object], object], folder: str) -> None:
    store = dist.FileStore(f"{folder}/store", WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        result = work(rank, torch.load(f"{folder}/cases.pt", weights_only=False))
        torch.save(result, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
