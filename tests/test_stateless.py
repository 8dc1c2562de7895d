"""Stateless re-execution from a witness gives the stateful post-state root (random blocks)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.chain.block import Block, Coinbase, Payout
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.account import EMPTY_ACCOUNT, Account, AccountLeaf, account_writes
from qoin.execution.transition import InsufficientBalance
from qoin.execution.witness import (
    InvalidWitness,
    Witness,
    execute_on_tree,
    execute_stateless,
    make_witness,
)
from qoin.state.nodestore import MemoryNodeStore
from qoin.state.smt import SparseMerkleTree
from tests.chainutil import test_genesis
from tests.keys import keypair_for

CHAIN = test_genesis().chain_id
KEYS = [keypair_for(index=i) for i in range(10, 16)]
_SIGNED: dict[tuple[int, int, int, int, bool], Transaction] = {}


def signed(sender: HybridKeyPair, nonce: int, to: int, amount: int, reveal: bool) -> Transaction:
    """Transfers are cached by content: signing costs milliseconds."""
    key = (KEYS.index(sender), nonce, to, amount, reveal)
    if key not in _SIGNED:
        _SIGNED[key] = sign_transfer(
            sender,
            chain_id=CHAIN,
            nonce=nonce,
            recipient=KEYS[to].address,
            amount=amount,
            fee=1,
            reveal_keys=reveal,
        )
    return _SIGNED[key]


def fresh_tree(funded: list[int], revealed: set[int]) -> SparseMerkleTree:
    tree = SparseMerkleTree(MemoryNodeStore())
    # a few unrelated accounts so the tree has depth
    changes = {bytes([i]) * 32: AccountLeaf(i).encode() for i in range(1, 40)}
    for i in funded:
        keys = KEYS[i].public if i in revealed else None
        changes.update(account_writes(KEYS[i].address, EMPTY_ACCOUNT, Account(1_000, 0, keys)))
    tree.update(changes, 1)
    return tree


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[int], set[int], list[Transaction], int]:
    funded = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True))
    revealed = set(draw(st.lists(st.sampled_from(funded), unique=True)))
    nonces = dict.fromkeys(funded, 0)
    txs = []
    for _ in range(draw(st.integers(0, 5))):
        sender = draw(st.sampled_from(funded))
        to = draw(st.integers(0, 5))  # may be a fresh account
        reveal = sender not in revealed and nonces[sender] == 0
        txs.append(signed(KEYS[sender], nonces[sender], to, draw(st.integers(0, 50)), reveal))
        nonces[sender] += 1
    miner = draw(st.integers(0, 5))
    return funded, revealed, txs, miner


def block_for(txs: list[Transaction], miner: int, reward: int = 77) -> Block:
    payouts = (Payout(KEYS[miner].address, reward), Payout(KEYS[miner].address, len(txs)))
    return Block(test_genesis().header, (), Coinbase(payouts), tuple(txs))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_stateless_matches_stateful(
    case: tuple[list[int], set[int], list[Transaction], int],
) -> None:
    funded, revealed, txs, miner = case
    tree = fresh_tree(funded, revealed)
    parent_root = tree.root
    block = block_for(txs, miner)
    witness = Witness.decode(make_witness(tree, parent_root, block).encode())
    post_root, outcome = execute_on_tree(tree, block, 2)
    assert execute_stateless(parent_root, block, witness) == (post_root, outcome.receipts_root)


def test_bad_witnesses_rejected() -> None:
    tree = fresh_tree([0, 1], {0})
    parent_root = tree.root
    block = block_for([signed(KEYS[0], 0, 2, 10, False)], 1)
    witness = make_witness(tree, parent_root, block)
    # a proof against another root
    with pytest.raises(InvalidWitness, match="does not prove"):
        execute_stateless(bytes(32), block, witness)
    # a proof whose value was altered (a richer sender)
    address, proof = witness.accounts[0]
    richer = replace(proof, value=AccountLeaf(10**9, 0, True).encode())
    forged = Witness(((address, richer), *witness.accounts[1:]), witness.keys)
    with pytest.raises(InvalidWitness, match="does not prove"):
        execute_stateless(parent_root, block, forged)
    # a keys leaf swapped for another key's (the proof no longer holds)
    sender, keys_proof = witness.keys[0]
    other_keys = replace(keys_proof, value=KEYS[1].public.encode())
    with pytest.raises(InvalidWitness, match="does not prove"):
        execute_stateless(parent_root, block, replace(witness, keys=((sender, other_keys),)))
    # an account left out; the revealed sender's keys left out
    with pytest.raises(InvalidWitness, match="no proof"):
        execute_stateless(parent_root, block, Witness(witness.accounts[:-1], witness.keys))
    with pytest.raises(InvalidWitness, match="no proof"):
        execute_stateless(parent_root, block, Witness(witness.accounts, ()))


def test_stateless_rejects_what_stateful_rejects() -> None:
    tree = fresh_tree([0], {0})
    block = block_for([signed(KEYS[0], 0, 2, 5_000, False)], 1)  # more than the balance
    witness = make_witness(tree, tree.root, block)
    with pytest.raises(InsufficientBalance):
        execute_stateless(tree.root, block, witness)
    with pytest.raises(InsufficientBalance):
        execute_on_tree(tree, block, 2)


def test_witness_without_a_first_spenders_keys_leaf_is_an_invalid_witness() -> None:
    """The first spend inserts the keys leaf, so the witness must prove its absence; leaving that
    proof out is a bad witness (InvalidWitness), not an unexpected error."""
    tree = fresh_tree([0, 1], set())  # account 0 has not revealed its keys
    parent_root = tree.root
    block = block_for([signed(KEYS[0], 0, 2, 10, True)], 1)
    witness = make_witness(tree, parent_root, block)
    execute_stateless(parent_root, block, witness)  # complete: fine
    with pytest.raises(InvalidWitness, match="no proof"):
        execute_stateless(parent_root, block, Witness(witness.accounts, ()))
