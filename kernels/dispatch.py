"""Which implementation a kernel call runs: the Triton kernel on CUDA tensors, the torch reference elsewhere.

One environment variable, ``EDITLAB_KERNELS``, read at every call:
- ``auto`` (default): the Triton kernel, unless it cannot serve this call, then the reference;
- ``reference``: always the torch reference (to rule the kernels out when chasing a difference);
- ``triton``: always the Triton kernels, on any device (the tests use it with ``TRITON_INTERPRET=1`` on the CPU);
  a call the kernel cannot serve raises ``KernelUnavailable``.

"Cannot serve" is one named condition, ``KernelUnavailable`` (Triton missing, tensors off CUDA, a head dim or dtype
the kernel was not built for, a launch that needs more shared memory or registers than this GPU has: Triton's
``OutOfResources``), decided at every call, forward and backward alike: the reference then serves that call only,
and the reason is logged once. Everything else is raised where it happened: a bad argument, a kernel bug, and an
out-of-memory error (the reference would build larger intermediates, not smaller).
"""
from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

ENV = "EDITLAB_KERNELS"
MODES = ("auto", "reference", "triton")
_logged: set[tuple[str, str]] = set()  # (kernel, reason) pairs already logged


class KernelUnavailable(RuntimeError):
    """The kernel cannot serve this call (shape, dtype, device, platform); the reference serves it instead."""


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
    """True when the Triton kernels should be tried on ``tensors`` (the mode, Triton's import and the device)."""
    m = mode()
    if m == "reference":
        return False
    if m == "triton":
        if not triton_available():
            raise KernelUnavailable(f"{ENV}=triton but Triton does not import here")
        return True
    return triton_available() and all(t.is_cuda for t in tensors if t is not None)


def unavailable_reason(*tensors: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on ``tensors`` in this mode, or None."""
    if not triton_available():
        return "Triton does not import here"
    if mode() == "auto" and not all(t.is_cuda for t in tensors if t is not None):
        return "tensors not on a CUDA device"
    return None


def _out_of_resources(e: BaseException) -> bool:
    """Triton's launch-time "needs more shared memory / registers than this GPU has" (not a memory allocation)."""
    return type(e).__name__ == "OutOfResources" and type(e).__module__.startswith("triton")


def run(name: str, tensors, kernel, reference, *args):
    """``kernel(*args)``, or ``reference(*args)`` when the mode says so or the kernel raises ``KernelUnavailable``
    (auto mode; logged once per reason). ``tensors``: the call's tensors, for the device check."""
    m = mode()
    if m == "reference":
        return reference(*args)
    try:
        why = unavailable_reason(*tensors)
        if why is not None:
            raise KernelUnavailable(why)
        try:
            return kernel(*args)
        except Exception as e:
            if _out_of_resources(e):
                raise KernelUnavailable(f"{type(e).__name__}: {e}") from e
            raise
    except KernelUnavailable as e:
        if m != "auto":
            raise
        log_fallback(name, str(e))
        return reference(*args)


def log_fallback(name: str, reason: str) -> None:
    if (name, reason) not in _logged:
        _logged.add((name, reason))
        log.info("EditLab kernel %s cannot serve this call (%s): the torch reference serves it (logged once)", name,
                 reason)


def backward_or_reference(name: str, kernel_backward, reference_backward):
    """An autograd Function's backward through ``kernel_backward()``, or ``reference_backward()`` when the kernel
    cannot serve it (``KernelUnavailable``, Triton's ``OutOfResources``; auto mode only, this call only)."""
    try:
        try:
            return kernel_backward()
        except Exception as e:
            if _out_of_resources(e):
                raise KernelUnavailable(f"{type(e).__name__}: {e}") from e
            raise
    except KernelUnavailable as e:
        if mode() != "auto":
            raise
        log_fallback(f"{name} backward", str(e))
        return reference_backward()


def interpreter_needs_f32_dot(dtype: torch.dtype) -> bool:
    """Triton 3.8's CPU interpreter multiplies bfloat16 ``tl.dot`` operands wrongly (numpy has no bfloat16); under
    the interpreter the kernels widen those operands to float32 first (same products: bf16 values are exact in
    float32). Compiled kernels keep the native bf16 dot."""
    import triton

    return dtype == torch.bfloat16 and bool(triton.knobs.runtime.interpret)
