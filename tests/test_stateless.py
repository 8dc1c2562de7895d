"""Stateless re-execution from a witness gives the stateful post-state root (random blocks)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import FEE_PER_BLOCK, MIN_TERM
from qoin.chain.block import Block, Coinbase, Payout
from qoin.chain.transaction import AnyTransaction, CallTransaction, Transaction, sign_transfer
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.account import (
    EMPTY_ACCOUNT,
    Account,
    AccountLeaf,
    account_writes,
    contract_address,
    keys_key,
    read_account,
    state_key,
    storage_key,
)
from qoin.execution.receipt import CallStatus
from qoin.execution.transition import InsufficientBalance, touched_keys
from qoin.execution.witness import (
    InvalidWitness,
    Witness,
    execute_on_tree,
    execute_stateless,
    make_witness,
)
from qoin.state.nodestore import MemoryNodeStore
from qoin.state.smt import SparseMerkleTree
from tests.blocktools import built_block, call_tx, deploy_tx, example, transfer_tx
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


def witness_for(tree: SparseMerkleTree, root: bytes, block: Block) -> Witness:
    """What an execution client serves: proofs of every key executing ``block`` reads."""
    return make_witness(tree, root, touched_keys(lambda key: tree.get_at(root, key), block))


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
    witness = Witness.decode(witness_for(tree, parent_root, block).encode())
    post_root, outcome = execute_on_tree(tree, block, 2)
    assert execute_stateless(parent_root, block, witness) == (post_root, outcome.receipts_root)


def test_bad_witnesses_rejected() -> None:
    tree = fresh_tree([0, 1], {0})
    parent_root = tree.root
    block = block_for([signed(KEYS[0], 0, 2, 10, False)], 1)
    witness = witness_for(tree, parent_root, block)
    proofs = witness.proofs_by_key()
    sender_key, sender_keys_key = state_key(KEYS[0].address), keys_key(KEYS[0].address)

    def altered(key: bytes, value: bytes) -> Witness:
        return Witness(
            tuple((k, replace(p, value=value) if k == key else p) for k, p in witness.proofs)
        )

    def without(key: bytes) -> Witness:
        return Witness(tuple((k, p) for k, p in witness.proofs if k != key))

    assert sender_key in proofs and sender_keys_key in proofs
    # a proof against another root
    with pytest.raises(InvalidWitness, match="does not prove"):
        execute_stateless(bytes(32), block, witness)
    # a proof whose value was altered (a richer sender)
    with pytest.raises(InvalidWitness, match="does not prove"):
        execute_stateless(
            parent_root, block, altered(sender_key, AccountLeaf(10**9, 0, True).encode())
        )
    # a keys leaf swapped for another key's (the proof no longer holds)
    with pytest.raises(InvalidWitness, match="does not prove"):
        execute_stateless(parent_root, block, altered(sender_keys_key, KEYS[1].public.encode()))
    # the recipient left out; the revealed sender's keys left out
    with pytest.raises(InvalidWitness, match="no proof"):
        execute_stateless(parent_root, block, without(state_key(KEYS[2].address)))
    with pytest.raises(InvalidWitness, match="no proof"):
        execute_stateless(parent_root, block, without(sender_keys_key))


def test_stateless_rejects_what_stateful_rejects() -> None:
    tree = fresh_tree([0], {0})
    block = block_for([signed(KEYS[0], 0, 2, 5_000, False)], 1)  # more than the balance
    witness = witness_for(tree, tree.root, block)
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
    witness = witness_for(tree, parent_root, block)
    execute_stateless(parent_root, block, witness)  # complete: fine
    without_keys = tuple((k, p) for k, p in witness.proofs if k != keys_key(KEYS[0].address))
    with pytest.raises(InvalidWitness, match="no proof"):
        execute_stateless(parent_root, block, Witness(without_keys))


# --- blocks mixing transfers, deployments, contract calls and actor calls ------------------------

COUNTER = example("counter.wasm")
DEPLOYER = KEYS[0]
FIRST_COUNTER = contract_address(DEPLOYER.address, 0)


def platform_tree() -> SparseMerkleTree:
    """Funded accounts (0 and 1 revealed) and a counter contract deployed by account 0."""
    tree = SparseMerkleTree(MemoryNodeStore())
    changes = {bytes([i]) * 32: AccountLeaf(i).encode() for i in range(1, 40)}
    for i in range(len(KEYS)):
        changes.update(account_writes(KEYS[i].address, EMPTY_ACCOUNT, Account(10**9)))
    tree.update(changes, 1)
    setup = built_block(tree.get, [deploy_tx(DEPLOYER, 0, COUNTER)], KEYS[5].address)
    _, outcome = execute_on_tree(tree, setup, 2)
    assert outcome.receipts[0].succeeded, outcome.receipts[0].reason
    return tree


KINDS = ("transfer", "increment", "get", "deploy", "register", "bad-method", "low-gas", "no-code")


@st.composite
def mixed_blocks(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """(kind, sender, argument) steps of a block."""
    return draw(
        st.lists(
            st.tuples(st.sampled_from(KINDS), st.integers(0, 5), st.integers(0, 3)),
            max_size=7,
        )
    )


def mixed_transactions(steps: list[tuple[str, int, int]]) -> list[AnyTransaction]:
    nonces = {i: (1 if i == 0 else 0) for i in range(len(KEYS))}
    deployed = [FIRST_COUNTER]
    txs: list[AnyTransaction] = []
    for position, (kind, sender_index, argument) in enumerate(steps):
        sender = KEYS[sender_index]
        nonce = nonces[sender_index]
        reveal = nonce == 0 and sender_index != 0
        counter = deployed[argument % len(deployed)]
        if kind == "transfer":
            tx = transfer_tx(sender, nonce, KEYS[argument].address, 10 + argument, reveal)
        elif kind == "increment":
            tx = call_tx(sender, nonce, counter, "increment", reveal=reveal)
        elif kind == "get":
            tx = call_tx(sender, nonce, counter, "get", reveal=reveal)
        elif kind == "deploy":
            tx = deploy_tx(sender, nonce, COUNTER, reveal=reveal)
            deployed.append(contract_address(sender.address, nonce))
        elif kind == "register":
            name = f"n{position}-{argument}"
            tx = call_tx(
                sender,
                nonce,
                NAMES_ADDRESS,
                "register",
                (name, bytes(32), MIN_TERM),
                value=FEE_PER_BLOCK * MIN_TERM + argument,
                reveal=reveal,
            )
        elif kind == "bad-method":
            tx = call_tx(sender, nonce, counter, "nope", reveal=reveal)
        elif kind == "low-gas":
            tx = call_tx(sender, nonce, counter, "increment", gas=21_000 + 40 * 16, reveal=reveal)
        else:  # a call to an account that holds no contract
            tx = call_tx(sender, nonce, KEYS[argument].address, "increment", reveal=reveal)
        txs.append(tx)
        nonces[sender_index] = nonce + 1
    return txs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_blocks(), st.integers(0, 5))
def test_stateless_matches_stateful_with_contracts_and_actors(
    steps: list[tuple[str, int, int]], miner: int
) -> None:
    tree = platform_tree()
    parent_root = tree.root
    block = built_block(tree.get, mixed_transactions(steps), KEYS[miner].address, height=2)
    witness = Witness.decode(witness_for(tree, parent_root, block).encode())
    holders = (
        [k.address for k in KEYS]
        + [FIRST_COUNTER, NAMES_ADDRESS]
        + [contract_address(tx.sender, tx.nonce) for tx in block.transactions if _is_deploy(tx)]
    )
    before = sum(read_account(tree.get, address).balance for address in holders)
    post_root, outcome = execute_on_tree(tree, block, 3)
    assert execute_stateless(parent_root, block, witness) == (post_root, outcome.receipts_root)
    # Money is conserved: fees went to the miner, values and name fees to their callees; only the
    # block reward is new.
    after = sum(read_account(tree.get, address).balance for address in holders)
    assert after - before == block.coinbase.payouts[0].amount
    statuses = [receipt.status for receipt in outcome.receipts[: len(steps)]]
    for (kind, _, _), status in zip(steps, statuses, strict=True):
        if kind in ("bad-method", "no-code"):
            assert status is CallStatus.FAILED
        elif kind == "low-gas":
            assert status is CallStatus.OUT_OF_GAS
        elif kind in ("transfer", "increment", "get", "deploy", "register"):
            assert status is CallStatus.SUCCESS


def _is_deploy(tx: AnyTransaction) -> bool:
    return isinstance(tx, CallTransaction) and tx.is_deploy


def test_a_witness_missing_a_storage_key_is_invalid() -> None:
    tree = platform_tree()
    root = tree.root
    block = built_block(
        tree.get, [call_tx(KEYS[1], 0, FIRST_COUNTER, "increment")], KEYS[5].address, height=2
    )
    witness = witness_for(tree, root, block)
    count_key = storage_key(FIRST_COUNTER, b"count")
    assert count_key in witness.proofs_by_key()
    without = Witness(tuple((k, p) for k, p in witness.proofs if k != count_key))
    with pytest.raises(InvalidWitness, match="no proof"):
        execute_stateless(root, block, without)
