"""LODA's objective as plain torch (ConceptSplit, METHODS.md §5): the divergence between concepts' attention maps.

Authors' recipe: the concepts' cross-attention maps (K maps of H x W, taken at the 24x24 / 32x32 layers) are
Gaussian-smoothed (kernel 7, sigma 1) and normalised to distributions over the pixels; the loss is
``relu(t - harmonic mean of KL(A_i || A_j) over ordered pairs i != j)`` with t = 3, and for the first N of the steps
the latent moves by ``z <- z - step * grad`` with ``step = 20 * sqrt(linspace(1, 0.5, N))``. After that, attention
fixing guidance (AFG) keeps each concept inside its mask: the smoothed map at or above its 90th percentile.
This module is the objective, the schedule and the masks; the sampler that uses them is not built yet.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
KERNEL, SIGMA, THRESHOLD, STEP, MASK_QUANTILE = 7, 1.0, 3.0, 20.0, 0.9


def gaussian_smooth(maps: torch.Tensor, kernel: int = KERNEL, sigma: float = SIGMA) -> torch.Tensor:
    """(K, H, W) maps blurred by a separable Gaussian (reflect padding: no dark border; a constant map stays constant)."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (K, H, W); got {tuple(maps.shape)}")
    if kernel < 1 or kernel % 2 == 0 or sigma <= 0:
        raise ValueError(f"kernel must be odd and positive and sigma positive; got {kernel}, {sigma}")
    x = torch.arange(kernel, dtype=maps.dtype, device=maps.device) - kernel // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    pad = kernel // 2
    m = maps[:, None]
    if min(maps.shape[-2:]) > pad:
        m = F.pad(m, (pad, pad, pad, pad), mode="reflect")
        m = F.conv2d(m, g.reshape(1, 1, 1, -1))
        m = F.conv2d(m, g.reshape(1, 1, -1, 1))
    return m[:, 0]


def distributions(maps: torch.Tensor) -> torch.Tensor:
    """(K, H, W) non-negative maps -> (K, H*W) distributions over the pixels."""
    flat = maps.reshape(maps.shape[0], -1).clamp(min=0) + EPS
    return flat / flat.sum(-1, keepdim=True)


def pairwise_kl(maps: torch.Tensor) -> torch.Tensor:
    """(K, K) matrix of KL(A_i || A_j) between the maps as distributions (zero diagonal)."""
    p = distributions(maps)
    logp = p.log()
    return (p[:, None] * (logp[:, None] - logp[None])).sum(-1)


def harmonic_mean_kl(maps: torch.Tensor) -> torch.Tensor:
    """Harmonic mean of KL(A_i || A_j) over the ordered pairs i != j (K >= 2)."""
    k = maps.shape[0]
    if k < 2:
        raise ValueError("LODA needs at least two concepts' maps")
    kl = pairwise_kl(maps)
    off = ~torch.eye(k, dtype=torch.bool, device=maps.device)
    return off.sum() / (1.0 / (kl[off] + EPS)).sum()


def loda_loss(maps: torch.Tensor, threshold: float = THRESHOLD, kernel: int = KERNEL,
              sigma: float = SIGMA) -> torch.Tensor:
    """``relu(t - harmonic mean pairwise KL)`` of the smoothed maps: zero once the concepts are apart enough."""
    return F.relu(threshold - harmonic_mean_kl(gaussian_smooth(maps, kernel, sigma)))


def step_sizes(n: int, scale: float = STEP) -> torch.Tensor:
    """The latent step of each of the first ``n`` sampling steps: ``scale * sqrt(linspace(1, 0.5, n))``."""
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    return scale * torch.linspace(1.0, 0.5, n).sqrt() if n > 1 else torch.full((n,), float(scale))


def afg_masks(maps: torch.Tensor, quantile: float = MASK_QUANTILE, kernel: int = KERNEL,
              sigma: float = SIGMA) -> torch.Tensor:
    """(K, H, W) boolean masks: each smoothed map at or above its own ``quantile``."""
    smooth = gaussian_smooth(maps, kernel, sigma)
    q = torch.quantile(smooth.reshape(smooth.shape[0], -1).float(), quantile, dim=-1)
    return smooth >= q.to(smooth.dtype)[:, None, None]
