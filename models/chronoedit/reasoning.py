"""Temporal reasoning with any sampler: denoise all frames for k steps, keep frames [0, -1], restart the same sampler.

The authors slice the latents and the scheduler's stored model outputs at step k inside one diffusers loop, which
ties the method to the schedulers they patched (and breaks others). Here the sampler is the host's, run twice:

1. steps 0..k-1 on all T latent frames with the sigmas ``sigmas[:k+1]`` (noise added once, at the start);
2. frames [0, -1] of that state (and, in the caller, of the conditioning's concat latents and masks, and of the
   temporal positions) sampled afresh on ``sigmas[k:]``: a sampler with multistep or SDE state starts clean, as any
   sampler started at an intermediate sigma (KSamplerAdvanced's start_at_step) does.

Both runs go through a caller-given ``sample`` function (the host's sampling entry point), which takes a LATENT in
the host's outer space and returns one, as KSamplerAdvanced does: a run ending at sigma_k returns the state with its
leftover noise, and a run given ``noise`` starts from ``sigma_0 * noise + (1 - sigma_0) * latent`` (flow models).
The restart hands the kept last frame over as that leftover state with zero noise, so it restarts where it was.
Frame 0 is pinned by the host's noise mask to the input's latent; for it the restart passes the input's latent and
the frame's original noise, so the host's pin blends exactly what it blended before the drop. The host's pin makes
every denoised estimate's frame 0 the input's latent, but a multistep sampler's last update can leave rounding-size
traces there (UniPC: ~1e-2 on the tiny model), so the results get frame 0 set to the input's latent exactly.
The pin is ours: the authors start every frame, frame 0 included, from noise and keep what the sampler makes of it
(only the concat conditioning carries the input); ``pin_frame0=False`` runs their way.

k = 0 is a plain 2-frame run; k = steps never drops. A 2-frame layout (reasoning off) has nothing to drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .layout import keep_ends


@dataclass
class ReasoningResult:
    edited: torch.Tensor  # (B, C, 2, h, w): frame 0 the input's latent, frame 1 the edit (host outer space)
    trajectory: torch.Tensor  # (B, C, T, h, w) with reasoning (k > 0), else the 2 frames of ``edited``
    model_frames: list  # latent frames per run, in order (for logs and tests)


def check_reasoning_steps(k: int, steps: int) -> None:
    if not 0 <= int(k) <= int(steps):
        raise ValueError(f"reasoning steps must lie in 0..steps ({steps}); got {k}")


def restart_state(state_all: torch.Tensor, start: torch.Tensor, noise: torch.Tensor, pin_frame0: bool = True):
    """The (latent, noise) pair that restarts frames [0, -1] of ``state_all`` (a run's leftover-noise result):
    frame 0 re-expressed as the pinned input (its start latent, its original noise), the last frame as its state
    with no noise added. Unpinned (``pin_frame0`` False), frame 0 restarts from its state as the last frame does."""
    latent = keep_ends(state_all).clone()
    restart_noise = torch.zeros_like(latent)
    if pin_frame0:
        latent[:, :, :1] = start[:, :, :1]
        restart_noise[:, :, :1] = noise[:, :, :1]
    return latent, restart_noise


def pinned(latent: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """``latent`` with frame 0 set to the input's latent (frame 0 of ``start``)."""
    latent = latent.clone()
    latent[:, :, :1] = start[:, :, :1].to(latent)
    return latent


def temporal_reasoning(sample: Callable, start: torch.Tensor, noise_mask: torch.Tensor, make_noise: Callable,
                       sigmas: torch.Tensor, k: int, to_outer: Callable,
                       check: Optional[Callable] = None, pin_frame0: bool = True) -> ReasoningResult:
    """Run ChronoEdit's sampling.

    ``sample(latent, noise, noise_mask, sigmas, first_step, on_denoised, restart)`` runs the host's sampler and returns
    the sampled latent; the number of frames of ``latent`` says whether the caller must use the full or the kept
    ([0, -1]) conditioning; ``on_denoised(step, x0)`` must be called with every step's denoised estimate (the host's
    inner space); ``restart`` is True for the run after the drop. ``make_noise(latent)`` draws the initial noise as
    the host's KSampler would. ``to_outer`` maps the host's inner latent space to the outer one (process_latent_out).
    ``pin_frame0`` False is the authors' way: no noise mask (``sample`` gets None), frame 0 is denoised from noise with
    the other frames and left as the sampler returns it.
    """
    if not pin_frame0:
        noise_mask = None
    pin = pinned if pin_frame0 else (lambda latent, _start: latent)  # the authors' frame 0 is the sampler's
    steps = len(sigmas) - 1
    check_reasoning_steps(k, steps)
    frames = start.shape[2]
    if frames < 2:
        raise ValueError(f"a ChronoEdit latent has at least 2 frames; got {frames}")
    if frames == 2 or k == 0:
        latent = start if frames == 2 else keep_ends(start)
        mask = noise_mask if frames == 2 or noise_mask is None else keep_ends(noise_mask)
        out = pin(sample(latent, make_noise(latent), mask, sigmas, 0, None, False), start)
        return ReasoningResult(out, out, [2])
    noise = make_noise(start)
    last = {}

    def keep_last(step, x0):
        last["step"], last["x0"] = step, x0
        if check is not None:
            check()

    out_all = sample(start, noise, noise_mask, sigmas[:k + 1], 0, keep_last, False)
    if k == steps:
        out_all = pin(out_all, start)
        return ReasoningResult(keep_ends(out_all), out_all, [frames])
    latent, restart_noise = restart_state(out_all, start, noise, pin_frame0)
    kept_mask = None if noise_mask is None else keep_ends(noise_mask)
    out = pin(sample(latent, restart_noise, kept_mask, sigmas[k:], k, None, True), start)
    # The reasoning frames as the model last saw them (its denoised estimate at step k-1), the edit at the end.
    reasoning = to_outer(last["x0"]).to(out.device, out.dtype)
    trajectory = torch.cat([out[:, :, :1], reasoning[:, :, 1:-1], out[:, :, -1:]], dim=2)
    return ReasoningResult(out, trajectory, [frames, 2])
