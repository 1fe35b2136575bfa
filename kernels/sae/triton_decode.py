"""Triton kernels over sparse codes (values, indices) of shape (n, K) and a dictionary ``W`` of m rows of width d.

- ``gather_sum``: out[i] = sum_s values[i, s] * W[indices[i, s]] (+ bias): the decoder's forward, and the encoder's
  input gradient (with ``W`` = W_enc viewed as (m, d) through its strides).
- ``gather_dot``: g[i, s] = <grad[i], W[indices[i, s]]>: the gradient of the decoder for the values.
- ``scatter_rows``: out[j] = sum over entries e with indices[e] == j of weights[e] * src[row(e)]: the dictionary's
  gradient (decoder and encoder). Entries are sorted by latent (CSR) so every output row is written once, by one
  program, without atomics: deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl



@triton.jit
def _gather_sum(vals_ptr, idx_ptr, w_ptr, bias_ptr, out_ptr, K, d, stride_wm, stride_wd,
                       HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < d
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        idx = tl.load(idx_ptr + row * K + ks, mask=k_ok, other=0).to(tl.int64)
        v = tl.load(vals_ptr + row * K + ks, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None] * stride_wm + ds[None, :] * stride_wd, mask=k_ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(v[:, None] * w, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ds, mask=d_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * d + ds, acc.to(out_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _gather_dot(grad_ptr, idx_ptr, w_ptr, out_ptr, K, d, stride_wm, stride_wd,
                       BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    idx = tl.load(idx_ptr + row * K + ks, mask=k_ok, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < d
        g = tl.load(grad_ptr + row * d + ds, mask=d_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None] * stride_wm + ds[None, :] * stride_wd, mask=k_ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(w * g[None, :], axis=1)
    tl.store(out_ptr + row * K + ks, acc.to(out_ptr.dtype.element_ty), mask=k_ok)


@triton.jit
def _scatter_rows(src_ptr, weights_ptr, rows_ptr, offsets_ptr, out_ptr, d, stride_om, stride_od,
                         BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    j = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < d
    start = tl.load(offsets_ptr + j)
    end = tl.load(offsets_ptr + j + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        e_ok = es < end
        r = tl.load(rows_ptr + es, mask=e_ok, other=0).to(tl.int64)
        w = tl.load(weights_ptr + es, mask=e_ok, other=0.0).to(tl.float32)
        s = tl.load(src_ptr + r[:, None] * d + ds[None, :], mask=e_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(w[:, None] * s.to(tl.float32), axis=0)
    tl.store(out_ptr + j * stride_om + ds * stride_od, acc.to(out_ptr.dtype.element_ty), mask=d_ok)



BLOCK_D = 128


def _block_k(K: int) -> int:
    return min(64, triton.next_power_of_2(max(K, 1)))


def gather_sum(values, indices, W, bias=None, out_dtype=None):
    """(n, d): rows of ``W`` (m, d; any strides) weighted by ``values`` (n, K) at ``indices`` (n, K), plus ``bias``."""
    values, indices = values.contiguous(), indices.contiguous()
    n, K = indices.shape
    d = W.shape[1]
    out = torch.empty(n, d, device=W.device, dtype=out_dtype or W.dtype)
    if n == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand_as(out))
    grid = (n, triton.cdiv(d, BLOCK_D))
    _gather_sum[grid](values, indices, W, bias.contiguous() if bias is not None else values, out, K, d,
                      W.stride(0), W.stride(1), HAS_BIAS=bias is not None, BLOCK_K=_block_k(K), BLOCK_D=BLOCK_D)
    return out


def gather_dot(grad, indices, W, out_dtype=None):
    """(n, K): <grad[i], W[indices[i, s]]>."""
    grad, indices = grad.contiguous(), indices.contiguous()
    n, K = indices.shape
    out = torch.empty(n, K, device=W.device, dtype=out_dtype or grad.dtype)
    if n == 0 or K == 0:
        return out.zero_()
    BK = _block_k(K)
    _gather_dot[(n, triton.cdiv(K, BK))](grad, indices, W, out, K, W.shape[1], W.stride(0), W.stride(1),
                                         BLOCK_K=BK, BLOCK_D=BLOCK_D)
    return out


def scatter_rows(src, weights, indices, m: int, out=None):
    """(m, d): out[j] = sum_{(i, s): indices[i, s] == j} weights[i, s] * src[i]. ``out`` (m, d) may be a strided
    view (e.g. the transpose of an encoder gradient)."""
    src = src.contiguous()
    n, K = indices.shape
    d = src.shape[1]
    if out is None:
        out = torch.empty(m, d, device=src.device, dtype=src.dtype)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    rows = torch.div(order, max(K, 1), rounding_mode="floor").to(torch.int32)
    w = weights.reshape(-1)[order].contiguous()
    counts = torch.bincount(flat, minlength=m)
    offsets = torch.zeros(m + 1, dtype=torch.int64, device=src.device)
    offsets[1:] = torch.cumsum(counts, 0)
    _scatter_rows[(m, triton.cdiv(d, BLOCK_D))](src, w, rows, offsets, out, d, out.stride(0), out.stride(1),
                                                BLOCK_E=16, BLOCK_D=BLOCK_D)
    return out
