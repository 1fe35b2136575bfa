"""A local folder of images as an image source: captions from a sidecar ``<name>.txt`` (first 2,000 characters) or
else the file name (``red_london_bus-2.jpg`` -> "red london bus 2"); an optional ``<name>.licence.txt`` /
``<name>.license.txt`` gives the licence. The folder is indexed once per content (file names, sizes and mtimes);
``search(query)`` ranks by how many query keywords the caption holds (ties by file name), so a search is a pure
function of the folder and the query."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .candidates import Candidate
from .keywords import keywords, words

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_FILES = 10000
CAPTION_CHARS = 2000
_INDEX_CACHE: dict = {}


@dataclass(frozen=True)
class Entry:
    name: str  # relative to the folder
    caption: str
    licence: str
    words: frozenset


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(CAPTION_CHARS).strip()
    except OSError:
        return ""


def _caption_from_name(name: str) -> str:
    stem = os.path.splitext(os.path.basename(name))[0]
    return re.sub(r"[_\-.]+", " ", stem).strip()


def _signature(folder: str) -> tuple:
    sig = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            sig.append((os.path.relpath(p, folder), st.st_size, st.st_mtime_ns))
            if len(sig) > MAX_FILES * 3:
                raise ValueError(f"more than {MAX_FILES} images in the library folder")
    return tuple(sig)


class ImageLibrary:
    def __init__(self, folder: str, recursive: bool = True, default_licence: str = "local file"):
        self.folder = os.path.realpath(folder)
        self.recursive = recursive
        self.default_licence = default_licence
        self.entries = self._index()

    def _index(self) -> list[Entry]:
        sig = _signature(self.folder)
        key = (self.folder, self.recursive, self.default_licence, sig)
        if key in _INDEX_CACHE:
            return _INDEX_CACHE[key]
        entries = []
        for rel, _, _ in sig:
            if not rel.lower().endswith(IMAGE_EXTS) or (not self.recursive and os.sep in rel):
                continue
            path = os.path.join(self.folder, rel)
            if not os.path.realpath(path).startswith(self.folder + os.sep):
                continue  # a link out of the folder
            stem = os.path.splitext(path)[0]
            caption = _read_small(stem + ".txt") or _caption_from_name(rel)
            licence = _read_small(stem + ".licence.txt") or _read_small(stem + ".license.txt") or \
                self.default_licence
            entries.append(Entry(rel, caption, licence.splitlines()[0][:200], frozenset(words(caption))))
        entries = entries[:MAX_FILES]
        _INDEX_CACHE.clear()  # one folder's index at a time is all a graph needs
        _INDEX_CACHE[key] = entries
        return entries

    def search(self, query: str, limit: int = 5) -> list[Candidate]:
        keys = keywords(query) or words(query)
        scored = []
        for e in self.entries:
            hits = sum(k in e.words for k in keys)
            if hits:
                scored.append((-hits, e.name, e))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [Candidate(f"file:{e.name}", e.caption, e.licence, f"library:{os.path.basename(self.folder)}")
                for _, _, e in scored[:limit]]

    def path(self, candidate: Candidate) -> str:
        rel = candidate.url[len("file:"):]
        path = os.path.realpath(os.path.join(self.folder, rel))
        if not path.startswith(self.folder + os.sep):
            raise ValueError("a library candidate outside the library folder")
        return path
