"""The ``storage-market`` actor: asks, bids, deals, storage proofs, misses and repair.

It lives at ``actor_address("storage-market")``; ``docs/spec/storage.md`` §4 is its rule set
(methods, views, events, money). Providers post *asks* (capacity, prices, collateral), clients post
*bids* for a file cut into n shards, and a client turns a bid into a *deal* with n providers'
signed acceptances. Every period each shard's provider proves it still holds the shard (``prove``)
and is paid that period's price out of the deal's escrow; a missed period is refunded to the client
and slashes the provider, and a shard that fails is re-listed for another provider to ``take``.

Choices this module makes where the specification leaves room
    * A bid's deposit (the whole value of its call) and a deal's escrow are both counted as
      ``escrow`` in :class:`Totals`; collateral is the asks' free plus locked collateral.
    * "shard price <= max_price" compares shard prices: ``shard_price(ask.price) <=
      shard_price(bid.max_price)``, which is exactly what the deposit covers.
    * Collateral released without slashing (a deal's end, a leaver's hand-off) returns to the
      ask's free collateral while the ask is active, and is sent to the provider once it is
      cancelled.
    * A provider that ``leave`` s keeps its capacity reserved together with its locked collateral
      until both are released. A provider leaving a shard it took but never proved while an
      earlier leaver still waits is released at once (nobody relied on it).
    * ``take`` is refused to a provider that holds or has left any shard of the deal, and when the
      taker's first due period would lie past the deal's end.
    * ``cancel_deal`` settles the deal at once when every period left has already been checked
      (before its first period, or after the current period's check); otherwise the check of the
      current period settles it.
    * ``asks(start, count)`` looks at ``count`` (<= 32) positions of the posting order from
      ``start``, returns the active asks among them, and stops early rather than return more than
      :data:`PAGE_BYTES`; ``next_start`` is the first position not looked at, 0 at the end.
    * ``deal_of(cid)`` names the most recent open deal formed for the CID.

Storage (``a`` is an address, 32 bytes; ids and periods 8 bytes big-endian)
    ``params``: :class:`~qoin.storage.params.StorageParams` (genesis; absent: mainnet);
    ``totals``: :class:`Totals`; ``counters``: :class:`Counters`;
    ``A‖a``: :class:`Ask`; ``I‖a``: :class:`AskContact` (endpoint, KEM key); ``K‖a``: the hybrid
    public key; ``O‖position``: the address of the ask first posted at that position;
    ``B‖bid``: :class:`Bid`; ``D‖deal``: :class:`Deal`; ``S‖deal‖shard (1)``: :class:`Shard`;
    ``C‖cid``: the open deal storing it (varint); ``R‖period``: its beacon (32 bytes).

Gas
    :data:`~qoin.execution.gas.ACTOR_CALL_GAS` to enter, then the host costs of what a method does
    through its context (each record read once and written once per call; one transfer per payee
    per call). Hashes computed in Python are charged as if made through ``ctx.sha3``: a content id
    check ``n`` leaf and ``n`` node hashes; a proof item the challenge seed, ``s`` sample hashes,
    :func:`~qoin.storage.merkle.proof_hash_count` node-sized hashes and the leaves' extra words
    (:func:`proof_gas`), before it is verified; a public key's address one hash of the key. An
    acceptance signature costs :data:`~qoin.execution.gas.SIGNATURE_VERIFY_GAS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import cast

from qoin.actors import records
from qoin.actors.base import BuiltinActor, fixed_bytes, load, no_value, store, topic
from qoin.actors.records import (
    INFO_PREFIX,
    KEY_PREFIX,
    ORDER_PREFIX,
    Contact,
    MarketBook,
    MarketLayout,
    MarketTotals,
    ask_key,
    bid_key,
    check_acceptance,
    checked_endpoint,
    checked_key,
    cron_only,
    deal_key,
    deal_topic,
    decode_varint,
    emit,
    hash_gas,
    read_bool,
    read_enum,
    read_optional_address,
    record_id,
    signed_providers,
    store_if_changed,
    uint,
    varints,
    write_optional_address,
)
from qoin.actors.records import encode_varint as encode_varint_record
from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.encoding.codec import NonCanonicalInteger, Reader, Writer
from qoin.execution import gas as costs
from qoin.execution.abi import MAX_VALUE_BYTES, Value, encode_args, encode_value
from qoin.execution.vm import CallFailed, Context, Revert, check_args
from qoin.storage import merkle
from qoin.storage.params import MAINNET, PARAMS_KEY, PPM, StorageParams, VarintRecord

NAME = "storage-market"
"""The actor's name (its address is ``actor_address(NAME)``)."""

GIB = 1 << 30
"""Bytes per GiB: prices and collateral rates are per GiB."""
MIN_SHARDS = 2
MAX_SHARDS = 16
"""Bounds on n, the shards of a file."""
KEM_KEY_SIZE = records.KEM_KEY_SIZE
"""Bytes of an ML-KEM-768 encapsulation key."""
MAX_PAGE = records.MAX_PAGE
"""Most positions one ``asks`` call looks at."""
PAGE_BYTES = records.PAGE_BYTES
"""An ``asks`` page stops before its records pass this many bytes (return data is 16 KiB)."""
MAX_ITEM_BYTES = 256 * 1024
"""A proof item's leaves and paths together stay below this (a call carries at most 320 KiB):
a bid whose shards would need more is refused."""
TAG_ACCEPT = b"QOIN/storage/accept/v1"
"""Domain tag of a provider's acceptance of a bid's shard."""
ZERO_ADDRESS = records.ZERO_ADDRESS
"""Stands for "no provider" and "no leaver" in views."""

SHARD_PREFIX = b"S"
CID_PREFIX = b"C"
BEACON_PREFIX = b"R"

ASK_POSTED = topic("AskPosted")
BID_PLACED = topic("BidPlaced")
DEAL_FORMED = topic("DealFormed")
PROOF_ACCEPTED = topic("ProofAccepted")
PROOF_MISSED = topic("ProofMissed")
PROOF_INVALID = topic("ProofInvalid")
SHARD_FAILED = topic("ShardFailed")
SHARD_RELISTED = topic("ShardRelisted")
SHARD_TAKEN = topic("ShardTaken")
SHARD_LEFT = topic("ShardLeft")
DEAL_CANCELLED = topic("DealCancelled")
DEAL_SETTLED = topic("DealSettled")

EVENT_NAMES = (
    "AskPosted",
    "AskCancelled",
    "BidPlaced",
    "BidCancelled",
    "BidExpired",
    "DealFormed",
    "ProofAccepted",
    "ProofMissed",
    "ProofInvalid",
    "ShardFailed",
    "ShardRelisted",
    "ShardTaken",
    "ShardLeft",
    "DealCancelled",
    "DealSettled",
)
"""Every event the actor emits (topic 0 is SHA3-256 of the name)."""


class ShardState(IntEnum):
    """Where a deal's shard stands (docs/spec/storage.md §4.3)."""

    PENDING = 1
    """Assigned; its first proof not yet accepted (uploading, or rebuilding after a take)."""
    ACTIVE = 2
    """Proved (possibly missing some periods since)."""
    RELISTED = 3
    """Failed or left; waiting for a provider to take it."""


# -- money rules and signed messages ------------------------------------------------------------


def shard_price(price_per_gib: int, shard_size: int) -> int:
    """A shard's price per period at ``price_per_gib``: ``ceil(price * shard_size / GiB)``."""
    return -(-price_per_gib * shard_size // GIB)


def shard_collateral(collateral_per_gib: int, shard_size: int) -> int:
    """A shard's collateral at ``collateral_per_gib``: ``ceil(collateral * shard_size / GiB)``."""
    return -(-collateral_per_gib * shard_size // GIB)


def acceptance_body(
    chain_id: int,
    bid_id: int,
    shard: int,
    root: bytes,
    shard_size: int,
    price: int,
    provider: Address,
) -> bytes:
    """What an acceptance hashes after its tag: ``chain_id (8) || bid_id (8) || shard (1) ||
    root (32) || shard_size (8) || price (8) || provider (32)``."""
    return b"".join(
        (
            chain_id.to_bytes(8, "big"),
            bid_id.to_bytes(8, "big"),
            shard.to_bytes(1, "big"),
            root,
            shard_size.to_bytes(8, "big"),
            price.to_bytes(8, "big"),
            provider.raw,
        )
    )


def acceptance_message(
    chain_id: int,
    bid_id: int,
    shard: int,
    root: bytes,
    shard_size: int,
    price: int,
    provider: Address,
) -> bytes:
    """The message a provider signs to accept shard ``shard`` of bid ``bid_id`` at ``price``
    (Shor per period): ``tagged_hash("QOIN/storage/accept/v1", acceptance_body(...))``."""
    return tagged_hash(
        TAG_ACCEPT, acceptance_body(chain_id, bid_id, shard, root, shard_size, price, provider)
    )


def _tagged_size(tag: bytes, size: int) -> int:
    return 1 + len(tag) + size


def proof_gas(samples: int, depth: int, leaf_size: int) -> int:
    """Gas one proof item is charged before it is verified: its challenge (a seed and ``samples``
    sample hashes), ``proof_hash_count(samples, depth)`` node-sized hashes, and the extra words
    of hashing ``samples`` leaves of ``leaf_size`` bytes."""
    challenge = hash_gas(_tagged_size(merkle.TAG_CHALLENGE, HASH_SIZE + 17)) + samples * hash_gas(
        _tagged_size(merkle.TAG_SAMPLE, HASH_SIZE + 1)
    )
    nodes = merkle.proof_hash_count(samples, depth) * hash_gas(
        _tagged_size(merkle.TAG_NODE, 2 * HASH_SIZE)
    )
    return challenge + nodes + samples * costs.HASH_WORD_GAS * costs.words(leaf_size)


def cid_gas(count: int) -> int:
    """Gas charged to check a content id over ``count`` shard roots."""
    return count * (
        hash_gas(_tagged_size(merkle.TAG_CID_LEAF, HASH_SIZE + 1))
        + hash_gas(_tagged_size(merkle.TAG_NODE, 2 * HASH_SIZE))
    )


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals(MarketTotals):
    """Shor the actor holds, by purpose; the actor's balance is their sum."""

    MARKET = "storage market"

    escrow: int = 0
    """Open bids' deposits and deals' escrow."""
    collateral: int = 0
    """The asks' free and locked collateral."""
    bonus: int = 0
    """Repair bonuses not yet paid."""
    burned: int = 0
    """Slashed collateral burnt (held for ever)."""

    def moved(
        self, *, escrow: int = 0, collateral: int = 0, bonus: int = 0, burned: int = 0
    ) -> Totals:
        """These totals changed by the given amounts; :class:`CallFailed` if one goes negative
        (a broken state: never a caller's fault)."""
        return self.moved_by(escrow=escrow, collateral=collateral, bonus=bonus, burned=burned)


@dataclass(frozen=True)
class Counters(VarintRecord):
    """The actor's sequence numbers and its beacon chain."""

    last_bid: int = 0
    """The last bid id given (ids are 1, 2, 3, ...)."""
    positions: int = 0
    """Asks ever posted (the next ask's position)."""
    open_deals: int = 0
    """Deals formed and not yet settled."""
    beacon_next: int = 0
    """The period whose ``cron_beacon`` is scheduled; 0 while the beacon chain is stopped."""


@dataclass(frozen=True)
class Ask:
    """A provider's ask (its numbers; the endpoint and keys are stored apart)."""

    capacity: int
    """Bytes it offers."""
    used: int
    """Bytes its shards (and shards it left, until released) take."""
    price: int
    """Shor per GiB per period."""
    collateral: int
    """Shor per GiB locked per shard."""
    retrieval_price: int
    """Shor per GiB served (informational)."""
    free: int
    """Collateral not locked in shards (withdrawable)."""
    locked: int
    """Collateral locked in shards."""
    active: bool
    """Whether it is in the book (new deals and takes)."""
    position: int
    """Its place in the posting order."""

    def encode(self) -> bytes:
        """Varints, the active flag as one byte, then the position."""
        writer = varints(
            Writer(),
            self.capacity,
            self.used,
            self.price,
            self.collateral,
            self.retrieval_price,
            self.free,
            self.locked,
        )
        return writer.u8(int(self.active)).varint(self.position).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Ask:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        capacity, used, price, collateral, retrieval, free, locked = (
            reader.varint() for _ in range(7)
        )
        ask = cls(
            capacity,
            used,
            price,
            collateral,
            retrieval,
            free,
            locked,
            read_bool(reader),
            reader.varint(),
        )
        reader.finish()
        return ask


@dataclass(frozen=True)
class AskContact(Contact):
    """How clients reach a provider: ``endpoint`` is ``host:port`` of its HTTP API."""


@dataclass(frozen=True)
class Bid:
    """An open bid."""

    client: Address
    """Who placed it."""
    cid: bytes
    """The content id (the root over ``roots``)."""
    size: int
    """Bytes of the (encrypted) file."""
    shard_size: int
    """Bytes per shard."""
    k: int
    """Shards that rebuild the file."""
    roots: tuple[bytes, ...]
    """The n shard roots."""
    duration: int
    """Periods of storage asked for."""
    max_price: int
    """The highest price it pays, Shor per GiB per period."""
    deadline: int
    """The height from which it can no longer become a deal."""
    deposit: int
    """Shor it holds (the bid call's whole value)."""
    flags: int
    """Client flags (bit 0: encrypted)."""

    def encode(self) -> bytes:
        """``client || cid || varints || n (1) || roots || varints``."""
        writer = Writer().fixed(self.client.raw, ADDRESS_SIZE).fixed(self.cid, HASH_SIZE)
        varints(writer, self.size, self.shard_size, self.k).u8(len(self.roots))
        for root in self.roots:
            writer.fixed(root, HASH_SIZE)
        return varints(
            writer, self.duration, self.max_price, self.deadline, self.deposit, self.flags
        ).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Bid:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        client, cid = Address(reader.fixed(ADDRESS_SIZE)), reader.fixed(HASH_SIZE)
        size, shard_size, k = reader.varint(), reader.varint(), reader.varint()
        count = reader.u8()
        if count > MAX_SHARDS:
            raise NonCanonicalInteger(f"a bid has at most {MAX_SHARDS} roots")
        roots = tuple(reader.fixed(HASH_SIZE) for _ in range(count))
        rest = [reader.varint() for _ in range(5)]
        reader.finish()
        return cls(client, cid, size, shard_size, k, roots, *rest)

    @property
    def n(self) -> int:
        """Shards of the file."""
        return len(self.roots)

    @property
    def subject(self) -> bytes:
        """The second topic of its events: the content id."""
        return self.cid


@dataclass(frozen=True)
class Deal:
    """An open deal (its shards are stored apart)."""

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
    n: int
    """Shards."""
    flags: int
    """The bid's flags."""
    first: int
    """The first period paid for."""
    end: int
    """The period after the last one paid for (cut by ``cancel_deal``)."""
    escrow: int
    """Shor held for the periods not yet paid or refunded."""
    price_sum: int
    """The shards' prices per period, summed."""
    next_check: int
    """The period whose check is due next."""

    def encode(self) -> bytes:
        """``client || cid || varints``."""
        writer = Writer().fixed(self.client.raw, ADDRESS_SIZE).fixed(self.cid, HASH_SIZE)
        return varints(
            writer,
            self.size,
            self.shard_size,
            self.k,
            self.n,
            self.flags,
            self.first,
            self.end,
            self.escrow,
            self.price_sum,
            self.next_check,
        ).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Deal:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        client, cid = Address(reader.fixed(ADDRESS_SIZE)), reader.fixed(HASH_SIZE)
        deal = cls(client, cid, *(reader.varint() for _ in range(10)))
        reader.finish()
        return deal


@dataclass(frozen=True)
class Shard:
    """One shard of a deal."""

    provider: Address | None
    """Who holds it (None while RELISTED)."""
    root: bytes
    """Its committed root."""
    state: ShardState
    """PENDING, ACTIVE or RELISTED."""
    misses: int
    """Consecutive periods its provider missed."""
    first_due: int
    """The first period its provider must prove."""
    last_proved: int
    """The last period proved, plus one (0 if never)."""
    price: int
    """Shor per period paid for it."""
    collateral: int
    """Its provider's collateral still locked in it."""
    original: int
    """Its provider's collateral as locked (the base of miss slashes)."""
    bonus: int
    """Repair bonus waiting for the next provider's first accepted proof."""
    leaver: Address | None
    """A provider that left it and waits for its collateral."""
    leaver_collateral: int
    """That provider's collateral."""

    def encode(self) -> bytes:
        """``provider? || root || state (1) || varints || leaver? || varint``."""
        writer = Writer()
        write_optional_address(writer, self.provider)
        writer.fixed(self.root, HASH_SIZE).u8(int(self.state))
        varints(
            writer,
            self.misses,
            self.first_due,
            self.last_proved,
            self.price,
            self.collateral,
            self.original,
            self.bonus,
        )
        write_optional_address(writer, self.leaver)
        return writer.varint(self.leaver_collateral).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Shard:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        provider, root = read_optional_address(reader), reader.fixed(HASH_SIZE)
        state = read_enum(reader, ShardState, "shard state")
        misses, first_due, last_proved, price, collateral, original, bonus = (
            reader.varint() for _ in range(7)
        )
        shard = cls(
            provider,
            root,
            state,
            misses,
            first_due,
            last_proved,
            price,
            collateral,
            original,
            bonus,
            read_optional_address(reader),
            reader.varint(),
        )
        reader.finish()
        return shard

    def proved(self, period: int) -> bool:
        """Whether its proof for ``period`` was accepted."""
        return self.last_proved > period


def _relisted(shard: Shard, bonus: int) -> Shard:
    return replace(
        shard,
        provider=None,
        state=ShardState.RELISTED,
        misses=0,
        first_due=0,
        collateral=0,
        original=0,
        bonus=bonus,
    )


def shard_key(deal_id: int, index: int) -> bytes:
    """Storage key of a :class:`Shard`."""
    return SHARD_PREFIX + record_id(deal_id) + bytes((index,))


def beacon_key(period: int) -> bytes:
    """Storage key of a period's beacon."""
    return BEACON_PREFIX + record_id(period)


def _decode_beacon(data: bytes) -> bytes:
    if len(data) != HASH_SIZE:
        raise NonCanonicalInteger(f"a beacon is {HASH_SIZE} bytes")
    return data


# -- the working set of one call ----------------------------------------------------------------


_LAYOUT = MarketLayout(
    params_key=PARAMS_KEY,
    params=StorageParams.decode,
    mainnet=MAINNET,
    totals=Totals,
    counters=Counters,
    ask=Ask.decode,
    bid=Bid.decode,
    deal=Deal.decode,
    part="shard",
)


class _Book(MarketBook[StorageParams, Totals, Counters, Ask, Bid, Deal]):
    """The working set of one call (:class:`~qoin.actors.records.MarketBook`), with shards."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, _LAYOUT)

    def move(
        self, *, escrow: int = 0, collateral: int = 0, bonus: int = 0, burned: int = 0
    ) -> None:
        """Change the totals."""
        self.move_by(escrow=escrow, collateral=collateral, bonus=bonus, burned=burned)

    def shard(self, deal_id: int, index: int) -> Shard:
        """Shard ``index`` of an open deal (:class:`CallFailed` if missing)."""
        shard = self.get(shard_key(deal_id, index), Shard.decode)
        if shard is None:
            raise CallFailed(f"deal {deal_id} has no shard {index} record")
        return shard

    def set_shard(self, deal_id: int, index: int, shard: Shard) -> None:
        """Replace a shard."""
        self.put_record(shard_key(deal_id, index), shard)


# -- collateral ---------------------------------------------------------------------------------


def _release(book: _Book, provider: Address, amount: int, shard_size: int) -> None:
    """Unlock ``amount`` of a provider's collateral and ``shard_size`` of its capacity, without
    slashing: back to its free collateral while its ask is active, else sent to it."""
    ask = book.held_ask(provider)
    if ask.locked < amount or ask.used < shard_size:
        raise CallFailed(f"the ask of {provider} holds less than it releases")
    if ask.active:
        book.set_ask(
            provider,
            replace(
                ask, locked=ask.locked - amount, used=ask.used - shard_size, free=ask.free + amount
            ),
        )
    else:
        book.set_ask(provider, replace(ask, locked=ask.locked - amount, used=ask.used - shard_size))
        book.move(collateral=-amount)
        book.pay(provider, amount)


def _slash(book: _Book, provider: Address, amount: int, shard_size: int) -> None:
    """Take ``amount`` of a provider's locked collateral (the totals are the caller's to move)
    and release ``shard_size`` of its capacity."""
    ask = book.held_ask(provider)
    if ask.locked < amount or ask.used < shard_size:
        raise CallFailed(f"the ask of {provider} holds less than is slashed")
    book.set_ask(provider, replace(ask, locked=ask.locked - amount, used=ask.used - shard_size))


def _fail(book: _Book, deal_id: int, deal: Deal, index: int, shard: Shard) -> Shard:
    """A shard fails (M misses or an invalid proof): all its collateral is slashed, part of it
    becomes its repair bonus, the rest is burnt; it is re-listed."""
    provider = shard.provider
    if provider is None:
        raise CallFailed(f"shard {index} of deal {deal_id} fails with no provider")
    slashed = shard.collateral
    bonus = slashed * book.params.repair_bonus_ppm // PPM
    _slash(book, provider, slashed, deal.shard_size)
    book.move(collateral=-slashed, bonus=bonus, burned=slashed - bonus)
    failed = _relisted(shard, shard.bonus + bonus)
    book.set_shard(deal_id, index, failed)
    ctx = book.ctx
    emit(ctx, SHARD_FAILED, provider, deal_topic(deal_id), (deal_id, index, slashed, bonus))
    _emit_relisted(ctx, deal_id, deal, index, failed)
    return failed


def _emit_relisted(ctx: Context, deal_id: int, deal: Deal, index: int, shard: Shard) -> None:
    emit(
        ctx,
        SHARD_RELISTED,
        ctx.address,
        deal_topic(deal_id),
        (deal_id, index, deal.shard_size, shard.price, shard.bonus, shard.root),
    )


# -- asks ---------------------------------------------------------------------------------------


def ask(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``ask(capacity, price, collateral, retrieval_price, endpoint, kem_key, public_key)``
    (payable): create or update the caller's ask; the value joins its free collateral."""
    check_args(args, int, int, int, int, str, bytes, bytes)
    capacity, price, collateral, retrieval = (uint(a) for a in args[:4])
    endpoint = cast(str, args[4])
    kem_key = fixed_bytes(args[5], KEM_KEY_SIZE, 5)
    checked_endpoint(endpoint)
    public = checked_key(ctx, cast(bytes, args[6]))
    book = _Book(ctx)
    old = book.ask(ctx.caller)
    if old is not None and capacity < old.used:
        raise Revert(f"capacity {capacity} is below the {old.used} bytes the ask's shards use")
    if old is None:
        old = Ask(0, 0, 0, 0, 0, 0, 0, False, book.enlist(ORDER_PREFIX, "positions"))
    new = Ask(
        capacity,
        old.used,
        price,
        collateral,
        retrieval,
        old.free + ctx.value,
        old.locked,
        True,
        old.position,
    )
    book.set_ask(ctx.caller, new)
    book.move(collateral=ctx.value)
    store_if_changed(ctx, INFO_PREFIX + ctx.caller.raw, AskContact(endpoint, kem_key).encode())
    store_if_changed(ctx, KEY_PREFIX + ctx.caller.raw, public.encode())
    book.flush()
    emit(ctx, ASK_POSTED, ctx.caller, None, (capacity, price, collateral, endpoint))
    return b""


# -- bids ---------------------------------------------------------------------------------------


def _checked_shape(book: _Book, size: int, shard_size: int, k: int, n: int) -> None:
    params = book.params
    if not MIN_SHARDS <= n <= MAX_SHARDS:
        raise Revert(f"a bid has {MIN_SHARDS} to {MAX_SHARDS} shard roots, got {n}")
    if not 1 <= k < n:
        raise Revert(f"k must be 1 to n - 1 = {n - 1}, got {k}")
    try:
        expected = merkle.shard_size_for(size, k, params.leaf_size)
    except merkle.StorageMerkleError as exc:
        raise Revert(f"size {size}: {exc}") from None
    if shard_size != expected:
        raise Revert(
            f"shard_size for {size} bytes, k = {k} and {params.leaf_size}-byte leaves is "
            f"{expected}, not {shard_size}"
        )
    depth = merkle.tree_depth(shard_size // params.leaf_size)
    paths = params.samples * depth * HASH_SIZE
    if paths > MAX_VALUE_BYTES or paths + params.samples * params.leaf_size > MAX_ITEM_BYTES:
        raise Revert(f"shards of {shard_size} bytes are too big to prove in one call")


def bid(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``bid(cid, size, shard_size, k, roots, duration, max_price, deadline, flags) -> bid_id``
    (payable)."""
    check_args(args, bytes, int, int, int, tuple, int, int, int, int)
    cid = fixed_bytes(args[0], HASH_SIZE, 0)
    size, shard_size, k = uint(args[1]), uint(args[2]), uint(args[3])
    roots = tuple(fixed_bytes(root, HASH_SIZE, 4) for root in cast(tuple[Value, ...], args[4]))
    duration, max_price, deadline, flags = (uint(a) for a in args[5:])
    book = _Book(ctx)
    params = book.params
    _checked_shape(book, size, shard_size, k, len(roots))
    ctx.charge(cid_gas(len(roots)))
    if merkle.content_id(roots) != cid:
        raise Revert("the cid is not the root over the shard roots")
    if not 1 <= duration <= params.max_duration:
        raise Revert(f"duration is 1 to {params.max_duration} periods, got {duration}")
    records.check_deadline(ctx, deadline, params.max_bid_blocks)
    need = len(roots) * duration * shard_price(max_price, shard_size)
    if ctx.value < need:
        raise Revert(f"the deposit must be at least {need} Shor (the whole term), {ctx.value} sent")
    placed = Bid(
        ctx.caller, cid, size, shard_size, k, roots, duration, max_price, deadline, ctx.value, flags
    )
    bid_id = book.place_bid(placed, deadline)
    emit(
        ctx,
        BID_PLACED,
        ctx.caller,
        cid,
        (bid_id, size, len(roots), k, duration, max_price, deadline, ctx.value),
    )
    return encode_value(bid_id)


# -- deals --------------------------------------------------------------------------------------


def _accepted(
    book: _Book, bid_id: int, found: Bid, index: int, provider: Address, signature: bytes
) -> Shard:
    """Check provider ``index``'s ask and acceptance, lock its collateral; the new shard."""
    ctx = book.ctx
    ask_now = book.ask(provider)
    where = f"shard {index}: provider {provider}"
    if ask_now is None or not ask_now.active:
        raise Revert(f"{where} has no active ask")
    if ask_now.used + found.shard_size > ask_now.capacity:
        raise Revert(f"{where} has {ask_now.capacity - ask_now.used} bytes free")
    price = shard_price(ask_now.price, found.shard_size)
    ceiling = shard_price(found.max_price, found.shard_size)
    if price > ceiling:
        raise Revert(f"{where} asks {price} Shor per period, the bid pays at most {ceiling}")
    collateral = shard_collateral(ask_now.collateral, found.shard_size)
    if collateral > ask_now.free:
        raise Revert(f"{where} has {ask_now.free} Shor free collateral, needs {collateral}")
    body = acceptance_body(
        ctx.env.chain_id, bid_id, index, found.roots[index], found.shard_size, price, provider
    )
    check_acceptance(ctx, provider, TAG_ACCEPT, body, signature, where)
    book.set_ask(
        provider,
        replace(
            ask_now,
            used=ask_now.used + found.shard_size,
            free=ask_now.free - collateral,
            locked=ask_now.locked + collateral,
        ),
    )
    return Shard(
        provider,
        found.roots[index],
        ShardState.PENDING,
        0,
        0,
        0,
        price,
        collateral,
        collateral,
        0,
        None,
        0,
    )


def _start_beacons(book: _Book) -> None:
    """Start the beacon chain if it is stopped (the first open deal starts it)."""
    counters = book.counters
    if counters.beacon_next:
        return
    params = book.params
    period = params.period_of(book.ctx.env.height) + 1
    book.set_counters(replace(counters, beacon_next=period))
    book.ctx.schedule(params.period_start(period) + 1, "cron_beacon", encode_args([period]))


def deal(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``deal(bid_id, providers, signatures) -> deal_id``: the bid's client forms the deal."""
    check_args(args, int, tuple, tuple)
    no_value(ctx, "deal")
    bid_id = uint(args[0])
    addresses, signatures = signed_providers(args)
    book = _Book(ctx)
    found = book.open_bid(bid_id)
    if ctx.env.height >= found.deadline:
        raise Revert(f"bid {bid_id}: its deadline {found.deadline} has passed")
    n = found.n
    if len(addresses) != n or len(signatures) != n:
        raise Revert(f"bid {bid_id} has {n} shards: name {n} providers and {n} signatures")
    if len(set(addresses)) != n:
        raise Revert("the providers must be distinct")
    shards = [_accepted(book, bid_id, found, i, addresses[i], signatures[i]) for i in range(n)]
    params = book.params
    first = params.period_of(ctx.env.height) + 1 + params.grace_periods
    price_sum = sum(s.price for s in shards)
    escrow = found.duration * price_sum
    made = Deal(
        found.client,
        found.cid,
        found.size,
        found.shard_size,
        found.k,
        n,
        found.flags,
        first,
        first + found.duration,
        escrow,
        price_sum,
        first,
    )
    for index, shard in enumerate(shards):
        book.set_shard(bid_id, index, replace(shard, first_due=first))
    book.drop(bid_key(bid_id))
    book.set_deal(bid_id, made)
    refund = found.deposit - escrow
    book.move(escrow=-refund)
    book.pay(found.client, refund)
    book.put(CID_PREFIX + found.cid, bid_id, encode_varint_record)
    book.set_counters(replace(book.counters, open_deals=book.counters.open_deals + 1))
    _start_beacons(book)
    book.flush()
    ctx.schedule(params.check_height(first), "cron_check", encode_args([bid_id, first]))
    emit(
        ctx,
        DEAL_FORMED,
        found.client,
        deal_topic(bid_id),
        (bid_id, found.cid, addresses, first, made.end, escrow),
    )
    return encode_value(bid_id)


def _settle(book: _Book, deal_id: int, deal_now: Deal) -> None:
    """Settlement: collateral back, escrow left and unpaid bonuses to the client, capacity
    released, the deal deleted."""
    refund = deal_now.escrow
    bonuses = 0
    for index in range(deal_now.n):
        shard = book.shard(deal_id, index)
        if shard.provider is not None:
            _release(book, shard.provider, shard.collateral, deal_now.shard_size)
        if shard.leaver is not None:
            _release(book, shard.leaver, shard.leaver_collateral, deal_now.shard_size)
        bonuses += shard.bonus
        book.drop(shard_key(deal_id, index))
    book.move(escrow=-refund, bonus=-bonuses)
    book.pay(deal_now.client, refund + bonuses)
    book.drop(deal_key(deal_id))
    cid_key = CID_PREFIX + deal_now.cid
    if book.get(cid_key, decode_varint) == deal_id:
        book.drop(cid_key)
    counters = book.counters
    book.set_counters(replace(counters, open_deals=counters.open_deals - 1))
    emit(book.ctx, DEAL_SETTLED, deal_now.client, deal_topic(deal_id), (deal_id, refund + bonuses))


def cancel_deal(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cancel_deal(deal_id)``: periods from the next one on are cut and refunded."""
    check_args(args, int)
    no_value(ctx, "cancel_deal")
    deal_id = uint(args[0])
    book = _Book(ctx)
    found = book.deal(deal_id)
    if found.client != ctx.caller:
        raise Revert(f"deal {deal_id}: only its client {found.client} may cancel it")
    new_end = max(book.params.period_of(ctx.env.height) + 1, found.first)
    if new_end >= found.end:
        raise Revert(f"deal {deal_id}: nothing left to cancel, it ends with period {found.end - 1}")
    refund = found.price_sum * (found.end - new_end)
    if refund > found.escrow:
        raise CallFailed(f"deal {deal_id} holds less escrow than its periods left")
    cut = replace(found, end=new_end, escrow=found.escrow - refund)
    book.set_deal(deal_id, cut)
    book.move(escrow=-refund)
    book.pay(found.client, refund)
    emit(ctx, DEAL_CANCELLED, found.client, deal_topic(deal_id), (deal_id, refund))
    if cut.next_check >= new_end:
        _settle(book, deal_id, cut)
    book.flush()
    return b""


def _miss(book: _Book, deal_id: int, found: Deal, index: int, shard: Shard, period: int) -> None:
    """Shard ``index``'s provider missed ``period``: slash, count, fail at M misses."""
    provider = cast(Address, shard.provider)
    params = book.params
    slashed = min(shard.original * params.miss_slash_ppm // PPM, shard.collateral)
    _slash(book, provider, slashed, 0)
    book.move(collateral=-slashed, burned=slashed)
    missed = replace(shard, misses=shard.misses + 1, collateral=shard.collateral - slashed)
    book.set_shard(deal_id, index, missed)
    emit(
        book.ctx,
        PROOF_MISSED,
        provider,
        deal_topic(deal_id),
        (deal_id, index, period, missed.misses, slashed),
    )
    if missed.misses >= params.max_misses:
        _fail(book, deal_id, found, index, missed)


def cron_check(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cron_check(deal_id, period) -> bool``, cron only: refund and punish what was not proved
    in ``period``; schedule the next check or settle. False for a stale entry."""
    check_args(args, int, int)
    cron_only(ctx, "cron_check")
    deal_id, period = uint(args[0]), uint(args[1])
    book = _Book(ctx)
    found = book.get(deal_key(deal_id), Deal.decode)
    if found is None or found.next_check != period:
        return encode_value(False)
    if period < found.end:
        refund = 0
        for index in range(found.n):
            shard = book.shard(deal_id, index)
            if shard.proved(period):
                continue
            refund += shard.price
            if shard.provider is not None and shard.first_due <= period:
                _miss(book, deal_id, found, index, shard, period)
        if refund > found.escrow:
            raise CallFailed(f"deal {deal_id} holds less escrow than period {period} refunds")
        found = replace(found, escrow=found.escrow - refund, next_check=period + 1)
        book.set_deal(deal_id, found)
        book.move(escrow=-refund)
        book.pay(found.client, refund)
    if period + 1 >= found.end:
        _settle(book, deal_id, found)
    else:
        params = book.params
        at = max(params.check_height(period + 1), ctx.env.height + 1)
        ctx.schedule(at, "cron_check", encode_args([deal_id, period + 1]))
    book.flush()
    return encode_value(True)


def cron_beacon(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cron_beacon(period) -> bool``, cron only: record the period's beacon (this block's parent
    hash) and schedule the next while a deal is open. False for a stale entry."""
    check_args(args, int)
    cron_only(ctx, "cron_beacon")
    period = uint(args[0])
    book = _Book(ctx)
    counters = book.counters
    if counters.beacon_next != period:
        return encode_value(False)
    store(ctx, beacon_key(period), ctx.env.parent_hash)
    if counters.open_deals:
        params = book.params
        at = max(params.period_start(period + 1) + 1, ctx.env.height + 1)
        ctx.schedule(at, "cron_beacon", encode_args([period + 1]))
        book.set_counters(replace(counters, beacon_next=period + 1))
    else:
        book.set_counters(replace(counters, beacon_next=0))
    book.flush()
    return encode_value(True)


# -- proofs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProofItem:
    """One item of a ``prove`` call."""

    deal: int
    """The deal id."""
    shard: int
    """The shard index."""
    leaves: tuple[bytes, ...]
    """The challenged leaves, in challenge order."""
    paths: bytes
    """Their Merkle paths, concatenated."""


def _proof_item(value: Value, position: int) -> ProofItem:
    """An item's fields; :class:`CallFailed` if it is not ``list(uint, uint, list(bytes), bytes)``."""
    if (
        not isinstance(value, tuple)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value[:2])
        or not isinstance(value[2], tuple)
        or not all(isinstance(leaf, bytes) for leaf in value[2])
        or not isinstance(value[3], bytes)
    ):
        raise CallFailed(
            f"item {position} must be list(deal: uint, shard: uint, leaves: list(bytes), path: bytes)"
        )
    return ProofItem(
        cast(int, value[0]), cast(int, value[1]), cast(tuple[bytes, ...], value[2]), value[3]
    )


def _checked_item(book: _Book, item: ProofItem, period: int, position: int) -> tuple[Deal, Shard]:
    """The deal and shard an item proves; :class:`Revert` for a timing error, a malformed item or
    a shard not the caller's."""
    found = book.deal(item.deal)
    where = f"item {position} (deal {item.deal} shard {item.shard})"
    if item.shard >= found.n:
        raise Revert(f"{where}: the deal has {found.n} shards")
    shard = book.shard(item.deal, item.shard)
    if shard.provider != book.ctx.caller:
        raise Revert(f"{where}: the shard is not the caller's")
    if not shard.first_due <= period < found.end:
        raise Revert(
            f"{where}: proofs are due for periods {shard.first_due} to {found.end - 1}, not {period}"
        )
    if shard.proved(period):
        raise Revert(f"{where}: already proved for period {period}")
    params = book.params
    depth = merkle.tree_depth(found.shard_size // params.leaf_size)
    if len(item.leaves) != params.samples or any(
        len(leaf) != params.leaf_size for leaf in item.leaves
    ):
        raise Revert(f"{where}: a proof has {params.samples} leaves of {params.leaf_size} bytes")
    if len(item.paths) != params.samples * depth * HASH_SIZE:
        raise Revert(f"{where}: the paths are {params.samples * depth * HASH_SIZE} bytes")
    return found, shard


def _verified(
    book: _Book, item: ProofItem, beacon: bytes, period: int, shard: Shard, found: Deal
) -> bool:
    params = book.params
    leaf_count = found.shard_size // params.leaf_size
    depth = merkle.tree_depth(leaf_count)
    book.ctx.charge(proof_gas(params.samples, depth, params.leaf_size))
    seed = merkle.challenge_seed(beacon, item.deal, item.shard, period)
    indices = merkle.challenge_indices(seed, leaf_count, params.samples)
    return merkle.verify_proof(
        shard.root, leaf_count, params.leaf_size, indices, item.leaves, item.paths
    )


def _accept(book: _Book, item: ProofItem, found: Deal, shard: Shard, period: int) -> None:
    """An accepted proof: pay the period's price (and the repair bonus), release a leaver."""
    ctx = book.ctx
    if shard.price > found.escrow:
        raise CallFailed(f"deal {item.deal} holds less escrow than a period's price")
    paid = shard.price + shard.bonus
    book.set_deal(item.deal, replace(found, escrow=found.escrow - shard.price))
    book.move(escrow=-shard.price, bonus=-shard.bonus)
    book.pay(ctx.caller, paid)
    if shard.leaver is not None:
        _release(book, shard.leaver, shard.leaver_collateral, found.shard_size)
    proved = replace(
        shard,
        state=ShardState.ACTIVE,
        misses=0,
        last_proved=period + 1,
        bonus=0,
        leaver=None,
        leaver_collateral=0,
    )
    book.set_shard(item.deal, item.shard, proved)
    emit(
        ctx,
        PROOF_ACCEPTED,
        ctx.caller,
        deal_topic(item.deal),
        (item.deal, item.shard, period, paid),
    )


def prove(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``prove(period, items) -> list(bool)``: storage proofs for ``period``, by the shards'
    provider, in the period's proving window."""
    check_args(args, int, tuple)
    no_value(ctx, "prove")
    period = uint(args[0])
    items = [_proof_item(v, i) for i, v in enumerate(cast(tuple[Value, ...], args[1]))]
    book = _Book(ctx)
    params = book.params
    height = ctx.env.height
    if not params.period_start(period) < height <= params.window_end(period):
        raise Revert(
            f"proofs for period {period} are accepted at heights "
            f"{params.period_start(period) + 1} to {params.window_end(period)}, not {height}"
        )
    beacon = load(ctx, beacon_key(period), _decode_beacon)
    if beacon is None:
        raise Revert(f"no beacon recorded for period {period}")
    results: list[Value] = []
    for position, item in enumerate(items):
        found, shard = _checked_item(book, item, period, position)
        if _verified(book, item, beacon, period, shard, found):
            _accept(book, item, found, shard, period)
            results.append(True)
        else:
            provider = cast(Address, shard.provider)
            emit(
                ctx,
                PROOF_INVALID,
                provider,
                deal_topic(item.deal),
                (item.deal, item.shard, period),
            )
            _fail(book, item.deal, found, item.shard, shard)
            results.append(False)
    book.flush()
    return encode_value(tuple(results))


# -- repair -------------------------------------------------------------------------------------


def _deal_shard(book: _Book, args: tuple[Value, ...]) -> tuple[int, Deal, int, Shard]:
    check_args(args, int, int)
    deal_id, index = uint(args[0]), uint(args[1])
    found = book.deal(deal_id)
    if index >= found.n:
        raise Revert(f"deal {deal_id} has {found.n} shards, not {index + 1}")
    return deal_id, found, index, book.shard(deal_id, index)


def take(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``take(deal_id, shard) -> first_due``: a provider takes a RELISTED shard."""
    no_value(ctx, "take")
    book = _Book(ctx)
    deal_id, found, index, shard = _deal_shard(book, args)
    where = f"deal {deal_id} shard {index}"
    if shard.state is not ShardState.RELISTED:
        raise Revert(f"{where} is not re-listed")
    own = book.ask(ctx.caller)
    if own is None or not own.active:
        raise Revert(f"{ctx.caller} has no active ask")
    if own.used + found.shard_size > own.capacity:
        raise Revert(
            f"the ask has {own.capacity - own.used} bytes free, {where} needs {found.shard_size}"
        )
    collateral = shard_collateral(own.collateral, found.shard_size)
    if collateral > own.free:
        raise Revert(f"the ask has {own.free} Shor free collateral, {where} needs {collateral}")
    for other in range(found.n):
        held = book.shard(deal_id, other)
        if ctx.caller in (held.provider, held.leaver):
            raise Revert(f"{ctx.caller} holds or left shard {other} of deal {deal_id}")
    params = book.params
    first_due = params.period_of(ctx.env.height) + 1 + params.grace_periods
    if first_due >= found.end:
        raise Revert(f"{where}: the deal ends before period {first_due}, the first a taker proves")
    book.set_ask(
        ctx.caller,
        replace(
            own,
            used=own.used + found.shard_size,
            free=own.free - collateral,
            locked=own.locked + collateral,
        ),
    )
    taken = replace(
        shard,
        provider=ctx.caller,
        state=ShardState.PENDING,
        misses=0,
        first_due=first_due,
        collateral=collateral,
        original=collateral,
    )
    book.set_shard(deal_id, index, taken)
    book.flush()
    emit(ctx, SHARD_TAKEN, ctx.caller, deal_topic(deal_id), (deal_id, index, first_due))
    return encode_value(first_due)


def leave(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``leave(deal_id, shard)``: the provider hands its shard off without slashing."""
    no_value(ctx, "leave")
    book = _Book(ctx)
    deal_id, found, index, shard = _deal_shard(book, args)
    if shard.provider != ctx.caller:
        raise Revert(f"deal {deal_id} shard {index} is not the caller's")
    if shard.leaver is not None:  # a taker that never proved: nobody relies on it
        _release(book, ctx.caller, shard.collateral, found.shard_size)
        left = _relisted(shard, shard.bonus)
    else:
        left = replace(
            _relisted(shard, shard.bonus), leaver=ctx.caller, leaver_collateral=shard.collateral
        )
    book.set_shard(deal_id, index, left)
    book.flush()
    emit(ctx, SHARD_LEFT, ctx.caller, deal_topic(deal_id), (deal_id, index))
    _emit_relisted(ctx, deal_id, found, index, left)
    return b""


# -- views --------------------------------------------------------------------------------------


def _ask_record(ctx: Context, provider: Address, found: Ask) -> tuple[Value, ...]:
    info = load(ctx, INFO_PREFIX + provider.raw, AskContact.decode)
    if info is None:
        raise CallFailed(f"no endpoint stored for {provider}")
    return (
        provider,
        found.capacity,
        found.used,
        found.price,
        found.collateral,
        found.retrieval_price,
        info.endpoint,
        info.kem_key,
        found.free,
        found.locked,
        found.active,
    )


def get_ask(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_ask(provider) -> list(provider, capacity, used, price, ...)``."""
    return records.get_ask(ctx, args, Ask.decode, _ask_record)


def asks(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``asks(start, count) -> list(next_start, list(ask records))`` (module docstring)."""
    check_args(args, int, int)
    no_value(ctx, "asks")
    start, count = uint(args[0]), records.page_count(args[1])
    total = _Book(ctx).counters.positions

    def active(provider: Address) -> tuple[Value, ...] | None:
        found = load(ctx, ask_key(provider), Ask.decode)
        return None if found is None or not found.active else _ask_record(ctx, provider, found)

    return records.page(ctx, start, count, total, ORDER_PREFIX, active)


def get_bid(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_bid(bid) -> list(client, cid, size, shard_size, k, roots, ...)``."""
    found = records.stored_bid(ctx, args, Bid.decode)
    return encode_value(
        (
            found.client,
            found.cid,
            found.size,
            found.shard_size,
            found.k,
            found.roots,
            found.duration,
            found.max_price,
            found.deadline,
            found.deposit,
            found.flags,
        )
    )


def _shard_record(index: int, shard: Shard) -> tuple[Value, ...]:
    return (
        index,
        shard.provider or ZERO_ADDRESS,
        shard.root,
        int(shard.state),
        shard.misses,
        shard.first_due,
        shard.last_proved,
        shard.price,
        shard.collateral,
        shard.bonus,
        shard.leaver or ZERO_ADDRESS,
    )


def get_deal(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_deal(deal) -> list(client, cid, size, shard_size, k, flags, first, end, escrow,
    shards)``."""
    check_args(args, int)
    no_value(ctx, "get_deal")
    book = _Book(ctx)
    deal_id = uint(args[0])
    found = book.deal(deal_id)
    shards = tuple(_shard_record(i, book.shard(deal_id, i)) for i in range(found.n))
    return encode_value(
        (
            found.client,
            found.cid,
            found.size,
            found.shard_size,
            found.k,
            found.flags,
            found.first,
            found.end,
            found.escrow,
            shards,
        )
    )


def deal_of(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``deal_of(cid) -> uint``: the open deal storing ``cid``."""
    check_args(args, bytes)
    no_value(ctx, "deal_of")
    cid = fixed_bytes(args[0], HASH_SIZE, 0)
    found = load(ctx, CID_PREFIX + cid, decode_varint)
    if found is None:
        raise Revert(f"no open deal stores {cid.hex()}")
    return encode_value(found)


def get_beacon(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_beacon(period) -> bytes32``."""
    check_args(args, int)
    no_value(ctx, "get_beacon")
    period = uint(args[0])
    found = load(ctx, beacon_key(period), _decode_beacon)
    if found is None:
        raise Revert(f"no beacon recorded for period {period}")
    return encode_value(found)


METHODS: dict[str, Callable[[Context, tuple[Value, ...]], bytes]] = {
    **records.common_methods(_Book),
    "ask": ask,
    "bid": bid,
    "deal": deal,
    "cancel_deal": cancel_deal,
    "prove": prove,
    "take": take,
    "leave": leave,
    "cron_check": cron_check,
    "cron_beacon": cron_beacon,
    "get_ask": get_ask,
    "asks": asks,
    "get_bid": get_bid,
    "get_deal": get_deal,
    "deal_of": deal_of,
    "get_beacon": get_beacon,
}
"""The actor's methods by name."""


def storage_market_actor() -> BuiltinActor:
    """The ``storage-market`` actor."""
    return BuiltinActor(NAME, METHODS)
