"""The slider at sampling time: a callable that edits the context the diffusion model receives, step by step.

It is installed as an apply-model wrapper that only the edited conditioning carries (the node attaches it through
a ComfyUI hook), so the negative prompt and other conditionings never see it. The step index comes from the
sigma being evaluated and the run's own sigma schedule, so the schedule is exact for any step count and sampler.
"""
from __future__ import annotations

import torch

from .edit import apply_token_edit
from .schedule import step_strength


def step_index(sigma: float, sample_sigmas) -> tuple[int, int]:
    """(i, N): the evaluation at ``sigma`` belongs to step i of N (the last step whose start sigma is >= sigma).

    An evaluation strictly between two step sigmas (DPM2, ancestral substeps) counts as the step it is inside; one
    exactly at the next step's sigma (Heun's corrector) counts as that next step. ``sample_sigmas``: a tensor or a
    list of floats.
    """
    sigmas = sample_sigmas if isinstance(sample_sigmas, list) else [float(s) for s in sample_sigmas]
    total = max(len(sigmas) - 1, 1)
    index = 0
    for i, s in enumerate(sigmas[:-1]):
        if s >= sigma * (1 - 1e-6) - 1e-9:
            index = i
    return index, total


class ScheduledTokenEdit:
    def __init__(self, positions: list[int], delta: torch.Tensor, strength: float, schedule: str):
        step_strength(schedule, strength, 0, 1)  # validate early: unknown schedule, NaN strength
        self.positions = sorted(set(positions))
        self.delta = delta.detach().float().cpu()
        self.strength = float(strength)
        self.schedule = schedule
        self.applied: dict[int, float] = {}  # step -> strength used in the latest run (for inspection and tests)
        self._schedule = (None, [])  # (the run's sample_sigmas tensor, as floats): converted once per run
        self._deltas: dict = {}  # (device, dtype) -> delta there: copied from the CPU once, not at every call

    def _sigma_list(self, sample_sigmas) -> list[float]:
        if self._schedule[0] is not sample_sigmas:
            self._schedule = (sample_sigmas, [float(s) for s in sample_sigmas])
        return self._schedule[1]

    def delta_on(self, device, dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        if key not in self._deltas:
            self._deltas = {key: self.delta.to(device=device, dtype=dtype)}
        return self._deltas[key]

    def strength_for(self, sigma: float, sample_sigmas) -> float:
        if sample_sigmas is None:
            return step_strength(self.schedule, self.strength, 1, 1)  # no schedule known: full strength
        i, n = step_index(sigma, self._sigma_list(sample_sigmas))
        if i == 0:
            self.applied = {}
        s = step_strength(self.schedule, self.strength, i, n)
        self.applied[i] = s
        return s

    def edit_context(self, context: torch.Tensor, sigma: float, sample_sigmas) -> torch.Tensor:
        s = self.strength_for(sigma, sample_sigmas)
        if s == 0.0:
            return context
        delta = self.delta_on(context.device, context.dtype)
        return apply_token_edit(context, self.positions, delta, s).to(context.dtype)

    def apply_model_wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        sigma = float(t.reshape(-1)[0])
        c_crossattn = self.edit_context(c_crossattn, sigma, transformer_options.get("sample_sigmas"))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
