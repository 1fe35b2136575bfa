"""The edit-pair folder both training stages read.

Layout (one pair per NAME; names of letters, digits, '_', '-', '.'):

    NAME_source.png   the photo before the edit (png, jpg, jpeg or webp)
    NAME_target.png   the same photo after the edit
    NAME.txt          the instruction (UTF-8, one line or several; e.g. "replace the background with a beach")
    NAME_mask.png     optional: the product mask (white = product), needed for stage 2's weighting

Source, target and mask are centre-cropped square and resized to the training resolution. A NAME with a source but
no target or no instruction is skipped and reported.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import LayeredInputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MAX_PAIRS = 10000
MAX_INSTRUCTION_CHARS = 2000
MAX_SIDE = 16384
_SOURCE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)_source\.(png|jpg|jpeg|webp)$", re.IGNORECASE)


@dataclass
class EditPair:
    name: str
    source: str
    target: str
    instruction: str
    mask: str | None


def _find(folder: str, stem: str) -> str | None:
    for ext in IMAGE_EXTS:
        for e in (ext, ext.upper()):
            path = os.path.join(folder, stem + e)
            if os.path.isfile(path):
                return path
    return None


def read_pairs(folder: str, input_name: str = "folder", inside=None) -> tuple[list[EditPair], list[str]]:
    """(pairs sorted by name, skipped with reasons). ``inside(path)`` says whether a file may be read (a link out of
    the allowed folder may not)."""
    pairs, skipped = [], []
    for file in sorted(os.listdir(folder)):
        m = _SOURCE.match(file)
        if not m:
            continue
        name = m.group("name")
        source = os.path.join(folder, file)
        target = _find(folder, f"{name}_target")
        text = os.path.join(folder, f"{name}.txt")
        mask = _find(folder, f"{name}_mask")
        files = [p for p in (source, target, text, mask) if p]
        if inside is not None and not all(inside(p) for p in files):
            skipped.append(f"{name}: links outside the input folder")
            continue
        if target is None or not os.path.isfile(text):
            skipped.append(f"{name}: no {'target image' if target is None else 'instruction (.txt)'}")
            continue
        if os.path.getsize(text) > 4 * MAX_INSTRUCTION_CHARS:
            skipped.append(f"{name}: instruction longer than {MAX_INSTRUCTION_CHARS} characters")
            continue
        try:
            with open(text, encoding="utf-8-sig") as f:
                instruction = " ".join(f.read().split())
        except (UnicodeDecodeError, OSError):
            skipped.append(f"{name}: instruction not readable as UTF-8")
            continue
        if not instruction or len(instruction) > MAX_INSTRUCTION_CHARS:
            skipped.append(f"{name}: empty or too long instruction")
            continue
        pairs.append(EditPair(name, source, target, instruction, mask))
        if len(pairs) > MAX_PAIRS:
            raise LayeredInputError(input_name, f"a folder of at most {MAX_PAIRS} pairs", folder)
    if not pairs:
        raise LayeredInputError(input_name, "a folder of edit pairs: NAME_source.png, NAME_target.png, NAME.txt "
                                            "(+ NAME_mask.png)", os.path.basename(folder) + (
            f" (none found; skipped: {'; '.join(skipped[:5])})" if skipped else " (none found)"))
    return pairs, skipped


def load_square(path: str, resolution: int, mode: str = "RGB") -> torch.Tensor:
    """An image file centre-cropped square and resized: (H, W, 3) for RGB, (H, W) for a mask ("L"), in [0, 1].
    Raises ValueError for an unreadable, too small or too large file."""
    from PIL import Image

    with Image.open(path) as im:
        if min(im.size) < 8 or max(im.size) > MAX_SIDE:
            raise ValueError(f"{os.path.basename(path)}: {im.width}x{im.height} px (8 to {MAX_SIDE} px per side)")
        im = im.convert(mode)
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
    return torch.from_numpy(np.asarray(im).copy()).float() / 255.0
