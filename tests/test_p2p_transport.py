"""The P2P transport over real loopback sockets: handshake, frames, tampering, bounds, timeouts.

Every test runs its own event loop (``asyncio.run``) under an overall bound; nothing sleeps for a
fixed time except the deliberately slow attacker. A TCP proxy between the two ends parses the
stream (hello, key exchange, then frames) so that a test can flip, drop, duplicate, reorder or
replace exactly one frame.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from qoin.chain.genesis import builtin
from qoin.crypto import hybrid
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridKeyPair
from qoin.p2p import transport
from qoin.p2p.transport import (
    COUNTER_LIMIT,
    HEADER_SIZE,
    HELLO_SIZE,
    KEX_INIT_SIZE,
    KEX_REPLY_SIZE,
    MAGIC,
    MAX_CIPHERTEXT_SIZE,
    MAX_PAYLOAD_SIZE,
    PROTOCOL_VERSION,
    AuthenticationFailed,
    ConnectFailed,
    ConnectionClosed,
    FrameCipher,
    FrameTimeout,
    FrameTooLarge,
    HandshakeTimeout,
    MalformedFrame,
    MalformedHandshake,
    NetworkId,
    NonceExhausted,
    PeerSignatureInvalid,
    Role,
    SecureChannel,
    SendTimeout,
    Timeouts,
    TransportError,
    UnsupportedVersion,
    WrongGenesis,
    WrongIdentity,
    WrongNetwork,
    WrongPeerChainId,
)
from tests.keys import keypair_for

T = TypeVar("T")

NET = NetworkId(PROTOCOL_VERSION, 4242, sha3_256(b"test genesis"))
TIMEOUTS = Timeouts(handshake=5.0, frame_body=5.0, write=5.0)
SHORT = Timeouts(handshake=0.3, frame_body=0.3, write=0.3)
SHORT_BODY = Timeouts(handshake=5.0, frame_body=0.3, write=5.0)
SHORT_WRITE = Timeouts(handshake=5.0, frame_body=5.0, write=0.3)
TEST_BOUND_S = 20.0
HOST = "127.0.0.1"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test's coroutine in a fresh loop, failing it if it takes too long."""

    async def bounded() -> T:
        async with asyncio.timeout(TEST_BOUND_S):
            return await coro

    return asyncio.run(bounded())


def alice() -> HybridKeyPair:
    return keypair_for(index=0)


def bob() -> HybridKeyPair:
    return keypair_for(index=1)


def carol() -> HybridKeyPair:
    return keypair_for(index=2)


class Server:
    """A listening responder; each accepted channel, or the error that ended its handshake, is
    queued in order."""

    def __init__(
        self,
        identity: HybridKeyPair | None = None,
        network: NetworkId = NET,
        timeouts: Timeouts = TIMEOUTS,
        rekey_interval: int = transport.REKEY_INTERVAL,
    ) -> None:
        self.identity = identity or bob()
        self.network = network
        self.timeouts = timeouts
        self.rekey_interval = rekey_interval
        self.results: asyncio.Queue[SecureChannel | TransportError] = asyncio.Queue()
        self.channels: list[SecureChannel] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for channel in self.channels:
            await channel.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            channel = await transport.accept(
                reader,
                writer,
                self.identity,
                self.network,
                timeouts=self.timeouts,
                rekey_interval=self.rekey_interval,
            )
        except TransportError as exc:
            await self.results.put(exc)
            return
        self.channels.append(channel)
        await self.results.put(channel)

    async def channel(self) -> SecureChannel:
        result = await self.results.get()
        if isinstance(result, TransportError):
            raise result
        return result

    async def error(self) -> TransportError:
        result = await self.results.get()
        if not isinstance(result, TransportError):
            await result.close()
            pytest.fail(f"handshake succeeded with {result.peer_id}")
        return result


async def connect(
    port: int,
    identity: HybridKeyPair | None = None,
    network: NetworkId = NET,
    expected_peer: Address | None = None,
    timeouts: Timeouts = TIMEOUTS,
    rekey_interval: int = transport.REKEY_INTERVAL,
) -> SecureChannel:
    return await transport.connect(
        HOST,
        port,
        identity or alice(),
        network,
        expected_peer,
        timeouts=timeouts,
        rekey_interval=rekey_interval,
    )


async def pair(server: Server, **kwargs: Any) -> tuple[SecureChannel, SecureChannel]:
    """Connect to ``server`` (or to a proxy port given as ``port``); return (initiator, responder)."""
    port = kwargs.pop("port", server.port)
    initiator = await connect(port, **kwargs)
    return initiator, await server.channel()


# --- a frame-aware TCP proxy --------------------------------------------------------------------

Tamper = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[None]]
"""Decides what to forward for frame ``index`` (0 is the identity frame of the handshake)."""


async def forward(_index: int, frame: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(frame)
    await writer.drain()


def flip(target: int, offset: int, mask: int) -> Tamper:
    async def tamper(index: int, frame: bytes, writer: asyncio.StreamWriter) -> None:
        if index == target:
            changed = bytearray(frame)
            changed[offset] ^= mask
            frame = bytes(changed)
        await forward(index, frame, writer)

    return tamper


def drop(target: int) -> Tamper:
    async def tamper(index: int, frame: bytes, writer: asyncio.StreamWriter) -> None:
        if index != target:
            await forward(index, frame, writer)

    return tamper


def duplicate(target: int) -> Tamper:
    async def tamper(index: int, frame: bytes, writer: asyncio.StreamWriter) -> None:
        await forward(index, frame, writer)
        if index == target:
            await forward(index, frame, writer)

    return tamper


def swap(target: int) -> Tamper:
    held: list[bytes] = []

    async def tamper(index: int, frame: bytes, writer: asyncio.StreamWriter) -> None:
        if index == target:
            held.append(frame)
            return
        await forward(index, frame, writer)
        if index == target + 1:
            await forward(target, held.pop(), writer)

    return tamper


def replace(target: int, data: bytes) -> Tamper:
    """Send ``data`` instead of frame ``target``, then forward nothing more (hold the stream)."""

    async def tamper(index: int, frame: bytes, writer: asyncio.StreamWriter) -> None:
        if index < target:
            await forward(index, frame, writer)
        elif index == target:
            writer.write(data)
            await writer.drain()

    return tamper


def trickle(target: int, delay: float) -> Tamper:
    """Forward frame ``target`` one byte every ``delay`` seconds (a slow-loris peer)."""

    async def tamper(index: int, frame: bytes, writer: asyncio.StreamWriter) -> None:
        if index != target:
            await forward(index, frame, writer)
            return
        for byte in frame:
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(delay)

    return tamper


class Proxy:
    """Relays one connection to ``target_port``, parsing each direction into the two clear
    handshake messages and then frames, and handing every frame to that direction's tamper.
    When either side ends, both are closed (so each end sees what the other did)."""

    def __init__(
        self, target_port: int, to_responder: Tamper = forward, to_initiator: Tamper = forward
    ) -> None:
        self.target_port = target_port
        self.tampers = {Role.INITIATOR: to_responder, Role.RESPONDER: to_initiator}
        self.received = {Role.INITIATOR: 0, Role.RESPONDER: 0}
        """Bytes the proxy received from each end."""
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(HOST, self.target_port)
        pumps = [
            asyncio.create_task(self._pump(client_r, server_w, Role.INITIATOR)),
            asyncio.create_task(self._pump(server_r, client_w, Role.RESPONDER)),
        ]
        self._tasks.extend(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            client_w.close()
            server_w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: Role
    ) -> None:
        kex_size = KEX_INIT_SIZE if side is Role.INITIATOR else KEX_REPLY_SIZE
        try:
            for size in (HELLO_SIZE, kex_size):
                writer.write(await self._read(reader, size, side))
                await writer.drain()
            index = 0
            while True:
                header = await self._read(reader, HEADER_SIZE, side)
                body = await self._read(reader, int.from_bytes(header, "big"), side)
                await self.tampers[side](index, header + body, writer)
                index += 1
        except (asyncio.IncompleteReadError, OSError):
            return

    async def _read(self, reader: asyncio.StreamReader, size: int, side: Role) -> bytes:
        try:
            data = await reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            self.received[side] += len(exc.partial)
            raise
        self.received[side] += size
        return data


async def expect_closed(channel: SecureChannel) -> None:
    """The connection under ``channel`` has been closed by the other end."""
    with pytest.raises(ConnectionClosed):
        await channel.receive()
    assert channel.closed


# --- round trips --------------------------------------------------------------------------------


def test_round_trip_many_frames_both_ways() -> None:
    to_server = [b"", os.urandom(4 * 1024 * 1024), bytes(MAX_PAYLOAD_SIZE)] + [
        os.urandom(n) for n in range(0, 3000, 15)
    ]
    to_client = [os.urandom(n) for n in range(0, 4000, 20)] + [b"", os.urandom(3 * 1024 * 1024)]

    async def send_all(channel: SecureChannel, payloads: list[bytes]) -> None:
        for payload in payloads:
            await channel.send(payload)

    async def receive_all(channel: SecureChannel, count: int) -> list[bytes]:
        return [await channel.receive() for _ in range(count)]

    async def main() -> None:
        async with Server() as server:
            client, peer = await pair(server, expected_peer=bob().address)
            assert client.peer_id == bob().address
            assert peer.peer_id == alice().address
            assert client.transcript_hash == peer.transcript_hash
            assert (client.role, peer.role) == (Role.INITIATOR, Role.RESPONDER)
            _, _, got_server, got_client = await asyncio.gather(
                send_all(client, to_server),
                send_all(peer, to_client),
                receive_all(peer, len(to_server)),
                receive_all(client, len(to_client)),
            )
            assert got_server == to_server
            assert got_client == to_client
            status = client.status()
            assert status.send.frames == len(to_server)
            assert status.receive.frames == len(to_client)
            # Each direction has its own key.
            assert status.send.key_fingerprint != status.receive.key_fingerprint
            await client.close()
            await expect_closed(peer)
            with pytest.raises(transport.ChannelClosed):
                await client.send(b"after close")

    run(main())


def test_sessions_are_unique() -> None:
    async def main() -> None:
        async with Server() as server:
            first, _ = await pair(server)
            second, _ = await pair(server)
            assert first.transcript_hash != second.transcript_hash
            assert first.status().send.key_fingerprint != second.status().send.key_fingerprint
            await first.close()
            await second.close()

    run(main())


def test_oversize_payload_is_refused_locally_and_the_channel_stays_open() -> None:
    async def main() -> None:
        async with Server() as server:
            client, peer = await pair(server)
            with pytest.raises(FrameTooLarge):
                await client.send(bytes(MAX_PAYLOAD_SIZE + 1))
            await client.send(b"still fine")
            assert await peer.receive() == b"still fine"
            await client.close()

    run(main())


def test_idle_receive_can_be_cancelled_safely() -> None:
    async def main() -> None:
        async with Server() as server:
            client, peer = await pair(server)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(peer.receive(), 0.05)
            assert not peer.closed
            await client.send(b"late")
            assert await peer.receive() == b"late"
            await client.close()

    run(main())


def test_network_id_from_genesis() -> None:
    genesis = builtin("devnet")
    network = NetworkId.from_genesis(genesis)
    assert network == NetworkId(PROTOCOL_VERSION, genesis.chain_id, genesis.genesis_hash)
    hello = network.hello()
    assert len(hello) == HELLO_SIZE
    assert hello == (
        MAGIC
        + PROTOCOL_VERSION.to_bytes(2, "big")
        + genesis.chain_id.to_bytes(8, "big")
        + genesis.genesis_hash
    )
    assert transport.decode_hello(hello) == network


# --- tampering ----------------------------------------------------------------------------------

PAYLOAD = bytes(range(100))
FRAME = HEADER_SIZE + len(PAYLOAD) + transport.TAG_SIZE
"""Size on the wire of a frame carrying PAYLOAD."""


@pytest.mark.parametrize(
    ("offset", "mask", "error"),
    [
        (0, 0x80, FrameTooLarge),  # length's top bit: 2 GiB announced
        (2, 0x01, AuthenticationFailed),  # length + 256: eats into the next frames
        (3, 0x01, AuthenticationFailed),  # length + 1
        (3, 0x04, AuthenticationFailed),  # length - 4
        (HEADER_SIZE, 0x01, AuthenticationFailed),  # first ciphertext byte
        (HEADER_SIZE + 50, 0x10, AuthenticationFailed),  # middle of the ciphertext
        (FRAME - transport.TAG_SIZE, 0x01, AuthenticationFailed),  # first tag byte
        (FRAME - 1, 0x80, AuthenticationFailed),  # last tag byte
    ],
    ids=["len-msb", "len+256", "len+1", "len-4", "ct-first", "ct-mid", "tag-first", "tag-last"],
)
@pytest.mark.parametrize("direction", [Role.INITIATOR, Role.RESPONDER], ids=["i2r", "r2i"])
def test_a_flipped_bit_in_a_frame_drops_the_connection(
    direction: Role, offset: int, mask: int, error: type[TransportError]
) -> None:
    # Frame index 2 is the second traffic frame (index 0 is the handshake's identity frame).
    tamper = flip(2, offset, mask)

    async def main() -> None:
        async with Server() as server:
            kwargs = {"to_responder": tamper} if direction is Role.INITIATOR else {}
            kwargs |= {"to_initiator": tamper} if direction is Role.RESPONDER else {}
            async with Proxy(server.port, **kwargs) as proxy:
                client, peer = await pair(server, port=proxy.port)
                sender, receiver = (client, peer) if direction is Role.INITIATOR else (peer, client)
                for _ in range(6):
                    await sender.send(PAYLOAD)
                assert await receiver.receive() == PAYLOAD
                with pytest.raises(error):
                    await receiver.receive()
                assert receiver.closed
                with pytest.raises(transport.ChannelClosed):
                    await receiver.receive()
                await expect_closed(sender)

    run(main())


@pytest.mark.parametrize("side", [Role.INITIATOR, Role.RESPONDER], ids=["auth_I", "auth_R"])
def test_a_flipped_bit_in_the_identity_frame_fails_the_handshake(side: Role) -> None:
    tamper = flip(0, 100, 0x01)

    async def main() -> None:
        async with Server() as server:
            if side is Role.INITIATOR:
                async with Proxy(server.port, to_responder=tamper) as proxy:
                    client = await connect(proxy.port)
                    assert isinstance(await server.error(), AuthenticationFailed)
                    await expect_closed(client)
            else:
                async with Proxy(server.port, to_initiator=tamper) as proxy:
                    with pytest.raises(AuthenticationFailed):
                        await connect(proxy.port)
                    assert isinstance(await server.error(), ConnectionClosed)

    run(main())


@pytest.mark.parametrize(
    ("attack", "intact"),
    [(drop, 1), (duplicate, 2), (swap, 1)],
    ids=["drop", "replay", "reorder"],
)
def test_dropped_replayed_or_reordered_frames_fail(
    attack: Callable[[int], Tamper], intact: int
) -> None:
    # The attack hits frame index 2, the second traffic frame ("frame 1").
    async def main() -> None:
        async with Server() as server, Proxy(server.port, to_responder=attack(2)) as proxy:
            client, peer = await pair(server, port=proxy.port)
            for index in range(4):
                await client.send(b"frame %d" % index)
            for index in range(intact):
                assert await peer.receive() == b"frame %d" % index
            with pytest.raises(AuthenticationFailed):
                await peer.receive()
            await expect_closed(client)

    run(main())


# --- identities and networks --------------------------------------------------------------------


def test_wrong_identity_is_refused() -> None:
    async def main() -> None:
        async with Server() as server:
            with pytest.raises(WrongIdentity):
                await connect(server.port, expected_peer=carol().address)
            # The initiator left before revealing its own identity.
            assert isinstance(await server.error(), ConnectionClosed)
            # The same server, expected correctly, is accepted.
            client, _ = await pair(server, expected_peer=bob().address)
            await client.close()

    run(main())


def test_a_signature_over_another_transcript_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sign = hybrid.sign

    def sign_other(keypair: HybridKeyPair, message: bytes) -> hybrid.HybridSignature:
        return real_sign(keypair, sha3_256(message))

    monkeypatch.setattr(hybrid, "sign", sign_other)

    async def main() -> None:
        async with Server() as server:
            with pytest.raises(PeerSignatureInvalid):
                await connect(server.port)
            assert isinstance(await server.error(), ConnectionClosed)

    run(main())


@pytest.mark.parametrize(
    ("network", "error"),
    [
        (NetworkId(PROTOCOL_VERSION, NET.chain_id + 1, NET.genesis_hash), WrongPeerChainId),
        (NetworkId(PROTOCOL_VERSION, NET.chain_id, sha3_256(b"other genesis")), WrongGenesis),
    ],
    ids=["chain-id", "genesis"],
)
def test_wrong_network_is_refused_before_any_key_exchange(
    network: NetworkId, error: type[WrongNetwork]
) -> None:
    async def main() -> None:
        async with Server() as server, Proxy(server.port) as proxy:
            with pytest.raises(error):
                await connect(proxy.port, network=network)
            assert isinstance(await server.error(), error)
            # Only the two hellos crossed the wire.
            assert proxy.received == {Role.INITIATOR: HELLO_SIZE, Role.RESPONDER: HELLO_SIZE}

    run(main())


async def raw_client(port: int, data: bytes, *, then_close: bool) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    await writer.drain()
    if then_close:
        writer.write_eof()  # a FIN, not a reset: the server sees exactly these bytes, then EOF
    return writer


INVALID_KEX = bytes(32) + b"\xff" * 1184  # a zero X25519 key; an ML-KEM key with coefficients >= q


@pytest.mark.parametrize(
    ("data", "then_close", "error"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(20), False, MalformedHandshake),
        (NET.hello()[:20], True, MalformedHandshake),
        (NET.hello() + bytes(100), True, MalformedHandshake),
        (NET.hello() + INVALID_KEX, False, MalformedHandshake),
        (b"", True, ConnectionClosed),
        (b"", False, HandshakeTimeout),
        (NET.hello(), False, HandshakeTimeout),
        (
            NetworkId(PROTOCOL_VERSION + 1, NET.chain_id, NET.genesis_hash).hello(),
            False,
            UnsupportedVersion,
        ),
    ],
    ids=[
        "http",
        "truncated-hello",
        "truncated-kex",
        "invalid-mlkem-key",
        "empty",
        "silent",
        "stalls-after-hello",
        "version",
    ],
)
def test_garbage_or_truncated_handshake_is_refused(
    data: bytes, then_close: bool, error: type[TransportError]
) -> None:
    async def main() -> None:
        async with Server(timeouts=SHORT) as server:
            writer = await raw_client(server.port, data, then_close=then_close)
            assert isinstance(await server.error(), error)
            writer.close()

    run(main())


def test_initiator_refuses_a_garbage_or_other_version_hello() -> None:
    async def fake_responder(hello: bytes) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(hello)
                await writer.drain()
                await reader.read()  # until the initiator hangs up
            finally:
                writer.close()

        return await asyncio.start_server(handle, HOST, 0)

    async def main() -> None:
        cases = [
            (b"\x00" * HELLO_SIZE, MalformedHandshake),
            (NetworkId(7, NET.chain_id, NET.genesis_hash).hello(), UnsupportedVersion),
        ]
        for hello, error in cases:
            server = await fake_responder(hello)
            with pytest.raises(error):
                await connect(server.sockets[0].getsockname()[1], timeouts=SHORT)
            server.close()
            await server.wait_closed()

    run(main())


def test_local_version_must_be_supported() -> None:
    async def main() -> None:
        other = NetworkId(PROTOCOL_VERSION + 1, NET.chain_id, NET.genesis_hash)
        with pytest.raises(UnsupportedVersion):
            await connect(1, network=other)

    run(main())


def test_connect_to_a_closed_port_fails() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda _r, _w: None, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectFailed):
            await connect(port)

    run(main())


# --- size and time bounds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "error"),
    [
        (MAX_CIPHERTEXT_SIZE + 1, FrameTooLarge),
        (2**32 - 1, FrameTooLarge),
        (transport.TAG_SIZE - 1, MalformedFrame),
    ],
    ids=["max+1", "4GiB", "shorter-than-tag"],
)
def test_oversize_or_undersize_frame_is_refused_before_reading_it(
    length: int, error: type[TransportError]
) -> None:
    header = length.to_bytes(HEADER_SIZE, "big")

    async def main() -> None:
        # A long body timeout: the refusal must come from the header alone, not from waiting.
        async with (
            Server() as server,
            Proxy(server.port, to_responder=replace(1, header + bytes(64))) as proxy,
        ):
            client, peer = await pair(server, port=proxy.port)
            await client.send(PAYLOAD)
            with pytest.raises(error):
                await peer.receive()
            await expect_closed(client)

    run(main())


@pytest.mark.parametrize(
    "tamper",
    [replace(1, (1000).to_bytes(HEADER_SIZE, "big") + bytes(10)), trickle(1, 0.02)],
    ids=["header-then-stop", "trickle"],
)
def test_slow_loris_is_cut_off(tamper: Tamper) -> None:
    async def main() -> None:
        async with (
            Server(timeouts=SHORT_BODY) as server,
            Proxy(server.port, to_responder=tamper) as proxy,
        ):
            client, peer = await pair(server, port=proxy.port)
            await client.send(PAYLOAD)
            with pytest.raises(FrameTimeout):
                await peer.receive()
            await expect_closed(client)

    run(main())


def test_a_peer_that_does_not_read_is_cut_off() -> None:
    async def main() -> None:
        async with Server() as server:
            client, _ = await pair(server, timeouts=SHORT_WRITE)
            big = bytes(MAX_PAYLOAD_SIZE)
            with pytest.raises(SendTimeout):
                for _ in range(8):
                    await client.send(big)
            assert client.closed

    run(main())


# --- keys and nonces ----------------------------------------------------------------------------


def test_rekeying_happens_in_lockstep() -> None:
    interval, count = 4, 20

    async def main() -> None:
        async with Server(rekey_interval=interval) as server:
            client, peer = await pair(server, rekey_interval=interval)
            for sender, receiver in ((client, peer), (peer, client)):
                seen = {sender.status().send.key_fingerprint}
                for index in range(count):
                    await sender.send(b"%d" % index)
                    assert await receiver.receive() == b"%d" % index
                    sent, received = sender.status().send, receiver.status().receive
                    assert sent == received
                    assert sent.frames == index + 1
                    assert sent.epoch == (index + 1) // interval
                    seen.add(sent.key_fingerprint)
                assert len(seen) == count // interval + 1
            await client.close()

    run(main())


def test_mismatched_rekey_intervals_fail_at_the_first_rekey() -> None:
    async def main() -> None:
        async with Server(rekey_interval=8) as server:
            client, peer = await pair(server, rekey_interval=4)
            for index in range(5):
                await client.send(b"%d" % index)
            for index in range(4):
                assert await peer.receive() == b"%d" % index
            with pytest.raises(AuthenticationFailed):
                await peer.receive()
            await expect_closed(client)

    run(main())


AEAD_LOG: list[tuple[bytes, bytes]] = []
"""(key, nonce) of every encryption while RecordingAead is patched in."""


class RecordingAead:
    """Wraps ChaCha20Poly1305 and records (key, nonce) of every encryption."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._aead = ChaCha20Poly1305(key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        AEAD_LOG.append((self._key, nonce))
        return self._aead.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, data, aad)


def test_nonces_never_repeat_under_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    AEAD_LOG.clear()
    monkeypatch.setattr(transport, "ChaCha20Poly1305", RecordingAead)
    frames = 10

    async def main() -> None:
        async with Server(rekey_interval=4) as server:
            first = await pair(server, rekey_interval=4)
            second = await pair(server, rekey_interval=4)
            channels = first + second
            for channel in channels:
                for _ in range(frames):
                    await channel.send(b"x")
            for channel in channels:
                for _ in range(frames):
                    await channel.receive()
            await first[0].close()
            await second[0].close()

    run(main())
    # Two connections: one identity frame per side, then `frames` traffic frames per side.
    assert len(AEAD_LOG) == 2 * 2 * (1 + frames)
    assert len(set(AEAD_LOG)) == len(AEAD_LOG)
    counters: dict[bytes, list[int]] = {}
    for key, nonce in AEAD_LOG:
        assert nonce[:4] == bytes(4)
        counters.setdefault(key, []).append(int.from_bytes(nonce[4:], "big"))
    # Per connection: 2 handshake keys, and 3 traffic keys per direction (frames 0-3, 4-7, 8-9).
    assert len(counters) == 2 * (2 + 2 * 3)
    for used in counters.values():
        assert used == list(range(used[0], used[0] + len(used)))
        assert used[0] % 4 == 0


def test_frame_cipher_nonces_and_exhaustion() -> None:
    key = bytes(range(32))
    sender, receiver = FrameCipher(key, rekey_interval=3), FrameCipher(key, rekey_interval=3)
    for index in range(10):
        assert sender.status().frames == index
        header, ciphertext = sender.seal(b"p")
        assert receiver.open(header, ciphertext) == b"p"
    assert transport.frame_nonce(7) == bytes(4) + (7).to_bytes(8, "big")
    assert sender.status() == receiver.status()
    assert sender.status().epoch == 3

    near_end = FrameCipher(key, counter=COUNTER_LIMIT - 1)
    near_end.seal(b"last")
    with pytest.raises(NonceExhausted):
        near_end.seal(b"one too many")
    with pytest.raises(NonceExhausted):
        FrameCipher(key, counter=COUNTER_LIMIT).open(bytes(4), bytes(16))


def test_key_schedule_depends_on_both_shared_secrets() -> None:
    transcript = sha3_256(b"transcript")
    kem, ecdh = os.urandom(32), os.urandom(32)
    base = transport.handshake_secret(kem, ecdh, transcript)
    assert transport.handshake_secret(os.urandom(32), ecdh, transcript) != base
    assert transport.handshake_secret(kem, os.urandom(32), transcript) != base
    assert transport.handshake_secret(kem, ecdh, sha3_256(b"other")) != base
    keys = {
        transport.expand_key(base, tag, transcript)
        for tag in (
            transport.TAG_HANDSHAKE_KEY_INITIATOR,
            transport.TAG_HANDSHAKE_KEY_RESPONDER,
            transport.TAG_TRAFFIC_KEY_INITIATOR,
            transport.TAG_TRAFFIC_KEY_RESPONDER,
        )
    }
    assert len(keys) == 4
    assert transport.next_key(base) != base
    assert transport.auth_message(Role.INITIATOR, transcript) != transport.auth_message(
        Role.RESPONDER, transcript
    )
