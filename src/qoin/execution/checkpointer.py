"""Background WAL checkpoints for the execution database.

With SQLite's automatic checkpoints, the commit that crosses the WAL threshold copies the whole WAL
into the database file and fsyncs it, on the importing thread, while no signature is being checked:
about a sixth of a full block's import time (docs/benchmarks.md). Here the importing connection has
automatic checkpoints off, and a thread with its own connection runs a PASSIVE checkpoint after
commits (it never blocks the writer, and SQLite releases the GIL while it copies). The WAL is reset
by the writer once a checkpoint has caught up with it, so it stays around the size of a few blocks.
Should checkpoints ever fall behind, the committing thread checkpoints itself once the WAL passes
:data:`MAX_WAL_BYTES`, so the file stays bounded.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

MAX_WAL_BYTES = 64 * 1024 * 1024
"""Past this WAL size the committing thread checkpoints synchronously."""
IDLE_CHECKPOINT_S = 5.0
"""A checkpoint also runs after this long without commits (so an idle node's WAL drains)."""


class Checkpointer:
    """A thread that checkpoints one WAL database after each :meth:`poke`."""

    def __init__(self, path: Path) -> None:
        self._wal = path.with_name(path.name + "-wal")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=1000")
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def after_commit(self, writer: sqlite3.Connection) -> None:
        """Ask for a checkpoint soon; returns at once unless the WAL is past its bound, in which
        case ``writer`` (the committing connection) checkpoints it first."""
        try:
            oversized = self._wal.stat().st_size > MAX_WAL_BYTES
        except FileNotFoundError:
            oversized = False
        if oversized:
            try:  # never fails the commit that just happened: the next one tries again
                writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint after commit failed: %s", exc)
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait(IDLE_CHECKPOINT_S)
            self._wanted.clear()
            if self._stopping.is_set():
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:  # e.g. busy: the next poke retries
                log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        """Stop the thread; the caller's connection then checkpoints what is left."""
        self._stopping.set()
        self._wanted.set()
        self._thread.join()
        self._db.close()
