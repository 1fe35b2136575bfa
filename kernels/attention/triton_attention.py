"""Triton attention with token maps.

``_forward``: one program per (block of queries, batch x head); it walks the keys in blocks with the online softmax
(running maximum and sum, in base 2) and returns the output and each query's log-sum-exp; the attention matrix is
never stored. Key and query lengths need not divide the blocks (masked loads: 77 or 256 text tokens, joint
text+image sequences); head dims up to 256 (padded to a power of two). The optional bias sits on the chosen keys
only: a (Nk,) slot map says which column of the (Nq, S) bias a key reads, -1 for the keys without one.

``_key_probs``: from the log-sum-exp, the probabilities on the S chosen keys: exp(q k_s * scale + bias - lse), an
(Nq, S) product per head instead of (Nq, Nk).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..dispatch import interpreter_needs_f32_dot

LOG2E = 1.4426950408889634


@triton.jit
def _mm(a, b, ALLOW_TF32: tl.constexpr, DOT_F32: tl.constexpr):
    """``tl.dot`` with fp32 accumulation: TF32 allowed or not (as torch's matmul flag), or widened to float32 (the
    interpreter's bf16 workaround, ``interpreter_needs_f32_dot``)."""
    if DOT_F32:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif ALLOW_TF32:
        c = tl.dot(a, b)
    else:
        c = tl.dot(a, b, input_precision="ieee")
    return c


@triton.jit
def _load_tile(ptrs, rows_ok, cols_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """A 2-D load masked only along the dimensions that do not divide the block."""
    if EVEN_ROWS and EVEN_COLS:
        t = tl.load(ptrs)
    elif EVEN_ROWS:
        t = tl.load(ptrs, mask=cols_ok[None, :], other=0.0)
    elif EVEN_COLS:
        t = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
    else:
        t = tl.load(ptrs, mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)
    return t


@triton.jit
def _attend(acc, m_i, l_i, q, k_base, v_base, n0, offs_nb, offs_m, m_ok, offs_d, d_ok, Nk, skn, svn, qk_scale,
            slot_ptr, bias_base, sbn, probs_base, S, WITH_SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
            STORE_LOGITS: tl.constexpr, HAS_V: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_F32: tl.constexpr,
            EVEN_N: tl.constexpr, EVEN_D: tl.constexpr):
    """One key block of the online softmax: the running maximum, sum and output updated. ``WITH_SLOTS``: the block
    may hold chosen keys: their bias is added (``HAS_BIAS``) and their logits (base 2) written to the maps' slots
    (``STORE_LOGITS``), to become probabilities once the log-sum-exp is known."""
    offs_n = n0 + offs_nb
    n_ok = offs_n < Nk
    k = _load_tile(k_base + offs_n[:, None] * skn + offs_d[None, :], n_ok, d_ok, EVEN_N, EVEN_D)
    s = _mm(q, tl.trans(k), ALLOW_TF32, DOT_F32) * qk_scale
    if WITH_SLOTS:
        slot = tl.load(slot_ptr + offs_n, mask=n_ok, other=-1)
        chosen = m_ok[:, None] & (slot >= 0)[None, :]
        if HAS_BIAS:
            bias = tl.load(bias_base + offs_m[:, None] * sbn + slot[None, :], mask=chosen, other=0.0)
            s += bias.to(tl.float32) * 1.4426950408889634
        if STORE_LOGITS:
            tl.store(probs_base + offs_m[:, None] * S + slot[None, :], s, mask=chosen)
    if not EVEN_N:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row whose keys so far all sit at -inf (a block of chosen keys whose bias is -inf, or the padding past Nk):
    # its maximum stays -inf; subtracting 0 instead keeps exp2(-inf - -inf) = NaN out (alpha and p are then 0)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if HAS_V:
        v = _load_tile(v_base + offs_n[:, None] * svn + offs_d[None, :], n_ok, d_ok, EVEN_N, EVEN_D)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, ALLOW_TF32, DOT_F32)
    return acc, m_new, l_i


@triton.jit
def _forward(q_ptr, k_ptr, v_ptr, slot_ptr, bias_ptr, out_ptr, lse_ptr, probs_ptr, qk_scale, H, Nq, Nk, D, S,
             key_lo, key_hi, Nq_bucket, Nk_bucket,
             sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, sbb, sbh, sbn,
             HAS_BIAS: tl.constexpr, HAS_PROBS: tl.constexpr, HAS_V: tl.constexpr, ALLOW_TF32: tl.constexpr,
             DOT_F32: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    # int64 only in the per-(batch, head) base pointers; offsets inside one head fit 32 bits (fewer registers)
    q_base = q_ptr + b * sqb + h * sqh
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    bias_base = bias_ptr + b * sbb + h * sbh
    probs_base = probs_ptr + pid_bh.to(tl.int64) * Nq * S
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_nb = tl.arange(0, BLOCK_N)
    m_ok = offs_m < Nq
    d_ok = offs_d < D
    q = _load_tile(q_base + offs_m[:, None] * sqn + offs_d[None, :], m_ok, d_ok, False, EVEN_D)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS or HAS_PROBS:
        # the key blocks holding chosen keys read their slots; the others run the plain loop (softmax order is free)
        lo = (key_lo // BLOCK_N) * BLOCK_N
        hi = tl.minimum(((key_hi + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, ((Nk + BLOCK_N - 1) // BLOCK_N) * BLOCK_N)
        for n0 in range(lo, hi, BLOCK_N):
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_base, v_base, n0, offs_nb, offs_m, m_ok, offs_d, d_ok, Nk,
                                    skn, svn, qk_scale, slot_ptr, bias_base, sbn, probs_base, S, True, HAS_BIAS,
                                    HAS_PROBS, HAS_V, ALLOW_TF32, DOT_F32, EVEN_N, EVEN_D)
        for n0 in range(0, lo, BLOCK_N):
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_base, v_base, n0, offs_nb, offs_m, m_ok, offs_d, d_ok, Nk,
                                    skn, svn, qk_scale, slot_ptr, bias_base, sbn, probs_base, S, False, False,
                                    False, HAS_V, ALLOW_TF32, DOT_F32, EVEN_N, EVEN_D)
        for n0 in range(hi, Nk, BLOCK_N):
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_base, v_base, n0, offs_nb, offs_m, m_ok, offs_d, d_ok, Nk,
                                    skn, svn, qk_scale, slot_ptr, bias_base, sbn, probs_base, S, False, False,
                                    False, HAS_V, ALLOW_TF32, DOT_F32, EVEN_N, EVEN_D)
    else:
        for n0 in range(0, Nk, BLOCK_N):
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_base, v_base, n0, offs_nb, offs_m, m_ok, offs_d, d_ok, Nk,
                                    skn, svn, qk_scale, slot_ptr, bias_base, sbn, probs_base, S, False, False,
                                    False, HAS_V, ALLOW_TF32, DOT_F32, EVEN_N, EVEN_D)
    lse2 = m_i + tl.log2(l_i)
    tl.store(lse_ptr + pid_bh.to(tl.int64) * Nq + offs_m, lse2 * 0.6931471805599453, mask=m_ok)
    if HAS_PROBS:  # the chosen keys' logits, kept as they were visited, become probabilities with the final lse
        tl.debug_barrier()  # written by other threads of this program
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            here = m_ok[:, None] & (offs_s < S)[None, :]
            ptrs = probs_base + offs_m[:, None] * S + offs_s[None, :]
            tl.store(ptrs, tl.exp2(tl.load(ptrs, mask=here, other=float("-inf")) - lse2[:, None]), mask=here)
    if HAS_V:
        out = acc / l_i[:, None]
        tl.store(out_ptr + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _key_probs(q_ptr, k_ptr, keys_ptr, bias_ptr, lse_ptr, probs_ptr, scale, H, Nq, S, D,
               sqb, sqh, sqn, skb, skh, skn, sbb, sbh, sbn,
               HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_F32: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Nq
    d_ok = offs_d < D
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqn + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(lse_ptr + pid_bh.to(tl.int64) * Nq + offs_m, mask=m_ok, other=0.0)
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < S
        key = tl.load(keys_ptr + offs_s, mask=s_ok, other=0).to(tl.int64)
        k = tl.load(k_ptr + b * skb + h * skh + key[:, None] * skn + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_F32:
            logits = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee") * scale
        elif ALLOW_TF32:
            logits = tl.dot(q, tl.trans(k)) * scale
        else:
            logits = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        if HAS_BIAS:
            logits += tl.load(bias_ptr + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbn + offs_s[None, :],
                              mask=m_ok[:, None] & s_ok[None, :], other=0.0).to(tl.float32)
        p = tl.exp(logits - lse[:, None])
        tl.store(probs_ptr + pid_bh.to(tl.int64) * Nq * S + offs_m[:, None].to(tl.int64) * S + offs_s[None, :], p,
                 mask=m_ok[:, None] & s_ok[None, :])




# Tried on the GPU at the first call of each shape bucket (triton.autotune); the interpreter takes ``_blocks``.
# Tilings that spill hundreds of bytes of registers at head dim 64 or 128 on sm_90 (ptxas -v: 128x128 with 8 warps,
# 128x64 and 64x128 with 4) are left out; above head dim 128 only the ``_WIDE_CONFIGS`` tiles (``_prune``): 64 x 32
# with 8 warps, the one tiling without spills at head dim 256 (64 x 64: 404 bytes, 128 x 32: 596).
_FORWARD_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                    for bm, bn, w, st in ((128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 8, 4),
                                          (64, 64, 4, 3), (64, 32, 4, 3))]
_WIDE_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                 for bm, bn, w, st in ((64, 32, 8, 2), (64, 32, 8, 3))]  # 64 x 64 spills 404 bytes at d 256
_WIDE_FOLD_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                      for bm, bn, w, st in ((64, 16, 8, 2), (32, 32, 8, 2))]  # 64 x 32 spills 108 with the maps
MAX_HEAD_DIM = 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def length_bucket(n: int) -> int:
    """The autotuner's key for a length: the next power of two (a new resolution re-tunes only across a doubling)."""
    return triton.next_power_of_2(max(int(n), 1))


def _prune(configs, named_args, **kwargs):
    """Above head dim 128 the wide tiles only (with the maps folded in, smaller ones); with the maps folded in, key
    blocks of 32 (64 spill 36-460 bytes at head dims 64 and 128 with the slots' loads and stores, ptxas -v; 32: at
    most 16)."""
    wide = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 0)) > 128
    maps = kwargs.get("HAS_PROBS", named_args.get("HAS_PROBS", False))
    if wide:
        return [c for c in configs if c in (_WIDE_FOLD_CONFIGS if maps else _WIDE_CONFIGS)]
    keep = [c for c in configs if c in _FORWARD_CONFIGS]
    return [c for c in keep if c.kwargs["BLOCK_N"] <= 32] if maps else keep


def _tuned(configs):
    return triton.autotune(configs, key=["Nq_bucket", "Nk_bucket", "D", "HAS_BIAS", "HAS_PROBS", "HAS_V"],
                           prune_configs_by={"early_config_prune": _prune})(
        triton.heuristics({"EVEN_N": lambda args: args["Nk"] % args["BLOCK_N"] == 0})(_forward))


_forward_tuned = _tuned(_FORWARD_CONFIGS + _WIDE_CONFIGS + _WIDE_FOLD_CONFIGS)


def _autotuned(t: torch.Tensor) -> bool:
    """The autotuned launch on a GPU; the interpreter (which cannot time configs) takes ``_blocks``."""
    return t.is_cuda and not triton.knobs.runtime.interpret


def _last_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _blocks(Nq: int, D: int):
    block_d = max(16, triton.next_power_of_2(D))
    block_m = 128 if D <= 64 else 64
    return min(block_m, max(16, triton.next_power_of_2(Nq))), 64, block_d


FOLD_MAPS = True  # the maps written by the attention pass itself (False: a separate ``_key_probs`` pass)


def _block_s(S: int) -> int:
    return min(32, max(16, triton.next_power_of_2(max(S, 1))))  # 64 spills at head dim 64 (ptxas -v)


def check_supported(q, k, v=None, bias=None) -> None:
    """Raise ``KernelUnavailable`` for a call these kernels were not built for (the reference then serves it)."""
    from ..dispatch import KernelUnavailable

    D = q.shape[-1]
    if D > MAX_HEAD_DIM:
        raise KernelUnavailable(f"head dim {D} is above the kernel's {MAX_HEAD_DIM}")
    if q.dtype not in DTYPES:
        raise KernelUnavailable(f"dtype {q.dtype} (the kernel takes float16, bfloat16, float32)")
    if k.dtype != q.dtype or (v is not None and v.dtype != q.dtype):
        raise KernelUnavailable(f"q, k, v of different dtypes ({q.dtype}, {k.dtype}, {None if v is None else v.dtype})")
    if bias is not None and not bias.dtype.is_floating_point:
        raise KernelUnavailable(f"bias of dtype {bias.dtype}")
    if q.is_cuda and not triton.knobs.runtime.interpret:
        major, minor = torch.cuda.get_device_capability(q.device)
        if (major, minor) < (8, 0) and q.dtype == torch.bfloat16:
            raise KernelUnavailable(f"bfloat16 on a GPU of compute capability {major}.{minor} (below 8.0)")
        if major < 7:
            raise KernelUnavailable(f"a GPU of compute capability {major}.{minor} (Triton needs 7.0)")


class KeyTable(NamedTuple):
    """The chosen keys as the kernels read them, made on the host from the keys' values (no device read):
    ``keys`` (S,) int32 and ``slot`` (Nk,) int32 (which column of the bias / maps a key is, -1 for none) on the
    device, and the span [lo, hi) of the chosen keys."""
    keys: torch.Tensor
    slot: torch.Tensor
    lo: int
    hi: int

    @property
    def count(self) -> int:
        return self.keys.numel()


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    if device.type == "cuda":  # pinned, asynchronous: no wait on the GPU's queue
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def key_table(keys: list[int], Nk: int, device) -> KeyTable:
    """``KeyTable`` of distinct key indices (host ints, each in 0..Nk-1)."""
    if len(set(keys)) != len(keys):
        raise ValueError("key_table takes distinct keys (ops folds repeated ones)")
    slot = torch.full((Nk,), -1, dtype=torch.int32)
    if keys:
        slot[torch.tensor(keys, dtype=torch.long)] = torch.arange(len(keys), dtype=torch.int32)
    device = torch.device(device)
    return KeyTable(_to_device(torch.tensor(keys, dtype=torch.int32), device), _to_device(slot, device),
                    min(keys, default=0), max(keys, default=-1) + 1)


def attention(q, k, v, table: KeyTable | None = None, bias=None, scale=None, with_out=True, with_probs=True):
    """(out or None, lse (B, H, Nq) float32, probs (B, H, Nq, S) float32 or None); layouts as in ``reference``,
    the chosen keys as a ``KeyTable``."""
    check_supported(q, k, v if with_out else None, bias)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    scale = D ** -0.5 if scale is None else float(scale)
    q, k = _last_contiguous(q), _last_contiguous(k)
    v = _last_contiguous(v) if with_out else None
    lse = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)
    out = torch.empty(B, H, Nq, D, device=q.device, dtype=q.dtype) if with_out else None
    has_bias = bias is not None
    slot = table.slot if table is not None else lse  # lse: an unused pointer
    bias = _last_contiguous(bias).expand(B, H, Nq, table.count) if has_bias else lse
    tf32 = q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    dot_f32 = interpreter_needs_f32_dot(q.dtype)
    BM, BN, BD = _blocks(Nq, D)
    grid = (triton.cdiv(Nq, BM), B * H)
    S = table.count if table is not None else 0
    probs = torch.empty(B, H, Nq, S, device=q.device, dtype=torch.float32) if table is not None and with_probs \
        else None
    fold = probs is not None and S > 0 and FOLD_MAPS
    if B * H and Nq:
        vv, oo = (v, out) if with_out else (q, lse)
        key_lo, key_hi = (table.lo, table.hi) if (has_bias or fold) else (0, 0)
        args = (q, k, vv, slot, bias, oo, lse, probs if fold else lse, scale * LOG2E,
                H, Nq, Nk, D, S if fold else 0, key_lo, key_hi, length_bucket(Nq), length_bucket(Nk),
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                vv.stride(0), vv.stride(1), vv.stride(2),
                *((out.stride(0), out.stride(1), out.stride(2)) if with_out else (0, 0, 0)),
                *((bias.stride(0), bias.stride(1), bias.stride(2)) if has_bias else (0, 0, 0)))
        flags = dict(HAS_BIAS=has_bias, HAS_PROBS=fold, HAS_V=with_out, ALLOW_TF32=tf32, DOT_F32=dot_f32,
                     EVEN_D=BD == D, BLOCK_D=BD, BLOCK_S=_block_s(S))
        if _autotuned(q):
            _forward_tuned[lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B * H)](*args, **flags)
        else:
            _forward[grid](*args, **flags, EVEN_N=Nk % BN == 0, BLOCK_M=BM, BLOCK_N=BN)
    if probs is not None and not fold and B * H and Nq and S:  # the separate (Nq x S) pass
        _key_probs[grid](q, k, table.keys, bias, lse, probs, scale, H, Nq, S, D,
                         q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                         *((bias.stride(0), bias.stride(1), bias.stride(2)) if has_bias else (0, 0, 0)),
                         HAS_BIAS=has_bias, ALLOW_TF32=tf32, DOT_F32=dot_f32, BLOCK_M=BM, BLOCK_S=_block_s(S),
                         BLOCK_D=BD)
    return out, lse, probs


# -- backward ------------------------------------------------------------------------------------------------------
# With P the softmax (recomputed from q, k and the saved lse), dO the output's gradient, G the gradient of the
# probabilities on the chosen keys and g the log-sum-exp's gradient, the logits' gradient is
#     dS_ij = P_ij * (dO_i . v_j - delta_i) + [j chosen] G_i,slot(j) * P_ij,
#     delta_i = dO_i . out_i + sum_s G_is * probs_is - g_i          (one number per query, computed in torch);
# then dq = scale * dS k, dk = scale * dS^T q, dv = P^T dO, dbias_is = dS_i,key(s). Two kernels, as in
# FlashAttention-2: one per key block (dk, dv; walks the queries), one per query block (dq, dbias; walks the keys).


@triton.jit
def _probs_and_grad(q, k, v, do, lse2, delta, offs_m, offs_n, m_ok, n_ok, slot_ptr, bias_ptr, g_ptr, bh, qk_scale,
                    Nq, S, sbb_bh, sbn, HAS_BIAS: tl.constexpr, HAS_V: tl.constexpr, HAS_G: tl.constexpr,
                    ALLOW_TF32: tl.constexpr, DOT_F32: tl.constexpr):
    """(P, dS) of one (queries, keys) tile, P and dS float32, zero outside the valid rows and columns."""
    s = _mm(q, tl.trans(k), ALLOW_TF32, DOT_F32) * qk_scale
    slot = tl.load(slot_ptr + offs_n, mask=n_ok, other=-1)
    chosen = (slot >= 0)[None, :] & m_ok[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + sbb_bh + offs_m[:, None].to(tl.int64) * sbn + slot[None, :], mask=chosen, other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
    p = tl.exp2(s - lse2[:, None])
    p = tl.where(m_ok[:, None] & n_ok[None, :], p, 0.0)
    if HAS_V:
        dp = _mm(do, tl.trans(v), ALLOW_TF32, DOT_F32)
    else:
        dp = tl.zeros(p.shape, dtype=tl.float32)
    ds = p * (dp - delta[:, None])
    if HAS_G:
        g = tl.load(g_ptr + bh * Nq * S + offs_m[:, None].to(tl.int64) * S + slot[None, :], mask=chosen, other=0.0)
        ds += g * p
    return p, ds


@triton.jit
def _backward_dkdv(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, slot_ptr, bias_ptr, g_ptr, dk_ptr, dv_ptr,
                   qk_scale, scale, H, Nq, Nk, S, D, sbb, sbh, sbn,
                   HAS_BIAS: tl.constexpr, HAS_V: tl.constexpr, HAS_G: tl.constexpr, ALLOW_TF32: tl.constexpr,
                   DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    sbb_bh = (bh // H) * sbb + (bh % H) * sbh
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Nk
    d_ok = offs_d < D
    kv_off = bh * Nk * D + offs_n[:, None].to(tl.int64) * D + offs_d[None, :]
    k = tl.load(k_ptr + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_V:
        v = tl.load(v_ptr + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        v = k
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for m0 in range(0, Nq, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < Nq
        q_off = bh * Nq * D + offs_m[:, None].to(tl.int64) * D + offs_d[None, :]
        q = tl.load(q_ptr + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if HAS_V:
            do = tl.load(do_ptr + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        else:
            do = q
        lse2 = tl.load(lse_ptr + bh * Nq + offs_m, mask=m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptr + bh * Nq + offs_m, mask=m_ok, other=0.0)
        p, ds = _probs_and_grad(q, k, v, do, lse2, delta, offs_m, offs_n, m_ok, n_ok, slot_ptr, bias_ptr, g_ptr, bh,
                                qk_scale, Nq, S, sbb_bh, sbn, HAS_BIAS, HAS_V, HAS_G, ALLOW_TF32, DOT_F32)
        if HAS_V:
            dv += _mm(tl.trans(p.to(do.dtype)), do, ALLOW_TF32, DOT_F32)
        dk += _mm(tl.trans(ds.to(q.dtype)), q, ALLOW_TF32, DOT_F32)
    tl.store(dk_ptr + kv_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    if HAS_V:
        tl.store(dv_ptr + kv_off, dv.to(dv_ptr.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])


@triton.jit
def _backward_dq(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, slot_ptr, bias_ptr, g_ptr, dq_ptr, dbias_ptr,
                 qk_scale, scale, H, Nq, Nk, S, D, sbb, sbh, sbn,
                 HAS_BIAS: tl.constexpr, HAS_V: tl.constexpr, HAS_G: tl.constexpr, ALLOW_TF32: tl.constexpr,
                 DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    sbb_bh = (bh // H) * sbb + (bh % H) * sbh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Nq
    d_ok = offs_d < D
    q_off = bh * Nq * D + offs_m[:, None].to(tl.int64) * D + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_V:
        do = tl.load(do_ptr + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        do = q
    lse2 = tl.load(lse_ptr + bh * Nq + offs_m, mask=m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + bh * Nq + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, Nk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Nk
        kv_off = bh * Nk * D + offs_n[:, None].to(tl.int64) * D + offs_d[None, :]
        k = tl.load(k_ptr + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if HAS_V:
            v = tl.load(v_ptr + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        else:
            v = k
        p, ds = _probs_and_grad(q, k, v, do, lse2, delta, offs_m, offs_n, m_ok, n_ok, slot_ptr, bias_ptr, g_ptr, bh,
                                qk_scale, Nq, S, sbb_bh, sbn, HAS_BIAS, HAS_V, HAS_G, ALLOW_TF32, DOT_F32)
        dq += _mm(ds.to(k.dtype), k, ALLOW_TF32, DOT_F32)
        if HAS_BIAS:
            slot = tl.load(slot_ptr + offs_n, mask=n_ok, other=-1)
            tl.store(dbias_ptr + bh * Nq * S + offs_m[:, None].to(tl.int64) * S + slot[None, :], ds,
                     mask=m_ok[:, None] & (slot >= 0)[None, :])
    tl.store(dq_ptr + q_off, (dq * scale).to(dq_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def backward_tiling(D: int) -> tuple[int, int]:
    """(block, warps) of the backward kernels: 32 x 32 tiles, the only ones without register spills on sm_90 at head
    dims 64 and 128 (ptxas -v; 64 x 64 spills hundreds of bytes), 8 warps above head dim 64."""
    return 32, (4 if D <= 64 else 8)


def attention_backward(q, k, v, out, lse, probs, table, bias, scale, g_out, g_lse, g_probs):
    """(dq, dk, dv or None, dbias (B, H, Nq, S) float32 or None) for the forward's inputs and results."""
    check_supported(q, k, v, bias)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    scale = D ** -0.5 if scale is None else float(scale)
    q, k = q.contiguous(), k.contiguous()
    has_v = v is not None and g_out is not None
    v = v.contiguous() if v is not None else None
    delta = torch.zeros(B, H, Nq, device=q.device, dtype=torch.float32)
    if has_v:
        g_out = g_out.contiguous()
        delta += (g_out.float() * out.float()).sum(-1)
    has_g = g_probs is not None and probs is not None
    if has_g:
        g_probs = g_probs.float().contiguous()
        delta += (g_probs * probs).sum(-1)
    if g_lse is not None:
        delta -= g_lse.float()
    S = table.count if table is not None else 0
    slot = table.slot if table is not None else torch.full((Nk,), -1, device=q.device, dtype=torch.int32)
    has_bias = bias is not None
    if has_bias:
        bias = (bias if bias.stride(-1) == 1 else bias.contiguous()).expand(B, H, Nq, S)
        dbias = torch.zeros(B, H, Nq, S, device=q.device, dtype=torch.float32)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dv = torch.empty_like(v) if has_v else None
    dummy = delta
    tf32 = q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    flags = dict(HAS_BIAS=has_bias, HAS_V=has_v, HAS_G=has_g, ALLOW_TF32=tf32,
                 DOT_F32=interpreter_needs_f32_dot(q.dtype), BLOCK_D=max(16, triton.next_power_of_2(D)))
    block, warps = backward_tiling(D)
    common = (lse.contiguous(), delta, slot, bias if has_bias else dummy, g_probs if has_g else dummy)
    bstrides = (bias.stride(0), bias.stride(1), bias.stride(2)) if has_bias else (0, 0, 0)
    if B * H and Nq and Nk:
        _backward_dkdv[(triton.cdiv(Nk, block), B * H)](
            q, k, v if has_v else k, g_out if has_v else q, *common, dk, dv if has_v else dk,
            scale * LOG2E, scale, H, Nq, Nk, S, D, *bstrides, BLOCK_M=block, BLOCK_N=block, **flags,
            num_warps=warps)
        _backward_dq[(triton.cdiv(Nq, block), B * H)](
            q, k, v if has_v else k, g_out if has_v else q, *common, dq, dbias if has_bias else dummy,
            scale * LOG2E, scale, H, Nq, Nk, S, D, *bstrides, BLOCK_M=block, BLOCK_N=block, **flags,
            num_warps=warps)
    else:
        dq.zero_(), dk.zero_()
        if has_v:
            dv.zero_()
    return dq, dk, dv, (dbias if has_bias else None)
