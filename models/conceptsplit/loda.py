"""LODA's objective as plain torch (ConceptSplit, METHODS.md §5): the divergence between concepts' attention maps.

Authors' recipe: the concepts' cross-attention maps (K maps of H x W, taken at the 24x24 / 32x32 layers) are
Gaussian-smoothed (kernel 7, sigma 1) and normalised to distributions over the pixels; the loss is
``relu(t - harmonic mean of KL(A_i || A_j) over ordered pairs i != j)`` with t = 3, and for the first N of the steps
the latent moves by ``z <- z - step * grad`` with ``step = 20 * sqrt(linspace(1, 0.5, N))``. After that, attention
fixing guidance (AFG) keeps each concept inside its mask: the smoothed map at or above its 90th percentile.
The sampler (``loda_sample``) wraps any host sampler: each LODA step is one gradient step on the latent and one
step of the wrapped sampler over ``sigmas[i:i+2]`` (multistep samplers restart their history there); the remaining
steps run in one call of the wrapped sampler. AFG is not built yet (``afg_masks`` gives its masks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
KERNEL, SIGMA, THRESHOLD, STEP, MASK_QUANTILE = 7, 1.0, 3.0, 20.0, 0.9


def gaussian_smooth(maps: torch.Tensor, kernel: int = KERNEL, sigma: float = SIGMA) -> torch.Tensor:
    """(K, H, W) maps blurred by a separable Gaussian (reflect padding: no dark border; a constant map stays constant)."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (K, H, W); got {tuple(maps.shape)}")
    if kernel < 1 or kernel % 2 == 0 or sigma <= 0:
        raise ValueError(f"kernel must be odd and positive and sigma positive; got {kernel}, {sigma}")
    x = torch.arange(kernel, dtype=maps.dtype, device=maps.device) - kernel // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    pad = kernel // 2
    m = maps[:, None]
    if min(maps.shape[-2:]) > pad:
        m = F.pad(m, (pad, pad, pad, pad), mode="reflect")
        m = F.conv2d(m, g.reshape(1, 1, 1, -1))
        m = F.conv2d(m, g.reshape(1, 1, -1, 1))
    return m[:, 0]


def distributions(maps: torch.Tensor) -> torch.Tensor:
    """(K, H, W) non-negative maps -> (K, H*W) distributions over the pixels."""
    flat = maps.reshape(maps.shape[0], -1).clamp(min=0) + EPS
    return flat / flat.sum(-1, keepdim=True)


def pairwise_kl(maps: torch.Tensor) -> torch.Tensor:
    """(K, K) matrix of KL(A_i || A_j) between the maps as distributions (zero diagonal)."""
    p = distributions(maps)
    logp = p.log()
    return (p[:, None] * (logp[:, None] - logp[None])).sum(-1)


def harmonic_mean_kl(maps: torch.Tensor) -> torch.Tensor:
    """Harmonic mean of KL(A_i || A_j) over the ordered pairs i != j (K >= 2)."""
    k = maps.shape[0]
    if k < 2:
        raise ValueError("LODA needs at least two concepts' maps")
    kl = pairwise_kl(maps)
    off = ~torch.eye(k, dtype=torch.bool, device=maps.device)
    return off.sum() / (1.0 / (kl[off] + EPS)).sum()


def loda_loss(maps: torch.Tensor, threshold: float = THRESHOLD, kernel: int = KERNEL,
              sigma: float = SIGMA) -> torch.Tensor:
    """``relu(t - harmonic mean pairwise KL)`` of the smoothed maps: zero once the concepts are apart enough."""
    return F.relu(threshold - harmonic_mean_kl(gaussian_smooth(maps, kernel, sigma)))


def step_sizes(n: int, scale: float = STEP) -> torch.Tensor:
    """The latent step of each of the first ``n`` sampling steps: ``scale * sqrt(linspace(1, 0.5, n))``."""
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    return scale * torch.linspace(1.0, 0.5, n).sqrt() if n > 1 else torch.full((n,), float(scale))


def afg_masks(maps: torch.Tensor, quantile: float = MASK_QUANTILE, kernel: int = KERNEL,
              sigma: float = SIGMA) -> torch.Tensor:
    """(K, H, W) boolean masks: each smoothed map at or above its own ``quantile``."""
    smooth = gaussian_smooth(maps, kernel, sigma)
    q = torch.quantile(smooth.reshape(smooth.shape[0], -1).float(), quantile, dim=-1)
    return smooth >= q.to(smooth.dtype)[:, None, None]


# -- the sampler ------------------------------------------------------------------------------------------------------

class MapTap:
    """attn2 patch pair collecting, with their gradient, each concept's map (sum of its tokens' attention
    probabilities, conditional rows) at every cross-attention layer of one model call, resized to ``size``."""

    def __init__(self, concepts: list, layers: dict, size: tuple[int, int]):
        from ..expression.patch import Hook

        self.concepts = [list(p) for p in concepts]
        self.layers, self.size = dict(layers), tuple(size)
        self.collected, self._inputs = [], {}
        self.input_hook = Hook(self.before, self, report_models=False)
        self.output_hook = Hook(self.after, self, report_models=False)

    extra_models = ()

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    @staticmethod
    def _name(extra):
        block = extra.get("block")
        return None if block is None else f"{block[0]}.{block[1]}.{extra.get('block_index', 0)}"

    def before(self, n, context, value, extra):
        if self._name(extra) in self.layers and context is not None:
            self._inputs[self._name(extra)] = (n, context)
        return n, context, value

    def after(self, out, extra):
        from .attention_maps import text_attention
        from .patch import cond_rows

        stashed = self._inputs.pop(self._name(extra), None)
        shape = extra.get("activations_shape")
        if stashed is None or shape is None:
            return out
        n, context = stashed
        attn = self.layers[self._name(extra)]
        rows = cond_rows(extra.get("cond_or_uncond", [0]), n.shape[0])
        probs = text_attention(attn.to_q(n[rows]), attn.to_k(context[rows]), extra["n_heads"])
        h, w = int(shape[-2]), int(shape[-1])
        maps = torch.stack([probs[:, :, p].sum(-1).mean(0).reshape(h, w) for p in self.concepts])
        self.collected.append(F.interpolate(maps[None], size=self.size, mode="bilinear", align_corners=False)[0])
        return out

    def maps(self) -> torch.Tensor:
        return torch.stack(self.collected).mean(0)


def _scale(model_sampling, sigma, like, max_denoise: bool) -> torch.Tensor:
    """What the host's noise scaling multiplies the noise by at ``sigma`` (no latent image)."""
    ones = torch.ones_like(like)
    return model_sampling.noise_scaling(sigma, ones, torch.zeros_like(like), max_denoise)


def loda_sample(wrapped, model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar,
                concepts: list, layers: dict, n_steps: int, threshold: float = THRESHOLD, scale: float = STEP,
                frozen=None, should_stop=None, on_step=None):
    """Run ``wrapped`` (a host sampler) with LODA: before each of the first ``n_steps`` steps the latent moves down
    the gradient of ``loda_loss`` of the concepts' maps, then the wrapped sampler takes that one step; the rest runs
    in one call. ``n_steps`` = 0 is the wrapped sampler's call as it is."""
    n = min(int(n_steps), len(sigmas) - 1)
    if n == 0:
        return wrapped.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                              disable_pbar)
    if denoise_mask is not None:
        raise ValueError("LODA does not take a denoise (inpainting) mask")
    sampling = model_wrap.inner_model.model_sampling
    x = sampling.noise_scaling(sigmas[0], noise, latent_image, wrapped.max_denoise(model_wrap, sigmas))
    sizes = step_sizes(n, scale)
    total = len(sigmas) - 1
    extra_args = dict(extra_args)

    def chunk(start, stop, x):
        part = sigmas[start:stop + 1]
        cb = None if callback is None else (lambda i, x0, xi, _t: callback(start + i, x0, xi, total))
        f = _scale(sampling, part[0], x, wrapped.max_denoise(model_wrap, part))
        out = wrapped.sample(model_wrap, part, extra_args, cb, x / f, torch.zeros_like(x), None, True)
        return out if stop == total else sampling.noise_scaling(part[-1], torch.zeros_like(out), out, False)

    for i in range(n):
        if should_stop is not None:
            should_stop()
        x = x - sizes[i] * loda_gradient(model_wrap, x, sigmas[i], extra_args, concepts, layers, threshold, frozen)
        x = chunk(i, i + 1, x)
        if on_step is not None:
            on_step(i + 1, n)
    return x if n == total else chunk(n, total, x)


def loda_gradient(model_wrap, x, sigma, extra_args, concepts, layers, threshold, frozen=None) -> torch.Tensor:
    """d loda_loss / d x at ``sigma``, through one model call (``frozen(module)``: a context manager that lets
    gradients flow through the frozen model, e.g. ``frozen_for_autograd``)."""
    import contextlib
    import copy

    tap = MapTap(concepts, layers, tuple(x.shape[-2:]))
    options = copy.copy(extra_args.get("model_options", {}))
    to = dict(options.get("transformer_options", {}))
    patches = {k: list(v) for k, v in to.get("patches", {}).items()}
    patches.setdefault("attn2_patch", []).append(tap.input_hook)
    patches.setdefault("attn2_output_patch", []).append(tap.output_hook)
    to["patches"] = patches
    options["transformer_options"] = to
    guard = frozen(model_wrap.inner_model.diffusion_model) if frozen else contextlib.nullcontext()
    with torch.inference_mode(False), torch.enable_grad(), guard:
        z = x.detach().clone().requires_grad_(True)
        model_wrap(z, sigma * z.new_ones([z.shape[0]]), model_options=options, seed=extra_args.get("seed"))
        if not tap.collected:
            return torch.zeros_like(x)
        loss = loda_loss(tap.maps(), threshold)
        if not loss.requires_grad or float(loss.detach()) == 0.0:
            return torch.zeros_like(x)
        grad, = torch.autograd.grad(loss, z)
    return grad.detach().clone()
