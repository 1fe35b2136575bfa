"""The address policy (models/netpolicy.py) as a table: every special-purpose block of the IANA IPv4 and IPv6
registries, cloud metadata addresses, and the IPv4-in-IPv6 forms, in the textual forms a URL can carry them (decimal,
octal, hex, short forms, full-width digits, IPv4-mapped, IPv4-compatible, 6to4, NAT64, zone ids). Each row goes
through the fetcher's own check (``checked_target``) with a resolver that fails the test if asked: an address is
judged from its text, refused before anything is dialled (the socket guard would fail the test otherwise).

The table runs a second time with every ``ipaddress`` flag that changed between Python patch releases
(``is_private``, ``is_global``, ``is_reserved`` ...) made to raise: the policy does not use them, so the answers are
those of Python 3.10 to 3.13 alike."""
import ipaddress

import pytest

from editlab.models import fetch as F
from editlab.models import netpolicy as P

REFUSED = [
    # IPv4 special-purpose registry, one or more per block
    ("0.0.0.0", "this network"), ("0.1.2.3", "this network"), ("10.0.0.1", "private"), ("10.255.255.255", "private"),
    ("100.64.0.1", "shared"), ("100.127.255.254", "shared"), ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"),
    ("169.254.1.1", "link-local"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.0.0.8", "IETF protocol assignment"), ("192.0.0.9", "IETF protocol assignment"),
    ("192.0.0.170", "IETF protocol assignment"), ("192.0.2.1", "documentation"), ("192.31.196.1", "AS112"),
    ("192.52.193.1", "AMT"), ("192.88.99.1", "6to4 relay"), ("192.168.1.1", "private"), ("192.175.48.1", "AS112"),
    ("198.18.0.1", "benchmarking"), ("198.19.255.255", "benchmarking"), ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"), ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "broadcast"),
    # cloud metadata
    ("169.254.169.254", "metadata"), ("169.254.170.2", "metadata"), ("192.0.0.192", "metadata"),
    ("100.100.100.200", "metadata"), ("[fd00:ec2::254]", "metadata"),
    # other spellings of 127.0.0.1 and 169.254.169.254 (as inet_aton and browsers read them)
    ("2130706433", "loopback"), ("0177.0.0.1", "loopback"), ("0x7f.0.0.1", "loopback"), ("0x7f000001", "loopback"),
    ("127.1", "loopback"), ("127.0.1", "loopback"), ("0177.1", "loopback"), ("017700000001", "loopback"),
    ("0x7f.1", "loopback"), ("127.0.0.1.", "loopback"), ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "loopback"),
    ("2852039166", "metadata"), ("0xa9fea9fe", "metadata"), ("0251.0376.0251.0376", "metadata"),
    ("169.254.43518", "metadata"), ("0", "this network"), ("10.1", "private"),
    # IPv6 special-purpose registry
    ("[::]", "unspecified"), ("[::1]", "loopback"), ("[0:0:0:0:0:0:0:1]", "loopback"),
    ("[fe80::1]", "link-local"), ("[fe80::1%25eth0]", "link-local"), ("[FE80::abcd%25lo]", "link-local"),
    ("[fec0::1]", "site-local"), ("[fc00::1]", "unique local"), ("[fd12:3456::1]", "unique local"),
    ("[ff02::1]", "multicast"), ("[ff05::2]", "multicast"), ("[100::1]", "discard"),
    ("[2001:db8::1]", "documentation"), ("[3fff::1]", "documentation"), ("[2001::1]", "IETF protocol"),
    ("[2001:2::1]", "IETF protocol"), ("[2001:20::1]", "IETF protocol"), ("[2620:4f:8000::1]", "AS112"),
    ("[5f00::1]", "SRv6"), ("[64:ff9b:1::1]", "local-use NAT64"), ("[4000::1]", "global unicast"),
    ("[e000::1]", "global unicast"),
    # IPv4 inside IPv6: mapped, compatible, 6to4, NAT64 forms of refused IPv4 addresses
    ("[::ffff:127.0.0.1]", "IPv4-mapped form of 127.0.0.1"), ("[::ffff:7f00:1]", "IPv4-mapped form of 127.0.0.1"),
    ("[0:0:0:0:0:ffff:7f00:1]", "IPv4-mapped"), ("[::ffff:169.254.169.254]", "metadata"),
    ("[::ffff:10.0.0.1]", "IPv4-mapped form of 10.0.0.1"), ("[::ffff:192.0.0.192]", "metadata"),
    ("[::127.0.0.1]", "IPv4-compatible form of 127.0.0.1"), ("[::10.0.0.1]", "IPv4-compatible"),
    ("[::93.184.216.34]", "IPv4-compatible"),  # deprecated: refused even for a public address
    ("[2002:7f00:1::]", "6to4 form of 127.0.0.1"), ("[2002:a00:1::]", "6to4 form of 10.0.0.1"),
    ("[2002:a9fe:a9fe::1]", "6to4 form of 169.254.169.254"), ("[2002:c000:c0::]", "6to4 form of 192.0.0.192"),
    ("[64:ff9b::127.0.0.1]", "NAT64 form of 127.0.0.1"), ("[64:ff9b::a00:1]", "NAT64 form of 10.0.0.1"),
    ("[64:ff9b::a9fe:a9fe]", "NAT64 form of 169.254.169.254"), ("[64:ff9b::c000:8]", "NAT64 form of 192.0.0.8"),
]
ACCEPTED = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "151.101.1.69", "0x5db8d822", "[2606:4700:4700::1111]",
            "[2a00:1450:4001:80b::200e]", "[::ffff:93.184.216.34]", "[64:ff9b::808:808]", "[2002:808:808::1]"]
CHANGED_FLAGS = ("is_private", "is_global", "is_reserved", "is_loopback", "is_link_local", "is_multicast",
                 "is_unspecified", "is_site_local")


@pytest.fixture
def no_resolver(monkeypatch):
    """The fetcher's resolver fails the test if asked; the loopback-only test switch is off, so what refuses is
    the policy itself."""
    monkeypatch.delenv("EDITLAB_NETGUARD", raising=False)

    def resolve(host, port):
        raise AssertionError(f"{host!r} was handed to the resolver")

    monkeypatch.setattr(F, "_resolve", resolve)


@pytest.fixture(params=["as shipped", "flags that changed raise"])
def flags(request, monkeypatch):
    if request.param != "as shipped":
        def boom(self):
            raise AssertionError("the policy read an ipaddress flag")
        for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network):
            for flag in CHANGED_FLAGS:
                if hasattr(cls, flag):
                    monkeypatch.setattr(cls, flag, property(boom))
    return request.param


def test_the_table_is_large_enough():
    assert len(REFUSED) >= 40 and len(ACCEPTED) >= 5
    hosts = [h for h, _ in REFUSED]
    assert len(set(hosts)) == len(hosts)


@pytest.mark.parametrize("host, why", REFUSED, ids=[h for h, _ in REFUSED])
def test_refused_without_dialling(host, why, no_resolver, flags):
    with pytest.raises(F.FetchRefused, match=why) as err:
        F.checked_target(f"http://{host}:8080/latest/meta-data/", F.FetchLimits())
    assert err.value.kind == "refused"


@pytest.mark.parametrize("host", ACCEPTED)
def test_public_addresses_are_accepted(host, no_resolver, flags):
    _, ip, port = F.checked_target(f"https://{host}/a.png", F.FetchLimits())  # checked only: nothing is dialled
    assert port == 443 and ipaddress.ip_address(ip)


@pytest.mark.parametrize("host", ["08.0.0.1", "1.2.3.4.5", "256.1.1.1", "1.2.3.256", "0x1.0x100.1.1", "foo.127",
                                  "example.0x7f", "[fe80::zz]", "4294967296"])
def test_hosts_that_look_numeric_but_are_no_address_are_refused(host, no_resolver):
    with pytest.raises(F.FetchRefused, match="not a valid"):
        F.checked_target(f"http://{host}/", F.FetchLimits())


def test_the_two_exceptions_are_narrow(flags):
    loop, priv = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.1")
    assert P.refusal(loop, allow_loopback=True) is None and P.refusal(priv, allow_private=True) is None
    assert P.refusal(ipaddress.ip_address("::1"), allow_loopback=True) is None
    assert P.refusal(ipaddress.ip_address("fd12::1"), allow_private=True) is None
    # never: metadata, link-local, this network, the 6to4/NAT64 forms of loopback, loopback under allow_private
    for text in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.1.1", "0.0.0.0", "2002:7f00:1::",
                 "64:ff9b::7f00:1", "192.0.0.192"):
        ip = ipaddress.ip_address(text)
        assert P.refusal(ip, allow_loopback=True, allow_private=True), text
    assert P.refusal(loop, allow_private=True) and P.refusal(priv, allow_loopback=True)


def test_names_go_to_the_resolver_and_every_address_is_checked(monkeypatch):
    """A name resolving to one public and one private address is refused (not: the first that looks public)."""
    import socket

    monkeypatch.delenv("EDITLAB_NETGUARD", raising=False)
    monkeypatch.setattr(F, "_resolve", lambda host, port: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", port, 0, 2))])
    with pytest.raises(F.FetchRefused, match="resolves to fe80::1, a link-local address"):
        F.checked_target("http://two-faced.example.com/", F.FetchLimits())
