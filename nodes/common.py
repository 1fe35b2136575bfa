"""Shared pieces of the node modules: the error users see, the checks every node shares, and the category root.

One place for what a hostile or careless input must never get past:
- ``EditLabNode``: the base of every node; before ``execute`` runs, each FLOAT input must be finite and each COMBO
  value one of its options (the host's min/max check lets NaN through, and does not check linked values).
- ``checked_image_size``: sizes checked before MediaPipe or OpenCV see an image (a side of 32,768 px aborts the process
  inside OpenCV, with no Python exception to catch).
- (the input and model files: ``files.py``, which reads the host's folders; this module never imports ``host``)
- ``excerpt``: errors quote at most a short excerpt of a bad value.
"""
from __future__ import annotations

import functools
import inspect
import math
import re

from comfy_api.latest import io

from .errors import EXCERPT_CHARS, MAX_EXPECTED_CHARS, EditLabInputError, excerpt  # noqa: F401

CATEGORY = "EditLab"
MAX_SIDE = 16384  # px: any image side handed to MediaPipe / OpenCV (they abort the process at 32,768)
MAX_PIXELS = 8192 * 8192  # px per image: 67 MP, 768 MB as a float IMAGE already


# -- every node ---------------------------------------------------------------------------------------------------

def check_node_inputs(schema, values: dict) -> None:
    """Every FLOAT input of ``schema`` finite, every COMBO value one of its options (inputs not given are skipped)."""
    for inp in schema.inputs or []:
        if inp.id not in values or values[inp.id] is None:
            continue
        value = values[inp.id]
        if isinstance(inp, io.Float.Input):
            try:
                finite = math.isfinite(float(value))
            except (TypeError, ValueError):
                finite = False
            if not finite:
                raise EditLabInputError(inp.id, "a finite number", value)
        elif isinstance(inp, io.Combo.Input) and not isinstance(inp, io.MultiCombo.Input) and inp.options:
            if value not in inp.options:
                shown = ", ".join(map(str, inp.options[:20])) + (", ..." if len(inp.options) > 20 else "")
                raise EditLabInputError(inp.id, f"one of {shown}", value)


def _checked_execute(fn):
    signature = inspect.signature(fn)

    def check(cls, args, kwargs):
        bound = signature.bind_partial(cls, *args, **kwargs)
        check_node_inputs(cls.define_schema(), bound.arguments)

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def execute(cls, *args, **kwargs):
            check(cls, args, kwargs)
            return await fn(cls, *args, **kwargs)
    else:
        @functools.wraps(fn)
        def execute(cls, *args, **kwargs):
            check(cls, args, kwargs)
            return fn(cls, *args, **kwargs)
    execute._editlab_checked = True
    return classmethod(execute)


class EditLabNode(io.ComfyNode):
    """Base of every EditLab node: ``execute`` runs only on finite FLOAT inputs and known COMBO values, however they
    arrived (a widget, a link, an API prompt), and the error names the input."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("execute")  # the host's per-run clones inherit an already checked execute
        if isinstance(own, classmethod) and not getattr(own.__func__, "_editlab_checked", False):
            cls.execute = _checked_execute(own.__func__)


# -- images -------------------------------------------------------------------------------------------------------

def checked_image_size(height: int, width: int, input_name: str, min_side: int = 8, max_side: int = MAX_SIDE,
                       max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image too small or too large before any native library (MediaPipe, OpenCV) sees it."""
    height, width = int(height), int(width)
    if min(height, width) < min_side or max(height, width) > max_side or height * width > max_pixels:
        raise EditLabInputError(input_name, f"an image with sides of {min_side} to {max_side} px and at most "
                                            f"{max_pixels / 1e6:.0f} megapixels", f"{width}x{height} px")


def rgb_images(image, input_name: str, min_side: int = 8, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS):
    """An IMAGE batch (B, H, W, C) checked for size and finite values, as RGB: alpha dropped, gray repeated."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 4 or shape[0] < 1 or shape[-1] not in (1, 3, 4):
        raise EditLabInputError(input_name, "an IMAGE batch (B, H, W, 3), RGB or RGBA", shape or type(image).__name__)
    checked_image_size(shape[1], shape[2], input_name, min_side, max_side, max_pixels)
    if image.is_floating_point() and not bool(image.isfinite().all()):
        raise EditLabInputError(input_name, "finite pixel values (this IMAGE holds NaN or infinite values)")
    if shape[-1] == 4:
        return image[..., :3]
    if shape[-1] == 1:
        return image.expand(-1, -1, -1, 3)
    return image


def save_as_inputs(folder: str, default: str, verb: str = "Saved as") -> list:
    """The ``name`` + ``overwrite`` inputs every node that writes models/FOLDER/NAME.safetensors ends with."""
    return [io.String.Input("name", default=default, tooltip=f"{verb} models/{folder}/NAME.safetensors."),
            io.Boolean.Input("overwrite", default=False, optional=True,
                             tooltip=f"Replace models/{folder}/NAME.safetensors if it exists (off: an error).")]
