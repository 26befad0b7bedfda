"""GPU lane: the CUDA SGLD kernels bitwise against the CPU kernels for the same seeds, and under graph capture
(skipped without CUDA; their checks against the reference and opcheck: tests/test_sgld_ops.py)."""
from __future__ import annotations

import pytest
import torch

import gedi_fast
from gedi_fast import buffer_draw, reference, sgld_step_

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_cuda_kernels_were_built():
    assert gedi_fast.CUDA_KERNELS_BUILT, "CUDA device present but gedi_fast._C was built without CUDA kernels"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 3, 5, 1001, 4097, 786_432, 2**24 + 3])
@pytest.mark.parametrize("clamp", [None, (-1.0, 1.0)])
def test_sgld_cuda_equals_cpu(dtype, numel, clamp):
    gen = torch.Generator().manual_seed(numel)
    x = torch.randn(numel, generator=gen).to(dtype)
    g = torch.randn(numel, generator=gen).to(dtype)
    cpu = sgld_step_(x.clone(), g, 0.7, 0.05, seed=2**63 + 9, offset=12, clamp=clamp)
    cuda = sgld_step_(x.cuda(), g.cuda(), 0.7, 0.05, seed=2**63 + 9, offset=12, clamp=clamp)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=0)


def test_cuda_noise_equals_cpu_noise_and_reference():
    n = 1_000_003
    cuda = sgld_step_(torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda"), 0.0, 1.0, seed=5, offset=77)
    cpu = sgld_step_(torch.zeros(n), torch.zeros(n), 0.0, 1.0, seed=5, offset=77)
    assert torch.equal(cuda.cpu(), cpu)
    torch.testing.assert_close(cpu.double(), reference.philox_normal(n, 5, 77), rtol=0, atol=2e-6)


def test_misaligned_views_take_the_scalar_path():
    base = torch.randn(4099)
    cpu = sgld_step_(base[1:].clone(), base[:-1].clone(), 0.5, 0.1, seed=1)
    gpu_base = base.cuda()
    cuda = sgld_step_(gpu_base[1:], gpu_base[:-1].clone(), 0.5, 0.1, seed=1)
    assert cuda.data_ptr() % 16 != 0
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_shape", [(), (3,), (5,), (3, 32, 32)])
def test_buffer_draw_cuda_equals_cpu(dtype, row_shape):
    gen = torch.Generator().manual_seed(3)
    buffer = torch.randn(300, *row_shape, generator=gen).to(dtype)
    idx = torch.randint(0, 300, (129,), generator=gen)
    out_cpu, mask_cpu = buffer_draw(buffer, idx, 0.3, seed=4, offset=5)
    out_gpu, mask_gpu = buffer_draw(buffer.cuda(), idx.cuda(), 0.3, seed=4, offset=5)
    assert torch.equal(mask_gpu.cpu(), mask_cpu)
    assert torch.equal(out_gpu.cpu(), out_cpu)


def test_graph_replays_draw_fresh_noise_from_a_device_offset():
    n = 10_000
    x = torch.zeros(n, device="cuda")
    zero = torch.zeros(n, device="cuda")
    offset = torch.zeros((), dtype=torch.int64, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        sgld_step_(x, zero, 0.0, 1.0, seed=3, offset=offset)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.zero_()
        sgld_step_(x, zero, 0.0, 1.0, seed=3, offset=offset)
        offset.add_(1)
    offset.zero_()
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(x.cpu().clone())
    for k, drawn in enumerate(draws):
        assert torch.equal(drawn, sgld_step_(torch.zeros(n), torch.zeros(n), 0.0, 1.0, seed=3, offset=k))
    assert not torch.equal(draws[0], draws[1])


def test_reference_loss_runs_on_cuda():
    z1, z2, zn = (torch.randn(64, 10, device="cuda", requires_grad=True) for _ in range(3))
    loss = gedi_fast.GEDILoss()(z1, z2, zn)
    loss.backward()
    cpu = gedi_fast.GEDILoss()(z1.detach().cpu(), z2.detach().cpu(), zn.detach().cpu())
    torch.testing.assert_close(loss.detach().cpu(), cpu, rtol=1e-5, atol=1e-5)
