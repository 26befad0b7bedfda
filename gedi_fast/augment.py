"""Batched, on-device view augmentations (no torchvision): Gaussian jitter for vectors; crop, flip,
colour jitter and noise for images. Every draw comes from the caller's generator, so runs replay."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """x plus N(0, scale^2) noise."""
    return x + scale * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def augment_images(x: torch.Tensor, generator: torch.Generator, pad: int = 4, noise: float = 0.02) -> torch.Tensor:
    """Random crop (reflect-padded by `pad`), horizontal flip, brightness/contrast jitter and noise, per image."""
    n, _, h, w = x.shape
    uniform = lambda *shape: torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)  # noqa: E731
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    top = (uniform(n) * (2 * pad + 1)).long().clamp_max(2 * pad)
    left = (uniform(n) * (2 * pad + 1)).long().clamp_max(2 * pad)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    flip = uniform(n) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    brightness = (uniform(n, 1, 1, 1) - 0.5) * 0.4
    contrast = 1.0 + (uniform(n, 1, 1, 1) - 0.5) * 0.4
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    out = out + noise * torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype)
    return out.clamp(-1.0, 1.0)
