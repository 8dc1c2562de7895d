"""The event index: every event of the canonical chain, found by block range, emitter and topics.

The execution database keeps one row per event of each canonical block (table ``event_log``), added
when the block joins the canonical chain and removed when it leaves it, in the database's own
transaction (:meth:`EventIndex.add_block`, :meth:`EventIndex.remove_block`). A row's key is
``height << 32 | log_index``, where the *log index* is the event's position in its block counted
across the block's receipts, so rows are stored in chain order and a block range is one range of
keys. Two indexes serve the common queries: by emitter and by first topic (the event's name), each
ordered by that key. A query by another topic alone scans the rows of its block range.

Filters (:class:`LogFilter`) follow Ethereum's ``eth_getLogs``: ``addresses`` is a set of
alternatives (empty: any emitter); ``topics`` is position-wise, each position ``None`` (any topic)
or a tuple of alternatives, and a filter of ``n`` positions matches only events with at least ``n``
topics. Every input is bounded: at most :data:`MAX_FILTER_ADDRESSES` addresses and
:data:`MAX_TOPIC_ALTERNATIVES` alternatives per position; a query spans at most
:data:`MAX_LOG_RANGE` blocks and returns at most :data:`MAX_LOG_RESULTS` logs, and past either it
raises :class:`LogQueryTooLarge` telling the caller how to narrow it (never a truncated answer).

On the wire (``qoin_getLogs``, subscriptions) a filter is a JSON object (:func:`parse_filter`) and
a log is :func:`log_json`; addresses are in their ``qoin1...`` text form and bytes in hex (as
everywhere in the RPC: without ``0x``, which inputs may carry).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qoin.crypto.address import Address, AddressError
from qoin.errors import QoinError
from qoin.execution.receipt import MAX_TOPICS, TOPIC_SIZE, Event, Receipt

MAX_LOG_RANGE = 10_000
"""Blocks one query may span."""
MAX_LOG_RESULTS = 10_000
"""Logs one query may return."""
MAX_FILTER_ADDRESSES = 64
"""Emitters one filter may name."""
MAX_TOPIC_ALTERNATIVES = 64
"""Alternatives one topic position of a filter may list."""
MAX_INDEXED_HEIGHT = 2**31 - 1
"""The highest height the index holds (``height << 32`` must fit SQLite's 64-bit integers)."""
_LOG_INDEX_BITS = 32
_MAX_LOG_INDEX = 2**_LOG_INDEX_BITS - 1
_MAX_ADDRESS_TEXT = 90
"""Characters an address may take in a filter (a ``qoin1...`` address takes 63)."""
_MAX_TOPIC_TEXT = 2 + 2 * TOPIC_SIZE
FILTER_FIELDS = ("fromBlock", "toBlock", "address", "topics")
"""The fields of a JSON log filter."""

_SCHEMA = (
    # A rowid table keyed by height << 32 | log index: a block range is a key range, rows in chain
    # order. Rows carry up to 4 KiB of data: rowid tables store such rows better than WITHOUT ROWID.
    "CREATE TABLE IF NOT EXISTS event_log (id INTEGER PRIMARY KEY, block BLOB NOT NULL, "
    "tx_id BLOB NOT NULL, receipt INTEGER NOT NULL, emitter BLOB NOT NULL, topic0 BLOB, "
    "topic1 BLOB, topic2 BLOB, topic3 BLOB, data BLOB NOT NULL)",
    # Index entries end with the rowid: each index is ordered by (column, height, log index).
    "CREATE INDEX IF NOT EXISTS event_log_emitter ON event_log (emitter)",
    "CREATE INDEX IF NOT EXISTS event_log_topic0 ON event_log (topic0)",
    # The indexed blocks that hold events, to remove a block's rows by its hash.
    "CREATE TABLE IF NOT EXISTS event_blocks (hash BLOB PRIMARY KEY, "
    "height INTEGER NOT NULL UNIQUE) WITHOUT ROWID",
)
_COLUMNS = "id, block, tx_id, receipt, emitter, topic0, topic1, topic2, topic3, data"


class InvalidFilter(QoinError, ValueError):
    """A log filter that cannot be used (malformed, or over a bound); the message says why."""


class LogQueryTooLarge(QoinError):
    """A log query over the range or result bound; the message says how to narrow it."""


@dataclass(frozen=True)
class LogFilter:
    """Which logs a query or a subscription wants (Ethereum's ``eth_getLogs`` semantics)."""

    from_height: int
    """First block height of the range (queries only; subscriptions follow new blocks)."""
    to_height: int
    """Last block height of the range, inclusive."""
    addresses: tuple[Address, ...] = ()
    """Emitters to match, any of them; empty matches every emitter."""
    topics: tuple[tuple[bytes, ...] | None, ...] = ()
    """Per position (at most four): ``None`` matches any topic, a tuple any of its 32-byte topics;
    a filter of ``n`` positions matches only events with at least ``n`` topics."""

    def __post_init__(self) -> None:
        if not 0 <= self.from_height <= self.to_height:
            raise InvalidFilter(
                f"block range {self.from_height}..{self.to_height} is empty or negative: "
                "fromBlock must be at most toBlock"
            )
        if len(self.addresses) > MAX_FILTER_ADDRESSES:
            raise InvalidFilter(
                f"a filter names at most {MAX_FILTER_ADDRESSES} addresses, "
                f"got {len(self.addresses)}"
            )
        if len(self.topics) > MAX_TOPICS:
            raise InvalidFilter(
                f"a filter has at most {MAX_TOPICS} topic positions, got {len(self.topics)}"
            )
        for position, alternatives in enumerate(self.topics):
            if alternatives is None:
                continue
            if not alternatives:
                raise InvalidFilter(f"topic position {position} lists no topic (None is any)")
            if len(alternatives) > MAX_TOPIC_ALTERNATIVES:
                raise InvalidFilter(
                    f"topic position {position} lists {len(alternatives)} alternatives, "
                    f"at most {MAX_TOPIC_ALTERNATIVES}"
                )
            if any(len(topic) != TOPIC_SIZE for topic in alternatives):
                raise InvalidFilter(f"topics are {TOPIC_SIZE} bytes (position {position})")

    @property
    def block_count(self) -> int:
        """How many blocks the range spans."""
        return self.to_height - self.from_height + 1

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes the emitter and topic criteria (the range is not checked: a
        subscription applies it to live events)."""
        if self.addresses and event.emitter not in self.addresses:
            return False
        if len(self.topics) > len(event.topics):
            return False
        return all(
            alternatives is None or topic in alternatives
            for alternatives, topic in zip(self.topics, event.topics, strict=False)
        )


@dataclass(frozen=True)
class Log:
    """An event where the chain put it."""

    event: Event
    """The event."""
    height: int
    """Height of its block."""
    block_hash: bytes
    """Its block."""
    tx_id: bytes
    """The transaction (or cron entry) whose receipt carries it."""
    receipt_index: int
    """Position of that receipt in the block."""
    log_index: int
    """Position of the event in the block, counted across receipts."""
    removed: bool = False
    """Whether a reorganisation took its block out of the canonical chain (subscriptions only)."""


def block_logs(
    block_hash: bytes, height: int, receipts: Sequence[Receipt], removed: bool = False
) -> list[Log]:
    """The logs of one block's receipts, in log-index order (what :meth:`EventIndex.add_block`
    stores, and what a subscription is told when the block joins or, ``removed``, leaves)."""
    logs: list[Log] = []
    for receipt in receipts:
        for event in receipt.events:
            logs.append(
                Log(event, height, block_hash, receipt.tx_id, receipt.index, len(logs), removed)
            )
    return logs


class EventIndex:
    """The event rows of the canonical chain in an SQLite database (the execution database).

    It never commits: :meth:`add_block` and :meth:`remove_block` run inside the caller's
    transaction, so the index moves with the canonical chain atomically.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @staticmethod
    def create(db: sqlite3.Connection) -> None:
        """Create the tables and indexes if they do not exist."""
        for statement in _SCHEMA:
            db.execute(statement)

    def add_block(self, block_hash: bytes, height: int, receipts: Sequence[Receipt]) -> int:
        """Index the events of a block joining the canonical chain, replacing whatever the index
        held at its height; returns how many events it indexed."""
        if not 0 <= height <= MAX_INDEXED_HEIGHT:
            raise ValueError(f"height {height} is outside 0..{MAX_INDEXED_HEIGHT}")
        return self.add_logs(block_hash, height, block_logs(block_hash, height, receipts))

    def add_logs(self, block_hash: bytes, height: int, logs: Sequence[Log]) -> int:
        """:meth:`add_block` with the block's logs already made (:func:`block_logs`)."""
        if not 0 <= height <= MAX_INDEXED_HEIGHT:
            raise ValueError(f"height {height} is outside 0..{MAX_INDEXED_HEIGHT}")
        self._delete_height(height)
        if not logs:
            return 0
        if len(logs) > _MAX_LOG_INDEX:
            raise ValueError(f"a block holds at most {_MAX_LOG_INDEX} events")
        self._db.execute("INSERT INTO event_blocks VALUES (?, ?)", (block_hash, height))
        self._db.executemany(
            f"INSERT INTO event_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608  # constant columns
            [_row(log) for log in logs],
        )
        return len(logs)

    def remove_block(self, block_hash: bytes) -> int:
        """Drop the events of a block leaving the canonical chain (nothing if none is indexed);
        returns how many it dropped."""
        found = self._db.execute(
            "SELECT height FROM event_blocks WHERE hash = ?", (block_hash,)
        ).fetchone()
        return 0 if found is None else self._delete_height(int(found[0]))

    def _delete_height(self, height: int) -> int:
        self._db.execute("DELETE FROM event_blocks WHERE height = ?", (height,))
        first = height << _LOG_INDEX_BITS
        cursor = self._db.execute(
            "DELETE FROM event_log WHERE id BETWEEN ? AND ?", (first, first | _MAX_LOG_INDEX)
        )
        return cursor.rowcount

    def query(self, log_filter: LogFilter, limit: int = MAX_LOG_RESULTS) -> list[Log]:
        """The canonical logs ``log_filter`` matches, by height then log index.
        :class:`LogQueryTooLarge` if the range spans over :data:`MAX_LOG_RANGE` blocks or more
        than ``limit`` logs match."""
        if not 1 <= limit <= MAX_LOG_RESULTS:
            raise ValueError(f"a query returns 1 to {MAX_LOG_RESULTS} logs, not {limit}")
        if log_filter.block_count > MAX_LOG_RANGE:
            raise LogQueryTooLarge(
                f"narrow the block range: {log_filter.block_count} blocks "
                f"({log_filter.from_height}..{log_filter.to_height}), at most {MAX_LOG_RANGE}"
            )
        if log_filter.from_height > MAX_INDEXED_HEIGHT:
            return []
        last = min(log_filter.to_height, MAX_INDEXED_HEIGHT)
        clauses = ["id BETWEEN ? AND ?"]
        values: list[Any] = [
            log_filter.from_height << _LOG_INDEX_BITS,
            (last << _LOG_INDEX_BITS) | _MAX_LOG_INDEX,
        ]
        if log_filter.addresses:
            clauses.append(f"emitter IN ({', '.join('?' * len(log_filter.addresses))})")
            values.extend(address.raw for address in log_filter.addresses)
        for position, alternatives in enumerate(log_filter.topics):
            if alternatives is not None:
                clauses.append(f"topic{position} IN ({', '.join('?' * len(alternatives))})")
                values.extend(alternatives)
        if log_filter.topics:
            clauses.append(f"topic{len(log_filter.topics) - 1} IS NOT NULL")
        values.append(limit + 1)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM event_log WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",  # noqa: S608  # only placeholders are interpolated
            values,
        ).fetchall()
        if len(rows) > limit:
            raise LogQueryTooLarge(
                f"more than {limit} logs match; narrow the range or the filter "
                f"(blocks {log_filter.from_height}..{log_filter.to_height})"
            )
        return [_log(row) for row in rows]


def _row(log: Log) -> tuple[Any, ...]:
    topics = list(log.event.topics) + [None] * (MAX_TOPICS - len(log.event.topics))
    return (
        (log.height << _LOG_INDEX_BITS) | log.log_index,
        log.block_hash,
        log.tx_id,
        log.receipt_index,
        log.event.emitter.raw,
        *topics,
        log.event.data,
    )


def _log(row: Sequence[Any]) -> Log:
    key, block_hash, tx_id, receipt_index, emitter, *rest = row
    topics = tuple(bytes(topic) for topic in rest[:MAX_TOPICS] if topic is not None)
    event = Event(Address(bytes(emitter)), topics, bytes(rest[MAX_TOPICS]))
    return Log(
        event,
        key >> _LOG_INDEX_BITS,
        bytes(block_hash),
        bytes(tx_id),
        receipt_index,
        key & _MAX_LOG_INDEX,
    )


def log_json(log: Log) -> dict[str, Any]:
    """A log on the wire."""
    return {
        "address": str(log.event.emitter),
        "topics": [topic.hex() for topic in log.event.topics],
        "data": log.event.data.hex(),
        "blockNumber": log.height,
        "blockHash": log.block_hash.hex(),
        "transactionHash": log.tx_id.hex(),
        "transactionIndex": log.receipt_index,
        "logIndex": log.log_index,
        "removed": log.removed,
    }


def parse_filter(obj: Any, head_height: int) -> LogFilter:
    """A JSON filter object of ``qoin_getLogs``::

        {"fromBlock": height | "latest" | "earliest",   (default "latest")
         "toBlock": height | "latest" | "earliest",     (default "latest")
         "address": "qoin1..." | ["qoin1...", ...],      (default any)
         "topics": [null | "hex" | ["hex", ...], ...]}  (default any; [] at a position: any)

    ``"latest"`` is ``head_height``. :class:`InvalidFilter` says what is wrong."""
    fields = _fields(obj, FILTER_FIELDS)
    from_height = _height(fields.get("fromBlock", "latest"), "fromBlock", head_height)
    to_height = _height(fields.get("toBlock", "latest"), "toBlock", head_height)
    if from_height > to_height:
        raise InvalidFilter(f"fromBlock {from_height} is after toBlock {to_height}")
    return LogFilter(
        from_height,
        to_height,
        _addresses(fields.get("address")),
        _topics(fields.get("topics")),
    )


def parse_live_filter(obj: Any) -> LogFilter:
    """A JSON filter object of a ``logs`` subscription: ``address`` and ``topics`` as in
    :func:`parse_filter`; no block range (a subscription follows new blocks)."""
    fields = _fields(obj, ("address", "topics"))
    return LogFilter(0, 0, _addresses(fields.get("address")), _topics(fields.get("topics")))


def _fields(obj: Any, allowed: Sequence[str]) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidFilter("a filter is a JSON object")
    unknown = sorted(str(key)[:40] for key in obj if key not in allowed)
    if unknown:
        raise InvalidFilter(
            f"unknown filter field(s) {', '.join(unknown[:4])}; a filter has {', '.join(allowed)}"
        )
    return obj


def _height(value: Any, name: str, head_height: int) -> int:
    if value == "latest":
        return head_height
    if value == "earliest":
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidFilter(f"{name} must be a height (an integer >= 0), 'latest' or 'earliest'")


def _addresses(value: Any) -> tuple[Address, ...]:
    if value is None:
        return ()
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise InvalidFilter("address must be an address or a list of addresses")
    if len(texts) > MAX_FILTER_ADDRESSES:
        raise InvalidFilter(f"a filter names at most {MAX_FILTER_ADDRESSES} addresses")
    addresses = []
    for text in texts:
        if not isinstance(text, str) or len(text) > _MAX_ADDRESS_TEXT:
            raise InvalidFilter("each address is a qoin1... string")
        try:
            addresses.append(Address.from_text(text))
        except AddressError as exc:
            raise InvalidFilter(str(exc)) from None
    return tuple(addresses)


def _topic(value: Any, position: int) -> bytes:
    if isinstance(value, str) and len(value) <= _MAX_TOPIC_TEXT:
        try:
            topic = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            pass
        else:
            if len(topic) == TOPIC_SIZE:
                return topic
    raise InvalidFilter(f"topic at position {position} must be {TOPIC_SIZE} bytes in hex")


def _topics(value: Any) -> tuple[tuple[bytes, ...] | None, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TOPICS:
        raise InvalidFilter(f"topics is a list of at most {MAX_TOPICS} positions")
    positions: list[tuple[bytes, ...] | None] = []
    for position, entry in enumerate(value):
        if entry is None or entry == []:
            positions.append(None)
        elif isinstance(entry, list):
            if len(entry) > MAX_TOPIC_ALTERNATIVES:
                raise InvalidFilter(
                    f"topic position {position} lists more than {MAX_TOPIC_ALTERNATIVES} "
                    "alternatives"
                )
            positions.append(tuple(_topic(item, position) for item in entry))
        else:
            positions.append((_topic(entry, position),))
    return tuple(positions)


def logs_json(logs: Iterable[Log]) -> list[dict[str, Any]]:
    """Logs on the wire (the answer of ``qoin_getLogs``)."""
    return [log_json(log) for log in logs]
