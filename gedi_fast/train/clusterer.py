"""A trained run as a clusterer of new data: raw inputs in, cluster ids, probabilities and energies out.

`load_run(out)` reads a run folder's checkpoint into a `Run` (config, step, model, input statistics) and
its `Clusterer`, an nn.Module that standardises raw values as the training data was, runs the model and
turns the logits into p(k | x) = softmax(z / T) and E(x) = -logsumexp(z / T) with the run's
temperature T (the reference formulas). `export` writes that module as a torch.export program or as
TorchScript, so a trained clusterer runs without gedi_fast.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gedi_fast.reference.logits import scaled_log_softmax
from gedi_fast.train.data import load_dataset
from gedi_fast.train.models import build_model
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig
from gedi_fast.validation import require_choice, require_int

EXPORT_FORMATS = ("torch.export", "torchscript")


@dataclass(frozen=True)
class Assignment:
    """Per row of the input: its cluster (argmax), p(k | x) over the K clusters, and its energy."""

    clusters: torch.Tensor
    probabilities: torch.Tensor
    energies: torch.Tensor


class Clusterer(nn.Module):
    """The model with its input standardisation and temperature. forward(raw) gives the three tensors
    of an Assignment as a tuple (what export needs); `assign` validates, batches and names them."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], offset: torch.Tensor, scale: torch.Tensor,
                 temperature: float) -> None:
        super().__init__()
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        self.temperature = float(temperature)
        per_feature = lambda t: t.reshape(t.shape if t.dim() == 0 else self.input_shape)  # noqa: E731
        self.register_buffer("offset", per_feature(offset.to(torch.float32)))
        self.register_buffer("scale", per_feature(scale.to(torch.float32)))

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (raw.to(torch.float32).reshape((-1, *self.input_shape)) - self.offset) / self.scale
        log_q, lse = scaled_log_softmax(self.model(x), self.temperature)
        return log_q.argmax(1), log_q.exp(), -lse

    @torch.no_grad()
    def assign(self, raw: torch.Tensor | np.ndarray, batch_size: int = 4096, name: str = "raw") -> Assignment:
        """Assign every row of `raw`: N rows of the run's raw input values (vectors N x D; images as
        8-bit values 0..255, N x C x H x W, or N x H x W for one channel). `name` is what errors call it."""
        raw = self.validated(raw, name)
        require_int(batch_size, "batch_size", minimum=1)
        parts = [self(rows) for rows in raw.split(batch_size)]
        return Assignment(*(torch.cat(column) for column in zip(*parts)))

    def validated(self, raw: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
        """`raw` as a tensor on this module's device, or a ValueError / TypeError naming `name`."""
        if isinstance(raw, np.ndarray):
            if raw.dtype.kind not in "iuf":
                raise TypeError(f"{name} must hold numbers, got numpy dtype {raw.dtype}")
            raw = torch.from_numpy(np.ascontiguousarray(raw))
        if not isinstance(raw, torch.Tensor):
            raise TypeError(f"{name} must be a tensor or a numpy array, got {type(raw).__name__}")
        if raw.dtype == torch.bool or raw.is_complex():
            raise TypeError(f"{name} must hold real numbers, got {raw.dtype}")
        row = math.prod(self.input_shape)
        if raw.dim() < 2 or raw.shape[0] == 0 or math.prod(raw.shape[1:]) != row:
            raise ValueError(f"{name} must hold N >= 1 rows of shape {self.input_shape} ({row} values each), "
                             f"got shape {tuple(raw.shape)}")
        if raw.is_floating_point() and not bool(torch.isfinite(raw).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
        return raw.to(self.offset.device)


@dataclass(frozen=True)
class Run:
    """A trained run read back: its config, the step it reached, and its clusterer (model inside)."""

    config: TrainConfig
    step: int
    clusterer: Clusterer

    @property
    def model(self) -> nn.Module:
        return self.clusterer.model

    def assign(self, raw: torch.Tensor | np.ndarray, batch_size: int = 4096) -> Assignment:
        return self.clusterer.assign(raw, batch_size)


def load_run(out: str | pathlib.Path, map_location: str | torch.device = "cpu") -> Run:
    """The run saved in folder `out` (its checkpoint.pt, or checkpoint.prev.pt with a warning when the
    newest is damaged). Checkpoints written before the input statistics were saved take them from the
    run's dataset, which must then be on this machine."""
    out = pathlib.Path(out)
    if not GEDITrainer.has_checkpoint(out):
        raise FileNotFoundError(f"{out / CHECKPOINT_NAME} not found; train a run there first")
    state, config = GEDITrainer.saved_state(out)
    inputs = state.get("inputs") or _inputs_from_dataset(config)
    model = build_model(tuple(inputs["shape"]), inputs["clusters"], **config.model_options())
    model.load_state_dict(state["model"])
    clusterer = Clusterer(model, tuple(inputs["shape"]), inputs["offset"], inputs["scale"], config.temperature)
    return Run(config, state["step"], clusterer.to(map_location))


def _inputs_from_dataset(config: TrainConfig) -> dict:
    dataset = load_dataset(config.dataset, config.data_root, config.seed)
    return {"shape": list(dataset.input_shape), "clusters": config.clusters or dataset.num_classes,
            "offset": torch.as_tensor(dataset.input_offset), "scale": torch.as_tensor(dataset.input_scale)}


def export(clusterer: Clusterer, path: str | pathlib.Path, format: str = "torch.export") -> pathlib.Path:
    """Write `clusterer` (on the CPU) for use without gedi_fast, any number of rows per call.

    "torch.export": `torch.export.load(path).module()(raw)`; "torchscript": `torch.jit.load(path)(raw)`.
    Both return (clusters, probabilities, energies). Raw inputs are float32 (cast them first).
    """
    require_choice(format, "format", EXPORT_FORMATS)
    path = pathlib.Path(path)
    clusterer = clusterer.cpu().eval()
    example = torch.zeros((2, *clusterer.input_shape))
    with torch.no_grad():
        if format == "torch.export":
            rows = torch.export.Dim("rows")
            program = torch.export.export(clusterer, (example,), dynamic_shapes=({0: rows},))
            torch.export.save(program, path)
        else:
            torch.jit.save(torch.jit.trace(clusterer, example), path)
    return path
