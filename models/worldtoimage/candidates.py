"""What every image source returns: a candidate with where it came from and under which licence."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Candidate:
    url: str  # http(s) URL of the image, or "file:<path relative to the library>" for a local library
    title: str
    licence: str
    source: str  # "openverse", "wikimedia", "searxng", "custom:<host>", "library:<folder>"
    page: str = ""  # the landing page (attribution), when the source gives one
    creator: str = ""

    def record(self) -> dict:
        return asdict(self)
