"""The trainer under DDP: two gloo ranks on CPU step like one process on the doubled batch, keep their
own replay buffers, noise and queues, and resume exactly; `gedi-fast train` runs under torchrun.

One spawned pair of ranks runs every in-process case (one start-up for the module); the parent runs
the single-process references and compares.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gedi_fast.train import checkpoint, run_folder
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

WORLD = 2
# No sampler, so the only randomness is the shared data stream; the views keep their default jitter.
NO_SGLD = dict(steps=4, batch_size=16, hidden=32, gen_weight=0.0, energy_reg=0.0, log_every=1, checkpoint_every=100)
WITH_SGLD = dict(steps=6, batch_size=16, hidden=32, sgld=dict(steps=2, buffer_size=64), log_every=2, checkpoint_every=100)
# The resumed runs also queue past logits (wrapped by the step-3 checkpoint) for global Sinkhorn targets.
RESUMED = {**WITH_SGLD, "assignment": "sinkhorn", "queue_size": 24}
TERMS = ("loss", "inv", "prior", "cluster_entropy")
# E^2 on the batch's own images (gen_positives "data") before any chain starts: still only the shared stream.
POSITIVES = {**NO_SGLD, "energy_reg": 0.05, "gen_positives": "data", "gen_delay": 100}


def _rank_main(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        out = pathlib.Path(out_dir)
        ddp = GEDITrainer(TrainConfig(**NO_SGLD), out / "ddp")
        ddp.train()
        result = {"ddp": {"model": ddp.model.state_dict(), "history": ddp.history, "scores": ddp.evaluate(),
                          "wrapped": ddp.ddp is not None}}
        wrapper = weakref.ref(ddp.ddp)
        ddp.leave_process_group()
        try:
            ddp.train(until=ddp.step + 1)
        except RuntimeError as err:
            result["after_leaving"] = {"released": wrapper() is None, "error": str(err), "scores": ddp.evaluate()}
        positives = GEDITrainer(TrainConfig(**POSITIVES), out / "positives")
        positives.train()
        result["positives"] = {"model": positives.model.state_dict(), "history": positives.history, "wrapped": True}
        faulty = GEDITrainer(TrainConfig(**NO_SGLD), out / "faulty")
        if rank == 0:
            _break_parameters_once(faulty, at_step=3)
        faulty.train()
        result["rollback"] = {"model": faulty.model.state_dict(), "events": [h for h in faulty.history if "event" in h]}
        straight = GEDITrainer(TrainConfig(**RESUMED), out / "straight")
        straight.train()
        broken = GEDITrainer(TrainConfig(**RESUMED), out / "broken")
        broken.train(until=3)
        resumed = GEDITrainer.resume(out / "broken")
        resumed.train()
        result["resume"] = {name: (t.model.state_dict(), t.sampler.buffer.clone(), t.sampler.seed)
                            for name, t in (("straight", straight), ("resumed", resumed))}
        result["queue"] = {name: t.loss_fn.queue.logits for name, t in (("straight", straight), ("resumed", resumed))}
        stopped = GEDITrainer(TrainConfig(**NO_SGLD | {"steps": 8}), out / "stopped")
        stopped.train(stop=lambda: rank == 1 and stopped.step >= 2)  # a signal that reached rank 1 alone
        result["stopped"] = {"step": stopped.step, "stopped_at": stopped.stopped_at}
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _break_parameters_once(trainer: GEDITrainer, at_step: int) -> None:
    """A fault on this rank alone: its weights turn NaN right after step `at_step`, before any rollback."""
    step = trainer.train_step

    def faulty_step():
        values = step()
        if trainer.step == at_step and not trainer.rollbacks:
            with torch.no_grad():
                next(trainer.model.parameters()).mul_(math.nan)
        return values

    trainer.train_step = faulty_step


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, list[dict]]:
    """(the ranks' shared run folder, what each rank returned)."""
    tmp = tmp_path_factory.mktemp("ddp_trainer")
    mp.spawn(_rank_main, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case,settings,terms", [("ddp", NO_SGLD, TERMS), ("positives", POSITIVES, (*TERMS, "energy_reg"))])
def test_ddp_steps_equal_one_process_on_the_doubled_batch(run, tmp_path, case, settings, terms):
    single = GEDITrainer(TrainConfig(**settings | dict(batch_size=WORLD * settings["batch_size"])), tmp_path)
    single.train()
    ranks = [got[case] for got in run[1]]
    assert all(got["wrapped"] for got in ranks)
    for got in ranks:
        for (name, want), have in zip(single.model.state_dict().items(), got["model"].values()):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5, msg=name)
        assert len(got["history"]) == len(single.history) == settings["steps"]
        for want, have in zip(single.history, got["history"]):
            assert have["step"] == want["step"]
            for term in terms:
                assert have[term] == pytest.approx(want[term], rel=1e-5, abs=1e-6), (want["step"], term)
    for a, b in zip(ranks[0]["model"].values(), ranks[1]["model"].values()):
        assert torch.equal(a, b)  # DDP keeps the replicas identical
    if case == "ddp":
        assert ranks[0]["scores"] == ranks[1]["scores"]  # evaluation: the full test split, no collective


def test_a_trainer_that_left_the_group_lets_it_go_and_refuses_to_train(run):
    """The CLI's teardown: the DDP wrapper (and with it the group's last holder) is freed at once, not
    at some later garbage collection; training on without gradient sync is refused, evaluation is not."""
    for rank, got in enumerate(run[1]):
        left = got["after_leaving"]
        assert left["released"], rank
        assert f"rank {rank}" in left["error"] and "leave_process_group" in left["error"]
        assert left["scores"] == got["ddp"]["scores"]


def test_a_fault_on_one_rank_rolls_every_rank_back_alike(run):
    ranks = [got["rollback"] for got in run[1]]
    expected = [{"step": 2, "event": "rollback", "reason": "non-finite parameters", "retry": 1, "diverged_at": 3}]
    assert ranks[0]["events"] == ranks[1]["events"] == expected
    for got, clean in zip(ranks, (got["ddp"]["model"] for got in run[1])):
        for name, value in got["model"].items():
            assert torch.equal(value, clean[name]), name  # no sampler: the replay after the rollback is exact


def test_a_stop_request_on_one_rank_stops_every_rank_at_the_same_step(run):
    assert [got["stopped"] for got in run[1]] == [{"step": 2, "stopped_at": 2}] * 2
    assert checkpoint.load(run[0] / "stopped" / CHECKPOINT_NAME)["step"] == 2


def test_resume_under_ddp_is_exact_per_rank(run):
    folder, ranks = run
    saved = checkpoint.load(folder / "broken" / CHECKPOINT_NAME)
    assert saved["step"] == WITH_SGLD["steps"] and len(saved["samplers"]) == WORLD
    for rank, got in enumerate(ranks):
        (straight, straight_buffer, _), (resumed, resumed_buffer, _) = got["resume"]["straight"], got["resume"]["resumed"]
        for name in straight:
            assert torch.equal(straight[name], resumed[name]), (rank, name)
        assert torch.equal(straight_buffer, resumed_buffer), rank
        assert torch.equal(saved["samplers"][rank]["buffer"], resumed_buffer), rank
        assert torch.equal(got["queue"]["straight"], got["queue"]["resumed"]), rank
        assert torch.equal(saved["queues"][rank]["logits"], got["queue"]["resumed"]), rank
        assert saved["queues"][rank]["filled"] == RESUMED["queue_size"]
    assert not torch.equal(saved["queues"][0]["logits"], saved["queues"][1]["logits"])  # each rank queues its own rows


def test_every_rank_has_its_own_replay_buffer_and_noise(run):
    (_, buffer0, seed0), (_, buffer1, seed1) = (got["resume"]["straight"] for got in run[1])
    assert seed0 == TrainConfig(**RESUMED).seed and seed1 != seed0  # rank 0 keeps the run's seed
    assert not torch.equal(buffer0, buffer1)


def test_world_size_one_equals_no_process_group(tmp_path):
    config = TrainConfig(**WITH_SGLD)
    alone = GEDITrainer(config, tmp_path / "alone")
    alone.train()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        grouped = GEDITrainer(config, tmp_path / "grouped")
        grouped.train()
    finally:
        dist.destroy_process_group()
    assert grouped.ddp is None
    for (name, a), b in zip(alone.model.state_dict().items(), grouped.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(alone.sampler.buffer, grouped.sampler.buffer)
    assert [h["loss"] for h in alone.history] == [h["loss"] for h in grouped.history]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_runs_the_train_command(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "gedi_fast", "train", "--dataset", "moons", "--out", str(out),
               "--steps", "10", "--set", "hidden=32", "--set", "batch_size=32", "--set", "sgld_steps=2",
               "--set", "buffer_size=64"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("moons: nmi=") == 1  # rank 0 alone reports
    assert json.loads((out / "metrics.json").read_text())["steps"] == 10
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [run_folder.LOCK_NAME]  # nothing half-written
    state = checkpoint.load(out / CHECKPOINT_NAME)
    assert state["step"] == 10 and len(state["samplers"]) == WORLD
    assert GEDITrainer.resume(out).step == 10


def test_only_train_runs_under_torchrun(monkeypatch, capsys):
    from gedi_fast.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["eval", "--out", "nowhere"]) == 2
    assert "only train runs under torchrun" in capsys.readouterr().err
