"""The stated numeric tolerances: how far any backend may lie from the float64 reference.

The float64 reference runs on the same input values (fp16/bf16 logits upcast exactly). Internals run
in float32, so the floor is float32's rounding of the scaled logits s = z / temperature (z / eps for
Sinkhorn targets). With u = 2**-24 and S = max(1, max|z| / temperature) (divided by min(temperature,
eps) when Sinkhorn targets are used):

- every term: |got - ref| <= 32 u S max(1, |ref|) (gen, a difference of energies: max(1, |ref|, |energies|);
  the loss: the weighted sum of its terms' bounds);
- every gradient (largest entry error): <= G (r + 4 u S (1 + S)) + a, where G = max(max|ref|, G0) is
  the gradient's scale, G0 = (|gen w| + |inv w| + |prior w| + 2 energy_reg S) / (rows x temperature), and r, a
  are the output dtype's relative rounding (2**-24, 2**-11, 2**-8 for fp32, fp16, bf16) and half
  fp16's smallest subnormal. The S**2: the inv gradient weighs log q (up to 2S) with q, whose float32
  rounding is u S relative, so near-tied logits at large S are ill-conditioned for any float32 code;
- Sinkhorn assignments: |got - ref| <= 16 u max(1, max|scores| / eps) per entry.

Gradients are returned in the logits' dtype, so an entry whose exact value lies beyond the dtype's
range (fp16: 65504, e.g. the inv gradient ~ |z| / (rows temperature**2) of two views that disagree at
|z| = 1e4) is inf with the right sign; every other entry is finite and within the bound.

Measured worst cases over 1500 random cases on the reference backend and 80 on the Triton kernels
(interpreter), scales 1e-2 to 1e4: 10.4, 0.75 and 3.4 of these units.

At the edge (|z| up to 1e4, temperature 0.05, eps 0.01: S = 2e5, where one float32 ulp of s is 0.016)
the general bounds say little, so the edge tests state their own: terms within EDGE_TERM_RTOL of
max(1, |ref|), gradients within EDGE_GRAD_RTOL of G, Sinkhorn assignments within EDGE_SINKHORN_ATOL
(measured worst: 9e-4, 8.3e-2 and 3.9e-5; the gradient error comes from near-tied logits as above).
"""
from __future__ import annotations

import math

import torch

from gedi_fast import GEDILoss

U = 2.0**-24
OUTPUT_ROUNDING = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float64: 0.0}
HALF_SUBNORMAL = {torch.float16: 2.0**-25}
EDGE_TERM_RTOL = 2e-3
EDGE_GRAD_RTOL = 0.15
EDGE_SINKHORN_ATOL = 2e-4
TERMS = ("gen", "inv", "prior", "energy_reg", "energy_data", "energy_neg", "cluster_entropy")


def logit_scale(zs: list[torch.Tensor], temperature: float, eps: float | None = None) -> float:
    """S: the largest |z| / temperature (or / min(temperature, eps) with Sinkhorn targets), at least 1."""
    divisor = temperature if eps is None else min(temperature, eps)
    return max(1.0, max(z.detach().abs().max().item() for z in zs) / divisor)


def sinkhorn_tolerance(scores: torch.Tensor, eps: float) -> float:
    return 16 * U * max(1.0, scores.abs().max().item() / eps)


def run(loss_fn: GEDILoss, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, dict, list[torch.Tensor]]:
    """(loss, terms, input gradients) of loss_fn on copies of inputs ([z1, z2] or [z1, z2, zn])."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    loss, terms = loss_fn(leaves[0], leaves[1], leaves[2] if len(leaves) == 3 else None, return_terms=True)
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, [t.grad for t in leaves]


def assert_matches_float64(backend: str, inputs: list[torch.Tensor], edge: bool = False, **settings) -> None:
    """GEDILoss(backend, **settings) on `inputs` against the float64 reference: finite, and within the
    general tolerances above, or the edge ones with edge=True."""
    loss_fn = GEDILoss(backend=backend, **settings)
    loss, terms, grads = run(loss_fn, inputs)
    want_loss, want_terms, want_grads = run(GEDILoss(backend="torch", **settings), [t.double() for t in inputs])
    sinkhorn = loss_fn.assignment == "sinkhorn"
    scale = logit_scale(inputs, loss_fn.temperature, loss_fn.sinkhorn_eps if sinkhorn else None)
    assert torch.isfinite(loss), loss
    size = {name: max(1.0, abs(value.item())) for name, value in want_terms.items() if not value.isnan()}
    size["gen"] = max(size["gen"], size["energy_data"], size.get("energy_neg", 1.0))  # a difference of energies
    size["loss"] = sum(abs(w) * size[name] for name, w in loss_fn.weights.items())
    for name, got, want in [("loss", loss, want_loss)] + [(n, terms[n], want_terms[n]) for n in TERMS]:
        if name == "energy_neg" and len(inputs) == 2:
            assert math.isnan(got.item())
            continue
        allowed = (EDGE_TERM_RTOL if edge else 32 * U * scale) * size[name]
        error = abs(got.double().item() - want.item())
        assert error <= allowed, f"{name}: {got.item()} vs {want.item()} (allowed {allowed:.3g})"
    weights = sum(abs(w) for name, w in loss_fn.weights.items() if name != "energy_reg")
    for i, (got, want) in enumerate(zip(grads, want_grads)):
        dtype = inputs[i].dtype
        assert got.dtype == dtype
        # Gradients come back in the logits' dtype: one beyond its range (fp16: 65504) is inf, with its sign.
        beyond = want.abs() > torch.finfo(dtype).max
        assert torch.equal(got[beyond].double(), want[beyond].sign() * math.inf), f"input {i}: overflow"
        got, want = got[~beyond], want[~beyond]
        assert torch.isfinite(got).all(), f"input {i}: gradient not finite"
        if not want.numel():
            continue
        rows = 2 * inputs[0].shape[0] if i < 2 else inputs[2].shape[0]
        floor = (weights + 2 * loss_fn.weights["energy_reg"] * scale) / (rows * loss_fn.temperature)
        size = max(want.abs().max().item(), floor)
        relative = EDGE_GRAD_RTOL if edge else OUTPUT_ROUNDING[dtype] + 4 * U * scale * (1 + scale)
        allowed = size * relative + HALF_SUBNORMAL.get(dtype, 0.0)
        error = (got.double() - want).abs().max().item()
        assert error <= allowed, f"input {i}: gradient error {error:.3g}, allowed {allowed:.3g} (scale {size:.3g})"
