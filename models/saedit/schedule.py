"""Per-step slider strength over the denoising steps.

The authors' schedule is ``s = exp(x * 15 * f) - 1`` capped at ``15 * f``, on their 40-point grid
``x = linspace(0, 40, 40) / 40``, i.e. ``x_k = k / 39``; the factor is applied by a step-end callback, so the prompt
of step k is edited with ``x_(k-1)`` and step 0 runs on the unedited prompt (``timing = "authors"``, the default:
step 0 unedited, step 1 at x = 0, also unedited, step k >= 1 at (k - 1) / 39). ``timing = "undelayed"`` is this
pack's earlier grid, step k at ``x = k / N`` with no delay. For a negative strength the magnitude follows the same
curve with the sign flipped, so -f undoes +f symmetrically.
"""
from __future__ import annotations

import math

SCALE = 15.0
SCHEDULES = ("exponential", "linear", "constant")
TIMINGS = ("authors", "undelayed")


def _check(schedule: str, strength: float) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number; got {strength}")


def strength_at(schedule: str, strength: float, frac: float) -> float:
    """The schedule's strength at progress ``frac`` in [0, 1] of its curve."""
    _check(schedule, strength)
    top = SCALE * abs(strength)
    if schedule == "exponential":
        magnitude = min(math.exp(frac * top) - 1.0, top)
    elif schedule == "linear":
        magnitude = top * frac
    else:
        magnitude = top
    return math.copysign(magnitude, strength) if magnitude else 0.0


def step_strength(schedule: str, strength: float, step: int, total_steps: int) -> float:
    """Undelayed: step ``step`` of ``total_steps`` at ``step / total_steps``."""
    _check(schedule, strength)
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"step must be in 0..{total_steps} with at least one step; got {step}/{total_steps}")
    return strength_at(schedule, strength, step / total_steps)


def strengths(schedule: str, strength: float, total_steps: int, timing: str = "undelayed") -> list[float]:
    """The strength of each of ``total_steps`` steps."""
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {', '.join(TIMINGS)}; got {timing!r}")
    if timing == "undelayed":
        return [step_strength(schedule, strength, i, total_steps) for i in range(total_steps)]
    _check(schedule, strength)
    if total_steps < 2:
        raise ValueError(f"the authors' timing needs at least 2 grid points; got {total_steps}")
    return [0.0] + [strength_at(schedule, strength, (k - 1) / (total_steps - 1)) for k in range(1, total_steps)]
