"""Crash-safe block storage in SQLite (WAL journal, ``synchronous=FULL``).

Tables::

    blocks    (hash PK, parent, height, work, header, block)  every accepted block, canonical encoding
    siblings  (hash, sibling, work)                   sibling references (fork-choice data)
    canonical (height PK, hash)                       the chain from genesis to the head
    meta      (key PK, value)                         schema version, genesis hash, head

Each accepted block is written in one transaction together with the new head and the canonical
index changes; a transaction is durable when :meth:`BlockStore.commit_block` returns. After a crash
(``kill -9``, power loss) SQLite rolls back any half-written transaction on open, so the store always
holds a consistent head and every block that was acknowledged.

One process at a time: opening takes an exclusive lock on ``<store>.lock`` (like Bitcoin Core's
``.lock``), so a second node or ``qoin chain import`` on the same data directory is refused instead of
interleaving writes.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from qoin.chain.block import Block, Header
from qoin.chain.forkchoice import BlockMeta
from qoin.chain.genesis import Genesis
from qoin.chain.validation import ancestor_timestamps, genesis_meta
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError

SCHEMA_VERSION = 2
HEADER_CACHE_SIZE = 4096
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY, parent BLOB NOT NULL, height INTEGER NOT NULL,
    work TEXT NOT NULL, header BLOB NOT NULL, block BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_height ON blocks (height);
CREATE TABLE IF NOT EXISTS siblings (
    hash BLOB NOT NULL, sibling BLOB NOT NULL, work TEXT NOT NULL, PRIMARY KEY (hash, sibling)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS canonical (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""


class StoreError(QoinError):
    """The block store cannot be opened or is inconsistent."""


class BlockStore:
    """Blocks, fork-choice data, the canonical index and the head, in one SQLite file."""

    def __init__(self, connection: sqlite3.Connection, genesis: Genesis, lock_fd: int) -> None:
        self._db = connection
        self.genesis = genesis
        self._lock_fd = lock_fd
        self._headers: OrderedDict[bytes, Header] = OrderedDict()

    @classmethod
    def open(cls, path: Path, genesis: Genesis) -> BlockStore:
        """Open (or create) the store at ``path`` for the network of ``genesis``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path.with_name(path.name + ".lock"))
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            store = cls(db, genesis, lock_fd)
            store._initialise()
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise StoreError(f"cannot open block store {path}: {exc}") from None
        except StoreError:
            os.close(lock_fd)
            raise
        return store

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _initialise(self) -> None:
        stored = self._meta("genesis")
        genesis_hash = self.genesis.genesis_hash
        if stored is None:
            block = self.genesis.block
            with self._transaction():
                self._db.execute(
                    "INSERT INTO meta VALUES ('schema', ?), ('genesis', ?), ('head', ?)",
                    (str(SCHEMA_VERSION).encode(), genesis_hash, genesis_hash),
                )
                self._insert(block, genesis_meta(self.genesis))
                self._db.execute("INSERT INTO canonical VALUES (0, ?)", (genesis_hash,))
            return
        if stored != genesis_hash:
            raise StoreError(
                f"this data directory belongs to another network (genesis {stored.hex()[:16]}, "
                f"expected {genesis_hash.hex()[:16]} of {self.genesis.network})"
            )
        if self._meta("schema") != str(SCHEMA_VERSION).encode():
            raise StoreError("the block store has an unknown schema version")

    def _transaction(self) -> _Commit:
        self._db.execute("BEGIN IMMEDIATE")
        return _Commit(self._db)

    def _insert(self, block: Block, meta: BlockMeta) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
            (
                meta.block_hash,
                meta.parent_hash,
                meta.height,
                str(meta.work),
                block.header.encode(),
                block.encode(),
            ),
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO siblings VALUES (?, ?, ?)",
            [(meta.block_hash, sibling, str(work)) for sibling, work in meta.siblings],
        )

    def commit_block(
        self,
        block: Block,
        meta: BlockMeta,
        head: bytes,
        canonical: Sequence[tuple[int, bytes]] = (),
        canonical_height: int | None = None,
    ) -> None:
        """Store a validated block, the (possibly unchanged) head and canonical index changes
        atomically and durably. ``canonical`` are (height, hash) entries to set; entries above
        ``canonical_height`` are removed (after a reorg to a shorter chain)."""
        with self._transaction():
            self._insert(block, meta)
            self._db.executemany("INSERT OR REPLACE INTO canonical VALUES (?, ?)", canonical)
            if canonical_height is not None:
                self._db.execute("DELETE FROM canonical WHERE height > ?", (canonical_height,))
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (head,))

    def set_head(self, head: bytes, canonical: Sequence[tuple[int, bytes]], height: int) -> None:
        """Set the head and canonical index atomically (repair after a foreign writer)."""
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO canonical VALUES (?, ?)", canonical)
            self._db.execute("DELETE FROM canonical WHERE height > ?", (height,))
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (head,))

    def head(self) -> bytes:
        """Hash of the head block."""
        head = self._meta("head")
        if head is None:
            raise StoreError("the block store has no head")
        return head

    def has_block(self, block_hash: bytes) -> bool:
        """Whether the block is stored."""
        row = self._db.execute("SELECT 1 FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return row is not None

    def get_block(self, block_hash: bytes) -> Block | None:
        """A stored block, or None."""
        encoding = self.block_encoding(block_hash)
        if encoding is None:
            return None
        try:
            return Block.decode(encoding)
        except DecodeError as exc:
            raise StoreError(f"stored block {block_hash.hex()} is corrupt: {exc}") from None

    def block_encoding(self, block_hash: bytes) -> bytes | None:
        """A stored block's canonical encoding as stored (not decoded), or None."""
        row = self._db.execute("SELECT block FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    def header(self, block_hash: bytes) -> Header | None:
        """A stored block's header, or None (recent ones cached: headers are immutable)."""
        cached = self._headers.get(block_hash)
        if cached is not None:
            self._headers.move_to_end(block_hash)
            return cached
        row = self._db.execute("SELECT header FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        if row is None:
            return None
        try:
            header = Header.decode(bytes(row[0]))
        except DecodeError as exc:
            raise StoreError(f"stored header {block_hash.hex()} is corrupt: {exc}") from None
        self._headers[block_hash] = header
        if len(self._headers) > HEADER_CACHE_SIZE:
            self._headers.popitem(last=False)
        return header

    def ancestor_timestamps(self, block_hash: bytes, count: int) -> list[int]:
        """Timestamps of the block and up to ``count - 1`` ancestors, oldest first."""
        return ancestor_timestamps(self.header, block_hash, count)

    def canonical_hash(self, height: int) -> bytes | None:
        """The canonical block at ``height``, or None above the head."""
        row = self._db.execute("SELECT hash FROM canonical WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def metas(self) -> Iterator[BlockMeta]:
        """Fork-choice data of every stored block, parents before children (height order)."""
        siblings: dict[bytes, list[tuple[bytes, int]]] = {}
        for block_hash, sibling, work in self._db.execute(
            "SELECT hash, sibling, work FROM siblings ORDER BY hash, sibling"
        ):
            siblings.setdefault(bytes(block_hash), []).append((bytes(sibling), int(work)))
        for block_hash, parent, height, work in self._db.execute(
            "SELECT hash, parent, height, work FROM blocks ORDER BY height"
        ):
            key = bytes(block_hash)
            yield BlockMeta(key, bytes(parent), height, int(work), tuple(siblings.get(key, ())))

    def block_count(self) -> int:
        """Number of stored blocks, genesis included."""
        return int(self._db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])

    def close(self) -> None:
        """Close the database (everything committed is already durable) and release the lock."""
        self._db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock(path: Path) -> int:
    """Take the data directory's exclusive lock, or raise :class:`StoreError`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"the data directory is in use by another process (lock {path} is held)"
        ) from None
    return fd


class _Commit:
    """Context manager: COMMIT on success, ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
