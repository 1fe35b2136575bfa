"""Stage 1 of the expression method: the blendshape adapter trained inside a frozen UNet (the shared trainer,
``models/training.py``, with the expression patch)."""
from __future__ import annotations

import torch

from ..training import HostObjective, raw_predictor, train_adapter, train_in_unet  # noqa: F401
from .patch import ExpressionAttentionPatch


def train_unet_adapter(base, adapter, layers: list, context: torch.Tensor, pooled: torch.Tensor | None,
                       latents: torch.Tensor, values: torch.Tensor, resolution: int, steps: int, lr: float,
                       batch_size: int, seed: int, device, on_step=None, should_stop=None,
                       gradient_checkpointing: bool = True) -> dict:
    """Train an expression ``adapter`` (blendshapes -> tokens for ``layers``, the UNet's cross-attention layers)
    inside ``base`` (see :func:`train_in_unet`)."""
    patch = ExpressionAttentionPatch(adapter, torch.zeros(1, values.shape[-1]), 1.0, layers, float("inf"), 0.0)
    return train_in_unet(base, adapter, patch, context, pooled, latents, values, resolution, steps, lr, batch_size,
                         seed, device, on_step, should_stop, gradient_checkpointing=gradient_checkpointing)
