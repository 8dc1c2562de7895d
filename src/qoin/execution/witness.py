"""Execution witnesses and stateless re-execution.

A witness for a block is a Merkle proof, against the *parent's* state root, of every state key the
block's execution reads (inclusion for keys that exist, exclusion for new ones): account leaves,
keys leaves, contract code, contract and actor storage, the cron queue. Which keys those are depends
on the execution itself, so the execution client that builds a witness executes the block to learn
them (:func:`~qoin.execution.transition.touched_keys`)::

    witness = count varint (<= MAX_WITNESS_KEYS), then (key 32 bytes, proof) in first-read order

``execute_stateless(parent_root, block, witness)`` verifies every proof, executes the block on the
proven values with the same :func:`~qoin.execution.transition.execute_block` as the stateful path,
applies the changes to a :class:`~qoin.state.partial.PartialTree` and returns the post-state root
and the receipts root. It needs no database, so the consensus client can run it. A key the witness
does not prove makes the witness invalid (:class:`InvalidWitness`), never the block.

Leaves are never deleted: a key is written only when its value changes, and an absent account that
receives nothing stays absent (a zero-amount payout does not create it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from qoin.chain.block import Block
from qoin.encoding.codec import Reader, Writer
from qoin.errors import QoinError
from qoin.execution.transition import (
    BlockOutcome,
    InvalidExecution,
    Platform,
    execute_block,
)
from qoin.state.partial import PartialTree, WitnessIncomplete
from qoin.state.smt import KEY_SIZE, Proof, SparseMerkleTree

MAX_WITNESS_KEYS = 1 << 18
"""Keys one witness may prove (a block's gas limit bounds what it can read far below this)."""


class InvalidWitness(InvalidExecution):
    """A witness that does not prove the block's pre-state."""


@dataclass(frozen=True)
class Witness:
    """Pre-state proofs of every state key a block reads."""

    proofs: tuple[tuple[bytes, Proof], ...]
    """(state key, proof against the parent state root), in first-read order."""

    def encode(self) -> bytes:
        """Canonical encoding."""
        writer = Writer().varint(len(self.proofs))
        for key, proof in self.proofs:
            writer.fixed(key, KEY_SIZE).raw(proof.encode())
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Witness:
        """Decode, bounding the number of entries before reading them."""
        reader = Reader(data)
        proofs = tuple(
            (reader.fixed(KEY_SIZE), Proof.read(reader))
            for _ in range(reader.count(MAX_WITNESS_KEYS))
        )
        reader.finish()
        return cls(proofs)

    def proofs_by_key(self) -> dict[bytes, Proof]:
        """Every proof, under the key it proves."""
        return dict(self.proofs)


def make_witness(tree: SparseMerkleTree, parent_root: bytes, keys: Sequence[bytes]) -> Witness:
    """The witness proving ``keys`` against ``parent_root`` (which ``tree`` must retain)."""
    return Witness(tuple((key, tree.prove_at(parent_root, key)) for key in keys))


def execute_stateless(
    parent_root: bytes,
    block: Block,
    witness: Witness,
    executor: ThreadPoolExecutor | None = None,
    platform: Platform | None = None,
) -> tuple[bytes, bytes]:
    """Re-execute ``block`` from ``witness`` alone; return (post-state root, receipts root)."""
    try:
        tree = PartialTree.from_proofs(parent_root, witness.proofs_by_key())
    except QoinError as exc:  # ProofError: the reason is in the message
        raise InvalidWitness(f"witness does not prove the parent state: {exc}") from exc

    def read(key: bytes) -> bytes | None:
        try:
            return tree.value(key)
        except WitnessIncomplete as exc:
            raise InvalidWitness(str(exc)) from None

    def update(outcome: BlockOutcome) -> None:
        try:
            for key, value in outcome.changes.items():
                tree.set(key, value)
        except WitnessIncomplete as exc:
            raise InvalidWitness(str(exc)) from None

    outcome = execute_block(read, block, executor=executor, then=update, platform=platform)
    return tree.root(), outcome.receipts_root


def execute_on_tree(
    tree: SparseMerkleTree,
    block: Block,
    version: int,
    executor: ThreadPoolExecutor | None = None,
    then: Callable[[bytes, BlockOutcome], None] | None = None,
    read_cache: Mapping[bytes, bytes | None] | None = None,
) -> tuple[bytes, BlockOutcome]:
    """The stateful path: execute ``block`` on the tree's current root and store the result as
    ``version``; return the new root and the outcome. ``then(root, outcome)`` runs while the
    signatures are still being verified (e.g. the caller's own writes, in the same transaction).
    ``read_cache`` may hold values known at the tree's current root (it is only read)."""
    known = read_cache or {}
    absent = object()

    def read(key: bytes) -> bytes | None:
        hit = known.get(key, absent)
        if hit is not absent:
            return hit  # type: ignore[return-value]
        return tree.get(key)

    roots: list[bytes] = []

    def update(done: BlockOutcome) -> None:
        roots.append(tree.update(done.changes, version))
        if then is not None:
            then(roots[0], done)

    outcome = execute_block(read, block, executor=executor, then=update)
    return roots[0], outcome


def root_after(tree: SparseMerkleTree, root: bytes, changes: Mapping[bytes, bytes]) -> bytes:
    """The root ``changes`` would give on top of ``root`` (retained by ``tree``), computed on the
    proven paths alone: nothing is written (building a payload)."""
    partial = PartialTree.from_proofs(root, {key: tree.prove_at(root, key) for key in changes})
    for key, value in changes.items():
        partial.set(key, value)
    return partial.root()
