"""The orphan pool: bounds with oldest-first eviction, children lookup and breadth-first connect."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.chain.orphans import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    OrphanError,
    OrphanPool,
    OrphanTooLarge,
    connect,
)
from qoin.errors import QoinError


def H(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_defaults() -> None:
    pool: OrphanPool[str] = OrphanPool()
    assert pool.max_count == DEFAULT_MAX_COUNT == 256
    assert pool.max_bytes == DEFAULT_MAX_BYTES == 64 * 1024 * 1024
    assert len(pool) == 0
    assert pool.total_bytes == 0
    assert pool.missing_parents() == set()


def test_count_bound_evicts_oldest_first() -> None:
    pool: OrphanPool[str] = OrphanPool(max_count=3)
    for n in range(1, 4):
        assert pool.add(H(n), H(100), f"b{n}", 10)
    assert pool.add(H(4), H(100), "b4", 10)
    assert len(pool) == 3
    assert H(1) not in pool
    assert all(H(n) in pool for n in (2, 3, 4))
    assert pool.total_bytes == 30
    assert pool.pop_children(H(100)) == ["b2", "b3", "b4"]


def test_byte_bound_evicts_oldest_first() -> None:
    pool: OrphanPool[str] = OrphanPool(max_bytes=100)
    pool.add(H(1), H(100), "a", 40)
    pool.add(H(2), H(100), "b", 40)
    pool.add(H(3), H(100), "c", 20)
    assert pool.total_bytes == 100
    # 70 more bytes: the two oldest must go.
    pool.add(H(4), H(100), "d", 70)
    assert H(1) not in pool
    assert H(2) not in pool
    assert pool.total_bytes == 90
    assert pool.pop_children(H(100)) == ["c", "d"]
    assert pool.total_bytes == 0


def test_too_large_and_bad_arguments() -> None:
    pool: OrphanPool[str] = OrphanPool(max_bytes=100)
    pool.add(H(1), H(100), "a", 50)
    with pytest.raises(OrphanTooLarge):
        pool.add(H(2), H(100), "huge", 101)
    # Nothing was flushed for an orphan that could never fit.
    assert H(1) in pool
    with pytest.raises(OrphanError):
        pool.add(H(3), H(100), "neg", -1)
    with pytest.raises(OrphanError):
        OrphanPool(max_count=0)
    with pytest.raises(OrphanError):
        OrphanPool(max_bytes=0)
    assert issubclass(OrphanError, QoinError)
    # A payload exactly at the bound fits.
    assert pool.add(H(4), H(100), "full", 100)
    assert len(pool) == 1


def test_duplicates_are_refused_and_keep_their_age() -> None:
    pool: OrphanPool[str] = OrphanPool(max_count=2)
    assert pool.add(H(1), H(100), "a", 1)
    assert pool.add(H(2), H(100), "b", 1)
    assert not pool.add(H(1), H(100), "a again", 1)
    assert len(pool) == 2
    assert pool.total_bytes == 2
    # H(1) is still the oldest.
    pool.add(H(3), H(100), "c", 1)
    assert H(1) not in pool
    assert pool.pop_children(H(100)) == ["b", "c"]


def test_pop_children_and_missing_parents() -> None:
    pool: OrphanPool[str] = OrphanPool()
    pool.add(H(11), H(1), "x", 5)
    pool.add(H(21), H(2), "y", 5)
    pool.add(H(12), H(1), "x2", 5)
    pool.add(H(111), H(11), "x-child", 5)
    # H(11) is held, so only H(1) and H(2) are missing.
    assert pool.missing_parents() == {H(1), H(2)}
    assert pool.pop_children(H(1)) == ["x", "x2"]
    assert pool.pop_children(H(1)) == []
    assert pool.pop_children(H(99)) == []
    assert len(pool) == 2
    assert pool.total_bytes == 10
    assert pool.missing_parents() == {H(2), H(11)}
    assert "not bytes" not in pool


def test_connect_is_breadth_first() -> None:
    pool: OrphanPool[str] = OrphanPool()
    # Inserted children before parents, and an unrelated branch.
    pool.add(H(31), H(3), "a1", 1)
    pool.add(H(311), H(31), "a11", 1)
    pool.add(H(41), H(4), "b1", 1)
    pool.add(H(3), H(1), "a", 1)
    pool.add(H(4), H(1), "b", 1)
    pool.add(H(32), H(3), "a2", 1)
    pool.add(H(9), H(8), "other", 1)
    assert connect(pool, H(1)) == ["a", "b", "a1", "a2", "b1", "a11"]
    assert len(pool) == 1
    assert pool.missing_parents() == {H(8)}
    assert connect(pool, H(1)) == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 30)),
        max_size=80,
    ),
    st.integers(1, 10),
    st.integers(30, 100),
)
def test_bounds_always_hold(
    ops: list[tuple[int, int, int]], max_count: int, max_bytes: int
) -> None:
    pool: OrphanPool[int] = OrphanPool(max_count=max_count, max_bytes=max_bytes)
    model: dict[bytes, tuple[bytes, int]] = {}  # insertion-ordered model of the pool
    for block, parent, size in ops:
        added = pool.add(H(block), H(parent), block, size)
        assert added == (H(block) not in model)
        if added:
            model[H(block)] = (H(parent), size)
            # The model evicts oldest first, except the newcomer.
            while len(model) > max_count or sum(s for _, s in model.values()) > max_bytes:
                del model[next(iter(model))]
        assert len(pool) <= max_count
        assert pool.total_bytes <= max_bytes
        assert len(pool) == len(model)
        assert pool.total_bytes == sum(s for _, s in model.values())
        assert all(h in pool for h in model)
