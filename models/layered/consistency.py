"""Consistency report: how much an edit changed the photo inside and outside the product mask.

Per image: mean absolute error (L1, pixel values in [0, 1]), PSNR (dB, peak 1; ``"inf"`` where nothing changed) and
SSIM (kornia's ``metrics.ssim``, an 11 px Gaussian window, averaged over the region's pixels of its SSIM map), each
inside and outside the mask (``None`` for a region with no pixels). The heat-map is the per-pixel absolute change
(mean over RGB), scaled by ``scale`` (default: the batch's largest change, so the strongest change is the brightest;
all black when nothing changed), coloured black -> red -> yellow, with the mask's outline in cyan.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..heatmap import heatmap
from . import LayeredInputError

SSIM_WINDOW = 11


def _check(original, edited, mask):
    if original.ndim != 4 or edited.ndim != 4:
        raise LayeredInputError("original" if original.ndim != 4 else "edited", "an IMAGE (B, H, W, C)")
    if tuple(original.shape[1:3]) != tuple(edited.shape[1:3]):
        raise LayeredInputError("edited", f"an image of the original's size ({original.shape[2]}x"
                                          f"{original.shape[1]} px)", f"{edited.shape[2]}x{edited.shape[1]} px")
    if original.shape[0] not in (1, edited.shape[0]):
        raise LayeredInputError("original", f"one original or one per edited image ({edited.shape[0]})",
                                f"{original.shape[0]} images")
    batch, height, width = edited.shape[:3]
    if mask is None:
        return torch.zeros(batch, height, width, dtype=torch.bool, device=edited.device)
    mask = mask[None] if mask.ndim == 2 else mask
    if mask.ndim != 3 or tuple(mask.shape[-2:]) != (height, width):
        raise LayeredInputError("mask", f"a mask of the images' size ({width}x{height} px)", tuple(mask.shape))
    if mask.shape[0] not in (1, batch):
        raise LayeredInputError("mask", f"one mask or one per image ({batch})", f"{mask.shape[0]} masks")
    return (mask.to(edited.device) >= 0.5).expand(batch, -1, -1)


def _psnr(mse: float):
    return "inf" if mse == 0 else round(10 * math.log10(1.0 / mse), 4)


def _region_stats(abs_diff, sq_diff, ssim_map, sel) -> dict | None:
    n = int(sel.sum())
    if n == 0:
        return None
    return {"pixels": n, "l1": float(abs_diff[sel].mean()), "psnr_db": _psnr(float(sq_diff[sel].mean())),
            "ssim": float(ssim_map[sel].mean())}


def ssim_map(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """(B, H, W) SSIM map (mean over RGB) from kornia, images (B, H, W, 3) in [0, 1]."""
    import kornia.metrics

    a = original.permute(0, 3, 1, 2).float()
    b = edited.permute(0, 3, 1, 2).float()
    return kornia.metrics.ssim(a, b, SSIM_WINDOW, max_val=1.0, padding="same").mean(1)


def consistency_report(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor | None = None,
                       scale: float | None = None) -> tuple[dict, torch.Tensor]:
    """(report, heat-map IMAGE (B, H, W, 3)). ``original`` (1 or B images), ``edited`` (B), ``mask`` (1 or B, H, W)."""
    region = _check(original, edited, mask)
    original = original[..., :3].expand(edited.shape[0], -1, -1, -1).float()
    edited = edited[..., :3].float()
    diff = (edited - original)
    abs_diff = diff.abs().mean(-1)
    sq_diff = diff.pow(2).mean(-1)
    ssim = ssim_map(original, edited)
    images = []
    for b in range(edited.shape[0]):
        images.append({"inside_mask": _region_stats(abs_diff[b], sq_diff[b], ssim[b], region[b]),
                       "outside_mask": _region_stats(abs_diff[b], sq_diff[b], ssim[b], ~region[b]),
                       "max_change": float(abs_diff[b].max())})
    top = float(abs_diff.max()) if scale is None else float(scale)
    heat = heatmap(abs_diff / top if top > 0 else torch.zeros_like(abs_diff))
    if mask is not None:
        r = region[:, None].float()
        outline = (F.max_pool2d(r, 3, 1, 1) - r)[:, 0] > 0
        heat[outline] = torch.tensor([0.0, 1.0, 1.0])
    report = {"metric_notes": "l1: mean |edited - original| over RGB in [0, 1]; psnr_db: peak 1; ssim: kornia, "
                              f"{SSIM_WINDOW} px Gaussian window, mean of the map over the region",
              "heatmap_scale": top, "images": images}
    return report, heat.clamp(0, 1)
