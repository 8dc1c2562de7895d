"""What the p2p service reads and changes in a consensus node (:class:`~qoin.p2p.access.ChainAccess`).

Blocks come from the node's chain (under the node's lock, shared with mining and RPC threads);
transactions go to and come from the node's execution clients' mempools over the engine API, since
the consensus client holds none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from qoin.chain import forkchoice
from qoin.chain.block import Block, Header
from qoin.chain.chain import ImportResult
from qoin.chain.genesis import Genesis
from qoin.chain.transaction import AnyTransaction
from qoin.consensus.engine import EngineError, Submission
from qoin.consensus.fraud import NodeContext, verify_report
from qoin.consensus.remote import remote_url
from qoin.execution.mempool import Refusal
from qoin.p2p.access import FraudJudgement, FraudVerdict, TxVerdict
from qoin.p2p.messages import MAX_ANNOUNCED_TRANSACTIONS, AnnouncedBlock
from qoin.p2p.sync import block_locator, headers_after

if TYPE_CHECKING:  # the node imports the p2p service, which needs none of it at run time
    from qoin.consensus.node import ConsensusNode

log = logging.getLogger(__name__)

TIP_DEPTH = 64
"""Branch tips more than this many blocks below the head are not announced to new peers."""


class NodeAccess:
    """A :class:`~qoin.p2p.access.ChainAccess` over a :class:`ConsensusNode`."""

    def __init__(self, node: ConsensusNode) -> None:
        self.node = node
        self.genesis: Genesis = node.chain.genesis
        self._cursors: dict[str, int] = {}
        """Per execution client, the mempool cursor of ``engine_pendingTransactions``."""

    def head(self) -> tuple[bytes, int, int]:
        with self.node.lock:
            chain = self.node.chain
            height = chain.forks.blocks[chain.head].height
            return chain.head, height, tree_weight(chain.forks)

    def tips(self, max_count: int) -> list[AnnouncedBlock]:
        with self.node.lock:
            forks = self.node.chain.forks
            lowest = forks.blocks[self.node.chain.head].height - TIP_DEPTH
            leaves = [
                meta
                for block_hash, children in forks.children.items()
                if not children and (meta := forks.blocks[block_hash]).height > max(lowest, 0)
            ]
        leaves.sort(key=lambda meta: (-meta.height, meta.block_hash))
        return [AnnouncedBlock(meta.block_hash, meta.height) for meta in leaves[:max_count]]

    def locator(self) -> list[bytes]:
        with self.node.lock:
            chain = self.node.chain
            return block_locator(chain.forks.blocks[chain.head].height, chain.store.canonical_hash)

    def headers_after(self, locator: Sequence[bytes], stop: bytes, max_count: int) -> list[Header]:
        with self.node.lock:
            chain = self.node.chain
            forks, store = chain.forks, chain.store

            def height_of(block_hash: bytes) -> int | None:
                meta = forks.blocks.get(block_hash)
                return None if meta is None else meta.height

            head_height = forks.blocks[chain.head].height
            return headers_after(
                locator, stop, max_count, head_height, height_of, store.canonical_hash, store.header
            )

    def header(self, block_hash: bytes) -> Header | None:
        with self.node.lock:
            return self.node.chain.store.header(block_hash)

    def has_block(self, block_hash: bytes) -> bool:
        with self.node.lock:
            return self.node.chain.has_block(block_hash)

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        with self.node.lock:
            return [
                h for h in hashes if not self.node.chain.has_block(h) and h not in self.node.pending
            ]

    def block_encodings(self, hashes: Sequence[bytes], max_bytes: int) -> list[tuple[bytes, bytes]]:
        return read_encodings(
            self.node.chain.store.block_encoding, hashes, max_bytes, self.node.lock
        )

    def import_block(self, block: Block) -> ImportResult:
        return self.node.import_block(block)

    def judge_fraud(self, report: bytes) -> FraudJudgement:
        """Check a fraud report a peer relayed (:func:`~qoin.consensus.fraud.verify_report`); a
        proven liar is also dropped from this node's remote execution nodes if it uses one now
        (only then: anyone can sign a lie with a fresh key, and a dropped list that every such
        report added to would grow without end; a liar not used here is banned by the p2p service
        if it is known, so it is never picked, and caught by sampling if it ever is)."""
        judgement = verify_report(report, NodeContext(self.node))
        remote = self.node.remote
        accused = judgement.accused
        if (
            judgement.verdict is FraudVerdict.PROVEN
            and accused is not None
            and remote is not None
            and remote.client_of(accused) is not None
        ):
            url = remote_url(accused)
            if url not in self.node.dropped:
                self.node.judge.drop_url(url, f"proven by a fraud report: {judgement.detail}")
            remote.forget(accused)
        return judgement

    def new_transactions(self) -> list[AnyTransaction]:
        fresh: dict[bytes, AnyTransaction] = {}
        in_use = {client.url for client in self.node.judge.clients}
        for url in [url for url in self._cursors if url not in in_use]:
            del self._cursors[url]  # e.g. a remote node no longer used
        for client in self.node.judge.active:
            cursor = self._cursors.get(client.url, 0)
            try:
                cursor, txs = client.pending_transactions(cursor, MAX_ANNOUNCED_TRANSACTIONS)
            except EngineError as exc:
                log.info("no new transactions from %s: %s", client.url, exc)
                continue
            self._cursors[client.url] = cursor
            fresh.update((tx.tx_id, tx) for tx in txs)
        return list(fresh.values())

    def pending_transactions(self) -> list[AnyTransaction]:
        for client in self.node.judge.active:  # the first client that answers
            try:
                return client.pending_transactions(0, MAX_ANNOUNCED_TRANSACTIONS)[1]
            except EngineError as exc:
                log.info("no pending transactions from %s: %s", client.url, exc)
        return []

    def submit_transactions(self, txs: Sequence[AnyTransaction]) -> list[TxVerdict]:
        """Every client gets the transactions; each gets the best verdict a client gave it
        (:func:`submission_verdict`): ``INVALID`` only if every client that answered found it
        intrinsically invalid, and a client that could not be asked counts as ``KNOWN`` (not the
        peer's fault)."""
        verdicts: list[TxVerdict | None] = [None] * len(txs)
        for client in self.node.judge.active:
            try:
                answers = client.submit_transactions(txs)
            except EngineError as exc:
                log.info("could not hand transactions to %s: %s", client.url, exc)
                answers = [Submission("known")] * len(txs)
            for index, answer in enumerate(answers[: len(txs)]):
                verdict = submission_verdict(answer)
                current = verdicts[index]
                if current is None or _RANK[verdict] > _RANK[current]:
                    verdicts[index] = verdict
        return [TxVerdict.REFUSED if v is None else v for v in verdicts]


_RANK = {TxVerdict.INVALID: 0, TxVerdict.REFUSED: 1, TxVerdict.KNOWN: 2, TxVerdict.ADDED: 3}
"""Which verdict wins when execution clients disagree."""


def submission_verdict(answer: Submission) -> TxVerdict:
    """What one execution client's answer says of a relayed transaction: a rejection is
    ``INVALID`` only when the client says it can never be valid (an intrinsic refusal)."""
    if answer.status == "added":
        return TxVerdict.ADDED
    if answer.status == "known":
        return TxVerdict.KNOWN
    return TxVerdict.INVALID if answer.refusal is Refusal.INTRINSIC else TxVerdict.REFUSED


def read_encodings(
    read: Callable[[bytes], bytes | None],
    hashes: Sequence[bytes],
    max_bytes: int,
    lock: AbstractContextManager[Any] | None = None,
) -> list[tuple[bytes, bytes]]:
    """``(hash, encoding)`` of the stored blocks among ``hashes`` in order, stopping before
    ``max_bytes`` would be exceeded (the first block found always counts)."""
    found: list[tuple[bytes, bytes]] = []
    total = 0
    with lock or nullcontext():
        for block_hash in hashes:
            encoding = read(block_hash)
            if encoding is None:
                continue
            if found and total + len(encoding) > max_bytes:
                break
            found.append((block_hash, encoding))
            total += len(encoding)
    return found


def tree_weight(forks: forkchoice.Store) -> int:
    """All the work a fork-choice store knows of (the genesis block's GHOST weight)."""
    return forkchoice.get_weight(forks, forks.genesis)
