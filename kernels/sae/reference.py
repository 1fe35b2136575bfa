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
