"""Attention with token maps: dispatching entry points and the autograd Function around the Triton forward.

Forward and backward are Triton kernels (``triton_attention``): neither forms the attention matrix; the backward
recomputes the probabilities from the saved log-sum-exp, as FlashAttention-2 does.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..dispatch import backward_or_reference, run
from . import reference


class AttentionOutput(NamedTuple):
    out: torch.Tensor | None  # (B, H, Nq, D), q's dtype
    lse: torch.Tensor  # (B, H, Nq) float32, natural log
    probs: torch.Tensor | None  # (B, H, Nq, S) float32: the probabilities on ``keys``


def _check(q, k, v, keys, bias) -> list[int] | None:
    """The arguments checked; the chosen keys' values as host ints (read once: free for a CPU tensor, one read of
    S integers for a device tensor; nothing else in a call reads device values)."""
    if q.ndim != 4 or k.ndim != 4 or k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q, k must be (B, H, N, D) with the same B, H, D; got {tuple(q.shape)}, {tuple(k.shape)}")
    if v is not None and v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must match k's (B, H, Nk); got {tuple(v.shape)} and {tuple(k.shape)}")
    host = None
    if keys is not None:
        if not isinstance(keys, torch.Tensor) or keys.ndim != 1 or keys.dtype not in (torch.int32, torch.int64):
            raise ValueError("keys must be a 1-D integer tensor of key indices")
        host = keys.tolist()
        if any(i < 0 or i >= k.shape[2] for i in host):
            raise ValueError(f"keys must lie in 0..{k.shape[2] - 1}")
    if bias is not None:
        if keys is None:
            raise ValueError("bias needs keys: it is added on the chosen keys only")
        B, H, Nq = q.shape[:3]
        if bias.ndim != 4 or bias.shape[-2:] != (Nq, keys.numel()) or bias.shape[0] not in (1, B) \
                or bias.shape[1] not in (1, H):
            raise ValueError(f"bias must be (B or 1, H or 1, {Nq}, {keys.numel()}); got {tuple(bias.shape)}")
    return host


def _reference_backward(q, k, v, keys, bias, scale, with_out, g_out, g_lse, g_probs, needs):
    """The gradients of ``reference.attention`` (chunked, recomputed) for the inputs in ``needs``."""
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(bool(n)) for t, n in zip((q, k, v, bias), needs)]
        results = reference.attention(leaves[0], leaves[1], leaves[2], keys, leaves[3], scale, with_out=with_out)
        pairs = [(r, g) for r, g in zip(results, (g_out, g_lse, g_probs)) if r is not None and g is not None]
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad([r for r, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                   if pairs and wanted else [None] * len(wanted))
    return [next(got) if t is not None and t.requires_grad else None for t in leaves]


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table, bias, scale, with_probs):
        from .triton_attention import attention as triton_attention

        out, lse, probs = triton_attention(q, k, v, table, bias, scale, with_out=v is not None, with_probs=with_probs)
        ctx.save_for_backward(q, k, v, bias, out, lse, probs)
        ctx.table, ctx.scale = table, scale
        return out, lse, probs

    @staticmethod
    def backward(ctx, g_out, g_lse, g_probs):
        from .triton_attention import attention_backward

        q, k, v, bias, out, lse, probs = ctx.saved_tensors
        table = ctx.table

        def kernel():
            dq, dk, dv, dbias = attention_backward(q, k, v, out, lse, probs, table, bias, ctx.scale, g_out, g_lse,
                                                   g_probs)
            if dbias is not None:  # summed over the dimensions the bias was broadcast along
                spread = [i for i in (0, 1) if bias.shape[i] == 1 and dbias.shape[i] != 1]
                dbias = (dbias.sum(dim=spread, keepdim=True) if spread else dbias).to(bias.dtype)
            return dq, dk, dv, dbias

        def fallback():
            keys = None if table is None else table.keys.long()
            return _reference_backward(q, k, v, keys, bias, ctx.scale, v is not None, g_out, g_lse, g_probs,
                                       (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2],
                                        ctx.needs_input_grad[4]))

        dq, dk, dv, dbias = backward_or_reference("attention", kernel, fallback)
        return dq, dk, dv, None, dbias, None, None


def _run(q, k, v, keys, host, bias, scale, with_out) -> AttentionOutput:
    """Repeated keys folded into distinct ones (a repeated key's bias is the sum of its slots'; each slot gets the
    key's probability: gradients follow through the fold), then the kernel, or the reference (``dispatch.run``)."""
    if host is not None and len(set(host)) != len(host):
        distinct = sorted(set(host))
        where = {key: i for i, key in enumerate(distinct)}
        inverse = torch.tensor([where[key] for key in host], device=q.device)
        if bias is not None:
            bias = torch.zeros(*bias.shape[:-1], len(distinct), device=bias.device, dtype=torch.float32).index_add(
                -1, inverse, bias.float())
        r = _run(q, k, v, torch.tensor(distinct), distinct, bias, scale, with_out)
        return AttentionOutput(r.out, r.lse, r.probs[..., inverse])

    def kernel():
        from .triton_attention import check_supported, key_table

        check_supported(q, k, v, bias)
        table = None if host is None else key_table(host, k.shape[2], q.device)
        return _TritonAttention.apply(q, k, v if with_out else None, table, bias, scale, host is not None)

    def ref():
        return reference.attention(q, k, v if with_out else None, keys, bias, scale, with_out=with_out)

    return AttentionOutput(*run("attention", (q, k, v, bias), kernel, ref))


def attention(q, k, v, keys=None, bias=None, scale=None) -> AttentionOutput:
    """Attention of ``q`` over ``k``/``v`` (B, H, N, D), with each query's log-sum-exp, and with ``keys`` (S,) the
    probabilities on those keys; ``bias`` (B|1, H|1, Nq, S) is added to the logits of those keys only. ``keys`` may
    repeat; a CPU tensor costs no device read (a device tensor: one read of its S values)."""
    host = _check(q, k, v, keys, bias)
    return _run(q, k, v, keys, host, bias, scale, True)


def key_probabilities(q, k, keys, bias=None, scale=None) -> AttentionOutput:
    """The probabilities on ``keys`` (and the log-sum-exp) without the attention output: the same softmax pass
    over all keys, without the value product."""
    host = _check(q, k, None, keys, bias)
    return _run(q, k, None, keys, host, bias, scale, False)
