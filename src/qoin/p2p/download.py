"""Headers-first sync over the network: which peer to sync from, the sync session (headers in
batches, checked before any body is asked for), the parallel block download, and answering
``GetHeaders`` (``docs/spec/p2p.md`` §10.3). The parts that need no network are in
:mod:`qoin.p2p.sync`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from qoin.chain.block import Block, Header
from qoin.chain.chain import ImportStatus, clock_ms
from qoin.chain.validation import BadTimestamp, HeaderAncestry, InvalidBlock
from qoin.crypto.address import Address
from qoin.p2p.access import ChainWorker
from qoin.p2p.blocks import BlockGossip
from qoin.p2p.messages import MAX_HEADERS, MAX_LOCATOR_HASHES, GetHeaders, Headers, split_headers
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.session import ConnectedPeers, Counters, PeerSession
from qoin.p2p.sync import HeadersNotConnected, check_headers
from qoin.p2p.transport import TransportError

log = logging.getLogger(__name__)

BLOCKS_PER_REQUEST = 16
"""Blocks asked for in one ``GetBlocks`` during sync (the first requests ask for 1, 2, 4, 8)."""
REQUESTS_PER_PEER = 4
"""``GetBlocks`` outstanding per peer during sync (4 x 16 = 64 blocks, within the 128 window)."""
DOWNLOAD_AHEAD = 512
"""Blocks downloaded ahead of the import cursor at most (bounds the memory sync uses)."""
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
"""Downloaded blocks waiting for their import during sync, in bytes: no more is asked for."""
SYNC_REST_S = 10.0
"""How long a peer a sync from which failed or brought nothing is not synced from again; doubled
for each such sync in a row."""
SYNC_REST_MAX_S = 600.0
MAX_SYNC_RESTS = 1024


async def answer_get_headers(chain: ChainWorker, peer: PeerSession, message: GetHeaders) -> None:
    """Send our canonical headers after the request's locator (one ``Headers`` message)."""
    headers = await chain.call(
        chain.access.headers_after, message.locator, message.stop_hash, message.max_count
    )
    peer.send(split_headers(headers)[0] if headers else Headers(()))


def _claim(peer: PeerSession) -> tuple[int, int]:
    """What a peer claims to have: total work, then head height."""
    status = peer.status
    return (0, 0) if status is None else (status.total_work, status.head_height)


class BlockSync:
    """Starts one sync at a time from the best candidate, and rests peers whose sync failed or
    brought nothing."""

    def __init__(
        self,
        peers: ConnectedPeers,
        chain: ChainWorker,
        counters: Counters,
        blocks: BlockGossip,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.peers = peers
        self.chain = chain
        self.counters = counters
        self.blocks = blocks
        self.spawn = spawn
        self.syncing: PeerSession | None = None
        """The sync peer, while a sync runs."""
        self._session: SyncSession | None = None
        self._rests: dict[Address, tuple[float, int]] = {}
        """Per node id: until when it is not synced from, and how many syncs from it in a row
        brought nothing (bounded: the oldest entries go first)."""
        peers.on_close.append(self._on_close)

    def _on_close(self, peer: PeerSession) -> None:
        if self._session is not None and self._session.peer is peer:
            self._session.download.abort()  # the sync ends; _sync then lets another start

    def consider(self) -> None:
        """Start a sync from the best candidate if none is running: the peer claiming the most
        work among those ahead of us (more work, or a higher head) and not resting after a sync
        that failed."""
        if self.syncing is not None:
            return
        _, our_height, our_work = self.blocks.head
        now = time.monotonic()
        candidates = [
            p
            for p in self.peers.sessions()
            if p.status is not None
            and (p.status.total_work > our_work or p.status.head_height > our_height)
            and now >= self._rests.get(p.node_id, (0.0, 0))[0]
        ]
        # A lighter peer may still hold blocks we lack (a side branch): its tips bring those.
        if not candidates:
            return
        best = max(candidates, key=_claim)
        self.syncing = best
        self.spawn(self._sync(best))

    async def _sync(self, peer: PeerSession) -> None:
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
                self._rests.pop(peer.node_id, None)
            if self.syncing is peer:
                self.syncing = None
        log.info(
            "sync from %s: %d blocks in %.1f s", peer.label, imported, time.monotonic() - started
        )
        await self.blocks.refresh_head()
        self.consider()  # someone may be ahead still (the peer moved on, or is heavier)

    def _rest(self, node_id: Address) -> None:
        """Do not sync from ``node_id`` for a while: 10 s, doubling per fruitless sync, up to
        :data:`SYNC_REST_MAX_S`."""
        _, fruitless = self._rests.pop(node_id, (0.0, 0))
        delay = min(SYNC_REST_MAX_S, SYNC_REST_S * 2**fruitless)
        self._rests[node_id] = (time.monotonic() + delay, fruitless + 1)
        while len(self._rests) > MAX_SYNC_RESTS:
            self._rests.pop(next(iter(self._rests)))

    async def _sync_from(self, peer: PeerSession) -> tuple[int, bool]:
        """Headers from ``peer`` in batches, bodies from every able peer, imported in order;
        the number of blocks imported, and whether the sync failed."""
        locator = await self.chain.call(self.chain.access.locator)
        session = SyncSession(self.peers, self.chain, self.counters, self.blocks, peer, locator)
        self._session = session
        try:
            return await session.run(), bool(session.failure)
        finally:
            self._session = None
            session.close()
            if session.failure:
                log.warning("sync from %s stopped: %s", peer.label, session.failure)


class SyncSession:
    """One headers-first sync from one peer: a header task fills a queue (checked headers, at
    most :data:`DOWNLOAD_AHEAD` ahead), a :class:`BlockDownload` fetches their bodies, and
    :meth:`run` imports them in order."""

    def __init__(
        self,
        peers: ConnectedPeers,
        chain: ChainWorker,
        counters: Counters,
        blocks: BlockGossip,
        peer: PeerSession,
        locator: list[bytes],
    ) -> None:
        self.peers = peers
        self.chain = chain
        self.counters = counters
        self.blocks = blocks
        self.peer = peer
        self.locator = locator
        self.queue: deque[Header] = deque()
        self.more = asyncio.Event()
        """Set when headers were queued or the header task ended."""
        self.space = asyncio.Event()
        """Set when the import cursor moved (the header task may fetch more)."""
        self.failure = ""
        self.download = BlockDownload(peers, peer)
        self.header_task = asyncio.create_task(self._fetch_headers())
        self.header_task.add_done_callback(lambda _: self.more.set())

    async def _fail(self, kind: Misbehaviour, reason: str) -> None:
        self.failure = reason
        await self.peers.punish(self.peer, kind, reason)

    async def _fetch_headers(self) -> None:
        peer, parent = self.peer, None
        checked: Sequence[Header] = ()  # the previous reply: the next one's unstored ancestors
        while self.peers.is_connected(peer):
            batch = await self.peers.request_headers(peer, self.locator, MAX_HEADERS)
            if batch is None:
                self.failure = "headers not served"
                return
            if not batch:
                return
            self.counters.headers_received += len(batch)
            # A reply continues the previous batch, or (the first) follows a locator hash: a
            # peer cannot hold the sync by sending headers we have over and over.
            follows = (
                batch[0].parent_hash == parent.block_hash
                if parent is not None
                else batch[0].parent_hash in self.locator
            )
            if not follows:
                reason = "a Headers reply that does not follow the request"
                await self._fail(Misbehaviour.PROTOCOL_VIOLATION, reason)
                return
            if parent is None:
                parent = await self.chain.call(self.chain.access.header, batch[0].parent_hash)
            try:
                header_of = HeaderAncestry(self.chain.access.header, checked).header
                await self.chain.call(
                    check_headers, self.chain.access.genesis, batch, parent, header_of, clock_ms()
                )
            except (HeadersNotConnected, BadTimestamp) as exc:  # not a ban: clocks drift
                await self._fail(Misbehaviour.PROTOCOL_VIOLATION, str(exc))
                return
            except InvalidBlock as exc:
                await self._fail(Misbehaviour.INVALID_HEADER, str(exc))
                return
            parent, checked = batch[-1], batch
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
        imported = 0
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
            if await self.chain.call(self.chain.access.has_block, header.block_hash):
                continue
            result = await self.blocks.import_block(source, block)
            if result is None:
                self.failure = f"the block at height {header.height} was not imported"
                return imported
            # Only stored blocks count: a block kept aside (its side branch not worth executing
            # yet) is not progress, so that a sync bringing only such blocks rests its peer.
            if result.status is ImportStatus.IMPORTED:
                imported += 1

    def close(self) -> None:
        self.header_task.cancel()
        self.download.cancel()


class BlockDownload:
    """Parallel block download for one sync: requests of :data:`BLOCKS_PER_REQUEST` hashes to
    every peer whose head is high enough, at most :data:`REQUESTS_PER_PEER` each; what a peer
    does not serve goes to the sync peer."""

    def __init__(self, peers: ConnectedPeers, sync_peer: PeerSession) -> None:
        self.peers = peers
        self.sync_peer = sync_peer
        self.results: dict[bytes, asyncio.Future[Block | None]] = {}
        self.sources: dict[bytes, PeerSession] = {}
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
        loop = asyncio.get_running_loop()
        for header in headers:
            if header.block_hash not in self.results:
                self.results[header.block_hash] = loop.create_future()
                self.pending.append(header)
        self._dispatch()

    def _able(self) -> list[PeerSession]:
        others = [p for p in self.peers.sessions() if p is not self.sync_peer]
        return [p for p in [self.sync_peer, *others] if self.peers.is_connected(p)]

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

    async def _fetch(self, peer: PeerSession, batch: list[Header]) -> None:
        try:
            blocks = await self.peers.request_blocks(peer, [h.block_hash for h in batch])
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
        if not self.peers.is_connected(self.sync_peer):
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

    def source(self, block_hash: bytes) -> PeerSession | None:
        """The peer that served a block (to blame if it is invalid)."""
        return self.sources.pop(block_hash, None)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
