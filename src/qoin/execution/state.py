"""The execution client's database: the state tree, executed blocks, the canonical chain, the
transaction index and receipts, in one SQLite file (``execution.sqlite3``, WAL, ``synchronous=NORMAL``,
checkpointed by a background thread).

Verdicts follow the engine API:

* ``new_payload(block)`` — ``SYNCING`` if the parent is unknown; otherwise the block is executed on its
  parent's state and compared with the header's ``state_root`` and ``receipts_root``: ``VALID`` or
  ``INVALID`` with the reason. A valid child of the current head becomes the head (its state is
  committed as the next version of the tree); a block elsewhere whose parent's state is retained is
  executed statelessly from a witness and stored, not applied. A block deeper in a side branch (its
  parent's state was never materialised) is stored as ``ACCEPTED``: it is executed when a head change
  reaches it, and is then ``VALID`` or ``INVALID``. VALID and INVALID never flip: invalid blocks are
  remembered.
* ``forkchoice_updated(head)`` — moves the head to a valid stored block: the state rolls back to the
  fork point and the new branch's blocks are re-executed; the canonical index, transaction index and
  receipts follow. It returns the transactions of the disconnected and connected blocks (mempool).

State roots of the last ``retain`` blocks stay servable (proofs, witnesses, reorgs); older versions
are pruned. The genesis state is version 0: the allocation of the genesis file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from qoin.chain.block import Block, transactions_root
from qoin.chain.forkchoice import path_between
from qoin.chain.genesis import Genesis
from qoin.chain.transaction import AnyTransaction
from qoin.crypto.address import Address
from qoin.crypto.batch import default_workers
from qoin.errors import QoinError
from qoin.execution.account import (
    Account,
    code_key,
    genesis_state,
    keys_key,
    read_account,
    state_key,
    storage_key,
)
from qoin.execution.checkpointer import Checkpointer
from qoin.execution.events import EventIndex, Log, block_logs
from qoin.execution.receipt import Receipt, decode_receipts, encode_receipts
from qoin.execution.trace import BlockTrace
from qoin.execution.transition import (
    BlockOutcome,
    InvalidExecution,
    execute_block,
    touched_keys,
)
from qoin.execution.witness import (
    Witness,
    execute_on_tree,
    make_witness,
    root_after,
)
from qoin.state.nodestore import SqliteNodeStore
from qoin.state.smt import Proof, SmtError, SparseMerkleTree

STATE_FILE = "execution.sqlite3"
_UNKNOWN_ROOT = b"\xff" * 32
"""Root recorded for ACCEPTED blocks until they are executed: never a real tree root."""
DATA_FORMAT = b"3"
"""Layout of the execution database: 3 = receipts v2 and contract state (2 had v1 receipts; 1,
without this meta key, kept keys inside the account leaf)."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""A reset WAL is truncated back to this size."""
VALUE_CACHE_SIZE = 400_000
"""State values of the head kept decoded in memory (saves tree walks on import)."""
TRACE_CACHE_SIZE = 16
"""Traces of the latest executed blocks kept for sampling (older ones are recomputed)."""
DEFAULT_RETAIN = 256
_SCHEMA = (
    # A rowid table: rows hold whole blocks (megabytes), which SQLite stores far better in rowid
    # tables than in WITHOUT ROWID ones (meant for small rows).
    "CREATE TABLE IF NOT EXISTS blocks (hash BLOB PRIMARY KEY, parent BLOB NOT NULL, "
    "height INTEGER NOT NULL, state_root BLOB NOT NULL, status TEXT NOT NULL, "
    "block BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS invalid (hash BLOB PRIMARY KEY, reason TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS canonical (height INTEGER PRIMARY KEY, hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS txindex (tx_id BLOB PRIMARY KEY, block BLOB NOT NULL, "
    "idx INTEGER NOT NULL) WITHOUT ROWID",
    # One row per executed block: all its receipts in one record (transfers have small receipts;
    # a row per receipt cost the import path a thousand B-tree inserts per block).
    "CREATE TABLE IF NOT EXISTS block_receipts (block BLOB PRIMARY KEY, receipts BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
)


class ExecutionStateError(QoinError):
    """The execution database cannot do what was asked."""


class UnknownHead(ExecutionStateError):
    """A head change to a block this client has not received (the engine answers SYNCING)."""


class StateRootMismatch(InvalidExecution):
    """Executing the block gives another state root than its header claims."""


class ReceiptsRootMismatch(InvalidExecution):
    """Executing the block gives another receipts root than its header claims."""


class PayloadStatus(Enum):
    """Engine API verdicts."""

    VALID = "VALID"
    INVALID = "INVALID"
    SYNCING = "SYNCING"
    ACCEPTED = "ACCEPTED"


@dataclass(frozen=True)
class Verdict:
    """A payload's status, with the reason when it is invalid."""

    status: PayloadStatus
    """VALID, INVALID or SYNCING."""
    reason: str = ""
    """Why it is invalid."""


@dataclass(frozen=True)
class HeadChange:
    """What a head move did, for the mempool."""

    disconnected: tuple[AnyTransaction, ...]
    """Transactions of the blocks that left the canonical chain, oldest first."""
    connected: tuple[AnyTransaction, ...]
    """Transactions of the blocks that joined it, oldest first."""


class ExecutionState:
    """State, blocks and indexes of one execution client."""

    def __init__(
        self,
        db: sqlite3.Connection,
        genesis: Genesis,
        lock_fd: int,
        retain: int,
        checkpointer: Checkpointer,
    ) -> None:
        self._db = db
        self._checkpointer = checkpointer
        self.genesis = genesis
        self._lock_fd = lock_fd
        self.retain = retain
        self.nodes = SqliteNodeStore(db)
        self.tree = SparseMerkleTree(self.nodes)
        # Values of the head state (saves tree walks on import); cleared on any other move.
        self._values: OrderedDict[bytes, bytes | None] = OrderedDict()
        self._traces: OrderedDict[bytes, BlockTrace] = OrderedDict()
        self.events = EventIndex(db)
        # What committed head changes did, for subscribers (taken by the client after each call).
        self._new_heads: list[Block] = []
        self._new_logs: list[Log] = []
        self._init_genesis()
        self.tree = self._head_tree()
        self.pool = ThreadPoolExecutor(default_workers(), thread_name_prefix="verify")

    @classmethod
    def open(cls, datadir: Path, genesis: Genesis, retain: int = DEFAULT_RETAIN) -> ExecutionState:
        """Open (or create) the execution database in ``datadir``."""
        datadir.mkdir(parents=True, exist_ok=True)
        path = datadir / STATE_FILE
        fd = os.open(path.with_name(STATE_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ExecutionStateError(f"{datadir} is in use by another execution client") from None
        db: sqlite3.Connection | None = None
        checkpointer: Checkpointer | None = None
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            SqliteNodeStore.tune(db)
            # The state is derived from the consensus chain, which replays what a power loss drops
            # (the WAL keeps the file consistent); see docs/decisions.md #13.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            for statement in _SCHEMA:
                db.execute(statement)
            EventIndex.create(db)
            checkpointer = Checkpointer(path)
            return cls(db, genesis, fd, retain, checkpointer)
        except (sqlite3.DatabaseError, QoinError) as exc:
            if checkpointer is not None:
                checkpointer.close()
            if db is not None:
                db.close()
            os.close(fd)
            raise ExecutionStateError(f"cannot open {path}: {exc}") from None

    # -- setup -----------------------------------------------------------------------------------

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _init_genesis(self) -> None:
        genesis_hash = self.genesis.genesis_hash
        stored = self._meta("genesis")
        if stored is not None:
            if stored != genesis_hash:
                raise ExecutionStateError("this data directory belongs to another network")
            if self._meta("format") != DATA_FORMAT:
                raise ExecutionStateError(
                    "this execution data directory was written by an older Qoin (another state "
                    "layout); delete it — the consensus client replays the chain into a new one"
                )
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            root = self.tree.update(
                genesis_state(self.genesis),
                0,
            )
            self._db.execute(
                "INSERT INTO blocks VALUES (?, ?, 0, ?, 'VALID', ?)",
                (genesis_hash, bytes(32), root, self.genesis.block.encode()),
            )
            self._db.execute("INSERT INTO canonical VALUES (0, ?)", (genesis_hash,))
            self._db.execute(
                "INSERT INTO meta VALUES ('genesis', ?), ('head', ?), ('format', ?)",
                (genesis_hash, genesis_hash, DATA_FORMAT),
            )
            self._db.execute("COMMIT")
            self._checkpointer.after_commit(self._db)
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._values.clear()
        self._new_heads.clear()
        self._new_logs.clear()
        self.nodes.clear_cache()
        self.tree = self._head_tree()

    def _head_tree(self) -> SparseMerkleTree:
        """The tree at the head block's state (after a head move to an ancestor, newer tree
        versions of the abandoned branch still exist: the head, not the newest version, rules)."""
        info = self.block_info(self.head)
        if info is None:
            raise ExecutionStateError("the head block is missing from the execution database")
        return SparseMerkleTree(self.nodes, info[2])

    # -- reads -----------------------------------------------------------------------------------

    @property
    def head(self) -> bytes:
        """Hash of the head block."""
        head = self._meta("head")
        if head is None:
            raise ExecutionStateError("no head")
        return head

    def block_info(self, block_hash: bytes) -> tuple[int, bytes, bytes] | None:
        """(height, parent, post-state root) of a stored valid block."""
        row = self._db.execute(
            "SELECT height, parent, state_root FROM blocks WHERE hash = ?", (block_hash,)
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def executed(self, block_hash: bytes) -> bool:
        """Whether ``block_hash`` is stored, executed and VALID (not an ACCEPTED side block waiting
        for its execution, nor one remembered invalid): what ``engine_getVerdict`` answers for."""
        return (
            self._status(block_hash) is PayloadStatus.VALID
            and self._invalid_reason(block_hash) is None
        )

    def block(self, block_hash: bytes) -> Block | None:
        """A stored valid block."""
        row = self._db.execute("SELECT block FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return None if row is None else Block.decode(bytes(row[0]))

    def canonical_hash(self, height: int) -> bytes | None:
        """The canonical block at ``height``."""
        row = self._db.execute("SELECT hash FROM canonical WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def head_height(self) -> int:
        """Height of the head block."""
        info = self.block_info(self.head)
        return 0 if info is None else info[0]

    def state_root(self, block_hash: bytes | None = None) -> bytes:
        """The state root after a stored block (the head's by default)."""
        if block_hash is None:
            return self.tree.root
        info = self.block_info(block_hash)
        if info is None:
            raise ExecutionStateError(f"unknown block {block_hash.hex()}")
        return info[2]

    def account(self, address: Address, block_hash: bytes | None = None) -> Account:
        """An account at the head (or after a retained block)."""
        try:
            root = self.state_root(block_hash)
            return read_account(lambda key: self.tree.get_at(root, key), address)
        except SmtError as exc:
            raise ExecutionStateError(f"state of that block is no longer retained: {exc}") from None

    def proof(
        self, address: Address, block_hash: bytes | None = None, keys: bool = False
    ) -> tuple[bytes, Proof]:
        """(state root, Merkle proof of the account leaf — or with ``keys`` of the keys leaf) at
        the head or after a retained block."""
        root = self.state_root(block_hash)
        try:
            return root, self.tree.prove_at(root, (keys_key if keys else state_key)(address))
        except SmtError as exc:
            raise ExecutionStateError(f"state of that block is no longer retained: {exc}") from None

    def storage(self, address: Address, key: bytes, block_hash: bytes | None = None) -> bytes:
        """A contract's or actor's storage value (empty if absent) at the head or after a retained
        block."""
        return self.value(storage_key(address, key), block_hash) or b""

    def code(self, address: Address, block_hash: bytes | None = None) -> bytes | None:
        """The module of the contract at ``address`` (None: not a contract)."""
        code_hash = self.account(address, block_hash).code_hash
        return None if code_hash is None else self.value(code_key(code_hash), block_hash)

    def value(self, key: bytes, block_hash: bytes | None = None) -> bytes | None:
        """The value of any state key at the head or after a retained block."""
        try:
            return self.tree.get_at(self.state_root(block_hash), key)
        except SmtError as exc:
            raise ExecutionStateError(f"state of that block is no longer retained: {exc}") from None

    def prove_key(self, key: bytes, block_hash: bytes | None = None) -> tuple[bytes, Proof]:
        """(state root, Merkle proof of any state key) at the head or after a retained block."""
        root = self.state_root(block_hash)
        try:
            return root, self.tree.prove_at(root, key)
        except SmtError as exc:
            raise ExecutionStateError(f"state of that block is no longer retained: {exc}") from None

    def _parent_reader(self, block: Block) -> tuple[bytes, Callable[[bytes], bytes | None]]:
        parent_root = self.state_root(block.header.parent_hash)
        tree = self.tree

        def read(key: bytes) -> bytes | None:
            try:
                return tree.get_at(parent_root, key)
            except SmtError as exc:
                raise ExecutionStateError(f"parent state is no longer retained: {exc}") from None

        return parent_root, read

    def witness(self, block: Block) -> Witness:
        """The witness of ``block`` against its parent's state root (which must be retained)."""
        parent_root, read = self._parent_reader(block)
        try:
            return make_witness(self.tree, parent_root, touched_keys(read, block))
        except SmtError as exc:
            raise ExecutionStateError(f"parent state is no longer retained: {exc}") from None

    def trace(self, block_hash: bytes) -> BlockTrace:
        """What each step of a stored, valid block read and wrote (re-executed on its parent's
        state if it is no longer cached)."""
        cached = self._traces.get(block_hash)
        if cached is not None:
            return cached
        block = self.block(block_hash)
        if block is None or self._status(block_hash) is not PayloadStatus.VALID:
            raise ExecutionStateError(f"no valid block {block_hash.hex()} to trace")
        _, outcome = self._execute_detached(block)
        self._keep_trace(block_hash, outcome.trace)
        return outcome.trace

    def _keep_trace(self, block_hash: bytes, trace: BlockTrace) -> None:
        self._traces[block_hash] = trace
        self._traces.move_to_end(block_hash)
        while len(self._traces) > TRACE_CACHE_SIZE:
            self._traces.popitem(last=False)

    def _execute_detached(
        self, block: Block, fill_fee_payout: bool = False
    ) -> tuple[bytes, BlockOutcome]:
        """Execute ``block`` on its (retained) parent state without writing anything; return the
        post-state root and the outcome."""
        parent_root, read = self._parent_reader(block)
        outcome = execute_block(read, block, executor=self.pool, fill_fee_payout=fill_fee_payout)
        try:
            return root_after(self.tree, parent_root, outcome.changes), outcome
        except SmtError as exc:
            raise ExecutionStateError(f"parent state is no longer retained: {exc}") from None

    def has_transaction(self, tx_id: bytes) -> bool:
        """Whether a transaction is in the canonical chain (an index lookup, no block read)."""
        row = self._db.execute("SELECT 1 FROM txindex WHERE tx_id = ?", (tx_id,)).fetchone()
        return row is not None

    def transaction(self, tx_id: bytes) -> tuple[AnyTransaction, bytes, int] | None:
        """(transaction, block hash, index) of a canonical transaction."""
        row = self._db.execute(
            "SELECT block, idx FROM txindex WHERE tx_id = ?", (tx_id,)
        ).fetchone()
        if row is None:
            return None
        block = self.block(bytes(row[0]))
        if block is None:
            return None
        return block.transactions[int(row[1])], bytes(row[0]), int(row[1])

    def receipt(self, tx_id: bytes) -> tuple[Receipt, bytes] | None:
        """(receipt, block hash) of a canonical transaction."""
        row = self._db.execute(
            "SELECT r.receipts, t.block, t.idx FROM txindex t "
            "JOIN block_receipts r ON r.block = t.block WHERE t.tx_id = ?",
            (tx_id,),
        ).fetchone()
        if row is None:
            return None
        return decode_receipts(bytes(row[0]))[int(row[2])], bytes(row[1])

    # -- payloads ----------------------------------------------------------------------------------

    def fill_roots(self, template: Block) -> Block:
        """``template`` with the ``state_root`` and ``receipts_root`` its execution gives (for
        building a payload; raises :class:`InvalidExecution` if it cannot execute)."""
        post_root, outcome = self._execute_detached(template, fill_fee_payout=True)
        header = replace(
            template.header,
            transactions_root=transactions_root(outcome.coinbase, template.transactions),
            state_root=post_root,
            receipts_root=outcome.receipts_root,
        )
        return replace(template, header=header, coinbase=outcome.coinbase)

    def new_payload(self, block: Block) -> Verdict:
        """Execute and judge a block (see the module docstring)."""
        early = self._precheck(block)
        if early is not None:
            return early
        try:
            if block.header.parent_hash == self.head:
                self._extend_head(block)
            else:
                self._validate_side(block)
        except InvalidExecution as exc:
            return self._mark_invalid(block.block_hash, exc)
        return Verdict(PayloadStatus.VALID)

    def _precheck(self, block: Block) -> Verdict | None:
        """The verdict when the block cannot (or need not) be executed now; None to execute it."""
        block_hash, parent_hash = block.block_hash, block.header.parent_hash
        reason = self._invalid_reason(block_hash)
        known = self._status(block_hash)
        if reason is not None:  # an executed-and-failed ACCEPTED block is still in `blocks`
            return Verdict(PayloadStatus.INVALID, reason)
        if known is not None:
            return Verdict(known)
        parent_status, parent = self._status(parent_hash), self.block_info(parent_hash)
        problem = self._parent_problem(block, parent)
        if problem is not None:
            return self._mark_invalid(block_hash, ExecutionStateError(problem))
        if parent_status is None or parent is None:
            return Verdict(PayloadStatus.SYNCING)
        if parent_status is PayloadStatus.ACCEPTED or (
            parent_hash != self.head and not self._retained(parent[2])
        ):
            # The parent's state was never materialised (deep side branch) or was pruned.
            self._store_block(block, _UNKNOWN_ROOT, PayloadStatus.ACCEPTED)
            return Verdict(PayloadStatus.ACCEPTED)
        return None

    def _parent_problem(self, block: Block, parent: tuple[int, bytes, bytes] | None) -> str | None:
        """Why a block is invalid because of its parent alone (invalid parent, wrong height)."""
        if self._invalid_reason(block.header.parent_hash) is not None:
            return "its parent is invalid"
        if parent is not None and block.header.height != parent[0] + 1:
            return f"height {block.header.height} after a parent at {parent[0]}"
        return None

    def _invalid_reason(self, block_hash: bytes) -> str | None:
        row = self._db.execute(
            "SELECT reason FROM invalid WHERE hash = ?", (block_hash,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _retained(self, root: bytes) -> bool:
        """Whether the state with this root can be read from the node store."""
        return root == bytes(32) or self.nodes.get(root) is not None

    def _mark_invalid(self, block_hash: bytes, exc: Exception) -> Verdict:
        reason = f"{type(exc).__name__}: {exc}"
        self._db.execute("INSERT OR IGNORE INTO invalid VALUES (?, ?)", (block_hash, reason))
        return Verdict(PayloadStatus.INVALID, reason)

    def _status(self, block_hash: bytes) -> PayloadStatus | None:
        row = self._db.execute("SELECT status FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return None if row is None else PayloadStatus(str(row[0]))

    def _check_roots(self, block: Block, state_root: bytes, receipts_root: bytes) -> None:
        if block.header.state_root != state_root:
            raise StateRootMismatch(
                f"state root mismatch: header {block.header.state_root.hex()}, "
                f"execution gives {state_root.hex()}"
            )
        if block.header.receipts_root != receipts_root:
            raise ReceiptsRootMismatch("receipts root mismatch")

    def _extend_head(self, block: Block) -> None:
        height = block.header.height
        self._db.execute("BEGIN IMMEDIATE")
        try:

            def write(root: bytes, outcome: BlockOutcome) -> None:
                # Runs while signatures are still being verified; the COMMIT waits for them.
                self._check_roots(block, root, outcome.receipts_root)
                self._store_block(block, root, PayloadStatus.VALID)
                self._connect(block, outcome.receipts)
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'head'", (block.block_hash,)
                )

            _, outcome = execute_on_tree(
                self.tree, block, height, self.pool, then=write, read_cache=self._values
            )
            if height > self.retain:
                self.tree.prune(height - self.retain)
            self._db.execute("COMMIT")
            self._remember(outcome.touched)
            self._keep_trace(block.block_hash, outcome.trace)
            self._checkpointer.after_commit(self._db)
        except BaseException:
            self._rollback()
            raise

    def _remember(self, values: Mapping[bytes, bytes | None]) -> None:
        cache = self._values
        for key, value in values.items():
            cache[key] = value
            cache.move_to_end(key)
        while len(cache) > VALUE_CACHE_SIZE:
            cache.popitem(last=False)

    def _validate_side(self, block: Block) -> None:
        post_root, outcome = self._execute_detached(block)
        self._check_roots(block, post_root, outcome.receipts_root)
        self._store_block(block, post_root, PayloadStatus.VALID)
        self._keep_trace(block.block_hash, outcome.trace)

    def _store_block(self, block: Block, root: bytes, status: PayloadStatus) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
            (
                block.block_hash,
                block.header.parent_hash,
                block.header.height,
                root,
                status.value,
                block.encode(),
            ),
        )

    def _connect(self, block: Block, receipts: Sequence[Receipt]) -> None:
        block_hash = block.block_hash
        self._db.execute(
            "INSERT OR REPLACE INTO canonical VALUES (?, ?)", (block.header.height, block_hash)
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO txindex VALUES (?, ?, ?)",
            [(tx.tx_id, block_hash, i) for i, tx in enumerate(block.transactions)],
        )
        self._db.execute(
            "INSERT OR REPLACE INTO block_receipts VALUES (?, ?)",
            (block_hash, encode_receipts(receipts)),
        )
        logs = block_logs(block_hash, block.header.height, receipts)
        self.events.add_logs(block_hash, block.header.height, logs)
        self._new_heads.append(block)
        self._new_logs.extend(logs)

    def take_notifications(self) -> tuple[list[Block], list[Log]]:
        """The blocks that joined the canonical chain and the logs that left it (``removed``) and
        joined it, in order, since the last call — committed changes only."""
        heads, logs = self._new_heads, self._new_logs
        self._new_heads, self._new_logs = [], []
        return heads, logs

    def block_receipts(self, block_hash: bytes) -> tuple[Receipt, ...]:
        """The receipts of an executed block (empty if it has none stored)."""
        row = self._db.execute(
            "SELECT receipts FROM block_receipts WHERE block = ?", (block_hash,)
        ).fetchone()
        return () if row is None else decode_receipts(bytes(row[0]))

    def _disconnect(self, block: Block) -> None:
        block_hash, height = block.block_hash, block.header.height
        self._new_logs.extend(
            reversed(block_logs(block_hash, height, self.block_receipts(block_hash), removed=True))
        )
        self.events.remove_block(block_hash)
        self._db.executemany(
            "DELETE FROM txindex WHERE tx_id = ?", [(tx.tx_id,) for tx in block.transactions]
        )
        self._db.execute("DELETE FROM canonical WHERE height = ?", (block.header.height,))

    def forkchoice_updated(self, head_hash: bytes) -> HeadChange:
        """Make ``head_hash`` (a stored, not invalid, block) the head; roll the state over to it.
        Accepted blocks on the way are executed now; if one fails it is marked invalid, nothing
        changes, and :class:`ExecutionStateError` says why."""
        if head_hash == self.head:
            return HeadChange((), ())
        reason = self._invalid_reason(head_hash)
        if reason is not None:
            raise ExecutionStateError(f"head {head_hash.hex()} is invalid: {reason}")
        if self.block_info(head_hash) is None:
            raise UnknownHead(f"unknown head {head_hash.hex()}")
        old_path, new_path = path_between(self._link, self.head, head_hash)
        old_blocks = [self._require(h) for h in old_path]  # newest first
        new_blocks = [self._require(h) for h in new_path]  # oldest first
        fork_root = self.state_root(new_blocks[0].header.parent_hash if new_blocks else head_hash)
        failing = head_hash
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for block in old_blocks:
                self._disconnect(block)
            self._values.clear()
            self.tree = self.tree.with_root(fork_root)
            for block in new_blocks:
                failing = block.block_hash
                root, outcome = execute_on_tree(self.tree, block, block.header.height, self.pool)
                self._check_roots(block, root, outcome.receipts_root)
                self._store_block(block, root, PayloadStatus.VALID)
                self._connect(block, outcome.receipts)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (head_hash,))
            self._db.execute("COMMIT")
            self._checkpointer.after_commit(self._db)
        except InvalidExecution as exc:
            self._rollback()
            self._mark_invalid(failing, exc)
            raise ExecutionStateError(f"head change failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        return HeadChange(
            tuple(tx for block in reversed(old_blocks) for tx in block.transactions),
            tuple(tx for block in new_blocks for tx in block.transactions),
        )

    def _require(self, block_hash: bytes) -> Block:
        block = self.block(block_hash)
        if block is None:
            raise ExecutionStateError(f"block {block_hash.hex()} is not stored")
        return block

    def _link(self, block_hash: bytes) -> tuple[int, bytes]:
        """``(height, parent)`` of a stored block: the tree :func:`path_between` walks."""
        height, parent, _ = self._info(block_hash)
        return height, parent

    def _info(self, block_hash: bytes) -> tuple[int, bytes, bytes]:
        info = self.block_info(block_hash)
        if info is None:
            raise ExecutionStateError(f"block {block_hash.hex()} is not stored")
        return info

    def close(self) -> None:
        """Close the database (its WAL folded into the file) and release the lock."""
        self.pool.shutdown(wait=True)
        self._checkpointer.close()
        with contextlib.suppress(sqlite3.Error):  # SQLite recovers from the WAL on the next open
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
