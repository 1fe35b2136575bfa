"""A generated prompt corpus and attribute pairs, for training and probing SAEs when no corpus is given.

Templates x subjects x attributes x scenes, drawn with a seeded generator: a few thousand varied prompts in seconds,
reproducible, and with known (source, target) pairs for an attribute (e.g. "a man in a park" ->
"a smiling man in a park").
"""
from __future__ import annotations

import random

SUBJECTS = ["man", "woman", "boy", "girl", "child", "old man", "old woman", "dog", "cat", "horse", "bird", "robot",
            "knight", "chef", "doctor", "farmer", "dancer", "soldier", "teacher", "musician", "student", "baby",
            "fox", "lion", "bear", "owl", "wolf", "queen", "king", "pilot"]
SCENES = ["in a park", "on a beach", "in the snow", "in a kitchen", "in a library", "on a mountain", "in a forest",
          "on a city street", "at night", "in the rain", "in a desert", "on a boat", "in a garden", "in an office",
          "at a market", "under a bridge", "in a field of flowers", "by a lake", "in a castle", "on a rooftop"]
STYLES = ["a photo of", "a painting of", "a portrait of", "a drawing of", "a close-up of", "an illustration of",
          "a watercolor of", "a picture of", ""]
ATTRIBUTES = {
    "smiling": "smiling", "sad": "sad", "angry": "angry", "old": "old", "young": "young", "wet": "wet",
    "tall": "tall", "tiny": "tiny", "sleeping": "sleeping", "surprised": "surprised", "red": "red",
    "golden": "golden", "wooden": "wooden", "glowing": "glowing", "bearded": "bearded", "happy": "happy",
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt(style: str, subject: str, scene: str, attribute: str | None = None) -> str:
    noun = f"{attribute} {subject}" if attribute else subject
    head = f"{_article(noun)} {noun}"
    return " ".join(p for p in (style, head, scene) if p)


def corpus(n: int, seed: int = 0, attribute_rate: float = 0.5) -> list[str]:
    rng = random.Random(seed)
    attrs = list(ATTRIBUTES)
    out = []
    for _ in range(n):
        attr = rng.choice(attrs) if rng.random() < attribute_rate else None
        out.append(prompt(rng.choice(STYLES), rng.choice(SUBJECTS), rng.choice(SCENES), attr))
    return out


def attribute_pairs(attribute: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(source, target) pairs that differ only by ``attribute`` before the subject."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTES)}; got {attribute!r}")
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < n:
        style, subject, scene = rng.choice(STYLES), rng.choice(SUBJECTS), rng.choice(SCENES)
        if (style, subject, scene) in seen:
            continue
        seen.add((style, subject, scene))
        pairs.append((prompt(style, subject, scene), prompt(style, subject, scene, ATTRIBUTES[attribute])))
    return pairs
