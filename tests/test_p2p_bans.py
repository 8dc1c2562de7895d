"""The ban list on disk: strict parsing of saved bans, and the node's ban file (bounded, atomic,
a damaged one refused with what to do). Round trips through a peer manager are in
tests/test_p2p_peers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from qoin.crypto.address import Address
from qoin.p2p.bans import (
    BANS_FILE,
    MAX_BANS_FILE_BYTES,
    BanEntry,
    BanFile,
    BanKind,
    BanListError,
    bans_from_json,
)
from qoin.p2p.misbehaviour import Misbehaviour


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 2, "bans": []}',
        '{"version": true, "bans": []}',
        '{"version": 1, "bans": {}}',
        '{"version": 1, "bans": [1]}',
        '{"version": 1, "bans": [{"kind": "node"}]}',
        '{"version": 1, "bans": [{"kind": "peer", "subject": "x", "reason": "timeout", "detail": "", "expires_at": 5}]}',
        '{"version": 1, "bans": [{"kind": "host", "subject": "192.0.2.1", "reason": "rude", "detail": "", "expires_at": 5}]}',
        '{"version": 1, "bans": [{"kind": "host", "subject": "192.0.2.1", "reason": "timeout", "detail": "", "expires_at": NaN}]}',
        '{"version": 1, "bans": [{"kind": "host", "subject": "192.0.2.1", "reason": "timeout", "detail": "", "expires_at": "5"}]}',
        '{"version": 1, "bans": [{"kind": "host", "subject": "192.0.2.01", "reason": "timeout", "detail": "", "expires_at": 5}]}',
        '{"version": 1, "bans": [{"kind": "host", "subject": "2001:DB8::/64", "reason": "timeout", "detail": "", "expires_at": 5}]}',
        '{"version": 1, "bans": [{"kind": "node", "subject": "qoin1xyz", "reason": "timeout", "detail": "", "expires_at": 5}]}',
    ],
)
def test_bad_ban_lists_are_refused(text: str) -> None:
    with pytest.raises(BanListError):
        bans_from_json(text, 1.0)


def test_the_ban_file_round_trips_and_refuses_damage(tmp_path: Path) -> None:
    file = BanFile(tmp_path)
    assert file.load(1.0) == ()  # no file: no bans
    node = str(Address(bytes([1]) * 32))
    bans = (
        BanEntry(BanKind.NODE, node, Misbehaviour.INVALID_BLOCK, "bad root", 60.0),
        BanEntry(BanKind.HOST, "192.0.2.1", Misbehaviour.INVALID_BLOCK, "bad root", 60.0),
    )
    file.save(bans, 1000.0)
    assert set(file.load(1030.0)) == {
        BanEntry(b.kind, b.subject, b.reason, b.detail, 30.0) for b in bans
    }
    assert file.load(1061.0) == ()  # expired by the wall clock
    (tmp_path / BANS_FILE).write_bytes(b"{not json")
    with pytest.raises(BanListError, match="remove it to start without bans"):
        file.load(1.0)
    (tmp_path / BANS_FILE).write_bytes(b" " * (MAX_BANS_FILE_BYTES + 1))
    with pytest.raises(BanListError, match="larger than"):
        file.load(1.0)
