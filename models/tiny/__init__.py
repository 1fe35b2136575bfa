"""Tiny, seeded stand-ins for real checkpoints, built from ComfyUI's own model classes.

The weights are random: images made with them are meaningless. What they prove is mechanics (shapes, token
counts, determinism, what a patch changes and what it leaves alone) on the same code paths a real checkpoint takes.
The node ``EditLabTinyModels`` and the test fixtures both call :func:`build_tiny_models`.
"""
from .builders import ARCHITECTURES, WEIGHT_DTYPES, TinyModels, build_tiny_models

__all__ = ["ARCHITECTURES", "WEIGHT_DTYPES", "TinyModels", "build_tiny_models"]
