"""The web panels' data: what a node's last runs produced for the page (feature tables, agent histories, attention
maps, the face a blendshape set was measured from), held in memory and served by the pack's panel route.

Nothing here reads or writes files: a node publishes a small JSON-able dict (thumbnails as PNG data URLs) and gets an
opaque id back, which it sends to the page in its ``ui`` output; the page asks the route for that id. Old entries are
dropped (least recently published first) so the store stays small.
"""
from __future__ import annotations

import base64
import io
import json
import re
import secrets
import threading
from collections import OrderedDict

import numpy as np

KINDS = ("sae_features", "agent_history", "attention_maps", "face")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ENTRIES = 64  # panels kept (per server); the oldest goes first
MAX_ENTRY_BYTES = 4_000_000  # one panel's JSON; a larger one is cut down by its publisher or refused
THUMBNAIL_SIDE = 160  # px, the longer side of a panel thumbnail
UI_KEY = "editlab_panel"  # the key of a node's ui output that names its panel


class PanelError(ValueError):
    """A request the panel route refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not ID_PATTERN.match(kind) or kind not in KINDS:
        raise PanelError(404, f"no such panel kind; known: {', '.join(KINDS)}")
    return kind


def check_id(value) -> str:
    """A panel id as the route accepts it: 1 to 64 of [A-Za-z0-9_-]; anything path-like or longer is a 400."""
    if not isinstance(value, str) or not value:
        raise PanelError(400, "the query needs an id (1 to 64 letters, digits, '_' or '-')")
    if not ID_PATTERN.match(value):
        raise PanelError(400, "an id is 1 to 64 letters, digits, '_' or '-' (no paths, dots or slashes)")
    return value


class PanelStore:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_entry_bytes: int = MAX_ENTRY_BYTES):
        self.max_entries, self.max_entry_bytes = max_entries, max_entry_bytes
        self._entries: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> (kind, JSON text)
        self._lock = threading.Lock()

    def publish(self, kind: str, data: dict) -> str:
        """Keep ``data`` (JSON-able) for the page; returns its id."""
        check_kind(kind)
        text = json.dumps(data, allow_nan=False)
        if len(text) > self.max_entry_bytes:
            raise ValueError(f"a {kind} panel of {len(text)} bytes (at most {self.max_entry_bytes})")
        panel_id = secrets.token_urlsafe(12)  # 16 characters of [A-Za-z0-9_-]
        with self._lock:
            self._entries[panel_id] = (kind, text)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return panel_id

    def get(self, kind: str, panel_id: str) -> str:
        """The JSON text of a published panel; PanelError 400/404 for a bad or unknown kind or id."""
        check_kind(kind)
        check_id(panel_id)
        with self._lock:
            entry = self._entries.get(panel_id)
        if entry is None or entry[0] != kind:
            raise PanelError(404, f"no {kind} panel with this id (it may have been dropped: the server keeps the "
                                  f"last {self.max_entries})")
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)


STORE = PanelStore()


def ui_for(kind: str, data: dict, store: PanelStore | None = None) -> dict:
    """Publish ``data`` and return the ``ui`` dict a node adds to its output so the page finds the panel."""
    panel_id = (store if store is not None else STORE).publish(kind, data)
    return {UI_KEY: [{"kind": kind, "id": panel_id}]}


def thumbnail(image, side: int = THUMBNAIL_SIDE) -> str:
    """A PNG data URL of one image: an (H, W, 3|1) or (H, W) array or tensor in [0, 1], longer side at most ``side``."""
    from PIL import Image

    array = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image, np.float32)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"a thumbnail needs an (H, W), (H, W, 1) or (H, W, 3) image; got {array.shape}")
    pixels = (np.nan_to_num(array, nan=0.0).clip(0, 1) * 255).round().astype(np.uint8)
    pil = Image.fromarray(pixels)
    pil.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- shaping a node's data for its panel ---------------------------------------------------------------------------
MAX_DIRECTION_FEATURES = 64  # features listed for a direction (strongest weights first)
MAX_PANEL_TOKENS = 128  # token rows in a feature view


def _plain(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def direction_ids(feature_ids=None, direction=None) -> list[int]:
    """A direction's feature ids: its own list when it has one, else the non-zero entries of its vector (a
    direction built in code may carry only the vector), else none."""
    if feature_ids is not None:
        return [int(i) for i in _plain(feature_ids).reshape(-1)]
    if direction is not None:
        return [int(i) for i in np.flatnonzero(_plain(direction).reshape(-1))]
    return []


def direction_features(name: str, feature_ids=None, weights=None, direction=None,
                       limit: int = MAX_DIRECTION_FEATURES) -> dict:
    """A direction's features for the feature view: id, weight and label (the direction's name), strongest first.

    Only ``name`` is needed: without feature ids they come from the vector (``direction_ids``), without weights
    they are read from the vector at those ids, and a weight nothing gives is None (listed after the others)."""
    ids = direction_ids(feature_ids, direction)
    if weights is not None:
        ws = [float(w) for w in _plain(weights).astype(np.float64).reshape(-1)]
    elif direction is not None:
        vector = _plain(direction).astype(np.float64).reshape(-1)
        ws = [float(vector[i]) if 0 <= i < vector.shape[0] else None for i in ids]
    else:
        ws = [None] * len(ids)
    if len(ids) != len(ws):
        raise ValueError(f"{len(ids)} feature ids but {len(ws)} weights")
    order = sorted(range(len(ids)), key=lambda k: -abs(ws[k]) if ws[k] is not None else 1.0)[:limit]
    return {"name": name, "count": len(ids),
            "features": [{"id": ids[k], "weight": None if ws[k] is None else round(ws[k], 5), "labels": [name]}
                         for k in order]}


def feature_view(table: dict, direction: dict | None = None, **extra) -> dict:
    """The SAE feature view: per-token activations (``models.saedit.features.feature_table``'s rows, at most
    MAX_PANEL_TOKENS) and, when given, the direction's features; the columns are the features any row lists. A
    feature without labels (a table or direction made elsewhere) gets an empty list, so the page need not check."""
    tokens = list(table.get("tokens", []))
    rows = [{**row, "features": _labelled(row.get("features"))} for row in tokens[:MAX_PANEL_TOKENS]]
    columns: list[int] = []
    for row in rows:
        for f in row["features"]:
            if f["id"] not in columns:
                columns.append(f["id"])
    if direction:
        direction = {**direction, "features": _labelled(direction.get("features"))}
        direction.setdefault("count", len(direction["features"]))
        columns = [f["id"] for f in direction["features"] if f["id"] not in columns] + columns
    return {**extra, "tokens": rows, "columns": columns[:96], "direction": direction,
            "truncated": len(tokens) > len(rows)}


def _labelled(features) -> list[dict]:
    """Features as the page reads them: each with a ``labels`` list (empty when its source gave none)."""
    return [{**f, "labels": list(f.get("labels") or [])} for f in features or []]


MAX_PANEL_TEXT = 600  # characters of one prompt, title or note shown in a panel
REFERENCE_FIELDS = ("title", "source", "licence", "creator", "url", "page", "query")


def _text(value, limit: int = MAX_PANEL_TEXT):
    return value if not isinstance(value, str) else value[:limit]


def agent_history(history: dict, images: list) -> dict:
    """World-To-Image's run for its panel: per iteration its thumbnail (``images[i]``: (1, H, W, 3) or (H, W, 3)),
    prompt, references (title, source, licence, link) and scores; which was best and why the loop stopped."""
    steps = []
    for step, image in zip(history.get("iterations", []), images):
        image = image[0] if getattr(image, "ndim", 3) == 4 else image
        refs = [{k: _text(r[k]) for k in REFERENCE_FIELDS if r.get(k) not in (None, "")}
                for r in step.get("references", [])[:8]]
        scores = step.get("scores") or {}
        steps.append({"index": step.get("index"), "prompt": _text(step.get("prompt", "")),
                      "thumbnail": thumbnail(image), "references": refs,
                      "scores": {k: scores[k] for k in ("combined", "alignment", "clip", "coverage", "aesthetic",
                                                        "judge") if scores.get(k) is not None},
                      "missing_keywords": [_text(k, 80) for k in (scores.get("missing_keywords") or [])[:12]],
                      "queries": [_text(q, 200) for q in step.get("queries", [])[:6]],
                      "notes": [_text(n) for n in step.get("notes", [])[:6]]})
    return {"prompt": _text(history.get("prompt", "")), "best": history.get("best"),
            "best_score": history.get("best_score"), "stopped": history.get("stopped"),
            "skipped": [_text(s) for s in history.get("skipped", [])[:6]], "iterations": steps}


def attention_maps(words: list[str], heatmaps) -> dict:
    """Attention Maps' panel: one thumbnail per word (``heatmaps``: (N, H, W, 3) in [0, 1], one per word)."""
    if len(words) != len(heatmaps):
        raise ValueError(f"{len(words)} words but {len(heatmaps)} maps")
    return {"maps": [{"word": _text(w, 80), "image": thumbnail(m)} for w, m in zip(words, heatmaps)]}
