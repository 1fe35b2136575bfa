"""Scores of a generated image and the formulas that combine them.

Terms (each may be missing, and the record says why):
- ``alignment``: semantic alignment of the image with the prompt, in [0, 1] (a VLM judge's 0-10 / 10);
- ``clip``: the cosine between a CLIP image embedding and the prompt's projected text embedding (raw, typically
  0.15-0.35; the authors' scorer reports it x100 and divides by 100 again before combining);
- ``coverage``: the share of the prompt's keywords the judge finds in the image, in [0, 1];
- ``aesthetic``: 0-10, only where a rating is available (here: the VLM judge's own rating; the authors use the LAION
  aesthetic predictor, which is not shipped);
- ``hpsv2``: a human-preference score, only where one is given (no HPSv2 model is shipped; the authors' own
  configuration does not enable it either).

Formulas:
- ``authors_gated`` (default): the World-To-Image authors' combination (their scorer's CLIP + aesthetic branch)
  ``hpsv2 + 0.5 * min(20 * s - 5.6, 0) + 0.25 * aesthetic * [s > 0.28]``; a missing term counts 0. ``s`` is the CLIP
  cosine when CLIP scores; a VLM judge has no CLIP cosine, so its ratings stand in for it, put on CLIP's scale as
  ``s = 0.04 * (alignment_0_10 + 10 * coverage) / 2`` (a judge's 7/10 with full coverage sits at the 0.28 gate).
  Without an aesthetic rating and HPSv2 the value is the CLIP penalty alone: 0 for every s >= 0.28 (no ranking
  among images above the gate, so the first of them is kept);
- ``linear_gated``: this pack's earlier formula, ``s + 0.5 * min(20 * s - 5.6, 0) + 0.01 * aesthetic * [s > 0.28]``
  (the semantic value itself counts, so images above the gate are still ranked);
- ``mean``: the mean of the terms present, each on [0, 1] (aesthetic / 10).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

GATE = 0.28  # the authors' clip_gate
PENALTY_WEIGHT = 0.5  # the authors' beta
PENALTY_SCALE, PENALTY_OFFSET = 20.0, 5.6  # the authors' clip_penalty_scale / clip_penalty_offset
AUTHORS_AESTHETIC_WEIGHT = 0.25  # the authors' gamma0
LINEAR_AESTHETIC_WEIGHT = 0.01  # linear_gated only (ours)
JUDGE_TO_CLIP = 0.04  # per judge point (0-10)
FORMULAS = ("authors_gated", "linear_gated", "mean")


@dataclass
class Score:
    judge: str  # "vlm", "clip" or "none"
    alignment: float | None = None
    clip: float | None = None
    coverage: float | None = None
    aesthetic: float | None = None
    hpsv2: float | None = None
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


def clip_penalty(s: float) -> float:
    return PENALTY_WEIGHT * min(PENALTY_SCALE * s - PENALTY_OFFSET, 0.0)


def authors_combined(s: float, aesthetic: float | None = None, hpsv2: float | None = None) -> float:
    """The authors' combination; ``s`` a CLIP cosine (not x100), a missing term counting 0."""
    value = (hpsv2 or 0.0) + clip_penalty(s)
    if aesthetic is not None and s > GATE:
        value += AUTHORS_AESTHETIC_WEIGHT * aesthetic
    return value


def linear_gated(s: float, aesthetic: float | None = None) -> float:
    value = s + clip_penalty(s)
    if aesthetic is not None and s > GATE:
        value += LINEAR_AESTHETIC_WEIGHT * aesthetic
    return value


def semantic_value(score: Score) -> float:
    """The CLIP-scale semantic value the gated formulas read."""
    if score.clip is not None:
        return score.clip
    a = (score.alignment or 0.0) * 10.0
    c = score.coverage if score.coverage is not None else score.alignment or 0.0
    return JUDGE_TO_CLIP * (a + 10.0 * c) / 2.0


def substitutions(score: Score, formula: str) -> list[str]:
    """What stands in for the authors' terms in ``authors_gated`` (recorded in the score's notes)."""
    if formula != "authors_gated":
        return []
    out = []
    if score.clip is None:
        out.append("authors_gated: no CLIP cosine; s = 0.04 * (judge alignment 0-10 + 10 * keyword coverage) / 2 "
                   "stands in for it")
    if score.aesthetic is None:
        out.append("authors_gated: no aesthetic rating, the 0.25 * aesthetic term counts 0")
    elif score.judge == "vlm":
        out.append("authors_gated: the VLM's 0-10 aesthetic rating stands in for the LAION aesthetic predictor")
    if score.hpsv2 is None:
        out.append("authors_gated: no HPSv2 score, the term counts 0 (the authors' shipped configuration does not "
                   "enable it either)")
    return out


def combine(score: Score, formula: str = "authors_gated") -> float:
    if formula == "authors_gated":
        value = authors_combined(semantic_value(score), score.aesthetic, score.hpsv2)
    elif formula == "linear_gated":
        value = linear_gated(semantic_value(score), score.aesthetic)
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
