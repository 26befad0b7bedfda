"""Batched, on-device view augmentations (no torchvision): Gaussian jitter for vectors, rotation about
the origin plus jitter for rotation-symmetric 2-D data, crop/flip/colour jitter/noise for images, and
small rotations, scalings and shifts without a flip for images whose mirror is another class (digits).
Every draw comes from the caller's generator, so runs replay.

`strength` in [0, 1] scales every random transform but the view noise (TrainConfig.view_warmup ramps
it in): at 0 a view is its input plus noise, at 1 (the default) the full augmentation.

The augmentations decide what a cluster means: the invariance term only separates groups that no
augmentation carries into each other, so they should encode the data's known symmetries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from gedi_fast.validation import require_fraction


def jitter(x: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """x plus N(0, scale^2) noise."""
    return x + scale * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def rotate_and_jitter(x: torch.Tensor, scale: float, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """2-D points rotated about the origin by a uniform random angle each (within +-pi strength), then jittered."""
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"rotation views need N x 2 points, got x of shape {tuple(x.shape)}")
    strength = require_fraction(strength, "strength")
    angle = (2 * torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) - 1) * (torch.pi * strength)
    cos, sin = angle.cos(), angle.sin()
    rotated = torch.stack([cos * x[:, 0] - sin * x[:, 1], sin * x[:, 0] + cos * x[:, 1]], dim=1)
    return jitter(rotated, scale, generator)


def augment_images(x: torch.Tensor, generator: torch.Generator, pad: int = 4, noise: float = 0.02,
                   strength: float = 1.0) -> torch.Tensor:
    """Random crop (reflect-padded by `pad`), horizontal flip, brightness/contrast jitter and noise, per image;
    `strength` scales the crop's reach (rounded to whole pixels), the flip's chance and the jitters."""
    n, _, h, w = x.shape
    strength = require_fraction(strength, "strength")
    uniform = lambda *shape: torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)  # noqa: E731
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    reach = round(pad * strength)
    top = (uniform(n) * (2 * reach + 1)).long().clamp_max(2 * reach) + (pad - reach)
    left = (uniform(n) * (2 * reach + 1)).long().clamp_max(2 * reach) + (pad - reach)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    flip = uniform(n) < 0.5 * strength
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    brightness = (uniform(n, 1, 1, 1) - 0.5) * (0.4 * strength)
    contrast = 1.0 + (uniform(n, 1, 1, 1) - 0.5) * (0.4 * strength)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    out = out + noise * torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype)
    return out.clamp(-1.0, 1.0)


def grey_dilation3(x: torch.Tensor) -> torch.Tensor:
    """The max over each pixel's 3 x 3 neighbourhood (N x C x H x W), exactly F.max_pool2d(x, 3, 1, 1):
    nine maxima of shifted views, several times faster on small images, where max_pool2d also
    computes the indices of its maxima."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    out = padded[..., 1:1 + height, 1:1 + width]
    for row in range(3):
        for col in range(3):
            if (row, col) != (1, 1):
                out = torch.maximum(out, padded[..., row:row + height, col:col + width])
    return out


def affine_images(x: torch.Tensor, generator: torch.Generator, degrees: float = 15.0, scale: float = 0.1,
                  shift: float = 0.1, noise: float = 0.02, stroke: float = 0.5, strength: float = 1.0) -> torch.Tensor:
    """Per image: with probability `stroke` a thicker or a thinner stroke (a 3 x 3 grey dilation or
    erosion, half each), a rotation within +-`degrees`, a zoom within 1 +- `scale` and a shift within
    +-`shift` of the image size, then noise; `strength` scales all four. Stroke width is a nuisance
    clusters would otherwise follow; no flip: a mirrored digit is not the same digit."""
    n = len(x)
    strength = require_fraction(strength, "strength")
    degrees, scale, shift, stroke = degrees * strength, scale * strength, shift * strength, stroke * strength
    uniform = lambda: 2 * torch.rand(n, generator=generator, device=x.device, dtype=x.dtype) - 1  # noqa: E731
    pick = uniform()[:, None, None, None]
    thicker, thinner = grey_dilation3(x), -grey_dilation3(-x)
    x = torch.where(pick > 1 - stroke, thicker, torch.where(pick < stroke - 1, thinner, x))
    angle = uniform() * (degrees * torch.pi / 180)
    zoom = 1 + uniform() * scale
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin, 2 * shift * uniform()], 1),
                         torch.stack([sin, cos, 2 * shift * uniform()], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)  # fill what moves in with each image's own background
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    out = out + noise * torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype)
    return out.clamp(-1.0, 1.0)


def _jitter_views(x: torch.Tensor, noise: float, generator: torch.Generator, strength: float) -> torch.Tensor:
    return jitter(x, noise, generator)


def _rotation_views(x: torch.Tensor, noise: float, generator: torch.Generator, strength: float) -> torch.Tensor:
    return rotate_and_jitter(x, noise, generator, strength)


def _image_views(x: torch.Tensor, noise: float, generator: torch.Generator, strength: float) -> torch.Tensor:
    return augment_images(x, generator, noise=noise, strength=strength)


def _affine_views(x: torch.Tensor, noise: float, generator: torch.Generator, strength: float) -> torch.Tensor:
    return affine_images(x, generator, noise=noise, strength=strength)


@dataclass(frozen=True)
class Augmentation:
    """One way of making a view, `view(x, noise, generator, strength)`, and the data it fits: a dataset kind
    ("image" or "vector"; None: any) and, where it has one, the only input shape."""

    view: Callable[[torch.Tensor, float, torch.Generator, float], torch.Tensor]
    kind: str | None = None
    input_shape: tuple[int, ...] | None = None

    def fits(self, kind: str, input_shape: tuple[int, ...]) -> bool:
        return self.kind in (None, kind) and self.input_shape in (None, tuple(input_shape))


# Every augmentation by the name a config, a dataset and the command line use: the one list of them.
AUGMENTATIONS = {
    "jitter": Augmentation(_jitter_views),  # the view noise is the whole augmentation: strength leaves it be
    "rotation": Augmentation(_rotation_views, "vector", (2,)),  # about the origin of 2-D points
    "image": Augmentation(_image_views, "image"),
    "affine": Augmentation(_affine_views, "image"),
}
