"""The list of execution clients a consensus client caught lying, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from qoin.consensus.judge import MAX_DROPPED_FILE, DroppedClients
from qoin.errors import QoinError


def test_dropped_clients_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "dropped.json"
    DroppedClients(path).drop("http://127.0.0.1:1/", "answered VALID for an invalid block")
    reloaded = DroppedClients(path)
    assert "http://127.0.0.1:1/" in reloaded
    assert reloaded.entries["http://127.0.0.1:1/"]["reason"].startswith("answered VALID")
    assert "http://127.0.0.1:2/" not in reloaded


@pytest.mark.parametrize(
    "content",
    [
        b"[1, 2",
        b"[]",
        b'{"http://x/": "not an object"}',
        b"[" * 100_000,
        b" " * (MAX_DROPPED_FILE + 1),
    ],
    ids=["truncated", "not-an-object", "bad-entry", "deeply-nested", "oversized"],
)
def test_a_damaged_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "dropped.json"
    path.write_bytes(content)
    with pytest.raises(QoinError, match=str(path)):
        DroppedClients(path)
