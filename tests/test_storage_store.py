"""The provider's shard store: durable writes checked against their root, bounded reads, and the
checks on reopen (an unfinished write, a truncated file, a flipped byte, a missing file, a file no
row names)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.storage.merkle import ShardTree, shard_root
from qoin.storage.provider.store import (
    MAX_READ,
    SHARDS_DIR,
    ShardBusy,
    ShardRejected,
    ShardState,
    ShardStore,
    StoreError,
    read_index,
    shard_file_name,
)

LEAF = 256


def shard_bytes(size: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size))


def stored(tmp_path: Path, data: bytes, deal: int = 7, shard: int = 1) -> ShardStore:
    store = ShardStore.open(tmp_path)
    store.put(deal, shard, shard_root(data, LEAF), data, LEAF)
    return store


def files(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path / SHARDS_DIR))


def test_store_read_and_reopen(tmp_path: Path) -> None:
    data = shard_bytes(3 * 65_536 + 512)
    with stored(tmp_path, data) as store:
        row = store.get(7, 1)
        assert row is not None
        assert (row.size, row.state, row.proved, row.root) == (
            len(data),
            ShardState.HELD,
            0,
            shard_root(data, LEAF),
        )
        assert store.used() == len(data)
        assert store.read_range(7, 1, 100, 70_000) == data[100:70_000]
        tree = store.tree(7, 1)
        for chunk in range(tree.chunks):
            start, end = tree.chunk_span(chunk)
            assert store.read_chunk(7, 1, chunk) == data[start:end]
        assert b"".join(store.stream(7, 1, 5, len(data))) == data[5:]
        store.set_proved(7, 1, 4)
        store.set_proved(7, 1, 2)  # never goes back
    assert [r.key for r in read_index(tmp_path)] == [(7, 1)]
    with ShardStore.open(tmp_path) as store:
        row = store.get(7, 1)
        assert row is not None and row.state is ShardState.HELD and row.proved == 5
        assert store.tree(7, 1).root == ShardTree.from_bytes(data, LEAF).root
        assert files(tmp_path) == [shard_file_name(7, 1)]


def test_bad_writes_keep_nothing(tmp_path: Path) -> None:
    data = shard_bytes(4 * LEAF)
    root = shard_root(data, LEAF)
    with ShardStore.open(tmp_path) as store:
        with (
            pytest.raises(ShardRejected, match="more than"),
            store.writer(1, 0, root, len(data), LEAF) as writer,
        ):
            writer.write(data)
            writer.write(b"x")
        with (
            pytest.raises(ShardRejected, match="got 1023 bytes"),
            store.writer(1, 0, root, len(data), LEAF) as writer,
        ):
            writer.write(data[:-1])
            writer.commit()
        wrong = bytearray(data)
        wrong[300] ^= 1
        with pytest.raises(ShardRejected, match="not the committed"):
            store.put(1, 0, root, bytes(wrong), LEAF)
        with pytest.raises(StoreError, match="multiple"):
            store.writer(1, 0, root, len(data) + 1, LEAF)
        assert files(tmp_path) == [] and store.shards() == []
        first = store.writer(1, 0, root, len(data), LEAF)
        with pytest.raises(ShardBusy, match="being written"):
            store.writer(1, 0, root, len(data), LEAF)
        first.write(data)
        first.commit()
        with pytest.raises(ShardBusy, match="stored already"):
            store.put(1, 0, root, data, LEAF)
        assert store.delete(1, 0) and not store.delete(1, 0)
        assert files(tmp_path) == [] and store.shards() == []
        with pytest.raises(StoreError, match="not stored"):
            store.read_range(1, 0, 0, 1)


def test_reads_are_bounded(tmp_path: Path) -> None:
    data = shard_bytes(8 * LEAF)
    with stored(tmp_path, data) as store:
        with pytest.raises(StoreError, match="not within"):
            store.read_range(7, 1, 0, len(data) + 1)
        with pytest.raises(StoreError, match="not within"):
            store.read_range(7, 1, 5, 4)
        assert MAX_READ < 1 << 30


def test_reopen_handles_every_kind_of_damage(tmp_path: Path) -> None:
    lines: list[str] = []
    good, short, flipped, missing = (shard_bytes(4096, seed) for seed in range(4))
    with ShardStore.open(tmp_path) as store:
        for shard, data in enumerate((good, short, flipped, missing)):
            store.put(9, shard, shard_root(data, LEAF), data, LEAF)
    shards = tmp_path / SHARDS_DIR
    with (shards / shard_file_name(9, 1)).open("r+b") as handle:
        handle.truncate(4096 - LEAF)
    raw = bytearray((shards / shard_file_name(9, 2)).read_bytes())
    raw[1234] ^= 0x40
    (shards / shard_file_name(9, 2)).write_bytes(raw)
    (shards / shard_file_name(9, 3)).unlink()
    (shards / "9-0.abcdef.tmp").write_bytes(b"half a shard")  # a write cut short by a crash
    (shards / shard_file_name(10, 0)).write_bytes(good)  # renamed, never indexed
    (shards / "stray.txt").write_bytes(b"?")
    with ShardStore.open(tmp_path, log=lines.append) as store:
        states = {row.shard: row.state for row in store.shards()}
        assert states == {
            0: ShardState.HELD,
            1: ShardState.LOST,
            2: ShardState.LOST,
            3: ShardState.LOST,
        }
        assert files(tmp_path) == [shard_file_name(9, 0)]
        assert store.read_range(9, 0, 0, 4096) == good
        with pytest.raises(StoreError, match="not stored"):
            store.read_range(9, 2, 0, 1)
        assert store.used() == 4096
        # a lost shard can be stored again (fetched from the other providers)
        store.put(9, 2, shard_root(flipped, LEAF), flipped, LEAF)
        row = store.get(9, 2)
        assert row is not None and row.state is ShardState.HELD
    text = "\n".join(lines)
    for expected in (
        "unfinished write 9-0.abcdef.tmp",
        "removed 10-0.shard",
        "removed stray.txt",
        "shard 1 lost: its file has 3840 bytes",
        "shard 2 lost: its bytes hash to",
        "shard 3 lost: its file is missing",
    ):
        assert expected in text
    with ShardStore.open(tmp_path, log=lines.append) as store:  # nothing more to say
        assert len(store.shards()) == 4
    assert len(lines) == 6


def test_one_store_per_directory(tmp_path: Path) -> None:
    with ShardStore.open(tmp_path):
        with pytest.raises(StoreError, match="in use"):
            ShardStore.open(tmp_path)
        assert read_index(tmp_path) == []  # reading beside the daemon is fine
    ShardStore.open(tmp_path).close()


def test_released_shards_are_served_and_lost_ones_removed(tmp_path: Path) -> None:
    data = shard_bytes(2048)
    with stored(tmp_path, data) as store:
        store.set_state(7, 1, ShardState.RELEASED)
        assert store.read_range(7, 1, 0, 10) == data[:10]
        store.set_state(7, 1, ShardState.LOST)
        assert files(tmp_path) == []
        with pytest.raises(StoreError):
            store.tree(7, 1)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    leaves=st.integers(1, 600),
    cuts=st.lists(st.integers(0, 600 * LEAF), min_size=2, max_size=2),
    piece=st.integers(1, 70_000),
)
def test_streamed_writes_and_ranges(
    tmp_path: Path, leaves: int, cuts: list[int], piece: int
) -> None:
    data = shard_bytes(leaves * LEAF, leaves)
    directory = tmp_path / f"s{leaves}-{piece}-{cuts[0]}-{cuts[1]}"
    with ShardStore.open(directory) as store:
        with store.writer(3, 2, shard_root(data, LEAF), len(data), LEAF) as writer:
            for start in range(0, len(data), piece):
                writer.write(data[start : start + piece])
            writer.commit()
        start, end = sorted(min(cut, len(data)) for cut in cuts)
        assert store.read_range(3, 2, start, end) == data[start:end]
        assert b"".join(store.stream(3, 2, start, end)) == data[start:end]
