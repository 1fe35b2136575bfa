"""Builders of tiny real-architecture models (MODEL, CLIP, VAE) for each supported family.

Every builder uses ComfyUI's own classes (``comfy.supported_models``, ``comfy.sd.CLIP``, ``comfy.sd.VAE``) with
small configs, so the sampling, conditioning and patching code that runs is the host's real code. Text encoders use
the host's real tokenizers (CLIP BPE, T5 sentencepiece), so token positions match what a real checkpoint sees; for
Wan, whose UMT5 tokenizer ships inside real weights, the host's Pile-T5 sentencepiece model stands in. Weights are drawn from a seeded generator: same seed, same weights, bit for bit.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

ARCHITECTURES = ("flux", "sd3", "sdxl", "sd15", "wan21_i2v", "flux_fill")
# How the weights are stored, as the stock loaders offer it ("weight_dtype" of UNETLoader / CLIPLoader):
# fp32, bf16 and fp16 compute in their own dtype; fp8 weights are stored in fp8 and cast per layer for compute
# (the host's manual cast, here to bf16 as on a CUDA GPU).
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp8_e4m3fn")
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                 "fp8_e4m3fn": torch.float8_e4m3fn}

# Text-encoder sizes. Vocabularies stay real (the tokenizers' ids must index the embedding tables).
# Three layers: SDXL and SD3 read the penultimate layer (layer_idx -2).
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
             "projection_dim": 32}
TINY_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2}
# The SDXL UNet adds six 256-d Fourier embeddings of sizes/crops to the pooled CLIP-G output.
SDXL_SIZE_EMBED_DIM = 6 * 256
SD3_CONTEXT_DIM = 4096  # ComfyUI pads SD3's CLIP-L/G tokens to this width whatever the encoders' width


@dataclass
class TinyModels:
    model: object  # comfy.model_patcher.ModelPatcher
    clip: object  # comfy.sd.CLIP
    vae: object  # comfy.sd.VAE
    architecture: str
    seed: int
    weight_dtype: str = "fp32"


def seed_parameters(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter and float buffer deterministically.

    ComfyUI builds modules with its ``disable_weight_init`` ops, so their tensors start uninitialised; this gives
    them fan-in-scaled normal values (norm weights near 1) so activations stay finite through a few layers.
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            vals = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                vals = vals / math.sqrt(max(fan_in, 1))
            elif leaf in ("weight", "scale", "gamma") or "norm" in name:
                vals = 1.0 + 0.02 * vals
            else:
                vals = 0.02 * vals
            p.copy_(vals.to(p.dtype))
        # Persistent float buffers (SD3's pos_embed, say) are what a checkpoint would supply: seed them too.
        # Non-persistent ones are computed by the model's code and stay as built.
        params = {n for n, _ in module.named_parameters()}
        buffers = dict(module.named_buffers())
        for name in sorted(k for k in module.state_dict() if k not in params and k in buffers):
            b = buffers[name]
            if b.is_floating_point() and b.numel() > 0:
                vals = torch.randn(b.shape, generator=gen, dtype=torch.float32)
                b.copy_((1.0 + 0.0 * vals) if "var" in name.rsplit(".", 1)[-1] else 0.02 * vals)


def _patcher(base_model):
    import comfy.model_management as mm
    import comfy.model_patcher

    dev = mm.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base_model, load_device=dev, offload_device=mm.unet_offload_device())


def _meta_state_dict(model_cls, unet_config: dict) -> dict:
    """The state dict (meta tensors: names and shapes only) of ``model_cls`` built from ``unet_config``. A field the
    host's network requires and the config lacks (a newer host's, e.g. 0.33's FluxParams.txt_ids_dims) is given a
    placeholder here only: no weight shape depends on such fields, and detection then supplies the real value."""
    cfg = dict(unet_config)
    for _ in range(8):
        try:
            with torch.device("meta"):
                config = model_cls(dict(cfg))
                config.set_inference_dtype(torch.float32, None)
                return config.get_model({}).diffusion_model.state_dict()
        except TypeError as exc:
            text = str(exc)
            missing = [m for m in re.findall(r"'(\w+)'", text) if m not in cfg] if "required" in text else []
            if not missing:
                raise
            cfg.update(dict.fromkeys(missing))
    raise RuntimeError(f"could not build {model_cls.__name__} to read its weights' layout")


def host_unet_config(model_cls, unet_config: dict) -> dict:
    """The config the host's own model detection derives from a checkpoint of this architecture, with the tiny
    sizes of ``unet_config`` on top: every field the host sets (a field a newer host adds included) comes from the
    host, and only what detection fixes at full size (Flux's 24 heads and rope axes, say) is ours."""
    import comfy.model_detection

    detected = comfy.model_detection.detect_unet_config(_meta_state_dict(model_cls, unet_config), "") or {}
    return {**detected, **unet_config}


def _diffusion_model(model_cls, unet_config: dict, seed: int, weight_dtype: str = "fp32"):
    config = model_cls(host_unet_config(model_cls, unet_config))
    dtype = _TORCH_DTYPES[weight_dtype]
    if weight_dtype.startswith("fp8"):
        # fp8 storage, each layer's weight cast for compute (comfy.ops manual cast) to bf16, as on a CUDA GPU;
        # a CPU host would pick float32 (mm.unet_manual_cast), which tests nothing that bf16 does not.
        config.set_inference_dtype(dtype, torch.bfloat16)
    else:
        config.set_inference_dtype(dtype, None)
    base = config.get_model({})
    seed_parameters(base.diffusion_model, seed)
    base.eval()
    return _patcher(base)


def _clip(clip_cls, tokenizer_cls, model_options: dict, seed: int, tokenizer_data=None,
          weight_dtype: str = "fp32"):
    import comfy.model_management as mm
    import comfy.sd
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(tokenizer_cls, clip_cls)
    opts = {"dtype": _TORCH_DTYPES[weight_dtype], "initial_device": mm.text_encoder_offload_device(), **model_options}
    clip = comfy.sd.CLIP(target=target, model_options=opts, tokenizer_data=tokenizer_data or {})
    seed_parameters(clip.cond_stage_model, seed)
    return clip


def _kl_vae(latent_channels: int, seed: int):
    """A 3-level AutoencoderKL (downscale 8, like every SD/Flux VAE) with 32 channels (GroupNorm needs 32 groups)."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": latent_channels, "resolution": 64, "in_channels": 3, "out_ch": 3,
                "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    params = {"ddconfig": ddconfig, "embed_dim": latent_channels}
    ref = AutoencoderKL(**params)
    seed_parameters(ref, seed)
    vae = comfy.sd.VAE(sd=ref.state_dict(), config={"params": params}, dtype=torch.float32)
    vae.latent_channels = latent_channels  # the config path keeps the SD default of 4
    return vae


def _wan21_vae(seed: int):
    """Wan 2.1's causal 3D VAE at base width 8, loaded through ComfyUI's own detection path.

    Detection reads the width from the weights but fixes num_res_blocks=2, so the reference is built that way.
    """
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE

    ref = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    seed_parameters(ref, seed)
    return comfy.sd.VAE(sd=ref.state_dict(), dtype=torch.float32)


def _build_flux(seed: int, dt: str = "fp32", fill: bool = False):
    import comfy.supported_models
    import comfy.text_encoders.flux

    # Flux Fill takes the noisy latent (16), the masked image's latent (16) and the 8x8-packed mask (64).
    unet = {"image_model": "flux", "in_channels": 96 if fill else 16, "out_channels": 16, "patch_size": 2,
            "vec_in_dim": TINY_CLIP["hidden_size"], "context_in_dim": TINY_T5["d_model"], "hidden_size": 64,
            "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12],
            "theta": 10000, "qkv_bias": True, "guidance_embed": True}
    model = _diffusion_model(comfy.supported_models.FluxInpaint if fill else comfy.supported_models.Flux, unet, seed,
                             dt)
    clip = _clip(comfy.text_encoders.flux.flux_clip(), comfy.text_encoders.flux.FluxTokenizer,
                 {"clip_l_model_config": dict(TINY_CLIP), "t5xxl_model_config": dict(TINY_T5)}, seed + 1,
                 None, dt)
    return model, clip, _kl_vae(16, seed + 2)


def _build_sd3(seed: int, dt: str = "fp32"):
    import comfy.supported_models
    import comfy.text_encoders.sd3_clip

    hidden = 64  # MMDiT derives width (64 * depth) and heads (depth) from depth
    unet = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "input_size": None,
            "adm_in_channels": 2 * TINY_CLIP["hidden_size"],
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": SD3_CONTEXT_DIM, "out_features": hidden}},
            "num_patches": 64 * 64, "pos_embed_max_size": 64, "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": []}
    model = _diffusion_model(comfy.supported_models.SD3, unet, seed, dt)
    # T5 is left out: ComfyUI concatenates it after CLIP-L/G tokens padded to 4096 wide, which would need a
    # 4096-wide T5 (130M parameters). The CLIP-L/G path, padding included, is the real one.
    clip_cls = comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=False)
    clip = _clip(clip_cls, comfy.text_encoders.sd3_clip.SD3Tokenizer,
                 {"clip_l_model_config": dict(TINY_CLIP), "clip_g_model_config": dict(TINY_CLIP)}, seed + 1,
                 None, dt)
    return model, clip, _kl_vae(16, seed + 2)


def _unet_config(context_dim: int, adm_in_channels):
    # 64 channels: SDXL fixes 64-channel heads (one head at the first level, two at the second).
    return {"model_channels": 64, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1, 1],
            "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
            "transformer_depth_middle": 1, "context_dim": context_dim,
            "num_heads": 2, "num_head_channels": -1, "use_linear_in_transformer": True,
            "adm_in_channels": adm_in_channels, "use_temporal_attention": False, "use_spatial_transformer": True,
            "legacy": False, "image_size": 32, "use_temporal_resblock": False,
            "num_classes": "sequential" if adm_in_channels else None}


def _build_sd15(seed: int, dt: str = "fp32"):
    import comfy.sd1_clip
    import comfy.supported_models

    unet = _unet_config(TINY_CLIP["hidden_size"], None)
    unet["use_linear_in_transformer"] = False
    model = _diffusion_model(comfy.supported_models.SD15, unet, seed, dt)
    clip = _clip(comfy.sd1_clip.SD1ClipModel, comfy.sd1_clip.SD1Tokenizer,
                 {"clip_l_model_config": dict(TINY_CLIP)}, seed + 1, None, dt)
    return model, clip, _kl_vae(4, seed + 2)


def _build_sdxl(seed: int, dt: str = "fp32"):
    import comfy.sdxl_clip
    import comfy.supported_models

    unet = _unet_config(2 * TINY_CLIP["hidden_size"], TINY_CLIP["projection_dim"] + SDXL_SIZE_EMBED_DIM)
    model = _diffusion_model(comfy.supported_models.SDXL, unet, seed, dt)
    clip = _clip(comfy.sdxl_clip.SDXLClipModel, comfy.sdxl_clip.SDXLTokenizer,
                 {"clip_l_model_config": dict(TINY_CLIP), "clip_g_model_config": dict(TINY_CLIP)}, seed + 1,
                 None, dt)
    return model, clip, _kl_vae(4, seed + 2)


def _build_wan21_i2v(seed: int, dt: str = "fp32"):
    import comfy.supported_models
    import comfy.text_encoders.wan

    unet = {"image_model": "wan2.1", "model_type": "i2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 36,
            "dim": 32, "ffn_dim": 64, "freq_dim": 256, "text_dim": TINY_T5["d_model"], "out_dim": 16,
            "num_heads": 2, "num_layers": 1, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
            "eps": 1e-6}
    model = _diffusion_model(comfy.supported_models.WAN21_I2V, unet, seed, dt)
    # Wan checkpoints carry their UMT5 sentencepiece model inside the weights; ComfyUI ships none. The host's
    # Pile-T5 sentencepiece model stands in (same tokenizer class and code path, a 32k vocabulary).
    spiece = os.path.join(os.path.dirname(comfy.text_encoders.wan.__file__), "t5_pile_tokenizer", "tokenizer.model")
    with open(spiece, "rb") as f:
        tokenizer_data = {"spiece_model": f.read()}
    clip = _clip(comfy.text_encoders.wan.te(), comfy.text_encoders.wan.WanT5Tokenizer,
                 {"umt5xxl_model_config": {**TINY_T5, "vocab_size": 32128}}, seed + 1, tokenizer_data, dt)
    return model, clip, _wan21_vae(seed + 2)


_BUILDERS = {"flux": _build_flux, "flux_fill": lambda seed, dt: _build_flux(seed, fill=True, dt=dt), "sd3": _build_sd3,
             "sdxl": _build_sdxl, "sd15": _build_sd15, "wan21_i2v": _build_wan21_i2v}


def build_tiny_models(architecture: str, seed: int = 0, weight_dtype: str = "fp32") -> TinyModels:
    """Build MODEL, CLIP and VAE of ``architecture`` at tiny size with weights drawn from ``seed``, the diffusion
    model and text encoders stored in ``weight_dtype`` (the same draws, rounded; the VAE stays float32)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}; got {weight_dtype!r}")
    if architecture not in _BUILDERS:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}; got {architecture!r}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be between 0 and 2**63-1; got {seed}")
    model, clip, vae = _BUILDERS[architecture](int(seed), weight_dtype)
    return TinyModels(model=model, clip=clip, vae=vae, architecture=architecture, seed=int(seed),
                      weight_dtype=weight_dtype)
