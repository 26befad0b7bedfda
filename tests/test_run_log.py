"""The run's log: every step's loss and terms in the log records (a rollback's undone steps once, not
twice), and TensorBoard scalars equal to log.jsonl where tensorboard is installed, continued without
stale steps by a resumed run; without the package, or with tensorboard=False, no TensorBoard folder."""
from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
import torch

from gedi_fast.train.run_log import EVERY_STEP, LOG_NAME, STEP_TERMS, TENSORBOARD_NAME
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(steps=20, batch_size=32, hidden=32, sgld=dict(steps=2, buffer_size=100), log_every=5, checkpoint_every=10)


def logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]


def test_every_step_is_logged_once_and_a_rollback_drops_the_steps_it_undid(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path)
    step, fired = trainer.train_step, []

    def nan_at_step_7():  # a NaN loss whose NaN gradients reached the weights: rolled back at step 10 to 5
        values = step()
        if trainer.step == 7 and not fired:
            fired.append(7)
            values["loss"] = values["loss"] * math.nan
            with torch.no_grad():
                next(trainer.model.parameters()).mul_(math.nan)
        return values

    trainer.train_step = nan_at_step_7
    with pytest.warns(RuntimeWarning, match="rolled back to step 5"):
        trainer.train()
    records = [h for h in trainer.history if "event" not in h]
    assert [h["step"] for h in records] == [5, 10, 15, 20]
    for record in records:
        assert set(record[EVERY_STEP]) == set(STEP_TERMS)
        assert all(len(values) == 5 for values in record[EVERY_STEP].values())  # steps 1-5, 6-10, ...
        assert all(record[EVERY_STEP][name][-1] == record[name] for name in STEP_TERMS)
        assert all(math.isfinite(v) for values in record[EVERY_STEP].values() for v in values)  # not step 7's NaN
    assert logged(tmp_path) == json.loads(json.dumps(trainer.history))


@pytest.mark.parametrize("off", ["package missing", "tensorboard=False"])
def test_without_tensorboard_a_run_writes_log_jsonl_alone(tmp_path, monkeypatch, off):
    if off == "package missing":
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(steps=5, tensorboard=off != "tensorboard=False")), tmp_path)
    trainer.train()
    assert [line["step"] for line in logged(tmp_path)] == [5]
    assert not (tmp_path / TENSORBOARD_NAME).exists()


def tensorboard_scalars(out) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / TENSORBOARD_NAME), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def log_as_scalars(out) -> dict[str, list[tuple[int, float]]]:
    """log.jsonl as TensorBoard should hold it: each term at every step, the other numbers at log steps."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for record in logged(out):
        for name, values in record[EVERY_STEP].items():
            scalars.setdefault(name, []).extend(enumerate(values, record["step"] - len(values) + 1))
        for name, value in record.items():
            if name not in ("step", EVERY_STEP, *STEP_TERMS):
                scalars.setdefault(name, []).append((record["step"], value))
    return scalars


def test_tensorboard_scalars_equal_log_jsonl_and_a_resume_drops_the_steps_after_its_checkpoint(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="needs the tensorboard package")
    out = tmp_path / "run"
    trainer = GEDITrainer(TrainConfig(**SMALL), out)
    trainer.train(until=10)
    shutil.copy(out / CHECKPOINT_NAME, tmp_path / "step10.pt")
    trainer.train()
    want = log_as_scalars(out)
    assert set(want) == set(STEP_TERMS) | {"energy_data", "energy_neg", "cluster_entropy", "energy_gap", "logit_spread",
                                             "samples_per_s"}
    assert [step for step, _ in want["loss"]] == list(range(1, 21))
    got = tensorboard_scalars(out)
    assert got == {tag: [(step, pytest.approx(value, rel=1e-6)) for step, value in values]  # stored as float32
                   for tag, values in want.items()}

    # A crash after step 20 was logged but before its checkpoint: the run resumes from step 10, with
    # other values (bf16), and stops at 12. Steps 11-20 of the first run must be gone from both logs.
    shutil.copy(tmp_path / "step10.pt", out / CHECKPOINT_NAME)
    GEDITrainer.resume(out, precision="bf16").train(until=12)
    want = log_as_scalars(out)
    assert [step for step, _ in want["loss"]] == list(range(1, 13))
    assert tensorboard_scalars(out) == {tag: [(step, pytest.approx(value, rel=1e-6)) for step, value in values]
                                        for tag, values in want.items()}
