"""What a training run logs as it goes: log.jsonl, one JSON object per log step and per rollback, and,
where the tensorboard package is installed (and config.tensorboard is on), the same values as
TensorBoard scalars in OUT/tensorboard/.

A log record holds its step's values and, under "every_step", the loss and terms of each step since
the previous record (the last of them its own step's): a single batch's values are noisy, and the
loop reads these at the log step, where it syncs anyway, so keeping every step costs no host sync.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

LOG_NAME = "log.jsonl"
TENSORBOARD_NAME = "tensorboard"  # the run folder's TensorBoard log directory
STEP_TERMS = ("loss", "gen", "inv", "prior", "energy_reg")  # the values kept for every step
EVERY_STEP = "every_step"  # a record's key for them: {term: [values of steps step - n + 1 ... step]}


class StepTerms:
    """The loss and terms of each step since the last log record, on the device until the record reads them."""

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._values: list[torch.Tensor] = []

    def add(self, step: int, values: dict[str, torch.Tensor]) -> None:
        # A copy, taken now: a compiled step's outputs (CUDA graphs) are overwritten by the next replay.
        self._steps.append(step)
        self._values.append(torch.stack([values[name].float() for name in STEP_TERMS]))

    def drop_after(self, step: int) -> None:
        """Forget the steps a rollback to `step` undid: they are trained again."""
        kept = sum(1 for s in self._steps if s <= step)
        del self._steps[kept:], self._values[kept:]

    def take(self) -> dict[str, list[float]]:
        """Each term's values, oldest step first (one host sync); the next record starts afresh."""
        rows = torch.stack(self._values).tolist()
        self._steps, self._values = [], []
        return {name: [row[i] for row in rows] for i, name in enumerate(STEP_TERMS)}


class RunLog:
    """Rank 0's log for one train() call, continued from `step`: log.jsonl loses the lines of later steps
    and TensorBoard purges its scalars of later steps (purge_step), since a run resumed from its last
    checkpoint trains those steps again. TensorBoard only with `tensorboard` on and the package installed."""

    def __init__(self, out: pathlib.Path, step: int, tensorboard: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOG_NAME
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _logged_step(line) <= step]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        writer = summary_writer() if tensorboard else None
        self.tensorboard = None
        if writer is not None:
            _after_newest_events_file(out / TENSORBOARD_NAME)
            self.tensorboard = writer(str(out / TENSORBOARD_NAME), purge_step=step + 1)

    def write(self, record: dict) -> None:
        """Append `record` to log.jsonl and, flushed at once so it survives a crash as well, to TensorBoard."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            add_record(self.tensorboard, record)
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def summary_writer() -> type[SummaryWriter] | None:
    """torch's SummaryWriter, or None where the tensorboard package (which it needs) is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def add_record(writer: SummaryWriter, record: dict) -> None:
    """A log record as scalars named like its keys: each "every_step" term at its own step, the other
    numbers at the record's step; a rollback as text under "rollback"."""
    step = record["step"]
    if record.get("event") == "rollback":
        writer.add_text("rollback", f"{record['reason']} at step {record['diverged_at']}: rolled back to step "
                                    f"{step} (retry {record['retry']})", step)
        return
    every_step = record.get(EVERY_STEP, {})
    for name, values in every_step.items():
        for at, value in enumerate(values, step - len(values) + 1):
            writer.add_scalar(name, value, at)
    for name, value in record.items():
        if name != "step" and name not in every_step and isinstance(value, (int, float)):
            writer.add_scalar(name, value, step)


def _after_newest_events_file(folder: pathlib.Path) -> None:
    """Wait, when needed, for a wall-clock second later than that of the newest events file in `folder`.
    TensorBoard reads a folder's events files in name order, and a name holds its creation second, then
    a per-process counter that does not sort as a number (".10" before ".9"): a file opened in the same
    second as an earlier one may be read first, and the earlier file's steps then purge the newer's."""
    seconds = [int(part) for p in folder.glob("events.out.tfevents.*") if (part := p.name.split(".")[3]).isdigit()]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


def _logged_step(line: str) -> float:
    """A log.jsonl line's step; a line that is not one (cut short by a crash) reads as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
