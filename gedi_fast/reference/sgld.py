"""The SGLD ops in plain torch and numpy: the update and the replay-buffer draw, on the Philox streams of
gedi_fast.rng (the numbers the C++ and CUDA kernels draw)."""
from __future__ import annotations

import numpy as np
import torch

from gedi_fast.rng import ROW_STREAM_BIT, element_words, philox_words, unit_uniform
from gedi_fast.validation import require_int


def sgld_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    noise_std: float,
    noise: torch.Tensor,
    clamp: tuple[float, float] | None = None,
    grad_clamp: float | None = None,
) -> torch.Tensor:
    """clamp(x - step_size * clamp(grad, -grad_clamp, grad_clamp) + noise_std * noise) in float32 (float64
    for float64 x), returned in x's dtype (not in place)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = grad.to(compute)
    if grad_clamp is not None:
        g = g.clamp(-grad_clamp, grad_clamp)
    v = x.to(compute) - step_size * g
    v = v + noise_std * noise.to(compute)
    if clamp is not None:
        v = v.clamp(clamp[0], clamp[1])
    return v.to(x.dtype)


def buffer_draw(
    buffer: torch.Tensor,
    indices: torch.Tensor,
    reinit_prob: float,
    low: float,
    high: float,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows buffer[indices], each replaced with probability reinit_prob by U[low, high) noise.

    Row r is re-initialised when the uniform from word r % 4 of row-stream group r // 4 is below
    reinit_prob; its element e (flat index in the output) then takes word e % 4 of group e // 4.
    """
    rows = indices.shape[0]
    row_groups = np.arange((rows + 3) // 4, dtype=np.uint64) | np.uint64(ROW_STREAM_BIT)
    row_u = unit_uniform(philox_words(row_groups, seed, offset).reshape(-1)[:rows])
    reinit = torch.from_numpy(row_u < np.float32(reinit_prob))
    out = buffer[indices.cpu()].clone()
    u = unit_uniform(element_words(out.numel(), seed, offset))
    lo, hi = np.float32(low), np.float32(high)
    noise = lo + (hi - lo) * u
    noise = np.where(noise < hi, noise, lo)
    fresh = torch.from_numpy(noise).reshape(out.shape).to(out.dtype)
    out[reinit] = fresh[reinit]
    return out, reinit


def fit_gaussian_start(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, factor) of the Gaussian fitted to data's rows, in float64: factor @ factor.T is their
    covariance (the symmetric square root's eigenvector form, exact for a singular covariance).

    Informative chain starts: fresh chains that begin with the data's mean and pixel correlations
    instead of uniform noise (JEM++'s start, fitted here without labels)."""
    rows = data.reshape(data.shape[0], -1).to(torch.float64)
    mean = rows.mean(0)
    centred = rows - mean
    covariance = centred.T @ centred / max(rows.shape[0] - 1, 1)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    return mean, vectors * eigenvalues.clamp_min(0).sqrt()


def _normal_from_uniform(flat: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Standard normals from U[low, high) by the inverse CDF, z = sqrt(2) erfinv(2p - 1) with
    p = (u - low) / (high - low) kept within [2^-24, 1 - 2^-24] (so |z| < 5.4)."""
    p = ((flat - low) / (high - low)).clamp(2.0**-24, 1 - 2.0**-24)
    return torch.erfinv(2 * p - 1) * 2**0.5


def gaussian_from_uniform(u: torch.Tensor, low: float, high: float, mean: torch.Tensor,
                          factor: torch.Tensor) -> torch.Tensor:
    """Rows of N(mean, factor factor^T) made from rows of U[low, high) noise, clamped to [low, high].

    Each uniform becomes a standard normal z by the inverse CDF (_normal_from_uniform) and a row is
    mean + factor z. In float32 (float64 for float64 u), returned in u's dtype.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    flat = u.reshape(u.shape[0], -1).to(compute)
    rows = mean.to(compute) + _normal_from_uniform(flat, low, high) @ factor.to(compute).T
    return rows.clamp(low, high).reshape(u.shape).to(u.dtype)


def fit_copula_start(data: torch.Tensor, levels: int = 513) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantiles, factor) of the Gaussian copula fitted to data's rows, in float64: quantiles[i, j] is
    feature j's quantile at i / (levels - 1) (torch.quantile's linear interpolation), and factor @
    factor.T the correlation of the features' normal scores, Phi^-1((mid-rank + 1/2) / rows), tied
    values sharing their mean rank.

    Chain starts with each pixel's own distribution: a Gaussian's draws, clamped to the data's range,
    are brighter than the data (the clamp lifts a black background's negative half) and have half its
    share of black pixels, so an energy can tell them from data by their brightness; a copula draw has
    the data's brightness and background, and the Gaussian's pixel correlations."""
    rows = data.reshape(data.shape[0], -1).to(torch.float64)
    if rows.shape[0] < 2:
        raise ValueError(f"data needs at least 2 rows to fit a copula, got {rows.shape[0]}")
    require_int(levels, "levels", minimum=2)
    n = rows.shape[0]
    ordered, order = rows.T.contiguous().sort(dim=1)  # each feature's values in order, and where each came from
    place = torch.arange(n).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, place, 0).cummax(dim=1).values  # where each value's run of ties begins
    last = torch.where(ends, place, n - 1).flip(1).cummin(dim=1).values.flip(1)  # and ends
    # the normal score of each mid-rank (first + last) / 2, looked up rather than computed per element
    score_of = torch.special.ndtri((torch.arange(2 * n - 1, dtype=torch.float64) / 2 + 0.5) / n)
    scores = torch.empty_like(ordered).scatter_(1, order, score_of[first + last])  # one feature a row
    spread = scores.std(1, keepdim=True)
    standard = torch.where(spread > 0, (scores - scores.mean(1, keepdim=True)) / spread.clamp_min(1e-300), 0.0)
    _, factor = fit_gaussian_start(standard.T)
    position = torch.linspace(0, 1, levels, dtype=torch.float64) * (n - 1)  # torch.quantile's linear rule
    below = position.floor().long().clamp_max(n - 1)
    above = (below + 1).clamp_max(n - 1)
    quantiles = torch.lerp(ordered[:, below], ordered[:, above], position - below).T.contiguous()
    return quantiles, factor


def copula_from_uniform(u: torch.Tensor, low: float, high: float, quantiles: torch.Tensor,
                        factor: torch.Tensor) -> torch.Tensor:
    """Rows of the Gaussian copula (quantiles, factor) made from rows of U[low, high) noise.

    z = factor (standard normals of the row's uniforms, _normal_from_uniform) has standard normal
    features with the fitted correlations; feature j is then quantiles[:, j] read at Phi(z_j), linearly
    between levels, so it has feature j's distribution and stays within the data's range. In float32
    (float64 for float64 u), returned in u's dtype.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    flat = u.reshape(u.shape[0], -1).to(compute)
    z = _normal_from_uniform(flat, low, high) @ factor.to(compute).T
    position = torch.special.ndtr(z) * (quantiles.shape[0] - 1)
    below = position.floor().long().clamp(0, quantiles.shape[0] - 2)
    table = quantiles.to(compute)
    lower, upper = table.gather(0, below), table.gather(0, below + 1)
    return (lower + (position - below) * (upper - lower)).reshape(u.shape).to(u.dtype)


SPLIT_LEVELS = 4096  # equal bins of split_last_uniform by default: the draw keeps 12 fewer bits of the uniform


def split_last_uniform(u: torch.Tensor, low: float, high: float,
                       shares: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(u with each row's last uniform stretched back over [low, high) within its bin, each row's bin) of
    rows of U[low, high) noise: one uniform made two, a choice and a uniform, independent of each other
    and of the row's other uniforms. Bin j holds a `shares`[j] / sum(shares) slice of the range
    (default: SPLIT_LEVELS equal bins), so a row's own noise picks a mixture component or sets a
    darkening factor and still draws its start. In float32 (float64 for float64 u), returned in u's dtype."""
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    flat = u.reshape(u.shape[0], -1).to(compute)
    if shares is None:
        shares = torch.ones(SPLIT_LEVELS, dtype=compute, device=u.device)
    cumulative = shares.to(compute).cumsum(0)
    cumulative = cumulative / cumulative[-1]
    last = ((flat[:, -1] - low) / (high - low)).clamp(0, 1)
    bin_ = torch.searchsorted(cumulative, last.contiguous(), right=True).clamp_max(len(shares) - 1)
    share = cumulative[bin_] - torch.cat([cumulative.new_zeros(1), cumulative[:-1]])[bin_]
    stretched = ((last - (cumulative[bin_] - share)) / share).clamp(0, 1)
    flat = torch.cat([flat[:, :-1], (low + stretched * (high - low)).unsqueeze(1)], 1)
    return flat.reshape(u.shape).to(u.dtype), bin_


def darken_rows(rows: torch.Tensor, low: float, level: torch.Tensor, darken: float) -> torch.Tensor:
    """Each row moved toward `low` by a factor 1 - darken * v, v = level / SPLIT_LEVELS in [0, 1) from the
    row's bin among split_last_uniform's equal ones: chain starts dimmer and sparser than the data, so
    that an energy trained against them cannot take darkness for data (docs/DESIGN.md, "Where chains
    start")."""
    v = level.to(rows.dtype) / SPLIT_LEVELS
    return low + (1 - darken * v).reshape(-1, *([1] * (rows.dim() - 1))) * (rows - low)


def kmeans_groups(rows: torch.Tensor, groups: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Each row's group (0 .. groups - 1) after k-means++ seeding (from `seed`) and `iterations` Lloyd
    steps on the Euclidean distance; a centre left without rows keeps its place."""
    generator = torch.Generator().manual_seed(seed)
    centres = rows[torch.randint(len(rows), (1,), generator=generator)]
    for _ in range(1, groups):
        nearest = torch.cdist(rows, centres).amin(1) ** 2
        centres = torch.cat([centres, rows[torch.multinomial(nearest / nearest.sum(), 1, generator=generator)]])
    for _ in range(iterations):
        group = torch.cdist(rows, centres).argmin(1)
        centres = torch.stack([rows[group == g].mean(0) if bool((group == g).any()) else centres[g]
                               for g in range(groups)])
    return torch.cdist(rows, centres).argmin(1)


def fit_mixture_start(data: torch.Tensor, components: int,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, means, factors) of a Gaussian mixture fitted to data's rows, in float64: k-means
    groups them (kmeans_groups on float32 rows, from `seed`), each non-empty group gets its share of the
    rows as weight and fit_gaussian_start's mean and factor.

    Chain starts spread over the data's modes: one Gaussian's draws are blurred averages of every
    class, from which short chains reach the classes nearest that average; a draw from a group's
    Gaussian already has its group's shape."""
    rows = data.reshape(data.shape[0], -1).to(torch.float64)
    if not 1 <= components <= len(rows):
        raise ValueError(f"components must be between 1 and the number of rows ({len(rows)}), got {components}")
    group = kmeans_groups(rows.float(), components, seed=seed)
    kept = [g for g in range(components) if bool((group == g).any())]
    fits = [fit_gaussian_start(rows[group == g]) for g in kept]
    weights = torch.stack([(group == g).sum() for g in kept]).to(torch.float64) / len(rows)
    return weights, torch.stack([fit[0] for fit in fits]), torch.stack([fit[1] for fit in fits])


def mixture_from_uniform(u: torch.Tensor, low: float, high: float, weights: torch.Tensor, means: torch.Tensor,
                         factors: torch.Tensor) -> torch.Tensor:
    """Rows of the mixture sum_j weights_j N(means_j, factors_j factors_j^T) made from rows of
    U[low, high) noise, clamped to [low, high].

    A row's last uniform picks component j and, stretched back within j's share, is the row's last
    uniform for the draw (split_last_uniform with the weights as shares); so one row of noise makes
    both the choice and the draw, and the choice is independent of the row's draw.
    Every component is computed for every row and the row's own kept (no data-dependent shapes: safe
    inside a CUDA graph). In float32 (float64 for float64 u), returned in u's dtype.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    split, component = split_last_uniform(u.to(compute), low, high, weights)
    z = _normal_from_uniform(split.reshape(u.shape[0], -1), low, high)
    rows = torch.zeros_like(z)
    for j in range(len(weights)):
        rows = torch.where((component == j).unsqueeze(1), means[j].to(compute) + z @ factors[j].to(compute).T, rows)
    return rows.clamp(low, high).reshape(u.shape).to(u.dtype)
