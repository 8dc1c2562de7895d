"""The consensus client's side of the engine API: one authenticated HTTP JSON-RPC connection to an
execution client.

Every call carries a fresh HS256 token from the shared secret and has a timeout; every answer is
checked for shape before use, so a broken or hostile execution client surfaces as
:class:`EngineError` (with the reason), never as a crash. The subclass says which: no answer at all
(:class:`ClientUnavailable`: timed out, unreachable, not a JSON-RPC answer), an answer of the wrong
shape (:class:`MalformedAnswer`: e.g. a proof or witness that does not decode), or an error object
(:class:`EngineError` itself: the client refused the call). Every call's outcome (answered or not)
is reported to :attr:`EngineClient.on_outcome`, which is how the judge knows when a quarantined
client answers again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qoin.chain.block import Block
from qoin.chain.transaction import AnyTransaction, decode_transaction
from qoin.consensus.sampling import KeyProofs
from qoin.errors import QoinError
from qoin.execution.client import (
    MAX_CURSOR,
    MAX_ENGINE_TRANSACTIONS,
    MAX_PENDING_BYTES,
    SUBMIT_STATUSES,
)
from qoin.execution.mempool import MAX_TX_SIZE, Refusal
from qoin.execution.overlay import StepAccess
from qoin.execution.trace import MAX_STEP_RECORDS, TraceSummary, decode_step_records
from qoin.execution.witness import Witness
from qoin.rpc import jwt
from qoin.rpc.client import RpcCallError, RpcClient, RpcTimeout
from qoin.state.smt import KEY_SIZE, Proof

DEFAULT_TIMEOUT_S = 30.0
"""How long one engine call may take, answer included (a full block's witness included)."""
MAX_ANSWER_BYTES = 128 * 1024 * 1024
"""The largest engine answer read: a witness of the largest block is well under this."""
STATUSES = ("VALID", "INVALID", "SYNCING", "ACCEPTED")


class EngineError(QoinError):
    """An engine call failed: unreachable, timed out, refused, or answered nonsense."""


class ClientUnavailable(EngineError):
    """No answer: the call timed out, the client is unreachable, or what came back is not a
    JSON-RPC answer. Not a lie: the client is quarantined and retried."""


class MalformedAnswer(EngineError):
    """The client answered, but the result is not of the shape the method returns (a field
    missing, not hex, does not decode)."""


class ClientSyncing(EngineError):
    """The execution client lacks blocks to follow the head (``SYNCING``): replay them to it."""


@dataclass(frozen=True)
class PayloadVerdict:
    """An execution client's answer to ``engine_newPayload``."""

    status: str
    """VALID, INVALID, SYNCING or ACCEPTED."""
    reason: str | None = None
    """Why, for INVALID."""


@dataclass(frozen=True)
class Submission:
    """An execution client's answer for one transaction of ``engine_submitTransactions``."""

    status: str
    """``added``, ``known`` (pending or included already) or ``rejected``."""
    refusal: Refusal | None = None
    """Why a rejected one was: it can never be valid anywhere (``INTRINSIC``, the relay's fault)
    or not now, here (``STATEFUL``); None when added or known, or when the client does not say."""


@dataclass(frozen=True)
class SampleAnswer:
    """An answer to ``engine_getProofs``: the roots the client claims and each key's proofs."""

    parent_root: bytes
    """The parent's state root, as the client has it."""
    state_root: bytes
    """The block's state root, as the client has it."""
    proofs: dict[bytes, KeyProofs]
    """Proofs by 32-byte state key."""


def _field(answer: Any, name: str, kind: type) -> Any:
    if not isinstance(answer, dict) or not isinstance(answer.get(name), kind):
        raise MalformedAnswer(f"malformed answer: no {kind.__name__} field {name!r}")
    return answer[name]


def _hex(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise MalformedAnswer(f"malformed answer: {what} is not a string")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise MalformedAnswer(f"malformed answer: {what} is not hex") from None


def _decoded(kind: Any, text: Any, what: str) -> Any:
    try:
        return kind.decode(_hex(text, what))
    except QoinError as exc:
        raise MalformedAnswer(f"malformed answer: {what}: {exc}") from None


def _transaction(text: Any) -> AnyTransaction:
    """A hex-encoded transaction of an answer, its length bounded before it is decoded."""
    if not isinstance(text, str) or len(text) > 2 * MAX_TX_SIZE:
        raise MalformedAnswer(
            f"malformed answer: a transaction is not hex of at most {MAX_TX_SIZE} bytes"
        )
    try:
        return decode_transaction(_hex(text, "transaction"))
    except QoinError as exc:
        raise MalformedAnswer(f"malformed answer: transaction does not decode: {exc}") from None


def _refusal(entry: dict[str, Any], status: str) -> Refusal | None:
    """The ``refusal`` of a submit answer entry: absent or null is None (older clients do not
    say), and only a rejected transaction has one."""
    text = entry.get("refusal")
    if text is None:
        return None
    if status != "rejected" or not isinstance(text, str):
        raise MalformedAnswer(f"malformed answer: refusal {text!r} for a {status} transaction")
    try:
        return Refusal(text)
    except ValueError:
        raise MalformedAnswer(f"engine_submitTransactions: unknown refusal {text!r}") from None


def _batches(txs: Sequence[AnyTransaction]) -> Iterator[Sequence[AnyTransaction]]:
    """``txs`` cut into calls of at most :data:`MAX_ENGINE_TRANSACTIONS` transactions and
    :data:`MAX_PENDING_BYTES` encoded bytes (each transaction fits one)."""
    start = used = 0
    for index, tx in enumerate(txs):
        size = len(tx.encode())
        if index > start and (
            index - start >= MAX_ENGINE_TRANSACTIONS or used + size > MAX_PENDING_BYTES
        ):
            yield txs[start:index]
            start, used = index, 0
        used += size
    if start < len(txs):
        yield txs[start:]


def _json_size(value: Any) -> int:
    """About how many bytes ``value`` takes as JSON, without encoding a long hex string again (a
    block or a witness): exact for strings without escapes and lists of them."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, list):
        return 2 + max(0, len(value) - 1) + sum(_json_size(item) for item in value)
    return len(json.dumps(value))


def payload_verdict(method: str, answer: Any) -> PayloadVerdict:
    """The verdict an ``engine_newPayload`` (or ``engine_getVerdict``) answer gives, its shape
    checked (:class:`MalformedAnswer`)."""
    status = _field(answer, "status", str)
    if status not in STATUSES:
        raise MalformedAnswer(f"{method}: unknown status {status!r}")
    reason = answer.get("validationError")
    return PayloadVerdict(status, reason if isinstance(reason, str) else None)


Outcome = Callable[["EngineClient", ClientUnavailable | None], None]
"""Told after every call: the client, and :class:`ClientUnavailable` if it did not answer."""


class EngineClient:
    """Calls one execution client's engine API (a fresh HS256 token per call)."""

    def __init__(self, url: str, secret: bytes, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._setup(url, timeout)
        self._rpc = RpcClient(
            url, timeout=timeout, max_answer=MAX_ANSWER_BYTES, token=lambda: jwt.encode(secret)
        )

    def _setup(self, url: str, timeout: float) -> None:
        """What every engine client has, over HTTP or p2p (:mod:`qoin.consensus.remote`)."""
        self.url = url
        self.timeout = timeout
        self.on_outcome: Outcome | None = None
        """Told whether each call was answered (set by the judge that uses this client)."""
        self._traffic_lock = threading.Lock()
        self._sent = self._received = self._calls = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"

    def traffic(self) -> dict[str, int]:
        """Calls made and bytes sent (JSON params) and received (JSON results) so far."""
        with self._traffic_lock:
            return {"calls": self._calls, "bytesSent": self._sent, "bytesReceived": self._received}

    def _count(self, sent: int, received: int) -> None:
        with self._traffic_lock:
            self._calls += 1
            self._sent += sent
            self._received += received

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; its ``result``, or :class:`EngineError` (:class:`ClientUnavailable`
        when nothing usable came back)."""
        try:
            result = self._send(method, list(params))
        except ClientUnavailable as failure:
            self._tell(failure)
            raise
        except EngineError:  # it answered, and refused (or answered nonsense)
            self._tell(None)
            raise
        self._tell(None)
        return result

    def _send(self, method: str, params: list[Any]) -> Any:
        """The call itself, over HTTP: its result; :class:`EngineError` for an error object,
        :class:`ClientUnavailable` for no answer. The bytes are counted as JSON text (the HTTP
        framing aside)."""
        try:
            result = self._rpc.call(method, *params)
        except RpcTimeout:
            self._count(_json_size(params), 0)
            raise ClientUnavailable(f"{method}: no answer from {self.url} in time") from None
        except RpcCallError as exc:
            self._count(_json_size(params), 0)
            if exc.code is not None:  # an error object: it answered, and refused
                raise EngineError(str(exc)) from None
            raise ClientUnavailable(str(exc)) from None
        self._count(_json_size(params), _json_size(result))
        return result

    def _tell(self, failure: ClientUnavailable | None) -> None:
        if self.on_outcome is not None:
            self.on_outcome(self, failure)

    def new_payload(self, block: Block) -> PayloadVerdict:
        """Ask the client to execute a block."""
        return payload_verdict(
            "engine_newPayload", self.call("engine_newPayload", block.encode().hex())
        )

    def forkchoice_updated(self, head: bytes, template: Block | None = None) -> str | None:
        """Move the client's head (and with a template start a payload); the payload id."""
        params: list[Any] = [head.hex()]
        if template is not None:
            params.append(template.encode().hex())
        answer = self.call("engine_forkchoiceUpdated", *params)
        status = _field(_field(answer, "payloadStatus", dict), "status", str)
        if status == "SYNCING":
            raise ClientSyncing(f"engine_forkchoiceUpdated: {self.url} lacks blocks (SYNCING)")
        if status != "VALID":
            raise EngineError(f"engine_forkchoiceUpdated: {status}: {answer['payloadStatus']}")
        payload_id = answer.get("payloadId")
        return payload_id if isinstance(payload_id, str) else None

    def get_payload(self, payload_id: str) -> Block:
        """The block built for a payload id."""
        return _decoded(Block, self.call("engine_getPayload", payload_id), "payload")  # type: ignore[no-any-return]

    def get_trace(self, block_hash: bytes) -> TraceSummary:
        """What each step of a block the client called VALID read and wrote, each value as a
        reference (``engine_getTrace``)."""
        return _decoded(TraceSummary, self.call("engine_getTrace", block_hash.hex()), "trace")  # type: ignore[no-any-return]

    def get_steps(self, block_hash: bytes, indexes: Sequence[int]) -> dict[int, StepAccess]:
        """The full records of steps of a block (``engine_getSteps``), in calls of at most
        :data:`~qoin.execution.trace.MAX_STEP_RECORDS` steps; a record of a step not asked for
        is a malformed answer (one asked for and missing is for the caller to judge)."""
        records: dict[int, StepAccess] = {}
        wanted = sorted(set(indexes))
        for start in range(0, len(wanted), MAX_STEP_RECORDS):
            batch = wanted[start : start + MAX_STEP_RECORDS]
            answer = self.call("engine_getSteps", block_hash.hex(), batch)
            try:
                served = decode_step_records(_hex(answer, "steps"))
            except QoinError as exc:
                raise MalformedAnswer(f"malformed answer: steps: {exc}") from None
            extra = served.keys() - set(batch)
            if extra:
                raise MalformedAnswer(f"malformed answer: step {min(extra)} was not asked for")
            records.update(served)
        return records

    def get_proofs(self, block_hash: bytes, keys: Sequence[bytes]) -> SampleAnswer:
        """Pre- and post-state proofs of state keys around a block (``engine_getProofs``)."""
        answer = self.call("engine_getProofs", block_hash.hex(), [key.hex() for key in keys])
        entries = _field(answer, "proofs", list)
        if len(entries) > len(keys):
            raise MalformedAnswer(
                f"malformed answer: {len(entries)} proofs for {len(keys)} keys asked for"
            )
        proofs: dict[bytes, KeyProofs] = {}
        for entry in entries:
            key = _hex(_field(entry, "key", str), "key")
            if len(key) != KEY_SIZE:
                raise MalformedAnswer(f"malformed answer: a key of {len(key)} bytes")
            proofs[key] = KeyProofs(
                *(_decoded(Proof, _field(entry, name, str), name) for name in ("pre", "post"))
            )
        return SampleAnswer(
            _hex(_field(answer, "parentStateRoot", str), "parentStateRoot"),
            _hex(_field(answer, "stateRoot", str), "stateRoot"),
            proofs,
        )

    def get_witness(self, block_hash: bytes, block: Block | None = None) -> Witness:
        """The full execution witness of a block the client stores — or of ``block``, sent along,
        which the client may not store (it does not keep blocks it found invalid)."""
        params = [block_hash.hex()] + ([] if block is None else [block.encode().hex()])
        return _decoded(Witness, self.call("engine_getWitness", *params), "witness")  # type: ignore[no-any-return]

    def pending_transactions(
        self, after: int, limit: int = MAX_ENGINE_TRANSACTIONS
    ) -> tuple[int, list[AnyTransaction]]:
        """Transactions the client admitted to its mempool after cursor ``after`` and still holds
        (at most ``limit``, oldest first), and the cursor to pass next time."""
        answer = self.call("engine_pendingTransactions", after, limit)
        cursor = _field(answer, "next", int)
        if isinstance(cursor, bool) or not 0 <= cursor <= MAX_CURSOR:
            raise MalformedAnswer(f"malformed answer: cursor {cursor!r} out of range")
        items = _field(answer, "transactions", list)
        if len(items) > limit:
            raise MalformedAnswer(f"malformed answer: {len(items)} transactions, {limit} asked for")
        txs = [_transaction(item) for item in items]
        if len(txs) > 1 and sum(len(tx.encode()) for tx in txs) > MAX_PENDING_BYTES:
            raise MalformedAnswer(f"malformed answer: transactions over {MAX_PENDING_BYTES} bytes")
        return cursor, txs

    def submit_transactions(self, txs: Sequence[AnyTransaction]) -> list[Submission]:
        """Hand transactions (from peers) to the client's mempool; per transaction, in order, its
        status and, for a rejected one, why (see :class:`Submission`)."""
        answers: list[Submission] = []
        for batch in _batches(txs):
            answers += self._submit_batch(batch)
        return answers

    def _submit_batch(self, batch: Sequence[AnyTransaction]) -> list[Submission]:
        answer = self.call("engine_submitTransactions", [tx.encode().hex() for tx in batch])
        if not isinstance(answer, list) or len(answer) != len(batch):
            raise MalformedAnswer("malformed answer: not one entry per submitted transaction")
        answers = []
        for tx, entry in zip(batch, answer, strict=True):
            status = _field(entry, "status", str)
            if status not in SUBMIT_STATUSES:
                raise MalformedAnswer(f"engine_submitTransactions: unknown status {status!r}")
            tx_id = entry.get("id")
            if tx_id != tx.tx_id.hex() and (status != "rejected" or tx_id is not None):
                raise MalformedAnswer("malformed answer: an entry names another transaction")
            answers.append(Submission(status, _refusal(entry, status)))
        return answers

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._rpc.close()
