"""Signed engine statements: what a serving node said, provably, to a peer's engine call.

A node that serves its execution client over p2p (``--serve-execution``) signs every answer with its
node identity, so that a lie can be shown to third parties: the statement names the network
(genesis hash), the method, the parameters exactly as received, the answer exactly as sent, and
whether the answer is an error text. Encodings (``docs/spec/p2p.md``)::

    signing_message = len(tag) ‖ "QOIN/engine-statement/v1" ‖ genesis_hash (32)
                      ‖ method: varint length (<= 64) ‖ UTF-8 bytes ‖ error u8 (0 or 1)
                      ‖ varint len(params) ‖ SHA3-256(params) ‖ varint len(answer) ‖ SHA3-256(answer)

    signed statement = genesis_hash (32) ‖ method: varint length (<= 64) ‖ UTF-8 bytes
                       ‖ params: varint length (<= MAX_ENGINE_REQUEST) ‖ bytes
                       ‖ answer: varint length (<= MAX_STATEMENT_ANSWER) ‖ bytes ‖ error u8 (0 or 1)
                       ‖ signer (hybrid public key) ‖ signature (hybrid signature)

The signing message commits to the parameters and the answer by their SHA3-256 digests (and
lengths), so a signer hashes a large answer once instead of once per signature component. The
hybrid signature itself binds the signer's suite and address (:mod:`qoin.crypto.hybrid`).

This module also holds the errors of a remote engine call (:class:`EngineCallError` and its
subclasses) and :class:`ExecutionNode`, so that the consensus side can import them without the p2p
service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from qoin.chain.block import MAX_BLOCK_SIZE
from qoin.crypto.address import Address
from qoin.crypto.hashing import HASH_SIZE, sha3_256
from qoin.crypto.hybrid import (
    AddressMismatch,
    HybridKeyPair,
    HybridPublicKey,
    HybridSignature,
    SignatureError,
    sign,
    verify,
)
from qoin.encoding.codec import DecodeError, OversizeField, Reader, Writer, encode_varint
from qoin.errors import QoinError

STATEMENT_TAG: Final = b"QOIN/engine-statement/v1"
"""Domain separation of engine statements from every other thing a node key signs."""
MAX_METHOD_BYTES: Final = 64
"""UTF-8 bytes of an engine method name (the longest served one has 26)."""
ENGINE_CHUNK: Final = 1024 * 1024
"""Bytes of params or answer in one ``EngineRequest``/``EngineAnswer`` part."""
MAX_ENGINE_REQUEST: Final = 3 * MAX_BLOCK_SIZE
"""Bytes of a request's JSON params: a block (hex-encoded, so twice its size) and some room."""
MAX_STATEMENT_ANSWER: Final = 128 * 1024 * 1024
"""Bytes of one answer: the engine client's ``MAX_ANSWER_BYTES`` (a requester may ask for less)."""

_PREFIX: Final = bytes((len(STATEMENT_TAG),)) + STATEMENT_TAG


class EngineCallError(QoinError):
    """A remote engine call over p2p got no usable answer."""


class EngineCallTimeout(EngineCallError):
    """No full answer came in the time allowed."""


class PeerUnavailable(EngineCallError):
    """The peer is not connected, went away during the call, or cannot take more messages."""


class BadEngineAnswer(EngineCallError):
    """The peer answered something unacceptable: over the size asked for, broken framing, a
    signature that does not verify, or a statement about another call (the peer is penalised)."""


class StatementError(DecodeError):
    """Bytes that are not a canonical signed statement, or a statement over its bounds."""


def _method_bytes(method: str) -> bytes:
    try:
        data = method.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StatementError(f"method name is not encodable as UTF-8: {exc.reason}") from None
    if not data or len(data) > MAX_METHOD_BYTES:
        raise StatementError(f"a method name is 1 to {MAX_METHOD_BYTES} UTF-8 bytes")
    return data


def _method_text(data: bytes) -> str:
    if not data:
        raise StatementError("empty method name")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StatementError(f"method name is not valid UTF-8: {exc.reason}") from None


@dataclass(frozen=True)
class EngineStatement:
    """One engine call and its answer, as the serving node saw them."""

    genesis_hash: bytes
    """The network (its genesis block hash), so a statement cannot be replayed on another one."""
    method: str
    """The engine method, e.g. ``engine_newPayload``."""
    params: bytes
    """The JSON params array exactly as received (UTF-8)."""
    answer: bytes
    """The JSON ``result`` exactly as sent, or with :attr:`error` the UTF-8 error text."""
    error: bool
    """Whether :attr:`answer` is an error text instead of a result."""

    def check_bounds(self) -> None:
        """Raise :class:`StatementError` when a field is over its bound."""
        if len(self.genesis_hash) != HASH_SIZE:
            raise StatementError(f"a genesis hash is {HASH_SIZE} bytes")
        _method_bytes(self.method)
        if len(self.params) > MAX_ENGINE_REQUEST:
            raise StatementError(f"params of {len(self.params)} bytes over {MAX_ENGINE_REQUEST}")
        if len(self.answer) > MAX_STATEMENT_ANSWER:
            raise StatementError(
                f"an answer of {len(self.answer)} bytes over {MAX_STATEMENT_ANSWER}"
            )

    def signing_message(self) -> bytes:
        """The canonical, domain-separated message the serving node signs."""
        self.check_bounds()
        return statement_signing_message(
            self.genesis_hash,
            self.method,
            self.error,
            (len(self.params), sha3_256(self.params)),
            (len(self.answer), sha3_256(self.answer)),
        )


def statement_signing_message(
    genesis_hash: bytes,
    method: str,
    error: bool,
    params: tuple[int, bytes],
    answer: tuple[int, bytes],
) -> bytes:
    """:meth:`EngineStatement.signing_message` from the sizes and SHA3-256 digests of the params
    and the answer (so that a server can sign a refusal of a request it did not keep)."""
    method_data = _method_bytes(method)
    if len(genesis_hash) != HASH_SIZE:
        raise StatementError(f"a genesis hash is {HASH_SIZE} bytes")
    return b"".join(
        (
            _PREFIX,
            genesis_hash,
            encode_varint(len(method_data)),
            method_data,
            b"\x01" if error else b"\x00",
            encode_varint(params[0]),
            params[1],
            encode_varint(answer[0]),
            answer[1],
        )
    )


@dataclass(frozen=True)
class SignedStatement:
    """An :class:`EngineStatement` with the serving node's key and signature."""

    statement: EngineStatement
    """What was asked and answered."""
    signer: HybridPublicKey
    """The serving node's identity key (its address is the node id)."""
    signature: HybridSignature
    """The signer's signature over ``statement.signing_message()``."""

    @classmethod
    def create(cls, keypair: HybridKeyPair, statement: EngineStatement) -> SignedStatement:
        """Sign ``statement`` with ``keypair``."""
        return cls(statement, keypair.public, sign(keypair, statement.signing_message()))

    @property
    def node_id(self) -> Address:
        """The signer's node id."""
        return self.signer.address

    def verify(self, signer: Address | None = None) -> None:
        """Raise :class:`~qoin.crypto.hybrid.SignatureError` unless the signature verifies (and,
        given ``signer``, was made by that node id)."""
        if signer is not None and self.signer.address != signer:
            raise AddressMismatch(
                f"the statement is signed by {self.signer.address}, not by {signer}"
            )
        try:
            message = self.statement.signing_message()
        except StatementError as exc:
            raise SignatureError(f"the statement is over its bounds: {exc}") from None
        verify(self.signer, message, self.signature)

    def encode(self) -> bytes:
        """The canonical encoding (see the module docstring); refuses a statement over bounds."""
        self.statement.check_bounds()
        st = self.statement
        writer = Writer().fixed(st.genesis_hash, HASH_SIZE)
        writer.var_bytes(_method_bytes(st.method), MAX_METHOD_BYTES)
        writer.var_bytes(st.params, MAX_ENGINE_REQUEST)
        writer.var_bytes(st.answer, MAX_STATEMENT_ANSWER).u8(1 if st.error else 0)
        writer.raw(self.signer.encode()).raw(self.signature.encode())
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> SignedStatement:
        """Decode from a reader (inside a larger object, e.g. a fraud report)."""
        genesis_hash = reader.fixed(HASH_SIZE)
        method = _method_text(reader.var_bytes(MAX_METHOD_BYTES))
        params = reader.var_bytes(MAX_ENGINE_REQUEST)
        answer = reader.var_bytes(MAX_STATEMENT_ANSWER)
        flag = reader.u8()
        if flag > 1:
            raise StatementError(f"error flag {flag} is neither 0 nor 1")
        signer = HybridPublicKey.read(reader)
        signature = HybridSignature.read(reader)
        return cls(
            EngineStatement(genesis_hash, method, params, answer, flag == 1), signer, signature
        )

    @classmethod
    def decode(
        cls, data: bytes, max_size: int = MAX_ENGINE_REQUEST + MAX_STATEMENT_ANSWER
    ) -> SignedStatement:
        """Decode a standalone statement of at most ``max_size`` bytes, refusing anything that is
        not canonical. Does not verify the signature: call :meth:`verify`."""
        if len(data) > max_size:
            raise OversizeField(f"a statement of {len(data)} bytes exceeds {max_size}")
        reader = Reader(data)
        signed = cls.read(reader)
        reader.finish()
        return signed


@dataclass(frozen=True)
class ExecutionNode:
    """A connected peer that offers its execution client to the network."""

    node_id: Address
    """The peer's node id (its identity key's address)."""
    host: str
    """The peer's address as connected."""
    port: int
    """The port it listens on (its Status), else the connection's."""
    public_key: HybridPublicKey
    """The peer's identity key, which signs its engine answers."""

    @property
    def enode(self) -> str:
        """``qoin1…@host:port``, as known addresses are written."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.node_id}@{host}:{self.port}"
