"""The persistent SGLD sampler: lowers energy, reproducible, restores state, leaves the model as found, and
draws exactly the documented counter stream (the CPU lane of the graphed chain: tests/test_gpu_graphs.py)."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from gedi_fast import SGLDConfig, SGLDSampler, buffer_draw, reference, sgld_step_
from gedi_fast import sampler as sampler_module
from gedi_fast.reference import energy_grad
from gedi_fast.reference.sgld import SPLIT_LEVELS
from gedi_fast.rng import call_key, mix32
from gedi_fast.train.models import MLPClusterer

CENTRES = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])


class Mixture(torch.nn.Module):
    """Logits whose energy is a two-Gaussian mixture (minimum energy at the centres)."""

    def forward(self, x):
        return -0.5 * torch.cdist(x, CENTRES).square()


def test_samples_move_to_low_energy():
    sampler = SGLDSampler((2,), SGLDConfig(steps=100, step_size=0.05, noise_std=0.01, buffer_size=500,
                                           init_low=-4, init_high=4), seed=1)
    model = Mixture()
    before = sampler.energy(model, sampler.buffer[:256]).mean()
    x = sampler.sample(model, 256)
    assert x.shape == (256, 2) and not x.requires_grad
    assert sampler.energy(model, x).mean() < before - 1.0
    assert (torch.cdist(x, CENTRES).min(1).values < 0.5).float().mean() > 0.9


def test_reproducible_and_resumable():
    model = MLPClusterer(2, 3, hidden=16)
    config = SGLDConfig(steps=5, buffer_size=64)
    a, b = SGLDSampler((2,), config, seed=7), SGLDSampler((2,), config, seed=7)
    assert torch.equal(a.sample(model, 16), b.sample(model, 16))
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in a.state_dict().items()}
    expected = a.sample(model, 16)
    resumed = SGLDSampler((2,), config, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(model, 16), expected)
    assert not torch.equal(SGLDSampler((2,), config, seed=8).sample(model, 16), b.sample(model, 16))


def test_buffer_is_written_back_and_model_mode_restored():
    model = MLPClusterer(2, 3, hidden=16).train()
    sampler = SGLDSampler((2,), SGLDConfig(steps=2, buffer_size=8, reinit_prob=0.0), seed=2)
    before = sampler.buffer.clone()
    sampler.sample(model, 8)
    assert model.training and not torch.equal(sampler.buffer, before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(steps=-1), "steps must be >= 0"), (dict(buffer_size=0), "buffer_size must be >= 1"),
     (dict(reinit_prob=2.0), "reinit_prob must lie in"), (dict(init_low=1.0, init_high=0.0), "init_low must be below"),
     (dict(noise_std=-0.1), "noise_std must be >= 0")],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGLDConfig(**kwargs)


def expected_indices(seed: int, calls: int, batch: int, buffer_size: int) -> torch.Tensor:
    """The documented row draw, recomputed with Python ints: hash of (seed, calls, row) mod the buffer size."""
    key = call_key(seed, calls)
    return torch.tensor([mix32(mix32(row) ^ key) % buffer_size for row in range(batch)])


def test_mix32_on_tensors_equals_mix32_on_ints():
    """The row key is hashed from Python ints on CPU and from the device counter elsewhere: same numbers."""
    values = [0, 1, 2**31 - 1, 2**32 - 1, 2**32, 2**40 + 5, 2**63 - 1]
    values += torch.randint(0, 2**62, (64,), generator=torch.Generator().manual_seed(3)).tolist()
    assert mix32(torch.tensor(values)).tolist() == [mix32(v) for v in values]
    for seed in (0, 3, 2**40 + 5):
        for calls in (0, 7, 2**32 + 9):
            assert int(call_key(seed, torch.tensor(calls))) == call_key(seed, calls)


@pytest.mark.parametrize("seed", [3, 2**40 + 5])
def test_chain_is_the_counter_stream_with_integer_offsets(seed):
    """Call c draws at Philox offset c * (steps + 1) and steps at that + 1 + step: the device counter gives
    the same numbers as integer offsets (the stream before the counter moved to the device)."""
    model = MLPClusterer(2, 3, hidden=16)
    config = SGLDConfig(steps=3, step_size=0.1, noise_std=0.05, buffer_size=8, reinit_prob=0.3)
    sampler = SGLDSampler((2,), config, seed=seed)
    buffer = sampler.buffer.clone()
    for calls in range(3):
        indices = expected_indices(seed, calls, 16, config.buffer_size)
        offset = calls * (config.steps + 1)
        x, _ = buffer_draw(buffer, indices, config.reinit_prob, config.init_low, config.init_high, seed=seed,
                           offset=offset)
        for step in range(config.steps):
            x.requires_grad_(True)
            logits = model(x)
            (grad,) = torch.autograd.grad(logits, x, energy_grad(logits, sampler.temperature))
            sgld_step_(x, grad, config.step_size, config.noise_std, seed=seed, offset=offset + 1 + step)
        x = x.detach()
        buffer[indices] = x  # on the CPU the last of repeated indices wins
        assert torch.equal(sampler.sample(model, 16), x)
        assert torch.equal(sampler.buffer, buffer) and sampler.calls == calls + 1


def test_chain_steps_along_the_autograd_gradient_of_the_energy():
    """The chain's closed-form gradient is autograd's gradient of E(x).sum() (one step, no noise; the
    formula itself is checked in float64 in test_reference.py)."""
    model = MLPClusterer(2, 5, hidden=16)
    config = SGLDConfig(steps=1, step_size=0.3, noise_std=0.0, buffer_size=9, reinit_prob=0.0)
    sampler = SGLDSampler((2,), config, temperature=0.07, seed=11)
    before = sampler.buffer.clone()
    x = sampler.sample(model, 9)
    start = before[expected_indices(11, 0, 9, 9)].requires_grad_(True)
    (grad,) = torch.autograd.grad(sampler.energy(model, start).sum(), start)
    assert grad.norm() > 0.1  # a real step, not a flat region
    torch.testing.assert_close(x, start.detach() - 0.3 * grad, rtol=1e-5, atol=1e-5)


def test_rows_are_drawn_uniformly_and_the_last_repeat_is_written_back():
    sampler = SGLDSampler((1,), SGLDConfig(steps=0, buffer_size=64, reinit_prob=0.0), seed=5)
    sampler.buffer.copy_(torch.arange(64.0)[:, None])  # each row holds its index
    drawn = torch.cat([sampler.sample(torch.nn.Linear(1, 2), 256)[:, 0].long() for _ in range(100)])
    counts = torch.bincount(drawn, minlength=64).double()
    chi2 = ((counts - 400) ** 2 / 400).sum()
    assert chi2 < 63 + 6 * (2 * 63) ** 0.5  # 63 degrees of freedom
    fresh = SGLDSampler((1,), SGLDConfig(steps=0, buffer_size=4, reinit_prob=1.0), seed=6)
    x = fresh.sample(torch.nn.Linear(1, 2), 32)  # every row re-initialised: repeats differ
    indices = expected_indices(6, 0, 32, 4)
    for row in range(4):
        assert torch.equal(fresh.buffer[row], x[(indices == row).nonzero().max()])


def test_state_round_trips_the_counter_and_reads_old_checkpoints():
    model = MLPClusterer(2, 3, hidden=16)
    sampler = SGLDSampler((2,), SGLDConfig(steps=2, buffer_size=32), seed=4)
    sampler.sample(model, 8)
    sampler.sample(model, 8)
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in sampler.state_dict().items()}
    assert state["calls"] == 2 and isinstance(state["calls"], int)
    expected = sampler.sample(model, 8)
    old = SGLDSampler((2,), SGLDConfig(steps=2, buffer_size=32), seed=0)
    old.load_state_dict(state | {"generator": torch.Generator().get_state()})  # written before the counter
    assert torch.equal(old.sample(model, 8), expected) and old.calls == 3
    with pytest.raises(ValueError, match=r"state\['calls'\] must be >= 0"):
        old.load_state_dict(state | {"calls": -1})
    old.reseed(4)
    assert old.calls == 0


def test_sampling_works_under_no_grad():
    sampler = SGLDSampler((2,), SGLDConfig(steps=2, buffer_size=16), seed=1)
    with torch.no_grad():
        x = sampler.sample(MLPClusterer(2, 3, hidden=8), 4)
    assert x.shape == (4, 2) and sampler.calls == 1


def test_graph_needs_cuda_and_auto_runs_eagerly_elsewhere():
    assert not SGLDSampler((2,), SGLDConfig(buffer_size=4)).graphed  # "auto" on the CPU
    with pytest.raises(ValueError, match="graph=True needs a CUDA device, got device cpu"):
        SGLDSampler((2,), SGLDConfig(buffer_size=4), graph=True)
    with pytest.raises(ValueError, match="graph must be 'auto', True or False"):
        SGLDSampler((2,), SGLDConfig(buffer_size=4), graph="yes")


def test_autocast_steps_take_the_gradient_at_the_current_samples():
    """autocast's weight cache would keep x's first low-precision copy: every step's gradient at the first x."""
    model = MLPClusterer(2, 3, hidden=16)
    config = SGLDConfig(steps=4, step_size=0.5, noise_std=0.01, buffer_size=8)
    cached, uncached = SGLDSampler((2,), config, seed=1), SGLDSampler((2,), config, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = cached.sample(model, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        assert torch.equal(x, uncached.sample(model, 4))


class _FakeCuda:
    """Stands in for torch.cuda in the sampler's capture path and records which device each step used."""

    def __init__(self) -> None:
        self.current = "the caller's device"
        self.on_side_stream = False
        self.events: list[tuple] = []
        fake = self

        class Stream:
            def __init__(self, device=None) -> None:
                self.device = device
                fake.events.append(("stream", device))

            def wait_stream(self, other) -> None:
                pass

        class CUDAGraph:
            def replay(self) -> None:
                fake.events.append(("replay", fake.current))

        self.Stream, self.CUDAGraph = Stream, CUDAGraph

    def is_current_stream_capturing(self) -> bool:
        return False

    def current_stream(self, device=None):
        return self.Stream(device)

    @contextlib.contextmanager
    def device(self, device):
        saved, self.current = self.current, device
        try:
            yield
        finally:
            self.current = saved

    @contextlib.contextmanager
    def stream(self, stream):
        self.on_side_stream = True
        try:
            yield
        finally:
            self.on_side_stream = False

    @contextlib.contextmanager
    def graph(self, graph, stream=None, **kwargs):
        self.events.append(("capture", None if stream is None else stream.device, self.current))
        yield


def test_graph_capture_and_replay_run_on_the_buffers_device(monkeypatch):
    """With the buffer on cuda:1 and cuda:0 current, capture must use a stream of cuda:1 with cuda:1
    current (torch.cuda.graph's default stream belongs to whichever device was current first)."""
    fake = _FakeCuda()
    monkeypatch.setattr(torch, "cuda", fake)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    arange = torch.arange

    def row_numbers(*args, **kwargs):  # the row hashes start from arange: note which stream made them
        fake.events.append(("arange", fake.on_side_stream))
        return arange(*args, **kwargs)

    monkeypatch.setattr(sampler_module.torch, "arange", row_numbers)
    model = MLPClusterer(2, 3, hidden=8)
    sampler = SGLDSampler((2,), SGLDConfig(steps=2, buffer_size=16), seed=1, graph=False)
    sampler.graphed = True  # the CUDA path, driven through the fake
    device = sampler.buffer.device
    sampler.sample(model, 4)
    sampler.sample(model, 4)
    streams = [e[1] for e in fake.events if e[0] == "stream"]
    assert streams and all(d == device for d in streams)
    assert [e for e in fake.events if e[0] == "capture"] == [("capture", device, device)]
    assert [e for e in fake.events if e[0] == "replay"] == [("replay", device)]
    assert fake.current == "the caller's device"
    # The row hashes outlive the warm-up: made on the caller's stream, not the warm-up's side stream.
    assert fake.events.index(("arange", False)) < fake.events.index(("arange", True))


def test_grad_clamp_limits_each_elements_gradient_before_the_step():
    """The chain with grad_clamp is the reference update on the clamped autograd gradient, with the same
    Philox noise; the reference itself is the formula in float64."""
    model = MLPClusterer(2, 3, hidden=16)
    config = SGLDConfig(steps=2, step_size=0.5, noise_std=0.05, buffer_size=8, reinit_prob=0.0, grad_clamp=0.3)
    sampler = SGLDSampler((2,), config, temperature=0.05, seed=9)
    buffer = sampler.buffer.clone()
    indices = expected_indices(9, 0, 16, 8)
    x = buffer[indices].clone()
    clamped_somewhere = False
    for step in range(config.steps):
        x.requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits, x, energy_grad(logits, sampler.temperature))
        clamped_somewhere |= bool((grad.abs() > 0.3).any())
        xi = reference.philox_normal(x.numel(), 9, 1 + step).reshape(x.shape)
        x = reference.sgld_step(x.detach(), grad, 0.5, 0.05, xi, grad_clamp=0.3)
    assert clamped_somewhere  # temperature 0.05 makes gradients well above the bound
    torch.testing.assert_close(sampler.sample(model, 16), x, rtol=1e-6, atol=1e-6)

    g = torch.randn(50, dtype=torch.float64) * 3
    start, noise = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    expected = start - 0.5 * torch.where(g.abs() > 0.3, 0.3 * g.sign(), g) + 0.05 * noise
    assert torch.equal(reference.sgld_step(start, g, 0.5, 0.05, noise, grad_clamp=0.3), expected)


def correlated_data(rows: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of a known 3-D Gaussian (mean, covariance) shaped as 1 x 3 images, inside [-1, 1] almost surely."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)
    root = torch.tensor([[0.12, 0.0, 0.0], [0.06, 0.08, 0.0], [-0.03, 0.02, 0.05]], dtype=torch.float64)
    x = mean + torch.randn(rows, 3, generator=generator, dtype=torch.float64) @ root.T
    return x.reshape(rows, 1, 1, 3), mean, root @ root.T


def test_gaussian_start_fit_and_draw_match_the_closed_forms():
    data, _, _ = correlated_data()
    mean, factor = reference.fit_gaussian_start(data)
    rows = data.reshape(len(data), -1)
    torch.testing.assert_close(mean, rows.mean(0))
    torch.testing.assert_close(factor @ factor.T, torch.cov(rows.T))  # exact sample covariance
    u = torch.rand(7, 1, 1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    got = reference.gaussian_from_uniform(u, -1.0, 1.0, mean, factor)
    scipy_stats = pytest.importorskip("scipy.stats")
    z = torch.from_numpy(scipy_stats.norm.ppf(((u + 1) / 2).reshape(7, 3).numpy()))  # an independent inverse CDF
    torch.testing.assert_close(got, (mean + z @ factor.T).clamp(-1, 1).reshape(u.shape))
    ends = reference.gaussian_from_uniform(torch.tensor([[-1.0, 1.0, 0.0]]), -1.0, 1.0, torch.zeros(3), torch.eye(3))
    assert torch.isfinite(ends).all() and ends.abs().max() == 1.0  # U's ends give |z| < 5.4, clamped to the range


def test_gaussian_start_draws_from_the_fitted_distribution():
    data, true_mean, true_covariance = correlated_data()
    config = SGLDConfig(steps=0, buffer_size=20000, start="gaussian")
    sampler = SGLDSampler((1, 1, 3), config, seed=2, dtype=torch.float32, start=reference.fit_gaussian_start(data))
    rows = sampler.buffer.reshape(-1, 3).double()
    torch.testing.assert_close(rows.mean(0), true_mean, rtol=0, atol=0.01)
    torch.testing.assert_close(torch.cov(rows.T), true_covariance, rtol=0, atol=0.002)


def assert_fresh_rows_are(sampler: SGLDSampler, made: Callable[[torch.Tensor], torch.Tensor]) -> torch.nn.Module:
    """Over three 13-row calls of a 0-step chain: each fresh row is made(the draw's uniform rows) and kept
    rows are untouched. Returns the (linear) model the calls ran, for more calls."""
    buffer = sampler.buffer.clone()
    config = sampler.config
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(buffer[0].numel(), 2))
    for calls in range(3):
        indices = expected_indices(sampler.seed, calls, 13, config.buffer_size)
        drawn, fresh = reference.buffer_draw(buffer, indices, config.reinit_prob, config.init_low, config.init_high,
                                             seed=sampler.seed, offset=calls)
        expected = torch.where(fresh.view(-1, 1, 1, 1), made(drawn), drawn)
        got = sampler.sample(model, 13)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        buffer[indices] = got
        assert fresh.any() or config.reinit_prob < 1
    return model


def assert_state_restores(sampler: SGLDSampler, model: torch.nn.Module, other_start: tuple[torch.Tensor, ...]) -> None:
    """A sampler built with another (smaller) start, loaded with `sampler`'s state, has its start and
    continues its chain."""
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in sampler.state_dict().items()}
    expected = sampler.sample(model, 8)
    other = SGLDSampler(tuple(sampler.buffer.shape[1:]), sampler.config, seed=0, start=other_start)
    other.load_state_dict(state)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(other.start, sampler.start))
    assert torch.equal(other.sample(model, 8), expected)


@pytest.mark.parametrize("reinit_prob", [0.4, 1.0])
def test_gaussian_start_chain_is_the_reference_draw_then_the_transform(reinit_prob):
    """Fresh rows are the draw's uniform rows through gaussian_from_uniform; kept rows are untouched."""
    data, _, _ = correlated_data(rows=301)
    start = reference.fit_gaussian_start(data)
    config = SGLDConfig(steps=0, buffer_size=17, reinit_prob=reinit_prob, start="gaussian")
    sampler = SGLDSampler((1, 1, 3), config, seed=9, start=start)
    assert_fresh_rows_are(sampler, lambda drawn: reference.gaussian_from_uniform(drawn, -1.0, 1.0,
                                                                                 *(t.float() for t in start)))


def blob_data(counts=(13, 40, 7), features: int = 5, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows from well-separated Gaussian blobs (counts rows each) as 1 x 1 x features images; the blobs' rows."""
    generator = torch.Generator().manual_seed(seed)
    blobs = [torch.full((features,), 0.6 * (b - 1), dtype=torch.float64)
             + 0.02 * torch.randn(n, features, generator=generator, dtype=torch.float64) for b, n in enumerate(counts)]
    rows = torch.cat(blobs)[torch.randperm(sum(counts), generator=generator)]
    return rows.reshape(-1, 1, 1, features), blobs


def test_mixture_start_fit_finds_the_groups_and_fits_each():
    data, blobs = blob_data()
    weights, means, factors = reference.fit_mixture_start(data, 3)
    assert weights.dtype == means.dtype == factors.dtype == torch.float64
    order = means[:, 0].argsort()  # the blobs lie along the diagonal, in order
    torch.testing.assert_close(weights[order], torch.tensor([13, 40, 7], dtype=torch.float64) / 60)
    for j, blob in zip(order.tolist(), blobs):
        torch.testing.assert_close(means[j], blob.mean(0))
        torch.testing.assert_close(factors[j] @ factors[j].T, torch.cov(blob.T))
    one = reference.fit_mixture_start(data, 1)
    for got, expected in zip(one[1:], reference.fit_gaussian_start(data)):
        torch.testing.assert_close(got[0], expected)
    with pytest.raises(ValueError, match="components must be between 1 and the number of rows \\(60\\), got 61"):
        reference.fit_mixture_start(data, 61)


def test_mixture_draw_picks_components_by_weight_and_draws_each_from_its_gaussian():
    """Float64: the share of rows per component matches the weights, and within each component the
    standardised draw, the last element (whose uniform also made the choice) among them, is N(0, 1)."""
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    means = torch.tensor([[-0.6] * 4, [0.0] * 4, [0.6] * 4], dtype=torch.float64)
    factors = torch.stack([torch.eye(4, dtype=torch.float64) * s for s in (0.01, 0.02, 0.03)])
    u = torch.rand(40001, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    rows = reference.mixture_from_uniform(u, -1.0, 1.0, weights, means, factors).reshape(-1, 4)
    component = (rows[:, :1] - means[:, 0]).abs().argmin(1)
    torch.testing.assert_close(torch.bincount(component).double() / len(rows), weights, rtol=0, atol=0.01)
    for j in range(3):
        z = (rows[component == j] - means[j]) / factors[j, 0, 0]
        torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), rtol=0, atol=0.04)
        torch.testing.assert_close(z.std(0), torch.ones(4, dtype=torch.float64), rtol=0, atol=0.04)
    single = reference.mixture_from_uniform(u[:9], -1.0, 1.0, weights[:1], means[:1], factors[:1])
    torch.testing.assert_close(single, reference.gaussian_from_uniform(u[:9], -1.0, 1.0, means[0], factors[0]))
    wide = reference.mixture_from_uniform(u[:50], -1.0, 1.0, weights, means * 3, factors * 100)
    assert wide.abs().max() == 1.0  # clamped to [low, high]


def test_mixture_start_chain_is_the_reference_draw_then_the_mixture_and_survives_state():
    data, _ = blob_data(counts=(30, 11, 19), features=3)
    start = reference.fit_mixture_start(data, 3)
    config = SGLDConfig(steps=0, buffer_size=17, reinit_prob=0.6, start="mixture")
    sampler = SGLDSampler((1, 1, 3), config, seed=9, start=start)
    identity = assert_fresh_rows_are(sampler, lambda drawn: reference.mixture_from_uniform(
        drawn, -1.0, 1.0, *(t.float() for t in start)))
    assert_state_restores(sampler, identity, other_start=tuple(t[:1] for t in start))
    assert torch.equal(sampler.fork(5).sample(identity, 8), sampler.fork(5).sample(identity, 8))
    with pytest.raises(ValueError, match="needs start = \\(weights, means, factors\\) of shapes \\(K,\\), \\(K, 3\\)"):
        SGLDSampler((1, 1, 3), config, start=start[1:])
    with pytest.raises(ValueError, match="needs start = \\(weights, means, factors\\)"):
        SGLDSampler((1, 1, 4), config, start=start)
    for weights in (-start[0], torch.cat([start[0][:2], torch.zeros(1, dtype=start[0].dtype)])):
        with pytest.raises(ValueError, match="weights must be positive"):
            SGLDSampler((1, 1, 3), config, start=(weights, *start[1:]))
    with pytest.raises(ValueError, match="must be finite"):
        SGLDSampler((1, 1, 3), config, start=(start[0], start[1] * float("nan"), start[2]))


def tied_data(rows: int = 301, seed: int = 0) -> torch.Tensor:
    """Rows as 1 x 1 x 4 images: a black-background feature (about 60% exactly -1), two correlated
    continuous ones, and a constant one."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, 2, generator=generator, dtype=torch.float64)
    ink = torch.where(z[:, 0] > 0.25, torch.tanh(z[:, 0]), torch.full_like(z[:, 0], -1.0))
    a, b = 0.3 * z[:, 0], 0.2 * z[:, 0] + 0.1 * z[:, 1]
    return torch.stack([ink, a, b, torch.full_like(a, 0.5)], 1).reshape(rows, 1, 1, 4)


def test_copula_start_fit_matches_rank_correlations_and_quantiles_in_float64():
    scipy_stats = pytest.importorskip("scipy.stats")
    data = tied_data()
    quantiles, factor = reference.fit_copula_start(data, levels=65)
    assert quantiles.dtype == factor.dtype == torch.float64 and quantiles.shape == (65, 4)
    rows = data.reshape(len(data), -1).numpy()
    torch.testing.assert_close(quantiles, torch.from_numpy(np.quantile(rows, np.linspace(0, 1, 65), axis=0)))
    scores = scipy_stats.norm.ppf((scipy_stats.rankdata(rows[:, :3], method="average", axis=0) - 0.5) / len(rows))
    expected = np.zeros((4, 4))
    expected[:3, :3] = np.corrcoef(scores.T)  # the constant feature correlates with nothing
    torch.testing.assert_close(factor @ factor.T, torch.from_numpy(expected))
    with pytest.raises(ValueError, match="levels must be >= 2, got 1"):
        reference.fit_copula_start(data, levels=1)
    for levels in (2.5, True):
        with pytest.raises(TypeError, match="levels must be an int"):
            reference.fit_copula_start(data, levels=levels)
    with pytest.raises(ValueError, match="at least 2 rows"):
        reference.fit_copula_start(data[:1])


def test_copula_draw_is_the_closed_form_and_keeps_each_features_distribution():
    """Float64: a draw equals an independent evaluation (scipy's normal CDFs, numpy's interpolation);
    over 40001 rows each feature has the data's background share and mean, the continuous pair its
    correlation, and every value lies within the data's range (no clamp needed)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    data = tied_data(rows=4001)
    quantiles, factor = reference.fit_copula_start(data)
    u = torch.rand(40001, 1, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    rows = reference.copula_from_uniform(u, -1.0, 1.0, quantiles, factor).reshape(-1, 4)
    z = scipy_stats.norm.ppf(((u[:9] + 1) / 2).reshape(9, 4).numpy()) @ factor.numpy().T
    levels = np.linspace(0, 1, len(quantiles))
    expected = np.stack([np.interp(scipy_stats.norm.cdf(z[:, j]), levels, quantiles[:, j].numpy()) for j in range(4)], 1)
    torch.testing.assert_close(rows[:9], torch.from_numpy(expected))
    source = data.reshape(len(data), -1)
    torch.testing.assert_close((rows[:, 0] == -1).double().mean(), (source[:, 0] == -1).double().mean(), rtol=0, atol=0.01)
    torch.testing.assert_close(rows.mean(0), source.mean(0), rtol=0, atol=0.01)
    torch.testing.assert_close(torch.corrcoef(rows[:, 1:3].T)[0, 1], torch.corrcoef(source[:, 1:3].T)[0, 1],
                               rtol=0, atol=0.02)
    assert (rows >= source.amin(0)).all() and (rows <= source.amax(0)).all() and (rows[:, 3] == 0.5).all()
    ends = reference.copula_from_uniform(torch.tensor([[-1.0, 1.0, 0.0, 0.0]]), -1.0, 1.0, quantiles, factor)
    assert torch.isfinite(ends).all()


def test_copula_start_chain_is_the_reference_draw_then_the_copula_and_bad_starts_are_named():
    start = reference.fit_copula_start(tied_data(rows=99))
    config = SGLDConfig(steps=0, buffer_size=17, reinit_prob=0.6, start="copula")
    sampler = SGLDSampler((1, 1, 4), config, seed=9, start=start)
    identity = assert_fresh_rows_are(sampler, lambda drawn: reference.copula_from_uniform(
        drawn, -1.0, 1.0, *(t.float() for t in start)))
    assert_state_restores(sampler, identity, other_start=(start[0][:3], start[1]))
    with pytest.raises(ValueError, match="needs start = \\(quantiles, factor\\) of shapes \\(L, 4\\) and \\(4, 4\\)"):
        SGLDSampler((1, 1, 4), config, start=start[:1])
    with pytest.raises(ValueError, match="needs start = \\(quantiles, factor\\)"):
        SGLDSampler((1, 1, 3), config, start=start)
    for quantiles in (start[0].flip(0), start[0][:1]):
        with pytest.raises(ValueError, match="at least 2 levels, non-decreasing"):
            SGLDSampler((1, 1, 4), config, start=(quantiles, start[1]))
    with pytest.raises(ValueError, match="must be finite"):
        SGLDSampler((1, 1, 4), config, start=(start[0], start[1] * float("nan")))


def test_split_last_uniform_makes_two_independent_uniforms_in_float64():
    u = torch.rand(200001, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 2 - 1
    split, level = reference.split_last_uniform(u, -1.0, 1.0)
    fraction = level.double() / SPLIT_LEVELS
    assert torch.equal(split[:, :2], u[:, :2]) and split.dtype == torch.float64
    last = (split[:, 2] + 1) / 2
    assert (fraction >= 0).all() and (fraction < 1).all() and (last >= 0).all() and (last <= 1).all()
    torch.testing.assert_close(fraction + last / SPLIT_LEVELS, (u[:, 2] + 1) / 2)  # nothing lost
    for v in (fraction, last):
        torch.testing.assert_close(torch.histc(v, 10, 0, 1) / len(v), torch.full((10,), 0.1, dtype=torch.float64),
                                   rtol=0, atol=0.003)
    assert abs(float(torch.corrcoef(torch.stack([fraction, last]))[0, 1])) < 0.01


def test_darkened_chain_starts_are_the_reference_draw_then_each_rows_factor():
    """Fresh rows: split the last uniform, draw the start from the rest, move the row toward init_low by
    1 - darken * fraction; kept rows untouched; darken 0 is the plain start."""
    start = reference.fit_copula_start(tied_data(rows=99))
    config = SGLDConfig(steps=0, buffer_size=17, reinit_prob=0.6, start="copula", darken=0.7)
    sampler = SGLDSampler((1, 1, 4), config, seed=9, start=start)

    def made(drawn: torch.Tensor) -> torch.Tensor:
        split, level = reference.split_last_uniform(drawn, -1.0, 1.0)
        rows = reference.copula_from_uniform(split, -1.0, 1.0, *(t.float() for t in start))
        return -1 + (1 - 0.7 * level / SPLIT_LEVELS).view(-1, 1, 1, 1) * (rows + 1)

    assert_fresh_rows_are(sampler, made)
    plain = SGLDSampler((1, 1, 4), dataclasses.replace(config, darken=0.0), seed=9, start=start)
    darker = SGLDSampler((1, 1, 4), dataclasses.replace(config, darken=1.0), seed=9, start=start)
    assert plain.buffer.mean() > sampler.buffer.mean() > darker.buffer.mean() >= -1
    uniform = SGLDSampler((1, 1, 4), SGLDConfig(steps=0, buffer_size=4000, darken=0.5), seed=1)
    ink = (uniform.buffer.reshape(4000, 4) + 1).mean(1)  # plain U(-1, 1) rows: mean 1 above low
    torch.testing.assert_close(ink.mean(), torch.tensor(0.75), rtol=0, atol=0.03)  # E[1 - 0.5 v] = 0.75
    for darken in (-0.1, 1.5):
        with pytest.raises(ValueError, match="darken"):
            SGLDConfig(darken=darken)


def test_gaussian_start_survives_fork_and_state_and_bad_starts_are_named():
    data, _, _ = correlated_data(rows=50)
    start = reference.fit_gaussian_start(data)
    config = SGLDConfig(steps=1, buffer_size=16, reinit_prob=0.5, start="gaussian")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
    sampler = SGLDSampler((1, 1, 3), config, seed=3, start=start)
    twin = sampler.fork(3)
    assert torch.equal(twin.sample(model, 8), sampler.fork(3).sample(model, 8))
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in sampler.state_dict().items()}
    expected = sampler.sample(model, 8)
    other = SGLDSampler((1, 1, 3), config, seed=0, start=(torch.zeros(3), torch.eye(3)))
    other.load_state_dict(state)
    assert torch.equal(other.sample(model, 8), expected)
    with pytest.raises(ValueError, match="needs start = \\(mean, factor\\) of shapes \\(3,\\) and \\(3, 3\\)"):
        SGLDSampler((1, 1, 3), config)
    with pytest.raises(ValueError, match="needs start"):
        SGLDSampler((1, 1, 3), config, start=(torch.zeros(4), torch.eye(4)))
    with pytest.raises(ValueError, match="must be finite"):
        SGLDSampler((1, 1, 3), config, start=(torch.zeros(3), torch.full((3, 3), float("nan"))))
    with pytest.raises(ValueError, match="config.start is 'uniform'"):
        SGLDSampler((1, 1, 3), SGLDConfig(), start=start)
    with pytest.raises(ValueError, match="start must be one of"):
        SGLDConfig(start="data")
