"""What the p2p layer needs from its node (:class:`ChainAccess`), and the one worker thread that
calls it (:class:`ChainWorker`), so that imports are serialised and the event loop never blocks on
the chain or the execution clients (``docs/spec/p2p.md`` §10).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from qoin.chain.block import Block, Header
from qoin.chain.chain import ImportResult
from qoin.chain.genesis import Genesis
from qoin.chain.transaction import AnyTransaction
from qoin.crypto.address import Address
from qoin.p2p.messages import AnnouncedBlock

T = TypeVar("T")


class TxVerdict(StrEnum):
    """What the node's execution clients made of a transaction a peer relayed."""

    ADDED = "added"
    """A client admitted it to its mempool."""
    KNOWN = "known"
    """A client holds it already, or it is included (or no client could judge it now)."""
    REFUSED = "refused"
    """Every client refused it, not all for a reason intrinsic to it (a nonce used meanwhile, a
    full pool, a fee below theirs): it may have been valid where the peer was."""
    INVALID = "invalid"
    """Every client refused it for a reason intrinsic to it: it can never be valid anywhere."""


class FraudVerdict(StrEnum):
    """What the node made of an ``ExecutionFraud`` report a peer relayed."""

    PROVEN = "proven"
    """The evidence shows the accused node lied: it is banned, and the report relayed."""
    FALSE = "false"
    """The evidence does not show a lie (or does not verify): the reporter attacks us."""
    UNDECIDED = "undecided"
    """This node cannot judge it now (e.g. it lacks the block's parent): nothing happens."""


@dataclass(frozen=True)
class FraudJudgement:
    """The verdict on one fraud report."""

    verdict: FraudVerdict
    """Proven, false or undecided."""
    accused: Address | None
    """The node id shown to have lied (set when PROVEN)."""
    detail: str
    """Why, for the log and the ban entry."""


class ChainAccess(Protocol):
    """What the p2p service needs from its node; called on one worker thread, never concurrently."""

    genesis: Genesis

    def head(self) -> tuple[bytes, int, int]:
        """Head hash, head height, and all the work the node knows of (its tree's weight)."""

    def tips(self, max_count: int) -> list[AnnouncedBlock]:
        """The node's most recent branch tips (leaves of its block tree), newest first."""

    def locator(self) -> list[bytes]:
        """A block locator of the canonical chain."""

    def headers_after(self, locator: Sequence[bytes], stop: bytes, max_count: int) -> list[Header]:
        """Canonical headers after the first locator hash on the canonical chain."""

    def header(self, block_hash: bytes) -> Header | None:
        """A stored header."""

    def has_block(self, block_hash: bytes) -> bool:
        """Whether the block is stored."""

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The hashes among ``hashes`` of blocks not stored, in order."""

    def block_encodings(self, hashes: Sequence[bytes], max_bytes: int) -> list[tuple[bytes, bytes]]:
        """``(hash, encoding)`` of the stored blocks among ``hashes``, in order, as stored; stops
        before ``max_bytes`` would be exceeded (at least one block if any is stored)."""

    def import_block(self, block: Block) -> ImportResult:
        """Validate, judge and store a block (raises ``InvalidBlock``, ``ExecutionUndecided``)."""

    def new_transactions(self) -> list[AnyTransaction]:
        """Transactions the execution clients admitted since the last call."""

    def pending_transactions(self) -> list[AnyTransaction]:
        """What the execution clients hold pending now (for a new peer; bounded by the caller's
        message bound)."""

    def submit_transactions(self, txs: Sequence[AnyTransaction]) -> list[TxVerdict]:
        """Hand transactions to every execution client; a verdict per transaction, in order."""

    def judge_fraud(self, report: bytes) -> FraudJudgement:
        """Verify an ``ExecutionFraud`` report (undecodable reports are FALSE)."""


class ChainWorker:
    """Runs :class:`ChainAccess` calls on one worker thread, one at a time, in the order asked."""

    def __init__(self, access: ChainAccess) -> None:
        self.access = access
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="p2p-chain")

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    def shutdown(self) -> None:
        """Wait for the call under way; drop the queued ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
