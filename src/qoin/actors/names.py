"""The ``names`` actor: human-readable names that resolve to a 32-byte value (specification).

It lives at ``actor_address("names")``. A name is held by an *owner* (an account or a contract: the
caller that registered it) until its *expiry height*, and resolves to a 32-byte *value* the owner
chooses (a content id, an address, ... the web UI's dapp names resolve to a content id).

Names
    3 to 63 bytes of ``a-z``, ``0-9`` and ``-``, neither starting nor ending with ``-``.

Terms and fees
    A registration or renewal buys a *term* of ``blocks`` blocks, :data:`MIN_TERM` (100) to
    :data:`MAX_TERM` (31,557,600: ten Julian years of 10-second blocks), for
    ``FEE_PER_BLOCK x blocks`` Shor (:data:`FEE_PER_BLOCK` = 10). The call must move at least the fee as
    its value; the excess is sent back to the caller at once. The fee stays in the actor's balance
    for ever: no method spends it, so it is burnt. The actor's balance is thus the sum of every fee
    ever paid.

Expiry
    A name registered at height ``h`` for ``blocks`` expires at height ``h + blocks``: it is held
    at heights below its expiry and free from its expiry on. There is no grace period: from its
    expiry height anyone may register it (the old record is overwritten).

Methods (``uint`` is a ``uint`` value, ``bytes32`` a ``bytes`` value of exactly 32 bytes)
    ``register(name: string, value: bytes32, blocks: uint) -> uint`` (payable)
        Registers a free name to the caller; returns its expiry height. Reverts if the name is held.
    ``renew(name: string, blocks: uint) -> uint`` (payable)
        Anyone may pay to extend a held name: its expiry becomes ``max(expiry, height) + blocks``,
        which may lie at most :data:`MAX_TERM` blocks ahead. Returns the new expiry height. Reverts
        if the name is free (register it instead).
    ``transfer(name: string, new_owner: address) -> ()``
        The owner gives a held name to ``new_owner`` (value and expiry unchanged).
    ``set_value(name: string, value: bytes32) -> ()``
        The owner sets what a held name resolves to.
    ``resolve(name: string) -> list(owner: address, value: bytes, expiry: uint)``
        What a held name resolves to. Reverts ``name 'x': not registered`` or
        ``name 'x': expired at height H``.
    ``expire(name: string) -> bool``
        Cron only (the caller must be ``actor_address("cron")``): deletes the record if the name
        has expired by the current height; returns whether it did. Registration and renewal
        schedule it at the expiry height; an entry made stale by a renewal or a re-registration
        finds the name held and does nothing.

    Methods not marked payable revert if the call moves a value. Failures: a wrong argument count
    or type (a value that is not 32 bytes included) fails the call (FAILED); every rule broken by
    well-typed arguments reverts it (REVERTED) with a reason starting ``name 'x': `` where it
    concerns a name: a malformed name, a term out of range, a short payment, a held name, a free
    name, a caller who is not the owner (or not the cron).

Events (topic 0 is SHA3-256 of the event's name; topic 1 is SHA3-256 of the name's bytes; data
is one ABI value, :func:`qoin.execution.abi.encode_value`)
    ``NameRegistered``    topics: owner          data: list(name, value, expiry)
    ``NameRenewed``       topics: payer          data: list(name, expiry)          (new expiry)
    ``NameTransferred``   topics: from, to       data: list(name)
    ``NameValueChanged``  topics: owner          data: list(name, value)
    ``NameExpired``       topics: last owner     data: list(name, expiry)
    (the addresses are topics 2 and 3, as their 32 raw bytes.)

Storage
    ``b"n" || name bytes`` -> ``owner (32 bytes) || value (32 bytes) || expiry (varint64)``; the
    record of an expired name the cron has cleaned up is deleted (the empty value).

Gas
    :data:`qoin.execution.gas.ACTOR_CALL_GAS` to enter, then the host costs of what the method does
    through its context: storage reads and writes, hashing the name for its event topic, the event,
    the cron entry, the refund transfer (only if there is an excess).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from qoin.actors.base import (
    BuiltinActor,
    erase,
    fixed_bytes,
    load,
    no_value,
    store,
    topic,
)
from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.encoding.codec import Reader, Writer
from qoin.execution.abi import Value, encode_args, encode_value
from qoin.execution.cron import CRON_ADDRESS
from qoin.execution.vm import Context, Revert, check_args

NAME = "names"
"""The actor's name (its address is ``actor_address(NAME)``)."""

MIN_NAME_SIZE = 3
MAX_NAME_SIZE = 63
"""Bounds on a name's length, in bytes."""
NAME_ALPHABET = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
"""The bytes a name may hold."""
VALUE_SIZE = 32
"""What a name resolves to is exactly this many bytes."""

FEE_PER_BLOCK = 10
"""Shor per block of a term (a year of 10-second blocks costs 31,557,600 Shor)."""
MIN_TERM = 100
"""The shortest term a registration or renewal buys, in blocks."""
MAX_TERM = 31_557_600
"""The longest term, in blocks (ten Julian years of 10-second blocks); also how far ahead of the
current height an expiry may lie after a renewal."""

RECORD_PREFIX = b"n"
"""Storage keys of name records start with this."""

REGISTERED = topic("NameRegistered")
RENEWED = topic("NameRenewed")
TRANSFERRED = topic("NameTransferred")
VALUE_CHANGED = topic("NameValueChanged")
EXPIRED = topic("NameExpired")


@dataclass(frozen=True)
class NameRecord:
    """What the actor stores for a registered name."""

    owner: Address
    """Who holds it."""
    value: bytes
    """What it resolves to (32 bytes)."""
    expiry: int
    """The height from which it is free."""

    def encode(self) -> bytes:
        """``owner || value || expiry varint``."""
        writer = Writer().fixed(self.owner.raw, ADDRESS_SIZE).fixed(self.value, VALUE_SIZE)
        return writer.varint(self.expiry).bytes()

    @classmethod
    def decode(cls, data: bytes) -> NameRecord:
        """Inverse of :meth:`encode` (canonical, no trailing bytes)."""
        reader = Reader(data)
        record = cls(Address(reader.fixed(ADDRESS_SIZE)), reader.fixed(VALUE_SIZE), reader.varint())
        reader.finish()
        return record

    def held_at(self, height: int) -> bool:
        """Whether the name is still held at ``height``."""
        return height < self.expiry


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid name, or None if it is."""
    raw = name.encode()
    if not MIN_NAME_SIZE <= len(raw) <= MAX_NAME_SIZE:
        return f"a name is {MIN_NAME_SIZE} to {MAX_NAME_SIZE} bytes, got {len(raw)}"
    if not NAME_ALPHABET.issuperset(raw):
        return "a name holds only a-z, 0-9 and '-'"
    if raw.startswith(b"-") or raw.endswith(b"-"):
        return "a name neither starts nor ends with '-'"
    return None


def record_key(name: str) -> bytes:
    """The storage key of ``name``'s record."""
    return RECORD_PREFIX + name.encode()


def term_fee(blocks: int) -> int:
    """The fee for a term of ``blocks`` blocks."""
    return FEE_PER_BLOCK * blocks


def _short(name: str) -> str:
    # Reasons are bounded (MAX_REASON): quote at most a name's worth of what the caller sent.
    return repr(name[: MAX_NAME_SIZE + 1])


def _checked_name(value: Value) -> str:
    name = cast(str, value)  # check_args has run
    problem = name_problem(name)
    if problem is not None:
        raise Revert(f"name {_short(name)}: {problem}")
    return name


def _checked_term(name: str, blocks: int) -> None:
    if not MIN_TERM <= blocks <= MAX_TERM:
        raise Revert(
            f"name {_short(name)}: a term is {MIN_TERM} to {MAX_TERM} blocks, got {blocks}"
        )


def _collect_fee(ctx: Context, name: str, blocks: int) -> None:
    """Keep the term's fee out of the call's value; send the excess back to the caller."""
    fee = term_fee(blocks)
    if ctx.value < fee:
        raise Revert(f"name {_short(name)}: {blocks} blocks cost {fee} Shor, {ctx.value} sent")
    if ctx.value > fee:
        ctx.transfer(ctx.caller, ctx.value - fee)


def _name_topic(ctx: Context, name: str) -> bytes:
    return ctx.sha3(name.encode())


def _schedule_expiry(ctx: Context, name: str, expiry: int) -> None:
    ctx.schedule(expiry, "expire", encode_args([name]))


def _held(ctx: Context, name: str) -> NameRecord:
    """The record of a name held now; :class:`Revert` if it is free."""
    record = load(ctx, record_key(name), NameRecord.decode)
    if record is None:
        raise Revert(f"name {_short(name)}: not registered")
    if not record.held_at(ctx.env.height):
        raise Revert(f"name {_short(name)}: expired at height {record.expiry}")
    return record


def _owned(ctx: Context, name: str) -> NameRecord:
    """The record of a held name the caller owns; :class:`Revert` otherwise."""
    record = _held(ctx, name)
    if record.owner != ctx.caller:
        raise Revert(f"name {_short(name)}: only its owner {record.owner} may do this")
    return record


def register(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``register(name, value, blocks) -> expiry`` (module docstring)."""
    check_args(args, str, bytes, int)
    name = _checked_name(args[0])
    value = fixed_bytes(args[1], VALUE_SIZE, 1)
    blocks = cast(int, args[2])
    _checked_term(name, blocks)
    key = record_key(name)
    height = ctx.env.height
    old = load(ctx, key, NameRecord.decode)
    if old is not None and old.held_at(height):
        raise Revert(f"name {_short(name)}: held by {old.owner} until height {old.expiry}")
    _collect_fee(ctx, name, blocks)
    record = NameRecord(ctx.caller, value, height + blocks)
    store(ctx, key, record.encode())
    ctx.emit(
        (REGISTERED, _name_topic(ctx, name), record.owner.raw),
        encode_value((name, value, record.expiry)),
    )
    _schedule_expiry(ctx, name, record.expiry)
    return encode_value(record.expiry)


def renew(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``renew(name, blocks) -> expiry`` (module docstring)."""
    check_args(args, str, int)
    name = _checked_name(args[0])
    blocks = cast(int, args[1])
    _checked_term(name, blocks)
    record = _held(ctx, name)
    height = ctx.env.height
    expiry = max(record.expiry, height) + blocks
    if expiry - height > MAX_TERM:
        raise Revert(
            f"name {_short(name)}: would expire at {expiry}, more than {MAX_TERM} blocks ahead"
        )
    _collect_fee(ctx, name, blocks)
    store(ctx, record_key(name), NameRecord(record.owner, record.value, expiry).encode())
    ctx.emit((RENEWED, _name_topic(ctx, name), ctx.caller.raw), encode_value((name, expiry)))
    _schedule_expiry(ctx, name, expiry)
    return encode_value(expiry)


def transfer(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``transfer(name, new_owner)`` (module docstring)."""
    check_args(args, str, Address)
    no_value(ctx, "transfer")
    name = _checked_name(args[0])
    new_owner = cast(Address, args[1])
    record = _owned(ctx, name)
    store(ctx, record_key(name), NameRecord(new_owner, record.value, record.expiry).encode())
    ctx.emit(
        (TRANSFERRED, _name_topic(ctx, name), record.owner.raw, new_owner.raw),
        encode_value((name,)),
    )
    return b""


def set_value(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``set_value(name, value)`` (module docstring)."""
    check_args(args, str, bytes)
    no_value(ctx, "set_value")
    name = _checked_name(args[0])
    value = fixed_bytes(args[1], VALUE_SIZE, 1)
    record = _owned(ctx, name)
    store(ctx, record_key(name), NameRecord(record.owner, value, record.expiry).encode())
    ctx.emit((VALUE_CHANGED, _name_topic(ctx, name), record.owner.raw), encode_value((name, value)))
    return b""


def resolve(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``resolve(name) -> list(owner, value, expiry)`` (module docstring)."""
    check_args(args, str)
    no_value(ctx, "resolve")
    name = _checked_name(args[0])
    record = _held(ctx, name)
    return encode_value((record.owner, record.value, record.expiry))


def expire(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``expire(name) -> bool``, cron only (module docstring)."""
    check_args(args, str)
    if ctx.caller != CRON_ADDRESS:
        raise Revert("expire is called by the cron only")
    no_value(ctx, "expire")
    name = _checked_name(args[0])
    key = record_key(name)
    record = load(ctx, key, NameRecord.decode)
    if record is None or record.held_at(ctx.env.height):
        return encode_value(False)
    erase(ctx, key)
    ctx.emit(
        (EXPIRED, _name_topic(ctx, name), record.owner.raw), encode_value((name, record.expiry))
    )
    return encode_value(True)


def names_actor() -> BuiltinActor:
    """The ``names`` actor."""
    return BuiltinActor(
        NAME,
        {
            "register": register,
            "renew": renew,
            "transfer": transfer,
            "set_value": set_value,
            "resolve": resolve,
            "expire": expire,
        },
    )
