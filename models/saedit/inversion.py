"""Rectified-flow inversion by exact reversal of the Euler sampler, so a real photo can be edited.

Sampling runs Euler from noise (sigma_0) to the image (sigma_N = 0): x_{i+1} = x_i + (s_{i+1} - s_i) v(x_i, s_i),
with v = (x - denoised) / s. Inverting step i means solving that equation for x_i given x_{i+1}; a few fixed-point
iterations x_i <- x_{i+1} - (s_{i+1} - s_i) v(x_i, s_i) do it. Every model call is at a sigma > 0, and sampling
back with Euler on the same sigmas and conditioning reproduces the image up to the fixed-point residual.
"""
from __future__ import annotations

from typing import Callable

import torch


def invert_euler(denoise: Callable[[torch.Tensor, float], torch.Tensor], x0: torch.Tensor, sigmas: torch.Tensor,
                 iterations: int = 3, on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``denoise(x, sigma)`` returns the model's clean prediction; ``sigmas`` descend to 0, as a sampler's do."""
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2 or sigmas[-1] != 0.0 or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError("sigmas must strictly descend and end at 0 (a full-denoise schedule)")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1; got {iterations}")
    x = x0
    total = len(sigmas) - 1
    for done, i in enumerate(reversed(range(total)), start=1):
        s, s_next = sigmas[i], sigmas[i + 1]
        target = x
        guess = target
        for _ in range(iterations):
            velocity = (guess - denoise(guess, s)) / s
            guess = target - (s_next - s) * velocity
        x = guess
        if on_step:
            on_step(done, total)
    return x


class InversionSampler:
    """A sampler object for the host's guider (``sample_custom``): the Euler reversal above, with the guider's own
    denoiser, so conditioning, CFG with the negative, and model patches apply exactly as when sampling back."""

    def __init__(self, iterations: int, on_step=None, should_stop=None):
        self.iterations, self.on_step, self.should_stop = iterations, on_step, should_stop

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        ones = latent_image.new_ones((latent_image.shape[0],))

        def denoise(x, sigma):
            if self.should_stop is not None:
                self.should_stop()
            return model_wrap(x, ones * sigma, **extra_args)

        return invert_euler(denoise, latent_image, sigmas, self.iterations, on_step=self.on_step)


class InvertedNoise:
    """A NOISE source (for SamplerCustomAdvanced) that returns the inverted latent; ``mismatch(shape)`` makes the
    error raised for a latent of another shape."""

    def __init__(self, noise: torch.Tensor, mismatch):
        self.noise, self.mismatch = noise, mismatch
        self.seed = 0

    def generate_noise(self, input_latent):
        shape = tuple(input_latent["samples"].shape)
        if shape != tuple(self.noise.shape):
            raise self.mismatch(shape)
        return self.noise.clone()
