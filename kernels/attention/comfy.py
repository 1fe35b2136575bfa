"""A ComfyUI attention override that computes attention with the token-map kernel, only for the calls that ask.

ComfyUI calls ``transformer_options["optimized_attention_override"](func, q, k, v, heads, mask=None,
attn_precision=None, skip_reshape=False, skip_output_reshape=False, transformer_options=..., ...)`` in place of its
attention function ``func`` (``comfy/ldm/modules/attention.py``, ``wrap_attn``): q, k, v are [B, H, N, D] with
``skip_reshape``, else [B, N, H*D]; the result is [B, H, N, D] with ``skip_output_reshape``, else [B, N, H*D].

``token_map_override(request, previous)`` returns such an override. At each call ``request(q, k, v,
transformer_options)`` (q, k, v as [B, H, N, D]) returns a ``MapRequest`` (which keys, an optional bias on them, and a
``sink`` that receives the ``AttentionOutput``: log-sum-exp and the probabilities on the keys) or None; with None the
host's ``func`` runs on the untouched arguments. An override that was there before (``previous``, e.g. another
pack's) still runs first and is handed the kernel in place of ``func``, so both act.
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


def _heads_first(t, heads, skip_reshape):
    if skip_reshape:
        return t
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


def _host_mask(mask):
    if mask is None:
        return None
    while mask.ndim < 4:  # as ComfyUI's attention_pytorch: add the batch, then the heads dimension
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    return mask


def attention_function(ask: MapRequest) -> Callable:
    """A function with the signature of ComfyUI's attention functions (``attention_pytorch``: q, k, v, heads, mask,
    attn_precision, skip_reshape, skip_output_reshape, ...) computing attention with the token-map kernel for
    ``ask``. With a host mask the reference runs (the kernel's bias covers the chosen keys only)."""

    def run(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **rest):
        qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
        keys = ask.keys.to(qh.device)
        bias = None if ask.bias is None else ask.bias.to(qh.device)
        if mask is None:
            result = attention(qh, kh, vh, keys, bias)
        else:
            result = AttentionOutput(*reference.attention(qh, kh, vh, keys, bias, mask=_host_mask(mask)))
        if ask.sink is not None:
            ask.sink(result)
        out = result.out
        if skip_output_reshape:
            return out
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)

    return run


def token_map_override(request: Callable, previous: Callable | None = None) -> Callable:
    def override(func, *args, **kwargs):
        def kernel(q, k, v, heads, *more, **rest):
            skip_reshape = rest.get("skip_reshape", False)
            qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
            ask = request(qh, kh, vh, rest.get("transformer_options") or {})
            return (func if ask is None else attention_function(ask))(q, k, v, heads, *more, **rest)

        if previous is not None:
            return previous(kernel, *args, **kwargs)
        return kernel(*args, **kwargs)

    return override
