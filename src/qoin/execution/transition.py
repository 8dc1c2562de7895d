"""The state transition of a block, as a function of the pre-state of the accounts it touches.

``execute_block(read, block)`` is shared by the stateful execution client (``read`` backed by the
state database) and by stateless re-execution from a witness (``read`` backed by proven values), so
both compute the same post-state by construction:

1. Resolve each transaction's public keys: the keys it carries (its sender's first outgoing
   transaction), else keys revealed earlier in this block, else the keys the state holds.
2. Verify every hybrid signature, in parallel on all cores (the libraries release the GIL).
3. Apply the transactions in order: nonce equal to the account's, balance covering amount plus fee,
   debit, nonce + 1, first-spend key reveal, credit the recipient.
4. Credit the coinbase payouts (reward split and fees; the fee payout must equal the sum of fees).
5. Produce one receipt per transaction and the receipts root.

Any broken rule makes the whole block invalid with a typed reason (there are no failed-but-included
transactions for plain transfers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

from qoin.chain.block import MAX_BLOCK_TRANSACTIONS, Block
from qoin.chain.transaction import Transaction
from qoin.crypto.address import Address
from qoin.crypto.batch import start_verifying, verify_many
from qoin.crypto.hashing import tagged_hash
from qoin.crypto.hybrid import HybridPublicKey, is_valid
from qoin.crypto.merkle import merkle_root
from qoin.encoding.codec import DecodeError, NonCanonicalInteger, Reader, encode_varint
from qoin.errors import QoinError
from qoin.execution.account import EMPTY_ACCOUNT, Account

TAG_RECEIPT = b"QOIN/receipt/v1"
MAX_BALANCE = 2**64 - 1


class InvalidExecution(QoinError):
    """A block cannot be executed on its parent state; the subclass names the rule."""


class MissingPublicKey(InvalidExecution):
    """A sender has not revealed its keys and its transaction does not carry them."""


class KeysMismatch(InvalidExecution):
    """Carried public keys do not hash to the sender address."""


class BadSignature(InvalidExecution):
    """A transaction's hybrid signature does not verify."""


class BadNonce(InvalidExecution):
    """A transaction's nonce is not the sender's next nonce."""


class InsufficientBalance(InvalidExecution):
    """The sender cannot pay amount plus fee."""


class BalanceOverflow(InvalidExecution):
    """A credit would push a balance past 2^64 - 1 Shor."""


class BadFeePayout(InvalidExecution):
    """The coinbase's fee payout is not the sum of the transactions' fees."""


@dataclass(frozen=True)
class Receipt:
    """What executing one transaction did."""

    index: int
    """Position in the block."""
    tx_id: bytes
    """The transaction."""
    sender: Address
    """Who paid."""
    fee: int
    """Fee paid to the miner."""
    revealed_keys: bool
    """Whether this transaction revealed its sender's public keys."""

    def encode(self) -> bytes:
        """Canonical encoding: varint index ‖ tx id (32) ‖ sender (32) ‖ varint fee ‖ u8 revealed."""
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        """The encoding, built once (it is hashed into the root and stored)."""
        return b"".join(
            (
                encode_varint(self.index),
                self.tx_id,
                self.sender.raw,
                encode_varint(self.fee),
                b"\x01" if self.revealed_keys else b"\x00",
            )
        )

    @classmethod
    def read(cls, reader: Reader) -> Receipt:
        """Decode one receipt (the flag must be 0 or 1)."""
        index, tx_id, sender = reader.varint(), reader.fixed(32), Address(reader.fixed(32))
        fee, revealed = reader.varint(), reader.u8()
        if revealed > 1:
            raise NonCanonicalInteger(f"receipt key-reveal flag must be 0 or 1, got {revealed}")
        return cls(index, tx_id, sender, fee, revealed == 1)

    @property
    def receipt_hash(self) -> bytes:
        """Tagged hash of the encoding."""
        return tagged_hash(TAG_RECEIPT, self.encode())


def encode_receipts(receipts: Sequence[Receipt]) -> bytes:
    """A block's receipts as one record: varint count, then each encoding (how they are stored)."""
    return encode_varint(len(receipts)) + b"".join(receipt.encode() for receipt in receipts)


def decode_receipts(data: bytes) -> tuple[Receipt, ...]:
    """Inverse of :func:`encode_receipts`; the count is bounded by the block limit and receipt
    ``i`` must have index ``i``."""
    reader = Reader(data)
    receipts = tuple(Receipt.read(reader) for _ in range(reader.count(MAX_BLOCK_TRANSACTIONS)))
    reader.finish()
    for position, receipt in enumerate(receipts):
        if receipt.index != position:
            raise DecodeError(f"receipt {position} carries index {receipt.index}")
    return receipts


def receipts_root(receipts: tuple[Receipt, ...]) -> bytes:
    """Merkle root of the receipts' hashes."""
    return merkle_root([receipt.receipt_hash for receipt in receipts])


@dataclass(frozen=True)
class BlockOutcome:
    """The result of executing a block."""

    post_accounts: Mapping[Address, Account]
    """Post-state of every account the block touched."""
    receipts: tuple[Receipt, ...]
    """One per transaction, in order."""
    receipts_root: bytes
    """Root of the receipts."""


def touched_addresses(block: Block) -> list[Address]:
    """Every account the block reads or writes, in first-touch order (what a witness must cover)."""
    seen: dict[Address, None] = {}
    for tx in block.transactions:
        seen.setdefault(tx.sender)
        seen.setdefault(tx.recipient)
    for payout in block.coinbase.payouts:
        seen.setdefault(payout.recipient)
    return list(seen)


def resolve_keys(
    transactions: tuple[Transaction, ...], read: Callable[[Address], Account]
) -> list[HybridPublicKey]:
    """The keys each transaction must be verified with (step 1)."""
    revealed: dict[Address, HybridPublicKey] = {}
    keys = []
    for index, tx in enumerate(transactions):
        public = tx.public_keys or revealed.get(tx.sender) or read(tx.sender).public_keys
        if public is None:
            raise MissingPublicKey(
                f"transaction {index} ({tx.tx_id.hex()[:16]}): sender {tx.sender} has not "
                "revealed its public keys and the transaction does not carry them"
            )
        if public.address != tx.sender:
            raise KeysMismatch(
                f"transaction {index}: public keys belong to {public.address}, not {tx.sender}"
            )
        revealed.setdefault(tx.sender, public)
        keys.append(public)
    return keys


def _credit(account: Account, amount: int, what: str) -> Account:
    balance = account.balance + amount
    if balance > MAX_BALANCE:
        raise BalanceOverflow(f"{what} would overflow a balance")
    return Account(balance, account.nonce, account.public_keys)


def _verify_txs(chunk: Sequence[tuple[HybridPublicKey, Transaction]]) -> list[bool]:
    """Signature verdicts of a chunk (signing hashes computed on the worker thread too)."""
    return [is_valid(key, tx.signing_hash, tx.signature) for key, tx in chunk]


def _check_verdicts(verdicts: list[bool], txs: tuple[Transaction, ...]) -> None:
    for index, ok in enumerate(verdicts):
        if not ok:
            raise BadSignature(
                f"transaction {index} ({txs[index].tx_id.hex()[:16]}): bad signature"
            )


def _apply(
    read: Callable[[Address], Account], block: Block, keys: list[HybridPublicKey]
) -> BlockOutcome:
    """Steps 3 to 5: apply transactions and payouts in order (signatures are checked apart)."""
    txs = block.transactions
    accounts: dict[Address, Account] = {}  # every account read is written back below
    receipts = []
    for index, tx in enumerate(txs):
        sender = accounts.get(tx.sender) or read(tx.sender)
        if tx.nonce != sender.nonce:
            raise BadNonce(f"transaction {index}: nonce {tx.nonce}, account expects {sender.nonce}")
        cost = tx.amount + tx.fee
        if cost > sender.balance:
            raise InsufficientBalance(
                f"transaction {index}: {tx.sender} has {sender.balance} Shor, needs {cost}"
            )
        reveals = sender.public_keys is None
        accounts[tx.sender] = Account(
            sender.balance - cost, sender.nonce + 1, sender.public_keys or keys[index]
        )
        recipient = accounts.get(tx.recipient) or read(tx.recipient)
        if recipient.balance + tx.amount > MAX_BALANCE:
            raise BalanceOverflow(f"transaction {index} would overflow a balance")
        accounts[tx.recipient] = Account(
            recipient.balance + tx.amount, recipient.nonce, recipient.public_keys
        )
        receipts.append(Receipt(index, tx.tx_id, tx.sender, tx.fee, reveals))
    fees = sum(tx.fee for tx in txs)
    payouts = block.coinbase.payouts
    if not payouts or payouts[-1].amount != fees:
        raise BadFeePayout(f"the last coinbase payout must be the {fees} Shor of fees")
    for payout in payouts:
        current = accounts.get(payout.recipient) or read(payout.recipient)
        accounts[payout.recipient] = _credit(current, payout.amount, "coinbase")
    receipt_tuple = tuple(receipts)
    return BlockOutcome(accounts, receipt_tuple, receipts_root(receipt_tuple))


def execute_block(
    read: Callable[[Address], Account],
    block: Block,
    executor: ThreadPoolExecutor | None = None,
    workers: int | None = None,
    then: Callable[[BlockOutcome], None] | None = None,
) -> BlockOutcome:
    """Execute ``block`` on the pre-state given by ``read`` (absent accounts read as empty).

    With an ``executor``, signatures are verified on its threads *while* the transactions are
    applied (and while ``then`` — e.g. the state-tree update — runs); the verdicts are joined before
    returning. A bad signature is reported in preference to any other error of the same block.
    """
    txs = block.transactions
    keys = resolve_keys(txs, read)
    if executor is None:
        items = [(key, tx.signing_hash, tx.signature) for key, tx in zip(keys, txs, strict=True)]
        _check_verdicts(verify_many(items, workers=workers), txs)
        outcome = _apply(read, block, keys)
        if then is not None:
            then(outcome)
        return outcome
    pending = start_verifying(_verify_txs, list(zip(keys, txs, strict=True)), executor, workers)
    try:
        outcome = _apply(read, block, keys)
        if then is not None:
            then(outcome)
    except InvalidExecution:
        _check_verdicts(pending(), txs)
        raise
    _check_verdicts(pending(), txs)
    return outcome


def empty_reader(address: Address) -> Account:
    """A pre-state in which every account is empty."""
    return EMPTY_ACCOUNT
