"""Peer sessions (qoin.p2p.session): a peer's backlog once the peer is gone, and closing a peer
from one of its own tasks over a real loopback channel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from qoin.crypto.hybrid import generate_keypair
from qoin.p2p.addresses import PeerAddress
from qoin.p2p.messages import DisconnectReason
from qoin.p2p.peers import PeerManager
from qoin.p2p.session import BACKLOG_MESSAGES, Backlog, ConnectedPeers, Counters, PeerSession
from qoin.p2p.transport import NetworkId, SecureChannel, Timeouts, accept, connect
from tests.chainutil import test_genesis

FRAME = b"\x00" * (1 << 20)
MAX_FRAMES = 256
"""Frames sent to a peer that reads nothing before the socket buffers are surely full (the
loopback buffers hold a few MiB)."""


async def fill(channel: SecureChannel) -> None:
    """Send to a peer that reads nothing until a send blocks (the connection is backed up)."""
    for _ in range(MAX_FRAMES):
        send = asyncio.ensure_future(channel.send(FRAME))
        done, _ = await asyncio.wait([send], timeout=0.5)
        if not done:
            send.cancel()
            return
    raise AssertionError(f"{MAX_FRAMES} MiB sent to a peer that reads nothing")


def test_a_peer_closed_by_its_own_backlog_task_is_closed_completely() -> None:
    """Closing a peer cancels its tasks; when the closing runs in one of them (a ban decided while
    its backlog handles a message), that cancellation must not cut the closing short, even when
    the goodbye has to wait for a peer that reads nothing: the channel is closed and the close
    callbacks (which end a sync from that peer) run."""
    genesis = test_genesis()
    network = NetworkId.from_genesis(genesis)
    ours, theirs = generate_keypair(), generate_keypair()

    async def scenario() -> None:
        accepted: asyncio.Future[SecureChannel] = asyncio.get_running_loop().create_future()

        async def on_inbound(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            fast = Timeouts(write=1.0)
            accepted.set_result(await accept(reader, writer, ours, network, timeouts=fast))

        server = await asyncio.start_server(on_inbound, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        remote = await connect("127.0.0.1", port, theirs, network)  # never reads
        try:
            channel = await asyncio.wait_for(accepted, 10)
            await fill(channel)
            manager = PeerManager(ours.address)
            address = PeerAddress("127.0.0.1", port)
            admission = manager.on_connected(theirs.address, address, inbound=True)
            assert admission.connection_id is not None
            peer = PeerSession(channel, address, True, admission.connection_id)
            peers = ConnectedPeers(manager, Counters(), on_ban=lambda: None)
            peers.add(peer)
            closed: list[PeerSession] = []
            peers.on_close.append(closed.append)

            async def ban() -> None:
                await peers.close(peer, DisconnectReason.BANNED, "invalid-transaction: test")

            backlog = asyncio.create_task(ban())
            peer.tasks.append(backlog)
            await asyncio.wait([backlog], timeout=30)
            assert backlog.done()
            assert closed == [peer], "the close callbacks did not run"
            assert channel.closed and not peers.is_connected(peer)
        finally:
            await remote.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_reader_waiting_for_room_in_a_closed_backlog_does_not_wait_forever() -> None:
    """A peer's reader waits for room in its full backlog; the peer is closed meanwhile (banned by
    another task, or silent while the chain worker is slow), which cancels the backlog's worker.
    The waiting reader must be released (and the queued messages forgotten), or its task and
    up to the backlog's bytes leak with every such peer."""

    async def scenario() -> None:
        backlog = Backlog()
        ran: list[int] = []

        def job(index: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                ran.append(index)

            return run

        for index in range(BACKLOG_MESSAGES):
            await backlog.put(job(index), 1)
        reader = asyncio.create_task(backlog.put(job(BACKLOG_MESSAGES), 1))
        for _ in range(3):  # let it run until it waits
            await asyncio.sleep(0)
        assert not reader.done(), "the backlog is full: the reader waits for room"
        backlog.close()
        await asyncio.wait_for(reader, 5)
        assert len(backlog) == 0
        await backlog.put(job(99), 1)  # a closed backlog takes nothing
        assert len(backlog) == 0 and ran == []

    asyncio.run(scenario())
