"""The consensus client's side of the engine API: one authenticated HTTP JSON-RPC connection to an
execution client.

Every call carries a fresh HS256 token from the shared secret and has a timeout; every answer is
checked for shape before use, so a broken or hostile execution client surfaces as
:class:`EngineError` (with the reason), never as a crash.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qoin.chain.block import Block
from qoin.chain.transaction import Transaction
from qoin.consensus.sampling import AccountProofs
from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.execution.client import (
    MAX_CURSOR,
    MAX_ENGINE_TRANSACTIONS,
    MAX_PENDING_BYTES,
    SUBMIT_STATUSES,
)
from qoin.execution.mempool import MAX_TX_SIZE
from qoin.execution.witness import Witness
from qoin.rpc import jwt
from qoin.rpc.client import RpcCallError, RpcClient, RpcTimeout
from qoin.state.smt import Proof

DEFAULT_TIMEOUT_S = 30.0
"""How long one engine call may take, answer included (a full block's witness included)."""
MAX_ANSWER_BYTES = 128 * 1024 * 1024
"""The largest engine answer read: a witness of the largest block is well under this."""
STATUSES = ("VALID", "INVALID", "SYNCING", "ACCEPTED")


class EngineError(QoinError):
    """An engine call failed: unreachable, timed out, refused, or answered nonsense."""


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
class SampleAnswer:
    """An answer to ``engine_getProofs``: the roots the client claims and each account's proofs."""

    parent_root: bytes
    """The parent's state root, as the client has it."""
    state_root: bytes
    """The block's state root, as the client has it."""
    proofs: dict[Address, AccountProofs]
    """Proofs by account."""


def _field(answer: Any, name: str, kind: type) -> Any:
    if not isinstance(answer, dict) or not isinstance(answer.get(name), kind):
        raise EngineError(f"malformed answer: no {kind.__name__} field {name!r}")
    return answer[name]


def _hex(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise EngineError(f"malformed answer: {what} is not a string")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise EngineError(f"malformed answer: {what} is not hex") from None


def _decoded(kind: Any, text: Any, what: str) -> Any:
    try:
        return kind.decode(_hex(text, what))
    except QoinError as exc:
        raise EngineError(f"malformed answer: {what}: {exc}") from None


def _transaction(text: Any) -> Transaction:
    """A hex-encoded transaction of an answer, its length bounded before it is decoded."""
    if not isinstance(text, str) or len(text) > 2 * MAX_TX_SIZE:
        raise EngineError(
            f"malformed answer: a transaction is not hex of at most {MAX_TX_SIZE} bytes"
        )
    return _decoded(Transaction, text, "transaction")  # type: ignore[no-any-return]


def _batches(txs: Sequence[Transaction]) -> Iterator[Sequence[Transaction]]:
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


class EngineClient:
    """Calls one execution client's engine API (a fresh HS256 token per call)."""

    def __init__(self, url: str, secret: bytes, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.timeout = timeout
        self._rpc = RpcClient(
            url, timeout=timeout, max_answer=MAX_ANSWER_BYTES, token=lambda: jwt.encode(secret)
        )

    def __repr__(self) -> str:
        return f"EngineClient({self.url})"

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; its ``result``, or :class:`EngineError`."""
        try:
            return self._rpc.call(method, *params)
        except RpcTimeout:
            raise EngineError(f"{method}: no answer from {self.url} in time") from None
        except RpcCallError as exc:
            raise EngineError(str(exc)) from None

    def new_payload(self, block: Block) -> PayloadVerdict:
        """Ask the client to execute a block."""
        answer = self.call("engine_newPayload", block.encode().hex())
        status = _field(answer, "status", str)
        if status not in STATUSES:
            raise EngineError(f"engine_newPayload: unknown status {status!r}")
        reason = answer.get("validationError")
        return PayloadVerdict(status, reason if isinstance(reason, str) else None)

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

    def get_proofs(self, block_hash: bytes, addresses: list[Address]) -> SampleAnswer:
        """Pre- and post-state proofs of accounts around a block."""
        answer = self.call("engine_getProofs", block_hash.hex(), [str(a) for a in addresses])
        entries = _field(answer, "proofs", list)
        proofs: dict[Address, AccountProofs] = {}
        for entry in entries:
            try:
                address = Address.from_text(_field(entry, "address", str))
            except QoinError as exc:
                raise EngineError(f"malformed answer: {exc}") from None
            proofs[address] = AccountProofs(
                *(_decoded(Proof, _field(entry, name, str), name) for name in _PROOF_FIELDS)
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
    ) -> tuple[int, list[Transaction]]:
        """Transactions the client admitted to its mempool after cursor ``after`` and still holds
        (at most ``limit``, oldest first), and the cursor to pass next time."""
        answer = self.call("engine_pendingTransactions", after, limit)
        cursor = _field(answer, "next", int)
        if isinstance(cursor, bool) or not 0 <= cursor <= MAX_CURSOR:
            raise EngineError(f"malformed answer: cursor {cursor!r} out of range")
        items = _field(answer, "transactions", list)
        if len(items) > limit:
            raise EngineError(f"malformed answer: {len(items)} transactions, {limit} asked for")
        txs = [_transaction(item) for item in items]
        if len(txs) > 1 and sum(len(tx.encode()) for tx in txs) > MAX_PENDING_BYTES:
            raise EngineError(f"malformed answer: transactions over {MAX_PENDING_BYTES} bytes")
        return cursor, txs

    def submit_transactions(self, txs: Sequence[Transaction]) -> list[str]:
        """Hand transactions (from peers) to the client's mempool; per transaction, in order,
        ``added``, ``known`` (pending or included already) or ``rejected``."""
        statuses: list[str] = []
        for batch in _batches(txs):
            statuses += self._submit_batch(batch)
        return statuses

    def _submit_batch(self, batch: Sequence[Transaction]) -> list[str]:
        answer = self.call("engine_submitTransactions", [tx.encode().hex() for tx in batch])
        if not isinstance(answer, list) or len(answer) != len(batch):
            raise EngineError("malformed answer: not one entry per submitted transaction")
        statuses = []
        for tx, entry in zip(batch, answer, strict=True):
            status = _field(entry, "status", str)
            if status not in SUBMIT_STATUSES:
                raise EngineError(f"engine_submitTransactions: unknown status {status!r}")
            tx_id = entry.get("id")
            if tx_id != tx.tx_id.hex() and (status != "rejected" or tx_id is not None):
                raise EngineError("malformed answer: an entry names another transaction")
            statuses.append(status)
        return statuses

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._rpc.close()


_PROOF_FIELDS = ("pre", "post", "preKeys", "postKeys")
