"""The slider as conditioning the host schedules itself: statically edited copies over ranges of the denoising.

The per-step strength (``schedule.py``) is laid out on a grid of ``GRID`` points over the denoising progress
(ComfyUI's timestep percent, the scale of ``ConditioningSetTimestepRange``): grid point k holds the strength of
step k of ``GRID`` (the authors' N = 40), and covers the percents nearer to it than to its neighbours. Runs of equal
strength are merged, so the capped tail of the exponential schedule is one range. Each range becomes a copy of the
conditioning entry with the decoded delta added at the word's tokens and ``start_percent`` / ``end_percent`` set;
at every step the host picks the one range that holds the step's sigma. No hook and no wrapper: the edited
conditioning batches with the negative prompt under CFG like any other, and costs nothing per step.

With the default schedulers (simple, normal, sgm_uniform, beta) step i of N sits at percent i/N, so the strength at
step i is the schedule's at step i of N exactly whenever i/N is a grid point (N = 8, 20, 40, ...), and the nearest
grid point's otherwise.
"""
from __future__ import annotations

import torch

from .edit import apply_token_edit
from .schedule import step_strength

GRID = 40


def strength_ranges(schedule: str, strength: float, grid: int = GRID) -> list[tuple[float, float, float]]:
    """[(start_percent, end_percent, strength)] covering 0..1, adjacent ranges sharing their boundary."""
    values = [step_strength(schedule, strength, k, grid) for k in range(grid)]
    ranges = []
    for k, s in enumerate(values):
        start = 0.0 if k == 0 else (k - 0.5) / grid
        end = 1.0 if k == grid - 1 else (k + 0.5) / grid
        if ranges and ranges[-1][2] == s:
            ranges[-1] = (ranges[-1][0], end, s)
        else:
            ranges.append((start, end, s))
    return ranges


def slide_conditioning(conditioning: list, positions: list[int], delta: torch.Tensor, schedule: str,
                       strength: float, grid: int = GRID) -> list:
    """A new conditioning list: each entry split over the schedule's ranges (intersected with the entry's own
    ``start_percent`` / ``end_percent``), its tensor edited by ``strength * delta`` at ``positions`` in each. The
    input entries and tensors are not modified; a range of strength 0 shares the input's tensor."""
    ranges = strength_ranges(schedule, strength, grid)
    out = []
    for cond, options in conditioning:
        lo, hi = float(options.get("start_percent", 0.0)), float(options.get("end_percent", 1.0))
        for start, end, s in ranges:
            start, end = max(start, lo), min(end, hi)
            if start >= end:
                continue
            edited = cond if s == 0.0 else apply_token_edit(cond, positions, delta.to(cond), s).to(cond.dtype)
            out.append([edited, {**options, "start_percent": start, "end_percent": end}])
    return out
