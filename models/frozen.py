"""Gradients through a frozen host network, without a second copy of its weights.

Every method that trains an adapter or LoRA through the host's diffusion model (ToVA, the expression and reference
adapters, the layered LoRAs) and LODA's gradient step on the latent backpropagates through weights that must not
change and that autograd may not save: under ComfyUI the stock loaders run in inference mode, so the weights are
inference tensors (or, moved to a GPU outside inference mode, parameters without a version counter). Saving them is
refused; copying them costs one full copy of the model (+3.3 GB on SD1.5, +24 GB on Flux dev in bf16).

``frozen_for_autograd(module)`` instead:
- routes ``linear`` and ``conv1d/2d/3d`` calls whose weight is such a tensor through functions that keep a reference
  to the weight instead of saving it, and compute the input's gradient from it in backward (the weight is frozen, so
  re-reading it is exact). Linear and convolution weights are nearly all of a diffusion model's bytes;
- uses a moved parameter's storage as it is (its ``.data`` is an ordinary tensor), and copies only the remaining
  inference tensors (norm scales, biases of other layers, embeddings, buffers): a few MB;
- freezes every parameter, and sets the host's ``in_training`` flag (newer hosts' fused Flux rope has no gradient
  without it), restoring all of it on exit, so the MODEL other nodes share is left as it was.

Plain torch: the host is only touched through ``sys.modules`` (its training flag), never imported.
"""
from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

_CONVS = {F.conv1d: torch.nn.grad.conv1d_input, F.conv2d: torch.nn.grad.conv2d_input,
          F.conv3d: torch.nn.grad.conv3d_input}
_REREAD_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def untracked(t: torch.Tensor) -> bool:
    """True for a tensor autograd cannot save: an inference tensor, or a parameter made in inference mode whose
    data was replaced outside it (what a stock loader's weights become when moved to the GPU outside inference
    mode): not flagged as inference, yet without a version counter."""
    if t.is_inference():
        return True
    try:
        t._version
    except RuntimeError:
        return True
    return False


class _LinearRereadingWeight(torch.autograd.Function):
    """On 2-D inputs (the caller flattens: a linear's output on more dimensions is a view, which a custom function
    may not return when the host then adds to it in place)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.weight = weight  # held, not saved: frozen, read again in backward
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        return grad.matmul(ctx.weight.to(grad.dtype)), None, None


class _ConvRereadingWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, conv, x, weight, bias, stride, padding, dilation, groups):
        ctx.conv, ctx.weight, ctx.shape, ctx.args = conv, weight, x.shape, (stride, padding, dilation, groups)
        out = conv(x, weight, bias, stride, padding, dilation, groups)
        return out.clone() if out._base is not None else out  # conv1d runs as a squeezed conv2d: a view

    @staticmethod
    def backward(ctx, grad):
        gx = _CONVS[ctx.conv](ctx.shape, ctx.weight.to(grad.dtype), grad, *ctx.args)
        return None, gx, None, None, None, None, None, None


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


class _RereadFrozenWeights(torch.overrides.TorchFunctionMode):
    """Within it, linear and convolution calls on an untracked weight keep no saved copy of the weight."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func in _CONVS:
            x, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
            # an untracked weight is frozen whatever its flag says (a loader's inference-mode parameters keep
            # requires_grad=True, which cannot be changed outside inference mode)
            if isinstance(weight, torch.Tensor) and untracked(weight) and torch.is_grad_enabled() \
                    and isinstance(x, torch.Tensor) and x.requires_grad:
                bias = _arg(args, kwargs, 2, "bias")
                if bias is not None and bias.requires_grad and not untracked(bias):
                    pass  # a bias that trains: the ordinary path
                elif func is F.linear:
                    flat = _LinearRereadingWeight.apply(x.reshape(-1, x.shape[-1]), weight, bias)
                    return flat.view(*x.shape[:-1], flat.shape[-1])
                else:
                    stride, padding = _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0)
                    dilation, groups = _arg(args, kwargs, 5, "dilation", 1), _arg(args, kwargs, 6, "groups", 1)
                    if not isinstance(padding, str):  # "same"/"valid": the ordinary path below
                        return _ConvRereadingWeight.apply(func, x, weight, bias, stride, padding, dilation, groups)
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_training_flag():
    """The host's own "a backward pass follows" flag (``comfy.model_management.in_training``, which its LoRA trainer
    sets), set within the block and restored after: newer hosts route Flux's rope (and other ops) through fused
    kernels that have no gradient unless it is set. Nothing happens where the host is not loaded or has no flag."""
    mm = sys.modules.get("comfy.model_management")
    if mm is None or not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before


@contextlib.contextmanager
def frozen_for_autograd(module: torch.nn.Module):
    """Within the block, gradients can flow through ``module`` to something outside it (an adapter, a latent) while
    none of its parameters trains and none of its linear or convolution weights is copied (module docstring). On
    exit the module holds its original tensor objects with their original flags again.
    Enter it outside inference mode: copies made inside it would be inference tensors again."""
    swapped, flags, inference_flags = [], [], []
    try:
        for sub in module.modules():
            reread = isinstance(sub, _REREAD_MODULES)
            for table, is_param in ((sub._parameters, True), (sub._buffers, False)):
                for name, t in list(table.items()):
                    if t is None:
                        continue
                    if not untracked(t):
                        if is_param:
                            flags.append((t, t.requires_grad))
                            t.requires_grad_(False)
                        continue
                    data = t.data
                    if not untracked(data):  # moved outside inference mode: its storage, no copy
                        new = data
                    elif reread and is_param and name in ("weight", "bias"):
                        # an inference tensor read in place by _RereadFrozenWeights: no copy. Frozen, so that a
                        # cast of it (fp8 -> bf16 in the host's ops) is no path for gradients to a weight
                        inference_flags.append((t, t.requires_grad))
                        t.requires_grad_(False)
                        continue
                    else:
                        new = data.clone()  # the small rest (norms, embeddings, buffers)
                    swapped.append((table, name, t))
                    table[name] = torch.nn.Parameter(new, requires_grad=False) if is_param else new
        with host_training_flag(), _RereadFrozenWeights():
            yield module
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.inference_mode():  # the flag of an inference tensor can be set back only there
            for p, flag in inference_flags:
                p.requires_grad_(flag)
