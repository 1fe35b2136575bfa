"""LODA's objective as plain torch (ConceptSplit, METHODS.md §5): the divergence between concepts' attention maps.

Authors' recipe: the concepts' cross-attention maps (K maps of H x W, taken at the 24x24 / 32x32 layers) are
Gaussian-smoothed (kernel 7, sigma 1) and normalised to distributions over the pixels; the loss is
``relu(t - harmonic mean of KL(A_i || A_j) over the pairs i < j)`` with t = 3, and for the first N of the steps
the latent moves by ``z <- z - step_i * grad_z`` with ``step_i = 20 * sqrt(linspace(1, 0.5, T))[i]`` (T: all sampling
steps), computed on the conditional pass only. ``z`` is the model's own latent, the network's input: ComfyUI samples
``x = z / c_in(sigma)`` (``c_in = 1 / sqrt(1 + sigma^2)`` on eps/v models, 1 on flow models), so the step taken on x is
``-step * grad_x / c_in^2`` (``loda_step``). After that, attention
fixing guidance (AFG) keeps each concept inside its mask: the map smoothed with sigma 1.5 at or above its 90th
percentile. The maps are averaged over the UNet's cross-attention layers nearest a quarter of the latent's side (the
authors' 24x24 on SD2.1 at 768 px and 32x32 on SDXL at 1024 px, where they read the down blocks only; 16x16 on SD1.5
at 512 px) and blurred, compared and thresholded at that native size, as the authors do; ``map_layers="all"`` averages
every layer's map resized to the largest layer's size; Flux: its double blocks' joint attention on the image token
grid. AFG: the authors' hard mask (logit bias -1e8, ``HARD``) or a soft bias of ``strength``.
The sampler (``loda_sample``) wraps any host sampler: each LODA step is one gradient step on the latent and one
step of the wrapped sampler over ``sigmas[i:i+2]`` (multistep samplers restart their history there); the remaining
steps run in one call of the wrapped sampler with AFG (``AFGPatch`` on UNets, ``flux.FluxAFG`` on Flux).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ...kernels.attention.comfy import differentiable_attention
from ..patch_layer import (KeptInputPatch, block_name, cond_rows, layer_text_attention, merge_heads, output_delta,
                           split_heads, value_changes, with_attn2_patches)

EPS = 1e-8
KERNEL, SIGMA, THRESHOLD, STEP, MASK_QUANTILE = 7, 1.0, 3.0, 20.0, 0.9
AFG_SIGMA = 1.5  # the authors' blur of the maps the AFG masks are cut from
HARD = 1e8  # the authors' AFG: logits outside the mask get -1e8 (a hard mask)
MAP_LAYERS = ("authors", "all")


def quarter_resolution(sizes, latent: tuple[int, int]) -> set:
    """The layer resolutions (h, w) among ``sizes`` nearest a quarter of the ``latent``'s size: the authors' map
    layers (SD2.1 at 768 px: latent 96 -> 24x24; SDXL at 1024 px: latent 128 -> 32x32)."""
    sizes = set(sizes)
    gap = {hw: abs(hw[0] - latent[0] / 4) + abs(hw[1] - latent[1] / 4) for hw in sizes}
    best = min(gap.values())
    return {hw for hw in sizes if gap[hw] == best}


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
    """Harmonic mean of KL(A_i || A_j) over the pairs i < j (K >= 2), as the authors take it."""
    k = maps.shape[0]
    if k < 2:
        raise ValueError("LODA needs at least two concepts' maps")
    kl = pairwise_kl(maps)
    upper = torch.ones(k, k, dtype=torch.bool, device=maps.device).triu(1)
    return upper.sum() / (1.0 / (kl[upper] + EPS)).sum()


def loda_loss(maps: torch.Tensor, threshold: float = THRESHOLD, kernel: int = KERNEL,
              sigma: float = SIGMA) -> torch.Tensor:
    """``relu(t - harmonic mean pairwise KL)`` of the smoothed maps: zero once the concepts are apart enough."""
    return F.relu(threshold - harmonic_mean_kl(gaussian_smooth(maps, kernel, sigma)))


def step_sizes(n: int, scale: float = STEP, total: int | None = None) -> torch.Tensor:
    """The latent step of each of the first ``n`` of ``total`` sampling steps (default ``total = n``): the authors'
    schedule over all steps, ``scale * sqrt(linspace(1, 0.5, total))``, of which LODA takes the first ``n``."""
    total = n if total is None else int(total)
    if n < 0 or total < n:
        raise ValueError(f"need 0 <= n <= total; got n={n}, total={total}")
    full = scale * torch.linspace(1.0, 0.5, total).sqrt() if total > 1 else torch.full((total,), float(scale))
    return full[:n]


def loda_step(model_sampling, x: torch.Tensor, sigma, grad: torch.Tensor, step: float) -> torch.Tensor:
    """``x`` after one LODA step of size ``step`` taken, as the authors take it, on the model's own latent
    ``z = c_in(sigma) * x`` (the host's ``calculate_input``): ``grad`` is d loss / d x, and ``z - step * d loss / d z``
    is ``x - step * grad / c_in^2`` in the sampler's space (eps/v: ``(1 + sigma^2)``; flow: 1)."""
    s = sigma if torch.is_tensor(sigma) else torch.tensor(float(sigma))
    c_in = model_sampling.calculate_input(s.reshape(1).to(x.device, torch.float32),
                                          torch.ones((1,) * x.ndim, device=x.device, dtype=torch.float32))
    return x - step * grad / c_in.square().to(x.dtype)


def afg_masks(maps: torch.Tensor, quantile: float = MASK_QUANTILE, kernel: int = KERNEL,
              sigma: float = AFG_SIGMA) -> torch.Tensor:
    """(K, H, W) boolean masks: each smoothed map at or above its own ``quantile``."""
    smooth = gaussian_smooth(maps, kernel, sigma)
    q = torch.quantile(smooth.reshape(smooth.shape[0], -1).float(), quantile, dim=-1)
    return smooth >= q.to(smooth.dtype)[:, None, None]


# -- the sampler ------------------------------------------------------------------------------------------------------

class MapTap(KeptInputPatch):
    """attn2 patch pair collecting, with their gradient, each concept's map (sum of its tokens' attention
    probabilities, conditional rows, mean over heads) at every cross-attention layer of one model call, at the
    layer's own resolution. ``down_only``: input (down) blocks only (the authors' SDXL maps).

    The loss needs nothing past the last layer whose maps it reads, so once the call is past it (``down_only``: the
    first layer out of the down blocks; the authors' layers: the first up-block layer above their resolution, every
    later one being larger still) the rest of the network runs with autograd off: nothing of it is kept for
    backward, and the gradient is the same. The caller turns autograd back on after the call (``stopped``)."""

    STOP_EARLY = True

    def __init__(self, concepts: list, layers: dict, size: tuple[int, int], map_layers: str = "authors",
                 down_only: bool = False):
        if map_layers not in MAP_LAYERS:
            raise ValueError(f"map_layers must be one of {MAP_LAYERS}; got {map_layers!r}")
        self.concepts = [list(p) for p in concepts]
        self.layers, self.size, self.map_layers = dict(layers), tuple(size), map_layers
        self.down_only = down_only
        if down_only:
            self.layers = {k: v for k, v in self.layers.items() if k.startswith("input.")}
        self.collected = []
        self.stopped = False
        super().__init__()

    def _past_the_maps(self, name: str, extra) -> bool:
        if not self.STOP_EARLY or name is None:
            return False
        if self.down_only:
            return not name.startswith("input.")
        if self.map_layers != "authors":
            return False
        shape = extra.get("activations_shape")
        seen = {hw for hw, _ in self.collected}  # every resolution has been seen by the time the up blocks run
        if not name.startswith("output.") or shape is None or not seen:
            return False
        area = int(shape[-2]) * int(shape[-1])
        return all(area > h * w for h, w in quarter_resolution(seen, self.size))

    def keep(self, n, context, value, extra):
        name = block_name(extra)
        if self.stopped or self._past_the_maps(name, extra):
            self.stopped = True
            torch.set_grad_enabled(False)
            return None
        return (n, context) if name in self.layers and context is not None else None

    def apply(self, out, kept, extra):
        n, context = kept
        found = layer_text_attention(self.layers[block_name(extra)], n, context, extra)
        if found is None:
            return out
        probs, (h, w) = found
        self.collected.append(((h, w), torch.stack([probs[:, :, p].sum(-1).mean(0).reshape(h, w)
                                                    for p in self.concepts])))
        return out

    def maps(self) -> torch.Tensor:
        """The concepts' maps (K, h, w) averaged over the chosen layers (``map_layers``): the authors' layers share
        one resolution, kept as it is; with "all", each layer's map is resized (bilinear) to the largest."""
        sizes = {hw for hw, _ in self.collected}
        if self.map_layers == "authors":
            keep = quarter_resolution(sizes, self.size)
            return torch.stack([m for hw, m in self.collected if hw in keep]).mean(0)
        top = max(sizes, key=lambda hw: hw[0] * hw[1])
        return torch.stack([m if hw == top else F.interpolate(m[None], size=top, mode="bilinear",
                                                               align_corners=False)[0]
                            for hw, m in self.collected]).mean(0)


def _scale(model_sampling, sigma, like, max_denoise: bool) -> torch.Tensor:
    """What the host's noise scaling multiplies the noise by at ``sigma`` (no latent image)."""
    ones = torch.ones_like(like)
    return model_sampling.noise_scaling(sigma, ones, torch.zeros_like(like), max_denoise)


def loda_sample(wrapped, model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar,
                concepts: list, layers: dict, n_steps: int, threshold: float = THRESHOLD, scale: float = STEP,
                afg_strength: float = 0.0, frozen=None, should_stop=None, on_step=None, afg_out: list | None = None,
                map_layers: str = "authors", down_only: bool = False, inspect_afg: int = 0):
    """Run ``wrapped`` (a host sampler) with LODA: before each of the first ``n_steps`` steps the latent moves down
    the gradient of ``loda_loss`` of the concepts' maps, then the wrapped sampler takes that one step; the rest runs
    in one call, with attention fixing guidance (``AFGPatch``, ``afg_strength`` > 0) from the masks of the last
    LODA step's maps. ``n_steps`` = 0 is the wrapped sampler's call as it is. ``afg_out``: receives the AFG patch."""
    n = min(int(n_steps), len(sigmas) - 1)
    if n == 0:
        return wrapped.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                              disable_pbar)
    if denoise_mask is not None:
        raise ValueError("LODA does not take a denoise (inpainting) mask: the latent carries one (InpaintModelConditioning "
                         "with noise_mask on, e.g. for Flux Fill, or Set Latent Noise Mask); turn noise_mask off "
                         "(Flux Fill still sees the mask through its conditioning) or sample without LODA")
    sampling = model_wrap.inner_model.model_sampling
    x = sampling.noise_scaling(sigmas[0], noise, latent_image, wrapped.max_denoise(model_wrap, sigmas))
    total = len(sigmas) - 1
    sizes = step_sizes(n, scale, total)
    extra_args = dict(extra_args)

    def chunk(start, stop, x, args=extra_args):
        part = sigmas[start:stop + 1]
        cb = None if callback is None else (lambda i, x0, xi, _t: callback(start + i, x0, xi, total))
        f = _scale(sampling, part[0], x, wrapped.max_denoise(model_wrap, part))
        if args.get("seed") is not None:  # ancestral / SDE samplers draw fresh noise in every chunk
            args = {**args, "seed": int(args["seed"]) + start}
        out = wrapped.sample(model_wrap, part, args, cb, x / f, torch.zeros_like(x), None, True)
        return out if stop == total else sampling.noise_scaling(part[-1], torch.zeros_like(out), out, False)

    maps = None
    for i in range(n):
        if should_stop is not None:
            should_stop()
        grad, maps = loda_gradient(model_wrap, x, sigmas[i], extra_args, concepts, layers, threshold, frozen,
                                   map_layers, down_only)
        x = chunk(i, i + 1, loda_step(sampling, x, sigmas[i], grad, float(sizes[i])))
        if on_step is not None:
            on_step(i + 1, n)
    if n == total:
        return x
    args = extra_args
    if afg_strength > 0 and maps is not None:
        if is_flux(layers):
            import copy

            from .flux import FluxAFG, image_grid, installed

            options = copy.copy(extra_args.get("model_options", {}))
            to = options.get("transformer_options", {})
            size = tuple(x.shape[-2:])
            afg = FluxAFG(concepts, afg_masks(maps), layers, afg_strength,
                          image_grid(model_wrap.inner_model.diffusion_model, size),
                          previous=to.get("optimized_attention_override"), inspect=inspect_afg)
            options["transformer_options"] = installed(to, afg)
            args = {**extra_args, "model_options": options}
        else:
            afg = AFGPatch(concepts, afg_masks(maps), layers, afg_strength)
            args = {**extra_args, "model_options": _with_patches(extra_args, afg.input_hook, afg.output_hook)}
        if afg_out is not None:
            afg_out.append(afg)
    return chunk(n, total, x, args)


class AFGPatch(KeptInputPatch):
    """Attention fixing guidance on a UNet's cross-attention: for each concept, the logits of its tokens at image
    positions outside its mask are lowered by ``strength`` (``HARD``: the authors' -1e8, a hard mask); the layer's
    output moves by ``to_out((P' - P)(v + delta))`` (without to_out's bias), on the conditional rows, ``delta``
    being the value changes other patches of the call published (ToVA), so the result is ``to_out(P'(v + delta))``:
    the adapted values, confined. ``outside`` records, per call, the attention mass the concepts put outside their
    masks without and with the bias (for inspection)."""

    def __init__(self, concepts: list, masks: torch.Tensor, layers: dict, strength: float):
        self.concepts = [list(p) for p in concepts]
        self.masks = masks.float()  # (K, h, w) at the maps' own size; resized (nearest) to each layer's
        self.layers, self.strength = dict(layers), float(strength)
        self.outside = []
        super().__init__()

    def keep(self, n, context, value, extra):
        if block_name(extra) in self.layers and context is not None:
            return n, context, context if value is None else value
        return None

    def apply(self, out, kept, extra):
        shape = extra.get("activations_shape")
        if shape is None:
            return out
        n, context, value_in = kept
        attn = self.layers[block_name(extra)]
        rows = cond_rows(extra.get("cond_or_uncond", [0]), n.shape[0])
        if not rows:
            return out
        heads = extra["n_heads"]
        q, k, v = attn.to_q(n[rows]), attn.to_k(context[rows]), attn.to_v(value_in[rows]).float()
        moved = value_changes(extra)
        if moved is not None:
            v = v + moved[rows].to(v.device)
        b, npix, inner = q.shape
        d = inner // heads
        logits = split_heads(q.float(), heads) @ split_heads(k.float(), heads).transpose(-1, -2) / d ** 0.5
        h, w = int(shape[-2]), int(shape[-1])
        masks = F.interpolate(self.masks[None].to(logits.device), size=(h, w), mode="nearest")[0].reshape(
            len(self.concepts), -1) > 0.5
        bias = torch.zeros(npix, logits.shape[-1], device=logits.device)
        for mask, positions in zip(masks, self.concepts):
            cols = [p for p in positions if p < logits.shape[-1]]
            bias[(~mask).nonzero()[:, :1], torch.tensor(cols, device=bias.device)[None]] = -self.strength
        plain, biased = logits.softmax(-1), (logits + bias).softmax(-1)
        outside = lambda p: float(sum(p.mean((0, 1))[~m][:, [c for c in cs if c < p.shape[-1]]].sum()
                                      for m, cs in zip(masks, self.concepts)))
        self.outside.append((outside(plain), outside(biased)))
        delta = merge_heads((biased - plain) @ split_heads(v, heads)).to(n.dtype)
        result = out.clone()
        result[rows] = out[rows] + output_delta(attn, delta).to(out.dtype)
        return result


def _with_patches(extra_args: dict, input_hook, output_hook) -> dict:
    """A copy of the sampler's model options with an attn2 patch pair appended (the original is not changed)."""
    return with_attn2_patches(extra_args.get("model_options", {}), input_hook, output_hook)


def is_flux(layers: dict) -> bool:
    return bool(layers) and all(name.startswith("double.") for name in layers)


def _tap(model_wrap, extra_args, concepts, layers, size, map_layers="authors", down_only=False):
    """A map recorder for one model call, and the model options that carry it: attn2 patches on a UNet; on Flux an
    attention override (chained to the one set before) and a post_input patch, its maps on the image token grid."""
    if not is_flux(layers):
        tap = MapTap(concepts, layers, size, map_layers, down_only)
        return tap, _with_patches(extra_args, tap.input_hook, tap.output_hook)
    import copy

    from .flux import FluxMapTap, image_grid, installed

    options = copy.copy(extra_args.get("model_options", {}))
    to = options.get("transformer_options", {})
    grid = image_grid(model_wrap.inner_model.diffusion_model, size)
    tap = FluxMapTap(concepts, layers, grid, grid, previous=to.get("optimized_attention_override"))
    options["transformer_options"] = installed(to, tap)
    return tap, options


@contextlib.contextmanager
def _conditional_only(guider):
    """The guider's model call on the conditional branch only, as the authors take LODA's gradient (the maps are
    read from the conditional rows; the unconditional pass would only cost memory): cfg 1 meanwhile, which the host's
    sampling function runs without the negative."""
    if not hasattr(guider, "cfg"):
        yield
        return
    cfg, guider.cfg = guider.cfg, 1.0
    try:
        yield
    finally:
        guider.cfg = cfg


def loda_gradient(model_wrap, x, sigma, extra_args, concepts, layers, threshold, frozen=None, map_layers="authors",
                  down_only=False):
    """(d loda_loss / d x at ``sigma``, the concepts' maps (K, h, w) at their own size), through one model call
    (``frozen(module)``: a context manager that lets gradients flow through the frozen model, e.g.
    ``frozen_for_autograd``)."""

    tap, options = _tap(model_wrap, extra_args, concepts, layers, tuple(x.shape[-2:]), map_layers, down_only)
    # backward runs through every attention call: none may be one autograd refuses (the host's CPU default)
    options = {**options, "disable_cfg1_optimization": False,
               "transformer_options": differentiable_attention(options.get("transformer_options", {}))}
    guard = frozen(model_wrap.inner_model.diffusion_model) if frozen else contextlib.nullcontext()
    # Flux's blocks update their streams in place (img += ...), and so do other packs' and the host's patches (FreeU
    # scales the skip features in place): saved tensors are copied when mutated.
    mutation = torch.autograd.graph.allow_mutation_on_saved_tensors()
    with torch.inference_mode(False), torch.enable_grad(), guard, mutation, _conditional_only(model_wrap):
        z = x.detach().clone().requires_grad_(True)
        model_wrap(z, sigma * z.new_ones([z.shape[0]]), model_options=options, seed=extra_args.get("seed"))
        torch.set_grad_enabled(True)  # the tap turns autograd off past the layers it reads (MapTap)
        if not tap.collected:
            return torch.zeros_like(x), None
        maps = tap.maps()
        loss = loda_loss(maps, threshold)
        if not loss.requires_grad or float(loss.detach()) == 0.0:
            return torch.zeros_like(x), maps.detach()
        grad, = torch.autograd.grad(loss, z)
    return grad.detach().clone(), maps.detach()
