"""Content-addressed storage of state-tree nodes, with the per-version journal used for pruning.

A node store maps a node hash to the node's encoding (see :mod:`qoin.state.smt`; the store treats
encodings as opaque bytes). Nodes are shared between versions of the tree, so a store also keeps one
*version record* per applied version (block height):

``root``
    the root after the version;
``created``
    the hashes of the nodes the version wrote (kept only while the version can still be rolled
    back, i.e. while an older version is retained);
``stale``
    the hashes of the nodes of the previous version's tree that are not in this version's tree;
``orphaned``
    the hashes of nodes written by versions that a rollback abandoned and that are not in the tree
    this version was built on (garbage to collect like stale nodes);
``rewound``
    the hashes of nodes that the same rollback found back in the tree (see below).

Each node row also carries a *node version*: the version that last wrote it, or the base version of
a rollback that rewound it. :meth:`NodeStore.prune` applies one rule to every journal entry ``(v, h)``
(stale or orphaned at ``v``) with ``v <= keep_from_version``: delete ``h`` if its node version is below
``v``. A node re-created by a later version has had its node version raised by that write, so it is
never deleted while live; a node made stale again later has another journal entry that will delete it
in due time. A rollback to version ``b`` sets the node version of every node the undone versions
wrote, orphaned or rewound to ``b``, which keeps the rule exact across nested reorgs (the reasoning is
in :func:`qoin.state.smt._plan_rollback`). Versions older than the pruning point are forgotten (their
roots cannot be served any more).

Hashes in the journal are stored as one blob per list (concatenated 32-byte hashes): one row per
version keeps the journal cheap to write during block import.

Two implementations: :class:`MemoryNodeStore` (dicts, for tests and tools) and
:class:`SqliteNodeStore` (two tables in a caller-owned ``sqlite3.Connection``, fronted by a bounded read
cache that approximates LRU). The SQLite store never commits: the caller wraps a block's writes, the tree's included, in one
transaction (``BEGIN`` ... ``COMMIT``) with its other tables.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

HASH_SIZE = 32
"""Node hashes are SHA3-256 digests."""

DEFAULT_CACHE_NODES = 262_144
"""Default bound of the SQLite store's read cache, in nodes (the hot upper levels of the tree)."""

_SQL_CHUNK = 999
"""Hashes per ``IN (...)`` query: the parameter limit of SQLite builds older than 3.32."""

_TABLE_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def split_hashes(blob: bytes) -> list[bytes]:
    """The 32-byte hashes concatenated in ``blob``."""
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


@dataclass(frozen=True)
class VersionRecord:
    """What one applied version of the tree wrote and made stale (see the module docstring)."""

    version: int
    """The version (block height) the record belongs to."""
    root: bytes
    """Root of the tree after this version."""
    created: bytes
    """Concatenated hashes of the nodes this version wrote (empty once it can't be rolled back)."""
    stale: bytes
    """Concatenated hashes of the previous tree's nodes that this version's tree dropped."""
    orphaned: bytes
    """Concatenated hashes of nodes of abandoned versions, unreachable from this version's base."""
    rewound: bytes
    """Concatenated hashes of nodes of abandoned versions that are back in this version's base."""


@dataclass(frozen=True)
class WriteBatch:
    """Everything one version writes: new nodes and its journal record."""

    version: int
    """The version being written."""
    root: bytes
    """The new root."""
    nodes: Mapping[bytes, bytes]
    """New nodes, hash to encoding (their node version becomes :attr:`version`)."""
    stale: bytes
    """Concatenated hashes made stale by this version."""
    orphaned: bytes = b""
    """Concatenated hashes orphaned by the rollback that preceded this version."""
    rewound: bytes = b""
    """Concatenated hashes rewound (found live again) by the rollback that preceded this version."""
    keep_created: bool = True
    """Whether to journal the created hashes (false when no older version could be rolled back to)."""


class NodeStore(Protocol):
    """Where a :class:`~qoin.state.smt.SparseMerkleTree` keeps its nodes and version journal."""

    def get(self, node_hash: bytes) -> bytes | None:
        """The encoding of the node ``node_hash``, or None if the store does not hold it."""
        ...

    def get_many(self, node_hashes: Collection[bytes]) -> dict[bytes, bytes]:
        """The encodings of those of ``node_hashes`` the store holds (absent ones are left out)."""
        ...

    def write_batch(self, batch: WriteBatch) -> None:
        """Write a version's new nodes and its journal record."""
        ...

    def latest_version(self) -> int | None:
        """The newest recorded version, or None if none was written (or all were discarded)."""
        ...

    def version_before(self, version: int) -> int | None:
        """The newest recorded version strictly below ``version``, or None."""
        ...

    def versions_after(self, version: int) -> list[int]:
        """Recorded versions strictly above ``version``, newest first."""
        ...

    def record(self, version: int) -> VersionRecord | None:
        """The journal record of ``version``, or None if it is not retained."""
        ...

    def discard_versions_after(self, version: int) -> None:
        """Forget the records of versions above ``version`` (after a rollback)."""
        ...

    def set_node_versions(self, node_hashes: Iterable[bytes], version: int) -> None:
        """Set the node version of the given (present) nodes to ``version``."""
        ...

    def prune(self, keep_from_version: int) -> int:
        """Delete what only versions below ``keep_from_version`` need; return the nodes deleted."""
        ...

    def node_count(self) -> int:
        """Number of nodes held."""
        ...


def _prune_plan(records: list[VersionRecord]) -> Iterator[tuple[bytes, int]]:
    """``(hash, version)`` journal entries of ``records`` that prune must consider."""
    for record in records:
        for node_hash in split_hashes(record.stale + record.orphaned):
            yield node_hash, record.version


def _record_of(row: tuple[int, bytes, bytes, bytes, bytes, bytes]) -> VersionRecord:
    return VersionRecord(row[0], row[1], row[2], row[3], row[4], row[5])


class MemoryNodeStore:
    """A node store in dictionaries (tests, tools, a node without persistence)."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}
        """Hash to node encoding."""
        self.node_versions: dict[bytes, int] = {}
        """Hash to the version that last wrote the node."""
        self.records: dict[int, VersionRecord] = {}
        """Version to its journal record."""

    def get(self, node_hash: bytes) -> bytes | None:
        """The encoding of the node ``node_hash``, or None."""
        return self.nodes.get(node_hash)

    def get_many(self, node_hashes: Collection[bytes]) -> dict[bytes, bytes]:
        """The encodings of those of ``node_hashes`` the store holds."""
        nodes = self.nodes
        return {h: nodes[h] for h in node_hashes if h in nodes}

    def write_batch(self, batch: WriteBatch) -> None:
        """Write a version's new nodes and its journal record."""
        self.nodes.update(batch.nodes)
        version = batch.version
        self.node_versions.update(dict.fromkeys(batch.nodes, version))
        created = b"".join(batch.nodes) if batch.keep_created else b""
        self.records[version] = VersionRecord(
            version, batch.root, created, batch.stale, batch.orphaned, batch.rewound
        )

    def latest_version(self) -> int | None:
        """The newest recorded version, or None."""
        return max(self.records, default=None)

    def version_before(self, version: int) -> int | None:
        """The newest recorded version below ``version``, or None."""
        return max((v for v in self.records if v < version), default=None)

    def versions_after(self, version: int) -> list[int]:
        """Recorded versions above ``version``, newest first."""
        return sorted((v for v in self.records if v > version), reverse=True)

    def record(self, version: int) -> VersionRecord | None:
        """The journal record of ``version``, or None."""
        return self.records.get(version)

    def discard_versions_after(self, version: int) -> None:
        """Forget the records of versions above ``version``."""
        for v in self.versions_after(version):
            del self.records[v]

    def set_node_versions(self, node_hashes: Iterable[bytes], version: int) -> None:
        """Set the node version of the given present nodes."""
        node_versions = self.node_versions
        for node_hash in node_hashes:
            if node_hash in node_versions:
                node_versions[node_hash] = version

    def prune(self, keep_from_version: int) -> int:
        """Delete what only versions below ``keep_from_version`` need; return the nodes deleted."""
        base = self.version_before(keep_from_version + 1)
        if base is None:
            return 0
        records = [self.records[v] for v in sorted(self.records) if v <= base]
        deleted = 0
        for node_hash, version in _prune_plan(records):
            written = self.node_versions.get(node_hash)
            if written is not None and written < version:
                del self.nodes[node_hash]
                del self.node_versions[node_hash]
                deleted += 1
        for record in records:
            del self.records[record.version]
        kept = records[-1]
        self.records[base] = VersionRecord(base, kept.root, b"", b"", b"", b"")
        return deleted

    def node_count(self) -> int:
        """Number of nodes held."""
        return len(self.nodes)


class NodeCache:
    """A bounded read cache of node encodings, approximating LRU with two generations of dicts.

    New and used entries go to the young generation; when it holds half the capacity it becomes the
    old generation (the previous old one is dropped). A hit in the old generation moves the entry back
    to the young one. So every entry used among the last ``capacity / 2`` insertions is kept, at the
    cost of plain dict operations (an ``OrderedDict`` LRU costs several times more per access).
    """

    __slots__ = ("_half", "_old", "_young")

    def __init__(self, capacity: int) -> None:
        self._half = max(1, capacity // 2) if capacity > 0 else 0
        self._young: dict[bytes, bytes] = {}
        self._old: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, node_hash: bytes) -> bytes | None:
        """The cached encoding of ``node_hash``, or None."""
        data = self._young.get(node_hash)
        if data is None:
            data = self._old.get(node_hash)
            if data is not None:
                self.put(node_hash, data)
        return data

    def put(self, node_hash: bytes, data: bytes) -> None:
        """Cache one node."""
        if not self._half:
            return
        young = self._young
        young[node_hash] = data
        if len(young) >= self._half:
            self._old, self._young = young, {}

    def put_many(self, nodes: Mapping[bytes, bytes]) -> None:
        """Cache many nodes (a batch just read or written)."""
        if not self._half:
            return
        half = self._half
        if len(nodes) >= half:  # keep the newest half (a big batch lists the upper levels last)
            self._old, self._young = dict(islice(nodes.items(), len(nodes) - half, None)), {}
            return
        young = self._young
        young.update(nodes)
        if len(young) >= half:
            if len(young) > half:
                young = dict(islice(young.items(), len(young) - half, None))
            self._old, self._young = young, {}

    def get_many(self, node_hashes: Iterable[bytes]) -> tuple[dict[bytes, bytes], list[bytes]]:
        """The cached encodings among ``node_hashes``, and the hashes that were not cached."""
        young, old = self._young, self._old
        young_get, old_get = young.get, old.get
        found: dict[bytes, bytes] = {}
        missing: list[bytes] = []
        promoted: dict[bytes, bytes] = {}
        for node_hash in node_hashes:
            data = young_get(node_hash)
            if data is None:
                data = old_get(node_hash)
                if data is None:
                    missing.append(node_hash)
                    continue
                promoted[node_hash] = data
            found[node_hash] = data
        if promoted:
            self.put_many(promoted)
        return found, missing

    def discard(self, node_hash: bytes) -> None:
        """Forget one node."""
        self._young.pop(node_hash, None)
        self._old.pop(node_hash, None)

    def clear(self) -> None:
        """Forget everything."""
        self._young.clear()
        self._old.clear()


class SqliteNodeStore:
    """Node store in two tables of a caller-owned SQLite connection, with a bounded read cache.

    Tables (``<prefix>`` defaults to ``smt``)::

        <prefix>_nodes    (hash BLOB PK, data BLOB, version INTEGER)          WITHOUT ROWID
        <prefix>_versions (version INTEGER PK, root, created, stale, orphaned, rewound BLOBs)

    The store never begins nor commits a transaction: call :meth:`write_batch` (through
    ``SparseMerkleTree.update``) and :meth:`prune` inside the caller's ``BEGIN`` ... ``COMMIT``, so the
    tree is written atomically with the block's other tables. If the caller rolls a transaction back,
    it should call :meth:`clear_cache` (cached nodes are always correct for their hash, but the cache
    would still serve nodes the database no longer holds).

    For a large state, give the connection a big page cache (``PRAGMA cache_size``) and WAL journaling;
    :meth:`tune` sets both.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        prefix: str = "smt",
        cache_nodes: int = DEFAULT_CACHE_NODES,
    ) -> None:
        if not _TABLE_PREFIX.fullmatch(prefix):
            raise ValueError(f"table prefix {prefix!r} is not a plain SQL identifier")
        self._db = connection
        self._cache = NodeCache(cache_nodes)
        nodes, versions = f"{prefix}_nodes", f"{prefix}_versions"
        # Separate execute() calls: executescript() would COMMIT the caller's transaction.
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {nodes} ("
            "hash BLOB PRIMARY KEY, data BLOB NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID"
        )
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {versions} (version INTEGER PRIMARY KEY, root BLOB NOT NULL, "
            "created BLOB NOT NULL, stale BLOB NOT NULL, orphaned BLOB NOT NULL, "
            "rewound BLOB NOT NULL)"
        )
        # The prefix is checked against _TABLE_PREFIX above: no injection through table names.
        self._sql_get = f"SELECT data FROM {nodes} WHERE hash = ?"  # noqa: S608
        self._sql_get_many = f"SELECT hash, data FROM {nodes} WHERE hash IN "  # noqa: S608
        self._sql_put = f"INSERT OR REPLACE INTO {nodes} (hash, data, version) VALUES (?, ?, ?)"  # noqa: S608
        self._sql_set_version = f"UPDATE {nodes} SET version = ? WHERE hash = ?"  # noqa: S608
        self._sql_prune = f"DELETE FROM {nodes} WHERE hash = ? AND version < ?"  # noqa: S608
        self._sql_count = f"SELECT count(*) FROM {nodes}"  # noqa: S608
        self._sql_put_record = f"INSERT OR REPLACE INTO {versions} VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608
        self._sql_latest = f"SELECT max(version) FROM {versions}"  # noqa: S608
        self._sql_before = f"SELECT max(version) FROM {versions} WHERE version < ?"  # noqa: S608
        self._sql_after = f"SELECT version FROM {versions} WHERE version > ? ORDER BY version DESC"  # noqa: S608
        self._sql_record = f"SELECT * FROM {versions} WHERE version = ?"  # noqa: S608
        self._sql_records_upto = f"SELECT * FROM {versions} WHERE version <= ? ORDER BY version"  # noqa: S608
        self._sql_discard_after = f"DELETE FROM {versions} WHERE version > ?"  # noqa: S608
        self._sql_discard_before = f"DELETE FROM {versions} WHERE version < ?"  # noqa: S608
        self._sql_clear_record = (
            f"UPDATE {versions} SET created = x'', stale = x'', orphaned = x'', "  # noqa: S608
            "rewound = x'' "
            "WHERE version = ?"
        )

    @staticmethod
    def tune(connection: sqlite3.Connection, cache_mib: int = 512) -> None:
        """Recommended settings for a connection holding a large tree (WAL, a big page cache)."""
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")

    def clear_cache(self) -> None:
        """Empty the read cache (after the caller rolled back a transaction)."""
        self._cache.clear()

    def get(self, node_hash: bytes) -> bytes | None:
        """The encoding of the node ``node_hash``, or None."""
        data = self._cache.get(node_hash)
        if data is not None:
            return data
        row = self._db.execute(self._sql_get, (node_hash,)).fetchone()
        if row is None:
            return None
        data = bytes(row[0])
        self._cache.put(node_hash, data)
        return data

    def get_many(self, node_hashes: Collection[bytes]) -> dict[bytes, bytes]:
        """The encodings of those of ``node_hashes`` the store holds (one query per 999 misses)."""
        found, missing = self._cache.get_many(node_hashes)
        if not missing:
            return found
        execute = self._db.execute
        fetched: dict[bytes, bytes] = {}
        for start in range(0, len(missing), _SQL_CHUNK):
            chunk = missing[start : start + _SQL_CHUNK]
            marks = "(" + ",".join("?" * len(chunk)) + ")"
            fetched.update(execute(self._sql_get_many + marks, chunk).fetchall())
        self._cache.put_many(fetched)
        found.update(fetched)
        return found

    def write_batch(self, batch: WriteBatch) -> None:
        """Write a version's new nodes and its journal record (no commit)."""
        version = batch.version
        nodes = batch.nodes
        # Sorted by hash: inserting in key order touches the B-tree's pages in order (~30% faster).
        self._db.executemany(self._sql_put, ((h, nodes[h], version) for h in sorted(nodes)))
        created = b"".join(nodes) if batch.keep_created else b""
        self._db.execute(
            self._sql_put_record,
            (version, batch.root, created, batch.stale, batch.orphaned, batch.rewound),
        )
        self._cache.put_many(nodes)

    def latest_version(self) -> int | None:
        """The newest recorded version, or None."""
        value: int | None = self._db.execute(self._sql_latest).fetchone()[0]
        return value

    def version_before(self, version: int) -> int | None:
        """The newest recorded version below ``version``, or None."""
        value: int | None = self._db.execute(self._sql_before, (version,)).fetchone()[0]
        return value

    def versions_after(self, version: int) -> list[int]:
        """Recorded versions above ``version``, newest first."""
        return [row[0] for row in self._db.execute(self._sql_after, (version,))]

    def record(self, version: int) -> VersionRecord | None:
        """The journal record of ``version``, or None."""
        row = self._db.execute(self._sql_record, (version,)).fetchone()
        if row is None:
            return None
        return _record_of(row)

    def discard_versions_after(self, version: int) -> None:
        """Forget the records of versions above ``version``."""
        self._db.execute(self._sql_discard_after, (version,))

    def set_node_versions(self, node_hashes: Iterable[bytes], version: int) -> None:
        """Set the node version of the given present nodes."""
        self._db.executemany(self._sql_set_version, [(version, h) for h in node_hashes])

    def prune(self, keep_from_version: int) -> int:
        """Delete what only versions below ``keep_from_version`` need; return the nodes deleted."""
        base = self.version_before(keep_from_version + 1)
        if base is None:
            return 0
        records = [_record_of(row) for row in self._db.execute(self._sql_records_upto, (base,))]
        plan = list(_prune_plan(records))
        before = self._db.total_changes
        self._db.executemany(self._sql_prune, plan)
        deleted = self._db.total_changes - before
        discard = self._cache.discard
        for node_hash, _ in plan:
            discard(node_hash)
        self._db.execute(self._sql_discard_before, (base,))
        self._db.execute(self._sql_clear_record, (base,))
        return deleted

    def node_count(self) -> int:
        """Number of nodes held."""
        count: int = self._db.execute(self._sql_count).fetchone()[0]
        return count
