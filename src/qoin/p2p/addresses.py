"""Peer addresses: hosts, ``host:port`` and ``qoin1…@host:port`` entries, bootnode lists.

A :class:`PeerAddress` is ``host:port`` (IPv4 or a DNS name) or ``[v6]:port``, optionally prefixed
by the node id expected there (``qoin1…@127.0.0.1:9000``; the node id is the bech32m address of
the node's identity key, ``SecureChannel.peer_id``). Hosts are normalised (IPv6 compressed,
IPv4-mapped IPv6 written as IPv4, names lower-cased) so that one host has one spelling.
:func:`parse_bootnodes` reads a comma- or whitespace-separated list. :func:`host_key` is what a
host ban covers (an IPv4 address, an IPv6 /64). Every bad input raises :class:`PeerAddressError`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from qoin.crypto.address import Address, AddressError
from qoin.errors import QoinError

IPV6_BAN_PREFIX: Final = 64
"""IPv6 host bans cover this prefix length."""

_MAX_PORT: Final = 65_535
_MAX_HOSTNAME: Final = 253
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_BOOTNODE_SEPARATORS: Final = re.compile(r"[,\s]+")

Endpoint = tuple[str, int]
"""A normalised ``(host, port)``: what identifies an address regardless of its node id."""


class PeerAddressError(QoinError):
    """A malformed peer address, host or bootnode list."""


def normalize_host(host: str) -> str:
    """The canonical spelling of ``host``: an IP address or a DNS name.

    IPv4 is dotted decimal without leading zeros; IPv6 is compressed lower case, and an
    IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, what a dual-stack socket reports for an IPv4
    peer) becomes its IPv4 address. A name is lower-cased, without a trailing dot, and must be
    RFC 1123 labels (letters, digits, inner hyphens; at most 63 characters each, 253 in all) whose
    last label is not all digits, so that a mistyped IPv4 address is an error, not a name.
    Raises :class:`PeerAddressError`.
    """
    if not isinstance(host, str) or not host:
        raise PeerAddressError("empty host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ip)
    if ":" in host or "%" in host:
        raise PeerAddressError(f"invalid IPv6 address {host!r}")
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if (
        len(name) > _MAX_HOSTNAME
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        if all(label.isdigit() for label in host.split(".")):
            raise PeerAddressError(f"invalid IPv4 address {host!r}")
        raise PeerAddressError(f"invalid host name {host!r}")
    return name


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    canonical = normalize_host(host)
    if canonical == "localhost":
        return True
    try:
        return ipaddress.ip_address(canonical).is_loopback
    except ValueError:
        return False


def host_key(host: str) -> str:
    """What a host ban is keyed by: the IPv4 address, the IPv6 /64 (``2001:db8::/64``), or the name.

    An IPv6 host can pick any address in its /64 at will (privacy extensions), so banning one
    address of it would not stop it. Raises :class:`PeerAddressError`.
    """
    canonical = normalize_host(host)
    try:
        ip = ipaddress.ip_address(canonical)
    except ValueError:
        return canonical
    if isinstance(ip, ipaddress.IPv6Address):
        bare = ipaddress.IPv6Address(ip.packed)  # without a scope id
        return str(ipaddress.IPv6Network((bare, IPV6_BAN_PREFIX), strict=False))
    return canonical


def parse_host_key(text: str) -> str:
    """Check that ``text`` is a :func:`host_key` as written, and return it."""
    if "/" in text:
        try:
            network = ipaddress.IPv6Network(text, strict=True)
        except ValueError:
            raise PeerAddressError(f"invalid host key {text!r}") from None
        if network.prefixlen != IPV6_BAN_PREFIX:
            raise PeerAddressError(f"host key {text!r} is not an IPv6 /{IPV6_BAN_PREFIX}")
        key = str(network)
    else:
        key = host_key(text)
    if key != text:
        raise PeerAddressError(f"host key {text!r} is not canonical (expected {key!r})")
    return key


def _parse_port(text: str, whole: str) -> int:
    if not _PORT_RE.fullmatch(text):
        raise PeerAddressError(f"invalid port {text!r} in {whole!r}")
    port = int(text)
    if not 1 <= port <= _MAX_PORT:
        raise PeerAddressError(f"port {port} out of range 1…{_MAX_PORT} in {whole!r}")
    return port


def _split_host_port(text: str) -> tuple[str, str]:
    """Split ``host:port`` or ``[v6]:port`` into host and port text (not yet validated)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise PeerAddressError(f"missing ']' in {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            raise PeerAddressError(f"missing ':port' after ']' in {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise PeerAddressError(f"only IPv6 addresses go in brackets, got {text!r}") from None
        return host, rest[1:]
    colons = text.count(":")
    if colons == 0:
        raise PeerAddressError(f"missing ':port' in {text!r}")
    if colons > 1:
        raise PeerAddressError(f"write IPv6 addresses in brackets, as [v6]:port, got {text!r}")
    host, _, port = text.partition(":")
    return host, port


@dataclass(frozen=True)
class PeerAddress:
    """Where a node listens: ``host`` and ``port``, and the node id expected there, if known.

    Text form: ``host:port``, ``[v6]:port``, optionally prefixed ``qoin1…@``. The host is
    normalised on construction (:func:`normalize_host`), so equal addresses compare equal; the
    port is 1…65535. Raises :class:`PeerAddressError`.
    """

    host: str
    port: int
    node_id: Address | None = None
    """The identity the node at this address must prove (``expected_peer`` for ``connect``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool):
            raise PeerAddressError(f"a port is an integer, got {self.port!r}")
        if not 1 <= self.port <= _MAX_PORT:
            raise PeerAddressError(f"port {self.port} out of range 1…{_MAX_PORT}")
        if self.node_id is not None and not isinstance(self.node_id, Address):
            raise PeerAddressError(f"a node id is an Address, got {self.node_id!r}")
        object.__setattr__(self, "host", normalize_host(self.host))

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        """Parse ``[qoin1…@]host:port`` or ``[qoin1…@][v6]:port`` (surrounding blanks ignored)."""
        if not isinstance(text, str):
            raise PeerAddressError(f"a peer address is text, got {text!r}")
        whole = text.strip()
        if not whole:
            raise PeerAddressError("empty peer address")
        node_id: Address | None = None
        rest = whole
        if "@" in whole:
            id_text, _, rest = whole.partition("@")
            if not id_text:
                raise PeerAddressError(f"missing node id before '@' in {whole!r}")
            try:
                node_id = Address.from_text(id_text)
            except AddressError as exc:
                raise PeerAddressError(f"invalid node id in {whole!r}: {exc}") from None
        host, port_text = _split_host_port(rest)
        port = _parse_port(port_text, whole)
        try:
            return cls(host, port, node_id)
        except PeerAddressError as exc:
            raise PeerAddressError(f"invalid peer address {whole!r}: {exc}") from None

    @property
    def endpoint(self) -> Endpoint:
        """``(host, port)``, the address without its node id."""
        return (self.host, self.port)

    def with_node_id(self, node_id: Address | None) -> PeerAddress:
        """This address with another expected node id (or none)."""
        return PeerAddress(self.host, self.port, node_id)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = "" if self.node_id is None else f"{self.node_id}@"
        return f"{prefix}{host}:{self.port}"


def parse_bootnodes(entries: str | Iterable[str]) -> tuple[PeerAddress, ...]:
    """Parse a bootnode list: one string separated by commas and/or white space, or strings.

    Blank entries are skipped and exact repeats dropped (first kept, order preserved); one
    ``host:port`` listed with two different node ids is an error. Each error names the entry by
    its position (from 1). Raises :class:`PeerAddressError`.
    """
    if isinstance(entries, str):
        items = [item for item in _BOOTNODE_SEPARATORS.split(entries) if item]
    else:
        items = [item.strip() for item in entries]
    result: dict[Endpoint, PeerAddress] = {}
    for position, item in enumerate(items, start=1):
        if not item:
            continue
        try:
            address = PeerAddress.parse(item)
        except PeerAddressError as exc:
            raise PeerAddressError(f"bootnode {position}: {exc}") from None
        previous = result.get(address.endpoint)
        if previous is None:
            result[address.endpoint] = address
        elif previous != address:
            raise PeerAddressError(
                f"bootnode {position}: {item!r} conflicts with earlier {str(previous)!r}"
            )
    return tuple(result.values())
