"""Training one concept's value LoRA inside a host UNet with the diffusion loss, the UNet frozen and left exactly as
it was (the expression trainer's loop and ``frozen_for_autograd``)."""
from __future__ import annotations

import torch

from ..expression.train import frozen_for_autograd, train_adapter
from .patch import ToVAPatch
from .tova import Binding


def train_tova(base, adapter, layers: dict, context: torch.Tensor, pooled: torch.Tensor | None, positions,
               latents: torch.Tensor, resolution: int, steps: int, lr: float, batch_size: int, seed: int, device,
               on_step=None, should_stop=None) -> dict:
    """Train ``adapter`` (bound to ``positions`` of ``context``) inside ``base``, a host BaseModel; ``layers`` are the
    UNet's cross-attention layers by name. ``latents`` are in the model's latent space, on ``device``."""
    patch = ToVAPatch([Binding(adapter, positions)], layers)
    options = {"patches": {"attn2_patch": [patch.before_attention], "attn2_output_patch": [patch.after_attention]},
               "cond_or_uncond": [0]}

    def denoise(x, sigma):
        b = x.shape[0]
        extra = base.extra_conds(cross_attn=context.expand(b, -1, -1), device=device, noise=x,
                                 pooled_output=None if pooled is None else pooled.expand(b, -1),
                                 width=resolution, height=resolution)
        conds = {k: v.cond for k, v in extra.items() if hasattr(v, "cond")}
        return base.apply_model(x, sigma, transformer_options={**options, "sigmas": sigma}, **conds)

    sampling = base.model_sampling
    values = torch.zeros(latents.shape[0], 1, device=device)  # the shared loop sets patch.values; ToVA has none
    with torch.inference_mode(False), torch.enable_grad(), frozen_for_autograd(base.diffusion_model):
        return train_adapter(adapter, patch, latents, values, denoise, sampling.noise_scaling,
                             (float(sampling.sigma_min), float(sampling.sigma_max)), steps, lr, batch_size, seed,
                             on_step=on_step, should_stop=should_stop)
