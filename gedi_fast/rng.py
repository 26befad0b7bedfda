"""Every random number of gedi_fast, written once: Philox4x32-10 with the counter layout of csrc/philox.h
(in numpy, the model the C++ and CUDA kernels are checked against), its Box-Muller normals and 24-bit
uniforms, and the lowbias32 hash that picks the sampler's buffer rows (docs/DESIGN.md, random numbers).
"""
from __future__ import annotations

import numpy as np
import torch

_PHILOX_MUL = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
ROW_STREAM_BIT = 1 << 63  # counter bit of the buffer draw's per-row stream
_MASK32 = 0xFFFFFFFF


def philox4x32_10(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of an (N, 4) uint32 counter array under a 2-word key; returns (N, 4) uint32."""
    c = [counters[:, j].astype(np.uint64) for j in range(4)]
    k0, k1 = key
    for _ in range(10):
        p0 = _PHILOX_MUL[0] * c[0]
        p1 = _PHILOX_MUL[1] * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & _LOW32,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & _LOW32,
        ]
        k0 = (k0 + _PHILOX_WEYL[0]) & 0xFFFFFFFF
        k1 = (k1 + _PHILOX_WEYL[1]) & 0xFFFFFFFF
    return np.stack(c, axis=1).astype(np.uint32)


def philox_words(groups: np.ndarray, seed: int, offset: int) -> np.ndarray:
    """The four Philox words of each 64-bit counter group under (seed, offset), as (N, 4) uint32."""
    groups = groups.astype(np.uint64)
    seed, offset = seed % 2**64, offset % 2**64
    counters = np.stack(
        [
            groups & _LOW32,
            groups >> np.uint64(32),
            np.full_like(groups, offset & 0xFFFFFFFF),
            np.full_like(groups, offset >> 32),
        ],
        axis=1,
    ).astype(np.uint32)
    return philox4x32_10(counters, (seed & 0xFFFFFFFF, seed >> 32))


def element_words(numel: int, seed: int, offset: int) -> np.ndarray:
    """One 32-bit word per element: element e takes word e % 4 of group e // 4."""
    groups = np.arange((numel + 3) // 4, dtype=np.uint64)
    return philox_words(groups, seed, offset).reshape(-1)[:numel]


def philox_normal(numel: int, seed: int, offset: int) -> torch.Tensor:
    """The standard normals sgld_step_ draws for (seed, offset), by float64 Box-Muller."""
    words = element_words(4 * ((numel + 3) // 4), seed, offset).reshape(-1, 4)
    u_radius = ((words[:, 0::2] >> 8).astype(np.float64) + 1.0) * 2.0**-24
    u_angle = (words[:, 1::2] >> 8).astype(np.float64) * 2.0**-24
    radius = np.sqrt(-2.0 * np.log(u_radius))
    angle = 2.0 * np.pi * u_angle
    normals = np.stack(
        [radius[:, 0] * np.cos(angle[:, 0]), radius[:, 0] * np.sin(angle[:, 0]),
         radius[:, 1] * np.cos(angle[:, 1]), radius[:, 1] * np.sin(angle[:, 1])],
        axis=1,
    )
    return torch.from_numpy(normals.reshape(-1)[:numel].copy())


def unit_uniform(words: np.ndarray) -> np.ndarray:
    """Uniform in [0, 1) on a 2^-24 grid, as float32."""
    return (words >> 8).astype(np.float32) * np.float32(2.0**-24)


def mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """Wellons' lowbias32 hash of 32-bit values held in int64 (tensors or ints alike).

    Both multipliers are below 2**31, so no int64 product overflows and the CPU, CUDA and Python
    results are the same numbers.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def call_key(seed: int, calls: torch.Tensor | int) -> torch.Tensor | int:
    """The sampler's per-call hash key of (seed, calls): row r of that call is mix32(mix32(r) ^ key) mod the buffer size."""
    key = mix32(mix32(seed & _MASK32) ^ mix32(seed >> 32))
    return mix32(mix32(key ^ (calls & _MASK32)) ^ (calls >> 32))
