"""The pack's HTTP route for its web panels (web/panels/*.js): ``GET /editlab/panel/<kind>?id=<id>`` answers the
JSON a node published with ``models.panels.ui_for`` during its last runs. It serves only that in-memory data: no
request value ever names a file. ``GET /editlab/blendshapes``: the coefficient names and presets of
Blendshape Edit (the Blendshape panel's constants). Bad input gets a 4xx with a one-line JSON error: an unknown
kind or id 404,
an id that is not 1 to 64 of [A-Za-z0-9_-] (a path, dots, slashes) 400, an oversized query 413, a body 400/413.

This module defines no nodes; it is in ``__init__``'s NODE_MODULES so that a failure here removes only the panels.
"""
from __future__ import annotations

import logging

from aiohttp import web

from ..models.panels import STORE, PanelError
from . import host

log = logging.getLogger("editlab")
ROUTE = "/editlab/panel/{kind}"
MAX_QUERY_CHARS = 256
MAX_BODY_BYTES = 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def panel(request: web.Request) -> web.Response:
    if len(request.query_string) > MAX_QUERY_CHARS or len(request.raw_path) > MAX_QUERY_CHARS + 64:
        return _error(413, f"a query of at most {MAX_QUERY_CHARS} characters")
    length = request.content_length
    if length or request.body_exists:
        if length is not None and length > MAX_BODY_BYTES:
            return _error(413, "this route takes no request body")
        return _error(400, "this route takes no request body")
    unknown = sorted(set(request.query) - {"id"})
    if unknown:
        return _error(400, f"unknown query parameter(s): {', '.join(k[:40] for k in unknown[:5])}; only id")
    if len(request.query.getall("id", [])) > 1:
        return _error(400, "one id per request")
    try:
        text = STORE.get(request.match_info.get("kind", ""), request.query.get("id", ""))
    except PanelError as exc:
        return _error(exc.status, str(exc))
    return web.Response(text=text, content_type="application/json", headers={"Cache-Control": "no-store"})


if not host.add_get_route(ROUTE, panel):
    log.debug("EditLab: no running server; the panel route is not registered")


async def blendshapes(request: web.Request) -> web.Response:
    """The Blendshape panel's constants: the 52 coefficient names (as Blendshape Edit accepts them) and the presets."""
    if request.query_string or request.body_exists:
        return _error(400, "this route takes no query and no body")
    from ..models.expression.blendshapes import ARKIT_NAMES, PRESETS

    return web.json_response({"names": list(ARKIT_NAMES), "presets": PRESETS},
                             headers={"Cache-Control": "max-age=3600"})


host.add_get_route("/editlab/blendshapes", blendshapes)


NODES = []
