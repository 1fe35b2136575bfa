"""Stitch a person, its mask, product images and a pose render side by side into one canvas for a DiT to inpaint,
and paste the result back into the original photo with every pixel outside the mask unchanged.

Images are float tensors (B, H, W, 3) in [0, 1] (ComfyUI's IMAGE); masks (B, H, W). Errors are StitchInputError,
which carries the name of the node input at fault (person, mask, product, product_2, product_3, pose_image, layout,
generated).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LAYOUTS = ("side_by_side", "triptych_with_pose")
MIN_SIDE, MAX_SIDE = 8, 8192
MULTIPLE = 16  # Flux packs 2x2 latent patches of an 8x VAE: panel sizes in multiples of 16 pixels
PRODUCT_INPUTS = ("product", "product_2", "product_3")


class StitchInputError(ValueError):
    """A bad input; ``input_name`` is the node input at fault."""

    def __init__(self, input_name: str, message: str):
        super().__init__(message)
        self.input_name = input_name


@dataclass
class Stitch:
    """Where everything went on the canvas (pixel boxes x0, y0, x1, y1) and the person's original size."""
    canvas_size: tuple[int, int]
    person_box: tuple[int, int, int, int]
    person_size: tuple[int, int]
    product_boxes: list = field(default_factory=list)
    pose_box: tuple | None = None
    layout: str = "side_by_side"

    def to_dict(self) -> dict:
        return {"canvas_size": list(self.canvas_size), "person_box": list(self.person_box),
                "person_size": list(self.person_size), "product_boxes": [list(b) for b in self.product_boxes],
                "pose_box": list(self.pose_box) if self.pose_box else None, "layout": self.layout}


def check_image(image: torch.Tensor, name: str) -> None:
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[0] < 1:
        raise StitchInputError(name, f"{name} must be an IMAGE batch (B, H, W, 3); got {tuple(image.shape)}")
    h, w = image.shape[1:3]
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        raise StitchInputError(name, f"{name} is {w}x{h} px; each side must be between {MIN_SIDE} and {MAX_SIDE} px")


def _mask(mask: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """A MASK (B, H, W) or (H, W) the size of the person image, batched like it."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or tuple(mask.shape[1:]) != (h, w):
        raise StitchInputError("mask", f"mask is {'x'.join(map(str, tuple(mask.shape)[::-1][:2]))}; the person "
                                       f"image is {w}x{h} (a MASK of the same size)")
    if not bool(mask.isfinite().all()):
        raise StitchInputError("mask", "the mask holds NaN or infinite values")
    return _batch(mask[..., None].expand(-1, -1, -1, 3), b, "mask")[..., 0]


def _round(v: float) -> int:
    return max(MULTIPLE, int(round(v / MULTIPLE)) * MULTIPLE)


def _resize(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(image.movedim(-1, 1), size=(h, w), mode="bilinear", align_corners=False,
                         antialias=True).movedim(1, -1).clamp(0, 1)


def scale_to_fit(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """One IMAGE (1, H, W, C) scaled so its longest side is at most ``max_side``, sides in multiples of 16 (a DiT's
    patch grid). A large image is first average-pooled by a whole factor, so a huge input costs about one pass over
    its pixels and no full-size float copies."""
    h, w = image.shape[1:3]
    scale = min(1.0, max_side / max(h, w))
    nh, nw = max(MULTIPLE, int(h * scale) // MULTIPLE * MULTIPLE), max(MULTIPLE, int(w * scale) // MULTIPLE * MULTIPLE)
    if (nh, nw) == (h, w):
        return image
    x = image.movedim(-1, 1)
    factor = min(h // nh, w // nw)
    if factor >= 2:
        x = F.avg_pool2d(x, factor)
    return F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False).movedim(1, -1)


def _fit(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Letterbox into (h, w) on white, keeping the aspect ratio (products are shot on white)."""
    ih, iw = image.shape[1:3]
    scale = min(h / ih, w / iw)
    nh, nw = max(1, int(round(ih * scale))), max(1, int(round(iw * scale)))
    out = torch.ones(image.shape[0], h, w, 3, dtype=image.dtype)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[:, y:y + nh, x:x + nw] = _resize(image, nh, nw)
    return out


def _batch(image: torch.Tensor, b: int, name: str) -> torch.Tensor:
    if image.shape[0] == b:
        return image
    if image.shape[0] == 1:
        return image.expand(b, -1, -1, -1)
    raise StitchInputError(name, f"{name} has a batch of {image.shape[0]}; the person batch is {b} (use 1 or {b})")


def stitch(person: torch.Tensor, mask: torch.Tensor, products: list[torch.Tensor], pose: torch.Tensor | None = None,
           layout: str = "side_by_side", height: int = 1024) -> tuple[torch.Tensor, torch.Tensor, Stitch]:
    """-> canvas (B, Hc, Wc, 3), canvas mask (B, Hc, Wc) (the person's mask; 0 on every other panel), Stitch."""
    if layout not in LAYOUTS:
        raise StitchInputError("layout", f"layout must be one of {', '.join(LAYOUTS)}; got {str(layout)[:100]!r}")
    check_image(person, "person")
    if not products:
        raise StitchInputError("product", "at least one product image is needed")
    if len(products) > len(PRODUCT_INPUTS):
        raise StitchInputError("product", f"at most {len(PRODUCT_INPUTS)} product images")
    for name, p in zip(PRODUCT_INPUTS, products):
        check_image(p, name)
    if layout == "triptych_with_pose" and pose is None:
        raise StitchInputError("pose_image", "the triptych layout needs the pose render")
    if pose is not None:
        check_image(pose, "pose_image")
    b, h, w = person.shape[:3]
    mask = _mask(mask, b, h, w)
    if float(mask.max()) <= 0:
        raise StitchInputError("mask", "the mask is empty: nothing to replace")
    if float(mask.min()) >= 1:
        raise StitchInputError("mask", "the mask covers the whole person image: nothing would stay for the model "
                                       "to keep")
    ph = _round(height)
    pw = _round(w * ph / h)
    panels = [_resize(person, ph, pw)]
    info = Stitch(canvas_size=(0, 0), person_box=(0, 0, pw, ph), person_size=(h, w), layout=layout)
    x = pw
    column_w = _round(max(p.shape[2] * (ph / len(products)) / p.shape[1] for p in products))
    column = torch.ones(b, ph, column_w, 3, dtype=person.dtype)
    slot = ph // len(products)
    for i, p in enumerate(products):
        column[:, i * slot:(i + 1) * slot] = _fit(_batch(p, b, PRODUCT_INPUTS[i]), slot, column_w)
        info.product_boxes.append((x, i * slot, x + column_w, (i + 1) * slot))
    panels.append(column)
    x += column_w
    if layout == "triptych_with_pose":
        panels.append(_resize(_batch(pose, b, "pose_image"), ph, pw))
        info.pose_box = (x, 0, x + pw, ph)
        x += pw
    canvas = torch.cat(panels, dim=2)
    canvas_mask = torch.zeros(b, ph, x, dtype=person.dtype)
    canvas_mask[:, :, :pw] = F.interpolate(mask[:, None].float(), size=(ph, pw), mode="bilinear",
                                           align_corners=False)[:, 0].clamp(0, 1)
    info.canvas_size = (ph, x)
    return canvas, canvas_mask, info


def unstitch(generated: torch.Tensor, info: Stitch, person: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Crop the person panel, bring it back to the original size, and blend it in only where ``mask`` > 0:
    every pixel with mask 0 is the input pixel, bit for bit."""
    if person.ndim != 4 or person.shape[-1] != 3 or person.shape[0] < 1:
        raise StitchInputError("person", f"person must be an IMAGE batch (B, H, W, 3); got {tuple(person.shape)}")
    b, h, w = person.shape[:3]
    if (h, w) != tuple(info.person_size):
        raise StitchInputError("person", f"the person image is {w}x{h}; the stitch was made from "
                                         f"{info.person_size[1]}x{info.person_size[0]}")
    if generated.ndim != 4 or tuple(generated.shape[1:3]) != tuple(info.canvas_size):
        raise StitchInputError("generated", f"the generated image is {tuple(generated.shape)}; the stitch made a "
                                            f"{info.canvas_size[1]}x{info.canvas_size[0]} canvas")
    if not bool(generated.isfinite().all()):
        raise StitchInputError("generated", "the generated image holds NaN or infinite values")
    m = _mask(mask, b, h, w)[..., None].expand(-1, -1, -1, 3).to(person.dtype)
    x0, y0, x1, y1 = info.person_box
    crop = _resize(_batch(generated[..., :3], b, "generated")[:, y0:y1, x0:x1], h, w).to(person.dtype)
    blended = person * (1 - m) + crop * m
    return torch.where(m > 0, blended, person)
