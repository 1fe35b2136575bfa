"""Which implementation a kernel call runs: the Triton kernel on CUDA tensors, the torch reference elsewhere.

One environment variable, ``EDITLAB_KERNELS``, read at every call:
- ``auto`` (default): Triton when it imports and every tensor is on a CUDA device, else the reference;
- ``reference``: always the torch reference (to rule the kernels out when chasing a difference);
- ``triton``: always the Triton kernels, on any device (the tests use it with ``TRITON_INTERPRET=1`` on the CPU).

In ``auto`` mode a kernel that fails to compile or launch on this machine (an old GPU, too little shared memory) is
logged once and replaced by the reference for the rest of the session; in ``triton`` mode the error is raised.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

ENV = "EDITLAB_KERNELS"
_broken: set[str] = set()  # kernels that failed to build or launch here (auto mode then takes the reference)
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


def triton_or_none(fn, *args):
    """``fn(*args)`` (a Triton path); in ``auto`` mode, None after a failure (logged once) so the caller takes the
    reference. Errors in the arguments are the caller's to check before."""
    name = getattr(fn, "__qualname__", repr(fn))
    if name in _broken and mode() == "auto":
        return None
    try:
        return fn(*args)
    except Exception as e:
        if mode() != "auto":
            raise
        _broken.add(name)
        log.warning("EditLab kernel %s failed here (%s: %s); using the torch reference from now on", name,
                    type(e).__name__, e)
        return None


def interpreter_needs_f32_dot(dtype: torch.dtype) -> bool:
    """Triton 3.8's CPU interpreter multiplies bfloat16 ``tl.dot`` operands wrongly (numpy has no bfloat16); under
    the interpreter the kernels widen those operands to float32 first (same products: bf16 values are exact in
    float32). Compiled kernels keep the native bf16 dot."""
    import triton

    return dtype == torch.bfloat16 and bool(triton.knobs.runtime.interpret)
