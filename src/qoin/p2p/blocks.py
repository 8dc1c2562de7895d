"""Block gossip: announcing stored blocks, fetching announced ones (walking a short side branch
back to a block we hold), serving ``GetBlocks``, and importing what peers send, blaming the sender
of an invalid block (``docs/spec/p2p.md`` §10.2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from qoin.chain.block import Block
from qoin.chain.chain import ExecutionUndecided, ImportResult, ImportStatus
from qoin.chain.validation import BadTimestamp, InvalidBlock
from qoin.p2p.access import ChainWorker
from qoin.p2p.messages import (
    MAX_ANNOUNCED_BLOCKS,
    AnnouncedBlock,
    Blocks,
    DisconnectReason,
    GetBlocks,
    InventoryKind,
    NewBlockHashes,
    NotFound,
    encoded_blocks_messages,
)
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.session import ConnectedPeers, Counters, PeerSession

log = logging.getLogger(__name__)

FETCHES_PER_PEER = 4
"""Announced-block fetches running at once per peer; announcements beyond are ignored."""
MAX_SERVED_BYTES = 64 * 1024 * 1024
"""Bytes of blocks sent for one ``GetBlocks``; the rest is answered ``NotFound``."""
WALK_BACK_DEPTH = 64
"""How far below our head a side branch is walked back block by block (its tips reach 64)."""
ORPHAN_WALK_BACK = 32
"""How far above our head a gossiped orphan may be before we sync instead of fetching parents."""


class BlockGossip:
    """Announces, fetches, serves and imports blocks. ``far_ahead`` is called with a peer whose
    blocks are too far above our head to fetch one by one (the caller considers a sync);
    ``spawn`` runs a coroutine as a task of the service."""

    def __init__(
        self,
        peers: ConnectedPeers,
        chain: ChainWorker,
        counters: Counters,
        genesis_hash: bytes,
        far_ahead: Callable[[PeerSession], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.peers = peers
        self.chain = chain
        self.counters = counters
        self.far_ahead = far_ahead
        self.spawn = spawn
        self.head: tuple[bytes, int, int] = (genesis_hash, 0, 0)
        """Our head hash, height and known work, as last read."""
        self._fetching: set[bytes] = set()
        self._import_lock = asyncio.Lock()

    async def refresh_head(self) -> tuple[bytes, int, int]:
        """Read our head again."""
        self.head = await self.chain.call(self.chain.access.head)
        return self.head

    # -- serving ------------------------------------------------------------------------------

    async def on_get_blocks(self, peer: PeerSession, message: GetBlocks) -> None:
        """Send each distinct stored block once, up to :data:`MAX_SERVED_BYTES`; the rest in
        ``NotFound``."""
        asked = tuple(dict.fromkeys(message.hashes))
        found = await self.chain.call(self.chain.access.block_encodings, asked, MAX_SERVED_BYTES)
        for reply in encoded_blocks_messages([encoding for _, encoding in found]) if found else []:
            peer.send_encoded(reply)
        served = {block_hash for block_hash, _ in found}
        missing = tuple(h for h in asked if h not in served)
        if missing:
            peer.send(NotFound(InventoryKind.BLOCK, missing))

    async def on_blocks(self, peer: PeerSession, message: Blocks) -> None:
        """Blocks a peer sent: answers to our requests, or unsolicited (one penalty per message:
        a late reply is one race, not many)."""
        unasked = 0
        for block in message.blocks:
            self.counters.blocks_received += 1
            if not peer.block_requests.answer(block.block_hash, block):
                # a reply that came after we gave up on the request is no offence
                unasked += block.block_hash not in peer.gave_up
                continue
            peer.known_blocks.add(block.block_hash)
            peer.blocks_served += 1
        if unasked:
            await self.peers.punish(
                peer, Misbehaviour.UNSOLICITED, f"{unasked} blocks not asked for"
            )

    # -- announcements and fetches ------------------------------------------------------------

    async def on_new_block_hashes(self, peer: PeerSession, message: NewBlockHashes) -> None:
        """Raise our view of the peer's head; fetch what we lack, or sync if it is far ahead."""
        blocks = message.blocks
        for announced in blocks:
            peer.known_blocks.add(announced.block_hash)
        status = peer.status
        best = max(blocks, key=lambda b: b.height, default=None)
        if status is not None and best is not None and best.height > status.head_height:
            # the rest of its Status (its services included) stays as it said
            peer.status = replace(status, head_hash=best.block_hash, head_height=best.height)
        if best is not None and best.height > self.head[1] + ORPHAN_WALK_BACK:
            self.far_ahead(peer)
            return
        wanted = [b.block_hash for b in blocks if b.block_hash not in self._fetching]
        if wanted and peer.fetches < FETCHES_PER_PEER:  # beyond: sync or a later tip brings them
            self._start_fetch(peer, wanted)

    def _start_fetch(
        self, peer: PeerSession, hashes: Sequence[bytes], expected_height: int | None = None
    ) -> None:
        """Fetch and import ``hashes`` from ``peer`` in a task of its own (counted at once, so
        that at most :data:`FETCHES_PER_PEER` run per peer)."""
        peer.fetches += 1
        self.spawn(self._fetch_and_import(peer, hashes, expected_height))

    async def _fetch_and_import(
        self, peer: PeerSession, hashes: Sequence[bytes], expected_height: int | None
    ) -> None:
        try:
            await self._fetch_and_import_from(peer, hashes, expected_height)
        finally:
            peer.fetches -= 1

    async def _fetch_and_import_from(
        self, peer: PeerSession, hashes: Sequence[bytes], expected_height: int | None
    ) -> None:
        """Fetch announced blocks we lack from ``peer`` and import them; walk back to a missing
        parent (a few blocks) or start a sync."""
        unknown = await self.chain.call(self.chain.access.missing, hashes)
        if not unknown:
            return
        self._fetching.update(unknown)
        try:
            blocks = await self.peers.request_blocks(peer, unknown)
        finally:
            self._fetching.difference_update(unknown)
        for block in blocks:
            if block is None:
                continue
            height = block.header.height
            if expected_height is not None and height != expected_height:
                await self.peers.punish(
                    peer, Misbehaviour.PROTOCOL_VIOLATION, "a parent at a wrong height"
                )
                return
            result = await self.import_block(peer, block)
            if result is None or result.status is not ImportStatus.ORPHAN:
                continue
            parent = block.header.parent_hash
            if height > self.head[1] + ORPHAN_WALK_BACK:
                self.far_ahead(peer)
            elif (
                height - 1 > self.head[1] - WALK_BACK_DEPTH  # a short side branch: walk back
                and parent not in self._fetching
                and peer.fetches < FETCHES_PER_PEER
            ):
                self._start_fetch(peer, [parent], height - 1)

    # -- import and announcement --------------------------------------------------------------

    async def import_block(self, peer: PeerSession, block: Block) -> ImportResult | None:
        """Import one block from ``peer``; punish it if the block is invalid. None if not
        imported (invalid or undecided)."""
        async with self._import_lock:
            try:
                result = await self.chain.call(self.chain.access.import_block, block)
            except BadTimestamp as exc:  # honest clocks drift: not a ban
                await self.peers.punish(peer, Misbehaviour.PROTOCOL_VIOLATION, f"block: {exc}")
                return None
            except InvalidBlock as exc:
                await self.peers.punish(
                    peer, Misbehaviour.INVALID_BLOCK, f"block {block.block_hash.hex()[:16]}: {exc}"
                )
                return None
            except ExecutionUndecided as exc:
                log.warning("block %s undecided: %s", block.block_hash.hex()[:16], exc)
                return None
        if result.status is ImportStatus.IMPORTED:
            self.counters.blocks_imported += len(result.connected)
            self.peers.reward(peer)
            self.announce_stored(result, peer)
        return result

    def announce_stored(self, result: ImportResult, source: PeerSession | None) -> None:
        """Announce newly stored blocks to every peer not known to have them (but ``source``)."""
        self.spawn(self._refresh_head())
        if result.connected:
            self.spawn(self._announce_blocks(result.connected, source))

    async def _refresh_head(self) -> None:
        await self.refresh_head()

    async def _announce_blocks(self, hashes: Sequence[bytes], source: PeerSession | None) -> None:
        call, access = self.chain.call, self.chain.access
        headers = [h for h in [await call(access.header, x) for x in hashes] if h]
        entries = tuple(AnnouncedBlock(h.block_hash, h.height) for h in headers)
        for start in range(0, len(entries), MAX_ANNOUNCED_BLOCKS):
            batch = entries[start : start + MAX_ANNOUNCED_BLOCKS]
            for peer in self.peers.sessions():
                fresh = tuple(e for e in batch if e.block_hash not in peer.known_blocks)
                if peer is source or not fresh or peer.status is None:
                    continue
                for entry in fresh:
                    peer.known_blocks.add(entry.block_hash)
                if not peer.send(NewBlockHashes(fresh)):
                    self.spawn(self.peers.close(peer, DisconnectReason.TIMEOUT, "too slow"))

    async def on_not_found(self, peer: PeerSession, hashes: Sequence[bytes]) -> None:
        """The peer lacks blocks we asked for: their requests are answered with nothing."""
        for block_hash in hashes:
            peer.block_requests.answer(block_hash, None)
