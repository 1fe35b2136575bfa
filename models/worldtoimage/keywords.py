"""Keywords of a prompt (what retrieval searches for and what keyword coverage counts): lower-case words of three or
more letters, stop words dropped, first occurrence order kept. Deterministic, no model."""
from __future__ import annotations

import re

STOP_WORDS = frozenset("""
a an the and or of in on at to for with without by from into onto over under near next above below behind beside
is are was were be been being this that these those it its his her their our your my as some any very much many
photo photograph picture image images render rendering style high quality detailed realistic 4k 8k hd
""".split())
WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def keywords(prompt: str, limit: int = 12) -> list[str]:
    out: list[str] = []
    for w in words(prompt):
        w = w.strip("'-")
        if len(w) >= 3 and w not in STOP_WORDS and not w.isdigit() and w not in out:
            out.append(w)
    return out[:limit]


def coverage(keys: list[str], text: str) -> float:
    """Share of ``keys`` found among the words of ``text`` (1.0 for no keys)."""
    if not keys:
        return 1.0
    have = set(words(text))
    return sum(k in have for k in keys) / len(keys)
