"""The guarded fetcher against real HTTP servers on loopback: every refusal case refused with its reason, and the
socket-level guard that fails any test dialling a non-loopback address.

Public sites are played by ``FakeInternet``: made-up names resolving to public addresses, whose connections the
fetcher's opener seam sends to loopback stand-ins (the tests' socket guard sees loopback only)."""
import socket
import struct
import zlib

import pytest
from standins import FakeInternet, Reply, StandIn, png_bytes

from editlab.models import fetch as F

BASE = F.FetchLimits(connect_timeout=2, read_timeout=2, total_timeout=5)


def loop(site, **kw):
    """Limits under which ``site`` (a loopback stand-in) is the configured endpoint: loopback for its origin only."""
    return BASE.with_(loopback_origins=(F.origin(site.url),), **kw)


@pytest.fixture
def site():
    with StandIn() as s:
        yield s


@pytest.fixture
def net(monkeypatch):
    return FakeInternet(monkeypatch)


def test_public_image_is_fetched_and_decoded(site, net):
    site.routes["/cat.png"] = Reply(200, png_bytes(20, 10), {"Content-Type": "image/png"})
    base = net.add("images.example.com", site, "93.184.216.34")
    im, got = F.fetch_image(base + "/cat.png", F.FetchLimits())
    assert im.size == (20, 10) and im.getpixel((0, 0)) == (200, 30, 30)
    assert got.final_url == base + "/cat.png"
    assert site.requests[0]["headers"]["Host"] == "images.example.com"  # the name, on the checked address


def test_redirect_is_followed_and_each_hop_checked(site, net):
    site.routes["/a"] = Reply(302, b"", {"Location": "/b.png"})
    site.routes["/b.png"] = Reply(200, png_bytes(), {"Content-Type": "image/png"})
    base = net.add("images.example.com", site, "93.184.216.34")
    im, got = F.fetch_image(base + "/a", F.FetchLimits())
    assert got.final_url == base + "/b.png" and im.size == (16, 16)


@pytest.mark.parametrize("target, why", [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://10.0.0.1/image.png", "private address"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://192.168.1.1/", "private address"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0/", "this network"),
])
def test_redirect_to_a_forbidden_address_is_refused(site, net, target, why):
    site.routes["/r"] = Reply(302, b"", {"Location": target})
    base = net.add("images.example.com", site, "93.184.216.34")
    with pytest.raises(F.FetchRefused, match=why):
        F.fetch_image(base + "/r", F.FetchLimits())
    assert len(site.requests) == 1  # the first hop only; nothing was dialled for the target (the socket guard agrees)


def test_redirect_to_loopback_is_refused_unless_it_is_the_configured_endpoint(site, net):
    site.routes["/r"] = Reply(302, b"", {"Location": f"http://127.0.0.1:{site.port}/secret.png"})
    site.routes["/secret.png"] = Reply(200, png_bytes(), {"Content-Type": "image/png"})
    base = net.add("images.example.com", site, "93.184.216.34")
    with pytest.raises(F.FetchRefused, match="loopback address"):
        F.fetch_image(base + "/r", F.FetchLimits())
    assert [r["path"] for r in site.requests] == ["/r"]
    # loopback allowed for ANOTHER origin (a configured endpoint on another port): still refused
    with pytest.raises(F.FetchRefused, match="only for the configured endpoint's own host and port"):
        F.fetch_image(base + "/r", F.FetchLimits(loopback_origins=(f"http://127.0.0.1:{site.port + 1}",)))
    # the redirect's own origin is the configured endpoint: fetched
    im, _ = F.fetch_image(base + "/r", loop(site))
    assert im.size == (16, 16)


def test_loopback_is_allowed_for_the_configured_origin_only(site):
    """An answer from the configured local service pointing at another port on loopback (ComfyUI's own
    /api/view, say) is refused before any dial; the service's own port is fetched."""
    with StandIn() as other:
        other.routes["/api/view"] = Reply(200, png_bytes(), {"Content-Type": "image/png"})
        site.routes["/a.png"] = Reply(200, png_bytes(), {"Content-Type": "image/png"})
        limits = loop(site)
        assert F.fetch_image(site.url + "/a.png", limits)[0].size == (16, 16)
        for url in (f"{other.url}/api/view?filename=x.png&type=output", f"http://localhost:{other.port}/api/view",
                    f"http://[::1]:{other.port}/api/view", f"http://2130706433:{other.port}/api/view"):
            with pytest.raises(F.FetchRefused, match="loopback"):
                F.fetch_image(url, limits)
        assert other.requests == []


def test_loopback_refused_directly_without_the_setting(site):
    with pytest.raises(F.FetchRefused, match="loopback"):
        F.fetch(site.url + "/x", F.FetchLimits())
    assert site.requests == []


def test_a_name_resolving_to_a_private_address_is_refused(site, net):
    net.add("intranet.example.com", site, "10.1.2.3")
    with pytest.raises(F.FetchRefused, match="10.1.2.3, a private address"):
        F.fetch("http://intranet.example.com/x.png")
    assert site.requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/",
                                 "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "//example.com/a.png",
                                 "dict://127.0.0.1:11211/"])
def test_other_schemes_are_refused(url):
    with pytest.raises(F.FetchRefused, match="scheme"):
        F.fetch(url, BASE)


def test_redirect_to_file_scheme_is_refused(site):
    site.routes["/r"] = Reply(302, b"", {"Location": "file:///etc/passwd"})
    with pytest.raises(F.FetchRefused, match="scheme 'file'"):
        F.fetch(site.url + "/r", loop(site))


def test_credentials_in_url_are_refused(site):
    with pytest.raises(F.FetchRefused, match="credentials"):
        F.fetch(f"http://user:pw@127.0.0.1:{site.port}/x", loop(site))


def test_body_over_the_cap_by_content_length(site):
    site.routes["/big"] = Reply(200, b"x" * 5000, {"Content-Type": "image/png"})
    with pytest.raises(F.FetchRefused, match="5000 bytes, over the cap of 1000"):
        F.fetch(site.url + "/big", loop(site, max_bytes=1000))


def test_body_over_the_cap_while_streaming(site):
    site.routes["/big"] = Reply(200, b"x" * 300_000, {"Content-Type": "image/png"}, length=False)
    with pytest.raises(F.FetchRefused, match="passed the cap of 100000 bytes"):
        F.fetch(site.url + "/big", loop(site, max_bytes=100_000))


def test_slow_body_past_the_total_time_limit(site):
    import time

    site.routes["/slow.png"] = Reply(200, png_bytes(), {"Content-Type": "image/png"}, trickle=0.2)
    t = time.monotonic()
    with pytest.raises(F.FetchRefused, match="total time limit of 1 s"):
        F.fetch_image(site.url + "/slow.png", loop(site, total_timeout=1.0, read_timeout=0.5))
    assert time.monotonic() - t < 2.5


def test_silent_server_past_the_read_time_limit(site):
    site.routes["/stall"] = Reply(200, png_bytes(), {"Content-Type": "image/png"}, delay=2.0)
    with pytest.raises(F.FetchRefused, match="connection failed|read time limit"):
        F.fetch(site.url + "/stall", loop(site, read_timeout=0.3, total_timeout=5))


def test_html_instead_of_an_image(site):
    site.routes["/page"] = Reply(200, "<!DOCTYPE html><html><body>not a picture</body></html>",
                                 {"Content-Type": "text/html"})
    with pytest.raises(F.FetchRefused, match=r"not an image in PNG, JPEG, WEBP, GIF, BMP \(the answer is HTML\)"):
        F.fetch_image(site.url + "/page", loop(site))


def _png_header(width, height) -> bytes:
    """A PNG whose header claims width x height (the pixels never follow): what an image bomb looks like."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 40000])  # under and over PIL's own bomb limit; both over our cap
def test_image_bomb_over_the_pixel_cap(site, side):
    site.routes["/bomb.png"] = Reply(200, _png_header(side, side), {"Content-Type": "image/png"})
    with pytest.raises(F.FetchRefused, match="over the cap of 1000000 pixels"):
        F.fetch_image(site.url + "/bomb.png", loop(site, max_pixels=1_000_000))


def test_status_other_than_200(site):
    site.routes["/gone"] = Reply(500, "boom")
    with pytest.raises(F.FetchRefused, match="HTTP status 500"):
        F.fetch(site.url + "/gone", loop(site))


def test_redirect_loop_is_bounded(site):
    site.routes["/loop"] = Reply(302, b"", {"Location": "/loop"})
    with pytest.raises(F.FetchRefused, match="more than 3 redirects"):
        F.fetch(site.url + "/loop", loop(site, max_redirects=3))
    assert len(site.requests) == 4


def test_env_guard_keeps_the_fetcher_on_loopback(site, monkeypatch):
    """EDITLAB_NETGUARD=loopback (the live test server's setting): a public address is refused by the fetcher itself."""
    monkeypatch.setenv("EDITLAB_NETGUARD", "loopback")
    with pytest.raises(F.FetchRefused, match="non-loopback host while EDITLAB_NETGUARD"):
        F.checked_target("http://93.184.216.34/x.png", F.FetchLimits())


def test_the_socket_guard_refuses_and_records_a_non_loopback_dial():
    import netguard

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(netguard.NetGuardViolation):
            s.connect(("10.0.0.1", 80))
        with pytest.raises(netguard.NetGuardViolation):
            s.connect(("example.com", 80))  # a name is refused without being resolved
    finally:
        s.close()
    seen = netguard.take()  # taken here, or the autouse fixture would fail this test
    assert len(seen) == 2 and "10.0.0.1" in seen[0]
    assert netguard.loopback_address(("127.0.0.1", 1)) and netguard.loopback_address(("::1", 1, 0, 0))


def test_the_test_servers_guard_refuses_and_logs_in_a_subprocess(tmp_path):
    """The environment the ``server`` fixture gives ComfyUI (tests/netguard_site on PYTHONPATH): a Python started
    with it refuses a non-loopback dial and writes it to the log the fixture checks; loopback still connects."""
    import os
    import subprocess
    import sys

    from conftest import guarded_server_env

    log = tmp_path / "guard.log"
    code = ("import socket\n"
            "s = socket.socket()\n"
            "try:\n    s.connect(('10.0.0.1', 80))\nexcept ConnectionRefusedError as e:\n    print('refused', e)\n"
            "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n"
            "c = socket.socket(); c.connect(l.getsockname()); print('loopback ok')\n")
    env = {**os.environ, **guarded_server_env(log)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "refused EditLab test network guard" in done.stdout and "loopback ok" in done.stdout, done.stderr
    assert "non-loopback connection attempt to ('10.0.0.1', 80)" in log.read_text()


def test_no_dns_rebinding_gap_the_checked_address_is_the_one_dialled(site, monkeypatch):
    """A name that resolves to a public address when checked and to loopback afterwards (DNS rebinding): the name is
    resolved once per hop and the socket is opened on the address that was checked."""
    monkeypatch.delenv("EDITLAB_NETGUARD", raising=False)
    site.routes["/x.png"] = Reply(200, png_bytes(), {"Content-Type": "image/png"})
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    resolved, dialled = [], []

    def resolve(host, port):
        ip = next(answers)
        resolved.append(ip)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    def open_(ip, port, timeout):
        dialled.append(ip)
        return socket.create_connection(("127.0.0.1", site.port), timeout)  # the stand-in plays the public site

    monkeypatch.setattr(F, "_resolve", resolve)
    monkeypatch.setattr(F, "_open", open_)
    im, _ = F.fetch_image("http://rebind.example.com/x.png", F.FetchLimits())
    assert im.size == (16, 16) and resolved == ["93.184.216.34"] and dialled == ["93.184.216.34"]


def test_a_broken_address_check_is_caught_by_the_socket_guard(monkeypatch):
    """If the fetcher's own check were broken, the tests' socket guard would still stop the dial and fail the test
    (here the record is taken by the test itself, which shows what the autouse fixture would have reported)."""
    import netguard

    monkeypatch.delenv("EDITLAB_NETGUARD", raising=False)
    monkeypatch.setattr(F, "address_refusal", lambda *a: None)  # "broken": everything allowed
    with pytest.raises(F.FetchRefused, match="connection failed"):
        F.fetch("http://10.0.0.1:9/x.png", F.FetchLimits(connect_timeout=1, total_timeout=2))
    seen = netguard.take()
    assert len(seen) == 1 and "('10.0.0.1', 9)" in seen[0]


# -- issue 22: one deadline over everything, header limits, malformed answers ---------------------------------------

def test_header_trickle_is_cut_at_the_total_deadline(site):
    """One header byte every 0.4 s: each read is quick, so only the deadline's watchdog can end it (it took 4.8 s
    with total_timeout=1 before); the stand-in sees its client go away, and serves the next request."""
    import time

    site.routes["/slow"] = Reply(header_trickle=0.4)
    site.routes["/ok.png"] = Reply(200, png_bytes(), {"Content-Type": "image/png"})
    t = time.monotonic()
    with pytest.raises(F.FetchRefused, match="total time limit of 1 s") as err:
        F.fetch(site.url + "/slow", loop(site, total_timeout=1.0, read_timeout=0.9))
    took = time.monotonic() - t
    assert 0.9 < took < 1.6, took
    assert err.value.kind == "timeout"
    assert F.fetch_image(site.url + "/ok.png", loop(site))[0].size == (16, 16)  # the stand-in still serves
    deadline = time.monotonic() + 3
    while not site.trickles_ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert site.trickles_ended, "the trickling connection was not closed"


def test_header_trickle_over_https_is_cut_too(monkeypatch):
    """The watchdog shuts the TCP socket under a TLS layer as well (a TLS handshake that never finishes)."""
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        t = time.monotonic()
        with pytest.raises(F.FetchRefused, match="total time limit of 1 s"):
            F.fetch(f"https://127.0.0.1:{port}/x", BASE.with_(total_timeout=1.0, read_timeout=5,
                                                               loopback_origins=(f"https://127.0.0.1:{port}",)))
        assert time.monotonic() - t < 1.6
    finally:
        listener.close()


def test_slow_dns_is_cut_at_the_total_deadline(monkeypatch):
    """getaddrinfo has no time limit of its own: the lookup runs in a worker that is abandoned at the deadline."""
    import time

    monkeypatch.delenv("EDITLAB_NETGUARD", raising=False)
    asked = []

    def slow(host, port):
        asked.append(host)
        time.sleep(4.0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(F, "_resolve", slow)
    t = time.monotonic()
    with pytest.raises(F.FetchRefused, match="did not resolve within the total time limit of 1 s") as err:
        F.fetch("http://slow-dns.example.com/a.png", BASE.with_(total_timeout=1.0))
    assert time.monotonic() - t < 1.5 and asked == ["slow-dns.example.com"] and err.value.kind == "timeout"


def test_a_100000_deep_json_answer_is_a_refusal(site):
    import time

    site.routes["/deep"] = Reply(200, "[" * 100_000, {"Content-Type": "application/json"})
    site.routes["/deep-closed"] = Reply(200, "[" * 100_000 + "]" * 100_000, {"Content-Type": "application/json"})
    site.routes["/deep-in-string"] = Reply(200, '{"a": "' + "[" * 100_000 + '"}', {"Content-Type":
                                                                                   "application/json"})
    t = time.monotonic()
    for path in ("/deep", "/deep-closed"):
        with pytest.raises(F.FetchRefused, match="nested deeper than 64 levels") as err:
            F.fetch_json(site.url + path, loop(site, total_timeout=2.0))
        assert err.value.kind == "answer"
    assert time.monotonic() - t < 2.0
    assert F.fetch_json(site.url + "/deep-in-string", loop(site)) == {"a": "[" * 100_000}  # brackets in a string


def test_json_answers_have_their_own_size_cap(site):
    site.routes["/big"] = Reply(200, "[" + "1," * 600_000 + "1]", {"Content-Type": "application/json"})
    with pytest.raises(F.FetchRefused, match="cap of 1000000 bytes"):
        F.fetch_json(site.url + "/big", loop(site, max_json_bytes=1_000_000))


def test_not_json_and_not_utf8_are_refusals(site):
    site.routes["/html"] = Reply(200, "<html>", {"Content-Type": "text/html"})
    site.routes["/latin"] = Reply(200, b'{"a": "\xe9"}', {"Content-Type": "application/json"})
    with pytest.raises(F.FetchRefused, match="not JSON"):
        F.fetch_json(site.url + "/html", loop(site))
    with pytest.raises(F.FetchRefused, match="not UTF-8"):
        F.fetch_json(site.url + "/latin", loop(site))


@pytest.mark.parametrize("count, size, why", [(200, 10, "limit"), (3, 40_000, "limit")])
def test_header_count_and_size_limits(site, count, size, why):
    headers = {f"X-H{i}": "v" * size for i in range(count)}
    site.routes["/h"] = Reply(200, b"{}", headers)
    with pytest.raises(F.FetchRefused, match=why) as err:
        F.fetch(site.url + "/h", loop(site))
    assert err.value.kind == "answer"


def test_compressed_bodies_are_refused(site):
    import gzip

    site.routes["/gz"] = Reply(200, gzip.compress(b"{}"), {"Content-Type": "application/json",
                                                          "Content-Encoding": "gzip"})
    with pytest.raises(F.FetchRefused, match="Content-Encoding 'gzip'"):
        F.fetch(site.url + "/gz", loop(site))
    assert site.requests[0]["headers"]["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM", "TGA"])
def test_only_the_five_image_formats_are_decoded(site, fmt):
    """Image.open is told the five formats: any other PIL plugin (TIFF, ICO, PPM, TGA ... and the ones that call
    out to other programs) never sees the bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, fmt)
    site.routes["/x"] = Reply(200, buf.getvalue(), {"Content-Type": "image/x-other"})
    with pytest.raises(F.FetchRefused, match="not an image in PNG, JPEG, WEBP, GIF, BMP"):
        F.fetch_image(site.url + "/x", loop(site))


def test_the_total_deadline_covers_every_redirect_hop(site):
    import time

    site.routes["/r"] = Reply(302, b"", {"Location": "/slow"}, delay=0.6)
    site.routes["/slow"] = Reply(200, png_bytes(), {"Content-Type": "image/png"}, delay=0.6)
    t = time.monotonic()
    with pytest.raises(F.FetchRefused, match="total time limit of 1 s"):
        F.fetch(site.url + "/r", loop(site, total_timeout=1.0, read_timeout=5))
    assert time.monotonic() - t < 1.5
