"""The p2p service of a consensus client: the listener and dialler, each connection's reader, and
the upkeep, over the concerns of its own modules (``docs/spec/p2p.md`` §9.4, §10, §11, §12).

- :mod:`qoin.p2p.session`: peer sessions and request bookkeeping;
- :mod:`qoin.p2p.blocks`: block gossip and import; :mod:`qoin.p2p.transactions`: transaction relay;
- :mod:`qoin.p2p.download`: the sync session and the parallel block download;
- :mod:`qoin.p2p.peers`: limits, scores and bans; :mod:`qoin.p2p.bans`: the ban file;
- :mod:`qoin.p2p.engine`: shared execution's engine calls, served to peers and made to them
  (signed answers, :mod:`qoin.p2p.statements`); the discovery of serving peers, bans and fraud
  reports are here.

The service runs an asyncio loop in a thread of its own. Everything that touches the chain or the
execution clients goes through :class:`~qoin.p2p.access.ChainAccess` on one worker thread, so
imports are serialised and the loop never blocks on them; a peer's messages that wait on that
worker are handled by a task of the peer's own (its backlog), so that its reader keeps reading.
The node tells the service about blocks it stored by other means (mined, submitted by RPC) with
:meth:`P2PService.announce`, callable from any thread.

Per connection: both sides send ``Status`` first; then each side announces its recent branch tips
(``NewBlockHashes``) and its pending transactions. Inbound connections are refused before any
cryptography when :data:`MAX_HANDSHAKES_IN_FLIGHT` handshakes are under way, whatever their host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from qoin.chain.chain import ImportResult
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridKeyPair, HybridSignature, SignatureError
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.p2p.access import ChainAccess, ChainWorker, FraudVerdict
from qoin.p2p.addresses import PeerAddress, PeerAddressError
from qoin.p2p.bans import BanFile, BanListError
from qoin.p2p.blocks import BlockGossip
from qoin.p2p.download import BlockSync, answer_get_headers
from qoin.p2p.engine import (
    ANSWER_SEND_TIMEOUT_S,
    Call,
    EngineCalls,
    EngineFramingError,
    EngineServer,
    RawAnswer,
    request_parts,
)
from qoin.p2p.messages import (
    MAX_ANNOUNCED_BLOCKS,
    MAX_ENODE_BYTES,
    MAX_EXECUTION_NODES,
    MAX_FRAUD_REPORT,
    SERVICE_EXECUTION,
    Blocks,
    Disconnect,
    DisconnectReason,
    EngineAnswer,
    EngineRequest,
    ExecutionFraud,
    ExecutionNodes,
    GetBlocks,
    GetExecutionNodes,
    GetHeaders,
    GetTransactions,
    Headers,
    InventoryKind,
    Message,
    NewBlockHashes,
    NewTransactionHashes,
    NotFound,
    Ping,
    Pong,
    Status,
    Transactions,
    decode_message,
    encode_message,
)
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.peers import ConnectionRefusal, PeerManager
from qoin.p2p.session import BoundedSet, ConnectedPeers, Counters, PeerSession, say_goodbye
from qoin.p2p.statements import (
    MAX_ENGINE_REQUEST,
    MAX_METHOD_BYTES,
    MAX_STATEMENT_ANSWER,
    BadEngineAnswer,
    EngineCallError,
    EngineCallTimeout,
    EngineStatement,
    ExecutionNode,
    PeerUnavailable,
    SignedStatement,
)
from qoin.p2p.transactions import TransactionRelay
from qoin.p2p.transport import NetworkId, SecureChannel, TransportError, accept, connect
from qoin.ratelimit import TokenBucket

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 10.0
"""How long a new peer has to send its ``Status``."""
PING_INTERVAL_S = 15.0
"""A peer that sent nothing for this long is pinged; twice this long and it is dropped."""
MAINTAIN_INTERVAL_S = 0.5
"""How often the service dials, pings and polls the execution clients' mempools."""
SHUTDOWN_S = 10.0
"""How long stopping waits for peers to take their ``Disconnect``."""
SNAPSHOT_TIMEOUT_S = 5.0
"""How long a status request waits for the p2p loop to describe its peers."""
MAX_HANDSHAKES_IN_FLIGHT = 8
"""Inbound handshakes under way at once, from all hosts together (loopback included): a
responder signs for any initiator (§7), so more connections are closed before any cryptography."""
ASK_EXECUTION_NODES_S = 10.0
"""A peer is asked ``GetExecutionNodes`` at most this often."""
SEEN_FRAUD_REPORTS = 4096
"""Fraud reports remembered (by SHA3-256) so that each is judged and relayed once."""
FRAUD_BURST = 8.0
FRAUD_PER_S = 0.2
"""Fraud reports one peer may have judged: a burst of 8, then one every 5 s (a token bucket);
beyond, a report is ignored (not judged, not remembered: another peer may relay it later). No
penalty (an honest peer relays every proven report it gets), but an UNDECIDED report costs its
sender nothing else, so without this bound a peer could keep this node's chain worker busy."""
STRANGER_BAN_BURST = 32.0
STRANGER_BANS_PER_S = 1 / 60
"""Bans of proven liars this node does not know (not connected, not among its addresses), all
peers together: a burst of 32, then one a minute (a token bucket). Anyone can make a key and sign
a lie with it; without this bound a peer could fill the ban list with such nodes (up to
``MAX_BANS``, pushing out the bans of real liars). A real liar is rare, and it is known to the
nodes that use it, whose bans never wait for a token."""
CALL_GRACE_S = 5.0
"""How much longer than its own timeout a remote engine call waits for the p2p loop."""


class P2PError(QoinError):
    """The p2p service cannot start (bad configuration, port in use, a damaged ban file)."""


class _ProtocolBreach(QoinError):
    """A well-formed message the protocol does not allow here."""


class P2PService:
    """Runs the p2p network of one node (see the module docstring)."""

    def __init__(
        self,
        access: ChainAccess,
        identity: HybridKeyPair,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bootnodes: Iterable[PeerAddress] = (),
        datadir: Path | None = None,
        max_inbound: int = 32,
        max_outbound: int = 8,
        trusted_loopback: bool = True,
        engine_server: EngineServer | None = None,
    ) -> None:
        self.access = access
        self.identity = identity
        self.network = NetworkId.from_genesis(access.genesis)
        self.host = host
        self.port = port
        self.peers = PeerManager(
            identity.address,
            max_inbound=max_inbound,
            max_outbound=max_outbound,
            bootnodes=bootnodes,
            trusted_loopback=trusted_loopback,
        )
        self.counters = Counters()
        self._ban_file = None if datadir is None else BanFile(datadir)
        self._chain = ChainWorker(access)
        self._connected = ConnectedPeers(self.peers, self.counters, self._save_bans)
        self._blocks = BlockGossip(
            self._connected,
            self._chain,
            self.counters,
            access.genesis.genesis_hash,
            far_ahead=self._consider_sync,
            spawn=self._spawn,
        )
        self._sync = BlockSync(
            self._connected, self._chain, self.counters, self._blocks, self._spawn
        )
        self._transactions = TransactionRelay(self._connected, self._chain, self.counters)
        self.engine_server = engine_server
        """Serves the local execution client to peers (``--serve-execution``), or None."""
        if engine_server is not None:
            engine_server.bind(identity, access.genesis.genesis_hash)
        self._calls = EngineCalls()
        self._want_execution = 0
        self._asked_nodes: dict[int, float] = {}
        self._awaiting_nodes: set[int] = set()
        """Connections asked ``GetExecutionNodes`` that have not answered yet (one answer each:
        more would let a peer fill the known addresses at will)."""
        """When each connection was last asked ``GetExecutionNodes``."""
        self._seen_fraud = BoundedSet(SEEN_FRAUD_REPORTS)
        self._fraud_tokens: dict[int, TokenBucket] = {}
        """Each connection's fraud-report token bucket."""
        self._stranger_bans = TokenBucket.full(
            STRANGER_BAN_BURST, STRANGER_BANS_PER_S, time.monotonic()
        )
        """The token bucket of bans of liars not known here."""
        self._connected.on_close.append(self._on_peer_closed)
        self._handlers = self._message_handlers()
        self._handshakes = 0
        """Inbound handshakes under way."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._load_bans()

    def _consider_sync(self, peer: PeerSession) -> None:
        """A peer's blocks are far above our head: every peer is considered for a sync."""
        self._sync.consider()

    def _message_handlers(
        self,
    ) -> dict[type[Any], tuple[Callable[[PeerSession, Any], Coroutine[Any, Any, None]], bool]]:
        """What handles each message after the first (a second Status is a protocol breach), and
        whether it waits on the chain worker (then it runs in the peer's backlog)."""
        blocks, txs, peers = self._blocks, self._transactions, self._connected
        return {
            Ping: (self._on_ping, False),
            Pong: (self._on_pong, False),
            Disconnect: (self._on_disconnect, False),
            NewBlockHashes: (blocks.on_new_block_hashes, False),
            GetHeaders: (self._on_get_headers, True),
            Headers: (peers.answer_headers, False),
            GetBlocks: (blocks.on_get_blocks, True),
            Blocks: (blocks.on_blocks, False),
            NewTransactionHashes: (txs.on_new_transaction_hashes, False),
            GetTransactions: (txs.on_get_transactions, False),
            Transactions: (txs.on_transactions, True),
            NotFound: (self._on_not_found, False),
            EngineRequest: (self._on_engine_request, False),
            EngineAnswer: (self._on_engine_answer, False),
            GetExecutionNodes: (self._on_get_execution_nodes, False),
            ExecutionNodes: (self._on_execution_nodes, False),
            ExecutionFraud: (self._on_execution_fraud, True),
        }

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening and dialling in a background thread; raise :class:`P2PError` if the
        port cannot be bound."""
        self._thread = threading.Thread(target=self._run, name="p2p", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise P2PError(f"cannot start on {self.host}:{self.port}: {self._start_error}")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._on_inbound, self.host, self.port)
            self.port = server.sockets[0].getsockname()[1]
            await self._blocks.refresh_head()
        except Exception as exc:
            self._start_error = exc
            return
        finally:
            self._started.set()
        maintain = asyncio.create_task(self._maintain())
        try:
            await self._stopping.wait()
        finally:
            maintain.cancel()
            server.close()
            try:
                async with asyncio.timeout(SHUTDOWN_S):
                    await asyncio.gather(
                        *(
                            self._connected.close(peer, DisconnectReason.REQUESTED, "shutting down")
                            for peer in self._connected.sessions()
                        ),
                        return_exceptions=True,
                    )
            except TimeoutError:
                log.warning("some peers did not take their goodbye within %s s", SHUTDOWN_S)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, maintain, return_exceptions=True)
                self._save_bans()

    def stop(self) -> None:
        """Disconnect every peer and stop (from any thread; waits for the loop to finish)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._chain.shutdown()
        if self.engine_server is not None:
            self.engine_server.close()

    @property
    def enode(self) -> str:
        """This node's address as a bootnode entry: ``qoin1…@host:port``."""
        return f"{self.identity.address}@{self.host}:{self.port}"

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("p2p task failed", exc_info=task.exception())

    # -- thread-safe entry points -------------------------------------------------------------

    def announce(self, result: ImportResult) -> None:
        """Tell peers about blocks the node stored by other means (mining, RPC); any thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or not result.connected:
            return
        loop.call_soon_threadsafe(self._blocks.announce_stored, result, None)

    def add_peer(self, address: PeerAddress) -> None:
        """Dial ``address`` now (and keep it among the known addresses); any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise P2PError("the p2p service is not running")
        loop.call_soon_threadsafe(self._add_peer, address)

    def _add_peer(self, address: PeerAddress) -> None:
        self.peers.add_known([address])
        self._spawn(self._dial(address))

    def remove_peer(self, node_id: Address) -> None:
        """Disconnect ``node_id`` and stop dialling it (until it is added again); any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise P2PError("the p2p service is not running")
        loop.call_soon_threadsafe(self._spawn, self._remove_peer(node_id))

    async def _remove_peer(self, node_id: Address) -> None:
        self.peers.forget(node_id)
        for peer in self._connected.sessions():
            if peer.node_id == node_id:
                await self._connected.close(peer, DisconnectReason.REQUESTED, "removed by operator")

    def snapshot(self) -> dict[str, Any]:
        """Peers, bans and counters as a JSON-able dict (any thread: read on the loop, which owns
        them)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return self._snapshot()
        future = asyncio.run_coroutine_threadsafe(self._snapshot_on_loop(), loop)
        return future.result(timeout=SNAPSHOT_TIMEOUT_S)

    async def _snapshot_on_loop(self) -> dict[str, Any]:
        return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        peers = []
        for peer in self._connected.sessions():
            status = peer.status
            peers.append(
                {
                    "id": str(peer.node_id),
                    "address": f"{peer.address.host}:{peer.address.port}",
                    "inbound": peer.inbound,
                    "head": status.head_hash.hex() if status else None,
                    "height": status.head_height if status else None,
                    "score": self.peers.score(peer.node_id),
                    "blocksServed": peer.blocks_served,
                    "services": status.services if status else 0,
                }
            )
        server = self.engine_server
        engine = None
        if server is not None:
            engine = {
                "served": server.counters.served,
                "refused": server.counters.refused,
                "unanswered": server.counters.unanswered,
                "bytesIn": server.counters.bytes_in,
                "bytesOut": server.counters.bytes_out,
                "inFlight": server.in_flight,
                "buffered": server.buffered,
                "held": server.held,
            }
        return {
            "enode": self.enode,
            "peers": peers,
            "bans": [
                {"kind": b.kind.value, "subject": b.subject, "reason": b.reason.value}
                for b in self.peers.bans()
            ],
            "syncing": self._sync.syncing is not None,
            "handshakes": self._handshakes,
            "services": self._services,
            "engine": engine,
            **self.counters.__dict__,
        }

    # -- shared execution: thread-safe entry points --------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise P2PError("the p2p service is not running")
        if threading.current_thread() is self._thread:
            # waiting here for the loop would block the loop itself until the timeout
            raise P2PError("a blocking p2p call made on the p2p loop's own thread")
        return loop

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        """Call ``method`` with the JSON ``params`` array on the execution client of the connected
        peer ``node_id`` (any thread but the p2p loop's); its signed answer, checked to be signed
        by that peer about this very call. An error answer is a statement with ``error`` set.
        Raises :class:`EngineCallTimeout`, :class:`PeerUnavailable` or :class:`BadEngineAnswer`
        (then the peer is also penalised)."""
        if not 0 < len(method.encode()) <= MAX_METHOD_BYTES or len(params) > MAX_ENGINE_REQUEST:
            raise EngineCallError(
                f"a call is a method of 1 to {MAX_METHOD_BYTES} bytes and at most "
                f"{MAX_ENGINE_REQUEST} bytes of params"
            )
        try:
            loop = self._running_loop()
        except P2PError as exc:
            raise PeerUnavailable(str(exc)) from None
        limit = min(max_answer, MAX_STATEMENT_ANSWER)
        future = asyncio.run_coroutine_threadsafe(
            self._engine_call(node_id, method, params, timeout, limit), loop
        )
        try:
            answer, key = future.result(timeout + CALL_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise EngineCallTimeout(f"{method}: no answer from {node_id} in time") from None
        except concurrent.futures.CancelledError:
            raise PeerUnavailable("the p2p service stopped during the call") from None
        statement = EngineStatement(
            self.network.genesis_hash, method, params, answer.data, answer.error
        )
        try:
            signed = SignedStatement(statement, key, HybridSignature.decode(answer.signature))
            signed.verify(node_id)
        except (DecodeError, SignatureError) as exc:
            self._penalise_soon(node_id, Misbehaviour.MALFORMED_MESSAGE, f"engine answer: {exc}")
            raise BadEngineAnswer(f"{method}: the answer's signature is bad: {exc}") from None
        return signed

    async def _engine_call(
        self, node_id: Address, method: str, params: bytes, timeout: float, max_answer: int
    ) -> tuple[RawAnswer, Any]:
        peer = self._session_of(node_id)
        if peer is None or peer.status is None:  # Status goes first
            raise PeerUnavailable(f"{node_id} is not connected")
        request_id, waiter = self._calls.open(peer.connection_id, max_answer)
        gave_up = True
        try:
            async with asyncio.timeout(timeout):
                for part in request_parts(request_id, method, params):
                    if not self._connected.is_connected(peer) or not peer.send(part):
                        raise PeerUnavailable(f"{node_id} is gone or does not take more messages")
                answer = await waiter
            gave_up = False
        except TimeoutError:
            raise EngineCallTimeout(f"{method}: no answer from {node_id} in {timeout} s") from None
        except BadEngineAnswer:
            gave_up = False
            raise
        finally:
            self._calls.close(peer.connection_id, request_id, gave_up)
        return answer, peer.channel.peer_key

    def _session_of(self, node_id: Address) -> PeerSession | None:
        connection_id = self.peers.connection_id(node_id)
        return None if connection_id is None else self._connected.get(connection_id)

    def _penalise_soon(self, node_id: Address, kind: Misbehaviour, detail: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn, self._penalise(node_id, kind, detail))

    async def _penalise(self, node_id: Address, kind: Misbehaviour, detail: str) -> None:
        """Score ``node_id``, connected or not (a peer that left is still scored)."""
        if node_id == self.identity.address:
            return
        peer = self._session_of(node_id)
        if peer is not None:
            await self._connected.punish(peer, kind, detail)
        elif not self.peers.is_banned(node_id) and self.peers.penalise(node_id, kind, detail):
            self.counters.banned += 1
            log.warning("node %s banned: %s", node_id, detail)
            self._save_bans()

    def execution_nodes(self) -> list[ExecutionNode]:
        """The connected peers that serve execution (any thread; on the loop's own, what it
        holds now). Their ``host`` is the address connected to (an IP address, never a name a
        peer chose), so that :func:`~qoin.consensus.remote.netgroup` groups them by it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return []
        if threading.current_thread() is self._thread:
            return self._execution_nodes()
        future = asyncio.run_coroutine_threadsafe(self._execution_nodes_on_loop(), loop)
        try:
            return future.result(timeout=SNAPSHOT_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise P2PError("the p2p loop did not answer in time") from None

    async def _execution_nodes_on_loop(self) -> list[ExecutionNode]:
        return self._execution_nodes()

    def _execution_nodes(self) -> list[ExecutionNode]:
        nodes = []
        for peer in self._connected.sessions():
            status = peer.status
            if status is None or not status.services & SERVICE_EXECUTION:
                continue
            port = status.listen_port or peer.address.port
            host = peer.channel.remote_host or peer.address.host
            nodes.append(ExecutionNode(peer.node_id, host, port, peer.channel.peer_key))
        return nodes

    def want_execution_nodes(self, n: int) -> None:
        """Look for peers serving execution (asking peers for them) while fewer than ``n`` are
        connected; any thread."""
        self._want_execution = max(0, n)

    def ban_node(self, node_id: Address, reason: str) -> None:
        """Ban ``node_id`` for an execution lie (penalty :attr:`Misbehaviour.EXECUTION_LIE`),
        connected or not: disconnected, and saved to the ban file; any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():  # not started or stopped: nothing else touches them
            if node_id != self.identity.address and not self.peers.is_banned(node_id):
                self.peers.penalise(node_id, Misbehaviour.EXECUTION_LIE, reason)
                self._save_bans()
            return
        loop.call_soon_threadsafe(
            self._spawn, self._penalise(node_id, Misbehaviour.EXECUTION_LIE, reason)
        )

    def broadcast_fraud(self, report: bytes, skip: Address | None = None) -> None:
        """Send an ``ExecutionFraud`` report to every connected peer but ``skip``; any thread (a
        service not running sends nothing). Raises :class:`P2PError` for a report over
        :data:`MAX_FRAUD_REPORT` bytes."""
        if len(report) > MAX_FRAUD_REPORT:
            raise P2PError(f"a fraud report of {len(report)} bytes is over {MAX_FRAUD_REPORT}")
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._broadcast_fraud, report, skip)

    def _broadcast_fraud(self, report: bytes, skip: Address | None) -> None:
        self._seen_fraud.add(sha3_256(report))
        payload = encode_message(ExecutionFraud(report))
        for peer in self._connected.sessions():
            if peer.status is not None and peer.node_id != skip:  # Status goes first
                peer.send_encoded(payload)

    # -- connections --------------------------------------------------------------------------

    async def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        host, port = str(remote[0]), int(remote[1])
        if (
            self._handshakes >= MAX_HANDSHAKES_IN_FLIGHT
            or not self.peers.can_accept_inbound()
            or not self.peers.allow_inbound_handshake(host)
        ):
            self.counters.handshakes_refused += 1
            writer.close()
            return
        self._handshakes += 1
        try:
            channel = await accept(reader, writer, self.identity, self.network)
        except TransportError as exc:
            log.info("inbound handshake from %s:%s failed: %s", host, port, exc)
            return
        finally:
            self._handshakes -= 1
        await self._admit(channel, PeerAddress(host, port), inbound=True)

    async def _dial(self, address: PeerAddress) -> None:
        try:
            channel = await connect(
                address.host, address.port, self.identity, self.network, address.node_id
            )
        except TransportError as exc:
            delay = self.peers.on_dial_failed(address)
            log.info("dialling %s failed: %s (next try in %s s)", address, exc, delay)
            return
        await self._admit(channel, address, inbound=False)

    async def _admit(self, channel: SecureChannel, address: PeerAddress, inbound: bool) -> None:
        admission = self.peers.on_connected(channel.peer_id, address, inbound)
        if not admission or admission.connection_id is None:
            reason = _REFUSALS.get(admission.reason, DisconnectReason.REQUESTED)
            await say_goodbye(channel, reason, admission.detail)
            return
        if admission.replaced_id is not None:
            old = self._connected.get(admission.replaced_id)
            if old is not None:
                await self._connected.close(old, DisconnectReason.DUPLICATE_CONNECTION, "replaced")
        peer = PeerSession(channel, address, inbound, admission.connection_id)
        self._connected.add(peer)
        peer.tasks.append(asyncio.create_task(peer.write()))
        self._spawn(self._serve(peer))

    async def _serve(self, peer: PeerSession) -> None:
        """Exchange ``Status``, then read the peer's messages until it goes."""
        try:
            peer.send(await self._status())
            first = decode_message(await asyncio.wait_for(peer.channel.receive(), STATUS_TIMEOUT_S))
            if not isinstance(first, Status):
                raise _ProtocolBreach("the first message is not a Status")
            if (first.chain_id, first.genesis_hash) != (
                self.network.chain_id,
                self.network.genesis_hash,
            ):
                await self._connected.close(peer, DisconnectReason.INCOMPATIBLE, "another network")
                return
            self._on_status(peer, first)
            peer.tasks.append(asyncio.create_task(self._work_backlog(peer)))
            await peer.backlog.put(lambda: self._greet(peer), 0)
            while True:
                payload = await peer.channel.receive()
                peer.last_received, peer.pinged = time.monotonic(), False
                await self._handle(peer, decode_message(payload), len(payload))
        except DecodeError as exc:
            await self._connected.punish(peer, Misbehaviour.MALFORMED_MESSAGE, str(exc))
        except (_ProtocolBreach, EngineFramingError) as exc:
            await self._connected.punish(peer, Misbehaviour.PROTOCOL_VIOLATION, str(exc))
        except TimeoutError:
            await self._connected.punish(peer, Misbehaviour.TIMEOUT, "no Status")
        except TransportError as exc:
            log.debug("peer %s gone: %s", peer.label, exc)
        finally:
            await self._connected.close(peer, DisconnectReason.REQUESTED, "")

    async def _work_backlog(self, peer: PeerSession) -> None:
        """Handle the peer's messages that wait on the chain, in order; close the peer if one
        fails."""
        try:
            await peer.backlog.run()
        except Exception:
            log.exception("peer %s: handling a message failed", peer.label)
            self._spawn(self._connected.close(peer, DisconnectReason.REQUESTED, ""))

    async def _greet(self, peer: PeerSession) -> None:
        """Tell a new peer our branch tips and pending transactions."""
        tips = await self._chain.call(self._chain.access.tips, MAX_ANNOUNCED_BLOCKS)
        if tips:
            peer.send(NewBlockHashes(tuple(tips)))
        await self._transactions.announce_pending(peer)

    async def _status(self) -> Status:
        head_hash, height, work = await self._blocks.refresh_head()
        return Status(
            self.network.chain_id,
            self.network.genesis_hash,
            head_hash,
            height,
            work,
            self.port,
            self._services,
        )

    @property
    def _services(self) -> int:
        return SERVICE_EXECUTION if self.engine_server is not None else 0

    def _on_status(self, peer: PeerSession, status: Status) -> None:
        peer.status = status
        peer.known_blocks.add(status.head_hash)
        if peer.inbound and status.listen_port:
            self.peers.add_known([PeerAddress(peer.address.host, status.listen_port, peer.node_id)])
        log.info("peer %s connected: head height %d", peer.label, status.head_height)
        self._sync.consider()

    # -- messages -----------------------------------------------------------------------------

    async def _handle(self, peer: PeerSession, message: Message, size: int) -> None:
        entry = self._handlers.get(type(message))
        if entry is None:  # Status: only as the first message
            raise _ProtocolBreach(f"a {type(message).__name__} after the first message")
        handler, waits_on_chain = entry
        if waits_on_chain:
            await peer.backlog.put(lambda: handler(peer, message), size)
        else:
            await handler(peer, message)

    async def _on_ping(self, peer: PeerSession, message: Ping) -> None:
        peer.send(Pong(message.nonce))

    async def _on_pong(self, peer: PeerSession, message: Pong) -> None:
        """Any message shows the peer is alive; a Pong needs nothing more."""

    async def _on_disconnect(self, peer: PeerSession, message: Disconnect) -> None:
        log.info("peer %s disconnects: %s %s", peer.label, message.reason, message.text)
        raise TransportError("the peer disconnected")

    async def _on_get_headers(self, peer: PeerSession, message: GetHeaders) -> None:
        await answer_get_headers(self._chain, peer, message)

    async def _on_not_found(self, peer: PeerSession, message: NotFound) -> None:
        if message.kind is InventoryKind.BLOCK:
            await self._blocks.on_not_found(peer, message.hashes)
        else:
            self._transactions.on_not_found(peer, message.hashes)

    # -- shared execution: messages --------------------------------------------------------------

    async def _on_engine_request(self, peer: PeerSession, message: EngineRequest) -> None:
        server = self.engine_server
        if server is None:
            raise _ProtocolBreach("an EngineRequest to a node that does not serve execution")
        call = server.receive(peer.connection_id, message)
        if call is not None:
            self._spawn(self._answer_engine_request(peer, server, call))

    async def _answer_engine_request(
        self, peer: PeerSession, server: EngineServer, call: Call
    ) -> None:
        parts = None
        try:
            parts = await server.answer(call)
            if parts is None:
                return
            for part in parts:
                if not self._connected.is_connected(peer):
                    return
                payload = encode_message(part)
                try:
                    await asyncio.wait_for(peer.outbox.put((payload, None)), ANSWER_SEND_TIMEOUT_S)
                except TimeoutError:
                    log.info("peer %s does not take its engine answer", peer.label)
                    return
                server.counters.bytes_out += len(part.data)
        finally:
            if parts is not None:
                server.release(parts)
            if call.refusal is None:
                server.finished(peer.connection_id, call.request_id)

    async def _on_engine_answer(self, peer: PeerSession, message: EngineAnswer) -> None:
        if not self._calls.receive(peer.connection_id, message):
            await self._connected.punish(peer, Misbehaviour.UNSOLICITED, "an engine answer")

    async def _on_get_execution_nodes(self, peer: PeerSession, message: GetExecutionNodes) -> None:
        entries = []
        for node in self._execution_nodes():
            session = self._session_of(node.node_id)
            if node.node_id == peer.node_id or session is None:
                continue
            if session.inbound and not (session.status and session.status.listen_port):
                continue  # no port it listens on
            entry = node.enode
            if len(entry.encode()) <= MAX_ENODE_BYTES:
                entries.append(entry)
        peer.send(ExecutionNodes(tuple(entries[:MAX_EXECUTION_NODES])))

    async def _on_execution_nodes(self, peer: PeerSession, message: ExecutionNodes) -> None:
        if peer.connection_id not in self._awaiting_nodes:
            await self._connected.punish(peer, Misbehaviour.UNSOLICITED, "execution nodes")
            return
        self._awaiting_nodes.discard(peer.connection_id)
        addresses = []
        for entry in message.nodes:
            try:
                address = PeerAddress.parse(entry)
            except PeerAddressError:
                await self._connected.punish(
                    peer, Misbehaviour.PROTOCOL_VIOLATION, f"a bad execution node {entry!r}"
                )
                return
            if address.node_id is not None:
                addresses.append(address)
        if addresses:
            self.peers.add_known(addresses)

    def _take_fraud_token(self, peer: PeerSession) -> bool:
        now = time.monotonic()
        bucket = self._fraud_tokens.get(peer.connection_id)
        if bucket is None:
            bucket = self._fraud_tokens[peer.connection_id] = TokenBucket.full(
                FRAUD_BURST, FRAUD_PER_S, now
            )
        return bucket.take(now)

    def _take_stranger_ban(self) -> bool:
        return self._stranger_bans.take(time.monotonic())

    def _knows(self, node_id: Address) -> bool:
        """Whether ``node_id`` is a node this one deals with: connected, or in its addresses."""
        return self.peers.is_connected(node_id) or any(
            address.node_id == node_id for address in self.peers.known_addresses()
        )

    async def _on_execution_fraud(self, peer: PeerSession, message: ExecutionFraud) -> None:
        digest = sha3_256(message.report)
        if digest in self._seen_fraud:
            return
        if not self._take_fraud_token(peer):
            log.info("fraud report from %s ignored: it sends too many", peer.label)
            return
        self._seen_fraud.add(digest)
        try:
            judgement = await self._chain.call(self._chain.access.judge_fraud, message.report)
        except QoinError as exc:  # this node cannot judge now (its own trouble, not the peer's)
            log.warning("could not judge a fraud report from %s: %s", peer.label, exc)
            return
        accused = judgement.accused
        if judgement.verdict is FraudVerdict.PROVEN and accused is not None:
            if accused == self.identity.address or self.peers.is_banned(accused):
                return  # banned (and its report relayed) already
            known = self._knows(accused)
            if not known and not self._take_stranger_ban():
                log.info(
                    "fraud report from %s proves %s lied, a node not known here; not banned: "
                    "too many such bans lately",
                    peer.label,
                    accused,
                )
                return
            log.warning(
                "fraud report from %s proves %s lied: %s", peer.label, accused, judgement.detail
            )
            await self._penalise(accused, Misbehaviour.EXECUTION_LIE, judgement.detail)
            if not known:
                # Relayed only by nodes that deal with the liar: otherwise one peer could make
                # every node of the network judge reports about keys it makes up. The peers of the
                # node that caught the liar ban it all the same (they got the report from it).
                return
            payload = encode_message(message)
            for other in self._connected.sessions():
                if other is not peer and other.status is not None and other.node_id != accused:
                    other.send_encoded(payload)
        elif judgement.verdict is FraudVerdict.FALSE:
            await self._connected.punish(
                peer, Misbehaviour.INVALID_BLOCK, f"a false fraud report: {judgement.detail}"
            )

    def _on_peer_closed(self, peer: PeerSession) -> None:
        self._calls.peer_gone(peer.connection_id)
        self._asked_nodes.pop(peer.connection_id, None)
        self._awaiting_nodes.discard(peer.connection_id)
        self._fraud_tokens.pop(peer.connection_id, None)
        if self.engine_server is not None:
            self.engine_server.forget(peer.connection_id)

    def _ask_for_execution_nodes(self, now: float) -> None:
        """While fewer than wanted peers serve execution, ask peers for more (each at most every
        :data:`ASK_EXECUTION_NODES_S`)."""
        if len(self._execution_nodes()) >= self._want_execution:
            return
        for peer in self._connected.sessions():
            asked = self._asked_nodes.get(peer.connection_id)
            if peer.status is not None and (asked is None or now - asked >= ASK_EXECUTION_NODES_S):
                self._asked_nodes[peer.connection_id] = now
                self._awaiting_nodes.add(peer.connection_id)
                peer.send(GetExecutionNodes())

    # -- upkeep -------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Dial, ping, drop the silent, retry a sync, poll the mempools: every
        :data:`MAINTAIN_INTERVAL_S`."""
        while True:
            self._sync.consider()
            for address in self.peers.want_outbound():
                self._spawn(self._dial(address))
            now = time.monotonic()
            for peer in self._connected.sessions():
                idle = now - peer.last_received
                if idle > 2 * PING_INTERVAL_S:
                    self._spawn(self._connected.close(peer, DisconnectReason.TIMEOUT, "silent"))
                elif idle > PING_INTERVAL_S and not peer.pinged:
                    peer.pinged = True
                    peer.send(Ping(secrets.randbits(64)))
            self._ask_for_execution_nodes(now)
            if self.engine_server is not None:
                self.engine_server.prune()
            try:
                await self._transactions.gossip()
            except QoinError as exc:
                log.warning("could not read the execution clients' new transactions: %s", exc)
            await asyncio.sleep(MAINTAIN_INTERVAL_S)

    def _load_bans(self) -> None:
        if self._ban_file is None:
            return
        try:
            restored = self.peers.restore_bans(self._ban_file.load(time.time()))
        except BanListError as exc:
            raise P2PError(str(exc)) from exc
        if restored:
            log.info("restored %d p2p bans from %s", restored, self._ban_file.path)

    def _save_bans(self) -> None:
        if self._ban_file is not None:
            self._ban_file.save(self.peers.bans(), time.time())


_REFUSALS: dict[ConnectionRefusal | None, DisconnectReason] = {
    ConnectionRefusal.SELF: DisconnectReason.SELF_CONNECTION,
    ConnectionRefusal.WRONG_NODE_ID: DisconnectReason.REQUESTED,
    ConnectionRefusal.BANNED: DisconnectReason.BANNED,
    ConnectionRefusal.HOST_BANNED: DisconnectReason.BANNED,
    ConnectionRefusal.DUPLICATE: DisconnectReason.DUPLICATE_CONNECTION,
    ConnectionRefusal.INBOUND_FULL: DisconnectReason.TOO_MANY_PEERS,
    ConnectionRefusal.OUTBOUND_FULL: DisconnectReason.TOO_MANY_PEERS,
}
