"""The one guarded HTTP client of the pack: every web image and search answer comes through ``fetch``, and every LLM
request through ``Exchange`` (``models/llm/transport.py``).

What a URL must get past before a byte is sent, and while the answer is read:
- scheme http or https only (``file://``, ``ftp://``, ``data:``, ``gopher://`` ... refused), a host, no user:password;
- the host read as an address first (``host_literal``: ``2130706433``, ``0x7f.1``, ``[::ffff:7f00:1]`` ... are
  addresses, judged without a resolver); a name is resolved here, within the deadline, and EVERY address it
  resolves to must pass the address policy (``models/netpolicy.py``: an explicit table, the same on every Python);
- loopback only for the origins (scheme://host:port) in ``loopback_origins``: the endpoint a node or the server's
  owner configured (a local SearxNG, a local LLM), never another port on loopback, so never a URL that arrives in an
  answer or a redirect elsewhere; ``allow_private`` (an LLM the owner declared on the local network) the same way;
- the connection goes to the address that was checked (the socket is opened on that IP; the Host header and TLS
  SNI/certificate check use the name), so a second DNS answer can not swap in another address (no rebinding gap);
- redirects followed by hand, at most ``max_redirects``, each target checked as above;
- one hard deadline per call (``total_timeout``) over DNS, connect, TLS, headers and body: a watchdog shuts the socket
  down at the deadline, so a server sending one header byte at a time is cut off like a slow body; the resolver runs
  in a worker thread that is abandoned at the deadline; per-read and connect limits as well;
- the status line and headers at most ``max_header_bytes`` and ``max_headers``; status 200 only for ``fetch``; a
  Content-Length over the cap refused before reading; the body streamed and refused as soon as it passes the cap;
- ``fetch_json``: at most ``max_json_bytes``, nested at most ``max_json_depth`` deep (checked before the decoder
  sees it: ``"[" * 100000`` is a refusal, not a RecursionError);
- ``fetch_image`` / ``decode_image``: only PNG, JPEG, WEBP, GIF and BMP are tried (no other PIL plugin sees the
  bytes), and the size in the header is checked against ``max_pixels`` before the pixels are decoded.

Why hand-written: the standard library's ``http.client`` is the transport. It reads no proxy variables (a proxy would
make the address check meaningless) and lets the socket be opened on the checked address. The maintained SSRF-safe
clients do not cover this policy: ``safehttpx`` (async only) accepts a name if ANY of its addresses looks public,
asks dns.google when the resolver fails and judges addresses by ``ipaddress.is_private``; ``requests-hardened``
checks only the first address, also by ``is_private`` (so ``fec0::1`` and 6to4 forms pass on older Pythons), and
has no total deadline. See the README.

Every refusal is a ``FetchRefused`` whose message says why (never a body, never a header value); ``kind`` tells a
caller whether asking again can help (``timeout``, ``network``) or not (``refused``, ``answer``).
"""
from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

from . import netpolicy

log = logging.getLogger("editlab.fetch")
USER_AGENT = "EditLab/0.1 (ComfyUI node pack; World-To-Image)"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
CHUNK = 64 * 1024
# Test harnesses set this to "loopback": then no address but loopback is ever dialled, whatever a node says.
NETGUARD_ENV = "EDITLAB_NETGUARD"
DNS_WORKERS = 16  # name lookups that may be pending at once (a lookup past its deadline keeps its slot until done)
_DNS_SLOTS = threading.BoundedSemaphore(DNS_WORKERS)


class FetchRefused(Exception):
    """A URL or its answer was refused; ``str()`` says why (never the body).

    ``kind``: ``refused`` (the policy: scheme, address, redirect, origin), ``timeout`` (a time limit), ``network``
    (the connection failed or broke), ``answer`` (status, size, headers, format of what came back)."""

    def __init__(self, url: str, reason: str, kind: str = "refused"):
        super().__init__(f"{reason} ({_short(url)})")
        self.url = url
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 2**20
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_redirects: int = 5
    max_pixels: int = 40_000_000
    loopback_origins: tuple = ()  # origins ("http://127.0.0.1:8888") that may be on loopback; nothing else may
    allow_private: bool = False  # private/shared/unique-local addresses (an owner-declared LAN endpoint only)
    max_header_bytes: int = 32 * 1024
    max_headers: int = 64
    max_json_bytes: int = 4 * 2**20
    max_json_depth: int = 64

    def with_(self, **kw) -> "FetchLimits":
        return replace(self, **kw)


@dataclass
class Fetched:
    url: str  # the URL asked for
    final_url: str  # after redirects
    content_type: str
    body: bytes


def _short(url: str, limit: int = 200) -> str:
    url = str(url)
    return url if len(url) <= limit else url[:limit] + "..."


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (the port always written), lower case; "" for a URL without a host."""
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ""
    if not parts.hostname:
        return ""
    host = parts.hostname.lower()
    return f"{parts.scheme.lower()}://{'[' + host + ']' if ':' in host else host}:{port}"


def address_refusal(ip, allow_loopback: bool = False, allow_private: bool = False) -> str | None:
    """Why an address must not be dialled, or None when it may (``netpolicy.refusal``; a seam for the tests)."""
    return netpolicy.refusal(ip, allow_loopback, allow_private)


def _resolve(host: str, port: int):
    """The resolver (a seam: the tests map made-up public names onto loopback stand-ins here)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _open(ip: str, port: int, timeout: float) -> socket.socket:
    """Open the TCP connection on the checked address (the tests' seam for the same stand-ins)."""
    return socket.create_connection((ip, port), timeout)


def _netguard_loopback_only() -> bool:
    return os.environ.get(NETGUARD_ENV, "").strip().lower() == "loopback"


def _remaining(url: str, deadline: float, total: float, stage: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchRefused(url, f"{stage} took longer than the total time limit of {total:g} s", "timeout")
    return left


def _resolve_within(url: str, host: str, port: int, deadline: float, total: float):
    """``_resolve`` in a worker thread, waited for until the deadline only (getaddrinfo itself has no limit)."""
    if not _DNS_SLOTS.acquire(timeout=_remaining(url, deadline, total, "the name lookup")):
        raise FetchRefused(url, f"no name lookup slot within the total time limit of {total:g} s "
                                f"({DNS_WORKERS} lookups pending)", "timeout")
    box, done = {}, threading.Event()

    def work():
        try:
            box["infos"] = _resolve(host, port)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            _DNS_SLOTS.release()
            done.set()

    threading.Thread(target=work, name="editlab-dns", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise FetchRefused(url, f"the name did not resolve within the total time limit of {total:g} s", "timeout")
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, (socket.gaierror, UnicodeError, OSError)):
            raise FetchRefused(url, f"the host does not resolve ({type(exc).__name__}: {str(exc)[:200]})",
                               "network") from None
        raise exc
    return box["infos"]


def checked_target(url: str, limits: FetchLimits, deadline: float | None = None) -> tuple:
    """(parsed URL, the checked IP to dial, port), or FetchRefused. Nothing is dialled here."""
    if deadline is None:
        deadline = time.monotonic() + limits.total_timeout
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchRefused(url, f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(url, f"scheme '{parts.scheme or '(none)'}' is not allowed (http and https only)")
    if not parts.hostname:
        raise FetchRefused(url, "no host in the URL")
    if parts.username or parts.password:
        raise FetchRefused(url, "credentials in the URL are not allowed")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal = netpolicy.host_literal(parts.hostname)
    except ValueError as exc:
        raise FetchRefused(url, f"not a valid host ({exc})") from None
    named_loopback = parts.hostname.lower().rstrip(".") == "localhost"
    if _netguard_loopback_only() and not (named_loopback or (literal is not None and netpolicy.is_loopback(literal))):
        raise FetchRefused(url, f"a non-loopback host while {NETGUARD_ENV}=loopback (not resolved)")
    allow_loopback = origin(url) in limits.loopback_origins
    if literal is not None:
        found = [literal]
    else:
        found = []
        for family, _, _, _, sockaddr in _resolve_within(url, parts.hostname, port, deadline, limits.total_timeout):
            if family in (socket.AF_INET, socket.AF_INET6):
                found.append(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
    if not found:
        raise FetchRefused(url, "the host has no IPv4 or IPv6 address", "network")
    for ip in found:
        why = address_refusal(ip, allow_loopback, limits.allow_private)
        if why is None and _netguard_loopback_only() and not netpolicy.is_loopback(ip):
            why = f"a non-loopback address while {NETGUARD_ENV}=loopback"
        if why:
            if netpolicy.is_loopback(ip) and not allow_loopback:
                why += " (loopback is allowed only for the configured endpoint's own host and port)"
            shown = ip if literal is None or str(ip) == parts.hostname else f"{ip} (written {parts.hostname[:80]})"
            raise FetchRefused(url, f"the host {'resolves to' if literal is None else 'is'} {shown}, {why}")
    return parts, str(found[0]), port


# -- one request on one pinned connection ---------------------------------------------------------------------------

class _HeaderBudget:
    """Wraps the response's file while the status line and headers are read: at most ``limit`` bytes and
    ``lines`` lines (http.client's own caps are 64 KB a line and 100 headers)."""

    def __init__(self, fp, limit: int, lines: int):
        self._fp, self._left, self._lines = fp, limit, lines

    def readline(self, size=-1):
        if self._left <= 0 or self._lines <= 0:
            raise http.client.HTTPException("the status line and headers are over the size or count limit")
        line = self._fp.readline(self._left + 1 if size is None or size < 0 else min(size, self._left + 1))
        self._left -= len(line)
        self._lines -= 1
        if self._left < 0:
            raise http.client.HTTPException("the status line and headers are over the size or count limit")
        return line

    def __getattr__(self, name):
        return getattr(self._fp, name)


class _LimitedResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, max_header_bytes=32 * 1024, max_headers=64, **kw):
        super().__init__(sock, *args, **kw)
        self._max_header_bytes, self._max_headers = max_header_bytes, max_headers

    def begin(self):
        if self.headers is not None:
            return
        raw = self.fp
        self.fp = _HeaderBudget(raw, self._max_header_bytes, self._max_headers + 2)  # status line, blank line
        try:
            super().begin()
        finally:
            if self.fp is not None:
                self.fp = raw


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to ``host`` (Host header) opened on the already checked ``ip``; ``on_socket`` is called
    with the TCP socket as soon as it exists (the watchdog takes it)."""

    def __init__(self, host, port, ip, connect_timeout, on_socket, limits: FetchLimits):
        super().__init__(host, port, timeout=connect_timeout)
        self._ip, self._on_socket = ip, on_socket
        self.response_class = functools.partial(_LimitedResponse, max_header_bytes=limits.max_header_bytes,
                                                max_headers=limits.max_headers)

    def connect(self):
        self.sock = _open(self._ip, self.port, self.timeout)
        self._on_socket(self.sock)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def connect(self):
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)  # certificate checked for the name
        self._on_socket(self.sock)


class _Watchdog:
    """Shuts the connection's socket down at the deadline, whatever the reading thread is waiting for."""

    def __init__(self, deadline: float):
        self.fired = False
        self._sock = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:  # the OS-level shutdown (socket.socket's own method: also under an SSLSocket, without TLS state)
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


class Exchange:
    """One request to ``url`` on one connection opened on the checked address, under a watchdog at ``deadline``.

    ``send(method, headers, body)`` returns the response (status and headers read, within the header limits);
    ``read_body(max_bytes)`` streams the body under the per-read and total limits. Use as a context manager."""

    def __init__(self, url: str, limits: FetchLimits, deadline: float):
        self.url, self.limits, self.deadline = url, limits, deadline
        self.conn = self.resp = self._sock = None
        self.parts, self.ip, self.port = checked_target(url, limits, deadline)
        self.watchdog = _Watchdog(deadline)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.watchdog.cancel()
        if self.resp is not None:
            self.resp.close()
        if self.conn is not None:
            self.conn.close()

    def _timed_out(self) -> bool:
        return self.watchdog.fired or time.monotonic() >= self.deadline

    def _deadline_refusal(self, stage: str) -> FetchRefused:
        return FetchRefused(self.url, f"{stage} took longer than the total time limit of "
                                      f"{self.limits.total_timeout:g} s", "timeout")

    def _on_socket(self, sock) -> None:
        self._sock = sock
        self.watchdog.watch(sock)

    def send(self, method: str = "GET", headers=(), body: bytes | None = None):
        limits = self.limits
        left = _remaining(self.url, self.deadline, limits.total_timeout, "the request")
        cls = _PinnedHTTPS if self.parts.scheme == "https" else _PinnedHTTP
        self.conn = cls(self.parts.hostname, self.port, self.ip, min(limits.connect_timeout, left), self._on_socket,
                        limits)
        path = (self.parts.path or "/") + (f"?{self.parts.query}" if self.parts.query else "")
        try:
            self.conn.connect()
            self.conn.sock.settimeout(max(0.01, min(limits.read_timeout, self.deadline - time.monotonic())))
            self.conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                self.conn.putheader(name, value)
            self.conn.endheaders(body)
            self.resp = self.conn.getresponse()
        except FetchRefused:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self._timed_out():
                raise self._deadline_refusal("the connection and the answer's headers") from None
            if isinstance(exc, (socket.timeout, TimeoutError)):
                raise FetchRefused(self.url, f"no answer for {limits.read_timeout:g} s (read time limit)",
                                   "timeout") from None
            kind = "answer" if isinstance(exc, http.client.HTTPException) and \
                not isinstance(exc, http.client.RemoteDisconnected) else "network"
            raise FetchRefused(self.url, f"connection failed ({type(exc).__name__}: {str(exc)[:200]})",
                               kind) from None
        if len(self.resp.msg) > limits.max_headers:
            raise FetchRefused(self.url, f"the answer has {len(self.resp.msg)} headers, over the limit of "
                                         f"{limits.max_headers}", "answer")
        return self.resp

    def read_body(self, max_bytes: int) -> bytes:
        resp, limits = self.resp, self.limits
        length = resp.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > max_bytes:
            raise FetchRefused(self.url, f"the body is {int(length)} bytes, over the cap of {max_bytes} bytes",
                               "answer")
        chunks, total = [], 0
        while True:
            if self._timed_out():
                raise self._deadline_refusal("the body")
            if resp.isclosed():  # the whole body is in (Content-Length reached): http.client closed the socket
                return b"".join(chunks)
            try:
                self._sock.settimeout(max(0.01, min(limits.read_timeout, self.deadline - time.monotonic())))
                chunk = resp.read1(CHUNK)
            except (socket.timeout, TimeoutError):
                if self._timed_out():
                    raise self._deadline_refusal("the body") from None
                raise FetchRefused(self.url, f"no data for {limits.read_timeout:g} s (read time limit)",
                                   "timeout") from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._timed_out():
                    raise self._deadline_refusal("the body") from None
                raise FetchRefused(self.url, f"the body could not be read ({type(exc).__name__})", "network") \
                    from None
            if not chunk:
                if self._timed_out():  # the watchdog's shutdown reads as the end of the body
                    raise self._deadline_refusal("the body")
                return b"".join(chunks)
            total += len(chunk)
            if total > max_bytes:
                raise FetchRefused(self.url, f"the body passed the cap of {max_bytes} bytes", "answer")
            chunks.append(chunk)


def fetch(url: str, limits: FetchLimits = FetchLimits(), accept: str = "*/*", max_bytes: int | None = None) -> Fetched:
    """GET ``url`` within ``limits`` (see the module docstring); FetchRefused with the reason otherwise."""
    deadline = time.monotonic() + limits.total_timeout
    current = url
    headers = [("User-Agent", USER_AGENT), ("Accept", accept), ("Accept-Encoding", "identity"),
               ("Connection", "close")]
    for _ in range(limits.max_redirects + 1):
        with Exchange(current, limits, deadline) as ex:
            resp = ex.send("GET", headers)
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise FetchRefused(current, f"a redirect ({resp.status}) without a Location", "answer")
                current = urljoin(current, location.strip())
                continue  # checked again by Exchange, as any URL
            if resp.status != 200:
                raise FetchRefused(current, f"HTTP status {resp.status}", "answer")
            encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding != "identity":
                raise FetchRefused(current, f"a body in Content-Encoding {encoding[:40]!r} (identity was asked for)",
                                   "answer")
            body = ex.read_body(limits.max_bytes if max_bytes is None else max_bytes)
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            return Fetched(url, current, ctype, body)
    raise FetchRefused(url, f"more than {limits.max_redirects} redirects", "answer")


# -- JSON -----------------------------------------------------------------------------------------------------------

def nesting_exceeds(text: str, max_depth: int) -> bool:
    """Whether brackets (outside JSON strings) nest deeper than ``max_depth`` anywhere in ``text``: from any
    starting point, so a decoder started at any ``{`` or ``[`` stays within it. Unclosed brackets count."""
    import re

    skeleton = re.sub(r'[^\[\]{}]+', "", re.sub(r'"[^"\\]*(?:\\.[^"\\]*)*"', "", text, flags=re.S))
    depth = 0
    for c in skeleton:
        depth = depth + 1 if c in "[{" else max(0, depth - 1)
        if depth > max_depth:
            return True
    return False


def loads_limited(data: bytes | str, max_depth: int = 64):
    """``json.loads`` after the nesting check; ValueError with the reason (never a RecursionError)."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data)
    if nesting_exceeds(text, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    return json.loads(text)


def fetch_json(url: str, limits: FetchLimits = FetchLimits()):
    got = fetch(url, limits, accept="application/json", max_bytes=min(limits.max_bytes, limits.max_json_bytes))
    try:
        return loads_limited(got.body, limits.max_json_depth)
    except UnicodeDecodeError:
        raise FetchRefused(url, "the answer is not JSON (not UTF-8)", "answer") from None
    except json.JSONDecodeError as exc:
        raise FetchRefused(url, f"the answer is not JSON ({exc.msg} at character {exc.pos})", "answer") from None
    except (ValueError, RecursionError) as exc:
        raise FetchRefused(url, f"the answer is refused: JSON {str(exc)[:200] or 'too deep'}", "answer") from None


# -- images ---------------------------------------------------------------------------------------------------------

def decode_image(data: bytes, url: str, max_pixels: int, content_type: str = ""):
    """An RGB PIL image from ``data`` (PNG, JPEG, WEBP, GIF or BMP only); the header's size checked against
    ``max_pixels`` before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))  # no other PIL plugin is tried
    except Image.DecompressionBombError:
        raise FetchRefused(url, f"the image's size is over the cap of {max_pixels} pixels (a decompression bomb)",
                           "answer") from None
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        looks = "HTML" if head.startswith((b"<!doctype html", b"<html")) or content_type == "text/html" else \
            (content_type or "unknown data")
        raise FetchRefused(url, f"not an image in {', '.join(IMAGE_FORMATS)} (the answer is {looks})", "answer") \
            from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on hostile headers
        raise FetchRefused(url, f"not a readable image ({type(exc).__name__})", "answer") from None
    if im.format not in IMAGE_FORMATS:
        raise FetchRefused(url, f"image format {im.format} is not accepted ({', '.join(IMAGE_FORMATS)})", "answer")
    width, height = im.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise FetchRefused(url, f"the image is {width}x{height} px, over the cap of {max_pixels} pixels", "answer")
    try:
        im.seek(0)
        return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise FetchRefused(url, f"the image data is corrupt ({type(exc).__name__})", "answer") from None


def fetch_image(url: str, limits: FetchLimits = FetchLimits()):
    """(RGB PIL image, Fetched) for an image URL, or FetchRefused."""
    got = fetch(url, limits, accept="image/*")
    return decode_image(got.body, got.final_url, limits.max_pixels, got.content_type), got
