"""GEDI in your own training loop: your model, your views, your optimiser; gedi_fast's GEDILoss and
SGLDSampler. Clusters the two moons with a small MLP on the CPU in a few seconds.

    python examples/own_loop.py [--steps 1000] [--seed 0]

The sampler must use the loss's temperature: the chain follows dE/dx of E(x) = -logsumexp(z / T),
the energy GEDILoss's gen term compares.
"""
from __future__ import annotations

import argparse

import torch
from sklearn.datasets import make_moons
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from gedi_fast import GEDILoss, SGLDConfig, SGLDSampler


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    points, labels = make_moons(n_samples=2000, noise=0.1, random_state=args.seed)
    x = torch.tensor(points, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)

    model = nn.Sequential(nn.Linear(2, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, 2))
    loss_fn = GEDILoss(temperature=0.1, energy_reg=0.1)
    sampler = SGLDSampler((2,), SGLDConfig(steps=20, step_size=0.01, noise_std=0.1, buffer_size=2000,
                                           init_low=float(x.min()), init_high=float(x.max())),
                          temperature=loss_fn.temperature, seed=args.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    for step in range(1, args.steps + 1):
        batch = x[torch.randint(0, len(x), (256,))]
        view1, view2 = batch + 0.15 * torch.randn_like(batch), batch + 0.15 * torch.randn_like(batch)
        samples = sampler.sample(model, 64)  # leaves the model's mode and gradients as they were
        loss, terms = loss_fn(model(view1), model(view2), model(samples), return_terms=True)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 200 == 0 or step == args.steps:
            print(f"step {step}: loss={loss.item():.4f} " + " ".join(
                f"{name}={terms[name].item():.4f}" for name in ("gen", "inv", "prior")))

    with torch.no_grad():
        clusters = model(x).argmax(1)
    nmi = normalized_mutual_info_score(labels, clusters.numpy())
    print(f"nmi={nmi:.4f} clusters used={clusters.unique().numel()}")
    return nmi


if __name__ == "__main__":
    main()
