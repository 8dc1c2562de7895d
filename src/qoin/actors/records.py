"""What the market actors (``storage-market``, ``compute-market``) share: record codecs, the
working set of one call, ask-order paging, event emission and the handlers that are the same in
both.

The two markets keep the same storage layout for what they have in common (``totals``,
``counters``, ``A‖a`` asks, ``I‖a`` contacts, ``K‖a`` public keys, ``O‖position`` the posting
order, ``B‖bid`` bids, ``D‖deal`` deals; ids 8 bytes big-endian) and the same conventions
(:mod:`qoin.actors.base`): every helper here makes exactly the host calls the code it replaced
made, in the same order, so gas and encodings are those of the actors' specifications.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, replace
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

from qoin.actors.base import Handler, erase, load, no_value, store, topic
from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.crypto.hybrid import HybridPublicKey
from qoin.encoding.codec import NonCanonicalInteger, Reader, Writer
from qoin.errors import QoinError
from qoin.execution import gas as costs
from qoin.execution.abi import Value, encode_args, encode_value
from qoin.execution.cron import CRON_ADDRESS
from qoin.execution.vm import CallFailed, Context, Revert, check_args
from qoin.storage.params import VarintRecord, int_fields

KEM_KEY_SIZE = 1184
"""Bytes of an ML-KEM-768 encapsulation key."""
MAX_ENDPOINT = 255
"""Longest endpoint (``host:port``), in bytes."""
MAX_PAGE = 32
"""Most positions one paging call (``asks``, ``mediators``) looks at."""
PAGE_BYTES = 12 * 1024
"""A page stops before its records pass this many bytes (return data is 16 KiB)."""
ZERO_ADDRESS = Address(bytes(ADDRESS_SIZE))
"""Stands for "nobody" (no provider, no leaver, no mediator) in calls and views."""

TOTALS_KEY = b"totals"
COUNTERS_KEY = b"counters"
ASK_PREFIX = b"A"
INFO_PREFIX = b"I"
KEY_PREFIX = b"K"
ORDER_PREFIX = b"O"
BID_PREFIX = b"B"
DEAL_PREFIX = b"D"

ASK_CANCELLED = topic("AskCancelled")
BID_CANCELLED = topic("BidCancelled")
BID_EXPIRED = topic("BidExpired")

T = TypeVar("T")


# -- codecs -------------------------------------------------------------------------------------


def varints(writer: Writer, *values: int) -> Writer:
    """Write ``values`` as varints; the writer."""
    for value in values:
        writer.varint(value)
    return writer


def read_bool(reader: Reader) -> bool:
    """A flag byte, 0 or 1."""
    flag = reader.u8()
    if flag > 1:
        raise NonCanonicalInteger(f"a flag is 0 or 1, got {flag}")
    return flag == 1


def write_optional_address(writer: Writer, address: Address | None) -> Writer:
    """``0`` for None, else ``1 || address``."""
    if address is None:
        return writer.u8(0)
    return writer.u8(1).fixed(address.raw, ADDRESS_SIZE)


def read_optional_address(reader: Reader) -> Address | None:
    """Inverse of :func:`write_optional_address`."""
    flag = reader.u8()
    if flag > 1:
        raise NonCanonicalInteger(f"an optional address flag is 0 or 1, got {flag}")
    return Address(reader.fixed(ADDRESS_SIZE)) if flag else None


def read_text(reader: Reader, bound: int) -> str:
    """A string stored as ``varbytes`` of at most ``bound`` bytes of UTF-8."""
    raw = reader.var_bytes(bound)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise NonCanonicalInteger("a stored string is not UTF-8") from None


def read_enum(reader: Reader, kind: Callable[[int], T], what: str) -> T:
    """One byte naming a member of ``kind`` (an ``IntEnum``)."""
    raw = reader.u8()
    try:
        return kind(raw)
    except ValueError:
        raise NonCanonicalInteger(f"unknown {what} {raw}") from None


def encode_varint(value: int) -> bytes:
    """A record that is one varint."""
    return Writer().varint(value).bytes()


def decode_varint(data: bytes) -> int:
    """Inverse of :func:`encode_varint`."""
    reader = Reader(data)
    value = reader.varint()
    reader.finish()
    return value


def decode_address(data: bytes) -> Address:
    """A record that is one address (an order entry)."""
    if len(data) != ADDRESS_SIZE:
        raise NonCanonicalInteger(f"an address is {ADDRESS_SIZE} bytes")
    return Address(data)


@dataclass(frozen=True)
class MarketTotals(VarintRecord):
    """Shor a market actor holds, by purpose (subclasses name the purposes); the actor's balance
    is their sum."""

    MARKET = "market"
    """Names the market in the message of a broken state."""

    def moved_by(self, **deltas: int) -> Self:
        """These totals changed by the given amounts (by field name); :class:`CallFailed` if one
        goes negative (a broken state: never a caller's fault)."""
        after = replace(self, **{name: getattr(self, name) + d for name, d in deltas.items()})
        if min(after.values()) < 0:
            raise CallFailed(f"{self.MARKET} totals would go negative: {after}")
        return after


@dataclass(frozen=True)
class Contact:
    """How to reach a provider or a mediator (stored apart from its numbers)."""

    endpoint: str
    """``host:port`` of its API."""
    kem_key: bytes
    """Its ML-KEM-768 encapsulation key."""

    def encode(self) -> bytes:
        """``varbytes endpoint || kem_key``."""
        writer = Writer().var_bytes(self.endpoint.encode(), MAX_ENDPOINT)
        return writer.fixed(self.kem_key, KEM_KEY_SIZE).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        contact = cls(read_text(reader, MAX_ENDPOINT), reader.fixed(KEM_KEY_SIZE))
        reader.finish()
        return contact


# -- record keys --------------------------------------------------------------------------------


def record_id(number: int) -> bytes:
    """An id or position in a storage key: 8 bytes big-endian."""
    return number.to_bytes(8, "big")


def ask_key(provider: Address) -> bytes:
    """Storage key of a provider's ask."""
    return ASK_PREFIX + provider.raw


def bid_key(bid_id: int) -> bytes:
    """Storage key of a bid."""
    return BID_PREFIX + record_id(bid_id)


def deal_key(deal_id: int) -> bytes:
    """Storage key of a deal."""
    return DEAL_PREFIX + record_id(deal_id)


# -- the working set of one call ----------------------------------------------------------------


class Encodable(Protocol):
    """A record that encodes itself."""

    def encode(self) -> bytes:
        """Its stored bytes."""
        ...


class CollateralAsk(Encodable, Protocol):
    """What the shared handlers need of a market's ask (a frozen dataclass)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def free(self) -> int:
        """Collateral not locked (withdrawable)."""
        ...

    @property
    def active(self) -> bool:
        """Whether it is in the book."""
        ...


class MarketBid(Encodable, Protocol):
    """What the shared handlers need of a market's bid."""

    @property
    def client(self) -> Address:
        """Who placed it."""
        ...

    @property
    def deposit(self) -> int:
        """Shor it holds."""
        ...

    @property
    def subject(self) -> bytes:
        """The second topic of its events (what it is for)."""
        ...


class ParamsRecord(Protocol):
    """A market's parameters: a frozen dataclass of integer fields."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]


P = TypeVar("P", bound=ParamsRecord)
TT = TypeVar("TT", bound=MarketTotals)
CT = TypeVar("CT", bound=VarintRecord)
AT = TypeVar("AT", bound=CollateralAsk)
BT = TypeVar("BT", bound=MarketBid)
DT = TypeVar("DT", bound=Encodable)


@dataclass(frozen=True)
class MarketLayout(Generic[P, TT, CT, AT, BT, DT]):
    """A market's records, as its working set reads them."""

    params_key: bytes
    """Where the genesis parameters are stored."""
    params: Callable[[bytes], P]
    """Decodes them."""
    mainnet: P
    """The parameters when there is no record."""
    totals: type[TT]
    counters: type[CT]
    ask: Callable[[bytes], AT]
    bid: Callable[[bytes], BT]
    deal: Callable[[bytes], DT]
    part: str
    """What a provider holds in a deal (``shard``, ``replica``), for messages."""


class MarketBook(Generic[P, TT, CT, AT, BT, DT]):
    """What one call reads and changes: each record read once and written once (at
    :meth:`flush`), totals kept as one record, and one transfer per payee."""

    def __init__(self, ctx: Context, layout: MarketLayout[P, TT, CT, AT, BT, DT]) -> None:
        self.ctx = ctx
        self.layout = layout
        self._cache: dict[bytes, object] = {}
        self._dirty: dict[bytes, bytes] = {}
        self.payouts: dict[Address, int] = {}
        self._params: P | None = None

    @property
    def params(self) -> P:
        """The market's parameters (the genesis record; mainnet if there is none)."""
        if self._params is None:
            self._params = (
                load(self.ctx, self.layout.params_key, self.layout.params) or self.layout.mainnet
            )
        return self._params

    def get(self, key: bytes, decode: Callable[[bytes], T]) -> T | None:
        """The record under ``key`` (None if absent), read once per call."""
        if key not in self._cache:
            self._cache[key] = load(self.ctx, key, decode)
        return cast("T | None", self._cache[key])

    def put(self, key: bytes, record: T, encode: Callable[[T], bytes]) -> None:
        """Set the record under ``key`` (written at :meth:`flush`)."""
        self._cache[key] = record
        self._dirty[key] = encode(record)

    def put_record(self, key: bytes, record: Encodable) -> None:
        """Set the record under ``key`` to one that encodes itself."""
        self.put(key, record, type(record).encode)

    def drop(self, key: bytes) -> None:
        """Delete the record under ``key`` (at :meth:`flush`)."""
        self._cache[key] = None
        self._dirty[key] = b""

    @property
    def totals(self) -> TT:
        """The money totals."""
        return self.get(TOTALS_KEY, self.layout.totals.decode) or self.layout.totals()

    def move_by(self, **deltas: int) -> None:
        """Change the totals by the given amounts (by field name: see the market's totals)."""
        self.put_record(TOTALS_KEY, self.totals.moved_by(**deltas))

    @property
    def counters(self) -> CT:
        """The sequence numbers."""
        return self.get(COUNTERS_KEY, self.layout.counters.decode) or self.layout.counters()

    def set_counters(self, counters: CT) -> None:
        """Replace the sequence numbers."""
        self.put_record(COUNTERS_KEY, counters)

    def count(self, counter: str) -> int:
        """Add one to the counter field ``counter``; its value before."""
        counters = self.counters
        before = cast(int, getattr(counters, counter))
        self.set_counters(replace(counters, **{counter: before + 1}))
        return before

    def enlist(self, prefix: bytes, counter: str) -> int:
        """Give the caller the next position of an order (``prefix‖position``, counted by the
        counter field ``counter``); the position."""
        position = self.count(counter)
        store(self.ctx, prefix + record_id(position), self.ctx.caller.raw)
        return position

    def pay(self, to: Address, amount: int) -> None:
        """Send ``amount`` to ``to`` at :meth:`flush` (the totals are the caller's to move)."""
        if amount:
            self.payouts[to] = self.payouts.get(to, 0) + amount

    def ask(self, provider: Address) -> AT | None:
        """A provider's ask."""
        return self.get(ask_key(provider), self.layout.ask)

    def held_ask(self, provider: Address) -> AT:
        """The ask of a provider that holds collateral here (:class:`CallFailed` if missing)."""
        found = self.ask(provider)
        if found is None:
            raise CallFailed(f"no ask record for {provider}, which holds a {self.layout.part}")
        return found

    def own_ask(self) -> AT:
        """The caller's ask; :class:`Revert` if it has none."""
        found = self.ask(self.ctx.caller)
        if found is None:
            raise Revert(f"{self.ctx.caller} has no ask")
        return found

    def set_ask(self, provider: Address, record: AT) -> None:
        """Replace a provider's ask."""
        self.put_record(ask_key(provider), record)

    def bid(self, bid_id: int) -> BT | None:
        """An open bid."""
        return self.get(bid_key(bid_id), self.layout.bid)

    def open_bid(self, bid_id: int) -> BT:
        """The caller's open bid; :class:`Revert` if there is none or it is another's."""
        found = self.bid(bid_id)
        if found is None:
            raise Revert(f"bid {bid_id}: no open bid (never placed, cancelled, expired or a deal)")
        if found.client != self.ctx.caller:
            raise Revert(f"bid {bid_id}: only its client {found.client} may do this")
        return found

    def place_bid(self, placed: BT, deadline: int) -> int:
        """Store ``placed`` under the next bid id (counter ``last_bid``) holding the call's value,
        write everything, and schedule its expiry at ``deadline``; the id."""
        bid_id = self.count("last_bid") + 1
        self.put_record(bid_key(bid_id), placed)
        self.move_by(escrow=self.ctx.value)
        self.flush()
        self.ctx.schedule(deadline, "cron_expire_bid", encode_args([bid_id]))
        return bid_id

    def refund_bid(self, bid_id: int, found: BT) -> None:
        """Delete a bid and send its deposit back to its client."""
        self.drop(bid_key(bid_id))
        self.move_by(escrow=-found.deposit)
        self.pay(found.client, found.deposit)

    def deal(self, deal_id: int) -> DT:
        """An open deal; :class:`Revert` if there is none."""
        found = self.get(deal_key(deal_id), self.layout.deal)
        if found is None:
            raise Revert(f"deal {deal_id}: no open deal (never formed, or settled)")
        return found

    def set_deal(self, deal_id: int, record: DT) -> None:
        """Replace a deal."""
        self.put_record(deal_key(deal_id), record)

    def flush(self) -> None:
        """Write every changed record, then make the transfers."""
        for key, encoded in self._dirty.items():
            if encoded:
                store(self.ctx, key, encoded)
            else:
                erase(self.ctx, key)
        self._dirty.clear()
        for to, amount in self.payouts.items():
            self.ctx.transfer(to, amount)
        self.payouts.clear()


AnyBook = MarketBook[Any, Any, Any, Any, Any, Any]


# -- events and checks --------------------------------------------------------------------------


def deal_topic(deal_id: int) -> bytes:
    """A deal's id as an event topic (32 bytes big-endian)."""
    return deal_id.to_bytes(32, "big")


def emit(ctx: Context, name_topic: bytes, who: Address, second: bytes | None, data: Value) -> None:
    """Emit event ``name_topic`` with topics ``who`` (and ``second``) and ``data`` encoded."""
    topics = (name_topic, who.raw) if second is None else (name_topic, who.raw, second)
    ctx.emit(topics, encode_value(data))


def cron_only(ctx: Context, method: str) -> None:
    """:class:`Revert` unless the cron calls (with no value)."""
    if ctx.caller != CRON_ADDRESS:
        raise Revert(f"{method} is called by the cron only")
    no_value(ctx, method)


def uint(value: Value) -> int:
    """An argument :func:`~qoin.execution.vm.check_args` has checked is an integer."""
    return cast(int, value)


def hash_gas(size: int) -> int:
    """What ``ctx.sha3`` charges for ``size`` bytes of input."""
    return costs.HASH_GAS + costs.HASH_WORD_GAS * costs.words(size)


def tagged_sha3(ctx: Context, tag: bytes, body: bytes) -> bytes:
    """``tagged_hash(tag, body)`` through ``ctx.sha3`` (charged)."""
    return ctx.sha3(bytes((len(tag),)) + tag + body)


def checked_key(ctx: Context, raw: bytes) -> HybridPublicKey:
    """The caller's hybrid public key; :class:`Revert` unless it decodes and hashes to it."""
    try:
        key = HybridPublicKey.decode(raw)
    except QoinError as exc:
        raise Revert(f"the public key does not decode: {exc}") from None
    ctx.charge(hash_gas(len(raw)))
    if key.address != ctx.caller:
        raise Revert(f"the public key is {key.address}'s, not the caller's ({ctx.caller})")
    return key


def checked_endpoint(value: Value) -> str:
    """An endpoint argument; :class:`Revert` unless it is 1 to :data:`MAX_ENDPOINT` bytes."""
    endpoint = cast(str, value)
    if not 1 <= len(endpoint.encode()) <= MAX_ENDPOINT:
        raise Revert(f"an endpoint is 1 to {MAX_ENDPOINT} bytes (host:port)")
    return endpoint


def store_if_changed(ctx: Context, key: bytes, encoded: bytes) -> None:
    """Write ``encoded`` under ``key`` unless it is there already."""
    if ctx.storage_get(key) != encoded:
        store(ctx, key, encoded)


def check_deadline(ctx: Context, deadline: int, max_bid_blocks: int) -> None:
    """:class:`Revert` unless a bid's ``deadline`` lies in the next ``max_bid_blocks`` heights."""
    height = ctx.env.height
    if not height < deadline <= height + max_bid_blocks:
        raise Revert(f"the deadline must lie in heights {height + 1} to {height + max_bid_blocks}")


def signed_providers(args: tuple[Value, ...]) -> tuple[tuple[Address, ...], tuple[bytes, ...]]:
    """A ``deal`` call's providers (argument 1) and acceptances (argument 2), type-checked."""
    providers = cast(tuple[Value, ...], args[1])
    signatures = cast(tuple[Value, ...], args[2])
    if not all(isinstance(p, Address) for p in providers):
        raise CallFailed("argument 1 must be a list of addresses")
    if not all(isinstance(s, bytes) for s in signatures):
        raise CallFailed("argument 2 must be a list of byte strings")
    return cast(tuple[Address, ...], providers), cast(tuple[bytes, ...], signatures)


def check_acceptance(
    ctx: Context, provider: Address, tag: bytes, body: bytes, signature: bytes, where: str
) -> None:
    """:class:`Revert` unless ``signature`` is ``provider``'s (the key of its ask) over
    ``tagged_hash(tag, body)``."""
    public = ctx.storage_get(KEY_PREFIX + provider.raw)
    if public is None:
        raise CallFailed(f"no public key stored for {provider}")
    if not ctx.verify_signature(public, tagged_sha3(ctx, tag, body), signature):
        raise Revert(f"{where}: the acceptance signature does not verify")


# -- paging -------------------------------------------------------------------------------------


def page_count(value: Value) -> int:
    """A paging call's ``count``; :class:`Revert` unless it is 1 to :data:`MAX_PAGE`."""
    count = uint(value)
    if not 1 <= count <= MAX_PAGE:
        raise Revert(f"count is 1 to {MAX_PAGE}, got {count}")
    return count


def page(
    ctx: Context,
    start: int,
    count: int,
    total: int,
    order_prefix: bytes,
    record: Callable[[Address], tuple[Value, ...] | None],
) -> bytes:
    """``list(next_start, list(records))``: the records of ``count`` positions of an order (of
    ``total``) from ``start``, skipping those ``record`` answers None for, stopping before the
    records pass :data:`PAGE_BYTES`; ``next_start`` is the first position not looked at, 0 at the
    end."""
    records: list[Value] = []
    size = 0
    position = start
    while position < min(start + count, total):
        address = load(ctx, order_prefix + record_id(position), decode_address)
        found = None if address is None else record(address)
        if found is not None:
            grown = size + len(encode_value(found))
            if records and grown > PAGE_BYTES:
                break
            records.append(found)
            size = grown
        position += 1
    return encode_value((position if position < total else 0, tuple(records)))


# -- handlers both markets have -----------------------------------------------------------------


def withdraw(book: AnyBook, args: tuple[Value, ...]) -> bytes:
    """``withdraw(amount)``: send back free collateral of the caller's ask."""
    ctx = book.ctx
    check_args(args, int)
    no_value(ctx, "withdraw")
    amount = uint(args[0])
    own = book.own_ask()
    if not 1 <= amount <= own.free:
        raise Revert(f"withdraw 1 to {own.free} Shor (the ask's free collateral), not {amount}")
    book.set_ask(ctx.caller, replace(own, free=own.free - amount))
    book.move_by(collateral=-amount)
    book.pay(ctx.caller, amount)
    book.flush()
    return b""


def cancel_ask(book: AnyBook, args: tuple[Value, ...]) -> bytes:
    """``cancel_ask()``: the caller's ask leaves the book; its free collateral is sent back."""
    ctx = book.ctx
    check_args(args)
    no_value(ctx, "cancel_ask")
    own = book.own_ask()
    if not own.active:
        raise Revert(f"the ask of {ctx.caller} is already cancelled")
    book.set_ask(ctx.caller, replace(own, active=False, free=0))
    book.move_by(collateral=-own.free)
    book.pay(ctx.caller, own.free)
    book.flush()
    emit(ctx, ASK_CANCELLED, ctx.caller, None, ())
    return b""


def cancel_bid(book: AnyBook, args: tuple[Value, ...]) -> bytes:
    """``cancel_bid(bid_id)``: the client takes back an open bid."""
    ctx = book.ctx
    check_args(args, int)
    no_value(ctx, "cancel_bid")
    bid_id = uint(args[0])
    found = book.open_bid(bid_id)
    book.refund_bid(bid_id, found)
    book.flush()
    emit(ctx, BID_CANCELLED, found.client, found.subject, (bid_id,))
    return b""


def cron_expire_bid(book: AnyBook, args: tuple[Value, ...]) -> bytes:
    """``cron_expire_bid(bid_id) -> bool``, cron only: refund a bid still open at its deadline."""
    ctx = book.ctx
    check_args(args, int)
    cron_only(ctx, "cron_expire_bid")
    bid_id = uint(args[0])
    found = book.bid(bid_id)
    if found is None:
        return encode_value(False)
    book.refund_bid(bid_id, found)
    book.flush()
    emit(ctx, BID_EXPIRED, found.client, found.subject, (bid_id, found.deposit))
    return encode_value(True)


def get_ask(
    ctx: Context,
    args: tuple[Value, ...],
    decode: Callable[[bytes], AT],
    record: Callable[[Context, Address, AT], tuple[Value, ...]],
) -> bytes:
    """``get_ask(provider) -> list(...)``: ``record`` of a provider's ask (active or not)."""
    check_args(args, Address)
    no_value(ctx, "get_ask")
    provider = cast(Address, args[0])
    found = load(ctx, ask_key(provider), decode)
    if found is None:
        raise Revert(f"{provider} has no ask")
    return encode_value(record(ctx, provider, found))


def stored_bid(ctx: Context, args: tuple[Value, ...], decode: Callable[[bytes], BT]) -> BT:
    """The open bid a ``get_bid(bid)`` call names; :class:`Revert` if there is none."""
    check_args(args, int)
    no_value(ctx, "get_bid")
    bid_id = uint(args[0])
    found = load(ctx, bid_key(bid_id), decode)
    if found is None:
        raise Revert(f"bid {bid_id}: no open bid")
    return found


def get_key(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_key(provider) -> bytes``: the hybrid public key of its ask."""
    check_args(args, Address)
    no_value(ctx, "get_key")
    provider = cast(Address, args[0])
    raw = ctx.storage_get(KEY_PREFIX + provider.raw)
    if raw is None:
        raise Revert(f"{provider} has no ask")
    return encode_value(raw)


def totals_view(book: AnyBook, args: tuple[Value, ...]) -> bytes:
    """``totals() -> list(...)``: the money totals, in their fields' order."""
    check_args(args)
    no_value(book.ctx, "totals")
    return encode_value(book.totals.values())


def params_view(book: AnyBook, args: tuple[Value, ...]) -> bytes:
    """``params() -> list(...)``: the market's parameters, in their fields' order."""
    check_args(args)
    no_value(book.ctx, "params")
    return encode_value(int_fields(book.params))


def common_methods(book: Callable[[Context], AnyBook]) -> dict[str, Handler]:
    """The handlers both markets have, each on a fresh working set made by ``book``:
    ``withdraw``, ``cancel_ask``, ``cancel_bid``, ``cron_expire_bid``, ``params``, ``get_key``
    and ``totals``."""

    def booked(handler: Callable[[AnyBook, tuple[Value, ...]], bytes]) -> Handler:
        return lambda ctx, args: handler(book(ctx), args)

    return {
        "withdraw": booked(withdraw),
        "cancel_ask": booked(cancel_ask),
        "cancel_bid": booked(cancel_bid),
        "cron_expire_bid": booked(cron_expire_bid),
        "params": booked(params_view),
        "get_key": get_key,
        "totals": booked(totals_view),
    }
