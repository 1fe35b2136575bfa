"""Which implementation a kernel call runs: the Triton kernel on CUDA tensors, the torch reference elsewhere.

One environment variable, ``EDITLAB_KERNELS``, read at every call:
- ``auto`` (default): Triton when it imports and every tensor is on a CUDA device, else the reference;
- ``reference``: always the torch reference (to rule the kernels out when chasing a difference);
- ``triton``: always the Triton kernels, on any device (the tests use it with ``TRITON_INTERPRET=1`` on the CPU).
"""
from __future__ import annotations

import functools
import os

import torch

ENV = "EDITLAB_KERNELS"
MODES = ("auto", "reference", "triton")


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(MODES)}; got {value!r}")
    return value


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # missing, or a build that does not import on this platform
        return False
    return True


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels should run on ``tensors``."""
    m = mode()
    if m == "reference":
        return False
    if m == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV}=triton but Triton does not import here")
        return True
    return triton_available() and all(t.is_cuda for t in tensors if t is not None)


def interpreter_needs_f32_dot(dtype: torch.dtype) -> bool:
    """Triton 3.8's CPU interpreter multiplies bfloat16 ``tl.dot`` operands wrongly (numpy has no bfloat16); under
    the interpreter the kernels widen those operands to float32 first (same products: bf16 values are exact in
    float32). Compiled kernels keep the native bf16 dot."""
    import triton

    return dtype == torch.bfloat16 and bool(triton.knobs.runtime.interpret)
