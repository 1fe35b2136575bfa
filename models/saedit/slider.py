"""The slider as conditioning the host schedules itself: statically edited copies over ranges of the denoising.

The per-step strength (``schedule.py``) is laid out on a grid of ``GRID`` points over the denoising progress
(ComfyUI's timestep percent, the scale of ``ConditioningSetTimestepRange``): grid point k holds the strength of
step k of ``GRID`` (the authors' 40 steps; with the authors' timing, their factor k - 1 of linspace(0, 40, 40) / 40,
as their step-end callback applies it, and 0 at k = 0), and covers the percents nearer to it than to its
neighbours. At 40 sampling steps this is the authors' per-step strength exactly; at other step counts the curve
is followed by progress (the authors index their 40 factors by step number and run 40 steps). Runs of equal
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
from .schedule import strengths

GRID = 40


def strength_ranges(schedule: str, strength: float, grid: int = GRID,
                    timing: str = "authors") -> list[tuple[float, float, float]]:
    """[(start_percent, end_percent, strength)] covering 0..1, adjacent ranges sharing their boundary."""
    values = strengths(schedule, strength, grid, timing)
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
                       strength: float, grid: int = GRID, timing: str = "authors") -> list:
    """A new conditioning list: each entry split over the schedule's ranges (intersected with the entry's own
    ``start_percent`` / ``end_percent``), its tensor edited by ``strength * delta`` at ``positions`` in each. The
    input entries and tensors are not modified; a range of strength 0 shares the input's tensor."""
    ranges = strength_ranges(schedule, strength, grid, timing)
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
