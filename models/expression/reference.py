"""The reference adapter's 'write' pass: run the UNet once on the reference latent at its lowest noise level with a
feature recorder on every self-attention layer, and keep each layer's input.

Plain torch over the host's model object (``BaseModel``: ``model_sampling``, ``process_latent_in``, ``extra_conds``,
``apply_model``); nothing here imports the host."""
from __future__ import annotations

import torch

# SDXL's ADM input is the pooled CLIP-G vector followed by 256-wide Fourier embeddings of sizes and crops:
# six of them for the base model, five for the refiner (ComfyUI's SDXL / SDXLRefiner.encode_adm).
_SIZE_EMBEDS = {"SDXL": 6 * 256, "SDXLRefiner": 5 * 256}


def pooled_width(base) -> int | None:
    """How wide a pooled text vector this model's ADM input takes (None when it takes none)."""
    adm = int(getattr(base, "adm_channels", 0) or 0)
    if adm == 0:
        return None
    return adm - _SIZE_EMBEDS.get(type(base).__name__, 0)


def record_reference_features(base, latent: torch.Tensor, context_dim: int, transformer_options: dict,
                              recorder, device) -> dict:
    """Run ``base`` (a host BaseModel whose transformer options carry ``recorder`` as an attn1 patch) on the
    reference ``latent`` at sigma_min with an empty 77-token context; return what the recorder kept per layer.

    Sigma stays float32 whatever the weights' dtype (fp8 storage cannot hold a timestep); the pooled vector's width
    is read from the model rather than assumed."""
    sigma = base.model_sampling.sigma_min.reshape(1).to(device=device, dtype=torch.float32)
    x = base.process_latent_in(latent).to(device)
    context = torch.zeros(1, 77, context_dim, device=device)
    width = pooled_width(base)
    pooled = None if width is None else torch.zeros(1, width, device=device)
    h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
    extra = base.extra_conds(cross_attn=context, device=device, noise=x, pooled_output=pooled, width=w, height=h)
    conds = {k: v.cond for k, v in extra.items() if k != "c_crossattn" and hasattr(v, "cond")}
    with torch.no_grad():
        base.apply_model(x, sigma, c_crossattn=context, transformer_options=transformer_options, **conds)
    return recorder.features
