"""Cluster models: an MLP for vectors and a small residual CNN for images, each ending in a K-way head.

Both use smooth activations (SiLU) and no batch norm, so SGLD's input gradients are well defined
and sampling in eval mode sees the same network as training (JEM's batch-norm trouble, #13).
`features(x)` returns the embedding before the head, which the failure-mode monitor inspects.
"""
from __future__ import annotations

import torch
from torch import nn

from gedi_fast.train.metrics import logit_spread
from gedi_fast.validation import require_real


class MLPClusterer(nn.Module):
    """in_features -> depth x (Linear, SiLU) of width hidden -> Linear to `clusters` logits."""

    def __init__(self, in_features: int, clusters: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, clusters)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1)
        self.shortcut = (
            nn.Identity() if stride == 1 and channels_in == channels_out else nn.Conv2d(channels_in, channels_out, 1, stride)
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


POOLS = ("mean", "flatten")


class SmallResNet(nn.Module):
    """A ResNet-8-style CNN: stem, three residual stages (width, 2x, 4x; stride 1, 2, 2), then the head.

    stem_stride 2 halves the resolution before the first stage: about 3.5x less compute at width 32
    on 28 x 28 inputs, what makes image training fit a CPU (docs/RESULTS.md). `pool` says what the head
    sees: "mean", the last stage averaged over positions (a texture's statistics: where a stroke lies
    does not matter), or "flatten", the whole last feature map (where it lies does: a digit's shape).
    """

    def __init__(self, in_channels: int, clusters: int, width: int = 32, stem_stride: int = 1,
                 pool: str = "mean", input_size: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        self.pool = pool
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stem_stride, 1), nn.SiLU())
        self.stages = nn.Sequential(
            _ResidualBlock(width, width, 1), _ResidualBlock(width, 2 * width, 2), _ResidualBlock(2 * width, 4 * width, 2)
        )
        positions = 1
        if pool == "flatten":
            for stride in (stem_stride, 2, 2):  # each 3 x 3 convolution with padding 1: ceil(size / stride)
                input_size = tuple(-(-size // stride) for size in input_size)
            positions = input_size[0] * input_size[1]
        self.head = nn.Linear(4 * width * positions, clusters)
        # He initialisation: torch's default conv init shrinks every layer's output, and without batch
        # norm seven layers leave features that differ between MNIST images by ~0.002 (0.16 with this),
        # logits nearly equal for all inputs, and clusters that follow stroke width instead of shape.
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.stages(self.stem(x))
        return maps.mean(dim=(2, 3)) if self.pool == "mean" else maps.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(input_shape: tuple[int, ...], clusters: int, hidden: int = 256, width: int = 32,
                stem_stride: int = 1, pool: str = "mean") -> nn.Module:
    """An MLP of `hidden` units for vector inputs (D,), a SmallResNet of `width`, `stem_stride` and
    `pool` for images (C, H, W)."""
    if clusters < 2:
        raise ValueError(f"clusters must be >= 2, got {clusters}")
    if len(input_shape) == 1:
        return MLPClusterer(input_shape[0], clusters, hidden)
    if len(input_shape) == 3:
        return SmallResNet(input_shape[0], clusters, width, stem_stride, pool, tuple(input_shape[1:]))
    raise ValueError(f"input_shape must be (D,) for vectors or (C, H, W) for images, got {input_shape}")


@torch.no_grad()
def spread_head(model: nn.Module, x: torch.Tensor, temperature: float, spread: float) -> None:
    """Data-dependent init of `model.head` on the batch x: its weights scaled so the scaled logits z / T
    differ between x's rows by `spread` (their standard deviation over the rows, averaged over the
    clusters), its bias set so every cluster's mean logit over x is 0.

    Why: at the default init an image network's logits barely depend on the input (a spread near 0.5
    at T = 0.1) and one cluster takes most inputs; the prior's gradient, tens of times the invariance
    term's, then flattens every output within a few dozen steps and the run sits on the uniform
    plateau. Balanced, input-dependent logits give the clustering terms something to sharpen instead."""
    spread = require_real(spread, "spread", positive=True)
    features = model.features(x).float()
    head = model.head
    current = logit_spread(head(features), temperature)
    if not torch.isfinite(current) or current <= 0:
        raise ValueError(f"the head's logits do not vary over the {len(x)} given inputs (spread {current.item():g})")
    head.weight.mul_(spread / current)
    head.bias.copy_(-head.weight @ features.mean(0))
