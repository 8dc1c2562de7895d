"""P2P protocol messages: the canonical encoding of everything peers say to each other.

Byte-exact specification: ``docs/spec/p2p.md`` §9. Every message is the payload of one transport
frame (at most :data:`MAX_MESSAGE_SIZE` bytes) and is built from the primitives of
:mod:`qoin.encoding.codec` (``varint`` is a minimal unsigned LEB128; ``hash`` is 32 bytes)::

    message = type (u8) ‖ body
    list(N) of X = count varint (<= N, checked before any X is read) ‖ count times X

    0x01 Status                version varint16 (= 2) ‖ chain_id varint64 ‖ genesis_hash hash
                               ‖ head_hash hash ‖ head_height varint64 ‖ total_work varint256
                               ‖ listen_port varint16 (0 = not listening) ‖ services varint64
                               (bit 0 = SERVICE_EXECUTION)
    0x02 Ping                  nonce u64 (8 bytes, big-endian)
    0x03 Pong                  nonce u64 (the nonce of the Ping it answers)
    0x04 Disconnect            reason u8 ‖ text: varint length (<= 256) ‖ UTF-8 bytes
    0x10 NewBlockHashes        list(64) of (block_hash hash ‖ height varint64)
    0x11 GetHeaders            locator: list(64) of hash (newest first)
                               ‖ stop_hash hash (32 zero bytes = none) ‖ max_count varint (<= 2,000)
    0x12 Headers               list(2,000) of header (chain/block.py encoding)
    0x13 GetBlocks             list(128) of block hash
    0x14 Blocks                list(128) of (varint length (<= 16 MiB) ‖ block)
    0x20 NewTransactionHashes  list(4,096) of transaction id
    0x21 GetTransactions       list(4,096) of transaction id
    0x22 Transactions          list(4,096) of transaction (chain/transaction.py encoding)
    0x30 NotFound              kind u8 (1 = blocks, 2 = transactions)
                               ‖ list(128 for blocks, 4,096 for transactions) of hash
    0x40 EngineRequest         request_id u64 ‖ method: varint length (1..64) ‖ UTF-8
                               ‖ part varint ‖ last u8 (0/1) ‖ data: varint length (<= 1 MiB) ‖ bytes
    0x41 EngineAnswer          request_id u64 ‖ part varint ‖ last u8 (0/1) ‖ error u8 (0/1)
                               ‖ data: varint length (<= 1 MiB) ‖ bytes
                               ‖ signature: varint length (<= 128 KiB; 0 unless last) ‖ bytes
    0x42 GetExecutionNodes     (empty)
    0x43 ExecutionNodes        list(32) of (varint length (<= 160) ‖ UTF-8 "qoin1…@host:port")
    0x44 ExecutionFraud        report: varint length (<= MAX_MESSAGE_SIZE - 1 KiB) ‖ bytes

Decoding is canonical: for every byte string that :func:`decode_message` accepts,
``encode_message(decode_message(b)) == b``. The whole message is bounded by
:data:`MAX_MESSAGE_SIZE` before decoding starts, every list count is bounded before its first
element is decoded (and a count whose elements cannot fit in the bytes left is refused at once),
every length before anything is read, and trailing bytes are refused. Every failure is a
:class:`~qoin.encoding.codec.DecodeError`, so a peer that sends garbage is one ``except`` away from
being scored. An unknown type byte raises :class:`UnknownMessageType`; a ``Status`` of another
protocol version raises :class:`UnsupportedProtocol` before the rest of it is read (the prefix
``type ‖ version`` is frozen across versions, as the transport's hello is).

This module only encodes: it does not check that headers chain, that blocks are valid, that an
answer matches a request, or that a Status names our network. That is the protocol logic's work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

from qoin.chain.block import MAX_BLOCK_SIZE, ZERO_HASH, Block, Header
from qoin.chain.transaction import AnyTransaction, read_transaction
from qoin.crypto.hashing import HASH_SIZE
from qoin.encoding.codec import (
    DecodeError,
    OversizeField,
    Reader,
    TruncatedInput,
    UnknownVersion,
    Writer,
    encode_varint,
)
from qoin.p2p.statements import ENGINE_CHUNK, MAX_METHOD_BYTES
from qoin.p2p.transport import MAX_PAYLOAD_SIZE

# --- constants -------------------------------------------------------------------------------

PROTOCOL_VERSION: Final = 2
"""Version of this message set, carried by ``Status``; independent of the transport version.
Version 2 added ``Status.services`` and the shared-execution messages (0x40 to 0x44)."""
SERVICE_EXECUTION: Final = 1
"""``Status.services`` bit: the node serves its execution client's engine API to peers."""
MAX_SIGNATURE_BYTES: Final = 128 * 1024
"""Bytes of an ``EngineAnswer`` signature (the largest hybrid suite's is about 55 KiB)."""
MAX_EXECUTION_NODES: Final = 32
"""Entries of one ``ExecutionNodes``."""
MAX_ENODE_BYTES: Final = 160
"""UTF-8 bytes of one ``qoin1…@host:port`` entry (an IPv6 host in brackets fits)."""
MAX_FRAUD_REPORT: Final = MAX_PAYLOAD_SIZE - 1024
"""Bytes of an ``ExecutionFraud`` report (opaque here; the consensus client decodes it)."""
MAX_MESSAGE_SIZE: Final = MAX_PAYLOAD_SIZE
"""Largest encoded message: one transport frame payload (16 MiB + 64 KiB), checked first."""
MAX_ANNOUNCED_BLOCKS: Final = 64
"""Block hashes in one ``NewBlockHashes``. A node announces its new head (and a few siblings);
64 covers a burst after a short partition. A longer gap is closed by headers-first sync."""
MAX_LOCATOR_HASHES: Final = 64
"""Hashes in a block locator: ~10 recent ones, then exponentially spaced back to genesis, so 64
covers chains of 2^54 blocks (Bitcoin caps its locators at 101)."""
MAX_HEADERS: Final = 2000
"""Headers in one ``Headers`` (and the largest ``max_count``), as in Bitcoin: a round trip fetches
about 11 MB of default-suite headers (≈ 5.6 kB each). With larger suites fewer fit in a frame:
:func:`split_headers` cuts a reply to what fits."""
MAX_GET_BLOCKS: Final = 128
"""Hashes in one ``GetBlocks``, and blocks in one ``Blocks``: the per-peer window of a parallel
block download. A reply never holds more blocks than were asked for."""
MAX_ANNOUNCED_TRANSACTIONS: Final = 4096
"""Transaction ids in one ``NewTransactionHashes``: half a full block's transactions (8,192) in a
128 KiB message, so a mempool is announced in a few messages and one stays small."""
MAX_GET_TRANSACTIONS: Final = MAX_ANNOUNCED_TRANSACTIONS
"""Transaction ids in one ``GetTransactions``: at most one announcement's worth."""
MAX_TRANSACTIONS: Final = MAX_GET_TRANSACTIONS
"""Transactions in one ``Transactions`` (a reply to one ``GetTransactions``). Up to 96 KiB each,
so the frame limit is usually hit first: :func:`split_transactions` cuts a reply to fit."""
MAX_DISCONNECT_TEXT: Final = 256
"""UTF-8 bytes of a ``Disconnect`` explanation: one log line, never a channel for bulk data."""
WORK_BITS: Final = 256
"""Width of ``Status.total_work``. A block's work is ``2^m / (target + 1)`` with ``m <= 128`` in
consensus (``m <= 256`` in any MQ system), and at most 2^64 blocks each counting itself and 4
siblings can add up to no more than 2^195 (2^323 for m = 256, unreachable in practice)."""
NONCE_SIZE: Final = 8
"""A ``Ping``/``Pong`` nonce: a u64, fixed-size since random nonces would need 10 varint bytes."""
NO_STOP_HASH: Final = ZERO_HASH
"""``GetHeaders.stop_hash`` when the requester names no last header."""


class MessageType(IntEnum):
    """The type byte in front of every message (0 is never valid)."""

    STATUS = 0x01
    PING = 0x02
    PONG = 0x03
    DISCONNECT = 0x04
    NEW_BLOCK_HASHES = 0x10
    GET_HEADERS = 0x11
    HEADERS = 0x12
    GET_BLOCKS = 0x13
    BLOCKS = 0x14
    NEW_TRANSACTION_HASHES = 0x20
    GET_TRANSACTIONS = 0x21
    TRANSACTIONS = 0x22
    NOT_FOUND = 0x30
    ENGINE_REQUEST = 0x40
    ENGINE_ANSWER = 0x41
    GET_EXECUTION_NODES = 0x42
    EXECUTION_NODES = 0x43
    EXECUTION_FRAUD = 0x44


class InventoryKind(IntEnum):
    """What a ``NotFound`` reports missing."""

    BLOCK = 1
    TRANSACTION = 2


class DisconnectReason(IntEnum):
    """Reason codes of ``Disconnect``; a peer may send others (decoded as plain integers)."""

    REQUESTED = 0
    """Shutting down or dropping the peer for no fault of its own."""
    PROTOCOL_ERROR = 1
    """The peer sent a message that did not decode or broke the protocol."""
    INVALID_DATA = 2
    """The peer sent an invalid block, header or transaction."""
    TOO_MANY_PEERS = 3
    """No connection slot is free."""
    DUPLICATE_CONNECTION = 4
    """Already connected to this node id."""
    INCOMPATIBLE = 5
    """Another network, genesis or protocol version (seen in ``Status``)."""
    BANNED = 6
    """The peer is banned for a while."""
    TIMEOUT = 7
    """The peer did not answer in time."""
    SELF_CONNECTION = 8
    """The peer is this node."""


# --- errors ----------------------------------------------------------------------------------


class UnknownMessageType(UnknownVersion):
    """The type byte names no message of this protocol version."""


class UnsupportedProtocol(UnknownVersion):
    """A ``Status`` of another protocol version: refuse the peer cleanly, it is not garbage."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"unsupported protocol version {version} (this node speaks {PROTOCOL_VERSION})"
        )
        self.version = version


class MalformedText(DecodeError):
    """A text field that is not valid UTF-8."""


# --- field helpers ---------------------------------------------------------------------------


def _read_count(reader: Reader, max_count: int, min_item_size: int) -> int:
    """A list count bounded by ``max_count`` and by what the remaining bytes can hold."""
    count = reader.count(max_count)
    if count * min_item_size > reader.remaining:
        raise TruncatedInput(f"{count} elements cannot fit in {reader.remaining} bytes")
    return count


def _write_count(writer: Writer, count: int, max_count: int) -> None:
    if count > max_count:
        raise OversizeField(f"{count} elements exceed the bound of {max_count}")
    writer.varint(count)


def _write_hashes(writer: Writer, hashes: Sequence[bytes], max_count: int) -> None:
    _write_count(writer, len(hashes), max_count)
    for item in hashes:
        writer.fixed(item, HASH_SIZE)


def _read_hashes(reader: Reader, max_count: int) -> tuple[bytes, ...]:
    count = _read_count(reader, max_count, HASH_SIZE)
    return tuple([reader.fixed(HASH_SIZE) for _ in range(count)])


def _write_u64(writer: Writer, value: int) -> None:
    if not 0 <= value < 1 << 64:
        raise OversizeField(f"u64 value {value} out of range")
    writer.fixed(value.to_bytes(NONCE_SIZE, "big"), NONCE_SIZE)


def _read_u64(reader: Reader) -> int:
    return int.from_bytes(reader.fixed(NONCE_SIZE), "big")


def _encode_text(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedText(f"text is not encodable as UTF-8: {exc.reason}") from None


def _decode_text(data: bytes) -> str:
    # Python's strict decoder refuses overlong forms, surrogates and code points above U+10FFFF,
    # so every accepted byte string is the unique UTF-8 encoding of the result.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedText(f"text is not valid UTF-8: {exc.reason}") from None


# --- session messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """Who we are and what our head is; the first message each side sends on a connection."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS

    chain_id: int
    """Network id (also checked by the transport hello)."""
    genesis_hash: bytes
    """Hash of the genesis block (also checked by the transport hello)."""
    head_hash: bytes
    """The sender's current head."""
    head_height: int
    """Height of ``head_hash``."""
    total_work: int
    """The sender's claim of the work behind its head, as fork choice counts it (the head chain's
    blocks and the siblings they reference). A hint for choosing whom to sync from, never trusted:
    headers-first sync checks it."""
    listen_port: int
    """TCP port the sender accepts connections on; 0 if it does not listen."""
    services: int = 0
    """What the sender offers its peers, a bit set (:data:`SERVICE_EXECUTION`)."""
    version: int = PROTOCOL_VERSION
    """Message protocol version; a decoded Status always has :data:`PROTOCOL_VERSION`."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        writer.varint(self.version, 16).varint(self.chain_id)
        writer.fixed(self.genesis_hash, HASH_SIZE).fixed(self.head_hash, HASH_SIZE)
        writer.varint(self.head_height).varint(self.total_work, WORK_BITS)
        writer.varint(self.listen_port, 16).varint(self.services)

    @classmethod
    def read(cls, reader: Reader) -> Status:
        """Decode the body, refusing another version before reading further."""
        version = reader.varint(16)
        if version != PROTOCOL_VERSION:
            raise UnsupportedProtocol(version)
        return cls(
            chain_id=reader.varint(),
            genesis_hash=reader.fixed(HASH_SIZE),
            head_hash=reader.fixed(HASH_SIZE),
            head_height=reader.varint(),
            total_work=reader.varint(WORK_BITS),
            listen_port=reader.varint(16),
            services=reader.varint(),
            version=version,
        )


@dataclass(frozen=True)
class Ping:
    """Liveness probe; the peer answers with a ``Pong`` carrying the same nonce."""

    TYPE: ClassVar[MessageType] = MessageType.PING

    nonce: int
    """Random u64 chosen by the sender."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_u64(writer, self.nonce)

    @classmethod
    def read(cls, reader: Reader) -> Ping:
        """Decode the body."""
        return cls(_read_u64(reader))


@dataclass(frozen=True)
class Pong:
    """Answer to a ``Ping``."""

    TYPE: ClassVar[MessageType] = MessageType.PONG

    nonce: int
    """The nonce of the ``Ping`` answered."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_u64(writer, self.nonce)

    @classmethod
    def read(cls, reader: Reader) -> Pong:
        """Decode the body."""
        return cls(_read_u64(reader))


@dataclass(frozen=True)
class Disconnect:
    """The last message before the sender closes the connection."""

    TYPE: ClassVar[MessageType] = MessageType.DISCONNECT

    reason: int
    """A :class:`DisconnectReason` code (any byte decodes; unknown codes are shown as numbers)."""
    text: str = ""
    """A short explanation for the peer's log, at most :data:`MAX_DISCONNECT_TEXT` UTF-8 bytes."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        writer.u8(self.reason).var_bytes(_encode_text(self.text), MAX_DISCONNECT_TEXT)

    @classmethod
    def read(cls, reader: Reader) -> Disconnect:
        """Decode the body."""
        reason = reader.u8()
        return cls(reason, _decode_text(reader.var_bytes(MAX_DISCONNECT_TEXT)))


# --- blocks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnouncedBlock:
    """One entry of ``NewBlockHashes``."""

    block_hash: bytes
    """The block's hash."""
    height: int
    """Its height, so the receiver can judge it before fetching anything."""


@dataclass(frozen=True)
class NewBlockHashes:
    """Blocks the sender has just accepted; the receiver fetches those it lacks."""

    TYPE: ClassVar[MessageType] = MessageType.NEW_BLOCK_HASHES

    blocks: tuple[AnnouncedBlock, ...]
    """At most :data:`MAX_ANNOUNCED_BLOCKS` announcements."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_count(writer, len(self.blocks), MAX_ANNOUNCED_BLOCKS)
        for entry in self.blocks:
            writer.fixed(entry.block_hash, HASH_SIZE).varint(entry.height)

    @classmethod
    def read(cls, reader: Reader) -> NewBlockHashes:
        """Decode the body."""
        count = _read_count(reader, MAX_ANNOUNCED_BLOCKS, HASH_SIZE + 1)
        return cls(
            tuple([AnnouncedBlock(reader.fixed(HASH_SIZE), reader.varint()) for _ in range(count)])
        )


@dataclass(frozen=True)
class GetHeaders:
    """Ask for the headers that follow the first locator hash the peer knows."""

    TYPE: ClassVar[MessageType] = MessageType.GET_HEADERS

    locator: tuple[bytes, ...]
    """Block hashes of the requester's chain, newest first, ending with genesis."""
    stop_hash: bytes = NO_STOP_HASH
    """Last header wanted, or :data:`NO_STOP_HASH`."""
    max_count: int = MAX_HEADERS
    """Most headers wanted, at most :data:`MAX_HEADERS`."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_hashes(writer, self.locator, MAX_LOCATOR_HASHES)
        writer.fixed(self.stop_hash, HASH_SIZE)
        _write_count(writer, self.max_count, MAX_HEADERS)

    @classmethod
    def read(cls, reader: Reader) -> GetHeaders:
        """Decode the body."""
        locator = _read_hashes(reader, MAX_LOCATOR_HASHES)
        return cls(locator, reader.fixed(HASH_SIZE), reader.count(MAX_HEADERS))


@dataclass(frozen=True)
class Headers:
    """Consecutive headers answering a ``GetHeaders``, oldest first."""

    TYPE: ClassVar[MessageType] = MessageType.HEADERS

    headers: tuple[Header, ...]
    """At most :data:`MAX_HEADERS`, and the message fits :data:`MAX_MESSAGE_SIZE`."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_count(writer, len(self.headers), MAX_HEADERS)
        for header in self.headers:
            writer.raw(header.encode())

    @classmethod
    def read(cls, reader: Reader) -> Headers:
        """Decode the body."""
        count = _read_count(reader, MAX_HEADERS, 1)
        return cls(tuple([Header.read(reader) for _ in range(count)]))


@dataclass(frozen=True)
class GetBlocks:
    """Ask for whole blocks by hash."""

    TYPE: ClassVar[MessageType] = MessageType.GET_BLOCKS

    hashes: tuple[bytes, ...]
    """At most :data:`MAX_GET_BLOCKS` block hashes."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_hashes(writer, self.hashes, MAX_GET_BLOCKS)

    @classmethod
    def read(cls, reader: Reader) -> GetBlocks:
        """Decode the body."""
        return cls(_read_hashes(reader, MAX_GET_BLOCKS))


@dataclass(frozen=True)
class Blocks:
    """Blocks answering a ``GetBlocks`` (possibly spread over several messages)."""

    TYPE: ClassVar[MessageType] = MessageType.BLOCKS

    blocks: tuple[Block, ...]
    """At most :data:`MAX_GET_BLOCKS`, and the message fits :data:`MAX_MESSAGE_SIZE`."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_count(writer, len(self.blocks), MAX_GET_BLOCKS)
        for block in self.blocks:
            writer.var_bytes(block.encode(), MAX_BLOCK_SIZE)

    @classmethod
    def read(cls, reader: Reader) -> Blocks:
        """Decode the body; each block is length-prefixed and bounded before it is read."""
        count = _read_count(reader, MAX_GET_BLOCKS, 1)
        return cls(tuple([Block.decode(reader.var_bytes(MAX_BLOCK_SIZE)) for _ in range(count)]))


# --- transactions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewTransactionHashes:
    """Transactions the sender has just accepted into its mempool, by id."""

    TYPE: ClassVar[MessageType] = MessageType.NEW_TRANSACTION_HASHES

    tx_ids: tuple[bytes, ...]
    """At most :data:`MAX_ANNOUNCED_TRANSACTIONS` transaction ids."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_hashes(writer, self.tx_ids, MAX_ANNOUNCED_TRANSACTIONS)

    @classmethod
    def read(cls, reader: Reader) -> NewTransactionHashes:
        """Decode the body."""
        return cls(_read_hashes(reader, MAX_ANNOUNCED_TRANSACTIONS))


@dataclass(frozen=True)
class GetTransactions:
    """Ask for announced transactions by id."""

    TYPE: ClassVar[MessageType] = MessageType.GET_TRANSACTIONS

    tx_ids: tuple[bytes, ...]
    """At most :data:`MAX_GET_TRANSACTIONS` transaction ids."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_hashes(writer, self.tx_ids, MAX_GET_TRANSACTIONS)

    @classmethod
    def read(cls, reader: Reader) -> GetTransactions:
        """Decode the body."""
        return cls(_read_hashes(reader, MAX_GET_TRANSACTIONS))


@dataclass(frozen=True)
class Transactions:
    """Transactions answering a ``GetTransactions`` (possibly spread over several messages)."""

    TYPE: ClassVar[MessageType] = MessageType.TRANSACTIONS

    transactions: tuple[AnyTransaction, ...]
    """At most :data:`MAX_TRANSACTIONS`, and the message fits :data:`MAX_MESSAGE_SIZE`."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_count(writer, len(self.transactions), MAX_TRANSACTIONS)
        for tx in self.transactions:
            writer.raw(tx.encode())

    @classmethod
    def read(cls, reader: Reader) -> Transactions:
        """Decode the body."""
        count = _read_count(reader, MAX_TRANSACTIONS, 1)
        return cls(tuple([read_transaction(reader) for _ in range(count)]))


# --- not found -------------------------------------------------------------------------------

_NOT_FOUND_BOUNDS: Final = {
    InventoryKind.BLOCK: MAX_GET_BLOCKS,
    InventoryKind.TRANSACTION: MAX_GET_TRANSACTIONS,
}


@dataclass(frozen=True)
class NotFound:
    """Requested blocks or transactions the sender does not have."""

    TYPE: ClassVar[MessageType] = MessageType.NOT_FOUND

    kind: InventoryKind
    """Whether ``hashes`` are block hashes or transaction ids."""
    hashes: tuple[bytes, ...]
    """At most as many as one request of that kind may name."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        writer.u8(self.kind)
        _write_hashes(writer, self.hashes, _NOT_FOUND_BOUNDS[self.kind])

    @classmethod
    def read(cls, reader: Reader) -> NotFound:
        """Decode the body."""
        code = reader.u8()
        try:
            kind = InventoryKind(code)
        except ValueError:
            raise UnknownVersion(f"unknown inventory kind {code}") from None
        return cls(kind, _read_hashes(reader, _NOT_FOUND_BOUNDS[kind]))


# --- shared execution ------------------------------------------------------------------------


def _read_flag(reader: Reader, what: str) -> bool:
    flag = reader.u8()
    if flag > 1:
        raise UnknownVersion(f"{what} flag {flag} is neither 0 nor 1")
    return flag == 1


@dataclass(frozen=True)
class EngineRequest:
    """One part of an engine call to a peer that serves execution: the JSON params array (UTF-8),
    cut into parts of at most :data:`~qoin.p2p.statements.ENGINE_CHUNK` bytes, numbered from 0."""

    TYPE: ClassVar[MessageType] = MessageType.ENGINE_REQUEST

    request_id: int
    """Chosen by the requester, unique among its calls in flight to this peer."""
    method: str
    """The engine method (the same in every part), 1 to 64 UTF-8 bytes."""
    part: int
    """Index of this part."""
    last: bool
    """Whether this is the last part."""
    data: bytes
    """This part's bytes of the params."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_u64(writer, self.request_id)
        method = _encode_text(self.method)
        if not method:
            raise OversizeField("an empty method name")
        writer.var_bytes(method, MAX_METHOD_BYTES).varint(self.part).u8(int(self.last))
        writer.var_bytes(self.data, ENGINE_CHUNK)

    @classmethod
    def read(cls, reader: Reader) -> EngineRequest:
        """Decode the body."""
        request_id = _read_u64(reader)
        method = _decode_text(reader.var_bytes(MAX_METHOD_BYTES))
        if not method:
            raise MalformedText("an empty method name")
        part = reader.varint()
        last = _read_flag(reader, "last")
        return cls(request_id, method, part, last, reader.var_bytes(ENGINE_CHUNK))


@dataclass(frozen=True)
class EngineAnswer:
    """One part of the answer to an ``EngineRequest``: the JSON result (or with ``error`` the
    UTF-8 error text); the last part carries the serving node's signature of the statement."""

    TYPE: ClassVar[MessageType] = MessageType.ENGINE_ANSWER

    request_id: int
    """The request answered."""
    part: int
    """Index of this part."""
    last: bool
    """Whether this is the last part."""
    error: bool
    """Whether the answer is an error text (the same in every part)."""
    data: bytes
    """This part's bytes of the answer."""
    signature: bytes = b""
    """The encoded hybrid signature, on the last part only."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        if self.signature and not self.last:
            raise OversizeField("a signature on a part that is not the last")
        _write_u64(writer, self.request_id)
        writer.varint(self.part).u8(int(self.last)).u8(int(self.error))
        writer.var_bytes(self.data, ENGINE_CHUNK).var_bytes(self.signature, MAX_SIGNATURE_BYTES)

    @classmethod
    def read(cls, reader: Reader) -> EngineAnswer:
        """Decode the body."""
        request_id = _read_u64(reader)
        part = reader.varint()
        last = _read_flag(reader, "last")
        error = _read_flag(reader, "error")
        data = reader.var_bytes(ENGINE_CHUNK)
        signature = reader.var_bytes(MAX_SIGNATURE_BYTES)
        if signature and not last:
            raise UnknownVersion("a signature on a part that is not the last")
        return cls(request_id, part, last, error, data, signature)


@dataclass(frozen=True)
class GetExecutionNodes:
    """Ask a peer for the connected peers it knows to serve execution."""

    TYPE: ClassVar[MessageType] = MessageType.GET_EXECUTION_NODES

    def write(self, writer: Writer) -> None:
        """Append the (empty) body."""

    @classmethod
    def read(cls, reader: Reader) -> GetExecutionNodes:
        """Decode the (empty) body."""
        return cls()


@dataclass(frozen=True)
class ExecutionNodes:
    """Peers that serve execution, as ``qoin1…@host:port`` (an answer to ``GetExecutionNodes``)."""

    TYPE: ClassVar[MessageType] = MessageType.EXECUTION_NODES

    nodes: tuple[str, ...]
    """At most :data:`MAX_EXECUTION_NODES` entries of at most :data:`MAX_ENODE_BYTES` bytes."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        _write_count(writer, len(self.nodes), MAX_EXECUTION_NODES)
        for node in self.nodes:
            writer.var_bytes(_encode_text(node), MAX_ENODE_BYTES)

    @classmethod
    def read(cls, reader: Reader) -> ExecutionNodes:
        """Decode the body."""
        count = _read_count(reader, MAX_EXECUTION_NODES, 1)
        return cls(tuple([_decode_text(reader.var_bytes(MAX_ENODE_BYTES)) for _ in range(count)]))


@dataclass(frozen=True)
class ExecutionFraud:
    """Evidence that a node serving execution lied (opaque here: the consensus client judges)."""

    TYPE: ClassVar[MessageType] = MessageType.EXECUTION_FRAUD

    report: bytes
    """At most :data:`MAX_FRAUD_REPORT` bytes."""

    def write(self, writer: Writer) -> None:
        """Append the body."""
        writer.var_bytes(self.report, MAX_FRAUD_REPORT)

    @classmethod
    def read(cls, reader: Reader) -> ExecutionFraud:
        """Decode the body."""
        return cls(reader.var_bytes(MAX_FRAUD_REPORT))


# --- messages --------------------------------------------------------------------------------

Message = (
    Status
    | Ping
    | Pong
    | Disconnect
    | NewBlockHashes
    | GetHeaders
    | Headers
    | GetBlocks
    | Blocks
    | NewTransactionHashes
    | GetTransactions
    | Transactions
    | NotFound
    | EngineRequest
    | EngineAnswer
    | GetExecutionNodes
    | ExecutionNodes
    | ExecutionFraud
)
"""Any protocol message."""

_READERS: Final[dict[int, Callable[[Reader], Message]]] = {
    MessageType.STATUS: Status.read,
    MessageType.PING: Ping.read,
    MessageType.PONG: Pong.read,
    MessageType.DISCONNECT: Disconnect.read,
    MessageType.NEW_BLOCK_HASHES: NewBlockHashes.read,
    MessageType.GET_HEADERS: GetHeaders.read,
    MessageType.HEADERS: Headers.read,
    MessageType.GET_BLOCKS: GetBlocks.read,
    MessageType.BLOCKS: Blocks.read,
    MessageType.NEW_TRANSACTION_HASHES: NewTransactionHashes.read,
    MessageType.GET_TRANSACTIONS: GetTransactions.read,
    MessageType.TRANSACTIONS: Transactions.read,
    MessageType.NOT_FOUND: NotFound.read,
    MessageType.ENGINE_REQUEST: EngineRequest.read,
    MessageType.ENGINE_ANSWER: EngineAnswer.read,
    MessageType.GET_EXECUTION_NODES: GetExecutionNodes.read,
    MessageType.EXECUTION_NODES: ExecutionNodes.read,
    MessageType.EXECUTION_FRAUD: ExecutionFraud.read,
}


def encode_message(message: Message) -> bytes:
    """The canonical encoding: type byte, then body; at most :data:`MAX_MESSAGE_SIZE` bytes."""
    writer = Writer().u8(message.TYPE)
    message.write(writer)
    data = writer.bytes()
    if len(data) > MAX_MESSAGE_SIZE:
        raise OversizeField(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return data


def decode_message(data: bytes) -> Message:
    """Decode one message (a frame payload), refusing anything that is not canonical."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise OversizeField(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    reader = Reader(data)
    tag = reader.u8()
    read = _READERS.get(tag)
    if read is None:
        raise UnknownMessageType(f"unknown message type 0x{tag:02x}")
    message = read(reader)
    reader.finish()
    return message


# --- splitting replies to fit a frame --------------------------------------------------------


def _chunks(sizes: Sequence[int], max_count: int, max_size: int) -> list[slice]:
    """Cut items of the given encoded sizes into runs whose messages fit ``max_size`` bytes."""
    budget = max_size - 1 - len(encode_varint(max_count))  # type byte and the largest count
    chunks: list[slice] = []
    start = used = 0
    for index, size in enumerate(sizes):
        if size > budget:
            raise OversizeField(f"an item of {size} bytes cannot fit a {max_size}-byte message")
        if index - start == max_count or used + size > budget:
            chunks.append(slice(start, index))
            start, used = index, 0
        used += size
    if start < len(sizes):
        chunks.append(slice(start, len(sizes)))
    return chunks


def split_blocks(blocks: Sequence[Block], max_size: int = MAX_MESSAGE_SIZE) -> list[Blocks]:
    """``Blocks`` messages carrying ``blocks`` in order, each at most ``max_size`` bytes."""
    items = tuple(blocks)
    sizes = [len(encode_varint(len(b.encode()))) + len(b.encode()) for b in items]
    return [Blocks(items[run]) for run in _chunks(sizes, MAX_GET_BLOCKS, max_size)]


def encoded_blocks_messages(
    encodings: Sequence[bytes], max_size: int = MAX_MESSAGE_SIZE
) -> list[bytes]:
    """The encoded ``Blocks`` messages of :func:`split_blocks`, built from blocks' stored
    encodings without decoding them (a node serving blocks sends what it stored). The caller
    vouches that each encoding is a canonical block of at most ``MAX_BLOCK_SIZE`` bytes."""
    sizes = [len(encode_varint(len(e))) + len(e) for e in encodings]
    messages = []
    for run in _chunks(sizes, MAX_GET_BLOCKS, max_size):
        writer = Writer().u8(MessageType.BLOCKS)
        chunk = encodings[run]
        _write_count(writer, len(chunk), MAX_GET_BLOCKS)
        for encoding in chunk:
            writer.var_bytes(encoding, MAX_BLOCK_SIZE)
        messages.append(writer.bytes())
    return messages


def split_transactions(
    transactions: Sequence[AnyTransaction], max_size: int = MAX_MESSAGE_SIZE
) -> list[Transactions]:
    """``Transactions`` messages carrying ``transactions`` in order, each at most ``max_size``."""
    items = tuple(transactions)
    sizes = [len(tx.encode()) for tx in items]
    return [Transactions(items[run]) for run in _chunks(sizes, MAX_TRANSACTIONS, max_size)]


def split_headers(headers: Sequence[Header], max_size: int = MAX_MESSAGE_SIZE) -> list[Headers]:
    """``Headers`` messages carrying ``headers`` in order, each at most ``max_size`` bytes and
    :data:`MAX_HEADERS` headers. A ``GetHeaders`` is answered with the first one only."""
    items = tuple(headers)
    sizes = [len(h.encode()) for h in items]
    return [Headers(items[run]) for run in _chunks(sizes, MAX_HEADERS, max_size)]
