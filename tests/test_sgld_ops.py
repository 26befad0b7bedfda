"""The fused SGLD step and replay-buffer draw against the reference: the C++ kernels, and the CUDA ones
in the GPU lane (tests/test_gpu.py adds the CUDA-only checks: bitwise equal to the CPU, graph capture)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from backends import SGLD_DEVICES
from scipy import stats

import gedi_fast
from gedi_fast import buffer_draw, reference, sgld_step_

SIZES = [1, 3, 4, 5, 1001, 4097]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BIG_SEED = 2**64 - 1


def draw_noise(numel: int, seed: int, offset: int | torch.Tensor, device: str = "cpu") -> torch.Tensor:
    x = torch.zeros(numel, device=device)
    return sgld_step_(x, torch.zeros(numel, device=device), 0.0, 1.0, seed=seed, offset=offset).cpu()


# --- the generator ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "counter,key,expected",
    [  # Random123's known-answer vectors for Philox4x32-10
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_reference_philox_known_answers(counter, key, expected):
    out = reference.philox4x32_10(np.array([counter], dtype=np.uint32), key)
    assert tuple(int(v) for v in out[0]) == expected


@pytest.mark.parametrize("device", SGLD_DEVICES)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("seed,offset", [(0, 0), (7, 1), (BIG_SEED, 2**40 + 3), (2**33 + 5, 2**64 - 1)])
def test_kernel_noise_is_philox_box_muller(device, numel, seed, offset):
    got = draw_noise(numel, seed, offset, device).double()
    want = reference.philox_normal(numel, seed, offset)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_noise_statistics_over_a_million_draws():
    xi = draw_noise(2**20 + 3, seed=1234, offset=0).double()
    n = xi.numel()
    assert abs(xi.mean().item()) < 5 / math.sqrt(n)
    assert abs(xi.std().item() - 1) < 5 * math.sqrt(0.5 / n)
    assert stats.kstest(xi.numpy(), "norm").pvalue > 1e-3
    tail = (xi.abs() > 3).double().mean().item()  # 2 * (1 - Phi(3)) = 0.0026998
    assert abs(tail - 0.0026998) < 5 * math.sqrt(0.0027 / n)
    lag1 = torch.corrcoef(torch.stack([xi[:-1], xi[1:]]))[0, 1].item()
    lag4 = torch.corrcoef(torch.stack([xi[:-4], xi[4:]]))[0, 1].item()
    assert abs(lag1) < 5 / math.sqrt(n) and abs(lag4) < 5 / math.sqrt(n)


def test_offsets_and_seeds_give_uncorrelated_streams():
    n = 2**18
    base = draw_noise(n, 99, 0).double()
    for other in (draw_noise(n, 99, 1), draw_noise(n, 99, 2**32), draw_noise(n, 100, 0)):
        r = torch.corrcoef(torch.stack([base, other.double()]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n)


def test_deterministic_and_prefix_consistent():
    a, b = draw_noise(10_001, 3, 5), draw_noise(10_001, 3, 5)
    assert torch.equal(a, b)
    assert torch.equal(draw_noise(37, 3, 5), a[:37])  # noise depends on the element index only
    assert not torch.equal(draw_noise(10_001, 3, 6), a)


def test_thread_count_does_not_change_results():
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            x = torch.linspace(-3, 3, 300_007)
            results.append(sgld_step_(x, torch.cos(x), 0.3, 0.5, seed=11, offset=2, clamp=2.5))
            results.append(buffer_draw(torch.randn(64, 3, 5, 5, generator=torch.Generator().manual_seed(1)),
                                       torch.arange(1000).flip(0) % 64, 0.5, seed=4)[0])  # 75k elements: split
    finally:
        torch.set_num_threads(before)
    for i in range(2, len(results)):
        assert torch.equal(results[i], results[i % 2])


def test_device_offset_tensor_equals_int_offset():
    assert torch.equal(draw_noise(999, 8, torch.tensor(41)), draw_noise(999, 8, 41))
    assert torch.equal(draw_noise(999, 8, torch.tensor([41])), draw_noise(999, 8, 41))


# --- the update ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", SGLD_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 3, 7, 7), (64, 3, 8, 9)])
@pytest.mark.parametrize("clamp", [None, 1.0, (-0.5, 2.0)])
def test_exact_without_noise(gen, device, dtype, shape, clamp):
    x = (torch.randn(*shape, generator=gen) * 2).to(dtype)
    g = (torch.randn(*shape, generator=gen) * 3).to(dtype)
    bounds = (-clamp, clamp) if isinstance(clamp, float) else clamp
    expected = reference.sgld_step(x, g, 0.37, 0.0, torch.zeros(shape), bounds)
    out = sgld_step_(x.to(device), g.to(device), 0.37, 0.0, seed=5, clamp=clamp).cpu()
    assert out.dtype == dtype
    assert torch.equal(out, expected)


@pytest.mark.parametrize("device", SGLD_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", SIZES)
def test_update_with_noise_matches_reference(gen, device, dtype, numel):
    x = torch.randn(numel, generator=gen).to(dtype)
    g = torch.randn(numel, generator=gen).to(dtype)
    noise = reference.philox_normal(numel, 17, 3)
    expected = reference.sgld_step(x, g, 1.0, 0.01, noise, (-1.0, 1.0))
    out = sgld_step_(x.to(device), g.to(device), 1.0, 0.01, seed=17, offset=3, clamp=(-1.0, 1.0)).cpu()
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=tol)


def test_in_place_returns_x_and_accepts_leaves_that_require_grad():
    x = torch.ones(10, requires_grad=True)
    out = sgld_step_(x, torch.ones(10), 0.5, 0.0)
    assert out is x and torch.equal(x.detach(), torch.full((10,), 0.5))


def test_non_contiguous_inputs_update_the_view(gen):
    base = torch.randn(6, 8, generator=gen)
    g = torch.randn(8, 6, generator=gen).t()  # non-contiguous grad
    view = base.clone()[:, ::2]  # non-contiguous x
    expected = reference.sgld_step(view, g[:, ::2], 0.2, 0.1, reference.philox_normal(24, 1, 1).reshape(6, 4))
    out = sgld_step_(view, g[:, ::2], 0.2, 0.1, seed=1, offset=1)
    assert out is view
    torch.testing.assert_close(view, expected, rtol=0, atol=1e-6)


def test_nan_propagates_through_clamp():
    x = torch.tensor([float("nan"), 5.0])
    sgld_step_(x, torch.zeros(2), 1.0, 0.0, clamp=1.0)
    assert math.isnan(x[0].item()) and x[1].item() == 1.0


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
        (dict(x=torch.zeros(4, dtype=torch.float64)), TypeError, "x must have dtype"),
        (dict(x=torch.zeros(4, dtype=torch.int32)), TypeError, "x must have dtype"),
        (dict(grad=torch.zeros(4, dtype=torch.float16)), TypeError, "grad must have x's dtype"),
        (dict(grad=torch.zeros(1)), ValueError, "grad must have x's shape"),
        (dict(grad=torch.zeros(2, 2)), ValueError, "grad must have x's shape"),
        (dict(grad=torch.zeros(4, device="meta")), ValueError, "grad must be on x's device"),
        (dict(step_size=float("nan")), ValueError, "step_size must be a finite real"),
        (dict(noise_std=-1.0), ValueError, "noise_std must be >= 0"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(seed=2**64), ValueError, "seed must be <="),
        (dict(seed=1.5), TypeError, "seed must be an int"),
        (dict(offset=-2), ValueError, "offset must be >= 0"),
        (dict(offset=torch.tensor(1.0)), ValueError, "offset tensor must be a one-element int64"),
        (dict(offset=torch.tensor([1, 2])), ValueError, "offset tensor must be a one-element int64"),
        (dict(clamp=(1.0, -1.0)), ValueError, "clamp must be"),
        (dict(clamp=-1.0), ValueError, "clamp must be > 0"),
        (dict(clamp="big"), ValueError, "clamp must be None"),
    ],
)
def test_sgld_bad_input_names_the_argument(kwargs, error, match):
    args = dict(x=torch.zeros(4), grad=torch.zeros(4), step_size=1.0, noise_std=0.1) | kwargs
    with pytest.raises(error, match=match):
        sgld_step_(**args)


def test_raw_op_checks_its_arguments():
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        torch.ops.gedi_fast.sgld_step_(torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                                       1.0, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.gedi_fast.sgld_step_(torch.zeros(4, 4).t(), torch.zeros(4, 4), 1.0, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match="device_offset must be a one-element int64"):
        torch.ops.gedi_fast.sgld_step_(torch.zeros(4), torch.zeros(4), 1.0, 0.0, 0, 0, torch.zeros(2))
    shared = torch.zeros(3, 4)
    with pytest.raises(RuntimeError, match="grad must not share memory with x"):
        torch.ops.gedi_fast.sgld_step_(shared, shared, 1.0, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match="grad must not share memory with x"):
        torch.ops.gedi_fast.sgld_step_(shared.view(-1)[:8], shared.view(-1)[4:], 1.0, 0.0, 0, 0)


def test_grad_sharing_memory_with_x_is_refused_and_neighbours_are_not():
    shared = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="grad must not share memory with x"):
        sgld_step_(shared, shared, 0.1, 0.0)
    with pytest.raises(ValueError, match="grad must not share memory with x"):
        sgld_step_(shared[:2], shared[1:], 0.1, 0.0)  # rows 1 overlap
    whole = torch.ones(2, 4)
    sgld_step_(whole[0], whole[1], 0.5, 0.0)  # one storage, disjoint rows: fine
    assert whole[0].tolist() == [0.5] * 4


# --- the replay-buffer draw ---------------------------------------------------------------------

@pytest.mark.parametrize("device", SGLD_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_shape", [(), (3,), (5,), (3, 7, 7)])
@pytest.mark.parametrize("reinit_prob", [0.0, 0.05, 0.5, 1.0])
def test_buffer_draw_matches_reference_exactly(gen, device, dtype, row_shape, reinit_prob):
    buffer = torch.randn(50, *row_shape, generator=gen).to(dtype)
    indices = torch.randint(0, 50, (37,), generator=gen)
    out, reinit = (t.cpu() for t in buffer_draw(buffer.to(device), indices.to(device), reinit_prob, -1.0, 1.0,
                                                  seed=21, offset=4))
    want_out, want_reinit = reference.buffer_draw(buffer, indices, reinit_prob, -1.0, 1.0, 21, 4)
    assert out.shape == (37, *row_shape) and out.dtype == dtype and reinit.dtype == torch.bool
    assert torch.equal(reinit, want_reinit)
    assert torch.equal(out, want_out)
    assert torch.equal(out[~reinit], buffer[indices][~reinit])
    if reinit.any():
        fresh = out[reinit].float()
        assert fresh.min() >= -1.0 and fresh.max() <= 1.0


def test_buffer_draw_reinit_rate_and_range():
    buffer = torch.full((10_000, 4), 7.0)
    out, reinit = buffer_draw(buffer, torch.arange(10_000), 0.05, low=2.0, high=3.0, seed=6)
    rate = reinit.double().mean().item()
    assert abs(rate - 0.05) < 5 * math.sqrt(0.05 * 0.95 / 10_000)
    fresh = out[reinit]
    assert fresh.min() >= 2.0 and fresh.max() < 3.0 and abs(fresh.mean().item() - 2.5) < 0.02
    assert torch.equal(out[~reinit], buffer[~reinit])
    assert stats.kstest(fresh.reshape(-1).numpy(), "uniform", args=(2.0, 1.0)).pvalue > 1e-3


def test_buffer_draw_empty_indices():
    out, reinit = buffer_draw(torch.zeros(5, 3), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 3) and reinit.shape == (0,)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(buffer=torch.zeros(0, 3)), ValueError, "buffer must have at least one non-empty row"),
        (dict(buffer=torch.zeros(5, 0)), ValueError, "buffer must have at least one non-empty row"),
        (dict(buffer=torch.zeros(5, 3, dtype=torch.float64)), TypeError, "buffer must have dtype"),
        (dict(indices=torch.zeros(2, dtype=torch.int32)), TypeError, "indices must be a 1-D int64"),
        (dict(indices=torch.zeros(2, 1, dtype=torch.int64)), TypeError, "indices must be a 1-D int64"),
        (dict(reinit_prob=1.5), ValueError, "reinit_prob must lie in"),
        (dict(reinit_prob=-0.1), ValueError, "reinit_prob must be >= 0"),
        (dict(low=1.0, high=1.0), ValueError, "low must be below high"),
    ],
)
def test_buffer_draw_bad_input_names_the_argument(kwargs, error, match):
    args = dict(buffer=torch.zeros(5, 3), indices=torch.zeros(2, dtype=torch.int64)) | kwargs
    with pytest.raises(error, match=match):
        buffer_draw(**args)


@pytest.mark.parametrize("bad_index", [5, -1])
def test_buffer_draw_rejects_out_of_range_indices(bad_index):
    with pytest.raises(RuntimeError, match=r"indices\[1\] = .* is outside the buffer's 5 rows"):
        buffer_draw(torch.zeros(5, 3), torch.tensor([0, bad_index]))


# --- registration -------------------------------------------------------------------------------

@pytest.mark.parametrize("device", SGLD_DEVICES)
def test_opcheck_sgld_step(gen, device):
    x = torch.randn(3, 17, generator=gen).to(device)
    g = torch.randn(3, 17, generator=gen).to(device)
    offset = torch.tensor(4, device=device)
    for args in [(x, g, 0.1, 0.01, 3, 4, None, None, None), (x, g, 0.1, 0.01, 3, 0, offset, -1.0, 1.0)]:
        torch.library.opcheck(torch.ops.gedi_fast.sgld_step_.default, args)


@pytest.mark.parametrize("device", SGLD_DEVICES)
def test_opcheck_buffer_draw(gen, device):
    buffer = torch.randn(20, 3, 4, generator=gen).to(device)
    idx = torch.randint(0, 20, (7,), generator=gen).to(device)
    torch.library.opcheck(torch.ops.gedi_fast.buffer_draw.default, (buffer, idx, 0.3, -1.0, 1.0, 2, 9, None))


def test_sgld_step_compiles_fullgraph(gen):
    def chain(x, g):
        for step in range(3):
            torch.ops.gedi_fast.sgld_step_(x, g, 0.1, 0.01, 5, step, None, -1.0, 1.0)
        return x

    x = torch.randn(130, generator=gen)
    g = torch.randn(130, generator=gen)
    compiled = torch.compile(chain, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x.clone(), g), chain(x.clone(), g), rtol=0, atol=0)


def test_cuda_tensors_never_meet_the_generic_dispatcher_error():
    for op in ("gedi_fast::sgld_step_", "gedi_fast::buffer_draw"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")


@pytest.mark.skipif(gedi_fast.CUDA_KERNELS_BUILT, reason="this build has CUDA kernels")
def test_build_without_cuda_kernels_explains_itself_to_cuda_callers():
    # Route CPU tensors to the CUDA kernel: builds without CUDA kernels register one that says why.
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    calls = [
        lambda: torch.ops.gedi_fast.sgld_step_.default.redispatch(
            cuda, torch.zeros(4), torch.zeros(4), 1.0, 0.0, 0, 0, None, None, None),
        lambda: torch.ops.gedi_fast.buffer_draw.default.redispatch(
            cuda, torch.zeros(4, 2), torch.zeros(2, dtype=torch.int64), 0.1, -1.0, 1.0, 0, 0, None),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="gedi_fast was built without CUDA kernels"):
            call()


def test_chain_step_skips_the_checks_but_not_the_math():
    from gedi_fast.ops.sgld import SGLDChainStep

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(33, 3, generator=gen)
    grads = [torch.randn(33, 3, generator=gen) for _ in range(3)]
    expected = x.clone()
    step = SGLDChainStep(0.3, 0.05, 2**64 - 7, clamp=(-1.0, 1.5))
    for k, grad in enumerate(grads):
        gedi_fast.sgld_step_(expected, grad, 0.3, 0.05, seed=2**64 - 7, offset=10 + k, clamp=(-1.0, 1.5))
        step(x, grad, torch.tensor([10 + k]))
    assert step.checked and torch.equal(x, expected)
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        SGLDChainStep(0.3, -1.0, 0)
