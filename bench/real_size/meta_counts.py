"""Parameter bytes and activation bytes of one step of each family's diffusion network at its REAL size, counted by
the framework rather than estimated by hand.

The network is the host's own class, built from its own config class (comfy.supported_models, the fields completed by
the host's model detection through ``models/tiny/builders.host_unet_config``) at the published architecture sizes.
On the meta path it is built under ``FakeTensorMode`` (no memory: every tensor is shape, dtype and device only) and
run once at the authors' resolution; :class:`LiveBytes`, a ``TorchDispatchMode`` under the fake mode, sees every
tensor every aten op returns, counts the bytes of each storage it has not seen, and subtracts them when the storage is
freed (a weak-reference finaliser): its high-water mark is the peak of live activation bytes, weights and inputs
excluded (their storages are registered before the step). "fwd" is one sampling step (no autograd, the batch the
sampler runs: 2 with CFG); "fwd+bwd" is one training step's worth: the forward with autograd recording (every
weight frozen, the gradient flowing to the input, as a LoRA's would through every layer) and its backward, batch 1,
no gradient checkpointing; "fwd+bwd, checkpointed" is the same step through the pack's own gradient checkpointing
(``models/checkpointing.py``, what its trainers run by default: every ResBlock and SpatialTransformer of a UNet, every
double and single block of a Flux), for the families the pack trains on. Flux's blocks add their residuals in place
(``img += ...``) into tensors autograd saved, which backward refuses; in the training step an ``x += y`` on a tensor
that requires grad runs as ``x = x + y`` (:class:`_OutOfPlaceAdds`): the new tensor is counted.

Attention: the host is told to use PyTorch's scaled-dot-product attention (``--use-pytorch-cross-attention``, the
host's default on an NVIDIA GPU), whose fused kernels never hold the N x N logits; the host's CPU default (split
attention) would add them.

With ``device="cuda"`` (a GPU lent) the same network is materialised with random weights on the GPU and the same step
is run for real; the counts are then ``torch.cuda.max_memory_allocated`` above the weights.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

MiB = 2**20


class LiveBytes(TorchDispatchMode):
    """Live bytes of the storages the ops under this mode create, and their high-water mark."""

    def __init__(self):
        super().__init__()
        self.live = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def known(self, tensors):
        """Storages that exist before the step (weights, inputs): never counted, also when an op returns a view."""
        for t in tensors:
            self.live[t.untyped_storage()] = 0

    def _track(self, t: torch.Tensor):
        st = t.untyped_storage()
        if st in self.live:
            return
        n = st.nbytes()
        self.live[st] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, n)

    def _free(self, n: int):
        self.current -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


class _OutOfPlaceAdds(TorchFunctionMode):
    """``a += b`` as ``a + b`` where autograd records: what a network without in-place residuals costs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # ``a += b`` reaches a function mode as ``add_`` (the host's networks call ``add_`` for nothing else where
        # autograd records)
        if getattr(func, "__name__", "") in ("__iadd__", "add_") and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return torch.add(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@dataclass
class Case:
    """One family at the authors' sampling / training settings."""
    name: str
    config_class: str  # in comfy.supported_models
    unet: dict
    inputs: callable  # (batch, dtype) -> kwargs of the diffusion model's forward
    setting: str
    cfg_batch: int = 2  # the sampler's batch for one step (2: cond and uncond; 1: distilled guidance, cfg 1)
    published_params: str = ""
    extra: dict = field(default_factory=dict)


def _unet_inputs(latent_hw, context, adm=None):
    def make(b, dtype):
        h, w = latent_hw
        kw = {"x": torch.randn(b, 4, h, w, dtype=dtype), "timesteps": torch.full((b,), 500.0),
              "context": torch.randn(b, 77, context, dtype=dtype)}
        if adm:
            kw["y"] = torch.randn(b, adm, dtype=dtype)
        return kw
    return make


def _flux_inputs(latent_hw, in_channels=16, reference=False, t5_tokens=512):
    def make(b, dtype):
        h, w = latent_hw
        kw = {"x": torch.randn(b, in_channels, h, w, dtype=dtype), "timestep": torch.full((b,), 0.5),
              "context": torch.randn(b, t5_tokens, 4096, dtype=dtype), "y": torch.randn(b, 768, dtype=dtype),
              "guidance": torch.full((b,), 2.5)}
        if reference:
            kw["ref_latents"] = [torch.randn(b, 16, h, w, dtype=dtype)]
        return kw
    return make


def _sd3_inputs(latent_hw):
    def make(b, dtype):
        h, w = latent_hw
        # CLIP-L/G (77 tokens) then T5 (256 tokens in the reference pipeline), all 4096 wide
        return {"x": torch.randn(b, 16, h, w, dtype=dtype), "timesteps": torch.full((b,), 500.0),
                "context": torch.randn(b, 77 + 256, 4096, dtype=dtype), "y": torch.randn(b, 2048, dtype=dtype)}
    return make


def _wan_inputs(frames, latent_hw):
    def make(b, dtype):
        h, w = latent_hw
        return {"x": torch.randn(b, 36, frames, h, w, dtype=dtype), "timestep": torch.full((b,), 500.0),
                "context": torch.randn(b, 512, 4096, dtype=dtype), "clip_fea": torch.randn(b, 257, 1280, dtype=dtype)}
    return make


SD15 = {"model_channels": 320, "in_channels": 4, "out_channels": 4, "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
        "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False,
        "adm_in_channels": None, "use_temporal_attention": False, "use_spatial_transformer": True,
        "legacy": False, "image_size": 32, "use_temporal_resblock": False, "num_classes": None}
SDXL = {"model_channels": 320, "in_channels": 4, "out_channels": 4, "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
        "context_dim": 2048, "num_heads": -1, "num_head_channels": 64, "use_linear_in_transformer": True,
        "adm_in_channels": 2816, "use_temporal_attention": False, "use_spatial_transformer": True,
        "legacy": False, "image_size": 32, "use_temporal_resblock": False, "num_classes": "sequential"}
SD35_LARGE = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 38, "input_size": None,
              "adm_in_channels": 2048, "qk_norm": "rms",
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": 4096, "out_features": 38 * 64}},
              "num_patches": 192 * 192, "pos_embed_max_size": 192, "pos_embed_scaling_factor": None,
              "x_block_self_attn_layers": []}
FLUX_DEV = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
            "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
            "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
            "guidance_embed": True}
WAN21_I2V_14B = {"image_model": "wan2.1", "model_type": "i2v", "patch_size": (1, 2, 2), "text_len": 512,
                 "in_dim": 36, "dim": 5120, "ffn_dim": 13824, "freq_dim": 256, "text_dim": 4096, "out_dim": 16,
                 "num_heads": 40, "num_layers": 40, "window_size": (-1, -1), "qk_norm": True,
                 "cross_attn_norm": True, "eps": 1e-6}

CASES = [
    Case("SD1.5", "SD15", SD15, _unet_inputs((64, 64), 768), "512x512, CFG batch 2",
         extra={"checkpointing": "unet"}, published_params="860M (UNet)"),
    Case("SDXL", "SDXL", SDXL, _unet_inputs((128, 128), 2048, 2816), "1024x1024, CFG batch 2",
         extra={"checkpointing": "unet"}, published_params="2.6B (UNet)"),
    Case("SD3.5 large", "SD3", SD35_LARGE, _sd3_inputs((128, 128)), "1024x1024, CFG batch 2, 77+256 text tokens",
         published_params="8.1B"),
    Case("Flux dev", "Flux", FLUX_DEV, _flux_inputs((128, 128)), "1024x1024, guidance-distilled (batch 1), 512 T5",
         cfg_batch=1, extra={"checkpointing": "dit"}, published_params="12B"),
    Case("Flux Fill", "FluxInpaint", {**FLUX_DEV, "in_channels": 96}, _flux_inputs((128, 128), 96),
         "1024x1024 (noise + masked image + mask), batch 1", cfg_batch=1, extra={"checkpointing": "dit"},
         published_params="12B"),
    Case("Flux Kontext", "Flux", FLUX_DEV, _flux_inputs((128, 128), reference=True),
         "1024x1024 + a 1024x1024 reference, batch 1", cfg_batch=1, extra={"checkpointing": "dit"},
         published_params="12B"),
    Case("Wan 2.1 I2V 14B (ChronoEdit, 2 frames)", "WAN21_I2V", WAN21_I2V_14B, _wan_inputs(2, (90, 160)),
         "720x1280, 2 latent frames, batch 1 (distilled, cfg 1)", cfg_batch=1, published_params="14B"),
    Case("Wan 2.1 I2V 14B (ChronoEdit, 8 reasoning frames)", "WAN21_I2V", WAN21_I2V_14B, _wan_inputs(8, (90, 160)),
         "720x1280, 8 latent frames (29 video frames), batch 1", cfg_batch=1, published_params="14B"),
]


def _host_config(case: Case, dtype):
    import comfy.supported_models

    from editlab.models.tiny.builders import host_unet_config

    cls = getattr(comfy.supported_models, case.config_class)
    config = cls(host_unet_config(cls, dict(case.unet)))
    config.set_inference_dtype(dtype, None)
    return config


def _checkpointed(net, kwargs: dict, how: str):
    """The pack's gradient checkpointing for one training step: ``how`` "unet" (a context wrapping the UNet's layers)
    or "dit" (the host's block replacement in the transformer options), else none."""
    import contextlib

    from editlab.models.checkpointing import BlockTraining, unet_checkpointing

    if how == "unet":
        return unet_checkpointing(net), kwargs
    if how == "dit":
        options = {"patches_replace": {"dit": BlockTraining(True).patches(net)}}
        return contextlib.nullcontext(), {**kwargs, "transformer_options": options}
    return contextlib.nullcontext(), kwargs


def _passes(case: "Case"):
    """(key, batch, train, checkpointing) of each step counted."""
    out = [("fwd", case.cfg_batch, False, None), ("fwd_bwd", 1, True, None)]
    if case.extra.get("checkpointing"):
        out.append(("fwd_bwd_ckpt", 1, True, case.extra["checkpointing"]))
    return out


def _step(net, kwargs: dict, train: bool):
    if train:
        import comfy.model_management as mm

        # the host's training flag, as its own LoRA trainer sets it (its networks then skip in-place residual adds)
        before, mm.in_training = getattr(mm, "in_training", False), True
        try:
            # saved tensors through identity hooks: the same references kept, and no version check at unpacking
            # (under the fake mode version counters of fake tensors are not a network's)
            with _OutOfPlaceAdds(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                x = kwargs["x"].requires_grad_(True)
                out = net(**kwargs)
                out.float().square().mean().backward()
                del out
                x.grad = None
        finally:
            mm.in_training = before
    else:
        with torch.no_grad():
            del_ = net(**kwargs)
            del del_


def count(case: Case, dtype=torch.bfloat16, device: str = "meta") -> dict:
    """Parameters, their bytes, and the activation peak of one sampling step and of one training step."""
    started = time.monotonic()
    config = _host_config(case, dtype)
    row = {"family": case.name, "setting": case.setting, "dtype": str(dtype).removeprefix("torch."),
           "host_config": type(config).__name__, "published_params": case.published_params, "device": device}
    if device == "meta":
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=False):
            net = config.get_model({}).diffusion_model.requires_grad_(False)
            row.update(_measure(case, net, dtype))
    else:
        with torch.device(device):
            net = config.get_model({}).diffusion_model
        net.requires_grad_(False)
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.02)
        row.update(_measure_cuda(case, net, dtype, device))
        del net
        torch.cuda.empty_cache()
    row["seconds"] = round(time.monotonic() - started, 1)
    return row


def _measure(case: Case, net, dtype) -> dict:
    params = list(net.parameters()) + list(net.buffers())
    out = {"parameters": sum(p.numel() for p in net.parameters()),
           "weight_mib": round(sum(p.numel() * p.element_size() for p in params) / MiB)}
    for key, batch, train, how in _passes(case):
        kwargs = case.inputs(batch, dtype)
        meter = LiveBytes()
        meter.known(params + [v for v in _tensors(kwargs)])
        checkpointing, kwargs = _checkpointed(net, kwargs, how)
        with checkpointing, meter:
            _step(net, kwargs, train)
        out[f"{key}_activation_peak_mib"] = round(meter.peak / MiB)
    return out


def _measure_cuda(case: Case, net, dtype, device) -> dict:
    params = list(net.parameters()) + list(net.buffers())
    out = {"parameters": sum(p.numel() for p in net.parameters()),
           "weight_mib": round(sum(p.numel() * p.element_size() for p in params) / MiB)}
    for key, batch, train, how in _passes(case):
        kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else [t.to(device) for t in v])
                  for k, v in case.inputs(batch, dtype).items()}
        checkpointing, kwargs = _checkpointed(net, kwargs, how)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with checkpointing:
            _step(net, kwargs, train)
        torch.cuda.synchronize()
        out[f"{key}_seconds"] = round(time.perf_counter() - t0, 3)
        out[f"{key}_activation_peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / MiB)
        del kwargs
    return out


def _tensors(kwargs: dict):
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (t for t in v if isinstance(t, torch.Tensor))
