"""gedi_fast's training step against the same step written as a plain eager fp32 PyTorch loop, on the
cpu-images preset (SmallResNet width 32, stem stride 2, batch 128, 5 SGLD steps on 32 samples) and
1 x 28 x 28 images with MNIST-5k's views.

Rows: `eager` is the plain loop (benchmarks/plain_loop.py: what a user would write instead), `ours`
is GEDITrainer.train_step as it ships, precision and memory_format "auto" (on a CPU with native
bf16: bf16 autocast and channels_last; elsewhere fp32 and channels_last). The rounds of the two
interleave, and `ours` carries the ratio as extra_info["speedup_vs_plain_loop"] with what "auto"
resolved to here. torch.compile is not a row: the loop is what a user writes without it.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.harness import Case, params
from benchmarks.plain_loop import PlainLoop
from benchmarks.test_bench_image_preset import OUT, images
from gedi_fast.precision import native_bf16
from gedi_fast.train.presets import PRESETS
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

CASE = Case("train_step_vs_plain_loop", "cpu-images", (PRESETS["cpu-images"]["batch_size"], 1, 28, 28))


def config() -> TrainConfig:
    return TrainConfig.from_settings(**PRESETS["cpu-images"], dataset="images28")


def build(case: Case, impl: str):
    if impl == "eager":
        return PlainLoop(images(), config()).step
    return GEDITrainer(config(), OUT, images()).train_step


@pytest.mark.parametrize(("case", "impl"), params([CASE], impls=("eager", "ours")))
def test_train_step_vs_plain_loop(bench, benchmark, case, impl):
    bench(case, impl, build)
    if impl == "ours" and benchmark.extra_info.get("speedup_vs_eager") is not None:
        trainer = GEDITrainer(config(), OUT, images())
        benchmark.extra_info.update(
            speedup_vs_plain_loop=benchmark.extra_info["speedup_vs_eager"], precision=trainer.precision,
            memory_format=str(trainer.memory_format).removeprefix("torch."),
            native_bf16=native_bf16(torch.device("cpu")))
