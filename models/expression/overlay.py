"""An overlay of a face's landmarks and its strongest blendshape coefficients, for a quick visual check."""
from __future__ import annotations

import numpy as np

from .blendshapes import ARKIT_NAMES, Blendshapes


def draw_overlay(image: np.ndarray, shapes: Blendshapes, top: int = 6) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(img)
    if shapes.landmarks is not None:
        for x, y, _ in shapes.landmarks:
            draw.point((float(x), float(y)), fill=(0, 255, 120))
    if shapes.box is not None:
        draw.rectangle(shapes.box, outline=(255, 200, 0))
    if shapes.space == "arkit52":
        order = np.argsort(-shapes.values)[:top]
        lines = [f"{ARKIT_NAMES[i]} {shapes.values[i]:.2f}" for i in order if shapes.values[i] > 0.01]
        x0 = 4 if shapes.box is None else int(shapes.box[0])
        y0 = 4 if shapes.box is None else int(shapes.box[3]) + 4
        for j, line in enumerate(lines):
            draw.text((x0 + 1, y0 + 12 * j + 1), line, fill=(0, 0, 0))
            draw.text((x0, y0 + 12 * j), line, fill=(255, 255, 255))
    return np.asarray(img)
