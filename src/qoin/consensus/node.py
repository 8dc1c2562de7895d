"""The consensus client: its chain (blocks, GHOST fork choice, no account state), the execution
clients it judges blocks with, mining on payloads they build, and its small JSON-RPC.

Every block — mined here or submitted — passes the consensus rules, then the execution validator
(:mod:`qoin.consensus.validator`), and only then is stored. After the head moves, every usable
execution client is told (``engine_forkchoiceUpdated``); a client that lacks blocks (SYNCING) is
replayed the canonical chain first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qoin.chain.block import MAX_BLOCK_SIZE, Block, Payout, transactions_root
from qoin.chain.chain import (
    Chain,
    ExecutionRejected,
    ExecutionUndecided,
    ImportResult,
    ImportStatus,
)
from qoin.chain.genesis import Genesis
from qoin.chain.validation import InvalidBlock
from qoin.consensus.engine import ClientSyncing, EngineClient, EngineError
from qoin.consensus.sampling import DEFAULT_SAMPLES
from qoin.consensus.validator import (
    DROPPED_FILE,
    DroppedClients,
    ExecutionUnavailable,
    ExecutionValidator,
    Judgement,
)
from qoin.errors import QoinError
from qoin.execution.account import genesis_leaves
from qoin.p2p.peers import PeerAddress, PeerAddressError
from qoin.rpc.server import Method, Param, RpcServer, invalid_params
from qoin.state.nodestore import MemoryNodeStore
from qoin.state.smt import SparseMerkleTree

if TYPE_CHECKING:
    from qoin.p2p.service import P2PService

log = logging.getLogger(__name__)


class P2POff(QoinError):
    """A p2p request to a node that runs without p2p."""


def genesis_state_root(genesis: Genesis) -> bytes:
    """The execution state root of the genesis allocation (the genesis header's ``state_root``
    holds the genesis commitment instead, so blocks at height 1 are checked against this)."""
    tree = SparseMerkleTree(MemoryNodeStore())
    return tree.update(genesis_leaves((a.address, a.amount) for a in genesis.allocation), 0)


class ConsensusNode:
    """A chain whose blocks are judged by execution clients before they are stored."""

    def __init__(
        self,
        datadir: Path,
        genesis: Genesis,
        clients: list[EngineClient],
        samples: int = DEFAULT_SAMPLES,
    ) -> None:
        datadir.mkdir(parents=True, exist_ok=True)
        self.dropped = DroppedClients(datadir / DROPPED_FILE)
        for client in clients:
            if client.url in self.dropped:
                entry = self.dropped.entries[client.url]
                log.warning(
                    "not using execution client %s: dropped at %s because %s (remove it from %s "
                    "to use it again)",
                    client.url,
                    entry.get("at"),
                    entry.get("reason"),
                    self.dropped.path,
                )
        self.validator = ExecutionValidator(clients, self.dropped, samples)
        self.genesis_root = genesis_state_root(genesis)
        self.lock = threading.RLock()
        """Held around every chain change (mining loop and RPC threads)."""
        try:
            self.chain = Chain.open(datadir, genesis, execution_check=self._check)
        except BaseException:
            self.validator.close()
            raise
        self.judged: dict[str, int] = {"sampled": 0, "stateless": 0, "invalid": 0}
        """How many blocks were decided each way."""
        self._tentative = False
        """Whether the import under way moved the execution clients to a side branch."""
        self.p2p: P2PService | None = None
        """The p2p service, when the node is on a network: told about mined and submitted
        blocks, and shown in the status."""

    def _parent_root(self, block: Block) -> bytes:
        parent_hash = block.header.parent_hash
        if parent_hash == self.chain.genesis.genesis_hash:
            return self.genesis_root
        header = self.chain.store.header(parent_hash)
        if header is None:  # the chain only checks blocks whose parent it stores
            raise ExecutionUndecided(f"parent {parent_hash.hex()} is not stored")
        return header.state_root

    def _check(self, block: Block) -> None:
        """The chain's execution check."""
        parent_root = self._parent_root(block)
        try:
            judgement = self.validator.judge(block, parent_root)
        except ExecutionUnavailable as exc:
            if block.header.parent_hash == self.chain.head:
                raise ExecutionUndecided(str(exc)) from None
            judgement = self._judge_on_branch(block, parent_root, str(exc))
        if not judgement.valid:
            self.judged["invalid"] += 1
            log.warning("block %s is invalid: %s", block.block_hash.hex(), judgement.reason)
            raise ExecutionRejected(judgement.reason or "execution is invalid")
        self.judged[judgement.how] += 1

    def _judge_on_branch(self, block: Block, parent_root: bytes, why: str) -> Judgement:
        """Judge a side-branch block whose parent's state no execution client holds (it answered
        ACCEPTED): move every client's head to the block for a moment, which makes it execute the
        branch from the fork point, then judge again. The clients follow the real head again
        after the import (:meth:`import_block`)."""
        log.info(
            "block %s is on a side branch (%s): executing the branch",
            block.block_hash.hex()[:16],
            why,
        )
        self._tentative = True
        for client in self.validator.active:
            try:
                client.forkchoice_updated(block.block_hash)
            except EngineError as exc:  # INVALID, SYNCING, down: the second judgement decides
                log.info("execution client %s did not execute the branch: %s", client.url, exc)
        try:
            return self.validator.judge(block, parent_root)
        except ExecutionUnavailable as exc:
            raise ExecutionUndecided(str(exc)) from None

    # -- execution clients follow the chain -------------------------------------------------------

    def follow_head(self) -> None:
        """Tell every usable execution client the head, replaying blocks it lacks."""
        for client in self.validator.active:
            try:
                client.forkchoice_updated(self.chain.head)
            except ClientSyncing:
                self._replay(client)
            except EngineError as exc:
                log.warning("execution client %s did not follow the head: %s", client.url, exc)

    def _replay(self, client: EngineClient) -> None:
        """Send ``client`` the canonical chain (blocks it has are answered at once), then the head."""
        try:
            for height in range(1, self.chain.head_header.height + 1):
                block_hash = self.chain.store.canonical_hash(height)
                block = None if block_hash is None else self.chain.store.get_block(block_hash)
                if block is not None:
                    client.new_payload(block)
            client.forkchoice_updated(self.chain.head)
            log.info("execution client %s caught up to the head", client.url)
        except EngineError as exc:
            log.warning("could not bring execution client %s up to date: %s", client.url, exc)

    # -- blocks --------------------------------------------------------------------------------------

    def import_block(self, block: Block) -> ImportResult:
        """Judge and store a block (see :meth:`Chain.import_block`); the execution clients follow
        a head change."""
        with self.lock:
            self._tentative = False
            try:
                result = self.chain.import_block(block)
            except (ExecutionUndecided, InvalidBlock):
                # a client that lacks blocks (SYNCING) is replayed them; one moved to a side
                # branch for a judgement goes back to the head
                self.follow_head()
                raise
            except BaseException:
                if self._tentative:  # e.g. the store failed: the clients still go back
                    self.follow_head()
                raise
            if result.head_changed or self._tentative:
                self.follow_head()
            return result

    @property
    def moved_clients(self) -> bool:
        """Whether the last import moved the execution clients onto a side branch (they must
        follow the head again after it)."""
        return self._tentative

    def announce(self, result: ImportResult) -> None:
        """Tell the network about blocks stored by mining or RPC (blocks from peers are
        announced by the p2p service itself)."""
        if self.p2p is not None:
            self.p2p.announce(result)

    def submit_block(self, block: Block) -> dict[str, Any]:
        """The ``consensus_submitBlock`` RPC: import a block and say what happened."""
        try:
            result = self.import_block(block)
        except InvalidBlock as exc:
            return {"status": "invalid", "reason": f"{type(exc).__name__}: {exc}"}
        except ExecutionUndecided as exc:
            return {"status": "undecided", "reason": str(exc)}
        self.announce(result)
        status = "imported" if result.status is ImportStatus.IMPORTED else result.status.value
        return {
            "status": status,
            "head": result.head.hex(),
            "headChanged": result.head_changed,
            "rejected": [{"hash": h.hex(), "reason": r} for h, r in result.rejected_orphans],
        }

    def status(self) -> dict[str, Any]:
        """The ``consensus_status`` RPC."""
        p2p = None if self.p2p is None else self.p2p.snapshot()  # not under the chain lock
        with self.lock:
            header = self.chain.head_header
            return {
                "head": header.block_hash.hex(),
                "height": header.height,
                "stateRoot": header.state_root.hex(),
                "executionClients": [
                    {"url": c.url, "active": c.url not in self.dropped}
                    for c in self.validator.clients
                ],
                "dropped": self.dropped.entries,
                "judged": dict(self.judged),
                "invalidBlocks": len(self.chain.invalid),
                "p2p": p2p,
            }

    def add_peer(self, enode: str) -> bool:
        """The ``consensus_addPeer`` RPC: dial ``qoin1…@host:port`` (or ``host:port``) now."""
        if self.p2p is None:
            raise P2POff("this node runs without p2p (start it with --p2p-port)")
        try:
            address = PeerAddress.parse(enode)
        except PeerAddressError as exc:
            raise invalid_params(str(exc)) from None
        self.p2p.add_peer(address)
        return True

    def rpc_server(self) -> RpcServer:
        """The consensus client's JSON-RPC (127.0.0.1): submit a block, read the status."""
        block = Param(
            "block",
            {"type": "string", "maxLength": 2 * MAX_BLOCK_SIZE},
            parse=lambda value: Block.decode(bytes.fromhex(value)),
        )
        return RpcServer(
            "Qoin consensus client",
            [
                Method(
                    "consensus_submitBlock",
                    self.submit_block,
                    (block,),
                    {"type": "object"},
                    "Judge and import a block",
                ),
                Method("consensus_status", self.status, (), {"type": "object"}, "Head and clients"),
                Method(
                    "consensus_addPeer",
                    self.add_peer,
                    (Param("enode", {"type": "string", "maxLength": 256}),),
                    {"type": "boolean"},
                    "Dial a peer",
                ),
            ],
            max_body=3 * MAX_BLOCK_SIZE,
        )

    def close(self) -> None:
        """Close the chain and the execution connections."""
        with self.lock:
            self.validator.close()
            self.chain.close()


def payload_problem(template: Block, payload: Block) -> str | None:
    """How a payload departs from what may change in its template (transactions, the fee payout,
    the roots), or None. Checked before any proof-of-work is spent on it."""
    changeable = ("transactions_root", "state_root", "receipts_root")
    fixed = {name: getattr(template.header, name) for name in changeable}
    if replace(payload.header, **fixed) != template.header:
        return "changed header fields other than its roots"
    if payload.siblings != template.siblings:
        return "changed the sibling headers"
    ours, theirs = template.coinbase.payouts, payload.coinbase.payouts
    if len(theirs) != len(ours) or theirs[:-1] != ours[:-1]:
        return "changed the coinbase's reward payouts"
    if theirs[-1] != Payout(ours[-1].recipient, sum(tx.fee for tx in payload.transactions)):
        return "pays another fee payout than its transactions' fees"
    if (
        transactions_root(payload.coinbase, payload.transactions)
        != payload.header.transactions_root
    ):
        return "carries a transactions root that does not match its transactions"
    return None


class EngineLink:
    """The mining loop's execution link over the engine API: payloads from the first usable client
    that builds one; head changes go to every client."""

    def __init__(self, node: ConsensusNode, report: Callable[[str], None]) -> None:
        self.node = node
        self.report = report

    def build(self, template: Block) -> Block:
        """A payload on the template (transactions, fee payout, roots)."""
        for client in self.node.validator.active:
            try:
                payload_id = client.forkchoice_updated(self.node.chain.head, template)
                if payload_id is None:
                    raise EngineError("no payload id in the answer")
                payload = client.get_payload(payload_id)
            except EngineError as exc:
                self.report(f"execution client {client.url} built no payload: {exc}")
                continue
            problem = payload_problem(template, payload)
            if problem is None:
                return payload
            self.node.validator.drop(client, f"built a payload that {problem}")
        self.node.follow_head()  # a client that lacks blocks (SYNCING) is replayed them
        raise ExecutionUndecided("no execution client could build a payload")

    def imported(self, chain: Chain, result: ImportResult) -> None:
        """After a mined block: the clients follow the head, the network hears of it."""
        if result.head_changed or self.node.moved_clients:
            self.node.follow_head()
        self.node.announce(result)
