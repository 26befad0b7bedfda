"""The per-row softmax quantities every reference op is built from, in the compute dtype."""
from __future__ import annotations

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def scaled_log_softmax(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, logsumexp) of s = z / temperature, row-wise."""
    s = z.to(compute_dtype(z)) / temperature
    lse = torch.logsumexp(s, dim=-1)
    return s - lse.unsqueeze(-1), lse


def energy(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """JEM's energy E(x) = -logsumexp_k z_k(x) / temperature, one value per row."""
    return -torch.logsumexp(z.to(compute_dtype(z)) / temperature, dim=-1)


def energy_grad(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """dE/dz = -softmax(z / temperature) / temperature, in z's dtype: SGLD's gradient at the logits in
    closed form (one softmax where autograd would replay logsumexp's half a dozen ops and their backward)."""
    scaled = z.detach().to(compute_dtype(z)) / temperature
    return torch.softmax(scaled, dim=-1).mul_(-1.0 / temperature).to(z.dtype)
