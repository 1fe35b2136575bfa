"""VIEScore for image editing (as TBStar-Edit evaluates): a vision LLM rates an edit in two separate requests.

- Semantic consistency (SC), from the source image, the edited image and the instruction: two ratings, 0-10, how
  completely the instruction was carried out ("success") and how well everything the instruction did not ask to
  change was left alone ("over-editing", 10 = nothing else changed); SC = the lower of the two.
- Perceptual quality (PQ), from the edited image alone: two ratings, 0-10, how natural it looks ("naturalness") and
  how free of artifacts it is ("artifacts", 10 = none); PQ = the lower of the two.
- overall = sqrt(SC * PQ).

Taking the minimum of the sub-ratings and the geometric mean follows the VIEScore paper's protocol; the request text
below is this project's own. Each answer must be JSON ``{"scores": [a, b], "reasoning": "..."}`` with numbers in
0..10; anything else is retried by the client and then raised as ``LLMError``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .client import LLMClient, image_part

SYSTEM = ("You are a careful evaluator of edited images. You are given images and an instruction. Rate strictly "
          "from what you see and reply with one JSON object and nothing else.")
SC_TEXT = (
    "Image 1 is the source image. Image 2 is the result of editing it with this instruction:\n"
    "\"{instruction}\"\n\n"
    "Give two ratings from 0 to 10:\n"
    "1. success: how completely image 2 carries out the instruction (0 = not at all, 10 = fully).\n"
    "2. over-editing: how well image 2 keeps everything the instruction did not ask to change (0 = a different image, "
    "10 = only the requested change).\n"
    'Answer as {{"scores": [<success>, <over-editing>], "reasoning": "<two short sentences>"}}.')
PQ_TEXT = (
    "Rate this image, which was produced by an AI editor, from 0 to 10 twice:\n"
    "1. naturalness: does it look like a real, coherent photograph or artwork (lighting, shadows, perspective)?\n"
    "2. artifacts: how free is it of distortions, smears, broken shapes, wrong hands or text glitches "
    "(10 = no artifacts)?\n"
    'Answer as {{"scores": [<naturalness>, <artifacts>], "reasoning": "<two short sentences>"}}.')
MAX_INSTRUCTION_CHARS = 2000


@dataclass
class VIEScore:
    semantic_consistency: float
    perceptual_quality: float
    overall: float
    sc_scores: list
    pq_scores: list
    sc_reasoning: str
    pq_reasoning: str

    def record(self) -> dict:
        return asdict(self)


def overall(sc: float, pq: float) -> float:
    return math.sqrt(sc * pq)


def _check(obj):
    scores = obj["scores"]
    if not isinstance(scores, list) or len(scores) != 2:
        raise ValueError("'scores' must be a list of two numbers")
    out = []
    for s in scores:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 10:
            raise ValueError(f"score {s!r} is not a number from 0 to 10")
        out.append(float(s))
    return out, str(obj.get("reasoning", ""))[:1000]


def viescore(client: LLMClient, instruction: str, source, edited) -> VIEScore:
    """``source`` and ``edited`` are PIL images."""
    instruction = instruction.strip()[:MAX_INSTRUCTION_CHARS]
    sc, sc_why = client.chat_json([{"role": "system", "content": SYSTEM}, {"role": "user", "content": [
        {"type": "text", "text": SC_TEXT.format(instruction=instruction)}, image_part(source), image_part(edited)]}],
        _check)
    pq, pq_why = client.chat_json([{"role": "system", "content": SYSTEM}, {"role": "user", "content": [
        {"type": "text", "text": PQ_TEXT}, image_part(edited)]}], _check)
    sc_value, pq_value = min(sc), min(pq)
    return VIEScore(sc_value, pq_value, overall(sc_value, pq_value), sc, pq, sc_why, pq_why)
