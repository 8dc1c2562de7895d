"""The p2p service of a consensus client: peers over the encrypted transport, block and transaction
gossip, and headers-first sync (``docs/spec/p2p.md`` §9.4, §10, §11).

The service runs an asyncio loop in a thread of its own. Everything that touches the chain or the
execution clients goes through :class:`ChainAccess` on one worker thread, so imports are serialised
and the loop never blocks on them. The node tells the service about blocks it stored by other
means (mined, submitted by RPC) with :meth:`P2PService.announce`, callable from any thread.

Per connection: both sides send ``Status`` first; then each side announces its recent branch tips
(``NewBlockHashes``), so that peers that were apart learn each other's side blocks as well as
their canonical chains. A peer whose head we lack is synced from, headers first: ``GetHeaders``
with our locator, headers checked (links, targets, proof of work) before any body is asked for,
bodies fetched with ``GetBlocks`` from every peer that can serve them (at most
:data:`BLOCKS_PER_REQUEST` per request and :data:`REQUESTS_PER_PEER` requests outstanding per
peer), imported in height order. New blocks and transactions are announced by hash and fetched on
demand. Invalid blocks and headers ban their sender (§11); garbage, unsolicited data and timeouts
cost points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from qoin.chain.block import Block, Header
from qoin.chain.chain import ExecutionUndecided, ImportResult, ImportStatus
from qoin.chain.genesis import Genesis
from qoin.chain.transaction import Transaction
from qoin.chain.validation import BadTimestamp, InvalidBlock
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.files import write_atomically
from qoin.p2p.messages import (
    MAX_ANNOUNCED_BLOCKS,
    MAX_ANNOUNCED_TRANSACTIONS,
    MAX_DISCONNECT_TEXT,
    MAX_HEADERS,
    MAX_LOCATOR_HASHES,
    AnnouncedBlock,
    Blocks,
    Disconnect,
    DisconnectReason,
    GetBlocks,
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
    encoded_blocks_messages,
    split_headers,
    split_transactions,
)
from qoin.p2p.peers import (
    BanListError,
    Misbehaviour,
    PeerAddress,
    PeerManager,
    Refusal,
    bans_from_json,
    bans_to_json,
)
from qoin.p2p.sync import HeadersNotConnected, check_headers
from qoin.p2p.transport import NetworkId, SecureChannel, TransportError, accept, connect

log = logging.getLogger(__name__)

T = TypeVar("T")

BANS_FILE = "p2p-bans.json"
"""Where bans are kept across restarts, in the data directory."""
MAX_BANS_FILE_BYTES = 4 * 1024 * 1024
STATUS_TIMEOUT_S = 10.0
"""How long a new peer has to send its ``Status``."""
REQUEST_TIMEOUT_S = 20.0
"""How long a ``GetHeaders`` or ``GetBlocks`` may stay unanswered."""
PING_INTERVAL_S = 15.0
"""A peer that sent nothing for this long is pinged; twice this long and it is dropped."""
MAINTAIN_INTERVAL_S = 0.5
"""How often the service dials, pings and polls the execution clients' mempools."""
BLOCKS_PER_REQUEST = 16
"""Blocks asked for in one ``GetBlocks`` during sync (the first requests ask for 1, 2, 4, 8)."""
REQUESTS_PER_PEER = 4
"""``GetBlocks`` outstanding per peer during sync (4 x 16 = 64 blocks, within the 128 window)."""
DOWNLOAD_AHEAD = 512
"""Blocks downloaded ahead of the import cursor at most (bounds the memory sync uses)."""
OUTBOX_SIZE = 256
"""Messages queued for one peer before it counts as too slow and is dropped."""
KNOWN_PER_PEER = 16_384
"""Block and transaction hashes remembered per peer as known to it (not re-announced)."""
TX_CACHE_SIZE = 16_384
"""Recently seen transactions kept to answer ``GetTransactions``."""
SHUTDOWN_S = 10.0
"""How long stopping waits for peers to take their ``Disconnect``."""
SNAPSHOT_TIMEOUT_S = 5.0
"""How long a status request waits for the p2p loop to describe its peers."""
SYNC_REST_S = 10.0
"""How long a peer a sync from which failed or brought nothing is not synced from again; doubled
for each such sync in a row."""
SYNC_REST_MAX_S = 600.0
MAX_SYNC_RESTS = 1024
FETCHES_PER_PEER = 4
"""Announced-block fetches running at once per peer; announcements beyond are ignored."""
MAX_REQUESTED_TXS = 16_384
"""Transaction ids asked of one peer and not yet answered; announcements beyond are ignored."""
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
"""Downloaded blocks waiting for their import during sync, in bytes: no more is asked for."""
MAX_SERVED_BYTES = 64 * 1024 * 1024
"""Bytes of blocks sent for one ``GetBlocks``; the rest is answered ``NotFound``."""
GAVE_UP_PER_PEER = 1024
"""Block hashes whose request to a peer timed out: their late arrival is no offence."""
WALK_BACK_DEPTH = 64
"""How far below our head a side branch is walked back block by block (its tips reach 64)."""
ORPHAN_WALK_BACK = 32
"""How far above our head a gossiped orphan may be before we sync instead of fetching parents."""


class P2PError(QoinError):
    """The p2p service cannot start (bad configuration, port in use)."""


class ChainAccess(Protocol):
    """What the service needs from its node; called on one worker thread, never concurrently."""

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

    def new_transactions(self) -> list[Transaction]:
        """Transactions the execution clients admitted since the last call."""

    def pending_transactions(self) -> list[Transaction]:
        """What the execution clients hold pending now (for a new peer; bounded by the caller's
        message bound)."""

    def submit_transactions(self, txs: Sequence[Transaction]) -> list[str]:
        """Hand transactions to every execution client; a status per transaction."""


class BoundedSet:
    """Insertion-ordered set that forgets its oldest members past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[bytes, None] = OrderedDict()

    def add(self, item: bytes) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)


class BlockRequests:
    """The blocks asked of one peer and not yet answered, each with the future its answer
    resolves. Requests that ask for a hash already asked share its future; a request releases
    only the futures it created, and only while they are still the registered ones."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[Block | None]] = {}

    def register(
        self, hashes: Sequence[bytes], loop: asyncio.AbstractEventLoop
    ) -> tuple[list[asyncio.Future[Block | None]], dict[bytes, asyncio.Future[Block | None]]]:
        """Futures for ``hashes`` (in order), and those created here (to ask for, then release)."""
        waiters: list[asyncio.Future[Block | None]] = []
        created: dict[bytes, asyncio.Future[Block | None]] = {}
        for block_hash in hashes:
            waiter = self._waiting.get(block_hash)
            if waiter is None:
                waiter = created[block_hash] = loop.create_future()
                self._waiting[block_hash] = waiter
            waiters.append(waiter)
        return waiters, created

    def answer(self, block_hash: bytes, block: Block | None) -> bool:
        """Resolve the request for ``block_hash``; False if nothing waits for it (unsolicited)."""
        waiter = self._waiting.pop(block_hash, None)
        if waiter is None or waiter.done():
            return False
        waiter.set_result(block)
        return True

    def release(self, created: dict[bytes, asyncio.Future[Block | None]]) -> None:
        """Forget the futures a request created, unless another request's replaced them."""
        for block_hash, waiter in created.items():
            if self._waiting.get(block_hash) is waiter:
                del self._waiting[block_hash]

    def cancel_all(self) -> None:
        """The peer is gone: every request gets no answer."""
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.cancel()
        self._waiting.clear()


@dataclass(eq=False)
class Peer:
    """One connected peer: its channel, what it told us, and what we asked it for."""

    channel: SecureChannel
    address: PeerAddress
    inbound: bool
    connection_id: int
    status: Status | None = None
    known_blocks: BoundedSet = field(default_factory=lambda: BoundedSet(KNOWN_PER_PEER))
    known_txs: BoundedSet = field(default_factory=lambda: BoundedSet(KNOWN_PER_PEER))
    outbox: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(OUTBOX_SIZE))
    headers_waiter: asyncio.Future[tuple[Header, ...]] | None = None
    block_requests: BlockRequests = field(default_factory=BlockRequests)
    tx_requested: set[bytes] = field(default_factory=set)
    last_received: float = field(default_factory=time.monotonic)
    pinged: bool = False
    blocks_served: int = 0
    """Blocks this peer sent us that we had asked for."""
    fetches: int = 0
    """Announced-block fetches from this peer under way."""
    gave_up: BoundedSet = field(default_factory=lambda: BoundedSet(GAVE_UP_PER_PEER))
    """Blocks whose request to this peer timed out (a late arrival is no offence)."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def node_id(self) -> Address:
        return self.channel.peer_id

    @property
    def label(self) -> str:
        return f"{str(self.node_id)[:14]}…@{self.address.host}:{self.address.port}"

    def send(self, message: Message) -> bool:
        """Queue a message; False if the peer is too far behind (the caller drops it)."""
        return self.send_encoded(encode_message(message))

    def send_encoded(self, payload: bytes) -> bool:
        """Queue an encoded message (see :meth:`send`)."""
        try:
            self.outbox.put_nowait(payload)
        except asyncio.QueueFull:
            return False
        return True


@dataclass
class Counters:
    """What the service has done, for the status RPC and the devnet view."""

    blocks_received: int = 0
    blocks_imported: int = 0
    headers_received: int = 0
    transactions_received: int = 0
    syncs: int = 0
    banned: int = 0


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
    ) -> None:
        self.access = access
        self.identity = identity
        self.network = NetworkId.from_genesis(access.genesis)
        self.host = host
        self.port = port
        self.datadir = datadir
        self.peers = PeerManager(
            identity.address,
            max_inbound=max_inbound,
            max_outbound=max_outbound,
            bootnodes=bootnodes,
            trusted_loopback=trusted_loopback,
        )
        self.counters = Counters()
        self._connected: dict[int, Peer] = {}
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="p2p-chain")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._import_lock: asyncio.Lock | None = None
        self._syncing: Peer | None = None
        self._fetching: set[bytes] = set()
        self._sync_rests: dict[Address, tuple[float, int]] = {}
        """Per node id: until when it is not synced from, and how many syncs from it in a row
        brought nothing (bounded: the oldest entries go first)."""
        self._session: _SyncSession | None = None
        self._tx_cache: OrderedDict[bytes, Transaction] = OrderedDict()
        self._head: tuple[bytes, int, int] = (access.genesis.genesis_hash, 0, 0)
        self._load_bans()

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
        self._import_lock = asyncio.Lock()
        try:
            self._server = await asyncio.start_server(self._on_inbound, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
            self._head = await self._call(self.access.head)
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
            self._server.close()
            try:
                async with asyncio.timeout(SHUTDOWN_S):
                    await asyncio.gather(
                        *(
                            self._close(peer, DisconnectReason.REQUESTED, "shutting down")
                            for peer in list(self._connected.values())
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
        self._worker.shutdown(wait=True, cancel_futures=True)

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

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        """Run a chain or execution call on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, function, *args)

    # -- thread-safe entry points -------------------------------------------------------------

    def announce(self, result: ImportResult) -> None:
        """Tell peers about blocks the node stored by other means (mining, RPC); any thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or not result.connected:
            return
        loop.call_soon_threadsafe(self._announce_stored, result, None)

    def add_peer(self, address: PeerAddress) -> None:
        """Dial ``address`` now (and keep it among the known addresses); any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise P2PError("the p2p service is not running")
        loop.call_soon_threadsafe(self._add_peer, address)

    def _add_peer(self, address: PeerAddress) -> None:
        self.peers.add_known([address])
        self._spawn(self._dial(address))

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
        for peer in list(self._connected.values()):
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
                }
            )
        return {
            "enode": self.enode,
            "peers": peers,
            "bans": [
                {"kind": b.kind.value, "subject": b.subject, "reason": b.reason.value}
                for b in self.peers.bans()
            ],
            "syncing": self._syncing is not None,
            **self.counters.__dict__,
        }

    # -- connections --------------------------------------------------------------------------

    async def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        host, port = str(remote[0]), int(remote[1])
        if not self.peers.can_accept_inbound() or not self.peers.allow_inbound_handshake(host):
            writer.close()
            return
        try:
            channel = await accept(reader, writer, self.identity, self.network)
        except TransportError as exc:
            log.info("inbound handshake from %s:%s failed: %s", host, port, exc)
            return
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
        if not admission:
            reason = _REFUSALS.get(admission.reason, DisconnectReason.REQUESTED)
            await _say_goodbye(channel, reason, admission.detail)
            return
        if admission.replaced_id is not None and admission.replaced_id in self._connected:
            old = self._connected[admission.replaced_id]
            await self._close(old, DisconnectReason.DUPLICATE_CONNECTION, "replaced")
        assert admission.connection_id is not None  # accepted connections carry an id
        peer = Peer(channel, address, inbound, admission.connection_id)
        self._connected[peer.connection_id] = peer
        peer.tasks.append(asyncio.create_task(self._writer(peer)))
        self._spawn(self._serve(peer))

    async def _writer(self, peer: Peer) -> None:
        try:
            while True:
                await peer.channel.send(await peer.outbox.get())
        except TransportError:
            pass

    async def _serve(self, peer: Peer) -> None:
        """Exchange ``Status``, then handle the peer's messages until it goes."""
        try:
            peer.send(await self._status())
            first = decode_message(await asyncio.wait_for(peer.channel.receive(), STATUS_TIMEOUT_S))
            if not isinstance(first, Status):
                raise _ProtocolBreach("the first message is not a Status")
            if (first.chain_id, first.genesis_hash) != (
                self.network.chain_id,
                self.network.genesis_hash,
            ):
                await self._close(peer, DisconnectReason.INCOMPATIBLE, "another network")
                return
            self._on_status(peer, first)
            tips = await self._call(self.access.tips, MAX_ANNOUNCED_BLOCKS)
            if tips:
                peer.send(NewBlockHashes(tuple(tips)))
            await self._announce_pending(peer)
            while True:
                payload = await peer.channel.receive()
                peer.last_received, peer.pinged = time.monotonic(), False
                await self._handle(peer, decode_message(payload))
        except DecodeError as exc:
            await self._punish(peer, Misbehaviour.MALFORMED_MESSAGE, str(exc))
        except _ProtocolBreach as exc:
            await self._punish(peer, Misbehaviour.PROTOCOL_VIOLATION, str(exc))
        except TimeoutError:
            await self._punish(peer, Misbehaviour.TIMEOUT, "no Status")
        except TransportError as exc:
            log.debug("peer %s gone: %s", peer.label, exc)
        finally:
            await self._close(peer, DisconnectReason.REQUESTED, "")

    async def _status(self) -> Status:
        self._head = await self._call(self.access.head)
        head_hash, height, work = self._head
        return Status(
            self.network.chain_id, self.network.genesis_hash, head_hash, height, work, self.port
        )

    def _on_status(self, peer: Peer, status: Status) -> None:
        peer.status = status
        peer.known_blocks.add(status.head_hash)
        if peer.inbound and status.listen_port:
            self.peers.add_known([PeerAddress(peer.address.host, status.listen_port, peer.node_id)])
        log.info("peer %s connected: head height %d", peer.label, status.head_height)
        self._consider_sync(peer)

    async def _close(self, peer: Peer, reason: DisconnectReason, text: str) -> None:
        """Forget a peer and close its channel (idempotent)."""
        if self._connected.pop(peer.connection_id, None) is None:
            return
        self.peers.on_disconnected(peer.connection_id)
        if peer.headers_waiter is not None and not peer.headers_waiter.done():
            peer.headers_waiter.cancel()
        peer.block_requests.cancel_all()
        for task in peer.tasks:
            task.cancel()
        if text:
            await _say_goodbye(peer.channel, reason, text)
        await peer.channel.close()
        if self._session is not None and self._session.peer is peer:
            self._session.download.abort()  # the sync ends; _sync then lets another start
        log.info("peer %s disconnected%s", peer.label, f" ({text})" if text else "")

    async def _punish(self, peer: Peer, kind: Misbehaviour, detail: str) -> None:
        """Score a peer's misbehaviour; a banned peer is disconnected at once."""
        if self.peers.is_banned(peer.node_id):
            return  # already banned (a peer that left is still scored: it is remembered)
        log.warning("peer %s: %s: %s", peer.label, kind.value, detail)
        if self.peers.penalise(peer.node_id, kind, detail):
            self.counters.banned += 1
            log.warning("peer %s banned: %s", peer.label, detail)
            self._save_bans()
            await self._close(peer, DisconnectReason.BANNED, f"{kind.value}: {detail}")

    # -- messages -----------------------------------------------------------------------------

    async def _handle(self, peer: Peer, message: Message) -> None:
        handler = _HANDLERS.get(type(message))
        if handler is None:  # Status: only as the first message
            raise _ProtocolBreach(f"a {type(message).__name__} after the first message")
        await handler(self, peer, message)

    async def _on_ping(self, peer: Peer, message: Ping) -> None:
        peer.send(Pong(message.nonce))

    async def _on_pong(self, peer: Peer, message: Pong) -> None:
        """Any message shows the peer is alive; a Pong needs nothing more."""

    async def _on_disconnect(self, peer: Peer, message: Disconnect) -> None:
        log.info("peer %s disconnects: %s %s", peer.label, message.reason, message.text)
        raise TransportError("the peer disconnected")

    async def _on_get_headers(self, peer: Peer, message: GetHeaders) -> None:
        headers = await self._call(
            self.access.headers_after, message.locator, message.stop_hash, message.max_count
        )
        peer.send(split_headers(headers)[0] if headers else Headers(()))

    async def _on_headers(self, peer: Peer, message: Headers) -> None:
        waiter = peer.headers_waiter
        if waiter is None or waiter.done():
            await self._punish(peer, Misbehaviour.UNSOLICITED, "headers not asked for")
        else:
            waiter.set_result(message.headers)

    async def _on_get_blocks(self, peer: Peer, message: GetBlocks) -> None:
        asked = tuple(dict.fromkeys(message.hashes))  # each block once
        found = await self._call(self.access.block_encodings, asked, MAX_SERVED_BYTES)
        for reply in encoded_blocks_messages([encoding for _, encoding in found]) if found else []:
            peer.send_encoded(reply)
        served = {block_hash for block_hash, _ in found}
        missing = tuple(h for h in asked if h not in served)
        if missing:
            peer.send(NotFound(InventoryKind.BLOCK, missing))

    async def _on_get_transactions(self, peer: Peer, message: GetTransactions) -> None:
        found = [tx for i in message.tx_ids if (tx := self._tx_cache.get(i)) is not None]
        for reply in split_transactions(found) if found else []:
            peer.send(reply)
        missing = tuple(i for i in message.tx_ids if i not in self._tx_cache)
        if missing:
            peer.send(NotFound(InventoryKind.TRANSACTION, missing))

    async def _on_not_found(self, peer: Peer, message: NotFound) -> None:
        if message.kind is InventoryKind.BLOCK:
            for block_hash in message.hashes:
                peer.block_requests.answer(block_hash, None)
        else:
            peer.tx_requested.difference_update(message.hashes)

    # -- blocks: gossip -----------------------------------------------------------------------

    async def _on_new_block_hashes(self, peer: Peer, message: NewBlockHashes) -> None:
        blocks = message.blocks
        for announced in blocks:
            peer.known_blocks.add(announced.block_hash)
        status = peer.status
        best = max(blocks, key=lambda b: b.height, default=None)
        if status is not None and best is not None and best.height > status.head_height:
            peer.status = Status(
                status.chain_id,
                status.genesis_hash,
                best.block_hash,
                best.height,
                status.total_work,
                status.listen_port,
            )
        if best is not None and best.height > self._head[1] + ORPHAN_WALK_BACK:
            self._consider_sync(peer)
            return
        wanted = [b.block_hash for b in blocks if b.block_hash not in self._fetching]
        if wanted and peer.fetches < FETCHES_PER_PEER:  # beyond: sync or a later tip brings them
            self._start_fetch(peer, wanted)

    def _start_fetch(
        self, peer: Peer, hashes: Sequence[bytes], expected_height: int | None = None
    ) -> None:
        """Fetch and import ``hashes`` from ``peer`` in a task of its own (counted at once, so
        that at most :data:`FETCHES_PER_PEER` run per peer)."""
        peer.fetches += 1
        self._spawn(self._fetch_and_import(peer, hashes, expected_height))

    async def _fetch_and_import(
        self, peer: Peer, hashes: Sequence[bytes], expected_height: int | None
    ) -> None:
        """Fetch announced blocks we lack from ``peer`` and import them; walk back to a missing
        parent (a few blocks) or start a sync."""
        try:
            await self._fetch_and_import_from(peer, hashes, expected_height)
        finally:
            peer.fetches -= 1

    async def _fetch_and_import_from(
        self, peer: Peer, hashes: Sequence[bytes], expected_height: int | None
    ) -> None:
        unknown = await self._call(self.access.missing, hashes)
        if not unknown:
            return
        self._fetching.update(unknown)
        try:
            blocks = await self._request_blocks(peer, unknown)
        finally:
            self._fetching.difference_update(unknown)
        for block in blocks:
            if block is None:
                continue
            height = block.header.height
            if expected_height is not None and height != expected_height:
                await self._punish(
                    peer, Misbehaviour.PROTOCOL_VIOLATION, "a parent at a wrong height"
                )
                return
            result = await self._import(peer, block)
            if result is None or result.status is not ImportStatus.ORPHAN:
                continue
            parent = block.header.parent_hash
            if height > self._head[1] + ORPHAN_WALK_BACK:
                self._consider_sync(peer)
            elif (
                height - 1 > self._head[1] - WALK_BACK_DEPTH  # a short side branch: walk back
                and parent not in self._fetching
                and peer.fetches < FETCHES_PER_PEER
            ):
                self._start_fetch(peer, [parent], height - 1)

    async def _request_blocks(self, peer: Peer, hashes: Sequence[bytes]) -> list[Block | None]:
        """Ask ``peer`` for blocks; each is the block, or None (not found, timed out, gone).
        A hash already asked of this peer by another request shares that request's answer."""
        assert self._loop is not None
        waiters, ours = peer.block_requests.register(hashes, self._loop)
        if ours:
            peer.send(GetBlocks(tuple(ours)))
        try:
            # asyncio.wait, not gather: cancelling this request must not cancel shared answers.
            _, pending = await asyncio.wait(waiters, timeout=REQUEST_TIMEOUT_S)
            if pending:
                for block_hash in ours:
                    peer.gave_up.add(block_hash)
                await self._punish(peer, Misbehaviour.TIMEOUT, "GetBlocks not answered")
        finally:
            peer.block_requests.release(ours)
        return [w.result() if w.done() and not w.cancelled() else None for w in waiters]

    async def _on_blocks(self, peer: Peer, message: Blocks) -> None:
        unasked = 0
        for block in message.blocks:
            self.counters.blocks_received += 1
            if not peer.block_requests.answer(block.block_hash, block):
                # a reply that came after we gave up on the request is no offence
                unasked += block.block_hash not in peer.gave_up
                continue
            peer.known_blocks.add(block.block_hash)
            peer.blocks_served += 1
        if unasked:  # one penalty per message: a late reply is one race, not many
            await self._punish(peer, Misbehaviour.UNSOLICITED, f"{unasked} blocks not asked for")

    async def _import(self, peer: Peer, block: Block) -> ImportResult | None:
        """Import one block from ``peer``; punish it if the block is invalid. None if not
        imported (invalid or undecided)."""
        assert self._import_lock is not None
        async with self._import_lock:
            try:
                result = await self._call(self.access.import_block, block)
            except BadTimestamp as exc:  # honest clocks drift: not a ban
                await self._punish(peer, Misbehaviour.PROTOCOL_VIOLATION, f"block: {exc}")
                return None
            except InvalidBlock as exc:
                await self._punish(
                    peer, Misbehaviour.INVALID_BLOCK, f"block {block.block_hash.hex()[:16]}: {exc}"
                )
                return None
            except ExecutionUndecided as exc:
                log.warning("block %s undecided: %s", block.block_hash.hex()[:16], exc)
                return None
        if result.status is ImportStatus.IMPORTED:
            self.counters.blocks_imported += len(result.connected)
            self.peers.reward(peer.node_id)
            self._announce_stored(result, peer)
        return result

    def _announce_stored(self, result: ImportResult, source: Peer | None) -> None:
        """Announce newly stored blocks to every peer not known to have them."""
        self._spawn(self._refresh_head())
        if not result.connected:
            return
        self._spawn(self._announce_blocks(result.connected, source))

    async def _refresh_head(self) -> None:
        self._head = await self._call(self.access.head)

    async def _announce_blocks(self, hashes: Sequence[bytes], source: Peer | None) -> None:
        headers = [h for h in [await self._call(self.access.header, x) for x in hashes] if h]
        entries = tuple(AnnouncedBlock(h.block_hash, h.height) for h in headers)
        for start in range(0, len(entries), MAX_ANNOUNCED_BLOCKS):
            batch = entries[start : start + MAX_ANNOUNCED_BLOCKS]
            for peer in list(self._connected.values()):
                fresh = tuple(e for e in batch if e.block_hash not in peer.known_blocks)
                if peer is source or not fresh or peer.status is None:
                    continue
                for entry in fresh:
                    peer.known_blocks.add(entry.block_hash)
                if not peer.send(NewBlockHashes(fresh)):
                    self._spawn(self._close(peer, DisconnectReason.TIMEOUT, "too slow"))

    # -- blocks: headers-first sync -----------------------------------------------------------

    def _consider_sync(self, peer: Peer | None = None) -> None:
        """Start a sync from the best candidate if none is running: the peer claiming the most
        work among those ahead of us (more work, or a higher head) and not resting after a sync
        that failed. ``peer`` is the one whose news prompted the call (for the log only)."""
        if self._syncing is not None:
            return
        _, our_height, our_work = self._head
        now = time.monotonic()
        candidates = [
            p
            for p in self._connected.values()
            if p.status is not None
            and (p.status.total_work > our_work or p.status.head_height > our_height)
            and now >= self._sync_rests.get(p.node_id, (0.0, 0))[0]
        ]
        # A lighter peer may still hold blocks we lack (a side branch): its tips bring those.
        if not candidates:
            return
        best = max(candidates, key=_claim)
        self._syncing = best
        self._spawn(self._sync(best))

    async def _sync(self, peer: Peer) -> None:
        self.counters.syncs += 1
        started, imported, failed = time.monotonic(), 0, True
        log.info("syncing from %s (height %s)", peer.label, peer.status and peer.status.head_height)
        try:
            imported, failed = await self._sync_from(peer)
        except (asyncio.CancelledError, TransportError):
            pass
        finally:
            if failed or not imported:
                # Not again at once: a peer whose claim brought nothing (a lie, or work on side
                # branches its tips will bring) would be asked in a loop. The rest doubles with
                # each such sync (kept by node id, across reconnections); the maintenance tick
                # retries later.
                self._rest(peer.node_id)
            else:
                self._sync_rests.pop(peer.node_id, None)
            if self._syncing is peer:
                self._syncing = None
        log.info(
            "sync from %s: %d blocks in %.1f s", peer.label, imported, time.monotonic() - started
        )
        await self._refresh_head()
        self._consider_sync()  # someone may be ahead still (the peer moved on, or is heavier)

    def _rest(self, node_id: Address) -> None:
        """Do not sync from ``node_id`` for a while: 10 s, doubling per fruitless sync, up to
        :data:`SYNC_REST_MAX_S`."""
        _, fruitless = self._sync_rests.pop(node_id, (0.0, 0))
        delay = min(SYNC_REST_MAX_S, SYNC_REST_S * 2**fruitless)
        self._sync_rests[node_id] = (time.monotonic() + delay, fruitless + 1)
        while len(self._sync_rests) > MAX_SYNC_RESTS:
            self._sync_rests.pop(next(iter(self._sync_rests)))

    async def _sync_from(self, peer: Peer) -> tuple[int, bool]:
        """Headers from ``peer`` in batches, bodies from every able peer, imported in order;
        the number of blocks imported, and whether the sync failed."""
        session = _SyncSession(self, peer, await self._call(self.access.locator))
        self._session = session
        try:
            return await session.run(), bool(session.failure)
        finally:
            self._session = None
            session.close()
            if session.failure:
                log.warning("sync from %s stopped: %s", peer.label, session.failure)

    async def _request_headers(
        self, peer: Peer, locator: Sequence[bytes]
    ) -> tuple[Header, ...] | None:
        assert self._loop is not None
        peer.headers_waiter = self._loop.create_future()
        peer.send(GetHeaders(tuple(locator[:MAX_LOCATOR_HASHES]), max_count=MAX_HEADERS))
        try:
            return await asyncio.wait_for(peer.headers_waiter, REQUEST_TIMEOUT_S)
        except TimeoutError:
            await self._punish(peer, Misbehaviour.TIMEOUT, "GetHeaders not answered")
            return None
        except asyncio.CancelledError:
            if peer.connection_id in self._connected:
                raise
            return None
        finally:
            peer.headers_waiter = None

    # -- transactions -------------------------------------------------------------------------

    def _remember_tx(self, tx: Transaction) -> None:
        self._tx_cache[tx.tx_id] = tx
        self._tx_cache.move_to_end(tx.tx_id)
        while len(self._tx_cache) > TX_CACHE_SIZE:
            self._tx_cache.popitem(last=False)

    async def _on_new_transaction_hashes(self, peer: Peer, message: NewTransactionHashes) -> None:
        tx_ids = message.tx_ids
        for tx_id in tx_ids:
            peer.known_txs.add(tx_id)
        wanted = tuple(i for i in tx_ids if i not in self._tx_cache and i not in peer.tx_requested)
        if wanted and len(peer.tx_requested) + len(wanted) <= MAX_REQUESTED_TXS:
            peer.tx_requested.update(wanted)
            if not peer.send(GetTransactions(wanted)):
                peer.tx_requested.difference_update(wanted)

    async def _on_transactions(self, peer: Peer, message: Transactions) -> None:
        txs = message.transactions
        asked = [tx for tx in txs if tx.tx_id in peer.tx_requested]
        if len(asked) < len(txs):
            await self._punish(peer, Misbehaviour.UNSOLICITED, "transactions not asked for")
        peer.tx_requested.difference_update(tx.tx_id for tx in asked)
        fresh = [tx for tx in asked if tx.tx_id not in self._tx_cache]
        if not fresh:
            return
        self.counters.transactions_received += len(fresh)
        for tx in fresh:
            peer.known_txs.add(tx.tx_id)
        statuses = await self._call(self.access.submit_transactions, fresh)
        # A refusal costs the peer nothing: most are stateful and honest (a nonce used
        # meanwhile, our pool full, a fee below ours), and undecodable ones were refused with
        # the message. Only admitted or known transactions are remembered and served.
        for tx, status in zip(fresh, statuses, strict=False):
            if status != "rejected":
                self._remember_tx(tx)

    async def _announce_pending(self, peer: Peer) -> None:
        """Tell a new peer what our mempools hold: the periodic announcements carry only what is
        new, and a sender's later transactions are stuck behind one a peer never heard of."""
        try:
            txs = await self._call(self.access.pending_transactions)
        except QoinError as exc:
            log.info("could not read the pending transactions: %s", exc)
            return
        for tx in txs:
            self._remember_tx(tx)
        self._announce_transactions(peer, txs)

    def _announce_transactions(self, peer: Peer, txs: Sequence[Transaction]) -> None:
        fresh = tuple(tx.tx_id for tx in txs if tx.tx_id not in peer.known_txs)
        for start in range(0, len(fresh), MAX_ANNOUNCED_TRANSACTIONS):
            batch = fresh[start : start + MAX_ANNOUNCED_TRANSACTIONS]
            for tx_id in batch:
                peer.known_txs.add(tx_id)
            peer.send(NewTransactionHashes(batch))

    async def _gossip_transactions(self) -> None:
        """Announce what the execution clients admitted since the last poll."""
        txs = await self._call(self.access.new_transactions)
        for tx in txs:
            self._remember_tx(tx)
        if not txs:
            return
        for peer in list(self._connected.values()):
            if peer.status is not None:
                self._announce_transactions(peer, txs)

    # -- upkeep -------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Dial, ping, drop the silent, retry a sync, poll the mempools: every
        :data:`MAINTAIN_INTERVAL_S`."""
        while True:
            self._consider_sync()
            for address in self.peers.want_outbound():
                self._spawn(self._dial(address))
            now = time.monotonic()
            for peer in list(self._connected.values()):
                idle = now - peer.last_received
                if idle > 2 * PING_INTERVAL_S:
                    self._spawn(self._close(peer, DisconnectReason.TIMEOUT, "silent"))
                elif idle > PING_INTERVAL_S and not peer.pinged:
                    peer.pinged = True
                    peer.send(Ping(secrets.randbits(64)))
            try:
                await self._gossip_transactions()
            except QoinError as exc:
                log.warning("could not read the execution clients' new transactions: %s", exc)
            await asyncio.sleep(MAINTAIN_INTERVAL_S)

    def _load_bans(self) -> None:
        if self.datadir is None:
            return
        path = self.datadir / BANS_FILE
        try:
            with path.open("rb") as file:
                text = file.read(MAX_BANS_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise P2PError(f"cannot read {path}: {exc}") from exc
        if len(text) > MAX_BANS_FILE_BYTES:
            raise P2PError(f"{path} is larger than {MAX_BANS_FILE_BYTES} bytes")
        try:
            restored = self.peers.restore_bans(bans_from_json(text.decode(), time.time()))
        except (BanListError, UnicodeDecodeError) as exc:
            raise P2PError(f"{path} is damaged ({exc}); remove it to start without bans") from exc
        if restored:
            log.info("restored %d p2p bans from %s", restored, path)

    def _save_bans(self) -> None:
        if self.datadir is None:
            return
        path = self.datadir / BANS_FILE
        try:
            write_atomically(path, bans_to_json(self.peers.bans(), time.time()).encode())
        except OSError as exc:
            log.warning("could not save the p2p bans to %s: %s", path, exc)


class _SyncSession:
    """One headers-first sync from one peer: a header task fills a queue (checked headers, at
    most :data:`DOWNLOAD_AHEAD` ahead), a :class:`_Download` fetches their bodies, and
    :meth:`run` imports them in order."""

    def __init__(self, service: P2PService, peer: Peer, locator: list[bytes]) -> None:
        self.service = service
        self.peer = peer
        self.locator = locator
        self.queue: deque[Header] = deque()
        self.more = asyncio.Event()
        """Set when headers were queued or the header task ended."""
        self.space = asyncio.Event()
        """Set when the import cursor moved (the header task may fetch more)."""
        self.failure = ""
        self.download = _Download(service, peer)
        self.header_task = asyncio.create_task(self._fetch_headers())
        self.header_task.add_done_callback(lambda _: self.more.set())

    async def _fetch_headers(self) -> None:
        service, peer = self.service, self.peer
        parent: Header | None = None
        while peer.connection_id in service._connected:
            batch = await service._request_headers(peer, self.locator)
            if batch is None:
                self.failure = "headers not served"
                return
            if not batch:
                return
            service.counters.headers_received += len(batch)
            # A reply continues the previous batch, or (the first) follows a locator hash: a
            # peer cannot hold the sync by sending headers we have over and over.
            follows = (
                batch[0].parent_hash == parent.block_hash
                if parent is not None
                else batch[0].parent_hash in self.locator
            )
            if not follows:
                self.failure = "a Headers reply that does not follow the request"
                await service._punish(peer, Misbehaviour.PROTOCOL_VIOLATION, self.failure)
                return
            if parent is None:
                parent = await service._call(service.access.header, batch[0].parent_hash)
            try:
                await service._call(check_headers, service.access.genesis, batch, parent)
            except HeadersNotConnected as exc:
                self.failure = str(exc)
                await service._punish(peer, Misbehaviour.PROTOCOL_VIOLATION, str(exc))
                return
            except InvalidBlock as exc:
                self.failure = str(exc)
                await service._punish(peer, Misbehaviour.INVALID_HEADER, str(exc))
                return
            parent = batch[-1]
            self.queue.extend(batch)
            self.more.set()
            while len(self.queue) > DOWNLOAD_AHEAD:
                self.space.clear()
                await self.space.wait()
            if len(batch) < MAX_HEADERS:
                return
            self.locator = [batch[-1].block_hash, *self.locator][:MAX_LOCATOR_HASHES]

    async def run(self) -> int:
        """Import the queued headers' blocks in order until the headers end or a block fails."""
        service, imported = self.service, 0
        while True:
            if not self.queue:
                if self.header_task.done():
                    return imported
                self.more.clear()
                await self.more.wait()
                continue
            self.download.want(list(self.queue)[:DOWNLOAD_AHEAD])
            header = self.queue[0]
            block = await self.download.get(header.block_hash)
            if block is None:
                self.failure = f"no peer served the block at height {header.height}"
                return imported
            self.queue.popleft()
            self.space.set()
            source = self.download.source(header.block_hash) or self.peer
            if await service._call(service.access.has_block, header.block_hash):
                continue
            if await service._import(source, block) is None:
                self.failure = f"the block at height {header.height} was not imported"
                return imported
            imported += 1

    def close(self) -> None:
        self.header_task.cancel()
        self.download.cancel()


class _Download:
    """Parallel block download for one sync: requests of :data:`BLOCKS_PER_REQUEST` hashes to
    every peer whose head is high enough, at most :data:`REQUESTS_PER_PEER` each; what a peer
    does not serve goes to the sync peer."""

    def __init__(self, service: P2PService, sync_peer: Peer) -> None:
        self.service = service
        self.sync_peer = sync_peer
        self.results: dict[bytes, asyncio.Future[Block | None]] = {}
        self.sources: dict[bytes, Peer] = {}
        self.busy: dict[int, int] = {}
        self.pending: deque[Header] = deque()
        self.requests = 0
        """``GetBlocks`` sent so far."""
        self.buffered_bytes = 0
        """Bytes of downloaded blocks not yet taken by the import."""
        self.sync_peer_only: set[bytes] = set()
        """Blocks another peer did not serve: asked of the sync peer only."""
        self.tasks: set[asyncio.Task[None]] = set()

    def want(self, headers: Sequence[Header]) -> None:
        """Make sure every header in ``headers`` is being fetched (in order); start requests."""
        assert self.service._loop is not None
        for header in headers:
            if header.block_hash not in self.results:
                self.results[header.block_hash] = self.service._loop.create_future()
                self.pending.append(header)
        self._dispatch()

    def _able(self) -> list[Peer]:
        peers = [self.sync_peer] + [
            p for p in self.service._connected.values() if p is not self.sync_peer
        ]
        return [p for p in peers if p.connection_id in self.service._connected]

    def _dispatch(self) -> None:
        if self.buffered_bytes > MAX_BUFFERED_BYTES:
            return  # the import catches up first (get() dispatches again)
        for peer in self._able():
            while self.pending and self.busy.get(peer.connection_id, 0) < REQUESTS_PER_PEER:
                status = peer.status
                batch: list[Header] = []
                # The first requests are small (1, 2, 4, ...) so that the first import starts
                # before a whole 16-block reply is sent, decrypted and decoded.
                size = min(BLOCKS_PER_REQUEST, 1 << min(self.requests, 8))
                while self.pending and len(batch) < size:
                    header = self.pending[0]
                    if peer is not self.sync_peer and (
                        status is None
                        or status.head_height < header.height
                        or header.block_hash in self.sync_peer_only
                    ):
                        break
                    batch.append(self.pending.popleft())
                if not batch:
                    break
                self.requests += 1
                self.busy[peer.connection_id] = self.busy.get(peer.connection_id, 0) + 1
                task = asyncio.create_task(self._fetch(peer, batch))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _fetch(self, peer: Peer, batch: list[Header]) -> None:
        try:
            blocks = await self.service._request_blocks(peer, [h.block_hash for h in batch])
        finally:
            self.busy[peer.connection_id] -= 1
        retry: list[Header] = []
        for header, block in zip(batch, blocks, strict=True):
            future = self.results[header.block_hash]
            if block is not None and not future.done():
                self.sources[header.block_hash] = peer
                self.buffered_bytes += len(block.encode())
                future.set_result(block)
            elif block is None and peer is self.sync_peer:
                if not future.done():
                    future.set_result(None)
            elif block is None:
                retry.append(header)
        if retry:  # another peer lacked them: the sync peer has them (its headers named them)
            self.sync_peer_only.update(header.block_hash for header in retry)
            self.pending.extendleft(reversed(retry))
        if self.sync_peer.connection_id not in self.service._connected:
            self.abort()
        self._dispatch()

    async def get(self, block_hash: bytes) -> Block | None:
        """The block, once downloaded; None if no peer served it."""
        block = await self.results[block_hash]
        del self.results[block_hash]
        if block is not None:
            self.buffered_bytes -= len(block.encode())
            self._dispatch()
        return block

    def abort(self) -> None:
        """The sync peer is gone: every block not yet downloaded will not come."""
        for future in self.results.values():
            if not future.done():
                future.set_result(None)

    def source(self, block_hash: bytes) -> Peer | None:
        """The peer that served a block (to blame if it is invalid)."""
        return self.sources.pop(block_hash, None)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


class _ProtocolBreach(QoinError):
    """A well-formed message the protocol does not allow here."""


_HANDLERS: dict[type[Any], Callable[[P2PService, Peer, Any], Coroutine[Any, Any, None]]] = {
    Ping: P2PService._on_ping,
    Pong: P2PService._on_pong,
    Disconnect: P2PService._on_disconnect,
    NewBlockHashes: P2PService._on_new_block_hashes,
    GetHeaders: P2PService._on_get_headers,
    Headers: P2PService._on_headers,
    GetBlocks: P2PService._on_get_blocks,
    Blocks: P2PService._on_blocks,
    NewTransactionHashes: P2PService._on_new_transaction_hashes,
    GetTransactions: P2PService._on_get_transactions,
    Transactions: P2PService._on_transactions,
    NotFound: P2PService._on_not_found,
}
"""What handles each message after the first (a second Status is a protocol breach)."""

_REFUSALS: dict[Refusal | None, DisconnectReason] = {
    Refusal.SELF: DisconnectReason.SELF_CONNECTION,
    Refusal.WRONG_NODE_ID: DisconnectReason.REQUESTED,
    Refusal.BANNED: DisconnectReason.BANNED,
    Refusal.HOST_BANNED: DisconnectReason.BANNED,
    Refusal.DUPLICATE: DisconnectReason.DUPLICATE_CONNECTION,
    Refusal.INBOUND_FULL: DisconnectReason.TOO_MANY_PEERS,
    Refusal.OUTBOUND_FULL: DisconnectReason.TOO_MANY_PEERS,
}


def _claim(peer: Peer) -> tuple[int, int]:
    """What a peer claims to have: total work, then head height."""
    status = peer.status
    return (0, 0) if status is None else (status.total_work, status.head_height)


async def _say_goodbye(channel: SecureChannel, reason: DisconnectReason, text: str) -> None:
    """Send ``Disconnect`` (best effort) and close."""
    with contextlib.suppress(TransportError, TimeoutError, DecodeError):
        await asyncio.wait_for(
            channel.send(encode_message(Disconnect(reason, _clip(text)))), timeout=2
        )
    await channel.close()


def _clip(text: str) -> str:
    """``text`` cut to fit a ``Disconnect`` (UTF-8 bytes, whole characters)."""
    return text.encode()[:MAX_DISCONNECT_TEXT].decode(errors="ignore")
