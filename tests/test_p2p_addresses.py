"""Peer addresses: hosts, ``[qoin1…@]host:port`` entries and bootnode lists."""

from __future__ import annotations

import pytest

from qoin.crypto.address import Address
from qoin.p2p.addresses import (
    PeerAddress,
    PeerAddressError,
    host_key,
    is_loopback,
    normalize_host,
    parse_bootnodes,
)

LOW = Address(bytes([0x10]) * 32)
HIGH = Address(bytes([0xF0]) * 32)


def addr(host: str, port: int = 9000, node_id: Address | None = None) -> PeerAddress:
    return PeerAddress(host, port, node_id)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9000", "127.0.0.1", 9000),
        ("  10.0.0.7:1 ", "10.0.0.7", 1),
        ("[::1]:65535", "::1", 65535),
        ("[2001:DB8:0:0::1]:30303", "2001:db8::1", 30303),
        ("[::ffff:192.0.2.1]:9000", "192.0.2.1", 9000),
        ("Node-1.Example.org.:9000", "node-1.example.org", 9000),
        ("localhost:9000", "localhost", 9000),
    ],
)
def test_address_parse_normalises(text: str, host: str, port: int) -> None:
    parsed = PeerAddress.parse(text)
    assert (parsed.host, parsed.port, parsed.node_id) == (host, port, None)
    assert PeerAddress.parse(str(parsed)) == parsed


def test_address_format() -> None:
    assert str(addr("127.0.0.1")) == "127.0.0.1:9000"
    assert str(addr("::1", 7)) == "[::1]:7"
    with_id = addr("::1", 7, LOW)
    assert str(with_id) == f"{LOW}@[::1]:7"
    assert PeerAddress.parse(str(with_id)) == with_id
    assert with_id.endpoint == ("::1", 7)
    assert with_id.with_node_id(None) == addr("::1", 7)


def test_address_with_node_id() -> None:
    text = f"{HIGH}@192.0.2.5:9000"
    parsed = PeerAddress.parse(text)
    assert parsed.node_id == HIGH
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("127.0.0.1", "missing ':port'"),
        ("127.0.0.1:", "invalid port"),
        ("127.0.0.1:0", "out of range"),
        ("127.0.0.1:65536", "out of range"),
        ("127.0.0.1:+80", "invalid port"),
        ("127.0.0.1:\uff18\uff10", "invalid port"),  # full-width digits
        ("::1:9000", "brackets"),
        ("[::1:9000", "missing ']'"),
        ("[::1]9000", "missing ':port'"),
        ("[127.0.0.1]:9000", "only IPv6"),
        ("256.1.1.1:9000", "invalid IPv4"),
        ("1.2.3.04:9000", "invalid IPv4"),
        ("bad_host:9000", "invalid host name"),
        ("-bad.example:9000", "invalid host name"),
        ("@127.0.0.1:9000", "missing node id"),
        ("qoin1notanaddress@127.0.0.1:9000", "invalid node id"),
    ],
)
def test_address_parse_errors(text: str, message: str) -> None:
    with pytest.raises(PeerAddressError, match=message):
        PeerAddress.parse(text)


def test_address_constructor_validates() -> None:
    with pytest.raises(PeerAddressError):
        PeerAddress("127.0.0.1", 0)
    with pytest.raises(PeerAddressError):
        PeerAddress("127.0.0.1", True)
    with pytest.raises(PeerAddressError):
        PeerAddress("", 1)
    assert PeerAddress("::FFFF:10.1.2.3", 5) == PeerAddress("10.1.2.3", 5)


def test_hosts() -> None:
    assert normalize_host("::FFFF:10.1.2.3") == "10.1.2.3"
    assert host_key("203.0.113.9") == "203.0.113.9"
    assert host_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert host_key("2001:db8:1:2:bbbb::7") == host_key("2001:db8:1:2:aaaa::1")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("203.0.113.9")


def test_bootnode_list() -> None:
    text = f" {LOW}@192.0.2.1:9000, 192.0.2.2:9000\n[2001:db8::1]:9000,,192.0.2.2:9000 "
    boots = parse_bootnodes(text)
    assert boots == (
        addr("192.0.2.1", node_id=LOW),
        addr("192.0.2.2"),
        addr("2001:db8::1"),
    )
    assert parse_bootnodes(["192.0.2.1:1", " ", "192.0.2.1:1"]) == (addr("192.0.2.1", 1),)
    assert parse_bootnodes("") == ()
    with pytest.raises(PeerAddressError, match=r"bootnode 2: .*missing ':port'"):
        parse_bootnodes("192.0.2.1:1, 192.0.2.2")
    with pytest.raises(PeerAddressError, match=r"bootnode 2: .*conflicts"):
        parse_bootnodes(f"{LOW}@192.0.2.1:1 {HIGH}@192.0.2.1:1")
