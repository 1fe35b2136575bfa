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

import torch
import triton
import triton.language as tl

from ..dispatch import interpreter_needs_f32_dot

LOG2E = 1.4426950408889634


@triton.jit
def _forward(q_ptr, k_ptr, v_ptr, slot_ptr, bias_ptr, out_ptr, lse_ptr, qk_scale, H, Nq, Nk, D,
                    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, sbb, sbh, sbn,
                    HAS_BIAS: tl.constexpr, HAS_V: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_F32: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
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
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, Nk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Nk
        k = tl.load(k_ptr + b * skb + h * skh + offs_n[:, None].to(tl.int64) * skn + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_F32:
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        elif ALLOW_TF32:
            s = tl.dot(q, tl.trans(k))
        else:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s = s * qk_scale
        if HAS_BIAS:
            slot = tl.load(slot_ptr + offs_n, mask=n_ok, other=-1)
            chosen = slot >= 0
            bias = tl.load(bias_ptr + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbn + slot[None, :],
                           mask=m_ok[:, None] & chosen[None, :], other=0.0)
            s += bias.to(tl.float32) * 1.4426950408889634
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_V:
            v = tl.load(v_ptr + b * svb + h * svh + offs_n[:, None].to(tl.int64) * svn + offs_d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            if DOT_F32:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32),
                                                    input_precision="ieee")
            elif ALLOW_TF32:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(lse_ptr + pid_bh.to(tl.int64) * Nq + offs_m, lse, mask=m_ok)
    if HAS_V:
        out = acc / l_i[:, None]
        tl.store(out_ptr + b * sob + h * soh + offs_m[:, None].to(tl.int64) * son + offs_d[None, :],
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




def _last_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _blocks(Nq: int, D: int):
    block_d = max(16, triton.next_power_of_2(D))
    block_m = 128 if D <= 64 else 64
    return min(block_m, max(16, triton.next_power_of_2(Nq))), 64, block_d


def attention(q, k, v, keys=None, bias=None, scale=None, with_out=True, with_probs=True):
    """(out or None, lse (B, H, Nq) float32, probs (B, H, Nq, S) float32 or None); layouts as in ``reference``."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    if D > 256:
        raise ValueError(f"head dim {D} is above the kernel's 256")
    scale = D ** -0.5 if scale is None else float(scale)
    q, k = _last_contiguous(q), _last_contiguous(k)
    v = _last_contiguous(v) if with_out else None
    lse = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)
    out = torch.empty(B, H, Nq, D, device=q.device, dtype=q.dtype) if with_out else None
    has_bias = bias is not None
    if has_bias:
        bias = _last_contiguous(bias).expand(B, H, Nq, keys.numel())
        slot = torch.full((Nk,), -1, device=q.device, dtype=torch.int32)
        slot[keys] = torch.arange(keys.numel(), device=q.device, dtype=torch.int32)
    else:
        slot = bias = lse  # unused pointers
    tf32 = q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    dot_f32 = interpreter_needs_f32_dot(q.dtype)
    BM, BN, BD = _blocks(Nq, D)
    grid = (triton.cdiv(Nq, BM), B * H)
    if B * H and Nq:
        vv, oo = (v, out) if with_out else (q, lse)
        _forward[grid](q, k, vv, slot, bias, oo, lse, scale * LOG2E, H, Nq, Nk, D,
                       q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                       vv.stride(0), vv.stride(1), vv.stride(2) if vv.ndim == 4 else 0,
                       *((out.stride(0), out.stride(1), out.stride(2)) if with_out else (0, 0, 0)),
                       *((bias.stride(0), bias.stride(1), bias.stride(2)) if has_bias else (0, 0, 0)),
                       HAS_BIAS=has_bias, HAS_V=with_out, ALLOW_TF32=tf32, DOT_F32=dot_f32,
                       BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, num_warps=4 if D <= 64 else 8, num_stages=2)
    probs = None
    if keys is not None and with_probs:
        S = keys.numel()
        probs = torch.empty(B, H, Nq, S, device=q.device, dtype=torch.float32)
        if B * H and Nq and S:
            keys32 = keys.to(torch.int32).contiguous()
            BS = min(64, max(16, triton.next_power_of_2(S)))
            _key_probs[grid](q, k, keys32, bias, lse, probs, scale, H, Nq, S, D,
                             q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                             *((bias.stride(0), bias.stride(1), bias.stride(2)) if has_bias else (0, 0, 0)),
                             HAS_BIAS=has_bias, ALLOW_TF32=tf32, DOT_F32=dot_f32, BLOCK_M=BM, BLOCK_S=BS, BLOCK_D=BD)
    return out, lse, probs
