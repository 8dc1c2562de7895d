"""The P2P transport: a hybrid post-quantum handshake, then authenticated encrypted frames.

Byte-exact specification: ``docs/spec/p2p.md``. In brief, over one TCP stream::

    I → R   hello_I    46 B    magic "QOIN" ‖ version u16 ‖ chain_id u64 ‖ genesis_hash 32    (clear)
    R → I   hello_R    46 B    the same, from the responder                                  (clear)
    I → R   kex_I    1216 B    X25519 public key 32 ‖ ML-KEM-768 encapsulation key 1184      (clear)
    R → I   kex_R    1120 B    X25519 public key 32 ‖ ML-KEM-768 ciphertext 1088              (clear)
    R → I   auth_R   frame     identity public key ‖ signature, under the responder handshake key
    I → R   auth_I   frame     identity public key ‖ signature, under the initiator handshake key
    both    frames             length u32 ‖ ChaCha20-Poly1305(traffic key, nonce(counter), payload)

Both hellos are sent at once and checked before any key is generated, so a node of another network
or version is refused (:class:`WrongNetwork`, :class:`UnsupportedVersion`) before the key exchange.
The secret that keys everything is ``HKDF-Extract(salt = transcript hash, ML-KEM secret ‖ X25519
secret)``: it stays secret while *either* key exchange holds. Each side signs the transcript with its
long-term hybrid identity key (every component must verify), so the peer's node id (its address) is
bound to this session's ephemeral keys. Frames carry no nonce: each direction counts its frames, the
96-bit nonce is the counter, and the key is replaced by ``HKDF-Expand(key, "QOIN/p2p/rekey/v1")``
every :data:`REKEY_INTERVAL` frames. A replayed, dropped, reordered or altered frame fails its tag
and ends the connection (:class:`AuthenticationFailed`).

Every read is bounded in size before anything is allocated, the whole handshake has one deadline,
and a frame's body must follow its header within a timeout. Idle connections are the caller's
business: wrap :meth:`SecureChannel.receive` in a timeout (cancelling it between frames is safe).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from qoin.chain.block import MAX_BLOCK_SIZE
from qoin.crypto import hybrid
from qoin.crypto.address import Address
from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.crypto.hybrid import HybridKeyPair, HybridPublicKey, HybridSignature
from qoin.encoding.codec import DecodeError, Reader, Writer
from qoin.errors import QoinError

if TYPE_CHECKING:
    from qoin.chain.genesis import Genesis

# --- constants -------------------------------------------------------------------------------

PROTOCOL_VERSION = 1
"""The only transport version this implementation speaks."""
MAGIC = b"QOIN"
"""First four bytes of every connection."""
HELLO_SIZE = len(MAGIC) + 2 + 8 + HASH_SIZE
"""magic ‖ version (u16) ‖ chain id (u64) ‖ genesis hash: 46 bytes."""
X25519_KEY_SIZE = 32
MLKEM768_ENCAPSULATION_KEY_SIZE = 1184
MLKEM768_CIPHERTEXT_SIZE = 1088
KEX_INIT_SIZE = X25519_KEY_SIZE + MLKEM768_ENCAPSULATION_KEY_SIZE
"""The initiator's key-exchange message: 1216 bytes."""
KEX_REPLY_SIZE = X25519_KEY_SIZE + MLKEM768_CIPHERTEXT_SIZE
"""The responder's key-exchange message: 1120 bytes."""

KEY_SIZE = 32
"""ChaCha20-Poly1305 key size, and the size of every derived secret."""
TAG_SIZE = 16
"""Poly1305 tag size: the smallest ciphertext (an empty payload)."""
NONCE_SIZE = 12
HEADER_SIZE = 4
"""A frame header: the ciphertext length, u32 big-endian."""
MAX_PAYLOAD_SIZE = MAX_BLOCK_SIZE + 64 * 1024
"""Largest frame payload: a full block plus room for the message envelope around it."""
MAX_CIPHERTEXT_SIZE = MAX_PAYLOAD_SIZE + TAG_SIZE
MAX_AUTH_PAYLOAD_SIZE = 32 * 1024
"""Largest identity message (public key ‖ signature); the largest suite needs 18,180 bytes."""
REKEY_INTERVAL = 2**20
"""Frames sent under one key before both sides replace it (per direction)."""
COUNTER_LIMIT = 2**64 - 1
"""Frame counters must stay below this: the connection fails before a nonce could repeat."""

TAG_TRANSCRIPT = b"QOIN/p2p/transcript/v1"
TAG_AUTH = b"QOIN/p2p/auth/v1"
TAG_HANDSHAKE_KEY_INITIATOR = b"QOIN/p2p/handshake-key/initiator/v1"
TAG_HANDSHAKE_KEY_RESPONDER = b"QOIN/p2p/handshake-key/responder/v1"
TAG_TRAFFIC_KEY_INITIATOR = b"QOIN/p2p/traffic-key/initiator/v1"
TAG_TRAFFIC_KEY_RESPONDER = b"QOIN/p2p/traffic-key/responder/v1"
TAG_REKEY = b"QOIN/p2p/rekey/v1"
TAG_KEY_FINGERPRINT = b"QOIN/p2p/key-fingerprint/v1"


class Role(IntEnum):
    """Which end of the connection: the byte each side puts in front of what it signs."""

    INITIATOR = 1
    RESPONDER = 2


# --- errors ----------------------------------------------------------------------------------


class TransportError(QoinError):
    """The connection failed; it has been closed."""


class ConnectFailed(TransportError):
    """The TCP connection could not be opened."""


class ConnectionClosed(TransportError):
    """The peer closed or reset the connection between two messages."""


class ChannelClosed(TransportError):
    """The channel was closed (by :meth:`SecureChannel.close` or an earlier failure)."""


class HandshakeError(TransportError):
    """The handshake did not complete."""


class HandshakeTimeout(HandshakeError):
    """The handshake did not complete within its deadline."""


class MalformedHandshake(HandshakeError):
    """A handshake message is truncated, has the wrong magic, or holds an invalid key."""


class UnsupportedVersion(HandshakeError):
    """The peer speaks another transport version."""


class WrongNetwork(HandshakeError):
    """The peer belongs to another network."""


class WrongPeerChainId(WrongNetwork):
    """The peer's chain id differs from ours."""


class WrongGenesis(WrongNetwork):
    """The peer's genesis hash differs from ours."""


class PeerSignatureInvalid(HandshakeError):
    """The peer's signature over the transcript does not verify (every component must)."""


class WrongIdentity(HandshakeError):
    """The peer proved an identity other than the one required."""


class FrameError(TransportError):
    """A frame that cannot be accepted."""


class FrameTooLarge(FrameError):
    """A frame larger than the bound (refused before its body is read or allocated)."""


class MalformedFrame(FrameError):
    """A frame shorter than its tag, or cut off by the end of the stream."""


class AuthenticationFailed(FrameError):
    """A frame's tag does not verify: altered, replayed, reordered or under the wrong key."""


class FrameTimeout(FrameError):
    """A frame's body did not arrive within the read timeout after its header."""


class SendTimeout(TransportError):
    """The peer did not take our data within the write timeout."""


class NonceExhausted(TransportError):
    """The frame counter reached its limit; the connection must be replaced."""


# --- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkId:
    """What the hello announces; both sides must announce the same."""

    version: int
    """Transport protocol version (u16)."""
    chain_id: int
    """The network's chain id (u64)."""
    genesis_hash: bytes
    """Hash of the network's genesis block (32 bytes)."""

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 0xFFFF:
            raise ValueError(f"version {self.version} does not fit in 16 bits")
        if not 0 <= self.chain_id < 2**64:
            raise ValueError(f"chain id {self.chain_id} does not fit in 64 bits")
        if len(self.genesis_hash) != HASH_SIZE:
            raise ValueError(f"a genesis hash is {HASH_SIZE} bytes, got {len(self.genesis_hash)}")

    @classmethod
    def from_genesis(cls, genesis: Genesis, version: int = PROTOCOL_VERSION) -> NetworkId:
        """The network id of ``genesis`` at this transport version."""
        return cls(version, genesis.chain_id, genesis.genesis_hash)

    def hello(self) -> bytes:
        """The hello message: magic ‖ version (u16) ‖ chain id (u64) ‖ genesis hash."""
        return (
            Writer()
            .fixed(MAGIC, len(MAGIC))
            .u16(self.version)
            .fixed(self.chain_id.to_bytes(8, "big"), 8)
            .fixed(self.genesis_hash, HASH_SIZE)
            .bytes()
        )


@dataclass(frozen=True)
class Timeouts:
    """Time bounds in seconds (the idle timeout between frames is the caller's)."""

    handshake: float = 10.0
    """From the start of the TCP connect (or of :func:`accept`) to the end of the handshake."""
    frame_body: float = 30.0
    """From a frame's header to the last byte of its body (slow-loris protection)."""
    write: float = 30.0
    """How long a send may wait for the peer to take its data (slow-reader protection)."""


DEFAULT_TIMEOUTS = Timeouts()


# --- hello -----------------------------------------------------------------------------------


def decode_hello(data: bytes) -> NetworkId:
    """Parse a hello; raise :class:`MalformedHandshake` unless it starts with :data:`MAGIC`."""
    reader = Reader(data)
    if reader.fixed(len(MAGIC)) != MAGIC:
        raise MalformedHandshake("the peer's first bytes are not the Qoin p2p magic")
    version = reader.u16()
    chain_id = int.from_bytes(reader.fixed(8), "big")
    genesis_hash = reader.fixed(HASH_SIZE)
    reader.finish()
    return NetworkId(version, chain_id, genesis_hash)


def check_hello(ours: NetworkId, theirs: NetworkId) -> None:
    """Refuse a peer of another version, chain id or genesis, naming which differs."""
    if theirs.version != ours.version:
        raise UnsupportedVersion(
            f"peer speaks transport version {theirs.version}, we speak {ours.version}"
        )
    if theirs.chain_id != ours.chain_id:
        raise WrongPeerChainId(f"peer is on chain id {theirs.chain_id}, we are on {ours.chain_id}")
    if theirs.genesis_hash != ours.genesis_hash:
        raise WrongGenesis(
            f"peer's genesis is {theirs.genesis_hash.hex()}, ours is {ours.genesis_hash.hex()}"
        )


# --- key schedule ----------------------------------------------------------------------------


def transcript_hash(*messages: bytes) -> bytes:
    """``tagged_hash("QOIN/p2p/transcript/v1", m_1 ‖ … ‖ m_k)`` over the handshake so far.

    Every message has a fixed size or is self-delimiting, so the concatenation is unambiguous.
    """
    return tagged_hash(TAG_TRANSCRIPT, *messages)


def handshake_secret(mlkem_secret: bytes, x25519_secret: bytes, transcript: bytes) -> bytes:
    """``HKDF-Extract(SHA-256, salt = transcript, IKM = ML-KEM secret ‖ X25519 secret)``.

    Both shared secrets enter the one extraction, so the result is unpredictable to anyone who
    lacks either of them: the session stays private while either key exchange is unbroken.
    """
    if len(mlkem_secret) != KEY_SIZE or len(x25519_secret) != KEY_SIZE:
        raise ValueError("both shared secrets must be 32 bytes")
    return HKDF.extract(hashes.SHA256(), transcript, mlkem_secret + x25519_secret)


def expand_key(secret: bytes, tag: bytes, context: bytes = b"") -> bytes:
    """``HKDF-Expand(SHA-256, secret, info = len(tag) ‖ tag ‖ context, 32)``."""
    info = bytes((len(tag),)) + tag + context
    return HKDFExpand(hashes.SHA256(), KEY_SIZE, info).derive(secret)


def next_key(key: bytes) -> bytes:
    """The key that follows ``key`` at a rekey: ``HKDF-Expand(key, "QOIN/p2p/rekey/v1")``."""
    return expand_key(key, TAG_REKEY)


def key_fingerprint(key: bytes) -> bytes:
    """A public name for a key (for tests and logs): ``tagged_hash("QOIN/p2p/key-fingerprint/v1",
    key)``."""
    return tagged_hash(TAG_KEY_FINGERPRINT, key)


def auth_message(role: Role, transcript: bytes) -> bytes:
    """What a side signs: ``tagged_hash("QOIN/p2p/auth/v1", role ‖ transcript hash)``."""
    return tagged_hash(TAG_AUTH, bytes((role,)), transcript)


def frame_nonce(counter: int) -> bytes:
    """The 96-bit nonce of frame ``counter``: four zero bytes ‖ counter (u64 big-endian)."""
    return bytes(4) + counter.to_bytes(8, "big")


# --- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectionStatus:
    """Where one direction's cipher stands (for tests and monitoring; reveals no key)."""

    frames: int
    """Frames processed so far: the counter of the next frame."""
    epoch: int
    """How many times the key has been replaced."""
    key_fingerprint: bytes
    """:func:`key_fingerprint` of the current key."""


class FrameCipher:
    """One direction's AEAD state: the current key, the frame counter and the rekey schedule.

    Frame ``c`` is sealed under nonce :func:`frame_nonce` ``(c)`` with its 4-byte header as
    associated data. After frame ``c`` the counter becomes ``c + 1``; whenever that is a multiple
    of ``rekey_interval`` the key is replaced by :func:`next_key` of itself. The sender's and the
    receiver's cipher for a direction therefore move in lockstep without any message.
    """

    __slots__ = ("_aead", "_counter", "_epoch", "_key", "_rekey_interval")

    def __init__(self, key: bytes, rekey_interval: int = REKEY_INTERVAL, counter: int = 0) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a frame key is {KEY_SIZE} bytes")
        if rekey_interval < 1:
            raise ValueError("the rekey interval must be at least one frame")
        if not 0 <= counter <= COUNTER_LIMIT:
            raise ValueError("counter out of range")
        self._key = key
        self._aead = ChaCha20Poly1305(key)
        self._counter = counter
        self._epoch = 0
        self._rekey_interval = rekey_interval

    def status(self) -> DirectionStatus:
        """The counter, the number of rekeys and a fingerprint of the current key."""
        return DirectionStatus(self._counter, self._epoch, key_fingerprint(self._key))

    def seal(self, payload: bytes, max_payload: int = MAX_PAYLOAD_SIZE) -> tuple[bytes, bytes]:
        """Encrypt the next frame; return ``(header, ciphertext)``.

        A payload above ``max_payload`` raises :class:`FrameTooLarge` and leaves the state as it
        was.
        """
        if len(payload) > max_payload:
            raise FrameTooLarge(f"payload of {len(payload)} bytes exceeds {max_payload}")
        header = (len(payload) + TAG_SIZE).to_bytes(HEADER_SIZE, "big")
        ciphertext = self._aead.encrypt(self._take_nonce(), payload, header)
        self._advance()
        return header, ciphertext

    def open(self, header: bytes, ciphertext: bytes) -> bytes:
        """Decrypt the next frame; :class:`AuthenticationFailed` if its tag does not verify."""
        try:
            payload = self._aead.decrypt(self._take_nonce(), ciphertext, header)
        except InvalidTag:
            raise AuthenticationFailed(
                f"frame {self._counter} does not authenticate (altered, replayed, reordered "
                "or under another key)"
            ) from None
        self._advance()
        return payload

    def _take_nonce(self) -> bytes:
        if self._counter >= COUNTER_LIMIT:
            raise NonceExhausted(f"{self._counter} frames under this connection's keys")
        return frame_nonce(self._counter)

    def _advance(self) -> None:
        self._counter += 1
        if self._counter % self._rekey_interval == 0:
            self._key = next_key(self._key)
            self._aead = ChaCha20Poly1305(self._key)
            self._epoch += 1


def frame_length(header: bytes, max_ciphertext: int) -> int:
    """The ciphertext length a header announces, refused before anything is read or allocated."""
    length = int.from_bytes(header, "big")
    if length > max_ciphertext:
        raise FrameTooLarge(
            f"peer announced a frame of {length} bytes; the bound is {max_ciphertext}"
        )
    if length < TAG_SIZE:
        raise MalformedFrame(f"a frame of {length} bytes cannot hold its {TAG_SIZE}-byte tag")
    return length


async def _read_exactly(reader: asyncio.StreamReader, size: int, what: str) -> bytes:
    """``size`` bytes, or :class:`ConnectionClosed` (nothing read) / :class:`MalformedFrame`."""
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise MalformedFrame(
                f"stream ended {len(exc.partial)} bytes into a {size}-byte {what}"
            ) from None
        raise ConnectionClosed(f"peer closed the connection before the {what}") from None
    except OSError as exc:
        raise ConnectionClosed(f"connection lost while reading the {what}: {exc}") from None


async def _read_body(
    reader: asyncio.StreamReader, header: bytes, max_ciphertext: int, timeout: float | None
) -> bytes:
    length = frame_length(header, max_ciphertext)
    try:
        async with asyncio.timeout(timeout):
            return await _read_exactly(reader, length, "frame body")
    except TimeoutError:
        raise FrameTimeout(f"{length}-byte frame body not received within {timeout} s") from None


async def _drain(writer: asyncio.StreamWriter, timeout: float | None) -> None:
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError:
        raise SendTimeout(f"peer did not take our data within {timeout} s") from None
    except OSError as exc:
        raise ConnectionClosed(f"connection lost while sending: {exc}") from None


# --- the channel -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelStatus:
    """Both directions' cipher state."""

    send: DirectionStatus
    """Frames we send."""
    receive: DirectionStatus
    """Frames we receive."""


class SecureChannel:
    """An authenticated, encrypted, ordered stream of frames to one peer.

    Created by :func:`connect` or :func:`accept`, never directly. Any failure (a frame that does
    not authenticate, a size or time bound exceeded, the peer gone) closes the channel and raises a
    :class:`TransportError`; every later call raises :class:`ChannelClosed`.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        role: Role,
        peer_key: HybridPublicKey,
        transcript: bytes,
        send_cipher: FrameCipher,
        receive_cipher: FrameCipher,
        timeouts: Timeouts,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._send_cipher = send_cipher
        self._receive_cipher = receive_cipher
        self._timeouts = timeouts
        self._receive_lock = asyncio.Lock()
        self._closed_reason: str | None = None
        self.role = role
        """Whether we opened the connection."""
        self.peer_key = peer_key
        """The peer's long-term hybrid identity key, proven in the handshake."""
        self.transcript_hash = transcript
        """Hash of the whole handshake; equal on both ends, unique to this session."""

    @property
    def peer_id(self) -> Address:
        """The peer's node id: the address of its identity key."""
        return self.peer_key.address

    @property
    def remote_host(self) -> str | None:
        """The IP address of the socket's other end (not a name it was dialled by), if known."""
        peername = self._writer.get_extra_info("peername")
        return str(peername[0]) if isinstance(peername, tuple) and peername else None

    @property
    def closed(self) -> bool:
        """Whether the channel has been closed or has failed."""
        return self._closed_reason is not None

    def status(self) -> ChannelStatus:
        """Counters, rekey epochs and key fingerprints of both directions."""
        return ChannelStatus(self._send_cipher.status(), self._receive_cipher.status())

    async def send(self, payload: bytes) -> None:
        """Send one frame of at most :data:`MAX_PAYLOAD_SIZE` bytes.

        An over-size payload raises :class:`FrameTooLarge` and leaves the channel open.
        """
        self._check_open()
        try:
            header, ciphertext = self._send_cipher.seal(payload)
        except NonceExhausted as exc:
            self._fail(exc)
            raise
        self._writer.writelines((header, ciphertext))
        try:
            await _drain(self._writer, self._timeouts.write)
        except TransportError as exc:
            self._fail(exc)
            raise

    async def receive(self) -> bytes:
        """The next frame's payload, in order.

        Waits for a header without limit: bound the idle time by cancelling (e.g.
        ``asyncio.wait_for``), which is safe while no header has arrived. Once a header has
        arrived its body must follow within ``Timeouts.frame_body``; cancelling then closes the
        channel, since the stream would be out of step.
        """
        self._check_open()
        async with self._receive_lock:
            self._check_open()
            try:
                header = await _read_exactly(self._reader, HEADER_SIZE, "frame header")
            except TransportError as exc:
                self._fail(exc)
                raise
            try:
                body = await _read_body(
                    self._reader, header, MAX_CIPHERTEXT_SIZE, self._timeouts.frame_body
                )
                return self._receive_cipher.open(header, body)
            except BaseException as exc:
                self._fail(exc)
                raise

    async def close(self) -> None:
        """Close the connection (idempotent); waits at most ``Timeouts.write`` for the flush."""
        if self.closed:
            return
        self._closed_reason = "closed locally"
        self._writer.close()
        try:
            async with asyncio.timeout(self._timeouts.write):
                await self._writer.wait_closed()
        except (TimeoutError, OSError):
            self._writer.transport.abort()

    async def __aenter__(self) -> SecureChannel:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise ChannelClosed(f"channel to {self.peer_id} is closed ({self._closed_reason})")

    def _fail(self, exc: BaseException) -> None:
        if self._closed_reason is None:
            self._closed_reason = f"failed: {type(exc).__name__}: {exc}"
        self._writer.transport.abort()


# --- the handshake ---------------------------------------------------------------------------


@dataclass
class _Handshake:
    """The state one side carries through the handshake."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    role: Role
    identity: HybridKeyPair
    network: NetworkId
    expected_peer: Address | None
    rekey_interval: int
    timeouts: Timeouts

    async def read(self, size: int, what: str) -> bytes:
        try:
            return await _read_exactly(self.reader, size, what)
        except MalformedFrame as exc:
            raise MalformedHandshake(str(exc)) from None

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await _drain(self.writer, None)


async def _exchange_hellos(hs: _Handshake) -> tuple[bytes, bytes]:
    """Send our hello, read and check the peer's; return ``(hello_I, hello_R)``."""
    ours = hs.network.hello()
    await hs.write(ours)
    theirs = await hs.read(HELLO_SIZE, "hello")
    check_hello(hs.network, decode_hello(theirs))
    return (ours, theirs) if hs.role is Role.INITIATOR else (theirs, ours)


def _x25519_secret(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise MalformedHandshake("peer's X25519 key is invalid (low order)") from None


async def _initiator_kex(hs: _Handshake) -> tuple[bytes, bytes, bytes]:
    """Send ``kex_I``, read ``kex_R``; return ``(kex_I, kex_R, mlkem secret ‖ x25519 secret)``."""
    x_private = X25519PrivateKey.generate()
    kem_private = MLKEM768PrivateKey.generate()
    kex_init = (
        x_private.public_key().public_bytes_raw() + kem_private.public_key().public_bytes_raw()
    )
    await hs.write(kex_init)
    kex_reply = await hs.read(KEX_REPLY_SIZE, "key exchange reply")
    x_secret = _x25519_secret(x_private, kex_reply[:X25519_KEY_SIZE])
    try:
        kem_secret = kem_private.decapsulate(kex_reply[X25519_KEY_SIZE:])
    except ValueError:
        raise MalformedHandshake("peer's ML-KEM-768 ciphertext is invalid") from None
    return kex_init, kex_reply, kem_secret + x_secret


async def _responder_kex(hs: _Handshake) -> tuple[bytes, bytes, bytes]:
    """Read ``kex_I``, send ``kex_R``; return ``(kex_I, kex_R, mlkem secret ‖ x25519 secret)``."""
    kex_init = await hs.read(KEX_INIT_SIZE, "key exchange")
    try:
        peer_kem = MLKEM768PublicKey.from_public_bytes(kex_init[X25519_KEY_SIZE:])
    except ValueError:
        raise MalformedHandshake("peer's ML-KEM-768 encapsulation key is invalid") from None
    x_private = X25519PrivateKey.generate()
    x_secret = _x25519_secret(x_private, kex_init[:X25519_KEY_SIZE])
    kem_secret, ciphertext = peer_kem.encapsulate()
    kex_reply = x_private.public_key().public_bytes_raw() + ciphertext
    await hs.write(kex_reply)
    return kex_init, kex_reply, kem_secret + x_secret


async def _send_identity(hs: _Handshake, cipher: FrameCipher, transcript: bytes) -> bytes:
    """Sign the transcript, send ``public key ‖ signature`` as one frame; return the plaintext."""
    message = auth_message(hs.role, transcript)
    signature = await asyncio.to_thread(hybrid.sign, hs.identity, message)
    plaintext = hs.identity.public.encode() + signature.encode()
    header, ciphertext = cipher.seal(plaintext, MAX_AUTH_PAYLOAD_SIZE)
    await hs.write(header + ciphertext)
    return plaintext


async def _receive_identity(
    hs: _Handshake, cipher: FrameCipher, transcript: bytes
) -> tuple[HybridPublicKey, bytes]:
    """Read the peer's identity frame, check its signature and identity; return key and plaintext."""
    header = await hs.read(HEADER_SIZE, "identity frame header")
    try:
        body = await _read_body(hs.reader, header, MAX_AUTH_PAYLOAD_SIZE + TAG_SIZE, None)
    except (FrameTooLarge, MalformedFrame) as exc:
        raise MalformedHandshake(f"peer's identity frame: {exc}") from None
    plaintext = cipher.open(header, body)
    try:
        reader = Reader(plaintext)
        key = HybridPublicKey.read(reader)
        signature = HybridSignature.read(reader)
        reader.finish()
    except DecodeError as exc:
        raise MalformedHandshake(f"peer's identity message: {exc}") from None
    peer_role = Role.RESPONDER if hs.role is Role.INITIATOR else Role.INITIATOR
    try:
        hybrid.verify(key, auth_message(peer_role, transcript), signature)
    except hybrid.SignatureError as exc:
        raise PeerSignatureInvalid(f"peer {key.address}: {exc}") from None
    if hs.expected_peer is not None and key.address != hs.expected_peer:
        raise WrongIdentity(f"peer is {key.address}, expected {hs.expected_peer}")
    return key, plaintext


async def _authenticate(
    hs: _Handshake, transcript: list[bytes], secret: bytes
) -> tuple[HybridPublicKey, bytes]:
    """Exchange identities (responder first); return the peer's key and the final transcript hash."""
    th1 = transcript_hash(*transcript)
    to_responder = FrameCipher(expand_key(secret, TAG_HANDSHAKE_KEY_INITIATOR, th1))
    to_initiator = FrameCipher(expand_key(secret, TAG_HANDSHAKE_KEY_RESPONDER, th1))
    if hs.role is Role.RESPONDER:
        transcript.append(await _send_identity(hs, to_initiator, th1))
        peer_key, auth_i = await _receive_identity(hs, to_responder, transcript_hash(*transcript))
    else:
        peer_key, auth_r = await _receive_identity(hs, to_initiator, th1)
        transcript.append(auth_r)
        auth_i = await _send_identity(hs, to_responder, transcript_hash(*transcript))
    transcript.append(auth_i)
    return peer_key, transcript_hash(*transcript)


async def _run_handshake(hs: _Handshake) -> SecureChannel:
    _check_parameters(hs.network, hs.rekey_interval)
    hello_i, hello_r = await _exchange_hellos(hs)
    kex = _initiator_kex if hs.role is Role.INITIATOR else _responder_kex
    kex_i, kex_r, ikm = await kex(hs)
    transcript = [hello_i, hello_r, kex_i, kex_r]
    secret = handshake_secret(ikm[:KEY_SIZE], ikm[KEY_SIZE:], transcript_hash(*transcript))
    peer_key, final = await _authenticate(hs, transcript, secret)
    to_responder = FrameCipher(
        expand_key(secret, TAG_TRAFFIC_KEY_INITIATOR, final), hs.rekey_interval
    )
    to_initiator = FrameCipher(
        expand_key(secret, TAG_TRAFFIC_KEY_RESPONDER, final), hs.rekey_interval
    )
    initiating = hs.role is Role.INITIATOR
    return SecureChannel(
        hs.reader,
        hs.writer,
        role=hs.role,
        peer_key=peer_key,
        transcript=final,
        send_cipher=to_responder if initiating else to_initiator,
        receive_cipher=to_initiator if initiating else to_responder,
        timeouts=hs.timeouts,
    )


async def _handshake_until(hs: _Handshake, deadline: float) -> SecureChannel:
    """Run the handshake to ``deadline`` (loop time); on any failure abort the connection."""
    try:
        async with asyncio.timeout_at(deadline):
            return await _run_handshake(hs)
    except TimeoutError:
        hs.writer.transport.abort()
        raise HandshakeTimeout(
            f"handshake as {hs.role.name.lower()} not complete within {hs.timeouts.handshake} s"
        ) from None
    except BaseException:
        hs.writer.transport.abort()
        raise


def _check_parameters(network: NetworkId, rekey_interval: int) -> None:
    if network.version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"this node speaks transport version {PROTOCOL_VERSION}, not {network.version}"
        )
    if rekey_interval < 1:
        raise ValueError("the rekey interval must be at least one frame")


async def connect(
    host: str,
    port: int,
    identity: HybridKeyPair,
    network: NetworkId,
    expected_peer: Address | None = None,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    rekey_interval: int = REKEY_INTERVAL,
) -> SecureChannel:
    """Open a TCP connection and run the handshake as initiator, all within
    ``timeouts.handshake``.

    With ``expected_peer`` the responder must prove that node id, or :class:`WrongIdentity`.
    ``rekey_interval`` is a protocol constant; change it only in tests, and on both sides.
    """
    _check_parameters(network, rekey_interval)
    deadline = asyncio.get_running_loop().time() + timeouts.handshake
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise HandshakeTimeout(f"TCP connect to {host}:{port} timed out") from None
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from None
    hs = _Handshake(
        reader, writer, Role.INITIATOR, identity, network, expected_peer, rekey_interval, timeouts
    )
    return await _handshake_until(hs, deadline)


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    identity: HybridKeyPair,
    network: NetworkId,
    expected_peer: Address | None = None,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    rekey_interval: int = REKEY_INTERVAL,
) -> SecureChannel:
    """Run the handshake as responder on an accepted stream (inside ``asyncio.start_server``).

    On failure the connection is closed and the :class:`TransportError` propagates.
    """
    deadline = asyncio.get_running_loop().time() + timeouts.handshake
    hs = _Handshake(
        reader, writer, Role.RESPONDER, identity, network, expected_peer, rekey_interval, timeouts
    )
    return await _handshake_until(hs, deadline)
