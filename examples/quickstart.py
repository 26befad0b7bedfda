"""A first look at gedi_fast's building blocks on CPU (the full trainer arrives with `gedi-fast train`).

1. GEDILoss on two views and SGLD samples: the loss and its separate terms.
2. sinkhorn_knopp: balanced assignments where argmax would put everything in one cluster.
3. buffer_draw + sgld_step_: JEM's persistent chain sampling a known energy (a Gaussian mixture),
   with the samples' energy before and after, and the fused step's speed next to eager torch.
"""
from __future__ import annotations

import time

import torch

from gedi_fast import GEDILoss, buffer_draw, sgld_step_, sinkhorn_knopp

TEMPERATURE = 0.1
CENTRES = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])


def mixture_logits(x: torch.Tensor) -> torch.Tensor:
    """Logits whose energy -logsumexp(z / T) is a mixture of unit Gaussians around CENTRES."""
    return -0.5 * torch.cdist(x, CENTRES).square() * TEMPERATURE


def show_loss(generator: torch.Generator) -> None:
    z1, z2, zn = (torch.randn(256, 10, generator=generator) for _ in range(3))
    loss, terms = GEDILoss(temperature=TEMPERATURE)(z1, z2, zn, return_terms=True)
    print(f"GEDILoss on random logits (B=256, K=10): loss={loss.item():.4f}")
    print("  " + "  ".join(f"{name}={value.item():.4f}" for name, value in terms.items()))


def show_sinkhorn(generator: torch.Generator) -> None:
    scores = torch.randn(512, 4, generator=generator) * 0.1 + torch.tensor([1.0, 0.0, 0.0, 0.0])
    by_argmax = torch.bincount(scores.argmax(1), minlength=4).tolist()
    by_sinkhorn = torch.bincount(sinkhorn_knopp(scores, eps=0.05, iters=3).argmax(1), minlength=4).tolist()
    print(f"cluster sizes of 512 skewed samples: argmax {by_argmax}, Sinkhorn-Knopp {by_sinkhorn}")


def show_sgld(generator: torch.Generator) -> None:
    buffer = torch.rand(10_000, 2, generator=generator) * 8 - 4
    indices = torch.randint(0, buffer.shape[0], (1024,), generator=generator)
    x, fresh = buffer_draw(buffer, indices, reinit_prob=0.05, low=-4.0, high=4.0, seed=0, offset=0)
    energy = lambda v: -torch.logsumexp(mixture_logits(v) / TEMPERATURE, dim=1)  # noqa: E731
    before = energy(x).mean().item()
    for step in range(200):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        sgld_step_(x, grad, step_size=0.05, noise_std=0.01, seed=0, offset=step, clamp=4.0)
    x = x.detach()
    near = (torch.cdist(x, CENTRES).min(1).values < 1.0).float().mean().item()
    print(f"SGLD on a 3-Gaussian energy: {int(fresh.sum())} of 1024 rows re-initialised; mean energy "
          f"{before:.2f} -> {energy(x).mean().item():.2f}; {near:.0%} of samples within 1 of a centre")

    n = 786_432
    xs, grads = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    eager = lambda: xs.add_(grads, alpha=-1.0).add_(torch.randn_like(xs), alpha=0.01)  # noqa: E731
    fused = lambda: sgld_step_(xs, grads, 1.0, 0.01, seed=1, offset=2)  # noqa: E731
    timings = {}
    for name, fn in (("eager torch", eager), ("gedi_fast.sgld_step_", fused)):
        fn()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        timings[name] = (time.perf_counter() - start) / 20 * 1e6
    print(f"SGLD update + noise, {n} floats, {torch.get_num_threads()} threads, mean of 20 calls: "
          + ", ".join(f"{k} {v:.0f} us" for k, v in timings.items())
          + "; see `make bench` for measured benchmarks")


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    show_loss(generator)
    show_sinkhorn(generator)
    show_sgld(generator)


if __name__ == "__main__":
    main()
