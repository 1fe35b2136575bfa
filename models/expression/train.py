"""Training an expression adapter with the diffusion loss, the UNet frozen (plain torch over a denoise callable)."""
from __future__ import annotations

import contextlib
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

    def draw(n):  # drawn on the CPU (the same numbers on every device), used where the latents are
        sig = torch.exp(torch.rand(n, generator=gen) * (hi - lo) + lo)
        noise = torch.randn((n,) + tuple(latents.shape[1:]), generator=gen)
        return sig.to(latents.device), noise.to(device=latents.device, dtype=latents.dtype)

    idx_eval = (torch.arange(eval_points) % latents.shape[0]).to(latents.device)
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
            idx = torch.randint(0, latents.shape[0], (batch_size,), generator=gen).to(latents.device)
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


@contextlib.contextmanager
def frozen_for_autograd(module: torch.nn.Module):
    """Within the block, gradients can flow through ``module`` to something outside it (an adapter) while none of
    its parameters trains: parameters are frozen, and inference tensors (made while ComfyUI ran a node in inference
    mode, which autograd cannot save for backward) are swapped for ordinary copies. On exit the module holds its
    original tensor objects with their original flags again, so the MODEL other nodes share is left as it was.
    Enter it outside inference mode: copies made inside it would be inference tensors again."""
    swapped, flags = [], []
    try:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is None:
                    continue
                if p.is_inference():
                    swapped.append((sub._parameters, name, p))
                    sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                else:
                    flags.append((p, p.requires_grad))
                    p.requires_grad_(False)
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    swapped.append((sub._buffers, name, b))
                    sub._buffers[name] = b.detach().clone()
        yield module
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original
        for p, flag in flags:
            p.requires_grad_(flag)


def train_in_unet(base, adapter, patch, context: torch.Tensor, pooled: torch.Tensor | None, latents: torch.Tensor,
                  values: torch.Tensor, resolution: int, steps: int, lr: float, batch_size: int, seed: int, device,
                  on_step=None, should_stop=None, options: dict | None = None) -> dict:
    """Train ``adapter``, acting through ``patch`` (an object with ``before_attention`` / ``after_attention`` for the
    cross-attention patch lists, unless ``options`` gives the transformer options that carry it), inside ``base``, a
    host BaseModel, with the diffusion loss on ``latents`` (already in the model's latent space, on ``device``) and
    the prompt's ``context`` / ``pooled``; the network is frozen and left exactly as it was
    (``frozen_for_autograd``)."""
    if options is None:
        options = {"patches": {"attn2_patch": [patch.before_attention],
                               "attn2_output_patch": [patch.after_attention]}}
    options = {**options, "cond_or_uncond": [0]}

    def denoise(x, sigma):
        b = x.shape[0]
        extra = base.extra_conds(cross_attn=context.expand(b, -1, -1), device=device, noise=x,
                                 pooled_output=None if pooled is None else pooled.expand(b, -1),
                                 width=resolution, height=resolution)
        conds = {k: v.cond for k, v in extra.items() if hasattr(v, "cond")}
        return base.apply_model(x, sigma, transformer_options={**options, "sigmas": sigma}, **conds)

    sampling = base.model_sampling
    # Host networks written for inference add residuals in place right after saving them for backward (Flux's
    # blocks: x += ...): under allow_mutation_on_saved_tensors autograd keeps a copy of what it saved instead.
    with torch.inference_mode(False), torch.enable_grad(), frozen_for_autograd(base.diffusion_model), \
            torch.autograd.graph.allow_mutation_on_saved_tensors():
        return train_adapter(adapter, patch, latents, values.to(device), denoise, sampling.noise_scaling,
                             (float(sampling.sigma_min), float(sampling.sigma_max)), steps, lr, batch_size, seed,
                             on_step=on_step, should_stop=should_stop)


def train_unet_adapter(base, adapter, layers: list, context: torch.Tensor, pooled: torch.Tensor | None,
                       latents: torch.Tensor, values: torch.Tensor, resolution: int, steps: int, lr: float,
                       batch_size: int, seed: int, device, on_step=None, should_stop=None) -> dict:
    """Train an expression ``adapter`` (blendshapes -> tokens for ``layers``, the UNet's cross-attention layers)
    inside ``base`` (see :func:`train_in_unet`)."""
    from .patch import ExpressionAttentionPatch

    patch = ExpressionAttentionPatch(adapter, torch.zeros(1, values.shape[-1]), 1.0, layers, float("inf"), 0.0)
    return train_in_unet(base, adapter, patch, context, pooled, latents, values, resolution, steps, lr, batch_size,
                         seed, device, on_step, should_stop)
