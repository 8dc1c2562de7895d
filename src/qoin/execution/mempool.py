"""The mempool: validated pending transactions, ordered per sender by nonce, chosen by fee rate.

Rules:

* **Entry** — right chain, bounded size, nonce not below the account's and at most
  ``max_nonce_gap`` above it, the sender able to pay this transaction together with all its other
  pending ones, and (last, being the costly check) a valid hybrid signature (keys carried by the
  transaction, revealed in the state, or revealed by a pending lower-nonce transaction).
* **Replacement** — a transaction with the same sender and nonce replaces the pending one only if its
  fee is at least ``replace_bump_percent`` % higher (so replacement cannot be used to spam).
* **Bounds** — at most ``max_count`` transactions and ``max_bytes`` bytes. When full, the pending
  transaction with the lowest fee rate among every sender's *last* one (so no sender is left with a
  nonce gap) is evicted if the newcomer pays a higher rate; otherwise the newcomer is refused.
* **Selection** — for a block: repeatedly take the highest fee rate (Shor per gas: a call's
  ``fee_per_gas``, a transfer's fee over its fixed gas) among the senders' next-nonce transactions,
  skipping what the sender can no longer afford or what no longer fits the block's gas limit.
* **Gas** — a transaction whose gas limit exceeds the block gas limit, or (a call) does not cover its
  intrinsic gas, can never be included: refused as intrinsic.
* **Block connected** — included transactions leave; transactions made stale (nonce now too low) or
  unaffordable leave too. **Reorg** — transactions of disconnected blocks come back (if still valid).
* **Refusals** — every refusal is a :class:`MempoolError` whose :attr:`~MempoolError.refusal` says
  whether the transaction can never be valid anywhere (:attr:`Refusal.INTRINSIC`: wrong chain,
  oversize, value plus the most it can pay past the largest balance, a gas limit the chain cannot
  include, a signature that does not verify, keys that
  are not the sender's) or was refused because of the state or the pool (:attr:`Refusal.STATEFUL`:
  nonce used or too far ahead, funds, keys not revealed yet, a full pool, an underpriced
  replacement); :class:`AlreadyKnown` is no refusal (``None``).
* **Sequence numbers** — every admission (a replacement, or a transaction coming back after a reorg,
  included) gets the next number of a counter starting just above ``first_sequence``, so that
  :meth:`Mempool.added_since` can hand out, cursor by cursor, what was admitted since (transaction
  gossip: the consensus client relays each execution client's new transactions to its peers). The
  execution client starts the counter at its start time in microseconds: a restarted client numbers
  above every cursor its previous life handed out, so a consensus client that outlived the restart
  receives everything the new mempool holds (local transactions restored from the journal included).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from qoin.chain.transaction import AnyTransaction, CallTransaction
from qoin.crypto.address import Address
from qoin.crypto.hybrid import SignatureError, verify_for_address
from qoin.errors import QoinError
from qoin.execution.account import Account
from qoin.execution.gas import DEFAULT_BLOCK_GAS_LIMIT, call_intrinsic_gas
from qoin.execution.vm import MAX_BALANCE

MAX_TX_SIZE = 96 * 1024
"""Largest transaction the pool holds (a deployment carries a module of up to 64 KiB)."""


def cost(tx: AnyTransaction) -> int:
    """The most a transaction can take from its sender: the value it moves plus its most fee."""
    return tx.value + tx.max_fee


class Refusal(Enum):
    """Why a transaction was refused, for whoever relayed it."""

    INTRINSIC = "intrinsic"
    """It can never be valid anywhere: relaying it is a fault of the relay."""
    STATEFUL = "stateful"
    """It depends on the state or the pool: it may be valid elsewhere or later."""


class MempoolError(QoinError):
    """A transaction was not accepted into the mempool; the subclass says why."""

    refusal: ClassVar[Refusal | None] = Refusal.STATEFUL
    """Intrinsic or stateful; ``None`` for :class:`AlreadyKnown`, which is no refusal."""


class AlreadyKnown(MempoolError):
    """The very same transaction is already pending."""

    refusal = None


class WrongChainId(MempoolError):
    """The transaction is for another chain."""

    refusal = Refusal.INTRINSIC


class TransactionTooLarge(MempoolError):
    """The encoded transaction exceeds the size bound."""

    refusal = Refusal.INTRINSIC


class CostTooHigh(MempoolError):
    """Value plus the most fee exceed the largest balance: no sender can ever pay them."""

    refusal = Refusal.INTRINSIC


class GasLimitRefused(MempoolError):
    """The gas limit exceeds the block gas limit, or does not cover a call's intrinsic gas."""

    refusal = Refusal.INTRINSIC


class InvalidTransactionSignature(MempoolError):
    """The signature does not verify, or the keys carried are not the sender's."""

    refusal = Refusal.INTRINSIC


class KeysNotRevealed(InvalidTransactionSignature):
    """Neither the transaction, the state nor a pending lower-nonce transaction of the sender
    carries its public keys (the sender's first transaction may still be on its way)."""

    refusal = Refusal.STATEFUL


class NonceTooLow(MempoolError):
    """The sender already used this nonce."""

    refusal = Refusal.STATEFUL


class NonceTooHigh(MempoolError):
    """The nonce is too far above the sender's next nonce."""

    refusal = Refusal.STATEFUL


class InsufficientFunds(MempoolError):
    """The sender cannot pay this and its lower-nonce pending transactions."""

    refusal = Refusal.STATEFUL


class Underpriced(MempoolError):
    """A replacement that does not raise the fee enough, or a newcomer to a full pool that pays
    less than everything pending."""

    refusal = Refusal.STATEFUL


@dataclass(frozen=True)
class PendingTx:
    """A transaction in the pool."""

    tx: AnyTransaction
    """The transaction."""
    size: int
    """Encoded size in bytes."""

    @property
    def fee_rate(self) -> float:
        """Shor per gas: the priority."""
        return self.tx.fee_rate


class Mempool:
    """Pending transactions of one chain, validated against ``read_account`` (the head state)."""

    def __init__(
        self,
        chain_id: int,
        read_account: Callable[[Address], Account],
        max_count: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_nonce_gap: int = 64,
        replace_bump_percent: int = 10,
        first_sequence: int = 0,
        block_gas_limit: int = DEFAULT_BLOCK_GAS_LIMIT,
    ) -> None:
        self.chain_id = chain_id
        self.read_account = read_account
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_nonce_gap = max_nonce_gap
        self.replace_bump_percent = replace_bump_percent
        self.block_gas_limit = block_gas_limit
        self._by_sender: dict[Address, dict[int, PendingTx]] = {}
        self._by_id: dict[bytes, PendingTx] = {}
        self._bytes = 0
        self._top_seq = first_sequence
        self._seq_of: dict[bytes, int] = {}  # tx id -> sequence number
        self._by_seq: dict[int, bytes] = {}  # sequence number -> tx id, in ascending order
        self._seq_log: list[int] = []  # ascending; may hold removed numbers (compacted lazily)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._by_id

    @property
    def total_bytes(self) -> int:
        """Encoded size of everything pending."""
        return self._bytes

    def get(self, tx_id: bytes) -> AnyTransaction | None:
        """A pending transaction by id."""
        pending = self._by_id.get(tx_id)
        return None if pending is None else pending.tx

    def pending_of(self, sender: Address) -> list[AnyTransaction]:
        """A sender's pending transactions in nonce order."""
        queue = self._by_sender.get(sender, {})
        return [queue[nonce].tx for nonce in sorted(queue)]

    def next_nonce(self, sender: Address) -> int:
        """The nonce a new transaction of ``sender`` should use (state nonce plus pending run)."""
        nonce = self.read_account(sender).nonce
        queue = self._by_sender.get(sender, {})
        while nonce in queue:
            nonce += 1
        return nonce

    # -- entry -----------------------------------------------------------------------------------

    def _check_signature(self, tx: AnyTransaction, account: Account) -> None:
        keys = tx.public_keys or account.public_keys
        if keys is None:
            # Keys may be revealed by a pending lower-nonce transaction of the same sender.
            earlier = [p.tx for n, p in self._by_sender.get(tx.sender, {}).items() if n < tx.nonce]
            keys = next((t.public_keys for t in earlier if t.public_keys is not None), None)
        if keys is None:
            raise KeysNotRevealed(
                f"sender {tx.sender} has not revealed its public keys; the transaction must carry them"
            )
        try:
            verify_for_address(tx.sender, keys, tx.signing_hash, tx.signature)
        except SignatureError as exc:
            raise InvalidTransactionSignature(str(exc)) from None

    def _check_funds(self, tx: AnyTransaction, account: Account) -> None:
        # Every pending transaction of the sender counts (whatever its nonce), except the one this
        # would replace: the sender must be able to pay for all of them.
        queue = self._by_sender.get(tx.sender, {})
        committed = sum(cost(p.tx) for nonce, p in queue.items() if nonce != tx.nonce)
        if committed + cost(tx) > account.balance:
            raise InsufficientFunds(
                f"{tx.sender} has {account.balance} Shor; this transaction and its other pending "
                f"ones need {committed + cost(tx)}"
            )

    def _check_gas(self, tx: AnyTransaction) -> None:
        if tx.gas_limit > self.block_gas_limit:
            raise GasLimitRefused(
                f"gas limit {tx.gas_limit} exceeds the block gas limit {self.block_gas_limit}"
            )
        if isinstance(tx, CallTransaction):
            intrinsic = call_intrinsic_gas(len(tx.data))
            if tx.gas_limit < intrinsic:
                raise GasLimitRefused(
                    f"gas limit {tx.gas_limit} is below the call's intrinsic gas {intrinsic}"
                )

    def add(
        self, tx: AnyTransaction, before_insert: Callable[[AnyTransaction], None] | None = None
    ) -> None:
        """Validate and admit ``tx``; raise a :class:`MempoolError` saying why not.

        ``before_insert`` (the local journal's append) runs once ``tx`` is known to be admitted,
        before the pool changes: if it raises, the pool is left as it was.
        """
        if tx.tx_id in self._by_id:
            raise AlreadyKnown(f"transaction {tx.tx_id.hex()} is already pending")
        if tx.chain_id != self.chain_id:
            raise WrongChainId(f"transaction is for chain {tx.chain_id}, not {self.chain_id}")
        size = len(tx.encode())
        if size > MAX_TX_SIZE:
            raise TransactionTooLarge(f"{size} bytes exceeds {MAX_TX_SIZE}")
        if cost(tx) > MAX_BALANCE:
            raise CostTooHigh(
                f"value plus fee ({cost(tx)} Shor) exceed the largest balance ({MAX_BALANCE})"
            )
        self._check_gas(tx)
        account = self.read_account(tx.sender)
        if tx.nonce < account.nonce:
            raise NonceTooLow(f"nonce {tx.nonce} already used (account nonce {account.nonce})")
        if tx.nonce > account.nonce + self.max_nonce_gap:
            raise NonceTooHigh(
                f"nonce {tx.nonce} is more than {self.max_nonce_gap} above the account's "
                f"{account.nonce}"
            )
        self._check_funds(tx, account)  # cheap checks before the signature
        self._check_signature(tx, account)
        entry = PendingTx(tx, size)
        replaced = self._by_sender.get(tx.sender, {}).get(tx.nonce)
        if replaced is not None:
            # Fee per gas raised by the bump (and at least one Shor more in all), in integers.
            old = replaced.tx
            needed = max(
                -(-old.max_fee * tx.gas_limit * (100 + self.replace_bump_percent))
                // (100 * old.gas_limit),
                old.max_fee * tx.gas_limit // old.gas_limit + 1,
            )
            if tx.max_fee < needed:
                raise Underpriced(
                    f"replacing nonce {tx.nonce} needs a fee of at least {needed} "
                    f"({self.replace_bump_percent} % more per gas)"
                )
            if self._bytes - replaced.size + size > self.max_bytes:
                raise Underpriced(
                    "the pool is full; the replacement is larger than what it replaces"
                )
            leaving = [replaced]
        else:
            leaving = self._victims(entry)
        if before_insert is not None:
            before_insert(tx)
        for pending in leaving:
            self._remove(pending)
        self._insert(entry)

    def _insert(self, entry: PendingTx) -> None:
        tx = entry.tx
        self._by_sender.setdefault(tx.sender, {})[tx.nonce] = entry
        self._by_id[tx.tx_id] = entry
        self._bytes += entry.size
        self._top_seq += 1
        self._seq_of[tx.tx_id] = self._top_seq
        self._by_seq[self._top_seq] = tx.tx_id
        self._seq_log.append(self._top_seq)

    def _victims(self, entry: PendingTx) -> list[PendingTx]:
        """What to evict, in order, so that ``entry`` fits (nothing while there is room): each
        time the lowest fee rate among the senders' last transactions not chosen yet. Raises
        :class:`Underpriced` if that does not beat ``entry``'s rate; changes nothing."""
        victims: list[PendingTx] = []
        count, used = len(self._by_id), self._bytes
        chosen: dict[Address, int] = {}  # sender -> how many of its last transactions are victims
        while count + 1 > self.max_count or used + entry.size > self.max_bytes:
            tails = []
            for sender, queue in self._by_sender.items():
                taken = chosen.get(sender, 0)
                if taken == 0:
                    tails.append(queue[max(queue)])
                elif taken < len(queue):
                    tails.append(queue[sorted(queue)[-1 - taken]])
            if not tails:
                raise Underpriced("the pool cannot hold this transaction")
            victim = min(tails, key=lambda p: (p.fee_rate, -p.tx.nonce))
            if victim.fee_rate >= entry.fee_rate or victim.tx.sender == entry.tx.sender:
                raise Underpriced(
                    f"the pool is full and this fee rate ({entry.fee_rate:.4f} Shor/gas) does not "
                    "beat the lowest pending one"
                )
            victims.append(victim)
            chosen[victim.tx.sender] = chosen.get(victim.tx.sender, 0) + 1
            count -= 1
            used -= victim.size
        return victims

    def _remove(self, pending: PendingTx) -> None:
        queue = self._by_sender.get(pending.tx.sender, {})
        if queue.get(pending.tx.nonce) is pending:
            del queue[pending.tx.nonce]
            if not queue:
                del self._by_sender[pending.tx.sender]
        if self._by_id.pop(pending.tx.tx_id, None) is not None:
            self._bytes -= pending.size
            del self._by_seq[self._seq_of.pop(pending.tx.tx_id)]
            if len(self._seq_log) > 2 * len(self._by_seq) + 64:
                self._seq_log = list(self._by_seq)  # drop removed numbers: amortised O(1)

    # -- announcing ------------------------------------------------------------------------------

    @property
    def top_sequence(self) -> int:
        """The sequence number of the latest admission (``first_sequence`` before the first)."""
        return self._top_seq

    def added_since(
        self, after: int, max_count: int, max_bytes: int
    ) -> tuple[int, list[AnyTransaction]]:
        """Transactions still pending that were admitted after sequence number ``after``, in
        admission order: at most ``max_count`` of them and ``max_bytes`` encoded bytes, but always
        the first one if any (every pending transaction fits :data:`MAX_TX_SIZE`). Returns them
        with the cursor to pass next time: the last returned one's number while more are pending
        after it, else the top number, so that removed transactions are skipped for good.

        A cursor above the top number cannot come from this pool (from an execution client
        whose clock went back between two lives, say): it counts as 0, so a caller that outlived
        a restart is not held back until the new numbers pass its old cursor. Cost: O(log n +
        returned + removed numbers skipped), the last bounded by the lazy compaction of the
        number log.
        """
        if max_count < 1:
            raise ValueError("max_count must be at least 1")
        if after > self._top_seq:
            after = 0
        chosen: list[AnyTransaction] = []
        used = last = 0
        for index in range(bisect_right(self._seq_log, after), len(self._seq_log)):
            seq = self._seq_log[index]
            tx_id = self._by_seq.get(seq)
            if tx_id is None:
                continue  # removed since it was admitted
            pending = self._by_id[tx_id]
            if chosen and (len(chosen) >= max_count or used + pending.size > max_bytes):
                return last, chosen  # more to come from ``last`` on
            chosen.append(pending.tx)
            used += pending.size
            last = seq
        return self._top_seq, chosen  # nothing pending past the top: skip what was removed

    # -- block building --------------------------------------------------------------------------

    def select(
        self, max_count: int, max_bytes: int, max_gas: int | None = None
    ) -> list[AnyTransaction]:
        """Transactions for a new block: best fee rate first, each sender in nonce order, at most
        ``max_count`` of them, ``max_bytes`` bytes and ``max_gas`` gas limits (default: the block
        gas limit)."""
        gas_left = self.block_gas_limit if max_gas is None else max_gas
        chosen: list[AnyTransaction] = []
        used = 0
        state: dict[Address, tuple[int, int]] = {}  # sender -> (next nonce, spendable balance)
        heap: list[tuple[float, bytes, Address]] = []
        for sender, queue in self._by_sender.items():
            account = self.read_account(sender)
            state[sender] = (account.nonce, account.balance)
            head = queue.get(account.nonce)
            if head is not None:
                heapq.heappush(heap, (-head.fee_rate, head.tx.tx_id, sender))
        while heap and len(chosen) < max_count:
            _, _, sender = heapq.heappop(heap)
            nonce, balance = state[sender]
            pending = self._by_sender[sender][nonce]
            needed = cost(pending.tx)
            too_big = used + pending.size > max_bytes or pending.tx.gas_limit > gas_left
            if needed > balance or too_big:
                continue  # this sender's run stops here
            chosen.append(pending.tx)
            used += pending.size
            gas_left -= pending.tx.gas_limit
            state[sender] = (nonce + 1, balance - needed)
            following = self._by_sender[sender].get(nonce + 1)
            if following is not None:
                heapq.heappush(heap, (-following.fee_rate, following.tx.tx_id, sender))
        return chosen

    # -- chain events ----------------------------------------------------------------------------

    def on_block(self, included: Iterable[AnyTransaction]) -> None:
        """A block was connected: drop its transactions and whatever it made invalid."""
        for tx in included:
            pending = self._by_id.get(tx.tx_id)
            if pending is not None:
                self._remove(pending)
        self.revalidate({tx.sender for tx in included})

    def revalidate(self, senders: Iterable[Address] | None = None) -> None:
        """Drop pending transactions whose nonce is used or that the sender can no longer pay."""
        for sender in list(senders if senders is not None else self._by_sender):
            queue = self._by_sender.get(sender)
            if not queue:
                continue
            account = self.read_account(sender)
            committed = 0
            for nonce in sorted(queue):
                pending = queue[nonce]
                committed += cost(pending.tx)
                if nonce < account.nonce or committed > account.balance:
                    self._remove(pending)

    def on_reorg(
        self, disconnected: Iterable[AnyTransaction], connected: Iterable[AnyTransaction]
    ) -> None:
        """After a reorg: transactions of disconnected blocks (given oldest first) come back unless
        the new chain includes them or they became invalid; then everything is revalidated."""
        connected_ids = {tx.tx_id for tx in connected}
        for tx in connected:
            pending = self._by_id.get(tx.tx_id)
            if pending is not None:
                self._remove(pending)
        for tx in disconnected:
            if tx.tx_id in connected_ids or tx.tx_id in self._by_id:
                continue
            try:
                self.add(tx)
            except MempoolError:
                continue  # no longer valid on the new chain
        self.revalidate()
