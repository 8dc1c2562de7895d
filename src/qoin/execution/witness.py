"""Execution witnesses and stateless re-execution.

A witness for a block is the pre-state of every account the block touches, each with a Merkle proof
against the *parent's* state root (inclusion for existing accounts, exclusion for new ones), and the
keys leaf of every sender (inclusion once revealed, exclusion before: the first spend inserts it) and
of every other touched account that has revealed its keys::

    witness = count varint (<= MAX_WITNESS_ACCOUNTS), then (address 32 bytes, account-leaf proof)
              count varint (<= MAX_WITNESS_ACCOUNTS), then (address 32 bytes, keys-leaf proof)

``execute_stateless(parent_root, block, witness)`` verifies every proof, executes the block on the
proven values with the same :func:`~qoin.execution.transition.execute_block` as the stateful path,
applies the changes to a :class:`~qoin.state.partial.PartialTree` and returns the post-state root and
the receipts root. It needs no database, so the consensus client can run it.

Accounts are never deleted: an account is written only when its post-state differs from its
pre-state, and an absent account that receives nothing stays absent (a zero-amount payout does not
create it).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from qoin.chain.block import Block
from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.encoding.codec import Reader, Writer
from qoin.errors import QoinError
from qoin.execution.account import (
    Account,
    AccountLeaf,
    AccountLeavesInvalid,
    account_writes,
    keys_key,
    read_account,
    state_key,
)
from qoin.execution.transition import (
    BlockOutcome,
    InvalidExecution,
    execute_block,
    touched_addresses,
)
from qoin.state.partial import PartialTree, WitnessIncomplete
from qoin.state.smt import Proof, SparseMerkleTree

MAX_WITNESS_ACCOUNTS = 4 * 8192 + 8


class InvalidWitness(InvalidExecution):
    """A witness that does not prove the block's pre-state."""


@dataclass(frozen=True)
class Witness:
    """Pre-state proofs of the accounts a block touches and of its senders' keys."""

    accounts: tuple[tuple[Address, Proof], ...]
    """(address, proof of its account leaf against the parent state root), in first-touch order."""
    keys: tuple[tuple[Address, Proof], ...] = ()
    """(sender, proof of its keys leaf against the parent state root), in first-send order."""

    def encode(self) -> bytes:
        """Canonical encoding."""
        writer = Writer()
        for entries in (self.accounts, self.keys):
            writer.varint(len(entries))
            for address, proof in entries:
                writer.fixed(address.raw, ADDRESS_SIZE).raw(proof.encode())
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Witness:
        """Decode, bounding each number of entries before reading them."""
        reader = Reader(data)
        accounts, keys = (
            tuple(
                (Address(reader.fixed(ADDRESS_SIZE)), Proof.read(reader))
                for _ in range(reader.count(MAX_WITNESS_ACCOUNTS))
            )
            for _ in range(2)
        )
        reader.finish()
        return cls(accounts, keys)

    def proofs_by_key(self) -> dict[bytes, Proof]:
        """Every proof, under the tree key it proves."""
        proofs = {state_key(address): proof for address, proof in self.accounts}
        proofs.update((keys_key(address), proof) for address, proof in self.keys)
        return proofs


def state_changes(read: Callable[[Address], Account], outcome: BlockOutcome) -> dict[bytes, bytes]:
    """Tree writes of an outcome: the changed account leaves and the newly revealed keys leaves."""
    changes: dict[bytes, bytes] = {}
    for address, account in outcome.post_accounts.items():
        changes.update(account_writes(address, read(address), account))
    return changes


def make_witness(tree: SparseMerkleTree, parent_root: bytes, block: Block) -> Witness:
    """The witness of ``block`` from a tree that retains ``parent_root``: every touched account
    leaf, and the keys leaf of every sender and of every touched account that has revealed keys
    (an account is read whole, so a revealed recipient's keys come along)."""
    touched = touched_addresses(block)
    senders = {tx.sender for tx in block.transactions}

    def revealed(address: Address) -> bool:
        value = tree.get_at(parent_root, state_key(address))
        return value is not None and AccountLeaf.decode(value).revealed

    with_keys = [address for address in touched if address in senders or revealed(address)]
    return Witness(
        tuple((address, tree.prove_at(parent_root, state_key(address))) for address in touched),
        tuple((address, tree.prove_at(parent_root, keys_key(address))) for address in with_keys),
    )


def execute_stateless(
    parent_root: bytes,
    block: Block,
    witness: Witness,
    executor: ThreadPoolExecutor | None = None,
) -> tuple[bytes, bytes]:
    """Re-execute ``block`` from ``witness`` alone; return (post-state root, receipts root)."""
    try:
        tree = PartialTree.from_proofs(parent_root, witness.proofs_by_key())
    except QoinError as exc:  # ProofError: the reason is in the message
        raise InvalidWitness(f"witness does not prove the parent state: {exc}") from exc
    cache: dict[Address, Account] = {}

    def read(address: Address) -> Account:
        if address not in cache:
            try:
                cache[address] = read_account(tree.value, address)
            except (WitnessIncomplete, AccountLeavesInvalid) as exc:
                raise InvalidWitness(str(exc)) from None
        return cache[address]

    def update(outcome: BlockOutcome) -> None:
        try:
            for key, value in state_changes(read, outcome).items():
                tree.set(key, value)
        except WitnessIncomplete as exc:  # e.g. a first spend whose keys leaf is not proven
            raise InvalidWitness(str(exc)) from None

    outcome = execute_block(read, block, executor=executor, then=update)
    return tree.root(), outcome.receipts_root


def execute_on_tree(
    tree: SparseMerkleTree,
    block: Block,
    version: int,
    executor: ThreadPoolExecutor | None = None,
    then: Callable[[bytes, BlockOutcome], None] | None = None,
    read_cache: dict[Address, Account] | None = None,
) -> tuple[bytes, BlockOutcome]:
    """The stateful path: execute ``block`` on the tree's current root and write it as
    ``version``; return the new root and the outcome. ``then(root, outcome)`` runs while the
    signatures are still being verified (e.g. the caller's own writes, in the same transaction).
    ``read_cache`` may hold accounts already known at the tree's current root (it is only read)."""
    known = read_cache or {}
    cache: dict[Address, Account] = {}

    def read(address: Address) -> Account:
        if address not in cache:
            hit = known.get(address)
            cache[address] = hit if hit is not None else read_account(tree.get, address)
        return cache[address]

    roots: list[bytes] = []

    def update(done: BlockOutcome) -> None:
        roots.append(tree.update(state_changes(read, done), version))
        if then is not None:
            then(roots[0], done)

    outcome = execute_block(read, block, executor=executor, then=update)
    return roots[0], outcome
