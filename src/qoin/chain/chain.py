"""The chain: validated blocks in crash-safe storage, GHOST fork choice, and an orphan pool.

:class:`Chain` is what a consensus client holds. ``import_block`` validates a block, stores it with the
new head in one durable transaction, and connects any orphans that were waiting for it. Fork choice
lives in memory and is rebuilt from the store on open (one pass over the stored blocks).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from qoin.chain import forkchoice
from qoin.chain.block import Block, Header
from qoin.chain.genesis import Genesis
from qoin.chain.orphans import OrphanPool, connect
from qoin.chain.store import BlockStore
from qoin.chain.validation import InvalidBlock, genesis_meta, validate_block, validate_header
from qoin.errors import QoinError

STORE_FILE = "chain.sqlite3"
MAX_REMEMBERED_INVALID = 10_000
"""Execution-invalid block hashes kept in memory (re-submissions and descendants fail at once)."""


class ExecutionRejected(InvalidBlock):
    """The block passes the consensus rules but does not execute to the roots it claims."""


class ExecutionUndecided(QoinError):
    """The block's execution cannot be judged now (no execution client can answer): not stored,
    not invalid; it can be submitted again."""


ExecutionCheck = Callable[[Block], None]
"""Judges a block whose consensus rules passed: returns if it executes correctly, raises
:class:`ExecutionRejected` or :class:`ExecutionUndecided` otherwise."""


class ImportStatus(Enum):
    """What happened to an imported block."""

    IMPORTED = "imported"
    DUPLICATE = "duplicate"
    ORPHAN = "orphan"


@dataclass(frozen=True)
class ImportResult:
    """The outcome of :meth:`Chain.import_block`."""

    status: ImportStatus
    """Imported, already known, or kept as an orphan."""
    block_hash: bytes
    """The block given."""
    head: bytes
    """The head after the import (and any orphans it connected)."""
    head_changed: bool
    """Whether the head moved."""
    reorg_depth: int
    """Blocks of the old head's chain that left the canonical chain (0: no reorg)."""
    connected: tuple[bytes, ...] = ()
    """Blocks stored by this call: the block itself and any orphans it connected."""
    rejected_orphans: tuple[tuple[bytes, str], ...] = field(default=())
    """Orphans that turned out invalid once their parent arrived, with the reason."""


def clock_ms() -> int:
    """The local clock in milliseconds since the Unix epoch (block timestamps' unit)."""
    return int(time.time() * 1000)


class Chain:
    """Blocks, fork choice and head of one network, backed by a :class:`BlockStore`."""

    def __init__(
        self,
        store: BlockStore,
        orphans: OrphanPool[Block] | None = None,
        execution_check: ExecutionCheck | None = None,
    ) -> None:
        self.store = store
        self.execution_check = execution_check
        self.invalid: OrderedDict[bytes, str] = OrderedDict()
        """Blocks the execution check rejected, with the reason (most recent last)."""
        self.genesis = store.genesis
        self.orphans: OrphanPool[Block] = OrphanPool() if orphans is None else orphans
        self.forks = self._rebuild_forks()
        self._head = forkchoice.get_head(self.forks)
        if store.head() != self._head:
            # Only possible if the file was written by something other than this class.
            self._repair_head()

    def _rebuild_forks(self) -> forkchoice.Store:
        """Fork choice from the stored blocks, in one pass."""
        return forkchoice.build_store(
            genesis_meta(self.genesis), (m for m in self.store.metas() if m.height > 0)
        )

    def _repair_head(self) -> None:
        genesis_hash = self.genesis.genesis_hash
        _, path = forkchoice.reorg_path(self.forks, genesis_hash, self._head)
        canonical = [(0, genesis_hash)] + [(self.forks.blocks[h].height, h) for h in path]
        self.store.set_head(self._head, canonical, canonical[-1][0])

    @classmethod
    def open(
        cls, datadir: Path, genesis: Genesis, execution_check: ExecutionCheck | None = None
    ) -> Chain:
        """Open the chain kept in ``datadir`` (created on first use). With ``execution_check``,
        every block is judged by it before it is stored (a consensus client's execution clients)."""
        return cls(BlockStore.open(datadir / STORE_FILE, genesis), execution_check=execution_check)

    @property
    def head(self) -> bytes:
        """Hash of the head block."""
        return self._head

    @property
    def head_header(self) -> Header:
        """Header of the head block."""
        header = self.store.header(self._head)
        if header is None:  # the head is always stored; this guards against a corrupt store
            raise InvalidBlock("the head block is missing from the store")
        return header

    def has_block(self, block_hash: bytes) -> bool:
        """Whether the block is stored (orphans are not)."""
        return block_hash in self.forks.blocks

    def import_block(self, block: Block, now_ms: int | None = None) -> ImportResult:
        """Validate and store ``block``; raise :class:`InvalidBlock` if it breaks a rule.

        A block whose parent is unknown is kept in the bounded orphan pool and stored once the
        parent arrives.
        """
        now = clock_ms() if now_ms is None else now_ms
        block_hash = block.block_hash
        old_head = self._head
        if self.has_block(block_hash):
            return ImportResult(ImportStatus.DUPLICATE, block_hash, old_head, False, 0)
        self._refuse_known_invalid(block)
        if not self.has_block(block.header.parent_hash):
            # What can be checked without the parent is checked before the block takes room.
            validate_header(self.genesis, None, block.header, self.store, now)
            self.orphans.add(block_hash, block.header.parent_hash, block, len(block.encode()))
            return ImportResult(ImportStatus.ORPHAN, block_hash, old_head, False, 0)
        self._connect(block, now)
        connected = [block_hash]
        rejected = []
        undecided: set[bytes] = set()
        for orphan in connect(self.orphans, block_hash):
            parent = orphan.header.parent_hash
            try:
                if parent in undecided:
                    raise ExecutionUndecided("its parent is undecided")
                if not self.has_block(parent):
                    continue  # its parent was an orphan that turned out invalid
                self._connect(orphan, now)
            except InvalidBlock as exc:
                rejected.append((orphan.block_hash, f"{type(exc).__name__}: {exc}"))
                continue
            except ExecutionUndecided:
                undecided.add(orphan.block_hash)
                # Above an undecided orphan it waits for that one again. An orphan whose parent
                # is stored is forgotten instead (like an undecided block given directly): under
                # a stored parent it would never connect. The orphans above it keep naming it as
                # the parent to fetch.
                if not self.has_block(parent):
                    self.orphans.add(orphan.block_hash, parent, orphan, len(orphan.encode()))
                continue
            connected.append(orphan.block_hash)
        disconnected, _ = forkchoice.reorg_path(self.forks, old_head, self._head)
        return ImportResult(
            ImportStatus.IMPORTED,
            block_hash,
            self._head,
            self._head != old_head,
            len(disconnected),
            tuple(connected),
            tuple(rejected),
        )

    def _refuse_known_invalid(self, block: Block) -> None:
        """Fail fast on a block the execution check rejected before, or on its descendants."""
        block_hash, parent_hash = block.block_hash, block.header.parent_hash
        if block_hash in self.invalid:
            raise ExecutionRejected(f"rejected before: {self.invalid[block_hash]}")
        if parent_hash in self.invalid:
            self._remember_invalid(block_hash, "its parent is invalid")
            raise ExecutionRejected(f"its parent {parent_hash.hex()[:16]} is invalid")

    def _remember_invalid(self, block_hash: bytes, reason: str) -> None:
        self.invalid[block_hash] = reason
        while len(self.invalid) > MAX_REMEMBERED_INVALID:
            self.invalid.popitem(last=False)

    def _connect(self, block: Block, now_ms: int) -> None:
        """Validate a block whose parent is stored (consensus rules, then execution if a check is
        set), update fork choice, commit durably."""
        meta = validate_block(self.genesis, self.store, block, now_ms)
        if self.execution_check is not None:
            try:
                self.execution_check(block)
            except ExecutionRejected as exc:
                self._remember_invalid(block.block_hash, str(exc))
                raise
        forkchoice.on_block(self.forks, meta)
        try:
            self._commit(block, meta)
        except BaseException:
            # Memory must not hold a block the store does not: rebuild from what is stored.
            self.forks = self._rebuild_forks()
            self._head = forkchoice.get_head(self.forks)
            raise

    def _commit(self, block: Block, meta: forkchoice.BlockMeta) -> None:
        new_head = forkchoice.get_head(self.forks)
        canonical: list[tuple[int, bytes]] = []
        height = None
        if new_head != self._head:
            _, connect_path = forkchoice.reorg_path(self.forks, self._head, new_head)
            canonical = [(self.forks.blocks[h].height, h) for h in connect_path]
            height = self.forks.blocks[new_head].height
        self.store.commit_block(block, meta, new_head, canonical, height)
        self._head = new_head

    def close(self) -> None:
        """Close the store."""
        self.store.close()
