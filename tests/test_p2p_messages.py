"""P2P protocol messages: canonical round trips, bounds checked before allocation, frame splitting."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.chain.block import MAX_BLOCK_SIZE, Block, Coinbase, Header
from qoin.chain.builder import next_on_head
from qoin.chain.chain import Chain
from qoin.chain.transaction import MAX_PAYLOAD_SIZE as MAX_TX_PAYLOAD_SIZE
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridPublicKey, HybridSignature
from qoin.crypto.suites import FALCON1024_MLDSA87_SLHDSA
from qoin.encoding.codec import (
    DecodeError,
    NonCanonicalInteger,
    OversizeField,
    TrailingBytes,
    TruncatedInput,
    UnknownVersion,
    encode_varint,
)
from qoin.p2p import messages as m
from qoin.p2p.messages import (
    MAX_ANNOUNCED_BLOCKS,
    MAX_ANNOUNCED_TRANSACTIONS,
    MAX_DISCONNECT_TEXT,
    MAX_GET_BLOCKS,
    MAX_GET_TRANSACTIONS,
    MAX_HEADERS,
    MAX_LOCATOR_HASHES,
    MAX_MESSAGE_SIZE,
    MAX_TRANSACTIONS,
    NO_STOP_HASH,
    PROTOCOL_VERSION,
    AnnouncedBlock,
    Blocks,
    Disconnect,
    DisconnectReason,
    GetBlocks,
    GetHeaders,
    GetTransactions,
    Headers,
    InventoryKind,
    MalformedText,
    Message,
    MessageType,
    NewBlockHashes,
    NewTransactionHashes,
    NotFound,
    Ping,
    Pong,
    Status,
    Transactions,
    UnknownMessageType,
    UnsupportedProtocol,
    decode_message,
    encode_message,
    encoded_blocks_messages,
    split_blocks,
    split_headers,
    split_transactions,
)
from qoin.p2p.transport import MAX_PAYLOAD_SIZE
from tests.chainutil import on_schedule, test_genesis
from tests.keys import keypair_for
from tests.strategies import HASHES, U64, blocks, headers, transactions

SLOW = settings(
    max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
FAR_FUTURE = on_schedule(test_genesis(), 100_000)

# --- strategies ------------------------------------------------------------------------------


T = TypeVar("T")


def _tuples(elements: st.SearchStrategy[T], max_size: int) -> st.SearchStrategy[tuple[T, ...]]:
    return st.lists(elements, max_size=max_size).map(tuple)


texts = st.text(st.characters(codec="utf-8"), max_size=MAX_DISCONNECT_TEXT // 4)

STRATEGIES: dict[MessageType, st.SearchStrategy[Message]] = {
    MessageType.STATUS: st.builds(
        Status,
        chain_id=U64,
        genesis_hash=HASHES,
        head_hash=HASHES,
        head_height=U64,
        total_work=st.integers(min_value=0, max_value=2**256 - 1),
        listen_port=st.integers(min_value=0, max_value=0xFFFF),
        services=U64,
    ),
    MessageType.PING: st.builds(Ping, U64),
    MessageType.PONG: st.builds(Pong, U64),
    MessageType.DISCONNECT: st.builds(Disconnect, st.integers(0, 255), texts),
    MessageType.NEW_BLOCK_HASHES: st.builds(
        NewBlockHashes, _tuples(st.builds(AnnouncedBlock, HASHES, U64), MAX_ANNOUNCED_BLOCKS)
    ),
    MessageType.GET_HEADERS: st.builds(
        GetHeaders,
        _tuples(HASHES, MAX_LOCATOR_HASHES),
        st.just(NO_STOP_HASH) | HASHES,
        st.integers(0, MAX_HEADERS),
    ),
    MessageType.HEADERS: st.builds(Headers, _tuples(headers, 3)),
    MessageType.GET_BLOCKS: st.builds(GetBlocks, _tuples(HASHES, 16)),
    MessageType.BLOCKS: st.builds(Blocks, _tuples(blocks, 2)),
    MessageType.NEW_TRANSACTION_HASHES: st.builds(NewTransactionHashes, _tuples(HASHES, 16)),
    MessageType.GET_TRANSACTIONS: st.builds(GetTransactions, _tuples(HASHES, 16)),
    MessageType.TRANSACTIONS: st.builds(Transactions, _tuples(transactions, 3)),
    MessageType.NOT_FOUND: st.builds(NotFound, st.sampled_from(InventoryKind), _tuples(HASHES, 16)),
    MessageType.ENGINE_REQUEST: st.builds(
        m.EngineRequest,
        U64,
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=16),
        U64,
        st.booleans(),
        st.binary(max_size=64),
    ),
    MessageType.ENGINE_ANSWER: st.builds(
        lambda rid, part, last, error, data, sig: m.EngineAnswer(
            rid, part, last, error, data, sig if last else b""
        ),
        U64,
        U64,
        st.booleans(),
        st.booleans(),
        st.binary(max_size=64),
        st.binary(max_size=64),
    ),
    MessageType.GET_EXECUTION_NODES: st.just(m.GetExecutionNodes()),
    MessageType.EXECUTION_NODES: st.builds(
        m.ExecutionNodes, _tuples(st.text(max_size=20), m.MAX_EXECUTION_NODES)
    ),
    MessageType.EXECUTION_FRAUD: st.builds(m.ExecutionFraud, st.binary(max_size=256)),
}
TYPES = list(MessageType)


# --- real blocks, built once -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_blocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Block]]:
    """Three mined blocks of the test network; the second carries a signed first-spend transfer."""
    chain = Chain.open(Path(tmp_path_factory.mktemp("chain")), test_genesis())
    funded, miner = keypair_for(index=9), keypair_for(index=0)
    transfer = sign_transfer(
        funded, chain_id=chain.genesis.chain_id, nonce=0, recipient=miner.address, amount=5, fee=1
    )
    mined = []
    for txs in ((), (transfer,), ()):
        block = next_on_head(chain, miner, txs)
        chain.import_block(block, now_ms=FAR_FUTURE)
        mined.append(block)
    yield mined
    chain.close()


# --- round trips and canonicity --------------------------------------------------------------


def test_every_type_has_a_strategy_and_a_reader() -> None:
    assert set(STRATEGIES) == set(MessageType)
    assert set(m._READERS) == set(MessageType)
    for message_type, read in m._READERS.items():
        assert read.__self__.TYPE is message_type  # type: ignore[attr-defined]


@SLOW
@pytest.mark.parametrize("message_type", TYPES, ids=lambda t: t.name)
@given(data=st.data())
def test_roundtrip(message_type: MessageType, data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[message_type])
    encoded = encode_message(message)
    assert encoded[0] == message_type
    assert decode_message(encoded) == message


@SLOW
@pytest.mark.parametrize("message_type", TYPES, ids=lambda t: t.name)
@given(data=st.data())
def test_decoding_is_canonical_under_mutation(
    message_type: MessageType, data: st.DataObject
) -> None:
    encoded = bytearray(encode_message(data.draw(STRATEGIES[message_type])))
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        encoded[position] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=min(4, len(encoded))))
    mutated = bytes(encoded[: len(encoded) - cut]) + data.draw(st.binary(max_size=3))
    try:
        decoded = decode_message(mutated)
    except DecodeError:
        return
    assert encode_message(decoded) == mutated


@pytest.mark.parametrize("message_type", TYPES, ids=lambda t: t.name)
@given(raw=st.binary(max_size=120))
def test_random_bodies_decode_canonically_or_fail(message_type: MessageType, raw: bytes) -> None:
    data = bytes((message_type,)) + raw
    try:
        decoded = decode_message(data)
    except DecodeError:
        return
    assert encode_message(decoded) == data


def test_real_blocks_headers_and_transactions_roundtrip(real_blocks: list[Block]) -> None:
    transfer = real_blocks[1].transactions[0]
    assert transfer.public_keys is not None  # a first spend: the keys travel with it
    for message in (
        Blocks(tuple(real_blocks)),
        Headers(tuple(b.header for b in real_blocks)),
        Transactions((transfer,)),
        NewBlockHashes(tuple(AnnouncedBlock(b.block_hash, b.header.height) for b in real_blocks)),
        GetBlocks(tuple(b.block_hash for b in real_blocks)),
        NewTransactionHashes((transfer.tx_id,)),
    ):
        assert decode_message(encode_message(message)) == message
    decoded = decode_message(encode_message(Blocks(tuple(real_blocks))))
    assert isinstance(decoded, Blocks)
    assert [b.block_hash for b in decoded.blocks] == [b.block_hash for b in real_blocks]
    assert decoded.blocks[1].transactions[0].tx_id == transfer.tx_id


def test_known_encodings() -> None:
    assert encode_message(Ping(1)) == b"\x02" + bytes(7) + b"\x01"
    assert encode_message(Pong(2**64 - 1)) == b"\x03" + b"\xff" * 8
    assert (
        encode_message(Disconnect(DisconnectReason.TOO_MANY_PEERS, "full")) == b"\x04\x03\x04full"
    )
    assert encode_message(GetBlocks(())) == b"\x13\x00"
    assert encode_message(NotFound(InventoryKind.TRANSACTION, (b"\x07" * 32,))) == (
        b"\x30\x02\x01" + b"\x07" * 32
    )
    status = Status(7, b"\x01" * 32, b"\x02" * 32, 300, 2**70, 30303)
    assert encode_message(status) == (
        b"\x01\x02\x07"
        + b"\x01" * 32
        + b"\x02" * 32
        + encode_varint(300)
        + encode_varint(2**70, 256)
        + encode_varint(30303)
        + b"\x00"
    )
    assert encode_message(GetHeaders((b"\x05" * 32,), max_count=2000)) == (
        b"\x11\x01" + b"\x05" * 32 + bytes(32) + encode_varint(2000)
    )


# --- type tags, versions, text ---------------------------------------------------------------


def test_unknown_type_tags_rejected() -> None:
    known = {int(t) for t in MessageType}
    for tag in range(256):
        if tag not in known:
            with pytest.raises(UnknownMessageType):
                decode_message(bytes((tag,)) + bytes(40))
    assert issubclass(UnknownMessageType, UnknownVersion)
    with pytest.raises(TruncatedInput):
        decode_message(b"")


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(TrailingBytes):
        decode_message(encode_message(Ping(5)) + b"\x00")
    with pytest.raises(TrailingBytes):
        decode_message(encode_message(GetBlocks(())) + b"\x00")


def test_other_protocol_version_refused_before_the_rest() -> None:
    future = encode_message(Status(1, bytes(32), bytes(32), 0, 1, 0, version=3))
    with pytest.raises(UnsupportedProtocol) as caught:
        decode_message(future)
    assert caught.value.version == 3
    with pytest.raises(UnsupportedProtocol):  # whatever a later version puts after the version
        decode_message(b"\x01\x03" + b"\xff" * 5)
    with pytest.raises(UnsupportedProtocol):  # version 1 (before shared execution)
        decode_message(b"\x01\x01" + b"\xff" * 5)
    assert Status(1, bytes(32), bytes(32), 0, 1, 0).version == PROTOCOL_VERSION


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"ok\x80"],
    ids=["ff", "overlong-nul", "surrogate", "cut", "above-10ffff", "stray-continuation"],
)
def test_bad_utf8_in_disconnect_rejected(bad: bytes) -> None:
    with pytest.raises(MalformedText):
        decode_message(b"\x04\x01" + encode_varint(len(bad)) + bad)


@given(st.binary(max_size=MAX_DISCONNECT_TEXT))
def test_disconnect_text_is_valid_utf8_or_refused(raw: bytes) -> None:
    data = b"\x04\x00" + encode_varint(len(raw)) + raw
    try:
        decoded = decode_message(data)
    except MalformedText:
        return
    assert encode_message(decoded) == data


def test_disconnect_text_bounds() -> None:
    longest = "é" * (MAX_DISCONNECT_TEXT // 2)
    assert decode_message(encode_message(Disconnect(0, longest))) == Disconnect(0, longest)
    with pytest.raises(OversizeField):
        encode_message(Disconnect(0, longest + "x"))
    with pytest.raises(OversizeField):
        decode_message(b"\x04\x00" + encode_varint(MAX_DISCONNECT_TEXT + 1) + b"a" * 257)
    with pytest.raises(MalformedText):
        encode_message(Disconnect(0, "\ud800"))
    assert decode_message(b"\x04\xc8\x00") == Disconnect(200, "")  # unknown reasons still decode


# --- bounds, before allocation ---------------------------------------------------------------

LIST_TAGS = {
    MessageType.NEW_BLOCK_HASHES: (b"", MAX_ANNOUNCED_BLOCKS),
    MessageType.GET_HEADERS: (b"", MAX_LOCATOR_HASHES),
    MessageType.HEADERS: (b"", MAX_HEADERS),
    MessageType.GET_BLOCKS: (b"", MAX_GET_BLOCKS),
    MessageType.BLOCKS: (b"", MAX_GET_BLOCKS),
    MessageType.NEW_TRANSACTION_HASHES: (b"", MAX_ANNOUNCED_TRANSACTIONS),
    MessageType.GET_TRANSACTIONS: (b"", MAX_GET_TRANSACTIONS),
    MessageType.TRANSACTIONS: (b"", MAX_TRANSACTIONS),
    MessageType.NOT_FOUND: (b"\x01", MAX_GET_BLOCKS),
}


def _peak_bytes(action: Callable[[], object]) -> int:
    """Peak memory allocated while ``action`` runs (it must raise a DecodeError)."""
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("message_type", list(LIST_TAGS), ids=lambda t: t.name)
def test_counts_bounded_before_allocation(message_type: MessageType) -> None:
    prefix, bound = LIST_TAGS[message_type]
    head = bytes((message_type,)) + prefix
    for claimed in (bound + 1, 10**9, 2**64 - 1):
        data = head + encode_varint(claimed) + bytes(10)
        with pytest.raises(OversizeField):
            decode_message(data)
        assert _peak_bytes(partial(decode_message, data)) < 64 * 1024
    # The largest allowed count, with almost nothing behind it, fails at once too.
    short = head + encode_varint(bound) + bytes(10)
    with pytest.raises(TruncatedInput):
        decode_message(short)
    assert _peak_bytes(lambda: decode_message(short)) < 64 * 1024


def test_hash_lists_at_and_over_their_bounds() -> None:
    cases: list[tuple[Callable[[tuple[bytes, ...]], Message], int]] = [
        (GetBlocks, MAX_GET_BLOCKS),
        (NewTransactionHashes, MAX_ANNOUNCED_TRANSACTIONS),
        (GetTransactions, MAX_GET_TRANSACTIONS),
        (GetHeaders, MAX_LOCATOR_HASHES),
        (lambda h: NotFound(InventoryKind.BLOCK, h), MAX_GET_BLOCKS),
        (lambda h: NotFound(InventoryKind.TRANSACTION, h), MAX_GET_TRANSACTIONS),
    ]
    for build, bound in cases:
        full = build((b"\xab" * 32,) * bound)
        assert decode_message(encode_message(full)) == full
        with pytest.raises(OversizeField):
            encode_message(build((b"\xab" * 32,) * (bound + 1)))
    too_many = (AnnouncedBlock(b"\x01" * 32, 1),) * (MAX_ANNOUNCED_BLOCKS + 1)
    with pytest.raises(OversizeField):
        encode_message(NewBlockHashes(too_many))
    # A NotFound for transactions may list more hashes than one for blocks.
    over_blocks = encode_message(NotFound(InventoryKind.TRANSACTION, (bytes(32),) * 129))
    with pytest.raises(OversizeField):
        decode_message(b"\x30\x01" + over_blocks[2:])


def test_field_bounds() -> None:
    with pytest.raises(OversizeField):
        decode_message(b"\x11\x00" + bytes(32) + encode_varint(MAX_HEADERS + 1))
    with pytest.raises(OversizeField):
        encode_message(GetHeaders((), max_count=MAX_HEADERS + 1))
    with pytest.raises(UnknownVersion):
        decode_message(b"\x30\x03\x00")
    with pytest.raises(OversizeField):
        encode_message(Ping(2**64))
    with pytest.raises(OversizeField):
        encode_message(Status(1, bytes(32), bytes(32), 0, 2**256, 0))
    with pytest.raises(OversizeField):
        encode_message(Status(1, bytes(32), bytes(32), 0, 0, 65536))
    with pytest.raises(OversizeField):
        encode_message(GetBlocks((b"\x01" * 31,)))
    status = encode_message(Status(1, bytes(32), bytes(32), 0, 0, 0))
    work_at = 2 + 1 + 64 + 1
    too_much_work = encode_varint(2**256 - 1, 256)[:-1] + b"\x7f"  # a 37-byte varint past 2^256
    with pytest.raises(OversizeField):
        decode_message(status[:work_at] + too_much_work + status[work_at + 1 :])
    for length in (MAX_BLOCK_SIZE + 1, 10**9):
        with pytest.raises(OversizeField):
            decode_message(b"\x14\x01" + encode_varint(length) + bytes(10))
    claimed_block = b"\x14\x01" + encode_varint(MAX_BLOCK_SIZE) + bytes(10)
    with pytest.raises(TruncatedInput):
        decode_message(claimed_block)
    assert _peak_bytes(lambda: decode_message(claimed_block)) < 64 * 1024


def test_whole_message_bounded_before_decoding() -> None:
    assert MAX_MESSAGE_SIZE == MAX_PAYLOAD_SIZE
    huge = bytes((MessageType.GET_BLOCKS,)) + bytes(MAX_MESSAGE_SIZE)
    with pytest.raises(OversizeField):
        decode_message(huge)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x13\x80\x00", "count"),
        (b"\x10\x01" + b"\x01" * 32 + b"\x81\x00", "height"),
        (b"\x11\x00" + bytes(32) + b"\x80\x00", "max_count"),
        (b"\x01\x81\x00", "version"),
        (b"\x01\x02\x80\x00", "chain id"),
        (b"\x04\x00\x80\x00", "text length"),
        (b"\x14\x01\x80\x00", "block length"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_non_minimal_varints_rejected(data: bytes, what: str) -> None:
    with pytest.raises(NonCanonicalInteger):
        decode_message(data + bytes(100))


# --- splitting replies to fit a frame --------------------------------------------------------


BIG_SUITE = FALCON1024_MLDSA87_SLHDSA
BIG_KEY = HybridPublicKey(BIG_SUITE, tuple(b"\x11" * n for n in BIG_SUITE.public_key_sizes))
BIG_SIGNATURE = HybridSignature(BIG_SUITE, tuple(b"\x22" * n for n in BIG_SUITE.signature_sizes))


def _big_transaction() -> Transaction:
    """A structurally valid transfer of about 22 kB: the largest suite, keys, a full payload."""
    return Transaction(
        chain_id=1,
        sender=Address(b"\x01" * 32),
        nonce=0,
        recipient=Address(b"\x02" * 32),
        amount=1,
        fee=1,
        payload=b"\x33" * MAX_TX_PAYLOAD_SIZE,
        public_keys=BIG_KEY,
        signature=BIG_SIGNATURE,
    )


def _items(message: Message) -> tuple[object, ...]:
    match message:
        case Blocks(blocks=items) | Headers(headers=items) | Transactions(transactions=items):
            return items
    raise AssertionError(f"not a list reply: {message!r}")


def _check_split(parts: Sequence[Message], items: Sequence[object], max_size: int) -> None:
    carried: list[object] = []
    for part in parts:
        encoded = encode_message(part)
        assert len(encoded) <= max_size
        assert decode_message(encoded) == part
        carried.extend(_items(part))
    assert carried == list(items)


def test_split_blocks_keeps_every_message_under_the_frame_limit(real_blocks: list[Block]) -> None:
    tx = _big_transaction()
    per_block = (MAX_BLOCK_SIZE - 64 * 1024) // len(tx.encode())
    header = real_blocks[0].header
    big = [Block(header, (), Coinbase(()), (tx,) * per_block) for _ in range(3)]
    assert all(len(b.encode()) > MAX_MESSAGE_SIZE // 2 for b in big)
    items = [big[0], real_blocks[1], big[1], big[2], real_blocks[2]]
    parts = split_blocks(items)
    assert [len(p.blocks) for p in parts] == [2, 1, 2]
    _check_split(parts, items, MAX_MESSAGE_SIZE)
    with pytest.raises(OversizeField):
        encode_message(Blocks((big[0], big[1])))


def test_split_by_count_and_size(real_blocks: list[Block]) -> None:
    many = [real_blocks[0]] * (2 * MAX_GET_BLOCKS + 5)
    assert [len(p.blocks) for p in split_blocks(many)] == [MAX_GET_BLOCKS, MAX_GET_BLOCKS, 5]
    later_spend = replace(real_blocks[1].transactions[0], public_keys=None)  # about 3.2 kB
    txs = [later_spend] * (MAX_TRANSACTIONS + 1)
    assert [len(p.transactions) for p in split_transactions(txs)] == [MAX_TRANSACTIONS, 1]
    big_txs = [_big_transaction()] * 1000
    parts = split_transactions(big_txs)
    assert len(parts) == 2
    _check_split(parts, big_txs, MAX_MESSAGE_SIZE)
    big_header = replace(real_blocks[0].header, miner=BIG_KEY, pow_proof=BIG_SIGNATURE)
    many_headers = [big_header] * MAX_HEADERS
    header_parts = split_headers(many_headers)
    assert len(header_parts) == 3  # about 18.5 kB each: the frame, not the count, is the bound
    assert all(len(encode_message(p)) <= MAX_MESSAGE_SIZE for p in header_parts)
    assert not split_blocks([])
    assert not split_headers([])
    assert not split_transactions([])


@SLOW
@given(st.lists(blocks, max_size=6), st.integers(min_value=20_000, max_value=80_000))
def test_blocks_served_from_stored_encodings_are_the_same_messages(
    items: list[Block], max_size: int
) -> None:
    try:
        expected = [encode_message(part) for part in split_blocks(items, max_size)]
    except OversizeField:
        with pytest.raises(OversizeField):
            encoded_blocks_messages([b.encode() for b in items], max_size)
        return
    assert encoded_blocks_messages([b.encode() for b in items], max_size) == expected


@SLOW
@given(st.lists(blocks, max_size=6), st.integers(min_value=20_000, max_value=80_000))
def test_split_blocks_with_small_limits(items: list[Block], max_size: int) -> None:
    try:
        parts = split_blocks(items, max_size)
    except OversizeField:
        assert any(len(b.encode()) + 8 > max_size for b in items)
        return
    _check_split(parts, items, max_size)
    for part, following in itertools.pairwise(parts):  # greedy: the next did not fit
        grown = Blocks((*part.blocks, following.blocks[0]))
        assert len(encode_message(grown)) > max_size - 2


@SLOW
@given(st.lists(headers, max_size=8), st.integers(min_value=20_000, max_value=60_000))
def test_split_headers_with_small_limits(items: list[Header], max_size: int) -> None:
    _check_split(split_headers(items, max_size), items, max_size)
