"""Training one concept's value LoRA inside a host UNet or Flux model with the diffusion loss, the network frozen and
left exactly as it was (the shared trainer, ``models/training.py``)."""
from __future__ import annotations

import torch

from ..training import train_in_unet
from .flux import FluxToVAPatch, installed
from .patch import ToVAPatch
from .tova import Binding


def train_tova(base, adapter, layers: dict, context: torch.Tensor, pooled: torch.Tensor | None, positions,
               latents: torch.Tensor, resolution: int, steps: int, lr: float, batch_size: int, seed: int, device,
               on_step=None, should_stop=None) -> dict:
    """Train ``adapter`` (bound to ``positions`` of ``context``) inside ``base``, a host BaseModel; ``layers`` are the
    UNet's cross-attention layers by name, or a Flux model's double blocks ("double.<i>": the text stream's values,
    through the same attention override ToVA Apply installs). ``latents`` are in the model's latent space, on
    ``device``."""
    bindings = [Binding(adapter, positions)]
    options = None
    if all(name.startswith("double.") for name in layers):
        patch = FluxToVAPatch(bindings, layers)
        options = installed({}, patch)  # the override, its post_input hook, the per-forward text length
    else:
        patch = ToVAPatch(bindings, layers)
    values = torch.zeros(latents.shape[0], 1, device=device)  # the shared loop sets patch.values; ToVA has none
    return train_in_unet(base, adapter, patch, context, pooled, latents, values, resolution, steps, lr, batch_size,
                         seed, device, on_step, should_stop, options)
