"""The client side of the ``storage-market`` actor: its records as dataclasses, its views through
``qoin_call``, its events, and the messages providers and clients sign (docs/spec/storage.md §4).

The money rules and the acceptance message are the actor's own functions
(:mod:`qoin.actors.storage_market`), re-exported here so a client computes exactly what the actor
checks. Decoders are strict: a view answer or an event of the wrong shape is a
:class:`MarketError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from qoin.actors.storage_market import (
    EVENT_NAMES,
    GIB,
    ShardState,
    Totals,
    acceptance_message,
    shard_collateral,
    shard_price,
)
from qoin.crypto.address import Address
from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.execution.abi import Value
from qoin.execution.account import STORAGE_MARKET_ADDRESS
from qoin.rpc import actorview
from qoin.rpc.actorview import ActorEvents, ActorView, MarketError, ViewRecords
from qoin.storage.params import StorageParams, StorageParamsError

STORAGE_MARKET = STORAGE_MARKET_ADDRESS
"""Where the actor lives."""
TAG_UPLOAD = b"QOIN/storage/upload/v1"
"""Domain tag of a client's upload authorization."""
MAX_ASKS = 100_000
"""The most asks :meth:`MarketView.asks` collects (a bound on what a node can make us hold)."""

__all__ = [
    "EVENT_NAMES",
    "GIB",
    "STORAGE_MARKET",
    "AskInfo",
    "BidInfo",
    "DealInfo",
    "MarketError",
    "MarketView",
    "ShardInfo",
    "ShardState",
    "Totals",
    "acceptance_message",
    "decode_event",
    "event_topic",
    "proof_item",
    "shard_collateral",
    "shard_price",
    "upload_message",
]


def upload_message(chain_id: int, deal_id: int, shard: int, root: bytes) -> bytes:
    """The message a client signs to upload shard ``shard`` of deal ``deal_id`` to its provider:
    ``tagged_hash("QOIN/storage/upload/v1", chain_id (8) || deal (8) || shard (1) || root)``."""
    return tagged_hash(
        TAG_UPLOAD,
        chain_id.to_bytes(8, "big"),
        deal_id.to_bytes(8, "big"),
        shard.to_bytes(1, "big"),
        root,
    )


# -- strict field readers ---------------------------------------------------------------------


_uint = actorview.uint
_bytes = actorview.raw_bytes
_address = actorview.address
_optional_address = actorview.optional_address
_list = actorview.value_list
_decoded = actorview.decoded


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AskInfo:
    """A provider's ask (view ``get_ask``)."""

    provider: Address
    """The provider."""
    capacity: int
    """Bytes it offers."""
    used: int
    """Bytes its shards take."""
    price: int
    """Shor per GiB per period."""
    collateral: int
    """Shor per GiB locked per shard."""
    retrieval_price: int
    """Shor per GiB served."""
    endpoint: str
    """``host:port`` of its HTTP API."""
    kem_key: bytes
    """Its ML-KEM-768 encapsulation key."""
    free_collateral: int
    """Collateral not locked."""
    locked_collateral: int
    """Collateral locked in shards."""
    active: bool
    """Whether it is in the book."""

    @classmethod
    def from_value(cls, value: Value) -> AskInfo:
        """From the view's ``list(provider, capacity, ..., active)``."""
        fields = _list(value, "an ask", 11)
        endpoint, active = fields[6], fields[10]
        if not isinstance(endpoint, str) or not isinstance(active, bool):
            raise MarketError("an ask's endpoint is a string and its active flag a bool")
        capacity, used, price, collateral, retrieval = (
            _uint(fields[i], "an ask number") for i in range(1, 6)
        )
        return cls(
            _address(fields[0], "provider"),
            capacity,
            used,
            price,
            collateral,
            retrieval,
            endpoint,
            _bytes(fields[7], "kem_key"),
            _uint(fields[8], "free_collateral"),
            _uint(fields[9], "locked_collateral"),
            active,
        )


@dataclass(frozen=True)
class BidInfo:
    """An open bid (view ``get_bid``)."""

    bid_id: int
    """Its id."""
    client: Address
    """Who placed it."""
    cid: bytes
    """The content id."""
    size: int
    """Bytes of the file."""
    shard_size: int
    """Bytes per shard."""
    k: int
    """Shards that rebuild the file."""
    roots: tuple[bytes, ...]
    """The shard roots."""
    duration: int
    """Periods asked for."""
    max_price: int
    """Highest price, Shor per GiB per period."""
    deadline: int
    """Height from which it can no longer become a deal."""
    deposit: int
    """Shor it holds."""
    flags: int
    """Client flags (bit 0: encrypted)."""

    @property
    def n(self) -> int:
        """Shards of the file."""
        return len(self.roots)

    @classmethod
    def from_value(cls, bid_id: int, value: Value) -> BidInfo:
        """From the view's ``list(client, cid, size, shard_size, k, roots, ...)``."""
        fields = _list(value, "a bid", 11)
        roots = tuple(_bytes(r, "a shard root", HASH_SIZE) for r in _list(fields[5], "roots"))
        return cls(
            bid_id,
            _address(fields[0], "client"),
            _bytes(fields[1], "cid", HASH_SIZE),
            _uint(fields[2], "size"),
            _uint(fields[3], "shard_size"),
            _uint(fields[4], "k"),
            roots,
            *(_uint(fields[i], "a bid number") for i in range(6, 11)),
        )


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a deal (in view ``get_deal``)."""

    index: int
    """Its index in the deal."""
    provider: Address | None
    """Who holds it (None while re-listed)."""
    root: bytes
    """Its committed root."""
    state: ShardState
    """PENDING, ACTIVE or RELISTED."""
    misses: int
    """Consecutive periods missed."""
    first_due: int
    """The first period its provider must prove."""
    last_proved: int
    """The last period proved, plus one (0 if never)."""
    price: int
    """Shor per period paid for it."""
    collateral: int
    """Its provider's collateral still locked."""
    bonus: int
    """Repair bonus waiting for the next first proof."""
    leaver: Address | None
    """A provider that left it and waits for its collateral."""

    @classmethod
    def from_value(cls, value: Value) -> ShardInfo:
        """From ``list(index, provider, root, state, misses, ...)``."""
        fields = _list(value, "a shard", 11)
        state = _uint(fields[3], "state")
        if state not in {s.value for s in ShardState}:
            raise MarketError(f"unknown shard state {state}")
        misses, first_due, last_proved, price, collateral, bonus = (
            _uint(fields[i], "a shard number") for i in range(4, 10)
        )
        return cls(
            _uint(fields[0], "index"),
            _optional_address(fields[1], "provider"),
            _bytes(fields[2], "root", HASH_SIZE),
            ShardState(state),
            misses,
            first_due,
            last_proved,
            price,
            collateral,
            bonus,
            _optional_address(fields[10], "leaver"),
        )


@dataclass(frozen=True)
class DealInfo:
    """An open deal (view ``get_deal``)."""

    deal_id: int
    """Its id (the bid's)."""
    client: Address
    """Who pays."""
    cid: bytes
    """The content id."""
    size: int
    """Bytes of the file."""
    shard_size: int
    """Bytes per shard."""
    k: int
    """Shards that rebuild the file."""
    flags: int
    """Client flags."""
    first: int
    """The first period paid for."""
    end: int
    """The period after the last one."""
    escrow: int
    """Shor held for periods not yet paid or refunded."""
    shards: tuple[ShardInfo, ...]
    """Its shards, in order."""

    @classmethod
    def from_value(cls, deal_id: int, value: Value) -> DealInfo:
        """From the view's ``list(client, cid, size, ..., escrow, shards)``."""
        fields = _list(value, "a deal", 10)
        shards = tuple(ShardInfo.from_value(s) for s in _list(fields[9], "shards"))
        if [s.index for s in shards] != list(range(len(shards))):
            raise MarketError("a deal's shards are not listed in order")
        size, shard_size, k, flags, first, end, escrow = (
            _uint(fields[i], "a deal number") for i in range(2, 9)
        )
        return cls(
            deal_id,
            _address(fields[0], "client"),
            _bytes(fields[1], "cid", HASH_SIZE),
            size,
            shard_size,
            k,
            flags,
            first,
            end,
            escrow,
            shards,
        )


def totals_from_value(value: Value) -> Totals:
    """The view ``totals``' ``list(escrow, collateral, bonus, burned)``."""
    return Totals(*actorview.uints(value, "totals", 4, "a total"))


def params_from_value(value: Value) -> StorageParams:
    """The view ``params``' list of the ten parameters."""
    values = actorview.uints(value, "params", 10, "a parameter")
    try:
        return StorageParams(*values)
    except StorageParamsError as exc:
        raise MarketError(str(exc)) from None


# -- views ------------------------------------------------------------------------------------


class MarketView(ActorView[StorageParams, AskInfo, BidInfo, DealInfo, Totals]):
    """The storage market's views through ``qoin_call`` (those of every market are
    :class:`~qoin.rpc.actorview.ActorView`'s), with ``deal_of`` and ``get_beacon``: a missing
    record answers None, a malformed answer is a :class:`MarketError`."""

    ACTOR: ClassVar[Address] = STORAGE_MARKET
    records = ViewRecords(
        params=params_from_value,
        ask=AskInfo.from_value,
        bid=BidInfo.from_value,
        deal=DealInfo.from_value,
        totals=totals_from_value,
    )
    MAX_LISTED: ClassVar[int] = MAX_ASKS

    def deal_of(self, cid: bytes) -> int | None:
        """The open deal storing ``cid``, or None."""
        found = self._found("deal_of", [cid])
        return None if found is None else _uint(found, "a deal id")

    def get_beacon(self, period: int) -> bytes | None:
        """The beacon of ``period``, or None if not recorded."""
        found = self._found("get_beacon", [period])
        return None if found is None else _bytes(found, "a beacon", HASH_SIZE)


# -- proofs and events --------------------------------------------------------------------------


def proof_item(deal: int, shard: int, leaves: Sequence[bytes], paths: bytes) -> Value:
    """One item of ``prove``: ``list(deal, shard, list(leaves), paths)``."""
    return (deal, shard, tuple(leaves), paths)


_EVENTS = ActorEvents(STORAGE_MARKET, EVENT_NAMES, "storage market")


def event_topic(name: str) -> bytes:
    """Topic 0 of the event ``name`` (SHA3-256 of the name)."""
    return _EVENTS.topic(name)


def decode_event(event_json: Mapping[str, Any]) -> tuple[str, Value] | None:
    """The name and decoded data of a storage-market event or log on the wire (``address``,
    ``topics``, ``data`` in hex); None if another account emitted it or its topic 0 names no
    event of the actor; :class:`MarketError` if it is malformed."""
    return _EVENTS.decode(event_json)
