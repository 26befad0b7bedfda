"""What each setting of the cpu-images preset costs: one training step (two views, SGLD chain, loss,
backward, Adam) on 1 x 28 x 28 images, the preset itself (precision and memory_format "auto"), each
precision and layout forced, and one setting changed at a time.

These choose the preset, they do not race a baseline: `pytest benchmarks/test_bench_image_preset.py
--benchmark-only` prints mean step times, and docs/RESULTS.md gives the figures of a run.
"""
from __future__ import annotations

import pathlib
import tempfile

import pytest
import torch

from gedi_fast.train.data import Dataset
from gedi_fast.train.presets import PRESETS
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

OUT = pathlib.Path(tempfile.gettempdir(), "gedi_fast_bench")  # never written: a step does not checkpoint
VARIANTS = {
    "preset": {},  # precision and memory_format "auto": what this machine's fast path is
    "fp32, contiguous": {"precision": "fp32", "memory_format": "contiguous"},
    "fp32, channels_last": {"precision": "fp32", "memory_format": "channels_last"},
    "bf16, contiguous": {"precision": "bf16", "memory_format": "contiguous"},
    "bf16, channels_last": {"precision": "bf16", "memory_format": "channels_last"},
    "width 16": {"width": 16},
    "width 64": {"width": 64},
    "stem stride 1": {"stem_stride": 1},
    "no SGLD (gen 0, energy_reg 0)": {"gen_weight": 0.0, "energy_reg": 0.0},
    "SGLD 20 steps": {"sgld_steps": 20},
    "SGLD 64 samples": {"sgld_samples": 64},
    "batch 256": {"batch_size": 256},
}


def images() -> Dataset:
    """Random 1 x 28 x 28 images with MNIST-5k's views: a step's cost does not depend on the pixels."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3750, 1, 28, 28, generator=generator) * 2 - 1
    y = torch.randint(0, 10, (3750,), generator=generator)
    return Dataset("images28", "image", x, y, x[:100], y[:100], 10, augmentation="affine", view_noise=0.02)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_preset_step(benchmark, variant):
    data = images()
    config = TrainConfig.from_settings(**PRESETS["cpu-images"] | VARIANTS[variant] | {"dataset": data.name})
    trainer = GEDITrainer(config, OUT, data)
    for _ in range(3):  # buffer, allocator and Adam state warm
        trainer.train_step()
    benchmark.extra_info.update(variant=variant, precision=trainer.precision,
                                memory_format=str(trainer.memory_format).removeprefix("torch."))
    benchmark.pedantic(trainer.train_step, rounds=8, iterations=1)
