"""Which models reference tokens can join.

A Flux-style DiT cuts its input latent into patches and reads each patch as one token of ``channels x patch²``
numbers. Reference latents (Flux Kontext style) are cut the same way and appended to the image tokens, so they fit
only a model whose input is the latent alone. Flux Fill (and Flux Depth / Canny) read the latent together with the
image conditioning the host concatenates to it (Fill: the masked image and the mask, 16 + 16 + 64 channels per latent
pixel), so a 16-channel reference cannot become one of their tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


class ReferenceTokensError(ValueError):
    """Reference tokens given to a model whose image tokens they cannot join."""


def check_reference_channels(token_width: int, patch_size: int, references: Sequence[torch.Tensor]) -> None:
    """Refuse, naming both sides, references whose patches are not ``token_width`` numbers wide."""
    for ref in references:
        width = ref.shape[1] * patch_size * patch_size
        if width != token_width:
            per_pixel = token_width // (patch_size * patch_size)
            raise ReferenceTokensError(
                f"EditLab Reference Tokens: this model's image tokens carry {per_pixel} channels per latent pixel "
                f"({token_width} per {patch_size}x{patch_size} patch) and a reference latent carries "
                f"{ref.shape[1]}, so the references cannot join its image tokens. Flux Fill (and Flux Depth / Canny) "
                "read the image conditioning InpaintModelConditioning (or InstructPixToPixConditioning) adds to "
                "the latent: with Flux Fill put the product beside the person with Try-On Stitch instead; "
                "Reference Tokens is for models that take reference latents (Flux Kontext).")
