"""Readable torch reference of the SAE kernels.

Layouts: ``x`` (n, d) tokens; ``W_enc`` (d, m); ``W_dec`` (m, d); ``b_dec`` (d); ``b_enc`` (m) or None.
Sparse codes are a pair ``values`` (n, K), ``indices`` (n, K) int64: row i's code is
``sum_s values[i, s] * onehot(indices[i, s])``. Padding entries have value 0 (index 0), so they add nothing.

Selection rules (what ``encode`` keeps of ``pre = relu((x - b_dec) @ W_enc + b_enc)``):
- ``k`` per row: the k largest entries of each row (K = k);
- ``k`` with ``batch=True`` (BatchTopK): the ``k * n`` largest entries of the whole batch, each row padded to the
  largest row count;
- ``threshold``: every entry above it, padded the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pre_activations(x, W_enc, b_dec, b_enc=None):
    pre = (x - b_dec) @ W_enc
    if b_enc is not None:
        pre = pre + b_enc
    return torch.relu(pre)


def _rows_of(pre: torch.Tensor, keep: torch.Tensor, inplace: bool = False):
    """(values, indices) of the entries of ``pre`` where ``keep``, per row, padded with zeros (``inplace``: ``pre``
    is a temporary and may be overwritten)."""
    width = max(int(keep.sum(-1).max()) if keep.numel() else 0, 1)
    masked = pre.masked_fill_(~keep, float("-inf")) if inplace else pre.masked_fill(~keep, float("-inf"))
    values, indices = masked.topk(min(width, pre.shape[-1]), dim=-1)
    pad = torch.isinf(values)
    return values.masked_fill(pad, 0), indices.masked_fill(pad, 0)


def select(pre: torch.Tensor, k: int | None = None, batch: bool = False, threshold: float | None = None,
           inplace: bool = False):
    """(values, indices) kept of the (n, m) activations ``pre`` (see the module docstring); ``inplace``: ``pre`` is
    a temporary the selection may overwrite (saves one (n, m) buffer)."""
    if threshold is not None:
        return _rows_of(pre, pre > threshold, inplace)
    if not batch:
        return pre.topk(min(k, pre.shape[-1]), dim=-1)
    flat = pre.reshape(-1)
    _, idx = flat.topk(min(k * pre.shape[0], flat.numel()), sorted=False)
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(0, idx, True).reshape(pre.shape)
    return _rows_of(pre, keep, inplace)


def encode(x, W_enc, b_dec, b_enc=None, k=None, batch=False, threshold=None):
    return select(pre_activations(x, W_enc, b_dec, b_enc), k, batch, threshold)


def decode(values, indices, W_dec, b_dec=None):
    out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out if b_dec is None else out + b_dec


def densify(values, indices, m: int):
    """The (n, m) dense codes of a sparse pair."""
    return torch.zeros(values.shape[0], m, dtype=values.dtype, device=values.device).scatter_add_(-1, indices, values)


# -- the sparse kernels' operations in torch (the backward's stand-ins when a kernel cannot serve a call) ----------

def gather_sum(values, indices, W, bias=None, out_dtype=None):
    """(n, d): rows of ``W`` (m, d) weighted by ``values`` (n, K) at ``indices`` (n, K), plus ``bias``."""
    out = F.embedding_bag(indices, W, per_sample_weights=values.to(W.dtype), mode="sum")
    out = out if bias is None else out + bias
    return out.to(out_dtype or W.dtype)


def gather_dot(grad, indices, W, out_dtype=None):
    """(n, K): <grad[i], W[indices[i, s]]>, a block of rows at a time (no (n, K, d) tensor)."""
    n, K = indices.shape
    out = torch.empty(n, K, device=W.device, dtype=out_dtype or grad.dtype)
    step = max(1, CHUNK_ELEMENTS // max(1, K * W.shape[1]))
    for r0 in range(0, n, step):
        rows = W[indices[r0:r0 + step]].float()  # (rows, K, d)
        out[r0:r0 + step] = (rows @ grad[r0:r0 + step, :, None].float())[..., 0].to(out.dtype)
    return out


def scatter_rows(src, weights, indices, m: int, out=None):
    """(m, d): out[j] = sum over (i, s) with indices[i, s] == j of weights[i, s] * src[i] (index_add_ a block of
    rows at a time)."""
    n, K = indices.shape
    d = src.shape[1]
    acc = torch.zeros(m, d, device=src.device, dtype=torch.float32)
    step = max(1, CHUNK_ELEMENTS // max(1, K * d))
    for r0 in range(0, n, step):
        w = weights[r0:r0 + step].float()
        acc.index_add_(0, indices[r0:r0 + step].reshape(-1),
                       (w[:, :, None] * src[r0:r0 + step, None, :].float()).reshape(-1, d))
    if out is None:
        return acc.to(src.dtype)
    return out.copy_(acc)


CHUNK_ELEMENTS = 1 << 24
