"""The image fast path: what precision and memory_format "auto" resolve to (native bf16 forced on and
off), that bf16 and channels_last leave samples, buffer and loss internals in fp32, that a fast-path
checkpoint resumes exactly and evaluates in fp32, and that precision fp32 is the plain fp32 step."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from gedi_fast import precision
from gedi_fast.cli import main
from gedi_fast.train.data import Dataset
from gedi_fast.train.models import MLPClusterer, SmallResNet
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

SMALL = dict(dataset="tiny-images", steps=4, batch_size=6, width=8, stem_stride=2, sgld_samples=4,
             sgld=dict(steps=2, buffer_size=16), log_every=2, checkpoint_every=2)


def tiny_images(seed: int = 0) -> Dataset:
    """1 x 12 x 12 images in [-1, 1] with the affine views: big enough to run every part of the step."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 1, 12, 12, generator=generator) * 2 - 1
    y = torch.randint(0, 3, (40,), generator=generator)
    return Dataset("tiny-images", "image", x[:30], y[:30], x[30:], y[30:], 3, augmentation="affine", view_noise=0.02)


def vectors() -> Dataset:
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return Dataset("tiny-vectors", "vector", x[:30], y[:30], x[30:], y[30:], 2)


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native(request, monkeypatch):
    """The CPU's bf16 capability as torch's CPU query reports it, forced on or off."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: request.param, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: request.param, raising=False)
    return request.param


def test_detection_follows_the_cpu_query(native):
    cpu = torch.device("cpu")
    assert precision.cpu_has_native_bf16() is native
    assert precision.resolve_precision("auto", cpu, images=True) == ("bf16" if native else "fp32")
    assert precision.resolve_precision("auto", cpu, images=False) == "fp32"
    assert precision.resolve_precision("fp32", cpu, images=True) == "fp32"
    assert precision.resolve_precision("bf16", cpu, images=False) == "bf16"


def test_either_cpu_feature_alone_counts(monkeypatch):
    for amx, avx512_bf16 in ((True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        assert precision.cpu_has_native_bf16()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert not precision.cpu_has_native_bf16()  # a torch without the query: fp32, the safe side


def test_cuda_auto_asks_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
        expected = "bf16" if supported else "fp32"
        assert precision.resolve_precision("auto", torch.device("cuda", 1), images=True) == expected


def test_memory_format_auto_is_channels_last_for_cnns_only():
    cpu, cnn, mlp = torch.device("cpu"), SmallResNet(1, 3, width=8), MLPClusterer(2, 3)
    assert precision.resolve_memory_format("auto", cnn, cpu) == torch.channels_last
    assert precision.resolve_memory_format("auto", mlp, cpu) == torch.contiguous_format
    assert precision.resolve_memory_format("contiguous", cnn, cpu) == torch.contiguous_format
    assert precision.resolve_memory_format("channels_last", cnn, cpu) == torch.channels_last


@pytest.mark.parametrize("width", [1, 4, 7])
def test_channels_last_stays_off_where_onednn_corrupts_memory(width, tmp_path):
    cnn = SmallResNet(1, 3, width=width)  # its strided 1 x 1 shortcut reads `width` channels
    assert precision.resolve_memory_format("auto", cnn, torch.device("cpu")) == torch.contiguous_format
    assert precision.resolve_memory_format("auto", cnn, torch.device("cuda")) == torch.channels_last
    with pytest.raises(ValueError, match="memory_format 'channels_last' is unsafe .* width >= 8"):
        precision.resolve_memory_format("channels_last", cnn, torch.device("cpu"))
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(width=width)), tmp_path, tiny_images())
    assert trainer.memory_format == torch.contiguous_format and trainer.model.stem[0].weight.is_contiguous()
    trainer.train_step()


def test_trainer_resolves_auto_and_an_explicit_fp32_wins(native, tmp_path):
    fast = GEDITrainer(TrainConfig(**SMALL), tmp_path / "a", tiny_images())
    assert fast.precision == ("bf16" if native else "fp32")
    assert fast.memory_format == torch.channels_last
    assert fast.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert watch_step(fast)["z1"].dtype == (torch.bfloat16 if native else torch.float32)
    forced = GEDITrainer(TrainConfig(**SMALL, precision="fp32", memory_format="contiguous"), tmp_path / "b",
                         tiny_images())
    assert (forced.precision, forced.memory_format) == ("fp32", torch.contiguous_format)
    assert forced.model.stem[0].weight.is_contiguous()
    mlp = GEDITrainer(TrainConfig(**SMALL | dict(dataset="tiny-vectors")), tmp_path / "c", vectors())
    assert (mlp.precision, mlp.memory_format) == ("fp32", torch.contiguous_format)


def watch_step(trainer: GEDITrainer) -> dict:
    """One training step, recording what the loss received and returned and what the sampler kept."""
    seen = {}

    def loss_inputs(module, args, kwargs, output):
        seen["z1"], seen["zn"] = args[0], args[2]
        seen["terms"] = output[1]

    handle = trainer.loss_fn.register_forward_hook(loss_inputs, with_kwargs=True)
    network_inputs = []
    pre = trainer.model.register_forward_pre_hook(
        lambda module, args: network_inputs.append((args[0], torch.is_autocast_enabled("cpu"))))
    try:
        values = trainer.train_step()
    finally:
        handle.remove()
        pre.remove()
    seen["network_inputs"], seen["values"] = network_inputs, values
    return seen


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_bf16_runs_keep_samples_buffer_and_loss_internals_fp32(tmp_path, memory_format):
    trainer = GEDITrainer(TrainConfig(**SMALL, precision="bf16", memory_format=memory_format), tmp_path,
                          tiny_images())
    seen = watch_step(trainer)
    assert seen["z1"].dtype == torch.bfloat16 and seen["zn"].dtype == torch.bfloat16  # the model ran in bf16
    assert all(t.dtype == torch.float32 for t in seen["terms"].values())  # GEDILoss upcast its inputs
    assert all(v.dtype == torch.float32 for v in seen["values"].values())
    # SGLD chain steps and the training forward all fed fp32 images (samples included) to the network.
    assert all(x.dtype == torch.float32 and autocast for x, autocast in seen["network_inputs"])
    assert trainer.sampler.buffer.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_fp32_runs_no_autocast_and_equals_the_step_with_native_bf16_forced_on(tmp_path, monkeypatch):
    settings = dict(**SMALL, precision="fp32", memory_format="contiguous")
    without = GEDITrainer(TrainConfig(**settings), tmp_path / "a", tiny_images())
    seen = watch_step(without)
    assert seen["z1"].dtype == torch.float32
    assert all(x.dtype == torch.float32 and not autocast for x, autocast in seen["network_inputs"])
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with_native = GEDITrainer(TrainConfig(**settings), tmp_path / "b", tiny_images())
    watch_step(with_native)
    for a, b in zip(without.model.parameters(), with_native.model.parameters()):
        assert torch.equal(a, b)


def test_channels_last_fp32_learns_what_contiguous_fp32_learns(tmp_path):
    runs = {}
    for memory_format in ("contiguous", "channels_last"):
        trainer = GEDITrainer(TrainConfig(**SMALL, precision="fp32", memory_format=memory_format), tmp_path / memory_format,
                              tiny_images())
        trainer.train()
        runs[memory_format] = trainer
    for a, b in zip(runs["contiguous"].model.parameters(), runs["channels_last"].model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the same step, up to fp32 rounding
    torch.testing.assert_close(runs["contiguous"].sampler.buffer, runs["channels_last"].sampler.buffer,
                               rtol=1e-4, atol=1e-5)


def test_a_fast_path_checkpoint_resumes_exactly_and_evaluates_in_fp32(tmp_path):
    fast = dict(**SMALL, precision="bf16", memory_format="channels_last")
    straight = GEDITrainer(TrainConfig(**fast), tmp_path / "a", tiny_images())
    straight.train()
    broken = GEDITrainer(TrainConfig(**fast), tmp_path / "b", tiny_images())
    broken.train(until=2)
    resumed = GEDITrainer.resume(tmp_path / "b", tiny_images())
    assert (resumed.step, resumed.precision, resumed.memory_format) == (2, "bf16", torch.channels_last)
    resumed.train()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.sampler.buffer, resumed.sampler.buffer)
    on_fp32 = GEDITrainer.resume(tmp_path / "a", tiny_images(), precision="fp32", memory_format="contiguous")
    assert on_fp32.precision == "fp32" and on_fp32.model.stem[0].weight.is_contiguous()
    for a, b in zip(straight.model.parameters(), on_fp32.model.parameters()):
        assert torch.equal(a, b)
    assert on_fp32.evaluate()["nmi"] == pytest.approx(straight.evaluate()["nmi"])


def test_metrics_record_what_auto_resolved_to_and_bad_choices_name_the_setting(tmp_path, capsys):
    main(["train", "--dataset", "moons", "--out", str(tmp_path), "--steps", "2", "--set", "batch_size=8",
          "--set", "hidden=8", "--set", "sgld_steps=1", "--set", "buffer_size=16"])
    ran_with = json.loads((tmp_path / "metrics.json").read_text())["ran_with"]
    sgld = {"steps": 1, "step_size": 0.01, "noise_std": 0.1, "buffer_size": 16, "reinit_prob": 0.05,
            "init_low": ran_with["sgld"]["init_low"], "init_high": ran_with["sgld"]["init_high"], "clamp": None,
            "grad_clamp": None, "start": "uniform", "darken": 0.0}
    assert ran_with == {"precision": "fp32", "memory_format": "contiguous_format", "augmentation": "jitter",
                        "view_noise": 0.15, "sgld": sgld}
    assert ran_with["sgld"]["init_low"] < -1 and ran_with["sgld"]["init_high"] > 1  # the standardised data's range
    for bad in ("precision=fp16", "memory_format=nhwc"):
        assert main(["train", "--dataset", "moons", "--out", str(tmp_path / "x"), "--set", bad]) == 2
        assert f"error: {bad.split('=')[0]} must be one of" in capsys.readouterr().err


def test_the_trainers_multi_tensor_adam_is_the_per_parameter_loop_bit_for_bit(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path, tiny_images())
    assert trainer.optimiser.defaults["foreach"] is True
    loop_model = copy.deepcopy(trainer.model)
    loop = torch.optim.Adam(loop_model.parameters(), lr=trainer.config.lr, foreach=False)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        for p, q in zip(trainer.model.parameters(), loop_model.parameters()):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        trainer.optimiser.step()
        loop.step()
    for p, q in zip(trainer.model.parameters(), loop_model.parameters()):
        assert torch.equal(p, q)
