"""Training an adapter (the expression adapter, a reference LoRA, a ToVA value LoRA, ...) inside a frozen host model with that model's own training objective (plain torch over the
host's model object; nothing here imports the host).

The objective is the one the network was trained with, read from its ``model_sampling``:
- timesteps: uniform over the host's discrete sigma table (``model_sampling.sigmas``: SD1.5/SD2/SDXL's 1000
  DDPM steps, a flow model's shifted table);
- input: ``model_sampling.noise_scaling(sigma, noise, x0)`` (x0 + sigma * noise, or the flow interpolation);
- loss: mean squared error between the network's raw output (what ``diffusion_model`` returns, before
  ``calculate_denoised``) and its target, i.e. the output for which the host's ``calculate_denoised`` gives back
  x0 exactly: epsilon for eps-prediction models, v for v-prediction, the velocity noise - x0 for flow models.
  The target is solved from ``calculate_denoised``, which is affine in the output, so every parameterisation the
  host knows is covered without naming it.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..kernels.attention.comfy import differentiable_attention
from .checkpointing import BlockTraining, saved_tensor_copies, unet_checkpointing
from .frozen import frozen_for_autograd

RAW_OUTPUT_WRAPPER = "editlab_raw_output"
DIFFUSION_MODEL_WRAPPERS = "diffusion_model"  # the host's WrappersMP.DIFFUSION_MODEL key in transformer options


class HostObjective:
    """The training objective of a host model, from its ``model_sampling`` (see the module docstring)."""

    def __init__(self, sampling):
        self.sampling = sampling
        self.table = sampling.sigmas.detach().float().cpu()

    def draw_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sigmas, each at a uniformly drawn discrete timestep of the host's table (on the CPU)."""
        return self.table[torch.randint(0, self.table.shape[0], (n,), generator=generator)]

    def noisy(self, sigma: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.sampling.noise_scaling(sigma, noise, x0)

    def target(self, sigma: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The raw output for which ``calculate_denoised(sigma, output, x_t)`` is ``x0`` (solved in float64)."""
        s, x, x0 = sigma.double(), x_t.double(), x0.double()
        offset = self.sampling.calculate_denoised(s, torch.zeros_like(x), x)
        slope = self.sampling.calculate_denoised(s, torch.ones_like(x), x) - offset
        return ((x0 - offset) / slope).to(x_t.dtype)

    def loss(self, predict: Callable, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The objective for one batch: ``predict(x_t, sigma)`` returns the network's raw output."""
        x_t = self.noisy(sigma, noise, x0)
        return (predict(x_t, sigma).float() - self.target(sigma, x_t, x0).float()).pow(2).mean()


def train_adapter(adapter, patch, latents: torch.Tensor, values: torch.Tensor, predict: Callable,
                  objective: HostObjective, steps: int, lr: float = 1e-4, batch_size: int = 4, seed: int = 0,
                  eval_points: int = 8, on_step: Callable[[int, int, float], None] | None = None,
                  should_stop: Callable[[], None] | None = None, params=None) -> dict:
    """Train ``params`` (default: the adapter's trainable parameters) with ``objective.loss``; ``predict(x_t,
    sigma)`` runs the frozen model with ``patch`` active and returns its raw output. ``patch.values`` is set to each
    batch's conditioning values (blendshapes). The loss is also measured on a fixed set of (image, timestep, noise)
    before and after, drawn from ``seed`` first, so the comparison is deterministic; the network never runs on more
    than ``batch_size`` rows at once, there either."""
    if latents.shape[0] != values.shape[0] or latents.shape[0] == 0:
        raise ValueError(f"need one blendshape vector per image; got {latents.shape[0]} images, {values.shape[0]}")
    gen = torch.Generator().manual_seed(seed)

    def draw(n):  # drawn on the CPU (the same numbers on every device), used where the latents are
        sig = objective.draw_sigmas(n, gen)
        noise = torch.randn((n,) + tuple(latents.shape[1:]), generator=gen)
        return sig.to(latents.device), noise.to(device=latents.device, dtype=latents.dtype)

    idx_eval = (torch.arange(eval_points) % latents.shape[0]).to(latents.device)
    sig_eval, noise_eval = draw(eval_points)

    def loss_on(idx, sig, noise):
        patch.values = values[idx]
        return objective.loss(predict, latents[idx], noise, sig)

    def evaluate():
        # in chunks of the training batch, whose activations the run is sized for: the eight points at once held
        # four times plain sampling's activations (SD1.5 at 512 px: +9.4 GB over the loaded model, the trainers'
        # whole peak). The loss is a mean over equal-sized examples: the chunks' means weighted by their rows.
        total = 0.0
        with torch.no_grad():
            for start in range(0, eval_points, batch_size):
                part = slice(start, start + batch_size)
                rows = int(idx_eval[part].shape[0])
                total += float(loss_on(idx_eval[part], sig_eval[part], noise_eval[part])) * rows
        return total / eval_points

    params = [p for p in (adapter.parameters() if params is None else params) if p.requires_grad]
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


def raw_predictor(base, context: torch.Tensor, pooled: torch.Tensor | None, resolution: int, device,
                  options: dict) -> Callable:
    """``predict(x_t, sigma)``: ``base`` (a host BaseModel) run through its own ``apply_model`` with the prompt's
    ``context`` / ``pooled`` (or zero-argument callables giving the current batch's rows, (B, T, C) / (B, D): one
    caption per image) and the transformer ``options`` (patches), returning the network's raw output as the
    host's diffusion-model wrapper sees it (before ``calculate_denoised``), in float32."""
    def predict(x, sigma):
        kept = {}
        ctx = context() if callable(context) else context  # a callable: this batch's rows (per-image captions)
        pool = pooled() if callable(pooled) else pooled

        def keep_raw(executor, *args, **kwargs):
            kept["raw"] = out = executor(*args, **kwargs)
            return out

        wrappers = dict(options.get("wrappers", {}))
        wrappers[DIFFUSION_MODEL_WRAPPERS] = {**wrappers.get(DIFFUSION_MODEL_WRAPPERS, {}),
                                              RAW_OUTPUT_WRAPPER: [keep_raw]}
        b = x.shape[0]
        extra = base.extra_conds(cross_attn=ctx.expand(b, -1, -1), device=device, noise=x,
                                 pooled_output=None if pool is None else pool.expand(b, -1),
                                 width=resolution, height=resolution)
        conds = {k: v.cond for k, v in extra.items() if hasattr(v, "cond")}
        # backward runs through every attention call: none may be one autograd refuses (the host's CPU default)
        to = differentiable_attention({**options, "wrappers": wrappers, "sigmas": sigma})
        denoised = base.apply_model(x, sigma, transformer_options=to, **conds)
        if "raw" in kept:
            return kept["raw"].float()
        # a network that does not run the diffusion-model wrappers: its output read back from calculate_denoised,
        # which is affine in it
        offset = base.model_sampling.calculate_denoised(sigma, torch.zeros_like(x), x)
        slope = base.model_sampling.calculate_denoised(sigma, torch.ones_like(x), x) - offset
        return ((denoised - offset) / slope).float()

    return predict


def train_in_unet(base, adapter, patch, context: torch.Tensor, pooled: torch.Tensor | None, latents: torch.Tensor,
                  values: torch.Tensor, resolution: int, steps: int, lr: float, batch_size: int, seed: int, device,
                  on_step=None, should_stop=None, options: dict | None = None, params=None,
                  gradient_checkpointing: bool = True) -> dict:
    """Train ``adapter`` (or only ``params``), acting through ``patch`` (an object with ``input_hook`` /
    ``output_hook`` for the cross-attention patch lists, unless ``options`` gives the transformer options that
    carry it), inside ``base``, a host BaseModel, with the model's own objective (:class:`HostObjective`) on
    ``latents`` (already in the model's latent space, on ``device``) and the prompt's ``context`` / ``pooled``; the
    network is frozen and left exactly as it was (``frozen_for_autograd``). ``gradient_checkpointing`` recomputes
    each UNet ResBlock / SpatialTransformer in backward instead of keeping its activations
    (``models/checkpointing.py``; the layers' own forwards are restored afterwards)."""
    if options is None:
        options = {"patches": {"attn2_patch": [patch.input_hook],
                               "attn2_output_patch": [patch.output_hook]}}
    options = {**options, "cond_or_uncond": [0]}
    net = base.diffusion_model
    dit = gradient_checkpointing and bool(getattr(net, "double_blocks", None))
    if dit:  # Flux: each double and single block checkpointed through the host's block replacement
        replace = dict(options.get("patches_replace", {}))
        replace["dit"] = {**replace.get("dit", {}), **BlockTraining(True).patches(net)}
        options = {**options, "patches_replace": replace}
    predict = raw_predictor(base, context, pooled, resolution, device, options)
    # Host networks written for inference add residuals in place right after saving them for backward (Flux's
    # blocks: x += ...): under allow_mutation_on_saved_tensors autograd keeps a copy of what it saved instead; with
    # the blocks checkpointed, each block runs on fresh copies of its streams and copies only the saves its in-place
    # adds overwrite (saved_tensor_copies).
    saves = saved_tensor_copies() if dit else torch.autograd.graph.allow_mutation_on_saved_tensors()
    with torch.inference_mode(False), torch.enable_grad(), frozen_for_autograd(net), saves, \
            unet_checkpointing(net, gradient_checkpointing):
        return train_adapter(adapter, patch, latents, values.to(device), predict, HostObjective(base.model_sampling),
                             steps, lr, batch_size, seed, on_step=on_step, should_stop=should_stop, params=params)
