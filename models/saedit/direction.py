"""Edit directions in SAE code space, from (source, target) prompt pairs.

The authors' recipe, per pair: max-pool each prompt's codes over its real (non-padding) tokens; ratio =
target / (source + 1e-6); keep the features at or above the 99.5th percentile of the ratio; the pair's vector is the
target's pooled activations on that mask. Pairs are aggregated by the first right singular vector of the
(uncentred) stack, its sign aligned with the stack's mean (unit length, as the authors'); ``mean`` is the mean of the
pair vectors as the authors return it, not normalised (its length, the mean activation of the selected features, is
part of the edit's strength); ``mean_unit`` is that mean divided by its length (this pack's earlier ``mean``: the
same slider strength moves ``1 / |mean|`` times as far as the authors' mean would).
"""
from __future__ import annotations

import torch

METHODS = ("svd", "mean", "mean_unit")


def pair_vector(source_codes: torch.Tensor, target_codes: torch.Tensor, percentile: float = 99.5) -> torch.Tensor:
    """source_codes (Ts, m), target_codes (Tt, m): codes of the prompts' real tokens only."""
    if source_codes.ndim != 2 or target_codes.ndim != 2 or source_codes.shape[1] != target_codes.shape[1]:
        raise ValueError(f"codes must be (tokens, dict) with the same dictionary; got {tuple(source_codes.shape)} "
                         f"and {tuple(target_codes.shape)}")
    if source_codes.shape[0] == 0 or target_codes.shape[0] == 0:
        raise ValueError("a prompt of the pair has no tokens")
    src = source_codes.max(0).values
    tgt = target_codes.max(0).values
    ratio = tgt / (src + 1e-6)
    cutoff = torch.quantile(ratio.float(), percentile / 100.0)
    return tgt * ((ratio >= cutoff) & (tgt > 0))


def aggregate(vectors: torch.Tensor, method: str = "svd") -> torch.Tensor:
    """vectors (P, m) -> a direction (m,), zero outside the features any pair selected: unit length for ``svd`` and
    ``mean_unit``, the plain mean for ``mean``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError("need at least one pair")
    support = (vectors != 0).any(0)
    if not support.any():
        raise ValueError("no pair selected any feature: the target prompts add nothing the SAE can see")
    mean = vectors.mean(0)
    if method == "mean":
        return mean * support
    if method == "mean_unit":
        direction = mean
    else:
        _, _, vh = torch.linalg.svd(vectors.double(), full_matrices=False)
        direction = vh[0].to(vectors.dtype)
        if torch.dot(direction, mean) < 0:
            direction = -direction
    direction = direction * support
    return direction / direction.norm().clamp_min(1e-12)


def direction_from_pairs(pair_codes: list[tuple[torch.Tensor, torch.Tensor]], method: str = "svd",
                         percentile: float = 99.5) -> dict:
    """Returns direction (m,), its feature ids (sorted by weight), their weights, and each pair's vector."""
    if not pair_codes:
        raise ValueError("the pair list is empty: give at least one 'source | target' pair")
    vectors = torch.stack([pair_vector(s, t, percentile) for s, t in pair_codes])
    direction = aggregate(vectors, method)
    ids = torch.nonzero(direction).flatten()
    order = direction[ids].abs().argsort(descending=True)
    return {"direction": direction, "feature_ids": ids[order], "weights": direction[ids[order]],
            "pair_vectors": vectors}
