"""Readable torch reference of attention with token maps (fp32 math, the full attention matrix).

Layouts: ``q`` (B, H, Nq, D); ``k``, ``v`` (B, H, Nk, D); ``keys`` (S,) distinct key indices (the concepts'
tokens); ``bias`` (B or 1, H or 1, Nq, S), added to the logits of the chosen keys only; ``mask`` an additive
(or boolean: True keeps) mask broadcastable to (B, H, Nq, Nk), as ComfyUI passes it.

    logits = q k^T * scale (+ mask) (+ bias on the columns ``keys``)
    lse    = logsumexp(logits, -1)                       (B, H, Nq), float32
    out    = exp(logits - lse) v                          (B, H, Nq, D), q's dtype
    probs  = exp(logits[..., keys] - lse)                 (B, H, Nq, S), float32
"""
from __future__ import annotations

import torch


def logits_of(q, k, keys=None, bias=None, scale=None, mask=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask.float()
    if bias is not None:
        full = bias.float().expand(*logits.shape[:-1], keys.numel())
        logits = logits.index_add(-1, keys, full)
    return logits


def attention(q, k, v, keys=None, bias=None, scale=None, mask=None, with_out=True):
    logits = logits_of(q, k, keys, bias, scale, mask)
    lse = torch.logsumexp(logits, -1)
    p = torch.exp(logits - lse[..., None])
    out = (p @ v.float()).to(q.dtype) if with_out else None
    probs = p[..., keys] if keys is not None else None
    return out, lse, probs
