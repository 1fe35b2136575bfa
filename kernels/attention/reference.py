"""Readable torch reference of attention with token maps (fp32 math), chunked over the queries.

Layouts: ``q`` (B, H, Nq, D); ``k``, ``v`` (B, H, Nk, D); ``keys`` (S,) key indices (the concepts' tokens; a key
may repeat: each slot gets the key's probability, and a repeated key's bias is the sum of its slots'); ``bias``
(B or 1, H or 1, Nq, S), added to the logits of the chosen keys only; ``mask`` an additive (or boolean: True keeps)
mask broadcastable to (B, H, Nq, Nk), as ComfyUI passes it.

    logits = q k^T * scale (+ mask) (+ bias on the columns ``keys``)
    lse    = logsumexp(logits, -1)                       (B, H, Nq), float32
    out    = exp(logits - lse) v                          (B, H, Nq, D), q's dtype
    probs  = exp(logits[..., keys] - lse)                 (B, H, Nq, S), float32

The (Nq, Nk) logits exist one block of queries at a time (``query_chunk``: about ``CHUNK_ELEMENTS`` float32 logits
per block); with gradients each block is recomputed in the backward (``torch.utils.checkpoint``) instead of kept, so
neither pass holds a (B, H, Nq, Nk) matrix.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 24  # float32 logits per block of queries (64 MiB)


def query_chunk(B: int, H: int, Nq: int, Nk: int) -> int:
    """Queries per block: about ``CHUNK_ELEMENTS`` logits, at least one query."""
    return max(1, min(Nq, CHUNK_ELEMENTS // max(1, B * H * Nk)))


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


def _rows(t, i0, i1, Nq):
    """Rows i0:i1 of a tensor broadcast along the query dimension (second to last), or ``t`` if it broadcasts."""
    if t is None or t.ndim < 2 or t.shape[-2] != Nq:
        return t
    return t[..., i0:i1, :]


def _block(q, k, v, keys, bias, mask, scale, with_out):
    logits = logits_of(q, k, keys, bias, scale, mask)
    lse = torch.logsumexp(logits, -1)
    p = torch.exp(logits - lse[..., None])
    del logits
    out = (p @ v.float()).to(q.dtype) if with_out else None
    probs = p[..., keys] if keys is not None else None
    return out, lse, probs


def attention(q, k, v, keys=None, bias=None, scale=None, mask=None, with_out=True):
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    if keys is not None:
        keys = keys.to(device=q.device, dtype=torch.long)
    step = query_chunk(B, H, Nq, Nk)
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias, mask))
    parts = []
    for i0 in range(0, max(Nq, 1), step):
        i1 = min(i0 + step, Nq)
        args = (q[:, :, i0:i1], k, v if with_out else None, keys, _rows(bias, i0, i1, Nq), _rows(mask, i0, i1, Nq),
                scale, with_out)
        if grads and step < Nq:
            parts.append(checkpoint(_block, *args, use_reentrant=False))
        else:
            parts.append(_block(*args))
    if len(parts) == 1:
        return parts[0]
    out = torch.cat([p[0] for p in parts], 2) if with_out else None
    lse = torch.cat([p[1] for p in parts], 2)
    probs = torch.cat([p[2] for p in parts], 2) if keys is not None else None
    return out, lse, probs
