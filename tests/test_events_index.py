"""The event index: canonical events in SQLite, queried by range, emitter and topics."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.crypto.address import Address
from qoin.execution.events import (
    MAX_FILTER_ADDRESSES,
    MAX_LOG_RANGE,
    MAX_LOG_RESULTS,
    EventIndex,
    InvalidFilter,
    Log,
    LogFilter,
    LogQueryTooLarge,
    block_logs,
    log_json,
    parse_filter,
    parse_live_filter,
)
from qoin.execution.receipt import MAX_EVENTS, CallStatus, Event, Receipt


def h(label: str) -> bytes:
    """A 32-byte value named by ``label``."""
    return hashlib.sha3_256(label.encode()).digest()


A, B, C = Address(h("a")), Address(h("b")), Address(h("c"))
TRANSFER, APPROVAL, OTHER = h("Transfer"), h("Approval"), h("Other")
X, Y = h("x"), h("y")


def receipt(index: int, events: Sequence[Event], tx: str = "") -> Receipt:
    """A successful receipt carrying ``events``."""
    return Receipt(
        index, h(tx or f"tx{index}"), A, 0, False, CallStatus.SUCCESS, 0, "", b"", tuple(events)
    )


def block_hash(height: int, branch: str = "main") -> bytes:
    return h(f"{branch}/{height}")


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(tmp_path / "events.sqlite3", isolation_level=None)
    EventIndex.create(connection)
    EventIndex.create(connection)  # idempotent
    return connection


def add(
    index: EventIndex, db: sqlite3.Connection, height: int, receipts: Sequence[Receipt]
) -> None:
    """Add a block in a transaction, as the execution database does."""
    db.execute("BEGIN")
    index.add_block(block_hash(height), height, receipts)
    db.execute("COMMIT")


def chain(db: sqlite3.Connection) -> EventIndex:
    """Heights 1..4: events of A, B and C with various topics (height 3 has none)."""
    index = EventIndex(db)
    add(
        index,
        db,
        1,
        [
            receipt(0, [Event(A, (TRANSFER, X, Y), b"1"), Event(B, (APPROVAL,), b"2")]),
            receipt(1, []),
            receipt(2, [Event(A, (TRANSFER, Y), b"3")]),
        ],
    )
    add(index, db, 2, [receipt(0, [Event(C, (), b"4"), Event(B, (TRANSFER, X), b"5")])])
    add(index, db, 3, [receipt(0, [])])
    add(index, db, 4, [receipt(0, [Event(A, (OTHER, X, X, X), b"6")])])
    return index


def datas(logs: Sequence[Log]) -> list[bytes]:
    return [log.event.data for log in logs]


def test_positions_and_order(db: sqlite3.Connection) -> None:
    index = chain(db)
    logs = index.query(LogFilter(0, 10))
    assert datas(logs) == [b"1", b"2", b"3", b"4", b"5", b"6"]
    first, second, third = logs[:3]
    assert (first.height, first.log_index, first.receipt_index, first.tx_id) == (1, 0, 0, h("tx0"))
    assert (second.log_index, second.receipt_index) == (1, 0)
    # The log index counts across receipts (receipt 1 has none); the receipt index is its own.
    assert (third.log_index, third.receipt_index, third.tx_id) == (2, 2, h("tx2"))
    assert first.block_hash == block_hash(1)
    assert first.event == Event(A, (TRANSFER, X, Y), b"1")
    assert not first.removed
    assert datas(index.query(LogFilter(2, 3))) == [b"4", b"5"]
    assert index.query(LogFilter(3, 3)) == []
    assert datas(index.query(LogFilter(4, 4))) == [b"6"]


def test_addresses_and_topics(db: sqlite3.Connection) -> None:
    index = chain(db)

    def query(addresses: tuple[Address, ...] = (), topics: tuple[object, ...] = ()) -> list[bytes]:
        return datas(index.query(LogFilter(0, 10, addresses, topics)))  # type: ignore[arg-type]

    assert query((A,)) == [b"1", b"3", b"6"]
    assert query((B, C)) == [b"2", b"4", b"5"]
    assert query(topics=((TRANSFER,),)) == [b"1", b"3", b"5"]
    assert query(topics=((TRANSFER, APPROVAL),)) == [b"1", b"2", b"3", b"5"]
    assert query((A,), ((TRANSFER,),)) == [b"1", b"3"]
    # Wildcards: position 1 must exist (Ethereum's rule), whatever it holds.
    assert query(topics=(None,)) == [b"1", b"2", b"3", b"5", b"6"]
    assert query(topics=(None, None)) == [b"1", b"3", b"5", b"6"]
    assert query(topics=(None, (X,))) == [b"1", b"5", b"6"]
    assert query(topics=(None, (Y, X))) == [b"1", b"3", b"5", b"6"]
    assert query(topics=(None, None, (Y,))) == [b"1"]
    assert query(topics=(None, None, None, (X,))) == [b"6"]
    assert query((C,), ((TRANSFER,),)) == []


def test_reorganisation_and_persistence(db: sqlite3.Connection, tmp_path: Path) -> None:
    index = chain(db)
    # Height 4 leaves the chain; a block of another branch takes its place.
    db.execute("BEGIN")
    assert index.remove_block(block_hash(4)) == 1
    assert index.remove_block(block_hash(4)) == 0  # nothing left to remove
    assert index.remove_block(h("never indexed")) == 0
    side = block_hash(4, "side")
    assert index.add_block(side, 4, [receipt(0, [Event(C, (OTHER,), b"side")], "s")]) == 1
    db.execute("COMMIT")
    logs = index.query(LogFilter(4, 4))
    assert datas(logs) == [b"side"] and logs[0].block_hash == side
    # Adding at an indexed height replaces what was there (one block per height).
    db.execute("BEGIN")
    index.add_block(block_hash(4, "third"), 4, [receipt(0, [Event(B, (), b"third")])])
    db.execute("COMMIT")
    assert datas(index.query(LogFilter(4, 4))) == [b"third"]
    assert index.remove_block(side) == 0
    # A rolled-back change leaves the index as it was: the caller owns the transaction.
    db.execute("BEGIN")
    index.remove_block(block_hash(1))
    db.execute("ROLLBACK")
    assert datas(index.query(LogFilter(1, 1))) == [b"1", b"2", b"3"]
    db.close()
    reopened = sqlite3.connect(tmp_path / "events.sqlite3")
    assert datas(EventIndex(reopened).query(LogFilter(0, 10))) == [
        b"1",
        b"2",
        b"3",
        b"4",
        b"5",
        b"third",
    ]


def test_bounds_raise_an_actionable_error(db: sqlite3.Connection) -> None:
    index = chain(db)
    with pytest.raises(
        LogQueryTooLarge, match=f"narrow the block range: {MAX_LOG_RANGE + 1} blocks"
    ):
        index.query(LogFilter(0, MAX_LOG_RANGE))
    assert datas(index.query(LogFilter(1, MAX_LOG_RANGE))) == [b"1", b"2", b"3", b"4", b"5", b"6"]
    with pytest.raises(LogQueryTooLarge, match="more than 5 logs match; narrow the range or the"):
        index.query(LogFilter(0, 10), limit=5)
    assert len(index.query(LogFilter(0, 10), limit=6)) == 6
    # The default bound, with a block holding one more event than a query may return.
    per_receipt = MAX_EVENTS
    count = MAX_LOG_RESULTS + 1
    receipts = [
        receipt(
            i,
            [Event(B, (APPROVAL,), b"") for _ in range(min(per_receipt, count - i * per_receipt))],
        )
        for i in range((count + per_receipt - 1) // per_receipt)
    ]
    add(index, db, 5, receipts)
    with pytest.raises(LogQueryTooLarge, match=f"more than {MAX_LOG_RESULTS} logs match"):
        index.query(LogFilter(5, 5))
    assert len(index.query(LogFilter(5, 5, (A,)))) == 0
    assert len(index.query(LogFilter(0, 4))) == 6
    with pytest.raises(ValueError, match="a query returns 1 to"):
        index.query(LogFilter(0, 1), limit=MAX_LOG_RESULTS + 1)


def test_filter_validation() -> None:
    with pytest.raises(InvalidFilter, match="fromBlock must be at most toBlock"):
        LogFilter(5, 4)
    with pytest.raises(InvalidFilter, match="at most 4 topic positions"):
        LogFilter(0, 0, topics=(None,) * 5)
    with pytest.raises(InvalidFilter, match="lists no topic"):
        LogFilter(0, 0, topics=((),))
    with pytest.raises(InvalidFilter, match="topics are 32 bytes"):
        LogFilter(0, 0, topics=((b"short",),))
    with pytest.raises(InvalidFilter, match="at most 64 addresses"):
        LogFilter(0, 0, addresses=(A,) * (MAX_FILTER_ADDRESSES + 1))


def test_json_filters_and_logs() -> None:
    head = 50
    full = parse_filter(
        {
            "fromBlock": "earliest",
            "toBlock": 7,
            "address": [str(A), str(B)],
            "topics": [TRANSFER.hex(), None, [], ["0x" + X.hex(), Y.hex()]],
        },
        head,
    )
    assert full == LogFilter(0, 7, (A, B), ((TRANSFER,), None, None, (X, Y)))
    assert parse_filter({}, head) == LogFilter(head, head)
    assert parse_filter(None, head) == LogFilter(head, head)
    assert parse_filter({"fromBlock": 3, "address": str(C)}, head) == LogFilter(3, head, (C,))
    assert parse_live_filter({"address": str(A), "topics": [None, X.hex()]}) == LogFilter(
        0, 0, (A,), (None, (X,))
    )
    bad: list[tuple[object, str]] = [
        ([], "a filter is a JSON object"),
        ({"blockHash": "00"}, "unknown filter field"),
        ({"fromBlock": 9, "toBlock": 8}, "fromBlock 9 is after toBlock 8"),
        ({"fromBlock": -1}, "fromBlock must be a height"),
        ({"toBlock": "pending"}, "toBlock must be a height"),
        ({"fromBlock": True}, "fromBlock must be a height"),
        ({"address": "qoin1nope"}, "invalid address"),
        ({"address": 7}, "address must be"),
        ({"address": [str(A)] * 65}, "at most 64 addresses"),
        ({"address": ["x" * 1000]}, "each address is a qoin1"),
        ({"topics": "00"}, "topics is a list"),
        ({"topics": [None] * 5}, "topics is a list of at most 4"),
        ({"topics": ["zz" * 32]}, "topic at position 0 must be 32 bytes"),
        ({"topics": [None, "00" * 31]}, "topic at position 1 must be 32 bytes"),
        ({"topics": [[X.hex()] * 65]}, "more than 64 alternatives"),
        ({"topics": [7]}, "topic at position 0"),
    ]
    for obj, message in bad:
        with pytest.raises(InvalidFilter, match=message):
            parse_filter(obj, head)
    with pytest.raises(InvalidFilter, match=r"unknown filter field.*fromBlock"):
        parse_live_filter({"fromBlock": 1})

    log = Log(Event(A, (TRANSFER, X), b"\x01\x02"), 9, h("block"), h("tx"), 3, 11, removed=True)
    assert log_json(log) == {
        "address": str(A),
        "topics": [TRANSFER.hex(), X.hex()],
        "data": "0102",
        "blockNumber": 9,
        "blockHash": h("block").hex(),
        "transactionHash": h("tx").hex(),
        "transactionIndex": 3,
        "logIndex": 11,
        "removed": True,
    }


def test_block_logs_marks_removed() -> None:
    receipts = [receipt(0, [Event(A, (), b"a")]), receipt(1, [Event(B, (), b"b")])]
    logs = block_logs(h("blk"), 3, receipts, removed=True)
    assert [(log.log_index, log.receipt_index, log.removed) for log in logs] == [
        (0, 0, True),
        (1, 1, True),
    ]


# -- property: the SQL query agrees with a brute-force filter -----------------------------------

EMITTERS = (A, B, C)
TOPICS = (TRANSFER, APPROVAL, X)
events = st.builds(
    Event,
    st.sampled_from(EMITTERS),
    st.lists(st.sampled_from(TOPICS), max_size=4).map(tuple),
    st.binary(max_size=4),
)
blocks = st.lists(st.lists(st.lists(events, max_size=3), max_size=3), min_size=1, max_size=6)
alternatives = st.none() | st.lists(st.sampled_from(TOPICS), min_size=1, max_size=2).map(tuple)


@st.composite
def filters(draw: st.DrawFn, top: int) -> LogFilter:
    first = draw(st.integers(0, top))
    last = draw(st.integers(first, top + 1))
    return LogFilter(
        first,
        last,
        tuple(draw(st.lists(st.sampled_from(EMITTERS), max_size=2))),
        tuple(draw(st.lists(alternatives, max_size=4))),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), blocks)
def test_query_matches_brute_force(
    data: st.DataObject, chain_events: list[list[list[Event]]]
) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    EventIndex.create(db)
    index = EventIndex(db)
    every: list[Log] = []
    db.execute("BEGIN")
    for height, block in enumerate(chain_events):
        receipts = [receipt(i, evs) for i, evs in enumerate(block)]
        index.add_block(block_hash(height), height, receipts)
        every.extend(block_logs(block_hash(height), height, receipts))
    # A reorganised height: the removed block's events must not come back.
    removed = data.draw(st.integers(0, len(chain_events) - 1))
    index.remove_block(block_hash(removed))
    db.execute("COMMIT")
    every = [log for log in every if log.height != removed]
    for _ in range(5):
        log_filter = data.draw(filters(len(chain_events)))
        expected = [
            log
            for log in every
            if log_filter.from_height <= log.height <= log_filter.to_height
            and log_filter.matches(log.event)
        ]
        assert index.query(log_filter) == expected
