"""The execution client: state database + mempool + payload building, behind two JSON-RPC servers.

* the **user RPC** (``qoin_*`` methods, no authentication, 127.0.0.1 by default);
* the **engine API** (``engine_*`` methods, JWT HS256) that the consensus client drives.

Transactions submitted through the user RPC are *local*: with a :class:`TransactionJournal`, each is
on disk before the RPC answers and comes back into the mempool when the client restarts
(:meth:`ExecutionClient.restore_local_transactions`). Refusals say whether the transaction is
intrinsically invalid or refused because of the state or the pool (:class:`Refusal`): in the
``refusal`` field of each ``engine_submitTransactions`` entry, and in the ``data`` of a
``qoin_sendRawTransaction`` error.

Values on the wire: hashes, addresses' raw bytes, blocks, transactions, proofs and witnesses are hex
strings of their canonical encodings; addresses are bech32m text; amounts are integers (Shor).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from starlette.requests import Request

from qoin.chain.block import MAX_BLOCK_SIZE, Block
from qoin.chain.issuance import supply_info
from qoin.chain.transaction import (
    MAX_GAS_LIMIT,
    TRANSFER_GAS,
    AnyTransaction,
    CallTransaction,
    decode_transaction,
)
from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.execution.account import Account, storage_key
from qoin.execution.calls import (
    receipt_json,
)
from qoin.execution.journal import JournalError, TransactionJournal
from qoin.execution.mempool import (
    MAX_TX_SIZE,
    AlreadyKnown,
    Mempool,
    MempoolError,
    NonceTooLow,
    Refusal,
)
from qoin.execution.platform_rpc import STORAGE_KEYS, PlatformRpc
from qoin.execution.rpc_params import (
    ADDRESS,
    BLOCK_TAG,
    HASH,
    MAX_HEIGHT,
    ExecutionError,
    hex_bytes,
)
from qoin.execution.state import ExecutionState, PayloadStatus, UnknownHead
from qoin.execution.trace import (
    MAX_STEP_RECORDS,
    MAX_TRACE_STEPS,
    encode_step_records,
    step_indexes,
)
from qoin.rpc.jwt import JwtError, verify
from qoin.rpc.serve import BackgroundServer, HttpLimits
from qoin.rpc.server import SERVER_ERROR, Method, Param, RpcError, RpcServer
from qoin.rpc.subscriptions import SubscriptionEndpoint, SubscriptionHub

MAX_PAYLOADS = 16
BLOCK_TX_LIMIT = 4096
MIN_FEE_PER_GAS = 1
"""The fee per gas suggested when the pool is quiet."""


MAX_PROOF_KEYS = 1024
MAX_ENGINE_TRANSACTIONS = 4096
"""Transactions in one ``engine_pendingTransactions`` answer or ``engine_submitTransactions`` call:
the bound of one p2p transaction message (``qoin.p2p.messages.MAX_ANNOUNCED_TRANSACTIONS``)."""
MAX_PENDING_BYTES = 8 * 1024 * 1024
"""Encoded bytes of the transactions in one ``engine_pendingTransactions`` answer (at least one is
always returned if any is pending: each fits ``MAX_TX_SIZE``)."""
MAX_CURSOR = 2**63 - 1
"""The largest mempool sequence number a cursor may name."""
SUBMIT_STATUSES = ("added", "known", "rejected")
"""What ``engine_submitTransactions`` says of each transaction."""
UNKNOWN_BLOCK = "unknown block"
"""How ``engine_getVerdict`` begins its refusal of a block it does not hold executed (then the
block hash, hex): the asker sends the block itself (``engine_newPayload``)."""


def _state_keys(values: list[Any]) -> list[bytes]:
    keys = [bytes.fromhex(v) if isinstance(v, str) else b"" for v in values]
    if any(len(key) != 32 for key in keys):
        raise ValueError("state keys are 64 hex digits")
    return keys


def _strings(values: list[Any]) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise ValueError("transactions must be hex strings")
    return values


def _raw_transaction(text: str) -> AnyTransaction:
    """A hex-encoded transaction, its length bounded before anything is decoded."""
    if len(text.removeprefix("0x")) > 2 * MAX_TX_SIZE:
        raise ValueError(f"longer than {MAX_TX_SIZE} bytes")
    return decode_transaction(hex_bytes(text))


def _submitted(
    tx: AnyTransaction | None,
    status: str,
    reason: str | None = None,
    refusal: Refusal | None = None,
) -> dict[str, Any]:
    """One entry of an ``engine_submitTransactions`` answer."""
    return {
        "id": None if tx is None else tx.tx_id.hex(),
        "status": status,
        "reason": reason,
        "refusal": None if refusal is None else refusal.value,
    }


def header_json(block: Block) -> dict[str, Any]:
    """A block's header on the wire (what ``newHeads`` subscribers get: no body)."""
    header = block.header
    return {
        "hash": block.block_hash.hex(),
        "height": header.height,
        "parentHash": header.parent_hash.hex(),
        "timestampMs": header.timestamp_ms,
        "stateRoot": header.state_root.hex(),
        "receiptsRoot": header.receipts_root.hex(),
        "transactionsRoot": header.transactions_root.hex(),
        "miner": str(header.coinbase),
        "transactionCount": len(block.transactions),
    }


def account_json(account: Account) -> dict[str, Any]:
    """An account on the wire."""
    return {
        "balance": account.balance,
        "nonce": account.nonce,
        "publicKeysRevealed": account.public_keys is not None,
    }


def tx_json(tx: AnyTransaction) -> dict[str, Any]:
    """A transaction on the wire (a transfer's ``type`` is ``"transfer"``, a call's ``"call"``)."""
    common = {
        "hash": tx.tx_id.hex(),
        "chainId": tx.chain_id,
        "from": str(tx.sender),
        "to": str(tx.recipient),
        "nonce": tx.nonce,
        "gasLimit": tx.gas_limit,
        "revealsKeys": tx.public_keys is not None,
        "raw": tx.encode().hex(),
    }
    if isinstance(tx, CallTransaction):
        return common | {
            "type": "call",
            "value": tx.value,
            "data": tx.data.hex(),
            "feePerGas": tx.fee_per_gas,
            "deploy": tx.is_deploy,
        }
    return common | {
        "type": "transfer",
        "amount": tx.amount,
        "fee": tx.fee,
        "payload": tx.payload.hex(),
    }


class ExecutionClient:
    """Serves one :class:`ExecutionState` and its mempool."""

    def __init__(self, state: ExecutionState, journal: TransactionJournal | None = None) -> None:
        self.state = state
        self.lock = threading.RLock()
        # Numbered from the start time (µs): above every cursor a previous life handed out.
        self.mempool = Mempool(
            state.genesis.chain_id,
            state.account,
            first_sequence=time.time_ns() // 1000,
            block_gas_limit=state.genesis.block_gas_limit,
        )
        self.hub = SubscriptionHub()
        """Where WebSocket subscribers get new heads, logs and pending transactions."""
        self.platform = PlatformRpc(state, self.lock, self._block_hash)
        """The execution platform's user RPC methods (calls, gas, code, storage, logs)."""
        self.journal = journal
        self._payloads: OrderedDict[str, Block] = OrderedDict()
        self._local: dict[bytes, None] = {}
        """Ids of the local transactions (submitted through the user RPC) pending or journaled, in
        submission order."""

    # -- helpers ---------------------------------------------------------------------------------

    def _block_hash(self, tag: str | int | None) -> bytes:
        if tag is None or tag == "latest":
            return self.state.head
        if isinstance(tag, int):
            found = self.state.canonical_hash(tag)
            if found is None:
                raise ExecutionError(f"no canonical block at height {tag}")
            return found
        try:
            return hex_bytes(tag, 32)
        except ValueError:
            raise RpcError(
                -32602, "invalid params: block must be a hash, a height or 'latest'"
            ) from None

    def _block_json(self, block: Block) -> dict[str, Any]:
        header = block.header
        return {
            "hash": block.block_hash.hex(),
            "height": header.height,
            "parentHash": header.parent_hash.hex(),
            "timestampMs": header.timestamp_ms,
            "stateRoot": header.state_root.hex(),
            "receiptsRoot": header.receipts_root.hex(),
            "miner": str(header.coinbase),
            "siblings": [s.block_hash.hex() for s in block.siblings],
            "coinbase": [
                {"to": str(p.recipient), "amount": p.amount} for p in block.coinbase.payouts
            ],
            "transactions": [tx_json(tx) for tx in block.transactions],
            "raw": block.encode().hex(),
        }

    # -- user RPC --------------------------------------------------------------------------------

    def chain_id(self) -> int:
        """The chain id."""
        return self.state.genesis.chain_id

    def block_number(self) -> int:
        """Height of the head."""
        with self.lock:
            return self.state.head_height()

    def block_by_number(self, height: int) -> dict[str, Any] | None:
        """A canonical block by height."""
        with self.lock:
            found = self.state.canonical_hash(height)
            block = None if found is None else self.state.block(found)
            return None if block is None else self._block_json(block)

    def block_by_hash(self, hash: bytes) -> dict[str, Any] | None:
        """A stored block by hash."""
        with self.lock:
            block = self.state.block(hash)
            return None if block is None else self._block_json(block)

    def balance(self, address: Address, block: str | int | None = None) -> int:
        """Balance in Shor."""
        with self.lock:
            return self.state.account(address, self._block_hash(block)).balance

    def account(self, address: Address, block: str | int | None = None) -> dict[str, Any]:
        """Balance, nonce, whether keys are revealed, and the next nonce to use."""
        with self.lock:
            found = account_json(self.state.account(address, self._block_hash(block)))
            found["nextNonce"] = self.mempool.next_nonce(address)
            return found

    def transaction(self, hash: bytes) -> dict[str, Any] | None:
        """A transaction: canonical (with its block) or pending."""
        with self.lock:
            found = self.state.transaction(hash)
            if found is not None:
                tx, block_hash, index = found
                return {**tx_json(tx), "blockHash": block_hash.hex(), "index": index}
            pending = self.mempool.get(hash)
            return None if pending is None else {**tx_json(pending), "pending": True}

    def receipt(self, hash: bytes) -> dict[str, Any] | None:
        """The receipt of a canonical transaction, as stored when its block was executed."""
        with self.lock:
            found = self.state.receipt(hash)
            if found is None:
                return None
            receipt, block_hash = found
            info = self.state.block_info(block_hash)
            located = self.state.transaction(hash)
            deployed = (
                located is not None
                and isinstance(located[0], CallTransaction)
                and located[0].is_deploy
                and receipt.succeeded
            )
            return {
                "transactionHash": hash.hex(),
                "blockHash": block_hash.hex(),
                "blockHeight": None if info is None else info[0],
                **receipt_json(receipt),
                "contractAddress": str(Address(receipt.return_data)) if deployed else None,
            }

    def send_raw_transaction(self, raw: AnyTransaction) -> str:
        """Validate a transaction into the mempool (and onto the journal's disk); return its hash.
        A refusal is a -32000 error whose ``data`` is ``{"refusal": "intrinsic" | "stateful" |
        null}``."""
        with self.lock:
            try:
                self.mempool.add(raw, before_insert=self._journal_append)
            except MempoolError as exc:
                refusal = None if exc.refusal is None else exc.refusal.value
                raise RpcError(
                    SERVER_ERROR, f"{type(exc).__name__}: {exc}", data={"refusal": refusal}
                ) from None
            self._local[raw.tx_id] = None
            self.hub.publish_pending(raw.tx_id.hex())
            return raw.tx_id.hex()

    # -- the journal of local transactions ----------------------------------------------------------

    def _journal_append(self, tx: AnyTransaction) -> None:
        """Record a local transaction about to be admitted (rewriting the journal first when the
        append would not fit); raises :class:`~qoin.execution.journal.JournalError`."""
        if self.journal is None:
            return
        if not self.journal.fits(tx):
            try:
                self._rewrite_journal()
            except OSError as exc:
                raise JournalError(f"cannot rewrite {self.journal.path}: {exc}") from None
        self.journal.append(tx)

    def _pending_local(self) -> list[AnyTransaction]:
        """The local transactions still pending, in submission order (the others are forgotten)."""
        pending = {tx_id: self.mempool.get(tx_id) for tx_id in self._local}
        self._local = {tx_id: None for tx_id, tx in pending.items() if tx is not None}
        return [tx for tx in pending.values() if tx is not None]

    def _rewrite_journal(self) -> None:
        if self.journal is not None:
            self.journal.rewrite(self._pending_local())

    def restore_local_transactions(self) -> tuple[int, int, int]:
        """Replay the journal into the mempool (lower nonces first), then rewrite it with what is
        pending. Returns (transactions re-added, dropped as included or no longer valid, bytes of
        a torn or unreadable tail ignored). ``OSError`` if the journal cannot be read or written."""
        if self.journal is None:
            return 0, 0, 0
        contents = self.journal.load()
        unique: dict[bytes, AnyTransaction] = {}
        for tx in contents.transactions:
            unique.setdefault(tx.tx_id, tx)
        with self.lock:
            for tx in sorted(unique.values(), key=lambda t: t.nonce):  # stable: file order
                try:
                    self.mempool.add(tx)
                except AlreadyKnown:
                    pass
                except MempoolError:
                    continue  # included since, or no longer valid
                self._local[tx.tx_id] = None
            self._rewrite_journal()
            readded = len(self._local)
        return readded, len(unique) - readded, contents.ignored_bytes

    def save_journal(self) -> None:
        """Rewrite the journal to hold only the local transactions still pending (periodically
        and on a clean stop). ``OSError`` if the disk fails (the previous journal then stays)."""
        with self.lock:
            self._rewrite_journal()

    def proof(
        self,
        address: Address,
        block: str | int | None = None,
        storage_keys: list[bytes] | None = None,
    ) -> dict[str, Any]:
        """Like EIP-1186 ``eth_getProof``: the account and its Merkle proof against a state root,
        and a proof of each storage key asked for (inclusion, or exclusion if it is unset)."""
        with self.lock:
            block_hash = self._block_hash(block)
            root, proof = self.state.proof(address, block_hash)
            account = self.state.account(address, block_hash)
            storage = [
                {
                    "key": key.hex(),
                    "stateKey": storage_key(address, key).hex(),
                    "value": self.state.storage(address, key, block_hash).hex(),
                    "proof": self.state.prove_key(storage_key(address, key), block_hash)[1]
                    .encode()
                    .hex(),
                }
                for key in storage_keys or ()
            ]
            answer: dict[str, Any] = {
                "address": str(address),
                "blockHash": block_hash.hex(),
                "stateRoot": root.hex(),
                "account": account_json(account),
                "proof": proof.encode().hex(),
            }
            if account.public_keys is not None:
                keys_proof = self.state.proof(address, block_hash, keys=True)[1]
                answer["keysProof"] = keys_proof.encode().hex()
            if account.code_hash is not None:
                answer["codeHash"] = account.code_hash.hex()
            if storage_keys:
                answer["storage"] = storage
            return answer

    def estimate_fee(self, gas: int = TRANSFER_GAS) -> dict[str, int]:
        """A fee for a transaction using ``gas`` (default: a transfer's): the median fee per gas of
        what the pool would put in the next block, at least the floor."""
        with self.lock:
            chosen = self.mempool.select(BLOCK_TX_LIMIT, MAX_BLOCK_SIZE // 2)
        rates = sorted(tx.fee_rate for tx in chosen)
        rate = max(MIN_FEE_PER_GAS, math.ceil(rates[len(rates) // 2]) if rates else 0)
        return {"feePerGas": rate, "fee": rate * gas, "gas": gas}

    def supply(self, height: int | None = None) -> dict[str, Any]:
        """Issuance figures at a height (default: the head)."""
        with self.lock:
            at = self.state.head_height() if height is None else height
        info = supply_info(self.state.genesis.issuance, at)
        return {
            "height": at,
            "era": info.era,
            "subsidy": info.subsidy,
            "mined": info.mined,
            "supply": info.supply,
        }

    # -- engine API -------------------------------------------------------------------------------

    def new_payload(self, block: Block) -> dict[str, Any]:
        """Execute a block; VALID / INVALID / SYNCING / ACCEPTED."""
        with self.lock:
            verdict = self.state.new_payload(block)
            if verdict.status is PayloadStatus.VALID and self.state.head == block.block_hash:
                self.mempool.on_block(block.transactions)  # the block extended the head
            self._notify()
            return {"status": verdict.status.value, "validationError": verdict.reason or None}

    def get_verdict(self, block_hash: bytes) -> dict[str, Any]:
        """``engine_getVerdict``: the ``engine_newPayload`` answer for a block this client has
        executed and holds (VALID), asked by hash (a consensus client elsewhere need not send the
        block it usually holds already); :class:`ExecutionError` "unknown block …" for one it does
        not hold or has not executed (an ACCEPTED side block): then send the block itself."""
        with self.lock:
            if not self.state.executed(block_hash):
                raise ExecutionError(f"{UNKNOWN_BLOCK} {block_hash.hex()}")
        return {"status": PayloadStatus.VALID.value, "validationError": None}

    def _notify(self) -> None:
        """Hand what the last head change committed to the subscribers (never blocks)."""
        heads, logs = self.state.take_notifications()
        if logs:
            self.hub.publish_logs(logs)
        for block in heads:
            self.hub.publish_head(header_json(block))

    def forkchoice_updated(self, head: bytes, template: Block | None = None) -> dict[str, Any]:
        """Move the head; with a template, start building a payload on it."""
        with self.lock:
            try:
                change = self.state.forkchoice_updated(head)
            except UnknownHead:
                return {"payloadStatus": {"status": "SYNCING"}, "payloadId": None}
            except QoinError as exc:
                return {"payloadStatus": {"status": "INVALID", "validationError": str(exc)}}
            finally:
                self._notify()
            if change.connected or change.disconnected:
                self.mempool.on_reorg(change.disconnected, change.connected)
            payload_id = None
            if template is not None:
                payload_id = secrets.token_hex(8)
                self._payloads[payload_id] = self.build_payload(template)
                while len(self._payloads) > MAX_PAYLOADS:
                    self._payloads.popitem(last=False)
            return {"payloadStatus": {"status": PayloadStatus.VALID.value}, "payloadId": payload_id}

    def build_payload(self, template: Block) -> Block:
        """Fill a consensus template with mempool transactions, the fee payout and the roots."""
        if template.header.parent_hash != self.state.head:
            raise ExecutionError("payload templates must build on the head")
        txs = tuple(self.mempool.select(BLOCK_TX_LIMIT, MAX_BLOCK_SIZE // 2))
        payouts = list(template.coinbase.payouts)
        if not payouts:
            raise ExecutionError("the template's coinbase has no fee payout")
        return self.state.fill_roots(replace(template, transactions=txs))

    def build_payload_now(self, template: Block) -> str:
        """``engine_buildPayload``: a payload on ``template`` (hex-encoded, unsealed), built at
        once and without moving the head (for a consensus client elsewhere that uses this node's
        execution over p2p); refused unless the template builds on the head."""
        with self.lock:
            return self.build_payload(template).encode().hex()

    def get_payload(self, payload_id: str) -> str:
        """The built (unsealed) block of a payload id, hex-encoded."""
        with self.lock:
            block = self._payloads.get(payload_id)
        if block is None:
            raise ExecutionError(f"unknown payload id {payload_id}")
        return block.encode().hex()

    def get_proofs(self, block_hash: bytes, keys: list[bytes]) -> dict[str, Any]:
        """Proofs of state keys before (parent root) and after (block root) a block, for account
        state sampling."""
        with self.lock:
            info = self.state.block_info(block_hash)
            if info is None:
                raise ExecutionError(f"{UNKNOWN_BLOCK} {block_hash.hex()}")
            parent = info[1]

            def proof(key: bytes, at: bytes) -> str:
                return self.state.prove_key(key, at)[1].encode().hex()

            return {
                "parentStateRoot": self.state.state_root(parent).hex(),
                "stateRoot": info[2].hex(),
                "proofs": [
                    {"key": key.hex(), "pre": proof(key, parent), "post": proof(key, block_hash)}
                    for key in keys
                ],
            }

    def get_trace(self, block_hash: bytes) -> str:
        """What each step of a valid block read and wrote, each value as a reference (hex of the
        :class:`~qoin.execution.trace.TraceSummary` encoding), for account state sampling."""
        with self.lock:
            return self.state.trace(block_hash).encode_summary().hex()

    def get_steps(self, block_hash: bytes, indexes: list[int]) -> str:
        """The full records of some steps of a valid block (hex of
        :func:`~qoin.execution.overlay.encode_step_records`), for account state sampling."""
        with self.lock:
            steps = self.state.trace(block_hash).steps
        beyond = [index for index in indexes if index >= len(steps)]
        if beyond:
            raise ExecutionError(f"block {block_hash.hex()} has no step {beyond[0]}")
        return encode_step_records({index: steps[index] for index in indexes}).hex()

    def get_witness(self, block_hash: bytes, block: Block | None = None) -> str:
        """The full execution witness of a block, hex-encoded: a stored block, or ``block`` itself
        (e.g. one this client found invalid, which it does not store) if its parent's state is
        retained."""
        with self.lock:
            stored = self.state.block(block_hash)
            if stored is None and block is not None and block.block_hash == block_hash:
                stored = block
            if stored is None:
                raise ExecutionError(f"{UNKNOWN_BLOCK} {block_hash.hex()}")
            return self.state.witness(stored).encode().hex()

    def pending_transactions(
        self, after: int, limit: int = MAX_ENGINE_TRANSACTIONS
    ) -> dict[str, Any]:
        """Transactions admitted to the mempool after cursor ``after`` and still pending, in
        admission order (at most ``limit`` and :data:`MAX_PENDING_BYTES`), hex-encoded, with the
        cursor for the next call: what the consensus client gossips to its peers."""
        with self.lock:
            cursor, txs = self.mempool.added_since(after, limit, MAX_PENDING_BYTES)
        return {"next": cursor, "transactions": [tx.encode().hex() for tx in txs]}

    def submit_transactions(self, transactions: list[str]) -> list[dict[str, Any]]:
        """Admit hex-encoded transactions (relayed by the consensus client from its peers) as
        ``qoin_sendRawTransaction`` does (but not as local ones): one ``{id, status, reason,
        refusal}`` per input, in order; ``refusal`` is ``intrinsic`` or ``stateful`` for a rejected
        one (undecodable is intrinsic), else null."""
        return [self._submit_one(text) for text in transactions]

    def _submit_one(self, text: str) -> dict[str, Any]:
        try:
            tx = _raw_transaction(text)
        except (ValueError, QoinError) as exc:
            return _submitted(None, "rejected", f"undecodable: {exc}", Refusal.INTRINSIC)
        with self.lock:  # per transaction: blocks and head changes need not wait for a batch
            try:
                self.mempool.add(tx)
            except AlreadyKnown:
                return _submitted(tx, "known")
            except NonceTooLow as exc:
                if self.state.has_transaction(tx.tx_id):  # only an old nonce can be included
                    return _submitted(tx, "known")
                return _submitted(tx, "rejected", f"NonceTooLow: {exc}", exc.refusal)
            except MempoolError as exc:
                return _submitted(tx, "rejected", f"{type(exc).__name__}: {exc}", exc.refusal)
        self.hub.publish_pending(tx.tx_id.hex())
        return _submitted(tx, "added")

    def serve_user(self, port: int = 0, host: str = "127.0.0.1") -> BackgroundServer:
        """The user JSON-RPC server with WebSocket subscriptions on the same port (not started)."""
        server = self.user_server()
        server.add_websocket("/", SubscriptionEndpoint(self.hub, server))
        limits = HttpLimits(max_connections=self.hub.limits.max_connections + 256)
        return BackgroundServer(
            server.app, host, port, limits, websocket_max_frame=self.hub.limits.max_frame
        )

    # -- servers -----------------------------------------------------------------------------------

    def user_server(self) -> RpcServer:
        """The user JSON-RPC server."""
        raw_tx = Param(
            "raw",
            {"type": "string", "maxLength": 2 * MAX_TX_SIZE + 2},
            parse=lambda v: decode_transaction(hex_bytes(v)),
        )
        height = Param("height", {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT})
        return RpcServer(
            "Qoin execution client",
            [
                Method("qoin_chainId", self.chain_id, (), {"type": "integer"}, "Chain id"),
                Method(
                    "qoin_blockNumber", self.block_number, (), {"type": "integer"}, "Head height"
                ),
                Method(
                    "qoin_getBlockByNumber",
                    self.block_by_number,
                    (height,),
                    {"type": ["object", "null"]},
                    "Canonical block by height",
                ),
                Method(
                    "qoin_getBlockByHash",
                    self.block_by_hash,
                    (HASH,),
                    {"type": ["object", "null"]},
                    "Block by hash",
                ),
                Method(
                    "qoin_getBalance",
                    self.balance,
                    (ADDRESS, BLOCK_TAG),
                    {"type": "integer"},
                    "Balance in Shor",
                ),
                Method(
                    "qoin_getAccount",
                    self.account,
                    (ADDRESS, BLOCK_TAG),
                    {"type": "object"},
                    "Account",
                ),
                Method(
                    "qoin_getTransactionByHash",
                    self.transaction,
                    (HASH,),
                    {"type": ["object", "null"]},
                    "Transaction",
                ),
                Method(
                    "qoin_getTransactionReceipt",
                    self.receipt,
                    (HASH,),
                    {"type": ["object", "null"]},
                    "Receipt",
                ),
                Method(
                    "qoin_sendRawTransaction",
                    self.send_raw_transaction,
                    (raw_tx,),
                    {"type": "string"},
                    "Submit a transaction",
                ),
                Method(
                    "qoin_getProof",
                    self.proof,
                    (ADDRESS, BLOCK_TAG, STORAGE_KEYS),
                    {"type": "object"},
                    "Account (and storage keys) with Merkle proofs",
                ),
                Method(
                    "qoin_estimateFee",
                    self.estimate_fee,
                    (
                        Param(
                            "gas",
                            {"type": "integer", "minimum": 1, "maximum": MAX_GAS_LIMIT},
                            required=False,
                        ),
                    ),
                    {"type": "object"},
                    "Fee estimate",
                ),
                Method(
                    "qoin_supply",
                    self.supply,
                    (
                        Param(
                            "height",
                            {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT},
                            required=False,
                        ),
                    ),
                    {"type": "object"},
                    "Issuance",
                ),
                *self.platform.methods(),
            ],
        )

    def engine_server(self, secret: bytes) -> RpcServer:
        """The engine API server, authenticated with the shared JWT secret."""

        def authenticate(request: Request) -> None:
            header = request.headers.get("authorization", "")
            if not header.startswith("Bearer "):
                raise JwtError("missing 'Authorization: Bearer <jwt>'")
            verify(secret, header.removeprefix("Bearer "))

        block = Param(
            "block",
            {"type": "string", "maxLength": 2 * MAX_BLOCK_SIZE},
            parse=lambda v: Block.decode(hex_bytes(v)),
        )
        template = replace(block, name="template", required=False)
        keys = Param(
            "keys",
            {"type": "array", "maxItems": MAX_PROOF_KEYS, "items": {"type": "string"}},
            parse=_state_keys,
            description="hex-encoded 32-byte state keys",
        )
        after = Param(
            "after",
            {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR},
            description="cursor: 0, or the 'next' of the previous answer",
        )
        limit = Param(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_ENGINE_TRANSACTIONS},
            required=False,
        )
        raw_txs = Param(
            "transactions",
            {"type": "array", "maxItems": MAX_ENGINE_TRANSACTIONS, "items": {"type": "string"}},
            parse=_strings,
            description="hex-encoded transactions",
        )
        return RpcServer(
            "Qoin engine API",
            [
                Method(
                    "engine_newPayload",
                    self.new_payload,
                    (block,),
                    {"type": "object"},
                    "Execute a block",
                ),
                Method(
                    "engine_getVerdict",
                    self.get_verdict,
                    (replace(HASH, name="block_hash"),),
                    {"type": "object"},
                    "The verdict on a block executed and held, by hash",
                ),
                Method(
                    "engine_forkchoiceUpdated",
                    self.forkchoice_updated,
                    (replace(HASH, name="head"), template),
                    {"type": "object"},
                    "Set head, build payload",
                ),
                Method(
                    "engine_buildPayload",
                    self.build_payload_now,
                    (replace(block, name="template"),),
                    {"type": "string"},
                    "Build a payload on a template without moving the head",
                ),
                Method(
                    "engine_getPayload",
                    self.get_payload,
                    (Param("payload_id", {"type": "string", "maxLength": 32}),),
                    {"type": "string"},
                    "Built payload",
                ),
                Method(
                    "engine_getProofs",
                    self.get_proofs,
                    (replace(HASH, name="block_hash"), keys),
                    {"type": "object"},
                    "Pre/post proofs of state keys",
                ),
                Method(
                    "engine_getTrace",
                    self.get_trace,
                    (replace(HASH, name="block_hash"),),
                    {"type": "string"},
                    "What each step of a block read and wrote (values as references)",
                ),
                Method(
                    "engine_getSteps",
                    self.get_steps,
                    (
                        replace(HASH, name="block_hash"),
                        Param(
                            "indexes",
                            {
                                "type": "array",
                                "maxItems": MAX_STEP_RECORDS,
                                "items": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "maximum": MAX_TRACE_STEPS - 1,
                                },
                            },
                            parse=step_indexes,
                            description="step numbers: 0 cron, 1..n transactions, n + 1 payouts",
                        ),
                    ),
                    {"type": "string"},
                    "Full records of some steps of a block",
                ),
                Method(
                    "engine_getWitness",
                    self.get_witness,
                    (replace(HASH, name="block_hash"), replace(block, required=False)),
                    {"type": "string"},
                    "Execution witness",
                ),
                Method(
                    "engine_pendingTransactions",
                    self.pending_transactions,
                    (after, limit),
                    {"type": "object"},
                    "Pending transactions after a cursor",
                ),
                Method(
                    "engine_submitTransactions",
                    self.submit_transactions,
                    (raw_txs,),
                    {"type": "array"},
                    "Admit relayed transactions",
                ),
            ],
            authenticate=authenticate,
            max_body=3 * MAX_BLOCK_SIZE,
        )
