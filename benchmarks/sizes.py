"""What the suites measure: the sizes of docs/DESIGN.md, trimmed in quick mode.

Quick mode (the default without CUDA; harness.QUICK) keeps the CI CPU run under five minutes: the
small sizes only, fewer rounds, and torch.compile (an inductor C++ build of seconds per graph on
CPU) only at the sizes flagged below. GEDI_BENCH_QUICK=0 measures everything.
"""
from __future__ import annotations

from typing import NamedTuple

from benchmarks.harness import DEVICE, QUICK
from gedi_fast.train.trainer import TrainConfig

# (B, K) of Sinkhorn-Knopp and the GEDI terms.
LOGIT_SHAPES = [(256, 10), (1024, 100), (64, 3000), (4096, 3000), (32768, 1000), (4096, 65536)]
QUICK_LOGIT_SHAPES = LOGIT_SHAPES[:3]
QUICK_COMPILE_LOGIT_SHAPES = {(1024, 100)}
# label -> elements of the SGLD update: JEM's batch 64x3x32x32, then the sizes of docs/DESIGN.md.
SGLD_SIZES = {"64x3x32x32": 64 * 3 * 32 * 32, "786k": 786_432, "12.6M": 12_582_912, "64M": 64 * 2**20}
QUICK_SGLD_SIZES = ("64x3x32x32", "786k", "12.6M")
QUICK_COMPILE_SGLD_SIZES = {"786k"}
# label -> (buffer rows, sample shape, batch): JEM's replay buffer of 10000 moons points or 32x32 images.
BUFFER_DRAWS = {
    "10000x2-B256": (10_000, (2,), 256),
    "10000x3x32x32-B64": (10_000, (3, 32, 32), 64),
    "10000x3x32x32-B256": (10_000, (3, 32, 32), 256),
    "10000x3x32x32-B4096": (10_000, (3, 32, 32), 4096),
}
QUICK_BUFFER_DRAWS = ("10000x2-B256", "10000x3x32x32-B64", "10000x3x32x32-B256")
QUICK_COMPILE_BUFFER_DRAWS = {"10000x3x32x32-B64"}


def logit_shapes() -> list[tuple[int, int]]:
    if QUICK:
        return QUICK_LOGIT_SHAPES
    # 4096 x 65536 holds 1 GiB per operand, and the reference keeps several such intermediates: a GPU size.
    return LOGIT_SHAPES if DEVICE == "cuda" else LOGIT_SHAPES[:-1]


def sgld_sizes() -> dict[str, int]:
    return {k: v for k, v in SGLD_SIZES.items() if not QUICK or k in QUICK_SGLD_SIZES}


def buffer_draws() -> dict[str, tuple[int, tuple[int, ...], int]]:
    return {k: v for k, v in BUFFER_DRAWS.items() if not QUICK or k in QUICK_BUFFER_DRAWS}


class TrainStep(NamedTuple):
    model: str  # "mlp" (moons) or "cnn" (32x32 images)
    batch: int  # rows of each view
    samples: int  # SGLD samples the 20-step chain draws
    input_shape: tuple[int, ...]


def train_steps() -> dict[str, TrainStep]:
    """The trainer's batch 256 and SGLD samples; torch.compile outside quick mode only (its inductor
    build of the step takes most of a minute on CPU). On a CPU in quick mode the CNN step draws 8
    samples for a batch of 8: the chain's cost grows with the samples, and at 64 one step takes seconds."""
    samples = TrainConfig().sgld_samples
    steps = [TrainStep("mlp", 256, samples, (2,)), TrainStep("cnn", 256, samples, (3, 32, 32))]
    if QUICK and DEVICE == "cpu":
        steps[1] = TrainStep("cnn", 8, 8, (3, 32, 32))
    return {f"{s.model}-{'moons' if s.model == 'mlp' else '32x32'}-B{s.batch}-M{s.samples}": s for s in steps}
