"""Account state sampling: checking an execution client's verdict on a block from a few accounts.

After an execution client has called a block VALID, the consensus client draws ``k`` of the accounts
the block touches with its own CSPRNG, asks for each one's proofs against the parent's state root
(*pre*) and the block's state root (*post*) — account leaf and keys leaf — and re-executes, for each
sampled account alone, every transaction and payout that touches it:

* as a sender: keys (carried by the transaction, else revealed before), the hybrid signature, the
  nonce, the balance covering amount + fee, then the debit, nonce + 1 and the key reveal;
* as a recipient or payout recipient: the credit (no balance past 2^64 - 1).

The result must equal the proven post-state. Credits from other senders are taken as the block says;
whether *those* senders could pay is checked when they are sampled. The fee payout's total is checked
on every block (it needs no state). ``docs/spec/sampling.md`` gives the detection probability.

Everything here is pure; the engine calls and the fallback live in :mod:`qoin.consensus.judge`.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qoin.chain.block import Block
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridPublicKey, is_valid
from qoin.errors import QoinError
from qoin.execution.account import (
    Account,
    AccountLeavesInvalid,
    keys_key,
    read_account,
    state_key,
)
from qoin.execution.transition import MAX_BALANCE, touched_addresses
from qoin.state.smt import Proof, ProofError, verify_proof

DEFAULT_SAMPLES = 16
"""Accounts sampled per block unless configured otherwise (``--samples``)."""
MAX_SAMPLES = 1024
"""The most accounts a consensus client asks proofs for in one call."""


class SampleFailed(QoinError):
    """A sample does not confirm the execution client's verdict; the reason says how."""


class BadSampleProof(SampleFailed):
    """A proof does not verify against the root it must lead to."""


class SampleMismatch(SampleFailed):
    """Re-executing a sampled account gives another post-state than the one proven."""


class SampleRuleBroken(SampleFailed):
    """Re-executing a sampled account breaks a rule: the block cannot be valid."""


@dataclass(frozen=True)
class AccountProofs:
    """Proofs of one account's leaves before and after a block."""

    pre: Proof
    """Account leaf against the parent's state root."""
    post: Proof
    """Account leaf against the block's state root."""
    pre_keys: Proof
    """Keys leaf against the parent's state root."""
    post_keys: Proof
    """Keys leaf against the block's state root."""


def draw_sample(
    touched: Sequence[Address], k: int, rng: random.Random | None = None
) -> list[Address]:
    """``k`` distinct accounts of ``touched`` (all of them if there are fewer), drawn uniformly;
    by default with the operating system's CSPRNG (a seeded ``random.Random`` is for tests)."""
    chooser = rng or secrets.SystemRandom()
    return chooser.sample(list(touched), min(k, len(touched)))


def proven_account(root: bytes, address: Address, leaf: Proof, keys: Proof, when: str) -> Account:
    """The account that two proofs show at ``root``; :class:`BadSampleProof` if they do not
    verify or do not fit together."""
    values: dict[bytes, bytes | None] = {}
    for key, proof in ((state_key(address), leaf), (keys_key(address), keys)):
        try:
            values[key] = verify_proof(root, key, proof)
        except ProofError as exc:
            raise BadSampleProof(f"{when} proof of {address} does not verify: {exc}") from None
    try:
        account = read_account(values.__getitem__, address)
    except AccountLeavesInvalid as exc:
        raise BadSampleProof(f"{when} state of {address}: {exc}") from None
    if account.public_keys is None and values[keys_key(address)] is not None:
        raise BadSampleProof(f"{when} state of {address}: a keys leaf, but keys not revealed")
    return account


def check_fee_payout(block: Block) -> None:
    """The last coinbase payout must be the block's fees (a stateless rule)."""
    fees = sum(tx.fee for tx in block.transactions)
    payouts = block.coinbase.payouts
    if not payouts or payouts[-1].amount != fees:
        raise SampleRuleBroken(f"the last coinbase payout must be the {fees} Shor of fees")


def replay_account(address: Address, pre: Account, block: Block) -> Account:
    """The post-state of ``address`` from its pre-state and the transactions and payouts that
    touch it, in block order; :class:`SampleRuleBroken` if one of its own transactions is
    invalid. Mirrors :func:`qoin.execution.transition.execute_block` for one account."""
    account = pre
    for index, tx in enumerate(block.transactions):
        if tx.sender == address:
            account = _spend(address, account, index, block)
        if tx.recipient == address:
            account = _credit(account, tx.amount, f"transaction {index}")
    for payout in block.coinbase.payouts:
        if payout.recipient == address:
            account = _credit(account, payout.amount, "a coinbase payout")
    return account


def _spend(address: Address, account: Account, index: int, block: Block) -> Account:
    tx = block.transactions[index]
    keys: HybridPublicKey | None = tx.public_keys or account.public_keys
    if keys is None:
        raise SampleRuleBroken(f"transaction {index}: {address} has no revealed keys")
    if keys.address != address:
        raise SampleRuleBroken(f"transaction {index}: its keys belong to {keys.address}")
    if not is_valid(keys, tx.signing_hash, tx.signature):
        raise SampleRuleBroken(f"transaction {index}: bad signature")
    if tx.nonce != account.nonce:
        raise SampleRuleBroken(f"transaction {index}: nonce {tx.nonce}, expected {account.nonce}")
    cost = tx.amount + tx.fee
    if cost > account.balance:
        raise SampleRuleBroken(
            f"transaction {index}: {address} has {account.balance} Shor, needs {cost}"
        )
    return Account(account.balance - cost, account.nonce + 1, account.public_keys or keys)


def _credit(account: Account, amount: int, what: str) -> Account:
    if account.balance + amount > MAX_BALANCE:
        raise SampleRuleBroken(f"{what} would overflow a balance")
    return Account(account.balance + amount, account.nonce, account.public_keys)


def check_sample(
    parent_root: bytes,
    block: Block,
    sample: Sequence[Address],
    proofs: Mapping[Address, AccountProofs],
) -> None:
    """Check every sampled account; raise :class:`SampleFailed` (the subclass says why) at the
    first one that does not confirm the block. ``parent_root`` is the parent's state root."""
    check_fee_payout(block)
    touched = set(touched_addresses(block))
    for address in sample:
        if address not in touched:
            raise SampleFailed(f"{address} is not touched by the block")
        found = proofs.get(address)
        if found is None:
            raise BadSampleProof(f"no proofs for sampled account {address}")
        pre = proven_account(parent_root, address, found.pre, found.pre_keys, "pre-state")
        post = proven_account(
            block.header.state_root, address, found.post, found.post_keys, "post-state"
        )
        expected = replay_account(address, pre, block)
        if expected != post:
            raise SampleMismatch(
                f"{address}: re-execution gives balance {expected.balance}, nonce "
                f"{expected.nonce}, keys {'revealed' if expected.public_keys else 'not revealed'}"
                f"; the proven post-state has balance {post.balance}, nonce {post.nonce}, keys "
                f"{'revealed' if post.public_keys else 'not revealed'}"
            )


def detection_probability(n: int, m: int, k: int) -> float:
    """The probability that a sample of ``k`` distinct accounts, drawn uniformly without
    replacement from the ``n`` a block touches, includes at least one of the ``m`` whose proven
    post-state is wrong: ``1 - C(n - m, k) / C(n, k)`` (hypergeometric, exact), with ``k`` capped
    at ``n`` (every account is checked). A wrong account is always caught once sampled, so this is
    the chance that :func:`check_sample` fails (docs/spec/sampling.md)."""
    if n < 0 or not 0 <= m <= n or k < 0:
        raise ValueError(f"need 0 <= m <= n and k >= 0, got n={n}, m={m}, k={k}")
    drawn = min(k, n)
    return 1 - math.comb(n - m, drawn) / math.comb(n, drawn)
