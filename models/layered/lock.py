"""Product lock: the product's pixels exactly as in the original photo, the edit everywhere else, blended only in a
seam band around the product.

Layouts: IMAGE (B, H, W, C) floats in [0, 1]; MASK (B, H, W) or (H, W), 1 = product. A pixel is product where the
mask is >= 0.5 (the lock is exact there, whatever the mask's soft edge). The seam band is the pixels outside the
product within ``feather`` px of it (chessboard distance, i.e. ``feather`` 3x3 dilations); at distance d the
original's weight is 1 - d / (feather + 1), so it falls from nearly 1 next to the product to 0 at the band's edge.
Outside the band the output is the edit, bit for bit.

Colour match (optional, 0..1): before blending, the edit's pixels outside the product are moved per channel
(mean and standard deviation) towards the original's statistics in a ring around the product (the band plus as
much again), so a relit or re-coloured surrounding does not leave a visible step at the seam. 0 = off (the edit
outside the band is returned exactly).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import LayeredInputError

MAX_FEATHER = 256


def product_region(mask: torch.Tensor, batch: int, height: int, width: int, input_name: str = "mask") -> torch.Tensor:
    """The mask as a boolean (B, H, W) product region, checked: same size as the images, one mask or one per image,
    neither empty nor full."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise LayeredInputError(input_name, "a MASK (B, H, W)", tuple(mask.shape))
    if tuple(mask.shape[-2:]) != (height, width):
        raise LayeredInputError(input_name, f"a mask of the images' size ({width}x{height} px)",
                                f"{mask.shape[-1]}x{mask.shape[-2]} px")
    if mask.shape[0] not in (1, batch):
        raise LayeredInputError(input_name, f"one mask or one per image ({batch})", f"{mask.shape[0]} masks")
    if not bool(torch.isfinite(mask).all()):
        raise LayeredInputError(input_name, "finite mask values")
    region = (mask >= 0.5).expand(batch, -1, -1)
    counts = region.flatten(1).sum(1)
    if bool((counts == 0).any()):
        raise LayeredInputError(input_name, "a mask marking the product (this one is empty: nothing to lock)")
    if bool((counts == height * width).any()):
        raise LayeredInputError(input_name, "a mask leaving some of the image to edit (this one covers all of it)")
    return region


def chessboard_distance(region: torch.Tensor, limit: int) -> torch.Tensor:
    """(B, H, W) distance in px (chessboard) from ``region``, 0 inside it, ``limit + 1`` where it exceeds ``limit``."""
    cur = region[:, None].float()
    dist = torch.full(region.shape, float(limit + 1), device=region.device)
    dist[region] = 0
    for d in range(1, limit + 1):
        grown = F.max_pool2d(cur, 3, stride=1, padding=1)
        new = (grown > 0) & (cur == 0)
        dist[new[:, 0]] = float(d)
        cur = grown
    return dist


def _match_colour(original, edited, ring, amount):
    """``edited`` with each channel's mean/std in ``ring`` moved towards the original's there, by ``amount``."""
    out = edited.clone()
    for b in range(edited.shape[0]):
        sel = ring[b]
        if int(sel.sum()) < 2:
            continue
        o, e = original[b][sel], edited[b][sel]  # (N, C)
        gain = o.std(0) / e.std(0).clamp(min=1e-6)
        shift = o.mean(0) - e.mean(0) * gain
        matched = (edited[b] * gain + shift).clamp(0, 1)
        out[b] = edited[b] + amount * (matched - edited[b])
    return out


def product_lock(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor, feather: int = 8,
                 colour_match: float = 0.0) -> torch.Tensor:
    """The locked IMAGE (see the module docstring). ``original`` and ``edited`` must have the same size; one original
    may serve a batch of edits."""
    if original.ndim != 4 or edited.ndim != 4:
        raise LayeredInputError("original" if original.ndim != 4 else "edited", "an IMAGE (B, H, W, C)")
    if tuple(original.shape[1:]) != tuple(edited.shape[1:]):
        raise LayeredInputError("edited", f"an image of the original's size ({original.shape[2]}x{original.shape[1]} "
                                          f"px, {original.shape[3]} channels)",
                                f"{edited.shape[2]}x{edited.shape[1]} px, {edited.shape[3]} channels")
    if original.shape[0] not in (1, edited.shape[0]):
        raise LayeredInputError("original", f"one original or one per edited image ({edited.shape[0]})",
                                f"{original.shape[0]} images")
    feather = int(feather)
    if not 0 <= feather <= MAX_FEATHER:
        raise LayeredInputError("feather", f"0 to {MAX_FEATHER} px", feather)
    if not 0.0 <= float(colour_match) <= 1.0:
        raise LayeredInputError("colour_match", "a value from 0 to 1", colour_match)
    batch, height, width = edited.shape[:3]
    original = original.expand(batch, -1, -1, -1)
    region = product_region(mask.to(edited.device), batch, height, width)
    if colour_match > 0:
        dist = chessboard_distance(region, 2 * feather + 2)
        ring = (dist > 0) & (dist <= 2 * feather + 2)
        edited = torch.where(region[..., None], edited, _match_colour(original, edited, ring, float(colour_match)))
    out = edited.clone()
    if feather > 0:
        dist = chessboard_distance(region, feather)
        band = (dist > 0) & (dist <= feather)
        alpha = (1.0 - dist / (feather + 1))[..., None].to(edited.dtype)
        blend = alpha * original + (1 - alpha) * edited
        out = torch.where(band[..., None], blend, out)
    return torch.where(region[..., None], original.to(out.dtype), out)


def seam_band(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """(B, H, W) boolean: the pixels ``product_lock`` blends (outside the product, within ``feather`` px)."""
    region = (mask if mask.ndim == 3 else mask[None]) >= 0.5
    dist = chessboard_distance(region, feather)
    return (dist > 0) & (dist <= feather)
