"""Per-step slider strength over the denoising steps.

The authors' schedule is ``s_i = exp((i / N) * 15 * f) - 1`` capped at ``15 * f`` (N fixed at 40 in their code;
here N is the sampler's actual step count): step 0 is unedited and the edit grows late, keeping the layout. For a
negative strength the magnitude follows the same curve with the sign flipped, so -f undoes +f symmetrically.
"""
from __future__ import annotations

import math

SCALE = 15.0
SCHEDULES = ("exponential", "linear", "constant")


def step_strength(schedule: str, strength: float, step: int, total_steps: int) -> float:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number; got {strength}")
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"step must be in 0..{total_steps} with at least one step; got {step}/{total_steps}")
    frac, top = step / total_steps, SCALE * abs(strength)
    if schedule == "exponential":
        magnitude = min(math.exp(frac * top) - 1.0, top)
    elif schedule == "linear":
        magnitude = top * frac
    else:
        magnitude = top
    return math.copysign(magnitude, strength) if magnitude else 0.0


def strengths(schedule: str, strength: float, total_steps: int) -> list[float]:
    return [step_strength(schedule, strength, i, total_steps) for i in range(total_steps)]
