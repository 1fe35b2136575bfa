"""The two training stages as plain torch: the loss each stage minimises and the loop.

Both stages use the edit model's own denoising objective: a target latent x0 is noised to sigma through the host's
``noise_scaling`` (for flow models x = sigma * noise + (1 - sigma) * x0), the model - conditioned on the instruction
and on the source photo as a reference latent - predicts x0, and the loss is the squared error of that prediction.
Stage 1 (pattern shift) weighs every latent cell alike. Stage 2 (consistency) weighs the product's cells
``product_weight`` times as much as the rest (the mask resized to the latent grid, area-averaged), so the adapter it
trains spends its capacity on keeping the product as it was. Sigmas are drawn as the sampler would visit them:
a uniform percent of the schedule mapped through ``percent_to_sigma``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def latent_weights(mask: torch.Tensor | None, latent_hw: tuple[int, int], product_weight: float) -> torch.Tensor:
    """(1, 1, h, w) per-cell loss weights: 1 + (product_weight - 1) * (share of the cell covered by the product).
    No mask: all ones."""
    if mask is None or product_weight == 1.0:
        return torch.ones(1, 1, *latent_hw)
    cover = F.adaptive_avg_pool2d(mask.float()[None, None], latent_hw)
    return 1.0 + (float(product_weight) - 1.0) * cover


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error with per-cell ``weights`` (broadcast over channels), normalised by the weights' sum."""
    w = weights.to(pred.device, pred.dtype).expand(pred.shape[0], 1, *pred.shape[-2:])
    return ((pred - target).pow(2).mean(1, keepdim=True) * w).sum() / w.sum()


def draw(gen: torch.Generator, percent_to_sigma: Callable[[float], float], shape) -> tuple[float, torch.Tensor]:
    """(sigma, noise) drawn from ``gen`` on the CPU (the same numbers on every device)."""
    p = float(torch.rand((), generator=gen)) * 0.998 + 0.001
    return float(percent_to_sigma(p)), torch.randn(shape, generator=gen)


def train_stage(params: list, pairs: list, denoise: Callable, noise_scaling: Callable, percent_to_sigma: Callable,
                steps: int, lr: float, seed: int, eval_points: int = 8, on_step=None, should_stop=None,
                grad_sync: Callable | None = None, device=None) -> dict:
    """Train ``params`` with AdamW. ``pairs[i]`` is a dict with ``target`` (latent, 1 x C x h x w), ``weights``
    (1 x 1 x h x w) and whatever ``denoise(x_noisy, sigma, pair)`` needs (context, reference latent ...). The loss is
    also measured before and after on a fixed set of (pair, sigma, noise), so the two numbers compare.
    ``grad_sync`` (data parallel) averages gradients across processes before each step. ``device``: where the loss is
    computed; the pairs stay where they are (the CPU) and each use moves its target there (``denoise`` moves the rest
    of its pair)."""
    if not pairs:
        raise ValueError("no training pairs")
    gen = torch.Generator().manual_seed(int(seed))
    shape = tuple(pairs[0]["target"].shape)
    fixed = [(i % len(pairs),) + draw(gen, percent_to_sigma, tuple(pairs[i % len(pairs)]["target"].shape))
             for i in range(eval_points)]

    def loss_on(i, sigma, noise):
        pair = pairs[i]
        x0 = pair["target"] if device is None else pair["target"].to(device)
        sig = torch.full((x0.shape[0],), sigma, device=x0.device, dtype=x0.dtype)
        noisy = noise_scaling(sig, noise.to(x0.device, x0.dtype), x0)
        return weighted_mse(denoise(noisy, sig, pair), x0, pair["weights"])

    def evaluate():
        with torch.no_grad():
            return sum(float(loss_on(*f)) for f in fixed) / len(fixed)

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    before = evaluate()
    losses = []
    for step in range(1, steps + 1):
        if should_stop:
            should_stop()
        i = int(torch.randint(0, len(pairs), (), generator=gen))
        sigma, noise = draw(gen, percent_to_sigma, tuple(pairs[i]["target"].shape))
        loss = loss_on(i, sigma, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_sync:
            grad_sync(params)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step, steps, losses[-1])
    after = evaluate()
    del shape
    return {"loss_before": before, "loss_after": after, "steps": steps, "pairs": len(pairs)}
