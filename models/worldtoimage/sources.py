"""Image sources for the agent: the local library and four web services, all with one protocol:
``search(query, limit) -> [Candidate]`` and ``load(candidate) -> RGB PIL image``; a failure raises ``SourceError``
whose message says why (the agent records it and goes on).

Web services and the fields read from their documented JSON answers:
- Openverse ``GET {endpoint}?q=&page_size=`` -> ``results[]``: ``url`` (the file), ``title``, ``license`` +
  ``license_version``, ``foreign_landing_url``, ``creator``;
- Wikimedia Commons (MediaWiki API)
  ``action=query&generator=search&gsrnamespace=6&prop=imageinfo&iiprop=url|extmetadata``
  -> ``query.pages{}``: ``title``, ``index`` (rank), ``imageinfo[0].url`` / ``thumburl``, ``descriptionurl``,
  ``extmetadata.LicenseShortName.value``, ``extmetadata.Artist.value``;
- SearxNG ``GET {endpoint}/search?q=&format=json&categories=images`` -> ``results[]``: ``img_src``, ``title``,
  ``url`` (the page), ``engine``; SearxNG gives no licence (recorded as "unknown (via SearxNG)");
- a custom JSON endpoint: a URL template with ``{query}`` (URL-encoded) and optionally ``{count}``, answering a list
  or an object holding ``results`` / ``items`` / ``images``; each item's image URL from ``url`` / ``image`` /
  ``img_src`` / ``image_url``, title from ``title`` / ``caption`` / ``name``, licence from ``license`` / ``licence``.

Every request and image download goes through ``models.fetch`` (the guarded client). ``allow_loopback`` lets
loopback through for the search endpoint's own origin (scheme, host and port) only: an image URL or a redirect to
any other port on loopback (``http://127.0.0.1:8188/api/view?...``, ComfyUI itself) is refused like a private
address. An answer is read with type checks on everything: a list where an object is expected, an item that is no
object, a field of the wrong type is a refusal (the whole answer) or a skipped item, never an exception; JSON nested
deeper than 64 levels is refused before it is decoded. Search answers and images are
cached on disk (``cache_dir``): a search is keyed by service, endpoint, query and count, an image by its URL, each
with a JSON record of the source URL and licence; a cached answer is reused as is, so a rerun is reproducible
offline. The cache never holds anything secret (no source takes a key).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from urllib.parse import quote, urlencode, urlsplit

from ..fetch import FetchLimits, FetchRefused, decode_image, fetch_image, fetch_json, origin
from .candidates import Candidate
from .library import ImageLibrary

SERVICES = ("openverse", "wikimedia_commons", "searxng", "custom_json")
DEFAULT_ENDPOINTS = {"openverse": "https://api.openverse.org/v1/images/",
                     "wikimedia_commons": "https://commons.wikimedia.org/w/api.php",
                     "searxng": "http://127.0.0.1:8888",
                     "custom_json": "http://127.0.0.1:8000/search?q={query}&n={count}"}
MAX_QUERY_CHARS = 200


class SourceError(Exception):
    pass


def search_url(service: str, endpoint: str, query: str, count: int) -> str:
    query = query[:MAX_QUERY_CHARS]
    if service == "openverse":
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode({"q": query, "page_size": count})
    if service == "wikimedia_commons":
        params = {"action": "query", "format": "json", "generator": "search", "gsrsearch": query,
                  "gsrnamespace": 6, "gsrlimit": count, "prop": "imageinfo", "iiprop": "url|extmetadata",
                  "iiurlwidth": 1024}
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
    if service == "searxng":
        return endpoint.rstrip("/") + "/search?" + urlencode({"q": query, "format": "json", "categories": "images"})
    if service == "custom_json":
        if "{query}" not in endpoint:
            raise SourceError("a custom endpoint template must hold {query}")
        return endpoint.replace("{query}", quote(query, safe="")).replace("{count}", str(count))
    raise SourceError(f"unknown service {service!r}")


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def _obj(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _first(item: dict, *keys) -> str:
    for k in keys:
        v = _text(item.get(k))
        if v:
            return v
    return ""


def _absolute(url: str) -> str:
    """Protocol-relative image URLs (``//upload.example.org/a.jpg``, as some SearxNG engines give) as https."""
    return "https:" + url if url.startswith("//") else url


def _rank(page: dict) -> float:
    value = page.get("index")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("inf")


def _expect_object(service: str, data, field: str | None = None) -> dict:
    if not isinstance(data, dict):
        raise SourceError(f"{service}: the answer is a JSON {type(data).__name__} where an object was expected")
    if field is not None and field in data and not isinstance(data[field], (dict, list)):
        raise SourceError(f"{service}: '{field}' in the answer is a {type(data[field]).__name__}")
    return data


def parse_results(service: str, data, count: int, endpoint: str = "") -> list[Candidate]:
    """Candidates from a search answer; SourceError when the answer's shape is not the service's (a list for an
    object, ``results`` that is no list); items that are not objects or lack an image URL are skipped."""
    out = []
    if service == "openverse":
        for r in _list(_expect_object(service, data, "results").get("results")):
            if not isinstance(r, dict) or not _text(r.get("url")):
                continue
            lic = " ".join(x for x in (_text(r.get("license")).upper(), _text(r.get("license_version"))) if x)
            out.append(Candidate(_text(r.get("url")), _text(r.get("title")), lic or "unknown", "openverse",
                                 _text(r.get("foreign_landing_url")), _text(r.get("creator"))))
    elif service == "wikimedia_commons":
        pages = _obj(_obj(_expect_object(service, data, "query").get("query")).get("pages"))
        for p in sorted((p for p in pages.values() if isinstance(p, dict)), key=_rank):
            info = _obj((_list(p.get("imageinfo")) or [{}])[0])
            url = _first(info, "thumburl", "url")
            if not url:
                continue
            meta = _obj(info.get("extmetadata"))
            lic = _text(_obj(meta.get("LicenseShortName")).get("value")) or "unknown"
            artist = _text(_obj(meta.get("Artist")).get("value"))
            out.append(Candidate(url, _text(p.get("title")), lic, "wikimedia_commons",
                                 _text(info.get("descriptionurl")), artist[:200]))
    elif service == "searxng":
        for r in _list(_expect_object(service, data, "results").get("results")):
            if isinstance(r, dict) and _text(r.get("img_src")):
                out.append(Candidate(_absolute(_text(r.get("img_src"))), _text(r.get("title")),
                                     "unknown (via SearxNG)", f"searxng:{_text(r.get('engine')) or '?'}",
                                     _text(r.get("url"))))
    elif service == "custom_json":
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict):
            items = next((data[k] for k in ("results", "items", "images") if isinstance(data.get(k), list)), None)
            if items is None:
                raise SourceError("custom_json: the answer holds no list under results, items or images")
        else:
            raise SourceError(f"custom_json: the answer is a JSON {type(data).__name__} where a list or an object "
                              "was expected")
        host = urlsplit(endpoint.replace("{query}", "q").replace("{count}", "1")).hostname or "?"
        for r in items:
            if isinstance(r, dict):
                url = _first(r, "url", "image", "img_src", "image_url")
                if url:
                    out.append(Candidate(_absolute(url), _first(r, "title", "caption", "name"),
                                         _first(r, "license", "licence") or "unknown", f"custom:{host}",
                                         _first(r, "page", "landing", "foreign_landing_url")))
    else:
        raise SourceError(f"unknown service {service!r}")
    return out[:count]


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


class WebImageSource:
    """``allow_loopback``: the search endpoint may be on loopback; only its own origin, never another."""

    def __init__(self, service: str, endpoint: str, limits: FetchLimits, cache_dir: str | None,
                 use_cache: bool = True, allow_loopback: bool = False):
        if service not in SERVICES:
            raise SourceError(f"unknown service {service!r}")
        self.service, self.endpoint = service, (endpoint or DEFAULT_ENDPOINTS[service]).strip()
        self.cache_dir, self.use_cache = cache_dir, use_cache and bool(cache_dir)
        probe = search_url(service, self.endpoint, "probe", 1)  # a bad template fails now, not mid-loop
        self.allow_loopback = bool(allow_loopback)
        own = origin(probe)
        if not own:
            raise SourceError("the endpoint must be an http:// or https:// URL with a host")
        self.limits = limits.with_(loopback_origins=(own,) if allow_loopback else ())

    @property
    def name(self) -> str:
        return self.service

    def describe(self) -> dict:
        return {"kind": "web", "service": self.service, "endpoint": self.endpoint,
                "allow_loopback": self.allow_loopback, "cache": self.use_cache}

    def search(self, query: str, limit: int = 5) -> list[Candidate]:
        path = os.path.join(self.cache_dir, "search", _key(self.service, self.endpoint, query, limit) + ".json") \
            if self.use_cache else None
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return [Candidate(**c) for c in json.load(f)["candidates"]]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # an unreadable cache entry: asked again, and rewritten
        url = search_url(self.service, self.endpoint, query, limit)
        try:
            data = fetch_json(url, self.limits)
        except FetchRefused as exc:
            raise SourceError(f"{self.service} search failed: {exc}") from None
        found = parse_results(self.service, data, limit, self.endpoint)
        if path:
            record = {"service": self.service, "endpoint": self.endpoint, "query": query, "request": url,
                      "candidates": [c.record() for c in found]}
            _atomic_write(path, json.dumps(record, indent=1).encode())
        return found

    def load(self, candidate: Candidate):
        from PIL import Image

        base = os.path.join(self.cache_dir, "images", _key(candidate.url)) if self.use_cache else None
        if base and os.path.exists(base + ".png"):
            try:
                with Image.open(base + ".png", formats=["PNG"]) as im:
                    return im.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError):
                pass  # an unreadable cache entry: fetched again
        try:
            image, got = fetch_image(candidate.url, self.limits)
        except FetchRefused as exc:
            raise SourceError(str(exc)) from None
        if base:
            buf = io.BytesIO()
            image.save(buf, "PNG")
            _atomic_write(base + ".png", buf.getvalue())
            _atomic_write(base + ".json", json.dumps({**candidate.record(), "final_url": got.final_url},
                                                     indent=1).encode())
        return image


class LibrarySource:
    def __init__(self, library: ImageLibrary, max_pixels: int = 40_000_000):
        self.library, self.max_pixels = library, max_pixels

    @property
    def name(self) -> str:
        return "library"

    def describe(self) -> dict:
        return {"kind": "library", "folder": os.path.basename(self.library.folder),
                "images": len(self.library.entries)}

    def search(self, query: str, limit: int = 5) -> list[Candidate]:
        return self.library.search(query, limit)

    def load(self, candidate: Candidate):
        try:
            path = self.library.path(candidate)
            with open(path, "rb") as f:
                data = f.read(64 * 2**20 + 1)
            if len(data) > 64 * 2**20:
                raise SourceError(f"{candidate.url}: over 64 MB")
            return decode_image(data, candidate.url, self.max_pixels)
        except FetchRefused as exc:
            raise SourceError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise SourceError(f"{candidate.url}: {exc}") from None
