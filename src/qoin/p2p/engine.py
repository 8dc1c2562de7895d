"""Shared execution over p2p: serving the local execution client's engine API to peers
(:class:`EngineServer`), and the requesting side's bookkeeping of calls in flight
(:class:`EngineCalls`). The service (:mod:`qoin.p2p.service`) owns the connections and calls both
on its event loop; engine calls and signing run on the server's own bounded thread pool, never on
the loop nor on the chain worker (``docs/spec/p2p.md``).

Serving. A request arrives as ``EngineRequest`` parts numbered from 0. Its first part decides:
a method that is not served (:data:`SERVED_METHODS`), a peer over its request rate (a token bucket)
or over its calls in flight, or all peers together over theirs, is refused with a signed error
answer (``"method not served"``, ``"rate limited"``: no penalty), sent once the last part is in
(the refusal signs the request's digest, computed as it streams in, not its bytes). An accepted
request is kept until its last part, then the local engine call and the signing run on the pool,
and the answer goes back in parts, signed on the last. Framing that breaks the rules (a part out
of order, another method, a request id in use, over :data:`~qoin.p2p.statements.MAX_ENGINE_REQUEST`
bytes, more than :data:`MAX_OPEN_REQUESTS` requests open) is a :class:`EngineFramingError`.

Memory. The params of accepted requests (assembling or running) are held in memory, at most
:data:`MAX_BUFFERED_PER_PEER` bytes of one peer and :data:`MAX_BUFFERED` of all peers together,
counted as each part arrives, before it is kept: a part that would go over either bound turns its
request into a refusal (``"rate limited"``, signed over the digest of all its params, the parts
kept so far hashed and let go), so no peer can make the server hold more than these bounds
whatever the number and size of the requests it opens. The answers that can be large (traces,
steps, proofs, witnesses, payloads: up to :data:`~qoin.p2p.statements.MAX_STATEMENT_ANSWER` each)
are computed at most :data:`MAX_HEAVY_IN_FLIGHT` at once, and the answers held until they are sent
are at most :data:`MAX_ANSWERS_HELD` bytes: one that would go over is replaced by a signed
``"rate limited"`` refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Final

from qoin.consensus.engine import EngineClient, EngineError
from qoin.crypto.hybrid import HybridKeyPair, sign
from qoin.errors import QoinError
from qoin.p2p.messages import EngineAnswer, EngineRequest
from qoin.p2p.statements import (
    ENGINE_CHUNK,
    MAX_ENGINE_REQUEST,
    MAX_STATEMENT_ANSWER,
    BadEngineAnswer,
    EngineCallError,
    EngineCallTimeout,
    EngineStatement,
    ExecutionNode,
    PeerUnavailable,
    SignedStatement,
    statement_signing_message,
)
from qoin.ratelimit import TokenBucket

__all__ = [
    "SERVED_METHODS",
    "BadEngineAnswer",
    "EngineCallError",
    "EngineCallTimeout",
    "EngineCalls",
    "EngineFramingError",
    "EngineServer",
    "ExecutionNode",
    "PeerUnavailable",
]

log = logging.getLogger(__name__)

SERVED_METHODS: Final = frozenset(
    {
        "engine_newPayload",
        "engine_getVerdict",
        "engine_getTrace",
        "engine_getSteps",
        "engine_getProofs",
        "engine_getWitness",
        "engine_pendingTransactions",
        "engine_submitTransactions",
        "engine_buildPayload",
    }
)
"""What a peer may call. Never ``engine_forkchoiceUpdated`` nor ``engine_getPayload``: a peer must
never move the operator's head."""
NOT_SERVED: Final = "method not served"
RATE_LIMITED: Final = "rate limited"
MAX_OPEN_REQUESTS: Final = 64
"""Requests of one peer whose parts are still coming (refused ones included)."""
OPEN_REQUEST_TIMEOUT_S: Final = 60.0
"""A request whose last part has not come this long after its first is forgotten."""
HEAVY_METHODS: Final = frozenset(
    {
        "engine_getTrace",
        "engine_getSteps",
        "engine_getProofs",
        "engine_getWitness",
        "engine_buildPayload",
    }
)
"""Methods whose answers may be large: they run on a pool of their own."""
MAX_HEAVY_IN_FLIGHT: Final = 4
"""Calls of :data:`HEAVY_METHODS` running at once (all peers); the others wait for a thread."""
MAX_ANSWERS_HELD: Final = 4 * MAX_STATEMENT_ANSWER
"""Bytes of answers computed and not yet sent (all peers)."""
ALL_PEERS_BURST: Final = 256.0
ALL_PEERS_PER_S: Final = 128.0
"""Requests of all peers together served: a burst of 256, then 128 a second (a token bucket);
beyond, "rate limited". Each answer costs a signature (milliseconds of CPU): without this bound
many peers, each within its own rate, could keep every core busy signing."""
REFUSAL_BURST: Final = 16.0
REFUSALS_PER_S: Final = 4.0
"""Refusals one peer gets answered (each costs a signature, milliseconds of CPU): a burst of 16,
then 4 a second (a token bucket); beyond, a refused request is not answered (its caller times
out). A requester that keeps to the request rate is refused only when the server is busy."""
MAX_PENDING_REFUSALS: Final = 64
"""Refusals waiting to be signed (all peers); beyond, a refusal is not answered."""
MAX_BUFFERED_PER_PEER: Final = MAX_ENGINE_REQUEST
"""Params bytes of one peer's accepted requests held at once (one request of the largest size)."""
MAX_BUFFERED: Final = 4 * MAX_ENGINE_REQUEST
"""Params bytes of all peers' accepted requests held at once."""
ANSWER_SEND_TIMEOUT_S: Final = 20.0
"""How long an answer part may wait for room in the peer's outbox."""


class EngineFramingError(QoinError):
    """A peer broke the framing of engine requests or answers (a protocol violation)."""


def chunks(data: bytes) -> list[bytes]:
    """``data`` cut into parts of at most :data:`ENGINE_CHUNK` bytes (one empty part if empty)."""
    return [data[i : i + ENGINE_CHUNK] for i in range(0, len(data), ENGINE_CHUNK)] or [b""]


def request_parts(request_id: int, method: str, params: bytes) -> list[EngineRequest]:
    """The ``EngineRequest`` messages of one call."""
    pieces = chunks(params)
    return [
        EngineRequest(request_id, method, index, index == len(pieces) - 1, piece)
        for index, piece in enumerate(pieces)
    ]


def answer_parts(request_id: int, error: bool, data: bytes, signature: bytes) -> list[EngineAnswer]:
    """The ``EngineAnswer`` messages of one answer (the signature on the last)."""
    pieces = chunks(data)
    last = len(pieces) - 1
    return [
        EngineAnswer(
            request_id, index, index == last, error, piece, signature if index == last else b""
        )
        for index, piece in enumerate(pieces)
    ]


# --- serving ---------------------------------------------------------------------------------


@dataclass
class _Incoming:
    method: str
    started: float
    refusal: str | None
    """Why it is refused (answered when the last part is in), or None."""
    next_part: int = 0
    size: int = 0
    parts: list[bytes] = field(default_factory=list)
    digest: Any = None
    """SHA3-256 of the params streamed so far (refused requests only)."""


@dataclass
class _PeerState:
    requests: TokenBucket
    """The peer's requests (:attr:`EngineServer.burst`, :attr:`EngineServer.per_s`)."""
    refusals: TokenBucket
    """The refusals it is answered (:data:`REFUSAL_BURST`, :data:`REFUSALS_PER_S`)."""
    in_flight: int = 0
    """Accepted requests of this peer not yet answered (assembling or running)."""
    buffered: int = 0
    """Params bytes of this peer's accepted requests held (assembling or running)."""
    open: dict[int, _Incoming] = field(default_factory=dict)
    running: dict[int, int] = field(default_factory=dict)
    """Requests running, with the params bytes each holds."""


@dataclass(frozen=True)
class Call:
    """A complete request to run (accepted) or to refuse (``refusal`` set)."""

    request_id: int
    method: str
    params: bytes
    """The params (empty for a refusal: see ``params_size`` and ``params_digest``)."""
    params_size: int
    params_digest: bytes
    refusal: str | None


@dataclass
class EngineCounters:
    """What the server did, for the status."""

    served: int = 0
    """Requests answered by the engine (its error answers included)."""
    refused: int = 0
    """Requests refused (not served, rate limited)."""
    unanswered: int = 0
    """Refused requests not even answered (a peer over its refusals: :data:`REFUSALS_PER_S`)."""
    bytes_in: int = 0
    """Params bytes received."""
    bytes_out: int = 0
    """Answer bytes sent."""


class EngineServer:
    """Serves one local execution client (through its own :class:`EngineClient`) to peers.

    ``max_in_flight`` calls of all peers together (the thread pool's size), ``per_peer_in_flight``
    of one peer; each peer may start ``burst`` requests at once, then ``per_s`` a second. All
    methods but :meth:`close` run on the p2p event loop.
    """

    def __init__(
        self,
        engine: EngineClient,
        *,
        max_in_flight: int = 16,
        per_peer_in_flight: int = 4,
        burst: int = 64,
        per_s: float = 32.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1 or per_peer_in_flight < 1 or burst < 1 or not per_s > 0:
            raise QoinError("engine server limits must be positive")
        self.engine = engine
        self.max_in_flight = max_in_flight
        self.per_peer_in_flight = per_peer_in_flight
        self.burst = burst
        self.per_s = per_s
        self.counters = EngineCounters()
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="p2p-engine")
        self._heavy = ThreadPoolExecutor(
            min(MAX_HEAVY_IN_FLIGHT, max_in_flight), thread_name_prefix="p2p-engine-heavy"
        )
        self._signer = ThreadPoolExecutor(1, thread_name_prefix="p2p-engine-refusals")
        self._held = 0
        self._pending_refusals = 0
        self._identity: HybridKeyPair | None = None
        self._genesis_hash = b""
        self._peers: dict[int, _PeerState] = {}
        self._gone: dict[int, _PeerState] = {}
        """Peers gone with calls still running (their slots are freed as the calls finish)."""
        self._in_flight = 0
        self._buffered = 0
        self._all_peers = TokenBucket.full(ALL_PEERS_BURST, ALL_PEERS_PER_S, clock())
        """The requests of all peers together."""

    def bind(self, identity: HybridKeyPair, genesis_hash: bytes) -> None:
        """The node identity that signs the answers, and the network they are about."""
        self._identity, self._genesis_hash = identity, genesis_hash

    @property
    def in_flight(self) -> int:
        """Accepted requests of all peers not yet answered."""
        return self._in_flight

    @property
    def buffered(self) -> int:
        """Params bytes of all peers' accepted requests held now."""
        return self._buffered

    def close(self) -> None:
        """Stop the pool (calls under way finish; queued ones are dropped) and the client."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._heavy.shutdown(wait=False, cancel_futures=True)
        self._signer.shutdown(wait=False, cancel_futures=True)
        self.engine.close()

    # -- requests (on the loop) ---------------------------------------------------------------

    def _state(self, connection_id: int) -> _PeerState:
        state = self._peers.get(connection_id)
        if state is None:
            now = self._clock()
            state = self._peers[connection_id] = _PeerState(
                TokenBucket.full(self.burst, self.per_s, now),
                TokenBucket.full(REFUSAL_BURST, REFUSALS_PER_S, now),
            )
        return state

    def receive(self, connection_id: int, message: EngineRequest) -> Call | None:
        """Take one request part; the complete request once its last part is in, else None (also
        for a refusal not answered: the peer is over :data:`REFUSALS_PER_S`). Raises :class:`EngineFramingError` when the peer breaks the framing."""
        state = self._state(connection_id)
        request_id = message.request_id
        incoming = state.open.get(request_id)
        if message.part == 0:
            if incoming is not None or request_id in state.running:
                raise EngineFramingError(f"engine request id {request_id} is in use")
            if len(state.open) >= MAX_OPEN_REQUESTS:
                raise EngineFramingError(f"more than {MAX_OPEN_REQUESTS} engine requests open")
            incoming = self._open(state, message.method)
            state.open[request_id] = incoming
        elif incoming is None:
            raise EngineFramingError(f"part {message.part} of no open engine request")
        elif message.part != incoming.next_part or message.method != incoming.method:
            self._drop(state, request_id)
            raise EngineFramingError(
                f"engine request {request_id}: part {message.part} ({message.method}) where part "
                f"{incoming.next_part} ({incoming.method}) was due"
            )
        incoming.next_part += 1
        incoming.size += len(message.data)
        self.counters.bytes_in += len(message.data)
        if incoming.size > MAX_ENGINE_REQUEST:
            self._drop(state, request_id)
            raise EngineFramingError(f"an engine request over {MAX_ENGINE_REQUEST} bytes")
        if incoming.refusal is None and (
            state.buffered + len(message.data) > MAX_BUFFERED_PER_PEER
            or self._buffered + len(message.data) > MAX_BUFFERED
        ):
            self._overflow(state, incoming)
        if incoming.refusal is None:
            incoming.parts.append(message.data)
            state.buffered += len(message.data)
            self._buffered += len(message.data)
        else:
            incoming.digest.update(message.data)
        if not message.last:
            return None
        del state.open[request_id]
        if incoming.refusal is not None:
            self.counters.refused += 1
            if not state.refusals.take(self._clock()):
                self.counters.unanswered += 1
                return None
            return Call(
                request_id,
                incoming.method,
                b"",
                incoming.size,
                incoming.digest.digest(),
                incoming.refusal,
            )
        state.running[request_id] = incoming.size
        return Call(request_id, incoming.method, b"".join(incoming.parts), incoming.size, b"", None)

    def _open(self, state: _PeerState, method: str) -> _Incoming:
        refusal: str | None = None
        if method not in SERVED_METHODS:
            refusal = NOT_SERVED
        elif (
            not state.requests.take(self._clock())
            or state.in_flight >= self.per_peer_in_flight
            or self._in_flight >= self.max_in_flight
            or not self._all_peers.take(self._clock())
        ):
            refusal = RATE_LIMITED
        if refusal is not None:
            return _Incoming(method, self._clock(), refusal, digest=hashlib.sha3_256())
        state.in_flight += 1
        self._in_flight += 1
        return _Incoming(method, self._clock(), None)

    def _overflow(self, state: _PeerState, incoming: _Incoming) -> None:
        """An accepted request that would hold more bytes than allowed becomes a refusal: its
        slot and bytes are let go, what it kept so far is hashed (the refusal signs it all)."""
        digest = hashlib.sha3_256()
        for part in incoming.parts:
            digest.update(part)
        held = sum(len(part) for part in incoming.parts)
        incoming.parts.clear()
        incoming.refusal, incoming.digest = RATE_LIMITED, digest
        self._release(state, held)

    def _drop(self, state: _PeerState, request_id: int) -> None:
        incoming = state.open.pop(request_id, None)
        if incoming is not None and incoming.refusal is None:
            self._release(state, sum(len(part) for part in incoming.parts))

    def _release(self, state: _PeerState, held: int) -> None:
        state.in_flight -= 1
        self._in_flight -= 1
        state.buffered -= held
        self._buffered -= held

    def finished(self, connection_id: int, request_id: int) -> None:
        """An accepted request has been answered (or given up): free its slot and its bytes."""
        state = self._peers.get(connection_id) or self._gone.get(connection_id)
        if state is not None and request_id in state.running:
            self._release(state, state.running.pop(request_id))
            if not state.running:
                self._gone.pop(connection_id, None)

    def forget(self, connection_id: int) -> None:
        """The peer is gone: its open requests are dropped; running ones keep their slots until
        they finish (:meth:`finished`), so that reconnecting cannot pile calls on the pool."""
        state = self._peers.pop(connection_id, None)
        if state is None:
            return
        for request_id in list(state.open):
            self._drop(state, request_id)
        if state.running:
            self._gone[connection_id] = state

    def prune(self) -> None:
        """Forget requests whose last part did not come in :data:`OPEN_REQUEST_TIMEOUT_S`."""
        cutoff = self._clock() - OPEN_REQUEST_TIMEOUT_S
        for state in self._peers.values():
            for request_id, incoming in list(state.open.items()):
                if incoming.started < cutoff:
                    self._drop(state, request_id)

    # -- answering ----------------------------------------------------------------------------

    async def answer(self, call: Call) -> list[EngineAnswer] | None:
        """The signed answer of a complete request, computed off the loop (None: a refusal
        dropped because too many wait to be signed, or the server is closed)."""
        loop = asyncio.get_running_loop()
        try:
            if call.refusal is not None:
                if self._pending_refusals >= MAX_PENDING_REFUSALS:
                    return None
                self._pending_refusals += 1
                try:
                    return await loop.run_in_executor(self._signer, self._refuse, call)
                finally:
                    self._pending_refusals -= 1
            pool = self._heavy if call.method in HEAVY_METHODS else self._pool
            parts = await loop.run_in_executor(pool, self._serve, call)
            size = sum(len(part.data) for part in parts)
            if self._held + size > MAX_ANSWERS_HELD:
                del parts  # let it go before anything else is made
                self.counters.refused += 1
                parts = await loop.run_in_executor(self._signer, self._refuse_busy, call)
                size = sum(len(part.data) for part in parts)
            else:
                self.counters.served += 1
        except RuntimeError:  # the pool is shut down: the node is stopping
            return None
        self._held += size
        return parts

    @property
    def held(self) -> int:
        """Bytes of answers computed and not yet sent (see :meth:`release`)."""
        return self._held

    def release(self, parts: list[EngineAnswer]) -> None:
        """The answer of :meth:`answer` has been sent (or given up): its bytes are free."""
        self._held -= sum(len(part.data) for part in parts)

    def _identity_or_fail(self) -> HybridKeyPair:
        if self._identity is None:
            raise QoinError("the engine server is not bound to a node identity")
        return self._identity

    def _refuse(self, call: Call) -> list[EngineAnswer]:
        text = (call.refusal or "").encode()
        message = statement_signing_message(
            self._genesis_hash,
            call.method,
            True,
            (call.params_size, call.params_digest),
            (len(text), hashlib.sha3_256(text).digest()),
        )
        signature = sign(self._identity_or_fail(), message)
        return answer_parts(call.request_id, True, text, signature.encode())

    def _refuse_busy(self, call: Call) -> list[EngineAnswer]:
        """A signed "rate limited" refusal of an accepted call (too many answer bytes held)."""
        digest = hashlib.sha3_256(call.params).digest()
        return self._refuse(replace(call, refusal=RATE_LIMITED, params_digest=digest))

    def _serve(self, call: Call) -> list[EngineAnswer]:
        """Run the engine call and sign its answer (on a pool thread)."""
        error, answer = True, b""
        try:
            params = json.loads(call.params)
            if not isinstance(params, list):
                raise ValueError("not an array")
        except (ValueError, UnicodeDecodeError):
            answer = b"params are not a JSON array"
        else:
            try:
                result = self.engine.call(call.method, *params)
                answer = json.dumps(result, separators=(",", ":")).encode()
                error = False
            except EngineError as exc:
                answer = str(exc).encode()
            except (TypeError, ValueError) as exc:  # a result JSON cannot write: never expected
                answer = f"cannot encode the answer: {exc}".encode()
            if not error and len(answer) > MAX_STATEMENT_ANSWER:
                error, answer = True, f"answer over {MAX_STATEMENT_ANSWER} bytes".encode()
        statement = EngineStatement(self._genesis_hash, call.method, call.params, answer, error)
        signed = SignedStatement.create(self._identity_or_fail(), statement)
        return answer_parts(call.request_id, error, answer, signed.signature.encode())


# --- requesting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawAnswer:
    """A reassembled answer, its signature not yet checked."""

    error: bool
    data: bytes
    signature: bytes


@dataclass
class _Pending:
    future: asyncio.Future[RawAnswer]
    max_answer: int
    next_part: int = 0
    size: int = 0
    error: bool = False
    parts: list[bytes] = field(default_factory=list)


GAVE_UP_CALLS: Final = 1024
"""Calls given up on (timed out) remembered, so that their late answers are no offence."""


class EngineCalls:
    """The engine calls this node has in flight to its peers, by connection and request id
    (on the loop)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._gave_up: dict[tuple[int, int], None] = {}
        self._next_id = 1

    def open(self, connection_id: int, max_answer: int) -> tuple[int, asyncio.Future[RawAnswer]]:
        """A new request id for a call to the connection, and the future of its answer."""
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[RawAnswer] = asyncio.get_running_loop().create_future()
        self._pending[(connection_id, request_id)] = _Pending(future, max_answer)
        return request_id, future

    def close(self, connection_id: int, request_id: int, gave_up: bool) -> None:
        """The call is over; with ``gave_up`` a late answer is ignored."""
        self._pending.pop((connection_id, request_id), None)
        if gave_up:
            self._give_up((connection_id, request_id))

    def _give_up(self, key: tuple[int, int]) -> None:
        self._gave_up[key] = None
        while len(self._gave_up) > GAVE_UP_CALLS:
            self._gave_up.pop(next(iter(self._gave_up)))

    def peer_gone(self, connection_id: int) -> None:
        """The connection closed: its calls fail with :class:`PeerUnavailable`."""
        for key in [k for k in self._pending if k[0] == connection_id]:
            pending = self._pending.pop(key)
            if not pending.future.done():
                pending.future.set_exception(PeerUnavailable("the peer went away during the call"))

    def receive(self, connection_id: int, message: EngineAnswer) -> bool:
        """Take one answer part; False when it answers nothing (unsolicited). Raises
        :class:`EngineFramingError` when the answer breaks the framing (the call then fails
        with :class:`BadEngineAnswer`)."""
        key = (connection_id, message.request_id)
        pending = self._pending.get(key)
        if pending is None or pending.future.done():
            return key in self._gave_up
        if message.part != pending.next_part or (message.part and message.error != pending.error):
            self._fail(
                key, pending, f"answer part {message.part} where {pending.next_part} was due"
            )
            raise EngineFramingError(f"engine answer {message.request_id}: parts out of order")
        pending.next_part += 1
        pending.error = message.error
        pending.size += len(message.data)
        if pending.size > pending.max_answer:
            self._fail(key, pending, f"an answer over {pending.max_answer} bytes")
            if pending.size > MAX_STATEMENT_ANSWER:
                raise EngineFramingError(f"an engine answer over {MAX_STATEMENT_ANSWER} bytes")
            return True
        pending.parts.append(message.data)
        if message.last:
            del self._pending[key]
            pending.future.set_result(
                RawAnswer(message.error, b"".join(pending.parts), message.signature)
            )
        return True

    def _fail(self, key: tuple[int, int], pending: _Pending, why: str) -> None:
        del self._pending[key]
        self._give_up(key)
        pending.future.set_exception(BadEngineAnswer(why))
