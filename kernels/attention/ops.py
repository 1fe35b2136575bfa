"""Attention with token maps: dispatching entry points and the autograd Function around the Triton forward.

The backward recomputes through the reference (``reference.attention`` under autograd): it forms the attention
matrix of that one call, as eager attention does; the forward, which is what runs at every sampling step, does not.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..dispatch import use_triton
from . import reference


class AttentionOutput(NamedTuple):
    out: torch.Tensor | None  # (B, H, Nq, D), q's dtype
    lse: torch.Tensor  # (B, H, Nq) float32, natural log
    probs: torch.Tensor | None  # (B, H, Nq, S) float32: the probabilities on ``keys``


def _check(q, k, v, keys, bias):
    if q.ndim != 4 or k.ndim != 4 or k.shape[:2] != q.shape[:2] and k.shape[0] != 1 or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q, k must be (B, H, N, D) with the same B, H, D; got {tuple(q.shape)}, {tuple(k.shape)}")
    if v is not None and v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must match k's (B, H, Nk); got {tuple(v.shape)} and {tuple(k.shape)}")
    if keys is not None:
        if keys.ndim != 1 or keys.dtype not in (torch.int32, torch.int64):
            raise ValueError("keys must be a 1-D integer tensor of key indices")
        if keys.numel() and (int(keys.min()) < 0 or int(keys.max()) >= k.shape[2]):
            raise ValueError(f"keys must lie in 0..{k.shape[2] - 1}")
        if bias is not None and torch.unique(keys).numel() != keys.numel():
            raise ValueError("keys must be distinct when a bias is given")
    if bias is not None:
        if keys is None:
            raise ValueError("bias needs keys: it is added on the chosen keys only")
        B, H, Nq = q.shape[:3]
        if bias.ndim != 4 or bias.shape[-2:] != (Nq, keys.numel()) or bias.shape[0] not in (1, B) \
                or bias.shape[1] not in (1, H):
            raise ValueError(f"bias must be (B or 1, H or 1, {Nq}, {keys.numel()}); got {tuple(bias.shape)}")


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keys, bias, scale, with_probs):
        from .triton_attention import attention as triton_attention

        out, lse, probs = triton_attention(q, k, v, keys, bias, scale, with_out=v is not None, with_probs=with_probs)
        ctx.save_for_backward(q, k, v, keys, bias)
        ctx.scale, ctx.with_probs = scale, with_probs
        return out, lse, probs

    @staticmethod
    def backward(ctx, g_out, g_lse, g_probs):
        q, k, v, keys, bias = ctx.saved_tensors
        inputs = [t for t in (q, k, v, bias) if t is not None]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in inputs]
            it = iter(leaves)
            q2, k2 = next(it), next(it)
            v2 = next(it) if v is not None else None
            b2 = next(it) if bias is not None else None
            out, lse, probs = reference.attention(q2, k2, v2, keys if ctx.with_probs or b2 is not None else None,
                                                  b2, ctx.scale, with_out=v is not None)
            pairs = [(o, g) for o, g in ((out, g_out), (lse, g_lse), (probs, g_probs))
                     if o is not None and g is not None]
            grads = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
        it = iter(grads)
        gq, gk = next(it), next(it)
        gv = next(it) if v is not None else None
        gb = next(it) if bias is not None else None
        return gq, gk, gv, None, gb, None, None


def attention(q, k, v, keys=None, bias=None, scale=None) -> AttentionOutput:
    """Attention of ``q`` over ``k``/``v`` (B, H, N, D), with each query's log-sum-exp, and with ``keys`` (S,) the
    probabilities on those keys; ``bias`` (B|1, H|1, Nq, S) is added to the logits of those keys only."""
    _check(q, k, v, keys, bias)
    if use_triton(q, k, v):
        return AttentionOutput(*_TritonAttention.apply(q, k, v, keys, bias, scale, keys is not None))
    return AttentionOutput(*reference.attention(q, k, v, keys, bias, scale))


def key_probabilities(q, k, keys, bias=None, scale=None) -> AttentionOutput:
    """The probabilities on ``keys`` (and the log-sum-exp) without the attention output: the same softmax pass
    over all keys, without the value product."""
    _check(q, k, None, keys, bias)
    if use_triton(q, k):
        return AttentionOutput(*_TritonAttention.apply(q, k, None, keys, bias, scale, True))
    return AttentionOutput(*reference.attention(q, k, k, keys, bias, scale, with_out=False))
