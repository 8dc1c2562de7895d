"""The orphan pool: blocks that arrived before their parent, kept until the parent connects.

The pool is generic over its payload (the node stores full blocks) and bounded both in count and in
total bytes. When adding an orphan would exceed a bound, the *oldest inserted* orphans are evicted
first. That policy is simple and cannot be exploited to pin memory: a peer that floods the pool
only flushes older orphans, which the node refetches when their descendants come back; nothing an
attacker sends can stay in the pool forever or grow it past its bounds.

:func:`connect` returns every orphan that becomes connectable once a block arrives, parents before
children (breadth-first), so the caller can add them to the chain in that order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from qoin.errors import QoinError

T = TypeVar("T")

DEFAULT_MAX_COUNT = 256
"""Default bound on the number of orphans held."""
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default bound on the total size of the orphans held, in bytes (64 MiB)."""


class OrphanError(QoinError):
    """An orphan pool cannot be built or cannot take an orphan."""


class OrphanTooLarge(OrphanError):
    """An orphan alone is larger than the pool's byte bound."""


@dataclass(frozen=True)
class _Orphan(Generic[T]):
    """One orphan: its parent, payload and size in bytes."""

    parent_hash: bytes
    payload: T
    size: int


class OrphanPool(Generic[T]):
    """Blocks whose parent is unknown, by block hash, bounded in count and bytes (oldest evicted)."""

    def __init__(
        self, max_count: int = DEFAULT_MAX_COUNT, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        # A pool must be able to hold at least one orphan.
        if max_count < 1 or max_bytes < 1:
            raise OrphanError(f"bounds must be >= 1, got count {max_count}, bytes {max_bytes}")
        self.max_count = max_count
        self.max_bytes = max_bytes
        # Dicts keep insertion order: the first key is the oldest orphan.
        self._orphans: dict[bytes, _Orphan[T]] = {}
        self._by_parent: dict[bytes, dict[bytes, None]] = {}
        self._total_bytes = 0

    def __len__(self) -> int:
        return len(self._orphans)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._orphans

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes of the orphans held."""
        return self._total_bytes

    def add(self, block_hash: bytes, parent_hash: bytes, payload: T, size: int) -> bool:
        """
        Hold ``payload`` until ``parent_hash`` connects; ``False`` if ``block_hash`` is already held.

        Evicts the oldest orphans first as needed to stay within both bounds. Raises
        :class:`OrphanTooLarge` (and evicts nothing) if ``size`` alone exceeds the byte bound.
        """
        # Sizes are byte counts.
        if size < 0:
            raise OrphanError(f"orphan size must be >= 0, got {size}")
        # A duplicate changes nothing (not even its age).
        if block_hash in self._orphans:
            return False
        # An orphan that could never fit is refused rather than flushing the pool for nothing.
        if size > self.max_bytes:
            raise OrphanTooLarge(f"orphan of {size} bytes exceeds the pool's {self.max_bytes}")
        # Oldest first out until the newcomer fits both bounds.
        while len(self._orphans) >= self.max_count or self._total_bytes + size > self.max_bytes:
            self._remove(next(iter(self._orphans)))
        self._orphans[block_hash] = _Orphan(parent_hash, payload, size)
        self._by_parent.setdefault(parent_hash, {})[block_hash] = None
        self._total_bytes += size
        return True

    def _remove(self, block_hash: bytes) -> _Orphan[T]:
        """Remove one held orphan and return it."""
        orphan = self._orphans.pop(block_hash)
        siblings = self._by_parent[orphan.parent_hash]
        del siblings[block_hash]
        if not siblings:
            del self._by_parent[orphan.parent_hash]
        self._total_bytes -= orphan.size
        return orphan

    def pop_children_items(self, parent_hash: bytes) -> list[tuple[bytes, T]]:
        """Remove the orphans whose parent is ``parent_hash``; ``(hash, payload)`` in insertion order."""
        children = list(self._by_parent.get(parent_hash, ()))
        return [(child, self._remove(child).payload) for child in children]

    def pop_children(self, parent_hash: bytes) -> list[T]:
        """Remove and return the orphans whose parent is ``parent_hash``, in insertion order."""
        return [payload for _, payload in self.pop_children_items(parent_hash)]

    def missing_parents(self) -> set[bytes]:
        """Parents of held orphans that are not held themselves: the blocks to fetch."""
        return {parent for parent in self._by_parent if parent not in self._orphans}


def connect(pool: OrphanPool[T], parent_hash: bytes) -> list[T]:
    """
    Remove and return every orphan that descends from ``parent_hash`` (which just connected).

    Breadth-first, so each orphan comes after its parent; children of one parent keep their
    insertion order.
    """
    connectable: list[T] = []
    frontier = deque([parent_hash])
    while frontier:
        for child, payload in pool.pop_children_items(frontier.popleft()):
            connectable.append(payload)
            frontier.append(child)
    return connectable
