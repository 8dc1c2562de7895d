"""The provider's shard store: shard files under ``DATADIR/shards/`` and their SQLite index.

A shard is written to a temporary name while it streams in (bounded by its declared size), its
tree is built from the file (:meth:`qoin.storage.merkle.ShardTree.from_file`), its root compared
with the committed one, then the file is fsynced, renamed to ``DEAL-SHARD.shard``, the directory
fsynced, and only then indexed (``DATADIR/provider.db``, WAL): a crash leaves either no index row
(the file, if renamed, is removed on the next open) or a complete, durable shard.

On :meth:`ShardStore.open` every indexed shard is checked: its file must exist with the indexed
size and hash to the indexed root; otherwise the shard is marked :attr:`ShardState.LOST`, its
file removed and the problem logged. Temporary files and files no row names are removed. The data
directory is locked (one daemon per directory); :func:`read_index` reads the index without the
lock or the checks (for ``qoin storage provider exit`` beside a running daemon).

Shard states in the index (the provider's own view, not the chain's):

``held``
    the provider stores it and proves it;
``released``
    the provider left it (exit) or failed it: it keeps serving the bytes (so that the new holder
    can rebuild from them) without proving, until another provider proves it or the deal ends;
``lost``
    the file was damaged or missing on open: nothing is served or proved (the daemon may fetch it
    again from the other providers).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Final

from qoin.errors import QoinError
from qoin.process import note
from qoin.storage.merkle import ShardTree, StorageMerkleError

SHARDS_DIR: Final = "shards"
"""The directory of shard files in a provider's data directory."""
DB_FILE: Final = "provider.db"
"""The index file in a provider's data directory."""
LOCK_FILE: Final = "provider.lock"
"""The data directory's lock (held by the daemon)."""
MAX_SHARD_SIZE: Final = 1 << 36
"""The largest shard a provider stores (64 GiB)."""
MAX_READ: Final = 4 << 20
"""The most bytes one :meth:`ShardStore.read_range` returns."""
MAX_DEAL: Final = (1 << 64) - 1
MAX_SHARD_INDEX: Final = 255
WRITE_BLOCK: Final = 1 << 20
"""Bytes written per step when a shard is stored from memory."""

_SHARD_FILE = re.compile(r"(\d{1,20})-(\d{1,3})\.shard")
_TEMP_SUFFIX = ".tmp"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    deal INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    root BLOB NOT NULL,
    size INTEGER NOT NULL,
    leaf_size INTEGER NOT NULL,
    tree BLOB NOT NULL,
    state TEXT NOT NULL,
    proved INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (deal, shard)
);
"""


class StoreError(QoinError):
    """The shard store cannot do what was asked (a bad argument, a full or failing disk, a data
    directory in use)."""


class ShardRejected(StoreError):
    """Bytes offered for a shard are not the shard (wrong size, or another root)."""


class ShardBusy(StoreError):
    """The shard is stored already, or being written now."""


class ShardState(StrEnum):
    """What the provider does with a stored shard (see the module docstring)."""

    HELD = "held"
    RELEASED = "released"
    LOST = "lost"


@dataclass(frozen=True)
class StoredShard:
    """One row of the index."""

    deal: int
    """The deal id."""
    shard: int
    """The shard's index in the deal."""
    root: bytes
    """The committed shard root."""
    size: int
    """Bytes of the shard."""
    leaf_size: int
    """Bytes per leaf of its tree."""
    state: ShardState
    """See :class:`ShardState`."""
    proved: int
    """The last period this provider saw its proof accepted for, plus one (0: never)."""

    @property
    def key(self) -> tuple[int, int]:
        """``(deal, shard)``."""
        return self.deal, self.shard

    @property
    def servable(self) -> bool:
        """Whether its bytes may be served (held or released)."""
        return self.state is not ShardState.LOST


def _check_key(deal: int, shard: int) -> None:
    if not 0 <= deal <= MAX_DEAL or not 0 <= shard <= MAX_SHARD_INDEX:
        raise StoreError(f"deal {deal} shard {shard}: out of range")


def shard_file_name(deal: int, shard: int) -> str:
    """The file name of a shard in ``DATADIR/shards/``."""
    return f"{deal}-{shard}.shard"


def _row(row: Any) -> StoredShard:
    deal, shard, root, size, leaf_size, state, proved = row
    return StoredShard(
        int(deal),
        int(shard),
        bytes(root),
        int(size),
        int(leaf_size),
        ShardState(state),
        int(proved),
    )


_COLUMNS = "deal, shard, root, size, leaf_size, state, proved"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_index(datadir: Path) -> list[StoredShard]:
    """The index of the store in ``datadir`` as it is now, read-only, without taking the lock or
    checking anything (empty if there is none)."""
    path = datadir / DB_FILE
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            rows = db.execute(f"SELECT {_COLUMNS} FROM shards ORDER BY deal, shard").fetchall()  # noqa: S608
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read the shard index {path}: {exc}") from None
    return [_row(row) for row in rows]


class ShardWriter:
    """One shard being written (see :meth:`ShardStore.writer`): :meth:`write` the bytes in order,
    then :meth:`commit`; :meth:`abort` (or an exception in :meth:`commit`) removes the temporary
    file. Use as a context manager to abort on any error."""

    def __init__(
        self, store: ShardStore, deal: int, shard: int, root: bytes, size: int, leaf_size: int
    ) -> None:
        self._store = store
        self.deal, self.shard, self.root, self.size, self.leaf_size = (
            deal,
            shard,
            root,
            size,
            leaf_size,
        )
        self.written = 0
        """Bytes written so far."""
        self.path = store.shards_dir / f"{deal}-{shard}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
        self._handle = self.path.open("xb")
        self._done = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; :class:`ShardRejected` (and the temporary file removed) if the shard
        would grow past its size."""
        if self._done:
            raise StoreError("the shard writer is closed")
        if self.written + len(data) > self.size:
            self.abort()
            raise ShardRejected(
                f"more than the shard's {self.size} bytes (deal {self.deal} shard {self.shard})"
            )
        try:
            self._handle.write(data)
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None
        self.written += len(data)

    def commit(self) -> StoredShard:
        """Check the size and the root, make the shard durable and index it (held)."""
        if self._done:
            raise StoreError("the shard writer is closed")
        try:
            if self.written != self.size:
                raise ShardRejected(
                    f"got {self.written} bytes, the shard has {self.size} "
                    f"(deal {self.deal} shard {self.shard})"
                )
            try:
                self._handle.flush()
                os.fsync(self._handle.fileno())
                self._handle.close()
                tree = ShardTree.from_file(self.path, self.leaf_size)
            except OSError as exc:
                raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None
            except StorageMerkleError as exc:
                raise StoreError(str(exc)) from None
            if tree.root != self.root:
                raise ShardRejected(
                    f"the bytes hash to root {tree.root.hex()}, not the committed "
                    f"{self.root.hex()} (deal {self.deal} shard {self.shard})"
                )
            return self._store._install(self, tree)
        finally:
            self.abort()

    def abort(self) -> None:
        """Forget the shard: close and remove the temporary file (nothing if committed)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._handle.close()
        self.path.unlink(missing_ok=True)
        self._store._finished(self.deal, self.shard)


class ShardStore:
    """The shard files and their index in one data directory (thread-safe). Open with
    :meth:`open`; close when done."""

    def __init__(self, datadir: Path, db: sqlite3.Connection, lock_fd: int) -> None:
        self.datadir = datadir
        self.shards_dir = datadir / SHARDS_DIR
        self._db = db
        self._lock_fd = lock_fd
        self._lock = threading.RLock()
        self._writing: set[tuple[int, int]] = set()
        self._trees: dict[tuple[int, int], ShardTree] = {}

    @classmethod
    def open(cls, datadir: Path, log: Callable[[str], None] = note) -> ShardStore:
        """Open (or create) the store in ``datadir`` and check it (module docstring); ``log``
        gets one line per problem found."""
        try:
            datadir.mkdir(parents=True, exist_ok=True)
            (datadir / SHARDS_DIR).mkdir(exist_ok=True)
            lock_fd = os.open(datadir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot use the data directory {datadir}: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise StoreError(
                f"the data directory {datadir} is in use by another provider "
                f"(lock {datadir / LOCK_FILE} is held)"
            ) from None
        try:
            db = sqlite3.connect(
                datadir / DB_FILE, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise StoreError(f"cannot open the shard index {datadir / DB_FILE}: {exc}") from None
        store = cls(datadir, db, lock_fd)
        try:
            store._check(log)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the index and release the data directory."""
        with self._lock:
            if self._lock_fd < 0:
                return
            self._db.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks on open ------------------------------------------------------------------------

    def _check(self, log: Callable[[str], None]) -> None:
        rows = {row.key: row for row in self.shards()}
        try:
            names = sorted(os.listdir(self.shards_dir))
        except OSError as exc:
            raise StoreError(f"cannot list {self.shards_dir}: {exc.strerror}") from None
        for name in names:
            path = self.shards_dir / name
            found = _SHARD_FILE.fullmatch(name)
            if name.endswith(_TEMP_SUFFIX):
                log(f"shard store: removed the unfinished write {name}")
            elif found is None or (int(found[1]), int(found[2])) not in rows:
                log(f"shard store: removed {name}, which the index does not name")
            else:
                continue
            self._remove_path(path)
        for row in rows.values():
            if row.state is ShardState.LOST:
                continue
            problem = self._verify(row)
            if problem is not None:
                log(f"shard store: deal {row.deal} shard {row.shard} lost: {problem}")
                self._remove_path(self.path(row.deal, row.shard))
                self._set(row.deal, row.shard, "state = ?", (ShardState.LOST.value,))

    def _verify(self, row: StoredShard) -> str | None:
        """Why the file of ``row`` is not the shard, or None."""
        path = self.path(row.deal, row.shard)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "its file is missing"
        except OSError as exc:
            return f"its file cannot be read: {exc.strerror}"
        if size != row.size:
            return f"its file has {size} bytes, expected {row.size}"
        try:
            tree = ShardTree.from_file(path, row.leaf_size)
        except StorageMerkleError as exc:
            return str(exc)
        if tree.root != row.root:
            return f"its bytes hash to {tree.root.hex()[:16]}..., not its root {row.root.hex()[:16]}..."
        return None

    def _remove_path(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot remove {path}: {exc.strerror}") from None

    # -- reading the index ---------------------------------------------------------------------

    def path(self, deal: int, shard: int) -> Path:
        """Where the file of a shard lives."""
        return self.shards_dir / shard_file_name(deal, shard)

    def shards(self) -> list[StoredShard]:
        """Every row of the index, by deal and shard."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM shards ORDER BY deal, shard"  # noqa: S608
            ).fetchall()
        return [_row(row) for row in rows]

    def get(self, deal: int, shard: int) -> StoredShard | None:
        """The row of a shard, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM shards WHERE deal = ? AND shard = ?",  # noqa: S608
                (deal, shard),
            ).fetchone()
        return None if row is None else _row(row)

    def used(self) -> int:
        """Bytes of the shards held or released (what the disk holds)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM shards WHERE state != ?",
                (ShardState.LOST.value,),
            ).fetchone()
        return int(row[0])

    def tree(self, deal: int, shard: int) -> ShardTree:
        """The tree of a servable shard (decoded once, then cached)."""
        with self._lock:
            cached = self._trees.get((deal, shard))
            if cached is not None:
                return cached
            row = self._db.execute(
                "SELECT tree, state FROM shards WHERE deal = ? AND shard = ?", (deal, shard)
            ).fetchone()
            if row is None or row[1] == ShardState.LOST.value:
                raise StoreError(f"deal {deal} shard {shard} is not stored here")
            try:
                tree = ShardTree.decode(bytes(row[0]))
            except StorageMerkleError as exc:
                raise StoreError(
                    f"deal {deal} shard {shard}: bad tree in the index: {exc}"
                ) from None
            self._trees[(deal, shard)] = tree
            return tree

    # -- reading shards ------------------------------------------------------------------------

    def read_range(self, deal: int, shard: int, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a servable shard (at most :data:`MAX_READ`)."""
        row = self.get(deal, shard)
        if row is None or not row.servable:
            raise StoreError(f"deal {deal} shard {shard} is not stored here")
        if not 0 <= start <= end <= row.size or end - start > MAX_READ:
            raise StoreError(
                f"range [{start}, {end}) is not within the shard's {row.size} bytes "
                f"(at most {MAX_READ} at once)"
            )
        try:
            with self.path(deal, shard).open("rb") as handle:
                handle.seek(start)
                data = handle.read(end - start)
        except OSError as exc:
            raise StoreError(f"cannot read deal {deal} shard {shard}: {exc.strerror}") from None
        if len(data) != end - start:
            raise StoreError(f"deal {deal} shard {shard}: its file is shorter than indexed")
        return data

    def read_chunk(self, deal: int, shard: int, chunk: int) -> bytes:
        """Chunk ``chunk`` of a servable shard (see :meth:`ShardTree.chunk_span`)."""
        try:
            start, end = self.tree(deal, shard).chunk_span(chunk)
        except StorageMerkleError as exc:
            raise StoreError(str(exc)) from None
        return self.read_range(deal, shard, start, end)

    def stream(self, deal: int, shard: int, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of a servable shard, in pieces of at most 64 KiB (the file is
        opened at once, so a shard deleted meanwhile is still read to the end)."""
        row = self.get(deal, shard)
        if row is None or not row.servable:
            raise StoreError(f"deal {deal} shard {shard} is not stored here")
        if not 0 <= start <= end <= row.size:
            raise StoreError(f"range [{start}, {end}) is not within the shard's {row.size} bytes")
        try:
            handle = self.path(deal, shard).open("rb")
        except OSError as exc:
            raise StoreError(f"cannot read deal {deal} shard {shard}: {exc.strerror}") from None
        return _pieces(handle, start, end)

    # -- writing -------------------------------------------------------------------------------

    def writer(self, deal: int, shard: int, root: bytes, size: int, leaf_size: int) -> ShardWriter:
        """Start writing a shard of ``size`` bytes that must hash to ``root``;
        :class:`ShardBusy` if it is stored (and not lost) or being written already."""
        _check_key(deal, shard)
        if not 0 < size <= MAX_SHARD_SIZE or size % leaf_size:
            raise StoreError(
                f"shard size {size} is not a positive multiple of {leaf_size} up to "
                f"{MAX_SHARD_SIZE}"
            )
        if len(root) != 32:
            raise StoreError("a shard root is 32 bytes")
        with self._lock:
            row = self.get(deal, shard)
            if row is not None and row.state is not ShardState.LOST:
                raise ShardBusy(f"deal {deal} shard {shard} is stored already")
            if (deal, shard) in self._writing:
                raise ShardBusy(f"deal {deal} shard {shard} is being written now")
            self._writing.add((deal, shard))
        try:
            return ShardWriter(self, deal, shard, root, size, leaf_size)
        except OSError as exc:
            self._finished(deal, shard)
            raise StoreError(f"cannot write in {self.shards_dir}: {exc.strerror}") from None

    def put(self, deal: int, shard: int, root: bytes, data: bytes, leaf_size: int) -> StoredShard:
        """Store a shard held in memory (a rebuilt one)."""
        with self.writer(deal, shard, root, len(data), leaf_size) as writer:
            view = memoryview(data)
            for start in range(0, len(view), WRITE_BLOCK):
                writer.write(view[start : start + WRITE_BLOCK])
            return writer.commit()

    def _finished(self, deal: int, shard: int) -> None:
        with self._lock:
            self._writing.discard((deal, shard))

    def _install(self, writer: ShardWriter, tree: ShardTree) -> StoredShard:
        """Rename a checked temporary file into place and index it."""
        final = self.path(writer.deal, writer.shard)
        try:
            os.replace(writer.path, final)
            _fsync_dir(self.shards_dir)
        except OSError as exc:
            raise StoreError(f"cannot store {final}: {exc.strerror}") from None
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                    (
                        writer.deal,
                        writer.shard,
                        writer.root,
                        writer.size,
                        writer.leaf_size,
                        tree.encode(),
                        ShardState.HELD.value,
                    ),
                )
            except sqlite3.DatabaseError as exc:
                final.unlink(missing_ok=True)
                raise StoreError(f"cannot index {final}: {exc}") from None
            self._trees[(writer.deal, writer.shard)] = tree
        stored = self.get(writer.deal, writer.shard)
        if stored is None:  # pragma: no cover - just inserted under the lock
            raise StoreError("the shard vanished from the index")
        return stored

    def _set(self, deal: int, shard: int, assignment: str, values: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._db.execute(
                    f"UPDATE shards SET {assignment} WHERE deal = ? AND shard = ?",  # noqa: S608
                    (*values, deal, shard),
                )
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot update the shard index: {exc}") from None

    def set_state(self, deal: int, shard: int, state: ShardState) -> None:
        """Change a shard's state (a lost shard's file is removed)."""
        self._set(deal, shard, "state = ?", (state.value,))
        if state is ShardState.LOST:
            with self._lock:
                self._trees.pop((deal, shard), None)
            self._remove_path(self.path(deal, shard))

    def set_proved(self, deal: int, shard: int, period: int) -> None:
        """Record that the proof for ``period`` was accepted (kept as ``period + 1``)."""
        self._set(deal, shard, "proved = MAX(proved, ?)", (period + 1,))

    def delete(self, deal: int, shard: int) -> bool:
        """Forget a shard: its row first, then its file (a crash between leaves a file the next
        open removes). Whether there was one."""
        with self._lock:
            try:
                cursor = self._db.execute(
                    "DELETE FROM shards WHERE deal = ? AND shard = ?", (deal, shard)
                )
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot update the shard index: {exc}") from None
            self._trees.pop((deal, shard), None)
        self._remove_path(self.path(deal, shard))
        return cursor.rowcount > 0


def _pieces(handle: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Read ``[start, end)`` from an open file in pieces of 64 KiB, closing it at the end."""
    with handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            piece = handle.read(min(left, 65_536))
            if not piece:
                return
            left -= len(piece)
            yield piece
