"""Peer sessions and request bookkeeping: each connected peer's channel and queues, what it knows,
what we asked it for; scoring, closing and asking the connected peers (``docs/spec/p2p.md`` §10).

A session writes from its *outbox* (one writer task) and reads in the service's reader task. The
reader never waits on the chain: messages whose handling needs the chain worker go to the
session's *backlog*, worked through in order by a task of their own, bounded in messages and
bytes (when it is full, the reader waits for room: a peer cannot queue work without bound). Our
own slowness (a long import on the worker) thus delays only our answers, never our reading of
the peer's answers. A request's timer starts when the request has been written to the
peer, not when it was queued behind other messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qoin.chain.block import Block, Header
from qoin.crypto.address import Address
from qoin.encoding.codec import DecodeError
from qoin.p2p.addresses import PeerAddress
from qoin.p2p.messages import (
    MAX_DISCONNECT_TEXT,
    MAX_LOCATOR_HASHES,
    Disconnect,
    DisconnectReason,
    GetBlocks,
    GetHeaders,
    Headers,
    Message,
    Status,
    encode_message,
)
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.peers import PeerManager
from qoin.p2p.transport import SecureChannel, TransportError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 20.0
"""How long a ``GetHeaders`` or ``GetBlocks`` may stay unanswered once written to the peer, and
how long it may wait to be written (a peer that does not read what we send is slow)."""
OUTBOX_SIZE = 256
"""Messages queued for one peer before it counts as too slow and is dropped."""
KNOWN_PER_PEER = 16_384
"""Block and transaction hashes remembered per peer as known to it (not re-announced)."""
GAVE_UP_PER_PEER = 1024
"""Block hashes whose request to a peer timed out: their late arrival is no offence."""
BACKLOG_MESSAGES = 8
"""Messages of one peer waiting for the chain worker; the peer's reader waits beyond."""
BACKLOG_BYTES = 17 * 1024 * 1024
"""Bytes of those messages (one message of the largest frame always fits)."""

Job = Callable[[], Awaitable[None]]


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


class Backlog:
    """One peer's messages that wait on the chain, handled in order by :meth:`run`; at most
    :data:`BACKLOG_MESSAGES` and :data:`BACKLOG_BYTES` (:meth:`put` waits for room). Once closed
    (:meth:`close`: the peer is gone) it holds nothing and takes nothing."""

    def __init__(self) -> None:
        self._jobs: deque[tuple[Job, int]] = deque()
        self._bytes = 0
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    async def put(self, job: Job, size: int) -> None:
        """Queue ``job`` (for a message of ``size`` bytes) once there is room for it; drop it if
        the backlog is closed meanwhile (a reader waiting for room must not wait forever)."""
        while not self._closed and (
            self._jobs
            and (len(self._jobs) >= BACKLOG_MESSAGES or self._bytes + size > BACKLOG_BYTES)
        ):
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            return
        self._jobs.append((job, size))
        self._bytes += size
        self._changed.set()

    async def run(self) -> None:
        """Run the queued jobs in order, forever (cancelled when the peer goes)."""
        while True:
            while not self._jobs:
                self._changed.clear()
                await self._changed.wait()
            job, size = self._jobs[0]
            try:
                await job()
            finally:
                if self._jobs:  # not cleared by close()
                    self._jobs.popleft()
                    self._bytes -= size
                self._changed.set()

    def close(self) -> None:
        """The peer is gone: forget the queued messages, and wake a :meth:`put` waiting for room
        (it returns without queuing)."""
        self._closed = True
        self._jobs.clear()
        self._bytes = 0
        self._changed.set()


@dataclass(eq=False)
class PeerSession:
    """One connected peer: its channel, what it told us, and what we asked it for."""

    channel: SecureChannel
    address: PeerAddress
    inbound: bool
    connection_id: int
    status: Status | None = None
    known_blocks: BoundedSet = field(default_factory=lambda: BoundedSet(KNOWN_PER_PEER))
    known_txs: BoundedSet = field(default_factory=lambda: BoundedSet(KNOWN_PER_PEER))
    outbox: asyncio.Queue[tuple[bytes, asyncio.Future[None] | None]] = field(
        default_factory=lambda: asyncio.Queue(OUTBOX_SIZE)
    )
    """Encoded messages to write, each with the future to resolve once it is written (requests)."""
    backlog: Backlog = field(default_factory=Backlog)
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
    """Its writer and backlog tasks, cancelled when it goes."""

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
            self.outbox.put_nowait((payload, None))
        except asyncio.QueueFull:
            return False
        return True

    def send_request(self, message: Message) -> asyncio.Future[None] | None:
        """Queue a request; the future resolves once it is written (None if the queue is full)."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self.outbox.put_nowait((encode_message(message), written))
        except asyncio.QueueFull:
            return None
        return written

    async def write(self) -> None:
        """Write the outbox to the channel until the channel fails (the writer task)."""
        with contextlib.suppress(TransportError):
            while True:
                payload, written = await self.outbox.get()
                await self.channel.send(payload)
                if written is not None and not written.done():
                    written.set_result(None)

    def stop(self, spare: asyncio.Task[Any] | None = None) -> None:
        """The peer is gone: cancel its tasks (but ``spare``) and every request waiting on it."""
        if self.headers_waiter is not None and not self.headers_waiter.done():
            self.headers_waiter.cancel()
        self.block_requests.cancel_all()
        self.backlog.close()
        for task in self.tasks:
            if task is not spare:
                task.cancel()
        while not self.outbox.empty():
            _, written = self.outbox.get_nowait()
            if written is not None:
                written.cancel()


@dataclass
class Counters:
    """What the service has done, for the status RPC and the devnet view."""

    blocks_received: int = 0
    blocks_imported: int = 0
    headers_received: int = 0
    transactions_received: int = 0
    syncs: int = 0
    banned: int = 0
    handshakes_refused: int = 0
    """Inbound connections closed before their handshake (no slot, rate or cap, §11)."""


class ConnectedPeers:
    """The sessions of the connected peers by connection id, and what is done to them: scored,
    closed, asked for headers and blocks. ``on_ban`` runs after a peer is banned (to save the
    bans); ``on_close`` callbacks run after a peer is closed."""

    def __init__(
        self, manager: PeerManager, counters: Counters, on_ban: Callable[[], None]
    ) -> None:
        self.manager = manager
        self.counters = counters
        self._on_ban = on_ban
        self._sessions: dict[int, PeerSession] = {}
        self.on_close: list[Callable[[PeerSession], None]] = []

    def add(self, peer: PeerSession) -> None:
        self._sessions[peer.connection_id] = peer

    def get(self, connection_id: int) -> PeerSession | None:
        return self._sessions.get(connection_id)

    def sessions(self) -> list[PeerSession]:
        """The connected peers, in the order they connected (a copy: safe to close while
        iterating)."""
        return list(self._sessions.values())

    def is_connected(self, peer: PeerSession) -> bool:
        return self._sessions.get(peer.connection_id) is peer

    async def close(self, peer: PeerSession, reason: DisconnectReason, text: str) -> None:
        """Forget a peer and close its channel (idempotent); ``text`` non-empty sends it in a
        ``Disconnect`` first."""
        if self._sessions.pop(peer.connection_id, None) is None:
            return
        self.manager.on_disconnected(peer.connection_id)
        # The closing may run in one of the peer's own tasks (its backlog bans it): that one is
        # cancelled last, or its cancellation would cut the goodbye and the closing short.
        current = asyncio.current_task()
        own = current if current in peer.tasks else None
        peer.stop(spare=own)
        if text:
            await say_goodbye(peer.channel, reason, text)
        await peer.channel.close()
        for callback in self.on_close:
            callback(peer)
        log.info("peer %s disconnected%s", peer.label, f" ({text})" if text else "")
        if own is not None:
            own.cancel()

    async def punish(self, peer: PeerSession, kind: Misbehaviour, detail: str) -> None:
        """Score a peer's misbehaviour; a banned peer is disconnected at once."""
        if self.manager.is_banned(peer.node_id):
            return  # already banned (a peer that left is still scored: it is remembered)
        log.warning("peer %s: %s: %s", peer.label, kind.value, detail)
        if self.manager.penalise(peer.node_id, kind, detail):
            self.counters.banned += 1
            log.warning("peer %s banned: %s", peer.label, detail)
            self._on_ban()
            await self.close(peer, DisconnectReason.BANNED, f"{kind.value}: {detail}")

    def reward(self, peer: PeerSession) -> None:
        """The peer sent something useful."""
        self.manager.reward(peer.node_id)

    async def _written(self, peer: PeerSession, request: Message, what: str) -> bool:
        """Queue ``request`` and wait until it is written; False if the peer is gone or does not
        take it within :data:`REQUEST_TIMEOUT_S` (then it is punished for a timeout)."""
        written = peer.send_request(request)
        if written is not None:
            await asyncio.wait([written], timeout=REQUEST_TIMEOUT_S)
            if written.done() and not written.cancelled():
                return True
            written.cancel()
        if self.is_connected(peer):
            await self.punish(peer, Misbehaviour.TIMEOUT, f"{what} not taken: the peer is slow")
        return False

    async def request_blocks(
        self, peer: PeerSession, hashes: Sequence[bytes]
    ) -> list[Block | None]:
        """Ask ``peer`` for blocks; each is the block, or None (not found, timed out, gone).
        A hash already asked of this peer by another request shares that request's answer."""
        waiters, ours = peer.block_requests.register(hashes, asyncio.get_running_loop())
        try:
            written = not ours or await self._written(peer, GetBlocks(tuple(ours)), "GetBlocks")
            # asyncio.wait, not gather: cancelling this request must not cancel shared answers
            if written and (await asyncio.wait(waiters, timeout=REQUEST_TIMEOUT_S))[1]:
                written = False
                await self.punish(peer, Misbehaviour.TIMEOUT, "GetBlocks not answered")
            if not written:
                for block_hash in ours:
                    peer.gave_up.add(block_hash)
        finally:
            peer.block_requests.release(ours)
        return [w.result() if w.done() and not w.cancelled() else None for w in waiters]

    async def request_headers(
        self, peer: PeerSession, locator: Sequence[bytes], max_count: int
    ) -> tuple[Header, ...] | None:
        """Ask ``peer`` for at most ``max_count`` headers after ``locator``; None if it does not
        answer in time (punished) or is gone."""
        waiter = peer.headers_waiter = asyncio.get_running_loop().create_future()
        request = GetHeaders(tuple(locator[:MAX_LOCATOR_HASHES]), max_count=max_count)
        try:
            if not await self._written(peer, request, "GetHeaders"):
                return None
            return await asyncio.wait_for(waiter, REQUEST_TIMEOUT_S)
        except TimeoutError:
            await self.punish(peer, Misbehaviour.TIMEOUT, "GetHeaders not answered")
            return None
        except asyncio.CancelledError:
            if self.is_connected(peer):
                raise
            return None
        finally:
            peer.headers_waiter = None

    async def answer_headers(self, peer: PeerSession, message: Headers) -> None:
        """A ``Headers`` message: the answer to our request, or unsolicited."""
        waiter = peer.headers_waiter
        if waiter is None or waiter.done():
            await self.punish(peer, Misbehaviour.UNSOLICITED, "headers not asked for")
        else:
            waiter.set_result(message.headers)


async def say_goodbye(channel: SecureChannel, reason: DisconnectReason, text: str) -> None:
    """Send ``Disconnect`` (best effort) and close."""
    with contextlib.suppress(TransportError, TimeoutError, DecodeError):
        await asyncio.wait_for(
            channel.send(encode_message(Disconnect(reason, _clip(text)))), timeout=2
        )
    await channel.close()


def _clip(text: str) -> str:
    """``text`` cut to fit a ``Disconnect`` (UTF-8 bytes, whole characters)."""
    return text.encode()[:MAX_DISCONNECT_TEXT].decode(errors="ignore")
