"""Triton encoder: ``relu((x - b_dec) @ W_enc + b_enc)``, optionally zeroed at or below a threshold, in one GEMM
whose epilogue adds the bias and applies the ReLU / threshold (no separate passes over the (n, m) activations).

The selection (TopK / BatchTopK / threshold rows) then runs on the activations, which are dropped right after: the
backward in ``ops.py`` needs only the kept (values, indices). Masked loads cover any n, d, m; row offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import interpreter_needs_f32_dot


@triton.jit
def _encode(x_ptr, w_ptr, bdec_ptr, benc_ptr, out_ptr, n, d, m, threshold,
                   stride_xn, stride_wd, stride_on,
                   HAS_BENC: tl.constexpr, HAS_THRESHOLD: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_F32: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    col_ok = cols < m
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < d
        x = tl.load(x_ptr + rows[:, None] * stride_xn + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        b = tl.load(bdec_ptr + ds, mask=d_ok, other=0.0)
        # x - b_dec rounded to x's dtype, as torch does (in float32 first: Triton 3.8's interpreter gets bfloat16
        # arithmetic wrong); padding columns give 0 - 0, padding rows are never stored
        xc = (x.to(tl.float32) - b.to(tl.float32)[None, :]).to(x.dtype)
        w = tl.load(w_ptr + ds[:, None].to(tl.int64) * stride_wd + cols[None, :], mask=d_ok[:, None] & col_ok[None, :],
                    other=0.0)
        if DOT_F32:
            acc += tl.dot(xc.to(tl.float32), w.to(xc.dtype).to(tl.float32), input_precision="ieee")
        elif ALLOW_TF32:
            acc += tl.dot(xc, w.to(xc.dtype))
        else:
            acc += tl.dot(xc, w.to(xc.dtype), input_precision="ieee")
    if HAS_BENC:
        acc += tl.load(benc_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.maximum(acc, 0.0)
    if HAS_THRESHOLD:
        acc = tl.where(acc > threshold, acc, 0.0)
    tl.store(out_ptr + rows[:, None] * stride_on + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])




# GEMM tilings tried on the GPU at the first call of each shape (triton.autotune); the interpreter takes one. All
# compile for sm_90 without register spills worth the name in bf16 (ptxas -v; tests/unit/test_kernels_compile.py).
_ENCODE_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_D": bd}, num_warps=w, num_stages=st)
                   for bn, bm, bd, w, st in ((128, 128, 64, 8, 3), (64, 256, 32, 8, 4), (128, 256, 32, 8, 3),
                                             (64, 128, 32, 4, 4), (64, 128, 64, 4, 3))]


def _tuned(configs):
    return triton.autotune(configs, key=["n", "d", "m", "HAS_BENC", "HAS_THRESHOLD"])(_encode)


_encode_tuned = _tuned(_ENCODE_CONFIGS)


def _autotuned(t: torch.Tensor) -> bool:
    """The autotuned launch on a GPU; the interpreter (which cannot time configs) takes one tiling."""
    return t.is_cuda and not triton.knobs.runtime.interpret


def pre_activations(x: torch.Tensor, W_enc: torch.Tensor, b_dec: torch.Tensor, b_enc: torch.Tensor | None = None,
                    threshold: float | None = None) -> torch.Tensor:
    """(n, m) activations in ``x``'s dtype (fp32 accumulation); zero at or below ``threshold`` when given."""
    x, W_enc, b_dec = x.contiguous(), W_enc.contiguous(), b_dec.contiguous()
    n, d = x.shape
    m = W_enc.shape[1]
    out = torch.empty(n, m, device=x.device, dtype=x.dtype)
    if n == 0:
        return out
    args = (x, W_enc, b_dec, b_enc.contiguous() if b_enc is not None else b_dec, out, n, d, m,
            float(threshold) if threshold is not None else 0.0, x.stride(0), W_enc.stride(0), out.stride(0))
    flags = dict(HAS_BENC=b_enc is not None, HAS_THRESHOLD=threshold is not None,
                 ALLOW_TF32=x.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32,
                 DOT_F32=interpreter_needs_f32_dot(x.dtype))
    if _autotuned(x):
        _encode_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]))](*args, **flags)
    else:
        BLOCK_N, BLOCK_M, BLOCK_D = 64, 128, 32
        _encode[(triton.cdiv(n, BLOCK_N), triton.cdiv(m, BLOCK_M))](*args, **flags, BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M,
                                                                     BLOCK_D=BLOCK_D)
    return out
