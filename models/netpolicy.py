"""The one address policy of the pack: which IP addresses a request may be sent to. The image fetcher
(``models/fetch.py``) and the LLM client (``models/llm/transport.py``) both ask ``refusal``.

Why a table and not ``ipaddress``'s ``is_private`` / ``is_global``: those flags are tables inside the standard
library that changed between patch releases (3.11.10 / 3.12.4 added 192.0.0.0/24's sub-blocks, 2002::/16, fec0::/10
and others). On 3.11.7 ``192.0.0.192`` (Oracle Cloud's metadata service), ``2002:7f00:1::`` (127.0.0.1 in 6to4) and
``fec0::1`` pass them. Here the networks are written out, so the answer is the same on every Python; only network
containment (``ip in network``) is used from ``ipaddress``, which has not changed.

Refused, IPv4 (the IANA IPv4 Special-Purpose Address Registry, plus multicast and the rest of 240/4):
0.0.0.0/8 this network, 10/8, 172.16/12, 192.168/16 private, 100.64/10 shared, 127/8 loopback, 169.254/16
link-local, 192.0.0.0/24 IETF protocol assignments, 192.0.2/24, 198.51.100/24, 203.0.113/24 documentation,
192.31.196/24 and 192.175.48/24 AS112, 192.52.193/24 AMT, 192.88.99/24 the old 6to4 relay, 198.18/15 benchmarking,
224/4 multicast, 240/4 reserved, 255.255.255.255 broadcast.

Refused, IPv6 (the IANA IPv6 Special-Purpose Address Registry): everything outside global unicast 2000::/3 (so ::,
::1, the IPv4-compatible ::/96, 64:ff9b:1::/48 local NAT64, 100::/64 discard, 5f00::/16 SRv6, fc00::/7 unique
local, fe80::/10 link-local, fec0::/10 site-local, ff00::/8 multicast), and inside it 2001::/23 (IETF protocol
assignments: Teredo, benchmarking, ORCHID), 2001:db8::/32 and 3fff::/20 documentation, 2620:4f:8000::/48 AS112.
IPv4 inside IPv6: the IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::) forms are
judged by the IPv4 address they carry; the IPv4-compatible form (::a.b.c.d) is refused outright (deprecated).

Cloud metadata addresses are refused whatever the flags: 169.254.169.254 (AWS, GCP, Azure, ...), 169.254.170.2
(AWS ECS), fd00:ec2::254 (AWS over IPv6), 100.100.100.200 (Alibaba Cloud), 192.0.0.192 (Oracle Cloud).

Two exceptions, each only where the caller says so (never for a URL that arrives in an answer):
``allow_loopback`` lets 127/8 and ::1 through (an endpoint the server's owner or the node configured: a local
search service, a local LLM); ``allow_private`` lets the private, shared and unique-local blocks through (an LLM
the server's owner declared on the local network). Metadata addresses stay refused under both.

``host_literal`` reads a host as a browser or ``inet_aton`` would: ``2130706433``, ``0177.0.0.1``, ``0x7f.1``,
``127.1``, full-width digits, ``[::ffff:7f00:1]``, ``[fe80::1%25eth0]`` are addresses, judged without asking a
resolver.
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK, PRIVATE, ALWAYS = "loopback", "private", "always"


def _nets(rows):
    return [(ipaddress.ip_network(net), why, kind) for net, why, kind in rows]


METADATA = {ipaddress.ip_address(a): who for a, who in (
    ("169.254.169.254", "AWS, GCP, Azure and others"), ("169.254.170.2", "AWS ECS"),
    ("fd00:ec2::254", "AWS over IPv6"), ("100.100.100.200", "Alibaba Cloud"), ("192.0.0.192", "Oracle Cloud"))}

# First match wins: the more specific blocks come first.
IPV4_REFUSED = _nets([
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)", ALWAYS),
    ("10.0.0.0/8", "a private address (10.0.0.0/8)", PRIVATE),
    ("100.64.0.0/10", "a shared address (100.64.0.0/10, carrier-grade NAT)", PRIVATE),
    ("127.0.0.0/8", "a loopback address (127.0.0.0/8)", LOOPBACK),
    ("169.254.0.0/16", "a link-local address (169.254.0.0/16)", ALWAYS),
    ("172.16.0.0/12", "a private address (172.16.0.0/12)", PRIVATE),
    ("192.0.0.0/24", "an IETF protocol assignment (192.0.0.0/24)", ALWAYS),
    ("192.0.2.0/24", "a documentation address (192.0.2.0/24)", ALWAYS),
    ("192.31.196.0/24", "an AS112 address (192.31.196.0/24)", ALWAYS),
    ("192.52.193.0/24", "an AMT address (192.52.193.0/24)", ALWAYS),
    ("192.88.99.0/24", "the deprecated 6to4 relay anycast (192.88.99.0/24)", ALWAYS),
    ("192.168.0.0/16", "a private address (192.168.0.0/16)", PRIVATE),
    ("192.175.48.0/24", "an AS112 address (192.175.48.0/24)", ALWAYS),
    ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)", ALWAYS),
    ("198.51.100.0/24", "a documentation address (198.51.100.0/24)", ALWAYS),
    ("203.0.113.0/24", "a documentation address (203.0.113.0/24)", ALWAYS),
    ("224.0.0.0/4", "a multicast address (224.0.0.0/4)", ALWAYS),
    ("255.255.255.255/32", "the broadcast address", ALWAYS),
    ("240.0.0.0/4", "a reserved address (240.0.0.0/4)", ALWAYS),
])
IPV6_REFUSED = _nets([
    ("::/128", "the unspecified address (::)", ALWAYS),
    ("::1/128", "a loopback address (::1)", LOOPBACK),
    ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)", ALWAYS),
    ("100::/64", "a discard-only address (100::/64)", ALWAYS),
    ("2001:db8::/32", "a documentation address (2001:db8::/32)", ALWAYS),
    ("2001::/23", "an IETF protocol assignment (2001::/23: Teredo, benchmarking, ORCHID)", ALWAYS),
    ("2620:4f:8000::/48", "an AS112 address (2620:4f:8000::/48)", ALWAYS),
    ("3fff::/20", "a documentation address (3fff::/20)", ALWAYS),
    ("5f00::/16", "an SRv6 segment identifier (5f00::/16)", ALWAYS),
    ("fc00::/7", "a unique local address (fc00::/7)", PRIVATE),
    ("fe80::/10", "a link-local address (fe80::/10)", ALWAYS),
    ("fec0::/10", "a site-local address (fec0::/10, deprecated)", ALWAYS),
    ("ff00::/8", "a multicast address (ff00::/8)", ALWAYS),
])
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
MAPPED = ipaddress.ip_network("::ffff:0:0/96")
COMPATIBLE = ipaddress.ip_network("::/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def _table(ip, rows, allow_loopback: bool, allow_private: bool) -> tuple[bool, str | None]:
    """(whether a row matched, why it is refused: None when the caller's flag lets that row through)."""
    for net, why, kind in rows:
        if ip in net:
            allowed = (kind == LOOPBACK and allow_loopback) or (kind == PRIVATE and allow_private)
            return True, None if allowed else why
    return False, None


def _v4(ip: ipaddress.IPv4Address, allow_loopback: bool, allow_private: bool) -> str | None:
    if ip in METADATA:
        return f"a cloud metadata address ({METADATA[ip]})"
    return _table(ip, IPV4_REFUSED, allow_loopback, allow_private)[1]


def refusal(ip: IPAddress, allow_loopback: bool = False, allow_private: bool = False) -> str | None:
    """Why ``ip`` must not be dialled, or None when it may (see the module docstring)."""
    if ip.version == 4:
        return _v4(ip, allow_loopback, allow_private)
    ip = ipaddress.IPv6Address(int(ip))  # any zone id dropped
    if ip in METADATA:
        return f"a cloud metadata address ({METADATA[ip]})"
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in MAPPED:
        why = _v4(low32, allow_loopback, allow_private)
        return f"the IPv4-mapped form of {low32}, {why}" if why else None
    if ip in NAT64:
        why = _v4(low32, False, False)
        return f"the NAT64 form of {low32}, {why}" if why else None
    if ip in SIX_TO_FOUR:
        inner = ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
        why = _v4(inner, False, False)
        if why:
            return f"the 6to4 form of {inner}, {why}"
    if ip in COMPATIBLE and int(ip) > 1:
        why = _v4(low32, False, False)
        return f"the deprecated IPv4-compatible form of {low32}" + (f", {why}" if why else "")
    matched, why = _table(ip, IPV6_REFUSED, allow_loopback, allow_private)
    if matched:
        return why
    if ip not in GLOBAL_UNICAST_V6:
        return "outside IPv6 global unicast (2000::/3), reserved"
    return None


LOOPBACK_V4, LOOPBACK_V6 = ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")


def is_loopback(ip: IPAddress) -> bool:
    """127/8, ::1 and the IPv4-mapped form of 127/8."""
    if ip.version == 6:
        ip = ipaddress.IPv6Address(int(ip))
        if ip in MAPPED:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip in (LOOPBACK_V4 if ip.version == 4 else LOOPBACK_V6)


_NUMERIC_V4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?")
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _inet_aton(text: str) -> ipaddress.IPv4Address:
    """1 to 4 parts, each decimal, 0-octal or 0x-hex; the last part fills the bytes left (as inet_aton reads)."""
    nums = []
    for part in text.rstrip(".").split("."):
        if part.startswith("0x"):
            nums.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            nums.append(int(part, 8))  # ValueError on 8 or 9
        else:
            nums.append(int(part))
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(nums)):
        raise ValueError("a part is out of range")
    value = 0
    for n in head:
        value = value << 8 | n
    return ipaddress.IPv4Address(value << 8 * (5 - len(nums)) | last)


def host_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (any form browsers and ``inet_aton`` accept), None for a name to resolve;
    ValueError for a host that looks numeric but is no valid address (never handed to a resolver)."""
    text = unicodedata.normalize("NFKC", str(host)).translate(_DOTS).strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host[:100]!r} is not a valid IPv6 address") from None
    if _NUMERIC_V4.fullmatch(text):
        try:
            return _inet_aton(text)
        except ValueError:
            raise ValueError(f"{host[:100]!r} is not a valid IPv4 address") from None
    labels = [label for label in text.split(".") if label]
    if labels and re.fullmatch(r"0x[0-9a-f]*|[0-9]+", labels[-1]):
        # as browsers read hosts: a host ending in a number is an IPv4 address or invalid, never a name
        raise ValueError(f"{host[:100]!r} is not a valid IPv4 address")
    return None
