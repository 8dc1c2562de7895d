"""The client side of a market actor, as both markets (:mod:`qoin.storage.market`,
:mod:`qoin.compute.market`) read theirs: views through ``qoin_call`` on a node's user RPC, strict
readers of the values they answer, and the actor's events on the wire.

Readers are strict: a view answer or an event of the wrong shape is a :class:`MarketError`, whose
message names the field (``what``) that is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

from qoin.actors.base import topic
from qoin.actors.records import MAX_PAGE, ZERO_ADDRESS
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridPublicKey
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.execution.abi import Value, decode_value
from qoin.rpc.client import RpcClient
from qoin.wallet import CallReverted, query

T = TypeVar("T")
P = TypeVar("P")
A = TypeVar("A")
B = TypeVar("B")
D = TypeVar("D")
TT = TypeVar("TT")


class MarketError(QoinError):
    """An answer of a market actor (a view or an event) that does not have the documented shape."""


# -- strict field readers -----------------------------------------------------------------------


def uint(value: Value, what: str) -> int:
    """``value`` as an unsigned integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MarketError(f"{what} must be a uint, got {type(value).__name__}")
    return value


def raw_bytes(value: Value, what: str, size: int | None = None) -> bytes:
    """``value`` as a byte string (of ``size`` bytes if given)."""
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise MarketError(f"{what} must be {size or 'some'} bytes")
    return value


def address(value: Value, what: str) -> Address:
    """``value`` as an address."""
    if not isinstance(value, Address):
        raise MarketError(f"{what} must be an address, got {type(value).__name__}")
    return value


def optional_address(value: Value, what: str) -> Address | None:
    """``value`` as an address, None for the zero address."""
    found = address(value, what)
    return None if found == ZERO_ADDRESS else found


def value_list(value: Value, what: str, length: int | None = None) -> tuple[Value, ...]:
    """``value`` as a list (of ``length`` values if given)."""
    if not isinstance(value, tuple) or (length is not None and len(value) != length):
        raise MarketError(f"{what} must be a list of {length or 'some'} values")
    return value


def text(value: Value, what: str) -> str:
    """``value`` as a string."""
    if not isinstance(value, str):
        raise MarketError(f"{what} must be a string, got {type(value).__name__}")
    return value


def flag(value: Value, what: str) -> bool:
    """``value`` as a bool."""
    if not isinstance(value, bool):
        raise MarketError(f"{what} must be a bool, got {type(value).__name__}")
    return value


def addresses(value: Value, what: str) -> tuple[Address, ...]:
    """``value`` as a list of addresses (``what`` names one of them)."""
    return tuple(address(a, what) for a in value_list(value, what))


def member(value: Value, what: str, members: Mapping[int, T]) -> T:
    """The member of an enumeration (``members`` by number) that ``value`` numbers."""
    raw = uint(value, what)
    if raw not in members:
        raise MarketError(f"unknown {what} {raw}")
    return members[raw]


def decoded(data: bytes, what: str) -> Value:
    """``data`` as one ABI value."""
    try:
        return decode_value(data)
    except DecodeError as exc:
        raise MarketError(f"{what} is not one ABI value: {exc}") from None


def uints(value: Value, what: str, count: int, item: str) -> tuple[int, ...]:
    """``value`` as a list of ``count`` unsigned integers (``item`` names one)."""
    return tuple(uint(f, item) for f in value_list(value, what, count))


# -- views ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewRecords(Generic[P, A, B, D, TT]):
    """How a market's view answers become records."""

    params: Callable[[Value], P]
    """The answer of ``params()``."""
    ask: Callable[[Value], A]
    """An ask record (``get_ask``, ``asks``)."""
    bid: Callable[[int, Value], B]
    """A bid, by its id (``get_bid``)."""
    deal: Callable[[int, Value], D]
    """A deal, by its id (``get_deal``)."""
    totals: Callable[[Value], TT]
    """The answer of ``totals()``."""


class ActorView(Generic[P, A, B, D, TT]):
    """A market actor's views, read-only through ``qoin_call`` on a node's user RPC (subclasses
    name the actor in :attr:`ACTOR`, its records in :attr:`records`, and add their own views).
    Views that name a missing record answer None; a node that cannot be asked raises
    :class:`~qoin.wallet.WalletError`; a malformed answer :class:`MarketError`."""

    ACTOR: ClassVar[Address]
    """Where the actor lives."""
    records: ViewRecords[P, A, B, D, TT]
    """How its answers become records (set by the subclass)."""
    PAGE: ClassVar[int] = MAX_PAGE
    """Positions asked for per page of a paging view."""
    MAX_LISTED: ClassVar[int] = 100_000
    """The most records a paging view collects (a bound on what a node can make us hold)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.client = RpcClient(url, timeout=timeout)
        """The node's user RPC."""

    def close(self) -> None:
        """Close the connection."""
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _value(self, method: str, args: Sequence[Value] = ()) -> Value:
        return decoded(query(self.client, self.ACTOR, method, args), method)

    def _found(self, method: str, args: Sequence[Value]) -> Value | None:
        try:
            return self._value(method, args)
        except CallReverted as exc:
            if exc.status == "reverted":
                return None
            raise

    def _pages(self, method: str) -> list[Value]:
        """Every record of the paging view ``method(start, count)`` (all pages)."""
        found: list[Value] = []
        start = 0
        while True:
            page = value_list(self._value(method, [start, self.PAGE]), f"a page of {method}", 2)
            next_start = uint(page[0], "next_start")
            found.extend(value_list(page[1], method))
            if len(found) > self.MAX_LISTED:
                raise MarketError(f"more than {self.MAX_LISTED} {method}")
            if next_start == 0:
                return found
            if next_start <= start:
                raise MarketError(f"{method} page from {start} answered next_start {next_start}")
            start = next_start

    def params(self) -> P:
        """The market's parameters."""
        return self.records.params(self._value("params"))

    def get_ask(self, provider: Address) -> A | None:
        """A provider's ask (active or cancelled), or None."""
        found = self._found("get_ask", [provider])
        return None if found is None else self.records.ask(found)

    def asks(self) -> list[A]:
        """Every active ask, in posting order (all pages)."""
        return [self.records.ask(a) for a in self._pages("asks")]

    def get_bid(self, bid_id: int) -> B | None:
        """An open bid, or None."""
        found = self._found("get_bid", [bid_id])
        return None if found is None else self.records.bid(bid_id, found)

    def get_deal(self, deal_id: int) -> D | None:
        """An open deal, or None (never formed, or settled)."""
        found = self._found("get_deal", [deal_id])
        return None if found is None else self.records.deal(deal_id, found)

    def totals(self) -> TT:
        """Shor the actor holds, by purpose."""
        return self.records.totals(self._value("totals"))

    def get_key(self, provider: Address) -> HybridPublicKey | None:
        """The hybrid public key of a provider's ask, or None."""
        found = self._found("get_key", [provider])
        if found is None:
            return None
        try:
            return HybridPublicKey.decode(raw_bytes(found, "a public key"))
        except DecodeError as exc:
            raise MarketError(f"the public key of {provider} does not decode: {exc}") from None


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorEvents:
    """The events of one actor, as a node's RPC shows them."""

    actor: Address
    """Where the actor lives (it alone emits them)."""
    names: tuple[str, ...]
    """Every event it emits (topic 0 is SHA3-256 of the name)."""
    label: str
    """Names the actor in messages (``storage market``)."""
    _topics: Mapping[bytes, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_topics", {topic(name): name for name in self.names})

    def topic(self, name: str) -> bytes:
        """Topic 0 of the event ``name`` (SHA3-256 of the name)."""
        if name not in self.names:
            raise MarketError(f"the {self.label} has no event {name!r}")
        return topic(name)

    def decode(self, event_json: Mapping[str, Any]) -> tuple[str, Value] | None:
        """The name and decoded data of an event or log on the wire (``address``, ``topics``,
        ``data`` in hex); None if another account emitted it or its topic 0 names no event of
        the actor; :class:`MarketError` if it is malformed."""
        if event_json.get("address") != str(self.actor):
            return None
        topics, data = event_json.get("topics"), event_json.get("data")
        if not isinstance(topics, list) or not topics or not isinstance(data, str):
            raise MarketError(f"a {self.label} event has topics and data")
        try:
            name = self._topics.get(bytes.fromhex(str(topics[0])))
            raw = bytes.fromhex(data)
        except ValueError:
            raise MarketError(f"a {self.label} event's topics and data are hex") from None
        if name is None:
            return None
        return name, decoded(raw, f"the data of {name}")
