"""SAE encode / decode kernels: ``reference.py`` (plain torch), ``triton_encode.py``, ``triton_decode.py``, and
``ops.py`` (autograd Functions and the dispatching entry points ``encode`` / ``decode``)."""
from .ops import decode, encode

__all__ = ["encode", "decode"]
