"""GPU lane: the SGLD chain captured as a CUDA graph against the eager chain for the same seed, and the
trainer's graphed and compiled steps against its eager step (skipped without CUDA).

TF32 is off throughout, so eager and graphed runs, which launch the same kernels, agree to rounding.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gedi_fast import SGLDConfig, SGLDSampler, reference
from gedi_fast.precision import tf32_switches
from gedi_fast.train.models import MLPClusterer, SmallResNet
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

pytestmark = pytest.mark.gpu
CONFIG = SGLDConfig(steps=5, step_size=0.1, noise_std=0.05, buffer_size=64, reinit_prob=0.2, clamp=(-1.5, 1.5))
SMALL = dict(steps=6, batch_size=64, hidden=32, sgld=dict(steps=5, buffer_size=256), log_every=3, checkpoint_every=100,
             device="cuda", tf32=False)


@pytest.fixture(autouse=True)
def strict_fp32():
    with tf32_switches(False):
        yield


def model_and_shape(kind: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "mlp":
        return MLPClusterer(2, 3, hidden=64).cuda(), (2,)
    return SmallResNet(3, 4, width=8).cuda(), (3, 16, 16)


def pair(shape: tuple[int, ...], seed: int = 3) -> tuple[SGLDSampler, SGLDSampler]:
    """(eager, graphed) samplers of one seed."""
    return (SGLDSampler(shape, CONFIG, seed=seed, device="cuda", graph=False),
            SGLDSampler(shape, CONFIG, seed=seed, device="cuda", graph=True))


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("start, darken", [("gaussian", 0.0), ("mixture", 0.0), ("copula", 0.0), ("copula", 0.7)])
def test_graphed_chain_with_fitted_starts_equals_eager_chain(start, darken):
    """The fitted starts' transform (the mixture's choice and select among it, the copula's table
    lookup, the darkening's split of the last uniform) inside the captured graph."""
    model, shape = model_and_shape("cnn")
    data = torch.rand(300, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fitted = {"gaussian": lambda: reference.fit_gaussian_start(data), "mixture": lambda: reference.fit_mixture_start(data, 4),
              "copula": lambda: reference.fit_copula_start(data)}[start]()
    config = dataclasses.replace(CONFIG, reinit_prob=0.5, start=start, darken=darken)
    eager, graphed = (SGLDSampler(shape, config, seed=5, device="cuda", graph=graph, start=fitted)
                      for graph in (False, True))
    for _ in range(3):
        close(graphed.sample(model, 32), eager.sample(model, 32))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_graphed_chain_equals_eager_chain_and_replays_fresh(kind):
    model, shape = model_and_shape(kind)
    eager, graphed = pair(shape)
    samples = []
    for call in range(4):
        expected = eager.sample(model, 32)
        samples.append(graphed.sample(model, 32))
        close(samples[-1], expected)
        if call == 0:
            graph = graphed._graph
        with torch.no_grad():  # an optimiser step: parameters change in place, the graph stays
            for p in model.parameters():
                p.mul_(0.9)
    assert graphed._graph is graph  # captured on the first call, replayed by the next three
    close(graphed.buffer, eager.buffer)
    assert graphed.calls == eager.calls == 4
    assert not torch.equal(samples[1], samples[2])  # fresh rows and noise on every replay


def test_recaptures_on_new_batch_size_parameter_storage_or_seed():
    model, shape = model_and_shape("mlp")
    eager, graphed = pair(shape)
    graphs = []
    for change, batch in (("none", 16), ("none", 16), ("batch", 24), ("none", 24), ("storage", 24), ("seed", 24)):
        if change == "storage":
            model.head.weight = torch.nn.Parameter(model.head.weight.detach() + 0.1)
        if change == "seed":
            eager.reseed(9)
            graphed.reseed(9)
        close(graphed.sample(model, batch), eager.sample(model, batch))
        graphs.append(graphed._graph)
    assert [g is graphs[i - 1] for i, g in enumerate(graphs) if i] == [True, False, True, False, False]
    close(graphed.buffer, eager.buffer)


def test_bf16_autocast_replays_see_updated_weights():
    """The chain runs with autocast's cache off, so every replay casts the current weights afresh."""
    model, shape = model_and_shape("mlp")
    eager, graphed = pair(shape)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            expected = eager.sample(model, 32)
            actual = graphed.sample(model, 32)
            assert torch.isfinite(model(actual)).all()  # the forward after a capture in the same region
        close(actual, expected, tol=1e-3)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05)


def test_sample_inside_an_outer_capture_runs_into_it():
    model, shape = model_and_shape("mlp")
    eager, graphed = pair(shape)
    close(graphed.sample(model, 16), eager.sample(model, 16))
    outer = torch.cuda.CUDAGraph()
    with torch.cuda.graph(outer):
        out = graphed.sample(model, 16)
    for _ in range(2):
        outer.replay()
        close(out, eager.sample(model, 16))


def test_rows_drawn_on_cuda_equal_rows_drawn_on_the_cpu():
    config = SGLDConfig(steps=0, buffer_size=1000, reinit_prob=0.0)
    cpu = SGLDSampler((1,), config, seed=2**40 + 7)
    cpu.buffer.copy_(torch.arange(1000.0)[:, None])
    cuda = SGLDSampler((1,), config, seed=0, device="cuda")
    cuda.load_state_dict(cpu.state_dict())
    for _ in range(3):  # no steps: the model is never called
        assert torch.equal(cuda.sample(torch.nn.Identity(), 256).cpu(), cpu.sample(torch.nn.Identity(), 256))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphed_training_steps_equal_eager_steps(tmp_path, precision):
    eager = GEDITrainer(TrainConfig(**SMALL, precision=precision, cuda_graph=False), tmp_path / "e")
    graphed = GEDITrainer(TrainConfig(**SMALL, precision=precision), tmp_path / "g")
    assert graphed.sampler.graphed and not eager.sampler.graphed
    for step in range(4):
        close(graphed.train_step()["loss"], eager.train_step()["loss"], tol=1e-4)
        if step == 0:
            graph = graphed.sampler._graph
    assert graphed.sampler._graph is graph  # Adam updates in place: one capture for the whole run
    for p, q in zip(eager.model.parameters(), graphed.model.parameters()):
        close(q, p, tol=1e-4)
    close(graphed.sampler.buffer, eager.sampler.buffer, tol=1e-4)


def test_image_fast_path_on_cuda_resolves_to_bf16_channels_last_and_graphs_like_eager(tmp_path):
    from tests.test_fast_path import SMALL as IMAGES
    from tests.test_fast_path import tiny_images

    settings = dict(IMAGES, device="cuda", tf32=False)
    eager = GEDITrainer(TrainConfig(**settings, cuda_graph=False), tmp_path / "e", tiny_images())
    graphed = GEDITrainer(TrainConfig(**settings), tmp_path / "g", tiny_images())
    assert (graphed.precision, graphed.memory_format) == ("bf16", torch.channels_last)
    assert graphed.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        close(graphed.train_step()["loss"], eager.train_step()["loss"], tol=1e-3)
    assert graphed.sampler.graphed and graphed.sampler.buffer.dtype == torch.float32
    close(graphed.sampler.buffer, eager.sampler.buffer, tol=1e-3)


@pytest.mark.parametrize("positives", ["views", "data"])
def test_compiled_step_equals_eager_step(tmp_path, positives):
    eager = GEDITrainer(TrainConfig(**SMALL, gen_positives=positives), tmp_path / "e")
    compiled = GEDITrainer(TrainConfig(**SMALL, compile_step=True, gen_positives=positives), tmp_path / "c")
    for _ in range(3):  # inductor may fuse and round differently from eager
        close(compiled.train_step()["loss"], eager.train_step()["loss"], tol=1e-3)
    history = compiled.train()  # through the loop: values read at log steps only
    assert [h["step"] for h in history] == [6] and math.isfinite(history[0]["loss"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_graphed_chain_on_a_second_gpu_advances_and_equals_eager():
    torch.manual_seed(0)
    model = MLPClusterer(2, 3, hidden=64).to("cuda:1")
    eager = SGLDSampler((2,), CONFIG, seed=3, device="cuda:1", graph=False)
    graphed = SGLDSampler((2,), CONFIG, seed=3, device="cuda:1", graph=True)
    with torch.cuda.device(0):
        for _ in range(3):
            close(graphed.sample(model, 32), eager.sample(model, 32))
    assert graphed.calls == eager.calls == 3
    close(graphed.buffer, eager.buffer)
