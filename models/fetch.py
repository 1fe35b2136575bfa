"""The one guarded HTTP client of the pack: every web image and every search-API answer comes through ``fetch``.

What a URL must get past before a byte is read, and while it is read:
- scheme http or https only (``file://``, ``ftp://``, ``data:``, ``gopher://`` ... refused), a host, no user:password;
- the host resolved here, and EVERY address it resolves to must be a public (global) unicast address: private
  (10/8, 172.16/12, 192.168/16, fc00::/7), loopback, link-local (169.254/16, fe80::/10, so 169.254.169.254),
  multicast, reserved, unspecified, shared (100.64/10) and cloud metadata (169.254.169.254, fd00:ec2::254) refused.
  ``allow_loopback`` lets 127.0.0.0/8 and ::1 through (a local SearxNG, a local test stand-in), nothing else;
- the connection goes to the address that was checked (the socket is opened on that IP; the Host header and TLS
  SNI/certificate check use the name), so a second DNS answer can not swap in another address (no rebinding gap);
- redirects are followed by hand, at most ``max_redirects``, each target checked as above;
- status 200 only; a Content-Length over the cap refused before reading; the body streamed and refused as soon as it
  passes ``max_bytes``; connect, per-read and total time limits (a body trickling in past ``total_timeout`` refused);
- ``fetch_image``: the bytes must open as PNG/JPEG/WEBP/GIF/BMP, and the size in the header is checked against
  ``max_pixels`` before the pixels are decoded (an image bomb is refused without allocating it).

The standard library's ``http.client`` is the transport: it reads no proxy variables (a proxy would make the address
check meaningless) and lets the socket be opened on the checked address. Every refusal is a ``FetchRefused`` whose
message says why; callers report it and go on with their other candidates.
"""
from __future__ import annotations

import http.client
import io
import ipaddress
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

USER_AGENT = "EditLab/0.1 (ComfyUI node pack; World-To-Image)"
METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
CHUNK = 64 * 1024
# Test harnesses set this to "loopback": then no address but loopback is ever dialled, whatever a node says.
NETGUARD_ENV = "EDITLAB_NETGUARD"


class FetchRefused(Exception):
    """A URL or its answer was refused; ``str()`` says why (never the body)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{reason} ({_short(url)})")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 2**20
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_redirects: int = 5
    max_pixels: int = 40_000_000
    allow_loopback: bool = False

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


def address_refusal(ip: ipaddress._BaseAddress, allow_loopback: bool) -> str | None:
    """Why an address must not be dialled, or None when it may."""
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address (allow loopback is off)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-public address"
    return None


def _resolve(host: str, port: int):
    """The resolver (a seam: the tests map made-up public names onto loopback stand-ins here)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _open(ip: str, port: int, timeout: float) -> socket.socket:
    """Open the TCP connection on the checked address (the tests' seam for the same stand-ins)."""
    return socket.create_connection((ip, port), timeout)


def _loopback_name(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _netguard_loopback_only() -> bool:
    return os.environ.get(NETGUARD_ENV, "").strip().lower() == "loopback"


def checked_target(url: str, limits: FetchLimits) -> tuple[urlsplit, str, int]:
    """(parsed URL, the checked IP to dial, port), or FetchRefused."""
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
    if _netguard_loopback_only() and not _loopback_name(parts.hostname):
        raise FetchRefused(url, f"a non-loopback host while {NETGUARD_ENV}=loopback (not resolved)")
    try:
        infos = _resolve(parts.hostname, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused(url, f"the host does not resolve ({exc})") from None
    addresses = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        why = address_refusal(ip, limits.allow_loopback)
        if why is None and _netguard_loopback_only() and not ip.is_loopback:
            why = f"a non-loopback address while {NETGUARD_ENV}=loopback"
        if why:
            raise FetchRefused(url, f"the host resolves to {ip}, {why}")
        addresses.append(str(ip))
    if not addresses:
        raise FetchRefused(url, "the host has no IPv4 or IPv6 address")
    return parts, addresses[0], port


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to ``host`` (Host header) opened on the already checked ``ip``."""

    def __init__(self, host, port, ip, connect_timeout):
        super().__init__(host, port, timeout=connect_timeout)
        self._ip = ip

    def connect(self):
        self.sock = _open(self._ip, self.port, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def connect(self):
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)  # certificate checked for the name


def _request_once(url: str, limits: FetchLimits, deadline: float, accept: str):
    parts, ip, port = checked_target(url, limits)
    cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchRefused(url, f"took longer than the total time limit of {limits.total_timeout:g} s")
    conn = cls(parts.hostname, port, ip, min(limits.connect_timeout, remaining))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.connect()
        sock = conn.sock  # http.client drops conn.sock on "Connection: close"; the response still reads from it
        conn.sock.settimeout(max(0.01, min(limits.read_timeout, deadline - time.monotonic())))
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": accept,
                                           "Accept-Encoding": "identity"})
        resp = conn.getresponse()
        resp._editlab_sock = sock
    except FetchRefused:
        conn.close()
        raise
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise FetchRefused(url, f"connection failed ({type(exc).__name__}: {exc})") from None
    return conn, resp


def _read_body(url: str, conn, resp, limits: FetchLimits, deadline: float) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > limits.max_bytes:
        raise FetchRefused(url, f"the body is {int(length)} bytes, over the cap of {limits.max_bytes} bytes")
    chunks, total = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchRefused(url, f"the body took longer than the total time limit of {limits.total_timeout:g} s")
        if resp.isclosed():  # the whole body is in (Content-Length reached): http.client closed the socket
            return b"".join(chunks)
        try:
            resp._editlab_sock.settimeout(max(0.01, min(limits.read_timeout, remaining)))
            chunk = resp.read1(CHUNK)
        except (socket.timeout, TimeoutError):
            if time.monotonic() >= deadline:
                raise FetchRefused(url, f"the body took longer than the total time limit of "
                                        f"{limits.total_timeout:g} s") from None
            raise FetchRefused(url, f"no data for {limits.read_timeout:g} s (read time limit)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchRefused(url, f"the body could not be read ({type(exc).__name__})") from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limits.max_bytes:
            raise FetchRefused(url, f"the body passed the cap of {limits.max_bytes} bytes")
        chunks.append(chunk)


def fetch(url: str, limits: FetchLimits = FetchLimits(), accept: str = "*/*") -> Fetched:
    """GET ``url`` within ``limits`` (see the module docstring); FetchRefused with the reason otherwise."""
    deadline = time.monotonic() + limits.total_timeout
    current = url
    for _ in range(limits.max_redirects + 1):
        conn, resp = _request_once(current, limits, deadline, accept)
        try:
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise FetchRefused(current, f"a redirect ({resp.status}) without a Location")
                current = urljoin(current, location.strip())
                continue  # checked again by _request_once, as any URL
            if resp.status != 200:
                raise FetchRefused(current, f"HTTP status {resp.status}")
            body = _read_body(current, conn, resp, limits, deadline)
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            return Fetched(url, current, ctype, body)
        finally:
            resp.close()
            conn.close()
    raise FetchRefused(url, f"more than {limits.max_redirects} redirects")


def fetch_json(url: str, limits: FetchLimits = FetchLimits()):
    got = fetch(url, limits, accept="application/json")
    try:
        return json.loads(got.body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchRefused(url, f"the answer is not JSON ({type(exc).__name__})") from None


def decode_image(data: bytes, url: str, max_pixels: int, content_type: str = ""):
    """An RGB PIL image from ``data``; the header's size checked against ``max_pixels`` before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise FetchRefused(url, f"the image's size is over the cap of {max_pixels} pixels (a decompression bomb)") \
            from None
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        looks = "HTML" if head.startswith((b"<!doctype html", b"<html")) or content_type == "text/html" else \
            (content_type or "unknown data")
        raise FetchRefused(url, f"not an image (the answer is {looks})") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on hostile headers
        raise FetchRefused(url, f"not a readable image ({type(exc).__name__})") from None
    if im.format not in IMAGE_FORMATS:
        raise FetchRefused(url, f"image format {im.format} is not accepted ({', '.join(IMAGE_FORMATS)})")
    width, height = im.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise FetchRefused(url, f"the image is {width}x{height} px, over the cap of {max_pixels} pixels")
    try:
        im.seek(0)
        return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise FetchRefused(url, f"the image data is corrupt ({type(exc).__name__})") from None


def fetch_image(url: str, limits: FetchLimits = FetchLimits()):
    """(RGB PIL image, Fetched) for an image URL, or FetchRefused."""
    got = fetch(url, limits, accept="image/*")
    return decode_image(got.body, got.final_url, limits.max_pixels, got.content_type), got
