"""The SAE kernels as autograd Functions, and the entry points that dispatch (``kernels.dispatch``).

``encode`` computes the (n, m) activations with ``triton_encode`` (GEMM + bias + ReLU / threshold in one kernel),
selects, and keeps, for the backward, only the input, the encoder and the kept (values, indices): the (n, m)
pre-activations exist only inside the forward. Gradients, with g = grad_values where value > 0 (the ReLU; padding
entries have value 0 and so drop out):
- x:      g scattered through W_enc's columns (``gather_sum`` over W_enc viewed as (m, d));
- W_enc:  column j gets sum of g[e] * (x - b_dec)[row(e)] over the entries that picked j (``scatter_rows``);
- b_dec:  minus the sum of the x gradient over rows; b_enc: g summed per latent.
``decode``: values get <grad, W_dec[j]>, W_dec row j gets sum of value * grad over the entries that picked j,
b_dec gets grad summed over rows.
"""
from __future__ import annotations

import torch

from ..dispatch import KernelUnavailable, backward_or_reference, run
from . import reference


def _check(k, threshold):
    if (k is None) == (threshold is None):
        raise ValueError("encode needs exactly one of k (TopK / BatchTopK) and threshold")
    if k is not None and int(k) < 1:
        raise ValueError(f"k must be at least 1; got {k}")


DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_supported(*tensors) -> None:
    """Raise ``KernelUnavailable`` for floating tensors of a dtype the kernels were not built for."""
    for t in tensors:
        if t is not None and t.dtype.is_floating_point and t.dtype not in DTYPES:
            raise KernelUnavailable(f"dtype {t.dtype} (the SAE kernels take float16, bfloat16, float32)")


def _cublas_float32(x) -> bool:
    """Float32 on CUDA without TF32: cuBLAS's SGEMM (a Triton float32 dot without TF32 runs on FMA units)."""
    return x.is_cuda and x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def _pre_activations(x, W_enc, b_dec, b_enc, threshold, torch_only=False):
    """The Triton GEMM with its fused epilogue, or (``_cublas_float32``, ``torch_only``) torch's GEMM with the
    epilogue in place."""
    if torch_only or _cublas_float32(x):
        xc = x - b_dec
        pre = torch.addmm(b_enc, xc, W_enc) if b_enc is not None else xc @ W_enc
        del xc
        pre.relu_()
        return pre.masked_fill_(pre <= threshold, 0) if threshold is not None else pre
    from .triton_encode import pre_activations

    return pre_activations(x, W_enc, b_dec, b_enc, threshold)


def _backward(name: str, torch_only: bool, backward):
    """``backward(impl)`` through the Triton kernels (``impl`` None) or their torch forms (``reference``); the kernel
    path falls back to the torch forms for this call only where the kernel cannot serve it."""
    if torch_only:
        return backward(reference)
    return backward_or_reference(name, lambda: backward(None), lambda: backward(reference))


class SAEEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k, batch, threshold, torch_only=False):
        pre = _pre_activations(x, W_enc, b_dec, b_enc, threshold, torch_only)
        values, indices = reference.select(pre, k, batch, threshold, inplace=True)
        del pre
        ctx.save_for_backward(x, W_enc, b_dec, values, indices)
        ctx.has_benc, ctx.torch_only = b_enc is not None, torch_only
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):
        values = ctx.saved_tensors[3]
        g = (grad_values * (values > 0)).contiguous()
        return _backward("sae encode", ctx.torch_only, lambda impl: SAEEncode._kernel_backward(ctx, g, impl))

    @staticmethod
    def _kernel_backward(ctx, g, impl=None):
        """The gradients through the Triton gathers and scatter (``impl`` None) or their torch forms (``reference``:
        embedding_bag and a row-chunked index_add_)."""
        if impl is None:
            from .triton_decode import gather_sum, scatter_rows
        else:
            gather_sum, scatter_rows = impl.gather_sum, impl.scatter_rows

        x, W_enc, b_dec, values, indices = ctx.saved_tensors
        d, m = W_enc.shape
        grad_x = grad_W = grad_benc = grad_bdec = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            # W_enc's columns are strided by m: one transposed copy (one pass over W_enc) makes the gather coalesced
            grad_xc = gather_sum(g, indices, W_enc.t().contiguous(), out_dtype=x.dtype)
            grad_x = grad_xc if ctx.needs_input_grad[0] else None
            grad_bdec = -grad_xc.sum(0).to(b_dec.dtype) if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[1]:
            grad_W = scatter_rows((x - b_dec).to(W_enc.dtype), g, indices, m).t()
        if ctx.has_benc and ctx.needs_input_grad[2]:
            grad_benc = torch.zeros(m, device=g.device, dtype=torch.float32).index_add_(
                0, indices.reshape(-1), g.reshape(-1).float()).to(W_enc.dtype)
        return grad_x, grad_W, grad_benc, grad_bdec, None, None, None, None


class SAEDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec, torch_only=False):
        ctx.save_for_backward(values, indices, W_dec)
        ctx.has_bdec, ctx.torch_only = b_dec is not None, torch_only
        if torch_only:
            return reference.gather_sum(values, indices, W_dec, b_dec)
        from .triton_decode import gather_sum

        return gather_sum(values, indices, W_dec, b_dec)

    @staticmethod
    def backward(ctx, grad_out):
        grad_out = grad_out.contiguous()
        return _backward("sae decode", ctx.torch_only,
                         lambda impl: SAEDecode._kernel_backward(ctx, grad_out, impl))

    @staticmethod
    def _kernel_backward(ctx, grad_out, impl=None):
        if impl is None:
            from .triton_decode import gather_dot, scatter_rows
        else:
            gather_dot, scatter_rows = impl.gather_dot, impl.scatter_rows

        values, indices, W_dec = ctx.saved_tensors
        grad_values = gather_dot(grad_out, indices, W_dec, out_dtype=values.dtype) if ctx.needs_input_grad[0] \
            else None
        grad_W = scatter_rows(grad_out.to(W_dec.dtype), values, indices, W_dec.shape[0]) \
            if ctx.needs_input_grad[2] else None
        grad_b = grad_out.sum(0) if ctx.has_bdec and ctx.needs_input_grad[3] else None
        return grad_values, None, grad_W, grad_b, None


def encode(x, W_enc, b_dec, b_enc=None, k=None, batch=False, threshold=None):
    """(values, indices) of ``relu((x - b_dec) @ W_enc + b_enc)``: the top ``k`` per row, the top ``k * n`` of the
    batch (``batch=True``), or every entry above ``threshold`` (see ``reference``'s docstring for the layout)."""
    _check(k, threshold)
    threshold = float(threshold) if threshold is not None else None
    k = None if k is None else int(k)

    def kernel():
        check_supported(x, W_enc, b_dec, b_enc)
        return SAEEncode.apply(x, W_enc, b_enc, b_dec, k, bool(batch), threshold)

    return run("sae encode", (x, W_enc, b_dec), kernel,
               lambda: reference.encode(x, W_enc, b_dec, b_enc, k, batch, threshold))


def decode(values, indices, W_dec, b_dec=None):
    """(n, d) ``sum_s values[:, s] * W_dec[indices[:, s]] + b_dec``."""

    def kernel():
        check_supported(values, W_dec, b_dec)
        return SAEDecode.apply(values, indices, W_dec, b_dec)

    return run("sae decode", (values, W_dec), kernel, lambda: reference.decode(values, indices, W_dec, b_dec))


def sparse_torch_encode(x, W_enc, b_dec, b_enc=None, k=None, batch=False, threshold=None):
    """``encode`` through torch alone, sparse: torch's GEMM, the selection, and a backward of ``F.embedding_bag`` (the
    input's gradient) and ``index_add_`` (the encoder's), as EleutherAI sparsify's FusedEncoder computes them (the
    benchmark's sparse torch baseline; the rows are added in blocks instead of one (n k, d) tensor)."""
    _check(k, threshold)
    return SAEEncode.apply(x, W_enc, b_enc, b_dec, None if k is None else int(k), bool(batch),
                           None if threshold is None else float(threshold), True)


def sparse_torch_decode(values, indices, W_dec, b_dec=None):
    """``decode`` through ``F.embedding_bag`` with the same sparse backward (``index_add_``)."""
    return SAEDecode.apply(values, indices, W_dec, b_dec, True)
