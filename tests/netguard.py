"""A connection guard for the tests: dialling anything but loopback is refused AND recorded, so a broken address
check in the pack fails the test loudly instead of sending traffic out.

``install()`` patches ``socket.socket.connect`` / ``connect_ex`` (everything above them: ``socket.create_connection``,
http.client, urllib, httpx2 and the openai client, asyncio's ``sock_connect``, goes through them). A refused dial raises
``NetGuardViolation`` (a ConnectionRefusedError, so the code under test sees an unreachable network) and is appended
to ``VIOLATIONS``; with ``EDITLAB_NETGUARD_LOG`` set each one is also written to that file (the live server's guard,
installed by tests/netguard_site/sitecustomize.py, reports that way). Unix sockets and loopback addresses (127/8, ::1,
the name ``localhost``) pass. A host NAME other than localhost is refused without being resolved.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import traceback

VIOLATIONS: list[str] = []
_installed = False


class NetGuardViolation(ConnectionRefusedError):
    pass


def loopback_address(address) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX path (str / bytes): not the network
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%")[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _record(address) -> None:
    where = "".join(traceback.format_stack(limit=8)[:-2])
    line = f"non-loopback connection attempt to {address!r}"
    VIOLATIONS.append(f"{line}\n{where}")
    log = os.environ.get("EDITLAB_NETGUARD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}: {line}\n")


def install() -> None:
    global _installed
    if _installed:
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not loopback_address(address):
            _record(address)
            raise NetGuardViolation(f"EditLab test network guard: {address!r} is not loopback")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not loopback_address(address):
            _record(address)
            raise NetGuardViolation(f"EditLab test network guard: {address!r} is not loopback")
        return real_connect_ex(self, address)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    _installed = True


def take() -> list[str]:
    """The violations recorded since the last call (and forget them)."""
    out = list(VIOLATIONS)
    VIOLATIONS.clear()
    return out
