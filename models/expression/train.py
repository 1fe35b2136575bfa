"""Training an expression adapter with the diffusion loss, the UNet frozen (plain torch over a denoise callable)."""
from __future__ import annotations

import math
from typing import Callable

import torch


def train_adapter(adapter, patch, latents: torch.Tensor, values: torch.Tensor,
                  denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  noise_scaling: Callable, sigma_range: tuple[float, float], steps: int, lr: float = 1e-4,
                  batch_size: int = 4, seed: int = 0, eval_points: int = 8,
                  on_step: Callable[[int, int, float], None] | None = None,
                  should_stop: Callable[[], None] | None = None) -> dict:
    """``denoise(x_noisy, sigma)`` runs the frozen model with ``patch`` active and returns its clean prediction.

    The loss is the squared error of that prediction; ``patch.values`` is set to each batch's blendshapes. The loss
    is also measured on a fixed set of (image, sigma, noise) before and after, so the comparison is deterministic.
    """
    if latents.shape[0] != values.shape[0] or latents.shape[0] == 0:
        raise ValueError(f"need one blendshape vector per image; got {latents.shape[0]} images, {values.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(sigma_range[0]), math.log(sigma_range[1])

    def draw(n):
        sig = torch.exp(torch.rand(n, generator=gen) * (hi - lo) + lo)
        return sig, torch.randn((n,) + tuple(latents.shape[1:]), generator=gen)

    idx_eval = torch.arange(eval_points) % latents.shape[0]
    sig_eval, noise_eval = draw(eval_points)

    def loss_on(idx, sig, noise):
        x0 = latents[idx]
        patch.values = values[idx]
        noisy = noise_scaling(sig, noise, x0)
        return (denoise(noisy, sig) - x0).pow(2).mean()

    def evaluate():
        with torch.no_grad():
            return float(loss_on(idx_eval, sig_eval, noise_eval))

    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    patch.training = True
    try:
        before = evaluate()
        for step in range(1, steps + 1):
            if should_stop:
                should_stop()
            idx = torch.randint(0, latents.shape[0], (batch_size,), generator=gen)
            sig, noise = draw(batch_size)
            loss = loss_on(idx, sig, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step:
                on_step(step, steps, float(loss.detach()))
        after = evaluate()
    finally:
        patch.training = False
    adapter.eval()
    return {"loss_before": before, "loss_after": after, "steps": steps, "images": int(latents.shape[0])}
