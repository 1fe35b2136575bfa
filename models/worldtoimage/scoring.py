"""Scores of a generated image and the formulas that combine them.

Terms (each may be missing, and the record says why):
- ``alignment``: semantic alignment of the image with the prompt, in [0, 1] (a VLM judge's 0-10 / 10);
- ``clip``: the cosine between a CLIP image embedding and the prompt's text embedding (raw, typically 0.15-0.35);
- ``coverage``: the share of the prompt's keywords the judge finds in the image, in [0, 1];
- ``aesthetic``: 0-10, only where a predictor is available.

Formulas:
- ``authors_gated`` (default): the World-To-Image authors' combination on a CLIP-scale semantic value ``s``:
  ``s + 0.5 * min(20 * s - 5.6, 0)`` (a steep penalty below s = 0.28) plus the aesthetic term ``0.01 * aesthetic``
  counted only when ``s > 0.28`` (the authors gate aesthetics on CLIP > 0.28; the 0.01 weight, putting a 0-10
  aesthetic on CLIP's scale, is ours). ``s`` is the CLIP cosine when CLIP scores; for a VLM judge it is
  ``0.04 * (alignment_0_10 + 10 * coverage) / 2`` (so a judge's 7/10 with full coverage sits at the 0.28 gate);
- ``mean``: the mean of the terms present, each on [0, 1] (aesthetic / 10).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

GATE = 0.28
AESTHETIC_WEIGHT = 0.01
JUDGE_TO_CLIP = 0.04  # per judge point (0-10)
FORMULAS = ("authors_gated", "mean")


@dataclass
class Score:
    judge: str  # "vlm", "clip" or "none"
    alignment: float | None = None
    clip: float | None = None
    coverage: float | None = None
    aesthetic: float | None = None
    combined: float | None = None
    missing_keywords: list = field(default_factory=list)
    reason: str = ""
    notes: list = field(default_factory=list)

    def record(self) -> dict:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float):
                out[k] = round(v, 6)  # the history is JSON: fixed precision, same text run to run
        return out


def authors_gated(s: float, aesthetic: float | None = None) -> float:
    value = s + 0.5 * min(20.0 * s - 5.6, 0.0)
    if aesthetic is not None and s > GATE:
        value += AESTHETIC_WEIGHT * aesthetic
    return value


def semantic_value(score: Score) -> float:
    """The CLIP-scale semantic value the gated formula reads."""
    if score.clip is not None:
        return score.clip
    a = (score.alignment or 0.0) * 10.0
    c = score.coverage if score.coverage is not None else score.alignment or 0.0
    return JUDGE_TO_CLIP * (a + 10.0 * c) / 2.0


def combine(score: Score, formula: str = "authors_gated") -> float:
    if formula == "authors_gated":
        value = authors_gated(semantic_value(score), score.aesthetic)
    elif formula == "mean":
        terms = [t for t in (score.alignment, score.clip, score.coverage) if t is not None]
        if score.aesthetic is not None:
            terms.append(score.aesthetic / 10.0)
        value = sum(terms) / len(terms) if terms else 0.0
    else:
        raise ValueError(f"unknown formula {formula!r}")
    if not math.isfinite(value):
        raise ValueError("the combined score is not finite")
    return value
