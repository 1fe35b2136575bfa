"""Attention with token maps: dispatching entry points and the autograd Function around the Triton forward.

Forward and backward are Triton kernels (``triton_attention``): neither forms the attention matrix; the backward
recomputes the probabilities from the saved log-sum-exp, as FlashAttention-2 does.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..dispatch import triton_or_none, use_triton
from . import reference


class AttentionOutput(NamedTuple):
    out: torch.Tensor | None  # (B, H, Nq, D), q's dtype
    lse: torch.Tensor  # (B, H, Nq) float32, natural log
    probs: torch.Tensor | None  # (B, H, Nq, S) float32: the probabilities on ``keys``


def _check(q, k, v, keys, bias):
    if q.ndim != 4 or k.ndim != 4 or k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1]:
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
        ctx.save_for_backward(q, k, v, keys, bias, out, lse, probs)
        ctx.scale = scale
        return out, lse, probs

    @staticmethod
    def backward(ctx, g_out, g_lse, g_probs):
        from .triton_attention import attention_backward

        q, k, v, keys, bias, out, lse, probs = ctx.saved_tensors
        dq, dk, dv, dbias = attention_backward(q, k, v, out, lse, probs, keys, bias, ctx.scale, g_out, g_lse,
                                               g_probs)
        if dbias is not None:  # summed over the dimensions the bias was broadcast along
            spread = [i for i in (0, 1) if bias.shape[i] == 1 and dbias.shape[i] != 1]
            dbias = (dbias.sum(dim=spread, keepdim=True) if spread else dbias).to(bias.dtype)
        return dq, dk, dv, None, dbias, None, None


def attention(q, k, v, keys=None, bias=None, scale=None) -> AttentionOutput:
    """Attention of ``q`` over ``k``/``v`` (B, H, N, D), with each query's log-sum-exp, and with ``keys`` (S,) the
    probabilities on those keys; ``bias`` (B|1, H|1, Nq, S) is added to the logits of those keys only."""
    _check(q, k, v, keys, bias)
    if use_triton(q, k, v):
        done = triton_or_none(_TritonAttention.apply, q, k, v, keys, bias, scale, keys is not None)
        if done is not None:
            return AttentionOutput(*done)
    return AttentionOutput(*reference.attention(q, k, v, keys, bias, scale))


def key_probabilities(q, k, keys, bias=None, scale=None) -> AttentionOutput:
    """The probabilities on ``keys`` (and the log-sum-exp) without the attention output: the same softmax pass
    over all keys, without the value product."""
    _check(q, k, None, keys, bias)
    if use_triton(q, k):
        done = triton_or_none(_TritonAttention.apply, q, k, None, keys, bias, scale, True)
        if done is not None:
            return AttentionOutput(*done)
    return AttentionOutput(*reference.attention(q, k, k, keys, bias, scale, with_out=False))
