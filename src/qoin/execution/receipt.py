"""Receipts (version 2) and events: what executing a transaction or a cron call did.

A block has one receipt per transaction, in order, then one per cron call it ran (cron calls run at
the start of the block, before the transactions; their receipts come last so that receipt ``i`` is
transaction ``i``'s). The receipts root is the Merkle root of ``tagged_hash("QOIN/receipt/v2",
encoding)`` over that list. Encoding::

    version       u8        = 2
    index         varint    position in the block's receipt list
    tx_id         32 bytes  the transaction (a cron call: the id of its cron entry)
    sender        32 bytes  who paid (a cron call: the cron actor)
    fee           varint64  Shor charged (gas_used x fee_per_gas, a transfer's fixed fee, 0 for cron)
    revealed      u8        0 or 1: whether this transaction revealed its sender's public keys
    status        u8        CallStatus
    gas_used      varint64
    reason        varbytes  UTF-8, at most MAX_REASON bytes: why a call did not succeed
    return_data   varbytes  at most MAX_RETURN_DATA bytes (a deployment: the contract address)
    events        varint count (<= MAX_EVENTS), then events

    event:  emitter 32 bytes ‖ topic count u8 (<= 4) ‖ topics (32 bytes each) ‖ data varbytes
            (<= MAX_EVENT_DATA)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

from qoin.chain.block import MAX_BLOCK_TRANSACTIONS
from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.crypto.hashing import tagged_hash
from qoin.crypto.merkle import merkle_root
from qoin.encoding.codec import (
    DecodeError,
    NonCanonicalInteger,
    OversizeField,
    Reader,
    UnknownVersion,
    Writer,
)

TAG_RECEIPT = b"QOIN/receipt/v2"
RECEIPT_VERSION = 2
MAX_TOPICS = 4
TOPIC_SIZE = 32
MAX_EVENT_DATA = 4096
MAX_EVENTS = 1024
"""Events one receipt may carry (a call emitting more fails)."""
MAX_REASON = 256
MAX_RETURN_DATA = 16 * 1024
MAX_CRON_RECEIPTS = 1024
MAX_RECEIPTS = MAX_BLOCK_TRANSACTIONS + MAX_CRON_RECEIPTS


class CallStatus(IntEnum):
    """How a transaction or call ended."""

    SUCCESS = 0
    """Everything it did stands."""
    REVERTED = 1
    """The callee asked to revert: every write of the call is undone; the fee is charged."""
    OUT_OF_GAS = 2
    """It ran out of gas: every write undone; the whole gas limit is charged."""
    FAILED = 3
    """It trapped, read out of bounds, grew memory past the bound, nested too deep, called what
    does not exist, or deployed a module that does not validate: every write undone."""


@dataclass(frozen=True)
class Event:
    """Something a contract or actor announced (indexed by emitter and topics)."""

    emitter: Address
    """The contract or actor that emitted it."""
    topics: tuple[bytes, ...]
    """Up to four 32-byte topics (by convention the first names the event)."""
    data: bytes
    """At most :data:`MAX_EVENT_DATA` bytes."""

    def __post_init__(self) -> None:
        if len(self.topics) > MAX_TOPICS:
            raise OversizeField(f"an event has at most {MAX_TOPICS} topics")
        if any(len(topic) != TOPIC_SIZE for topic in self.topics):
            raise OversizeField(f"topics are {TOPIC_SIZE} bytes")
        if len(self.data) > MAX_EVENT_DATA:
            raise OversizeField(f"event data is at most {MAX_EVENT_DATA} bytes")

    def write(self, writer: Writer) -> None:
        """Append the canonical encoding."""
        writer.fixed(self.emitter.raw, ADDRESS_SIZE).u8(len(self.topics))
        for topic in self.topics:
            writer.fixed(topic, TOPIC_SIZE)
        writer.var_bytes(self.data, MAX_EVENT_DATA)

    @classmethod
    def read(cls, reader: Reader) -> Event:
        """Decode one event."""
        emitter = Address(reader.fixed(ADDRESS_SIZE))
        count = reader.u8()
        if count > MAX_TOPICS:
            raise OversizeField(f"{count} topics exceed {MAX_TOPICS}")
        topics = tuple(reader.fixed(TOPIC_SIZE) for _ in range(count))
        return cls(emitter, topics, reader.var_bytes(MAX_EVENT_DATA))


@dataclass(frozen=True)
class Receipt:
    """What executing one transaction (or cron call) did."""

    index: int
    """Position in the block's receipt list."""
    tx_id: bytes
    """The transaction (a cron call: its entry id)."""
    sender: Address
    """Who paid."""
    fee: int
    """Shor charged."""
    revealed_keys: bool
    """Whether this transaction revealed its sender's public keys."""
    status: CallStatus = CallStatus.SUCCESS
    """How it ended."""
    gas_used: int = 0
    """Gas charged."""
    reason: str = ""
    """Why it did not succeed (empty on success)."""
    return_data: bytes = b""
    """What the call returned (a deployment: the new contract's address)."""
    events: tuple[Event, ...] = ()
    """Events of the calls that succeeded, in emission order."""

    def encode(self) -> bytes:
        """Canonical encoding (module docstring)."""
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        """The encoding, built once (it is hashed into the root and stored)."""
        writer = (
            Writer()
            .u8(RECEIPT_VERSION)
            .varint(self.index)
            .fixed(self.tx_id, 32)
            .fixed(self.sender.raw, ADDRESS_SIZE)
            .varint(self.fee)
            .u8(1 if self.revealed_keys else 0)
            .u8(int(self.status))
            .varint(self.gas_used)
            .var_bytes(self.reason.encode(), MAX_REASON)
            .var_bytes(self.return_data, MAX_RETURN_DATA)
            .varint(len(self.events))
        )
        for event in self.events:
            event.write(writer)
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> Receipt:
        """Decode one receipt."""
        version = reader.u8()
        if version != RECEIPT_VERSION:
            raise UnknownVersion(f"unknown receipt version {version}")
        index, tx_id, sender = reader.varint(), reader.fixed(32), Address(reader.fixed(32))
        fee, revealed = reader.varint(), reader.u8()
        if revealed > 1:
            raise NonCanonicalInteger(f"receipt key-reveal flag must be 0 or 1, got {revealed}")
        raw_status = reader.u8()
        try:
            status = CallStatus(raw_status)
        except ValueError:
            raise UnknownVersion(f"unknown call status {raw_status}") from None
        gas_used = reader.varint()
        try:
            reason = reader.var_bytes(MAX_REASON).decode()
        except UnicodeDecodeError:
            raise DecodeError("a receipt's reason is not UTF-8") from None
        return_data = reader.var_bytes(MAX_RETURN_DATA)
        events = tuple(Event.read(reader) for _ in range(reader.count(MAX_EVENTS)))
        return cls(
            index, tx_id, sender, fee, revealed == 1, status, gas_used, reason, return_data, events
        )

    @property
    def receipt_hash(self) -> bytes:
        """Tagged hash of the encoding."""
        return tagged_hash(TAG_RECEIPT, self.encode())

    @property
    def succeeded(self) -> bool:
        """Whether the call succeeded."""
        return self.status is CallStatus.SUCCESS


def encode_receipts(receipts: Sequence[Receipt]) -> bytes:
    """A block's receipts as one record: varint count, then each encoding (how they are stored)."""
    writer = Writer().varint(len(receipts))
    for receipt in receipts:
        writer.raw(receipt.encode())
    return writer.bytes()


def decode_receipts(data: bytes) -> tuple[Receipt, ...]:
    """Inverse of :func:`encode_receipts`; the count is bounded and receipt ``i`` must have index
    ``i``."""
    reader = Reader(data)
    receipts = tuple(Receipt.read(reader) for _ in range(reader.count(MAX_RECEIPTS)))
    reader.finish()
    for position, receipt in enumerate(receipts):
        if receipt.index != position:
            raise DecodeError(f"receipt {position} carries index {receipt.index}")
    return receipts


def receipts_root(receipts: Sequence[Receipt]) -> bytes:
    """Merkle root of the receipts' hashes."""
    return merkle_root([receipt.receipt_hash for receipt in receipts])
