"""The LLM client's only way onto the network: an httpx transport (the HTTP layer the ``openai`` package uses) that
sends each request through the pack's guarded ``Exchange`` (``models/fetch.py``), so the chat requests get the same
address policy, pinned address, hard deadline and header/size limits as image fetching.

On top, for the endpoint it is made for:
- a request goes to the endpoint's own origin (scheme, host, port) or nowhere; a redirect is never followed (a 3xx
  answer is a refusal that names where it pointed), so the key can not be walked to another host;
- the headers sent are chosen here, not taken from ``openai``: Content-Type, Accept, User-Agent and, for an endpoint
  the owner bound a key to, ``Authorization: Bearer <that key>``. Whatever ``openai`` picked up from the process
  environment (``OPENAI_CUSTOM_HEADERS``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``) is dropped;
- one deadline per request (the node's timeout) over DNS, connect, headers and body; the answer at most
  ``MAX_ANSWER_BYTES``, nested at most 64 deep, uncompressed.

Errors: a time limit is raised as the HTTP library's ``ReadTimeout`` and a broken connection as its ``ConnectError``
(``openai`` turns them into its timeout / connection errors, which the client retries); a refusal (policy, a
redirect, an oversized or too deeply nested answer) is raised as ``FetchRefused`` itself, which ``openai`` passes
through untouched.
"""
from __future__ import annotations

import importlib
import time

from ..fetch import USER_AGENT, Exchange, FetchLimits, FetchRefused, nesting_exceeds, origin

MAX_ANSWER_BYTES = 8 * 2**20
MAX_REQUEST_BYTES = 64 * 2**20  # images travel base64-encoded inside the JSON body
MAX_JSON_DEPTH = 64
SENT_HEADERS = {"content-type", "accept"}  # taken from openai's request; everything else is set here
DROPPED_ANSWER_HEADERS = {"content-encoding", "transfer-encoding", "content-length", "connection"}


def http_module():
    """The HTTP library the installed ``openai`` is built on (``httpx2`` in current releases, ``httpx`` before)."""
    import openai

    base = getattr(openai, "DefaultHttpxClient", None)
    for cls in getattr(base, "__mro__", ()):
        top = cls.__module__.split(".")[0]
        if top in ("httpx2", "httpx") and cls.__name__ == "Client":
            return importlib.import_module(top)
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("neither httpx2 nor httpx is installed (the openai package needs one)")


def guarded_http_client(base_url: str, key: str | None, timeout: float, allow_loopback: bool,
                        allow_private: bool):
    """An ``http_client`` for ``openai.OpenAI``: no proxies from the environment, no redirects, the guarded
    transport."""
    hx = http_module()
    transport = _transport_class(hx)(base_url, key, timeout, allow_loopback, allow_private)
    return hx.Client(transport=transport, follow_redirects=False, trust_env=False, timeout=timeout)


_CLASSES: dict = {}


def _transport_class(hx):
    if hx in _CLASSES:
        return _CLASSES[hx]

    class GuardedTransport(hx.BaseTransport):
        def __init__(self, base_url, key, timeout, allow_loopback, allow_private):
            self.origin = origin(base_url)
            self.key, self.timeout = key, float(timeout)
            self.limits = FetchLimits(max_bytes=MAX_ANSWER_BYTES, connect_timeout=min(10.0, self.timeout),
                                      read_timeout=self.timeout, total_timeout=self.timeout, max_redirects=0,
                                      loopback_origins=(self.origin,) if allow_loopback else (),
                                      allow_private=bool(allow_private))

        def handle_request(self, request):
            url = str(request.url)
            try:
                return self._send(request, url)
            except FetchRefused as exc:
                if exc.kind == "timeout":
                    raise hx.ReadTimeout(str(exc), request=request) from exc
                if exc.kind == "network":
                    raise hx.ConnectError(str(exc), request=request) from exc
                raise

        def _send(self, request, url):
            if origin(url) != self.origin:
                raise FetchRefused(url, f"a request to another host than the configured endpoint ({self.origin}) "
                                        "is never sent")
            body = request.read()
            if len(body) > MAX_REQUEST_BYTES:
                raise FetchRefused(url, f"the request is {len(body)} bytes, over {MAX_REQUEST_BYTES}", "answer")
            headers = [(k, v) for k, v in request.headers.items() if k.lower() in SENT_HEADERS]
            headers += [("User-Agent", USER_AGENT), ("Accept-Encoding", "identity"), ("Connection", "close"),
                        ("Content-Length", str(len(body)))]
            if self.key:
                headers.append(("Authorization", f"Bearer {self.key}"))
            deadline = time.monotonic() + self.timeout
            with Exchange(url, self.limits, deadline) as ex:
                resp = ex.send(request.method, headers, body or None)
                if 300 <= resp.status < 400:
                    where = (resp.getheader("Location") or "(no Location)").strip()[:200]
                    raise FetchRefused(url, f"the endpoint answered HTTP {resp.status}, a redirect to {where}: not "
                                            "followed (requests and keys go to the configured endpoint only)")
                encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
                if encoding != "identity":
                    raise FetchRefused(url, f"an answer in Content-Encoding {encoding[:40]!r} (identity was asked "
                                            "for)", "answer")
                data = ex.read_body(MAX_ANSWER_BYTES)
                answer_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in DROPPED_ANSWER_HEADERS]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            if nesting_exceeds(text, MAX_JSON_DEPTH):
                raise FetchRefused(url, f"the answer is JSON nested deeper than {MAX_JSON_DEPTH} levels", "answer")
            return hx.Response(resp.status, headers=answer_headers, content=data, request=request)

    _CLASSES[hx] = GuardedTransport
    return GuardedTransport
