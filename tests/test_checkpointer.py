"""Background WAL checkpoints of the execution database, and the bound on the WAL's size."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from qoin.execution import checkpointer
from qoin.execution.checkpointer import Checkpointer
from tests.framework import wait_until

BLOB = bytes(200_000)


def writer_for(path: Path) -> sqlite3.Connection:
    """A connection set up like the execution client's: WAL, no automatic checkpoints."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (x BLOB)")
    return db


def test_commits_are_checkpointed_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = writer_for(path)
    background = Checkpointer(path)
    try:
        db.execute("INSERT INTO t VALUES (?)", (BLOB,))
        assert path.stat().st_size < len(BLOB)  # the row is only in the WAL so far
        background.after_commit(db)
        wait_until(lambda: path.stat().st_size > len(BLOB), timeout=10)  # copied by the thread
    finally:
        background.close()
        db.close()


@pytest.mark.parametrize("bound", [10**12, 300_000])
def test_an_oversized_wal_is_checkpointed_by_the_committer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    monkeypatch.setattr(checkpointer, "MAX_WAL_BYTES", bound)
    path = tmp_path / "db.sqlite3"
    db = writer_for(path)
    stalled = Checkpointer(path)
    stalled.close()  # no thread: only the bound can fold the WAL
    try:
        for _ in range(8):
            db.execute("INSERT INTO t VALUES (?)", (BLOB,))
            stalled.after_commit(db)
        wal = path.with_name(path.name + "-wal").stat().st_size
        if bound > wal:
            assert wal > 8 * len(BLOB)  # nothing folded it: it grew with every commit
        else:
            assert wal < bound + 2 * len(BLOB)  # restarted once past the bound
    finally:
        db.close()
