"""The consensus client: its chain (blocks, GHOST fork choice, no account state), the execution
clients it judges blocks with, mining on payloads they build, and its small JSON-RPC.

Every block — mined here or submitted — passes the consensus rules, then the execution judge
(:mod:`qoin.consensus.judge`), and only then is stored. A side block whose branch is not worth
executing yet is kept undecided with the blocks on top of it (:mod:`qoin.consensus.branches`) and
judged once its branch is competitive. After the head moves, every usable execution client is told
(``engine_forkchoiceUpdated``); a client that lacks blocks (SYNCING) is replayed the canonical chain
first, and so is a client that answers again after a quarantine.

With ``--remote-execution N`` some (or all) of the clients are other operators' execution nodes
over p2p (:mod:`qoin.consensus.remote`), judged by the same rules; one caught lying is banned on
the p2p network and reported to peers with its own signed statements (:mod:`qoin.consensus.fraud`)
once the import that caught it ends. With no usable client at all, no block is imported (it is
undecided) and the chain waits until one answers.

``consensus_status`` never waits long for the chain lock (an import may hold it for as long as an
engine call takes): it answers from a snapshot of the head, refreshed after every change and
whenever the lock is free within :data:`STATUS_LOCK_WAIT_S`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from qoin.chain import forkchoice
from qoin.chain.block import MAX_BLOCK_SIZE, Block, Header, transactions_root
from qoin.chain.chain import (
    Chain,
    ExecutionRejected,
    ExecutionUndecided,
    ImportResult,
    ImportStatus,
)
from qoin.chain.genesis import Genesis
from qoin.chain.orphans import connect
from qoin.chain.validation import InvalidBlock, block_work
from qoin.consensus.branches import (
    PendingBlocks,
    SideBranchPending,
    competitive,
    pending_branch,
    side_branch,
    weight_bound,
    worth_executing,
)
from qoin.consensus.engine import ClientSyncing, EngineClient, EngineError
from qoin.consensus.fraud import NodeContext, build_report
from qoin.consensus.judge import (
    DROPPED_FILE,
    DroppedClients,
    ExecutionJudge,
    ExecutionUnavailable,
    Judgement,
)
from qoin.consensus.remote import RemoteEngineClient, RemotePool
from qoin.consensus.sampling import DEFAULT_SAMPLES
from qoin.crypto.address import Address, AddressError
from qoin.errors import QoinError
from qoin.execution.account import genesis_state
from qoin.node.mining import MiningControl, MiningOff
from qoin.p2p.addresses import PeerAddress, PeerAddressError
from qoin.rpc.server import Method, Param, RpcServer, invalid_params
from qoin.state.nodestore import MemoryNodeStore
from qoin.state.smt import SparseMerkleTree

if TYPE_CHECKING:
    from qoin.p2p.service import P2PService

log = logging.getLogger(__name__)

STATUS_LOCK_WAIT_S = 0.1
"""How long ``consensus_status`` waits for the chain lock before it answers from the snapshot."""


class P2POff(QoinError):
    """A p2p request to a node that runs without p2p."""


class MiningUnavailable(QoinError):
    """A mining request to a client that cannot mine."""


class BrowserRefused(QoinError):
    """A request to the consensus RPC that a web browser sent."""


BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-mode")
"""Headers only a web browser sends (it sends one of them with every POST and WebSocket)."""


def refuse_browsers(request: Request) -> None:
    """:class:`BrowserRefused` for a request a browser sent. The consensus RPC (127.0.0.1, no
    credentials) is for the node's own tools and ``qoin web``'s server: without this, any page
    the user visits could start or stop mining or dial peers with a cross-site POST that needs
    no preflight (``text/plain``), or read the status after rebinding a name to 127.0.0.1."""
    if any(name in request.headers for name in BROWSER_HEADERS):
        raise BrowserRefused("the consensus RPC does not answer web browsers (use qoin web)")


def genesis_state_root(genesis: Genesis) -> bytes:
    """The execution state root of the genesis allocation (the genesis header's ``state_root``
    holds the genesis commitment instead, so blocks at height 1 are checked against this)."""
    tree = SparseMerkleTree(MemoryNodeStore())
    return tree.update(genesis_state(genesis), 0)


class ConsensusNode:
    """A chain whose blocks are judged by execution clients before they are stored."""

    def __init__(
        self,
        datadir: Path,
        genesis: Genesis,
        clients: list[EngineClient],
        samples: int = DEFAULT_SAMPLES,
        remote: int = 0,
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
        self.judge = ExecutionJudge(clients, self.dropped, samples, more_clients=remote)
        self.judge.on_drop = self._on_drop
        self.remote: RemotePool | None = None
        """The remote execution nodes in use (``--remote-execution``), once p2p runs."""
        self._liars: list[tuple[RemoteEngineClient, str, Block | None]] = []
        """Remote nodes dropped and not yet reported (:meth:`report_frauds`)."""
        self._liars_lock = threading.Lock()
        """Guards :attr:`_liars`: a payload check drops a builder on the mining thread, outside
        :attr:`lock`."""
        self._reporting = False
        self.genesis_root = genesis_state_root(genesis)
        self.lock = threading.RLock()
        """Held around every chain change (mining loop and RPC threads)."""
        try:
            self.chain = Chain.open(datadir, genesis, execution_check=self._check)
        except BaseException:
            self.judge.close()
            raise
        self.judged: dict[str, int] = {"sampled": 0, "stateless": 0, "invalid": 0}
        """How many blocks were decided each way."""
        self.pending = PendingBlocks()
        """Side blocks kept undecided until their branch is competitive."""
        self._executing: set[bytes] = set()
        """The blocks of a pending branch being judged now (competitive as a whole)."""
        self._pended: list[bytes] = []
        """Blocks the import under way kept undecided."""
        self._tentative = False
        """Whether the import under way moved the execution clients to a side branch."""
        self._snapshot: dict[str, Any] = {}
        """What ``consensus_status`` shows of the chain, as of the last refresh."""
        self.refresh_snapshot()
        self.p2p: P2PService | None = None
        self.mining: MiningControl | None = None
        """The miner, where the client can mine (``consensus_setMining``)."""
        """The p2p service, when the node is on a network: told about mined and submitted
        blocks, and shown in the status."""

    def _stored_header(self, block_hash: bytes) -> Header:
        header = self.chain.store.header(block_hash)
        if header is None:  # the chain only checks blocks whose parent it stores
            raise ExecutionUndecided(f"parent {block_hash.hex()} is not stored")
        return header

    def _parent_root(self, block: Block) -> bytes:
        parent_hash = block.header.parent_hash
        if parent_hash == self.chain.genesis.genesis_hash:
            return self.genesis_root
        return self._stored_header(parent_hash).state_root

    def _check(self, block: Block) -> None:
        """The chain's execution check: side blocks not worth executing yet are kept pending
        (:class:`SideBranchPending`), the others are judged."""
        parent_root = self._parent_root(block)
        parent_hash = block.header.parent_hash
        if parent_hash != self.chain.head and block.block_hash not in self._executing:
            head = self.chain.head_header
            bound = weight_bound(block, self._stored_header(parent_hash))
            branch = side_branch(self.chain.forks, head.block_hash, parent_hash, bound)
            if not worth_executing(branch, head.height, block.header.height, block_work(head)):
                self.pending.add(block)
                self._pended.append(block.block_hash)
                raise SideBranchPending(
                    f"block {block.block_hash.hex()[:16]} is on a side branch that is not "
                    f"competitive with the head (weight {branch.side_weight} against "
                    f"{branch.head_weight} at height {branch.fork_height}): kept undecided"
                )
        try:
            judgement = self._judge_now(block, parent_root)
        except ExecutionUnavailable as exc:
            if block.header.parent_hash == self.chain.head:
                raise ExecutionUndecided(str(exc)) from None
            judgement = self._judge_on_branch(block, parent_root, str(exc))
        if not judgement.valid:
            self.judged["invalid"] += 1
            log.warning("block %s is invalid: %s", block.block_hash.hex(), judgement.reason)
            raise ExecutionRejected(judgement.reason or "execution is invalid")
        self.judged[judgement.how] += 1

    def _judge_now(self, block: Block, parent_root: bytes) -> Judgement:
        """The judge's judgement, the remote pool first filled with the serving peers connected
        now if it uses fewer than it wants (it refreshes on a timer too, but peers that have just
        connected sync blocks to this node at once)."""
        if self.remote is not None:
            self.remote.fill()
        return self.judge.judge(block, parent_root)

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
        for client in self.judge.active:
            try:
                client.forkchoice_updated(block.block_hash)
            except EngineError as exc:  # INVALID, SYNCING, down: the second judgement decides
                log.info("execution client %s did not execute the branch: %s", client.url, exc)
        try:
            return self.judge.judge(block, parent_root)
        except ExecutionUnavailable as exc:
            raise ExecutionUndecided(str(exc)) from None

    # -- remote execution nodes caught lying ------------------------------------------------------

    def _on_drop(self, client: EngineClient, why: str, block: Block | None) -> None:
        """The judge dropped ``client``: a remote one is reported after the import under way."""
        if isinstance(client, RemoteEngineClient):
            with self._liars_lock:
                self._liars.append((client, why, block))

    def report_frauds(self) -> None:
        """Report the remote nodes dropped since the last call: each is banned on the p2p network
        and forgotten by the pool, and a fraud report that this node itself finds proven
        (:func:`~qoin.consensus.fraud.build_report`) goes to every peer."""
        with self.lock:
            with self._liars_lock:
                if self._reporting or not self._liars:
                    return
                liars, self._liars = self._liars, []
            self._reporting = True
            try:
                for client, why, block in liars:
                    self._report(client, why, block)
            finally:
                self._reporting = False

    def _report(self, client: RemoteEngineClient, why: str, block: Block | None) -> None:
        built = build_report(client.transcript(), block, NodeContext(self, imports=False))
        if self.remote is not None:
            self.remote.forget(client.node_id)
        if self.p2p is None:
            return
        self.p2p.ban_node(client.node_id, why)
        if built is None:
            log.warning(
                "remote execution node %s is banned here, but none of its statements kept "
                "proves the lie to others: no fraud report sent",
                client.url,
            )
            return
        data, judgement = built
        log.warning(
            "fraud report on %s sent to the network (%d bytes): %s",
            client.url,
            len(data),
            judgement.detail,
        )
        self.p2p.broadcast_fraud(data, skip=client.node_id)

    # -- execution clients follow the chain -------------------------------------------------------

    def follow_head(self) -> None:
        """Tell every usable execution client the head, replaying blocks it lacks."""
        for client in self.judge.active:
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

    def bring_back(self) -> None:
        """Bring the clients that answer again after a quarantine to the head (replaying blocks
        they lack)."""
        if self.judge.take_returned():
            self.follow_head()

    def import_block(self, block: Block) -> ImportResult:
        """Judge and store a block (see :meth:`Chain.import_block`); the execution clients follow
        a head change. A side block not worth executing yet, or a block on top of one, is kept
        pending: the result says ``ORPHAN`` (kept, not stored), and the block is in
        :attr:`pending`."""
        with self.lock:
            try:
                return self._import(block)
            finally:
                self._pended = []
                self.refresh_snapshot()
                self.report_frauds()

    def _import(self, block: Block) -> ImportResult:
        self.bring_back()
        self._tentative = False
        self._pended = []
        old_head = self.chain.head
        parent_hash = block.header.parent_hash
        if block.block_hash in self.pending:
            result = ImportResult(ImportStatus.ORPHAN, block.block_hash, old_head, False, 0)
            if self.chain.has_block(parent_hash):  # its parent was stored since: try again
                branch = self.pending.take(block.block_hash)
                result = self._merged(block, old_head, result, *self._import_branch(branch))
            return self._after_import(block, old_head, result)
        try:
            result = self.chain.import_block(block)
        except SideBranchPending:
            result = ImportResult(ImportStatus.ORPHAN, block.block_hash, old_head, False, 0)
        except (ExecutionUndecided, InvalidBlock):
            # a client that lacks blocks (SYNCING) is replayed them; one moved to a side
            # branch for a judgement goes back to the head
            self.follow_head()
            raise
        except BaseException:
            if self._tentative:  # e.g. the store failed: the clients still go back
                self.follow_head()
            raise
        if parent_hash in self.pending:  # an orphan on a pending branch
            self._pended.append(parent_hash)
        return self._after_import(block, old_head, result)

    def _after_import(self, block: Block, old_head: bytes, result: ImportResult) -> ImportResult:
        """The pending branches an import touched: blocks waiting on a block just kept pending
        join it (and may make its branch competitive); blocks waiting on a block just stored
        are imported in turn. The execution clients then follow a head change."""
        done = 0
        while done < len(self._pended):  # grows if judging a branch keeps other blocks pending
            pended = self._pended[done]
            done += 1
            if pended in self.pending:
                self._adopt(pended)
                result = self._judge_if_competitive(pended, block, old_head, result)
        stored = list(result.connected)
        for _ in range(len(self.pending) + 1):  # bounded: every round takes pending blocks
            waiting = [h for parent in stored for h in self.pending.waiting_on(parent)]
            if not waiting:
                break
            connected: list[bytes] = []
            rejected: list[tuple[bytes, str]] = []
            for first in waiting:
                if first in self.pending:
                    more_connected, more_rejected = self._import_branch(self.pending.take(first))
                    connected += more_connected
                    rejected += more_rejected
            result = self._merged(block, old_head, result, connected, rejected)
            stored = connected
        if result.head_changed or self._tentative:
            self.follow_head()
        return result

    def _adopt(self, pending: bytes) -> None:
        """Move the blocks waiting on the pending ``pending`` from the orphan pool to the pending
        blocks."""
        for waiting in connect(self.chain.orphans, pending):
            self.pending.add(waiting)

    def _judge_if_competitive(
        self, pending: bytes, block: Block, old_head: bytes, result: ImportResult
    ) -> ImportResult:
        """Judge the pending branch that ``pending`` is on (with the other pending blocks that
        weigh on the same branch, :func:`pending_branch`), parents first, if it is competitive
        now; what importing ``block`` did (``result`` so far, and this)."""
        root = self.pending.lowest(pending)
        parent_hash = root.header.parent_hash
        if not self.chain.has_block(parent_hash):
            return result
        head = self.chain.head_header
        parent = self._stored_header(parent_hash)
        branch, firsts = pending_branch(
            self.chain.forks, head.block_hash, self.pending, parent, root.block_hash
        )
        if not competitive(branch, block_work(head)):
            return result
        blocks = [member for first in firsts for member in self.pending.take(first)]
        log.info(
            "side branch from height %d is competitive (weight %d against %d): judging its %d "
            "blocks",
            root.header.height,
            branch.side_weight,
            branch.head_weight,
            len(blocks),
        )
        return self._merged(block, old_head, result, *self._import_branch(blocks, execute=True))

    def _import_branch(
        self, blocks: list[Block], execute: bool = False
    ) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        """Import ``blocks`` taken from the pending blocks (parents first): all judged with
        ``execute`` (the branch is competitive as a whole), else each like any side block (kept
        pending again if not worth executing). The blocks stored, and those found invalid."""
        connected: list[bytes] = []
        rejected: list[tuple[bytes, str]] = []
        self._executing = {member.block_hash for member in blocks} if execute else set()
        try:
            for member in blocks:
                parent_hash = member.header.parent_hash
                if not self.chain.has_block(parent_hash):
                    if parent_hash in self.pending:  # its parent is kept again: so is it
                        self.pending.add(member)
                    continue  # else its parent was found invalid: forgotten
                try:
                    done = self.chain.import_block(member)
                except SideBranchPending:  # kept again
                    continue
                except InvalidBlock as exc:
                    rejected.append((member.block_hash, f"{type(exc).__name__}: {exc}"))
                    continue
                except ExecutionUndecided:  # no client can judge it now: it waits again
                    self.pending.add(member)
                    continue
                connected += done.connected
                rejected += done.rejected_orphans
        finally:
            self._executing = set()
        return connected, rejected

    def _merged(
        self,
        block: Block,
        old_head: bytes,
        result: ImportResult,
        connected: list[bytes],
        rejected: list[tuple[bytes, str]],
    ) -> ImportResult:
        """``result`` with more blocks stored and rejected, and the head now."""
        stored = (*result.connected, *connected)
        new_head = self.chain.head
        disconnected, _ = forkchoice.reorg_path(self.chain.forks, old_head, new_head)
        return ImportResult(
            ImportStatus.IMPORTED if block.block_hash in stored else result.status,
            block.block_hash,
            new_head,
            new_head != old_head,
            len(disconnected),
            stored,
            (*result.rejected_orphans, *rejected),
        )

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
        if block.block_hash in self.pending:
            status = "pending"
        return {
            "status": status,
            "head": result.head.hex(),
            "headChanged": result.head_changed,
            "rejected": [{"hash": h.hex(), "reason": r} for h, r in result.rejected_orphans],
        }

    def refresh_snapshot(self) -> None:
        """Take the snapshot ``consensus_status`` shows (under :attr:`lock`)."""
        header = self.chain.head_header
        self._snapshot = {
            "head": header.block_hash.hex(),
            "height": header.height,
            "stateRoot": header.state_root.hex(),
            "invalidBlocks": len(self.chain.invalid),
        }

    def status(self) -> dict[str, Any]:
        """The ``consensus_status`` RPC: never waits long for the chain lock (an engine call
        may hold it); the head is then the one of the last snapshot."""
        if self.lock.acquire(timeout=STATUS_LOCK_WAIT_S):
            try:
                self.refresh_snapshot()
            finally:
                self.lock.release()
        p2p = None if self.p2p is None else self.p2p.snapshot()
        return {
            **self._snapshot,
            **self.judge.report(),
            "execution": self.judge.usable(),
            "remoteExecution": None if self.remote is None else self.remote.report(),
            "judged": dict(self.judged),
            "pendingBlocks": len(self.pending),
            "p2p": p2p,
            "mining": None if self.mining is None else self.mining.status(),
        }

    def set_mining(self, on: bool) -> dict[str, Any]:
        """The ``consensus_setMining`` RPC: start (``true``) or stop (``false``) mining; the
        mining status after it (``changed``: whether it did anything)."""
        if self.mining is None:
            raise MiningUnavailable("this client cannot mine (no mining key was set up)")
        try:
            changed = self.mining.start() if on else self.mining.stop()
        except MiningOff as exc:
            raise MiningUnavailable(str(exc)) from None
        return {**self.mining.status(), "changed": changed}

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

    def remove_peer(self, peer: str) -> bool:
        """The ``consensus_removePeer`` RPC: disconnect a peer (its node id ``qoin1…``, or its
        ``qoin1…@host:port`` entry) and stop dialling it until it is added again."""
        if self.p2p is None:
            raise P2POff("this node runs without p2p (start it with --p2p-port)")
        try:
            node_id = PeerAddress.parse(peer).node_id if "@" in peer else Address.from_text(peer)
        except (PeerAddressError, AddressError) as exc:
            raise invalid_params(str(exc)) from None
        if node_id is None:
            raise invalid_params("name the peer by its node id (qoin1…@host:port)")
        self.p2p.remove_peer(node_id)
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
                    "consensus_setMining",
                    self.set_mining,
                    (Param("on", {"type": "boolean"}),),
                    {"type": "object"},
                    "Start or stop mining",
                ),
                Method(
                    "consensus_addPeer",
                    self.add_peer,
                    (Param("enode", {"type": "string", "maxLength": 256}),),
                    {"type": "boolean"},
                    "Dial a peer",
                ),
                Method(
                    "consensus_removePeer",
                    self.remove_peer,
                    (Param("peer", {"type": "string", "maxLength": 256}),),
                    {"type": "boolean"},
                    "Disconnect a peer and stop dialling it",
                ),
            ],
            authenticate=refuse_browsers,
            max_body=3 * MAX_BLOCK_SIZE,
        )

    def close(self) -> None:
        """Close the chain and the execution connections."""
        if self.remote is not None:
            self.remote.close()
        with self.lock:
            self.judge.close()
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
    most = sum(tx.max_fee for tx in payload.transactions)
    if theirs[-1].recipient != ours[-1].recipient or theirs[-1].amount > most:
        return "pays a fee payout to someone else, or more than its transactions can pay"
    if (
        transactions_root(payload.coinbase, payload.transactions)
        != payload.header.transactions_root
    ):
        return "carries a transactions root that does not match its transactions"
    return None


def builders(clients: list[EngineClient], height: int) -> list[EngineClient]:
    """The order in which ``clients`` are asked for a payload at ``height``: the local ones
    first, then the remote ones rotated by the height (so no one remote node builds every
    block)."""
    local = [c for c in clients if not isinstance(c, RemoteEngineClient)]
    remote = [c for c in clients if isinstance(c, RemoteEngineClient)]
    turn = height % len(remote) if remote else 0
    return local + remote[turn:] + remote[:turn]


class EngineLink:
    """The mining loop's execution link over the engine API: payloads from the first usable client
    that builds one; head changes go to every client."""

    def __init__(self, node: ConsensusNode, report: Callable[[str], None]) -> None:
        self.node = node
        self.report = report

    def build(self, template: Block) -> Block:
        """A payload on the template (transactions, fee payout, roots): from the local clients
        first, then the remote ones, taken in turn by the template's height."""
        self.node.report_frauds()
        self.node.bring_back()
        for client in builders(self.node.judge.active, template.header.height):
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
            self.node.judge.drop(client, f"built a payload that {problem}")
            self.node.report_frauds()
        self.node.follow_head()  # a client that lacks blocks (SYNCING) is replayed them
        raise ExecutionUndecided("no execution client could build a payload")

    def imported(self, chain: Chain, result: ImportResult) -> None:
        """After a mined block: the clients follow the head, the network hears of it."""
        if result.head_changed or self.node.moved_clients:
            self.node.follow_head()
        self.node.refresh_snapshot()
        self.node.announce(result)
        self.node.report_frauds()
