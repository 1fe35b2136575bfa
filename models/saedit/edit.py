"""The token-local edit: only the decoded delta is added, only at the chosen token positions.

Adding ``s * direction`` to a token's sparse code and decoding changes the embedding by exactly
``s * (direction @ W_dec)`` (decoding is affine), so the edit never replaces a token by its SAE reconstruction:
every other token, and the chosen ones at s = 0, stay bit-exact.
"""
from __future__ import annotations

import torch

from .sae import SparseAutoencoder


def decoded_delta(sae: SparseAutoencoder, direction: torch.Tensor) -> torch.Tensor:
    if direction.shape != (sae.config.dict_size,):
        raise ValueError(f"direction has {tuple(direction.shape)} entries; this SAE's dictionary has "
                         f"{sae.config.dict_size}")
    with torch.no_grad():
        return direction.to(sae.W_dec) @ sae.W_dec


def apply_token_edit(embeddings: torch.Tensor, positions: list[int], delta: torch.Tensor,
                     strength: float) -> torch.Tensor:
    """embeddings (B, T, D): a copy with ``strength * delta`` added at ``positions`` (the input is not modified)."""
    if embeddings.shape[-1] != delta.shape[-1]:
        raise ValueError(f"the SAE is {delta.shape[-1]} wide but the embeddings are {embeddings.shape[-1]} wide")
    out = embeddings.clone()
    if strength == 0 or not positions:
        return out
    idx = torch.as_tensor(sorted(set(positions)), dtype=torch.long, device=out.device)
    if idx.min() < 0 or idx.max() >= out.shape[1]:
        raise ValueError(f"token positions {positions} are outside the {out.shape[1]} tokens")
    out[:, idx] = out[:, idx] + strength * delta.to(out)
    return out
