"""Full-size checkpoints with seeded random weights, in the stock single-file layout, built from the host's classes.

The diffusion model, text encoders and VAE are built on the meta device from the host's own config class
(comfy.supported_models) and text-encoder classes; the host's own saving path (``BaseModel.state_dict_for_saving``,
the config's ``process_*_for_saving``) gives the checkpoint's key names; the host's detection must read the file back
as the same family. Memory and time do not depend on the weights' values, so random ones cost what real ones do.
"""
from __future__ import annotations

from pathlib import Path

import torch

import meta_counts

KL_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
FAMILIES = {"sd15": ("SD15", meta_counts.SD15), "sdxl": ("SDXL", meta_counts.SDXL)}


def _norm(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "weight" and any(p in key for p in ("norm", "ln_", "layer_norm"))


def write_checkpoint(family: str, path: Path, dtype=torch.float16, seed: int = 0) -> dict:
    """Write ``family``'s checkpoint to ``path``; return its diffusion model's parameter count and weight bytes."""
    import comfy.ldm.models.autoencoder
    import comfy.model_detection
    import comfy.supported_models
    from safetensors.torch import save_file

    config_name, unet_config = FAMILIES[family]
    with torch.device("meta"):
        config = getattr(comfy.supported_models, config_name)(dict(unet_config))
        config.set_inference_dtype(torch.float32, None)
        base = config.get_model({})
        clip = config.clip_target().clip(device="meta").state_dict()
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=KL_VAE, embed_dim=4).state_dict()
        layout = base.state_dict_for_saving(clip, vae)
    unet = base.diffusion_model.state_dict()
    found = comfy.model_detection.model_config_from_unet_config(comfy.model_detection.detect_unet_config(unet, ""))
    assert type(found).__name__ == config_name, f"the host reads it as {type(found).__name__}, not {config_name}"
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, meta in layout.items():
        if meta.device.type != "meta":  # the host's own constants (position ids)
            tensors[key] = meta.contiguous()
        elif meta.dtype.is_floating_point:
            t = torch.randn(meta.shape, generator=gen, dtype=torch.float32).mul_(0.02)
            if _norm(key):
                t.add_(1.0)
            tensors[key] = t.to(dtype)
        else:
            tensors[key] = torch.zeros(meta.shape, dtype=meta.dtype)
    save_file(tensors, str(path))
    count = sum(v.numel() for v in unet.values())
    del tensors
    from editlab.models.patch_layer import named_cross_attention_layers

    # (context width, value width) of each cross-attention layer by name: what a ToVA file for this model holds
    widths = {n: tuple(a.to_v.weight.shape[::-1]) for n, a in named_cross_attention_layers(base.diffusion_model).items()}
    return {"unet_parameters": count, "cross_attention": widths}
