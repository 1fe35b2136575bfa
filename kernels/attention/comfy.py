"""A ComfyUI attention override that computes attention with the token-map kernel, only for the calls that ask.

ComfyUI calls ``transformer_options["optimized_attention_override"](func, q, k, v, heads, mask=None,
attn_precision=None, skip_reshape=False, skip_output_reshape=False, transformer_options=..., ...)`` in place of its
attention function ``func`` (``comfy/ldm/modules/attention.py``, ``wrap_attn``): q, k, v are [B, H, N, D] with
``skip_reshape``, else [B, N, H*D]; the result is [B, H, N, D] with ``skip_output_reshape``, else [B, N, H*D].

``token_map_override(request, previous)`` returns such an override. At each call ``request(q, k, v,
transformer_options)`` (q, k, v as [B, H, N, D]) returns a ``MapRequest`` (which keys, an optional bias on them, and a
``sink`` that receives the ``AttentionOutput``: log-sum-exp and the probabilities on the keys) or None; with None the
host's ``func`` runs on the untouched arguments. An override that was there before (``previous``, e.g. another
pack's) still runs first and is handed the kernel in place of ``func``, so both act; the host's own backend override
(``ModelPatcher.set_model_optimized_attention``, its ``ModelAttentionBackend`` node) ignores the function it is handed,
so for the calls the kernel must serve the kernel runs directly and the host's backend serves every other call
(``call_chain``). Newer hosts pass ``scale`` and ``enable_gqa`` (fewer key/value heads than query heads): honoured.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from . import reference
from .ops import AttentionOutput, attention


class MapRequest(NamedTuple):
    keys: torch.Tensor  # (S,) key indices in this call's key sequence
    bias: torch.Tensor | None = None  # (B|1, H|1, Nq, S), added to those keys' logits
    sink: Callable[[AttentionOutput], None] | None = None  # receives out, lse and the probabilities on the keys


def _heads_first(t, heads, skip_reshape, dim_head=None):
    if skip_reshape:
        return t
    b, n, inner = t.shape
    d = dim_head or inner // heads
    return t.view(b, n, inner // d, d).transpose(1, 2)


def heads_first(q, k, v, heads, skip_reshape=False, enable_gqa=False):
    """q, k, v as [B, H, N, D] from the host's layout; with ``enable_gqa`` the key/value heads (fewer) are repeated to
    the query heads, as grouped-query attention reads them."""
    dim_head = None if skip_reshape else q.shape[-1] // heads
    qh, kh, vh = (_heads_first(t, heads, skip_reshape, dim_head) for t in (q, k, v))
    if enable_gqa and kh.shape[1] != qh.shape[1]:
        rep = qh.shape[1] // kh.shape[1]
        kh, vh = kh.repeat_interleave(rep, dim=1), vh.repeat_interleave(rep, dim=1)
    return qh, kh, vh


def replaces_func(override) -> bool:
    """True for an attention override that ignores the function it is handed and runs a backend of its own: the
    host's ``ModelPatcher.set_model_optimized_attention`` (its ``ModelAttentionBackend`` node)."""
    return "set_model_optimized_attention" in getattr(override, "__qualname__", "")


def call_chain(previous, func, own: bool, args: tuple, kwargs: dict):
    """Continue an override chain: ``previous`` (the override set before this one) handed ``func``, else ``func``.
    ``own``: ``func`` is this override's own attention (the kernel with maps or a bias), which an override that
    replaces the function (the host's backend) would drop: then it runs directly; so does a kernel function an
    override further out asked for (it carries its requests)."""
    own = own or hasattr(func, "asks")
    if previous is None or (own and replaces_func(previous)):
        return func(*args, **kwargs)
    return previous(func, *args, **kwargs)


def chain_holds(options: dict, override) -> bool:
    """Whether ``override`` is still reached from the transformer options' attention override: itself, or through
    the ``previous`` links of EditLab's overrides. False when an override that replaces the function it is handed
    (the host's ModelAttentionBackend, applied to the MODEL later) stands in front of it, or when none is set; an
    override of unknown make is trusted to call the one it wraps."""
    cur = (options or {}).get("optimized_attention_override")
    for _ in range(64):
        if cur is override:
            return True
        if cur is None or replaces_func(cur):
            return False
        if not hasattr(cur, "previous"):
            return True
        cur = cur.previous
    return True


def _host_mask(mask):
    if mask is None:
        return None
    while mask.ndim < 4:  # as ComfyUI's attention_pytorch: add the batch, then the heads dimension
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    return mask


def merged(asks: tuple[MapRequest, ...], q_len: int) -> MapRequest:
    """One request serving all of ``asks``: their keys one after another (a key asked twice is folded by the kernel:
    its bias the sum of its slots', each slot its probability), each bias on its own slots (zeros where a request has
    none), and each sink handed its own slots of the probabilities. ``q_len``: the call's query length."""
    if len(asks) == 1:
        return asks[0]
    sizes = [a.keys.numel() for a in asks]
    bias = None
    given = [a.bias for a in asks if a.bias is not None]
    if given:
        lead = (max(b.shape[0] for b in given), max(b.shape[1] for b in given))
        device = given[0].device
        bias = torch.cat([(torch.zeros(1, 1, q_len, s, device=device) if a.bias is None else
                           a.bias.float().to(device)).expand(*lead, q_len, s) for a, s in zip(asks, sizes)], dim=-1)
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]

    def sink(result: AttentionOutput):
        for a, lo, hi in zip(asks, bounds, bounds[1:]):
            if a.sink is not None:
                probs = None if result.probs is None else result.probs[..., lo:hi]
                a.sink(AttentionOutput(result.out, result.lse, probs))

    return MapRequest(torch.cat([a.keys.cpu() for a in asks]), bias, sink)


def with_request(func: Callable, ask: MapRequest) -> Callable:
    """The attention function serving ``ask`` in place of ``func``; when ``func`` is itself one (an EditLab override
    further out asked for keys or a bias and handed its function on to this one), one call serves every request."""
    return attention_function(*getattr(func, "asks", ()), ask)


def attention_function(*asks: MapRequest) -> Callable:
    """A function with the signature of ComfyUI's attention functions (``attention_pytorch``: q, k, v, heads, mask,
    attn_precision, skip_reshape, skip_output_reshape, ...) computing attention with the token-map kernel for the
    requests ``asks`` (one call for all: :func:`merged`). With a host mask the reference runs (the kernel's bias
    covers the chosen keys only). The function carries its requests (``run.asks``), so an override it is handed to
    adds its own to the same call (:func:`with_request`)."""

    def run(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **rest):
        qh, kh, vh = heads_first(q, k, v, heads, skip_reshape, rest.get("enable_gqa", False))
        ask = merged(asks, qh.shape[2])
        keys = ask.keys  # read on the host by the kernel's entry point (a CPU tensor: no device read)
        bias = None if ask.bias is None else ask.bias.to(qh.device)
        scale = rest.get("scale")
        if mask is None:
            result = attention(qh, kh, vh, keys, bias, scale)
        else:
            result = AttentionOutput(*reference.attention(qh, kh, vh, keys, bias, scale, mask=_host_mask(mask)))
        if ask.sink is not None:
            ask.sink(result)
        out = result.out
        if skip_output_reshape:
            return out
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)

    run.asks = asks
    return run


def token_map_override(request: Callable, previous: Callable | None = None) -> Callable:
    def override(func, *args, **kwargs):
        chained, base = previous, func
        if previous is not None and replaces_func(previous):
            # the host's backend override: it serves the calls the kernel does not, in place of func
            chained, base = None, (lambda *a, **kw: previous(func, *a, **kw))

        def kernel(q, k, v, heads, *more, **rest):
            qh, kh, vh = heads_first(q, k, v, heads, rest.get("skip_reshape", False), rest.get("enable_gqa", False))
            ask = request(qh, kh, vh, rest.get("transformer_options") or {})
            return (base if ask is None else with_request(base, ask))(q, k, v, heads, *more, **rest)

        if chained is not None:
            return chained(kernel, *args, **kwargs)
        return kernel(*args, **kwargs)

    override.previous = previous
    return override


def _differentiates(func) -> bool:
    """False for the host's sub-quadratic attention (its default on the CPU and wherever PyTorch attention is off):
    its key-chunked path, taken when memory is short, exponentiates in place (``torch.exp(x, out=x)``), which autograd
    refuses ("exp(): functions with out=... arguments don't support automatic differentiation")."""
    import comfy.ldm.modules.attention as host_attention

    sub_quad = getattr(host_attention, "attention_sub_quad", None)
    return sub_quad is None or func not in (sub_quad, getattr(sub_quad, "__wrapped__", None))


def differentiable_override(previous: Callable | None = None) -> Callable:
    """An attention override for the passes that run backward through the host's network (LODA's gradient, the
    trainers): a call the host would serve with an attention function autograd cannot run backward through
    (:func:`_differentiates`) is served by the host's own ``attention_pytorch`` (scaled-dot-product attention,
    differentiable on every device) instead; every other function is kept. ``previous``, the override set before,
    stays in front and is handed the function to call."""
    def override(func, *args, **kwargs):
        if not _differentiates(func):
            import comfy.ldm.modules.attention as host_attention

            func = host_attention.attention_pytorch
        return call_chain(previous, func, False, args, kwargs)

    override.previous = previous
    return override


def differentiable_attention(transformer_options: dict) -> dict:
    """A copy of ``transformer_options`` whose attention can run backward (:func:`differentiable_override` in front
    of the override they carry)."""
    to = dict(transformer_options or {})
    to["optimized_attention_override"] = differentiable_override(to.get("optimized_attention_override"))
    return to
