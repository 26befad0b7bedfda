"""JEM's persistent SGLD sampler on top of the fused ops: buffer draw with re-init, N steps, write-back.

On CUDA the whole chain is captured once as a CUDA graph and replayed on every call: a 20-step chain
is hundreds of small launches, which a replay issues at once (the time saved is not measured yet: no
GPU run has been made). Replays stay fresh because every random number comes from the device counter
`calls`: the noise through the ops' device_offset, the buffer rows through a counter-based hash. The
eager path computes the very same numbers, so graphed and eager chains agree.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gedi_fast.ops.sgld import SGLDChainStep, buffer_draw
from gedi_fast.precision import tf32_state
from gedi_fast.reference import (
    copula_from_uniform,
    darken_rows,
    energy,
    energy_grad,
    gaussian_from_uniform,
    mixture_from_uniform,
    split_last_uniform,
)
from gedi_fast.rng import call_key, mix32
from gedi_fast.validation import (
    SAMPLE_DTYPES,
    check_logits,
    require_choice,
    require_fraction,
    require_int,
    require_real,
)

STATE_KEYS = ("buffer", "calls", "seed")
STARTS = ("uniform", "gaussian", "mixture", "copula")
DRAWS = {"gaussian": gaussian_from_uniform, "mixture": mixture_from_uniform, "copula": copula_from_uniform}


@dataclass(frozen=True)
class SGLDConfig:
    """JEM's defaults: 20 steps of size 1.0 with noise 0.01, a 10000-sample buffer, 5% fresh U(-1, 1).

    start "gaussian": fresh rows (and the first buffer) are drawn from a Gaussian fitted to the data
    (SGLDSampler's `start`, reference.fit_gaussian_start) instead of uniform noise, clamped to
    [init_low, init_high]: chains that begin with the data's mean and pixel correlations. start
    "mixture": from a mixture of Gaussians fitted to groups of the data (reference.fit_mixture_start),
    so fresh chains begin in the shape of one group or another rather than in their blurred average.
    start "copula": from the Gaussian copula fitted to the data (reference.fit_copula_start): each
    feature keeps its own distribution (a pixel's brightness, a black background's share) and the
    features the Gaussian's correlations. darken > 0: each fresh row is then moved toward init_low by a
    factor 1 - darken * v, v ~ U[0, 1) from the row's own last uniform (reference.split_last_uniform),
    so some chains start dimmer and sparser than any data.
    """

    steps: int = 20
    step_size: float = 1.0
    noise_std: float = 0.01
    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    init_low: float = -1.0
    init_high: float = 1.0
    clamp: tuple[float, float] | None = None
    grad_clamp: float | None = None  # |dE/dx| per element at most this before the step (None: no limit)
    start: str = "uniform"
    darken: float = 0.0

    def __post_init__(self) -> None:
        require_choice(self.start, "start", STARTS)
        require_int(self.steps, "steps", minimum=0)
        require_real(self.step_size, "step_size", non_negative=True)
        require_real(self.noise_std, "noise_std", non_negative=True)
        require_int(self.buffer_size, "buffer_size", minimum=1)
        require_fraction(self.reinit_prob, "reinit_prob")
        require_fraction(self.darken, "darken")
        if self.grad_clamp is not None:
            require_real(self.grad_clamp, "grad_clamp", positive=True)
        if require_real(self.init_low, "init_low") >= require_real(self.init_high, "init_high"):
            raise ValueError(f"init_low must be below init_high, got [{self.init_low}, {self.init_high})")


def _autocast_without_cache(device_type: str) -> torch.autocast:
    """The caller's autocast state with its weight cache off, for the chain.

    The cache holds the low-precision copy of every fp32 leaf that requires grad: x is one, and SGLD
    updates it in place, so a cached copy would be stale from the second step on (each step's
    gradient taken at the first step's x). A captured graph must not bake in cached copies either.
    """
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)


class SGLDSampler:
    """Draws negatives from the model's energy E(x) = -logsumexp(model(x) / temperature).

    `temperature` must be the one the loss uses (GEDILoss's, 0.1 by default; the trainer passes one
    value to both): the chain follows dE/dx, which scales as 1 / temperature. The default 1.0 is the
    plain -logsumexp(z) energy, for use without GEDILoss. A step is Langevin dynamics for exp(-E / tau)
    with tau = noise_std^2 / (2 step_size), not for exp(-E) unless tau = 1: JEM's step 1 and noise 0.01
    sample 20000 times colder than the model (docs/DESIGN.md, "What the SGLD knobs mean").

    The replay buffer lives on the training device; every random number comes from (seed, number of
    calls so far), a counter kept on the device, so a run is reproducible, a restored state continues
    the same stream, and no call waits for the host.

    graph: "auto" captures the chain as a CUDA graph on CUDA and runs it eagerly elsewhere; True
    insists on the graph (a ValueError off CUDA); False always runs eagerly. The graph is captured on
    the first call and again whenever the batch size, the model or the storage of its parameters, the
    seed, the autocast or TF32 settings change; samples equal the eager chain's for the same seed.
    A call made while another CUDA graph is being captured runs the chain eagerly into that capture.
    `graphed` says whether sample() replays a graph.

    start: with config.start "gaussian", the (mean, factor) fresh chains are drawn from, e.g.
    reference.fit_gaussian_start(training inputs); with "mixture", the (weights, means, factors) of
    reference.fit_mixture_start; with "copula", the (quantiles, factor) of reference.fit_copula_start;
    kept in state_dict so a restored run goes on alike.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        config: SGLDConfig = SGLDConfig(),
        temperature: float = 1.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        graph: bool | str = "auto",
        start: tuple[torch.Tensor, ...] | None = None,
    ) -> None:
        if not isinstance(config, SGLDConfig):
            raise TypeError(f"config must be an SGLDConfig, got {type(config).__name__}")
        if not isinstance(input_shape, (tuple, list)) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in input_shape):
            raise ValueError(f"input_shape must be a tuple of positive ints (one sample's shape), got {input_shape!r}")
        if dtype not in SAMPLE_DTYPES:
            raise TypeError(f"dtype must be one of {SAMPLE_DTYPES}, got {dtype!r}")
        if not (isinstance(graph, bool) or graph == "auto"):
            raise ValueError(f"graph must be 'auto', True or False, got {graph!r}")
        self.config = config
        self.temperature = require_real(temperature, "temperature", positive=True)
        self.buffer = torch.empty((config.buffer_size, *input_shape), device=device, dtype=dtype)
        if graph is True and self.buffer.device.type != "cuda":
            raise ValueError(f"graph=True needs a CUDA device, got device {self.buffer.device}; pass graph='auto' "
                             f"(a CUDA graph where there is CUDA) or graph=False")
        self.graphed = self.buffer.device.type == "cuda" and graph is not False
        self._calls = torch.zeros((), dtype=torch.int64, device=self.buffer.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_key: tuple | None = None
        self._graph_samples: torch.Tensor | None = None
        self._row_hashes: torch.Tensor | None = None
        self.start = self._checked_start(start, tuple(input_shape))
        self.reseed(seed)

    def _checked_start(self, start: object, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...] | None:
        """start on the buffer's device and dtype, its shapes checked against config.start: (mean, factor)
        for "gaussian", (weights, means, factors) for "mixture", (quantiles, factor) for "copula", None
        for "uniform"."""
        kind = self.config.start
        if kind == "uniform":
            if start is not None:
                raise ValueError("start (a fitted start) is given but config.start is 'uniform'; pass "
                                 "SGLDConfig(start=...) 'gaussian', 'mixture' or 'copula' to use it")
            return None
        f = math.prod(input_shape)  # features per row
        parts = len(start) if isinstance(start, (tuple, list)) else 0
        leading = start[0].shape[0] if parts and isinstance(start[0], torch.Tensor) and start[0].dim() >= 1 else 1
        names, shapes, shown, fit = {
            "gaussian": ("(mean, factor)", [(f,), (f, f)], f"({f},) and ({f}, {f})", "fit_gaussian_start(training inputs)"),
            "mixture": ("(weights, means, factors)", [(leading,), (leading, f), (leading, f, f)],
                        f"(K,), (K, {f}) and (K, {f}, {f})", "fit_mixture_start(training inputs, K)"),
            "copula": ("(quantiles, factor)", [(leading, f), (f, f)], f"(L, {f}) and ({f}, {f})",
                       "fit_copula_start(training inputs)"),
        }[kind]
        if (parts != len(shapes) or not all(isinstance(t, torch.Tensor) for t in start)
                or [tuple(t.shape) for t in start] != shapes):
            raise ValueError(f"config.start {kind!r} needs start = {names} of shapes {shown}, e.g. reference.{fit}")
        if not all(bool(torch.isfinite(t).all()) for t in start):
            raise ValueError(f"start {names} must be finite")
        if kind == "mixture" and not bool((start[0] > 0).all()):
            raise ValueError("start's weights must be positive (leave out a component that has none)")
        if kind == "copula" and (leading < 2 or not bool((start[0].diff(dim=0) >= 0).all())):
            raise ValueError("start's quantiles need at least 2 levels, non-decreasing down each feature's column")
        return tuple(t.to(self.buffer.device, self.buffer.dtype) for t in start)

    def _fresh(self, uniform: torch.Tensor) -> torch.Tensor:
        """Fresh chain starts from rows of U[init_low, init_high) noise: those rows, or with a fitted
        start (DRAWS) the rows made from them; with config.darken, each darkened by its own factor."""
        low, high, darken = self.config.init_low, self.config.init_high, self.config.darken
        level = None
        if darken:
            uniform, level = split_last_uniform(uniform, low, high)
        rows = uniform if self.start is None else DRAWS[self.config.start](uniform, low, high, *self.start)
        return rows if level is None else darken_rows(rows, low, level, darken)

    @property
    def calls(self) -> int:
        """Chains run so far (reads the device counter: a host sync)."""
        return int(self._calls)

    def reseed(self, seed: int) -> None:
        """Start over from `seed`: a fresh uniform buffer and noise stream (the trainer's divergence recovery)."""
        self.seed = require_int(seed, "seed", minimum=0, maximum=2**63 - 1)
        self._calls.zero_()
        generator = torch.Generator(device=self.buffer.device).manual_seed(self.seed)
        low, high = self.config.init_low, self.config.init_high
        fresh = torch.rand(self.buffer.shape, generator=generator, device=self.buffer.device, dtype=self.buffer.dtype)
        self.buffer.copy_(self._fresh(fresh * (high - low) + low))

    def fork(self, seed: int) -> "SGLDSampler":
        """An eager copy (config, temperature, buffer contents) with its own seed: chains that continue
        from this sampler's state while leaving its buffer and stream untouched (plots, evaluation)."""
        twin = SGLDSampler(tuple(self.buffer.shape[1:]), self.config, self.temperature, seed, self.buffer.device,
                           self.buffer.dtype, graph=False, start=self.start)
        twin.buffer.copy_(self.buffer)
        return twin

    def energy(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """E(x) per row by reference.energy (float32 for fp16/bf16 logits), the model's output checked first."""
        return energy(self._checked(model(x), x), self.temperature)

    @staticmethod
    def _checked(logits: object, x: torch.Tensor) -> torch.Tensor:
        logits = check_logits(logits, "model(x)")
        if logits.shape[0] != x.shape[0]:
            raise ValueError(f"model(x) must have one row per sample ({x.shape[0]}), got shape {tuple(logits.shape)}")
        return logits

    def sample(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        """batch_size samples after config.steps SGLD steps, written back to the buffer; model left as found."""
        batch_size = require_int(batch_size, "batch_size", minimum=1)
        if not self.graphed or torch.cuda.is_current_stream_capturing():
            return self._chain(model, batch_size)
        key = self._key(model, batch_size)
        with torch.cuda.device(self.buffer.device):  # replay and clone on the buffer's device and its stream
            if key != self._graph_key:
                return self._capture(model, batch_size, key)
            self._graph.replay()
            return self._graph_samples.clone()

    def _indices(self, batch_size: int) -> torch.Tensor:
        """This call's buffer rows: a hash of (seed, calls, row), uniform over the buffer (bias < size / 2**32).

        On the CPU the counter is read and the per-call key hashed with Python ints (free there, and
        forty fewer tensor ops per call); elsewhere the key is hashed on the device, so no call syncs.
        The row hashes do not depend on the call and are kept from one call to the next.
        """
        calls = int(self._calls) if self._calls.device.type == "cpu" else self._calls
        key = call_key(self.seed, calls)
        return torch.remainder(mix32(self._hashes_of_rows(batch_size) ^ key), self.config.buffer_size)

    def _hashes_of_rows(self, batch_size: int) -> torch.Tensor:
        if self._row_hashes is None or self._row_hashes.shape[0] != batch_size:
            self._row_hashes = mix32(torch.arange(batch_size, device=self.buffer.device))
        return self._row_hashes

    def _chain(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        """Draw, config.steps steps, write-back and counter advance, all on the device (safe to capture).

        Call c uses Philox offset c * (steps + 1) for the draw and that plus 1 + step for each step.
        """
        config, device = self.config, self.buffer.device
        offsets = (self._calls * (config.steps + 1) + torch.arange(config.steps + 1, device=device)).unbind()
        indices = self._indices(batch_size)
        x, fresh = buffer_draw(self.buffer, indices, config.reinit_prob, config.init_low, config.init_high,
                               seed=self.seed, offset=offsets[0])
        if self.start is not None:
            x = torch.where(fresh.view(-1, *(1,) * (x.dim() - 1)), self._fresh(x), x)
        was_training = model.training
        model.eval()
        step_ = SGLDChainStep(config.step_size, config.noise_std, self.seed, config.clamp)
        try:
            with torch.enable_grad(), _autocast_without_cache(device.type):
                for step in range(config.steps):
                    x.requires_grad_(True)
                    logits = model(x)  # checked on the first step only: the checks cost as much as a step
                    if step == 0:
                        self._checked(logits, x)
                    (grad,) = torch.autograd.grad(logits, x, energy_grad(logits, self.temperature))
                    if config.grad_clamp is not None:
                        grad = grad.clamp_(-config.grad_clamp, config.grad_clamp)
                    step_(x, grad, offsets[1 + step])
        finally:
            model.train(was_training)
        x = x.detach()
        # buffer[indices] = x, where among repeated indices the last row wins on every device (as the
        # CPU's index_put_ does; CUDA's would pick a row at random).
        last = torch.empty(config.buffer_size, dtype=torch.int64, device=device)
        last.scatter_reduce_(0, indices, torch.arange(batch_size, device=device), reduce="amax", include_self=False)
        self.buffer.index_copy_(0, indices, x.index_select(0, last.index_select(0, indices)))
        self._calls.add_(1)
        return x

    def _key(self, model: nn.Module, batch_size: int) -> tuple:
        """Everything a captured chain bakes in besides the tensors it reads in place."""
        device = self.buffer.device.type
        autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        storage = tuple(t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers()))
        return (batch_size, id(model), storage, self.seed, self.config, self.temperature, autocast, tf32_state())

    def _capture(self, model: nn.Module, batch_size: int, key: tuple) -> torch.Tensor:
        """Run this call eagerly on a side stream (the warm-up CUDA graphs need), then capture the chain.

        Runs with the buffer's device current (sample() sees to it). The capture stream is made on
        that device: torch.cuda.graph's default one is made once, on whichever device was current at
        the first capture of the process, and capturing there records nothing of this device's work.
        The row hashes the graph reads live on past the warm-up, so they are made on the caller's
        stream first; only the returned samples come from the side stream (record_stream marks
        their use on the caller's). Capturing executes nothing, so the counter and buffer advance
        once, by the warm-up.
        """
        self._graph = self._graph_samples = self._graph_key = None  # frees the old graph's memory first
        device = self.buffer.device
        self._hashes_of_rows(batch_size)
        side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            samples = self._chain(model, batch_size)
        main.wait_stream(side)
        samples.record_stream(main)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
                graph_samples = self._chain(model, batch_size)
        except RuntimeError as error:
            raise RuntimeError(f"capturing the SGLD chain as a CUDA graph failed ({error}); the model must run "
                               f"without host syncs, or build SGLDSampler with graph=False") from error
        self._graph, self._graph_samples, self._graph_key = graph, graph_samples, key
        return samples

    def state_dict(self) -> dict:
        """buffer (the live tensor), calls and seed: all a restored sampler needs to continue the stream."""
        return {"buffer": self.buffer, "calls": self.calls, "seed": self.seed, "config": asdict(self.config),
                "temperature": self.temperature, "start": None if self.start is None else list(self.start)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (a checkpoint's "generator" entry, written before the device counter, is ignored)."""
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"state must hold {list(STATE_KEYS)}, missing {missing}")
        buffer = state["buffer"]
        if not isinstance(buffer, torch.Tensor) or tuple(buffer.shape) != tuple(self.buffer.shape):
            got = tuple(buffer.shape) if isinstance(buffer, torch.Tensor) else type(buffer).__name__
            raise ValueError(f"state buffer must have shape {tuple(self.buffer.shape)}, got {got}")
        calls = require_int(state["calls"], "state['calls']", minimum=0)
        self.seed = require_int(state["seed"], "state['seed']", minimum=0, maximum=2**63 - 1)
        self.buffer.copy_(state["buffer"])
        self._calls.fill_(calls)
        if state.get("start") is not None:  # the fitted Gaussian (mixture) it ran with, bit for bit
            self.start = self._checked_start(tuple(state["start"]), tuple(self.buffer.shape[1:]))
