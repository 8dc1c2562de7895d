"""The execution database: payload verdicts, head moves with state rollback, proofs, persistence."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from qoin.chain.block import Block, Coinbase, Payout, siblings_root, transactions_root
from qoin.chain.genesis import Allocation, Genesis
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.crypto.hashing import HASH_SIZE
from qoin.execution.account import Account, AccountLeaf, keys_key, state_key
from qoin.execution.state import STATE_FILE, ExecutionState, ExecutionStateError, PayloadStatus
from qoin.pow.proof import placeholder_proof
from qoin.state.smt import verify_proof
from tests.chainutil import test_genesis
from tests.keys import keypair_for

ALICE, BOB, MINER = keypair_for(index=2), keypair_for(index=3), keypair_for(index=4)


def genesis() -> Genesis:
    return replace(test_genesis(), allocation=(Allocation(ALICE.address, GENESIS_ALLOCATION),))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ExecutionState]:
    opened = ExecutionState.open(tmp_path, genesis(), retain=8)
    yield opened
    opened.close()


def child(
    state: ExecutionState, parent: Block, txs: tuple[Transaction, ...] = (), salt: int = 0
) -> Block:
    """A block on ``parent`` with the right roots (no PoW: the execution layer does not check it)."""
    coinbase = Coinbase((Payout(MINER.address, 10), Payout(MINER.address, sum(t.fee for t in txs))))
    header = replace(
        parent.header,
        height=parent.header.height + 1,
        parent_hash=parent.block_hash,
        timestamp_ms=parent.header.timestamp_ms + 1000 + salt,
        transactions_root=transactions_root(coinbase, txs),
        siblings_root=siblings_root(()),
        coinbase=MINER.address,
        miner=MINER.public,
        pow_proof=placeholder_proof(MINER.suite),
        pow_nonce=bytes(HASH_SIZE),
    )
    return state.fill_roots(Block(header, (), coinbase, txs))


def pay(nonce: int, amount: int, reveal: bool | None = None) -> Transaction:
    return sign_transfer(
        ALICE,
        chain_id=genesis().chain_id,
        nonce=nonce,
        recipient=BOB.address,
        amount=amount,
        fee=1,
        reveal_keys=nonce == 0 if reveal is None else reveal,
    )


def test_chain_of_payloads_and_proofs(state: ExecutionState) -> None:
    g = genesis().block
    b1 = child(state, g, (pay(0, 100),))
    assert state.new_payload(b1).status is PayloadStatus.VALID
    b2 = child(state, b1, (pay(1, 50),))
    assert state.new_payload(b2).status is PayloadStatus.VALID
    assert state.head == b2.block_hash
    assert state.account(BOB.address) == Account(150)
    assert state.account(ALICE.address).nonce == 2
    assert state.account(BOB.address, b1.block_hash) == Account(100)
    root, proof = state.proof(BOB.address)
    leaf = verify_proof(root, state_key(BOB.address), proof)
    assert AccountLeaf.decode(leaf or b"") == AccountLeaf(150)
    root, keys_proof = state.proof(ALICE.address, keys=True)
    assert verify_proof(root, keys_key(ALICE.address), keys_proof) == ALICE.public.encode()
    assert state.transaction(b2.transactions[0].tx_id) is not None


def test_invalid_payloads_and_syncing(state: ExecutionState) -> None:
    g = genesis().block
    good = child(state, g, (pay(0, 100),))
    wrong_root = replace(good, header=replace(good.header, state_root=bytes(32)))
    verdict = state.new_payload(wrong_root)
    assert verdict.status is PayloadStatus.INVALID and "state root" in verdict.reason
    assert state.new_payload(wrong_root).status is PayloadStatus.INVALID  # never flips
    orphan = replace(good, header=replace(good.header, parent_hash=b"\x01" * 32))
    assert state.new_payload(orphan).status is PayloadStatus.SYNCING
    assert state.new_payload(good).status is PayloadStatus.VALID


def test_overspend_is_invalid(state: ExecutionState) -> None:
    g = genesis().block
    template = child(state, g)
    tx = pay(0, GENESIS_ALLOCATION)  # amount + fee exceeds the balance
    coinbase = Coinbase((Payout(MINER.address, 10), Payout(MINER.address, 1)))
    bad = replace(
        template,
        transactions=(tx,),
        coinbase=coinbase,
        header=replace(template.header, transactions_root=transactions_root(coinbase, (tx,))),
    )
    verdict = state.new_payload(bad)
    assert verdict.status is PayloadStatus.INVALID
    assert "InsufficientBalance" in verdict.reason
    assert state.head == g.block_hash


def test_side_branch_and_reorg(tmp_path: Path) -> None:
    state = ExecutionState.open(tmp_path, genesis(), retain=8)
    g = genesis().block
    a1 = child(state, g, (pay(0, 100),))
    assert state.new_payload(a1).status is PayloadStatus.VALID
    a2 = child(state, a1, (pay(1, 10),))
    assert state.new_payload(a2).status is PayloadStatus.VALID
    # a competing branch from genesis, validated statelessly, not applied
    # (built on a scratch database that follows the b branch, so their roots are right)
    scratch = ExecutionState.open(tmp_path / "scratch", genesis(), retain=8)
    branch = [g]
    for txs in ((pay(0, 7),), (), ()):
        block = child(scratch, branch[-1], txs, salt=1)
        assert scratch.new_payload(block).status is PayloadStatus.VALID
        branch.append(block)
    scratch.close()
    b1, b2, b3 = branch[1], branch[2], branch[3]
    assert state.new_payload(b1).status is PayloadStatus.VALID  # parent state retained: executed
    assert state.new_payload(b2).status is PayloadStatus.ACCEPTED  # executed when reached
    assert state.new_payload(b3).status is PayloadStatus.ACCEPTED
    assert state.head == a2.block_hash
    change = state.forkchoice_updated(b3.block_hash)
    assert [t.amount for t in change.disconnected] == [100, 10]
    assert [t.amount for t in change.connected] == [7]
    assert state.account(BOB.address) == Account(7)
    assert state.canonical_hash(2) == b2.block_hash
    assert state.transaction(a1.transactions[0].tx_id) is None
    state.close()
    reopened = ExecutionState.open(tmp_path, genesis(), retain=8)
    assert reopened.head == b3.block_hash
    assert reopened.account(BOB.address) == Account(7)
    # and back again
    reopened.forkchoice_updated(a2.block_hash)
    assert reopened.account(BOB.address) == Account(110)
    reopened.close()


def test_lock_and_network(tmp_path: Path) -> None:
    first = ExecutionState.open(tmp_path, genesis())
    with pytest.raises(ExecutionStateError, match="in use"):
        ExecutionState.open(tmp_path, genesis())
    first.close()
    with pytest.raises(ExecutionStateError, match="another network"):
        ExecutionState.open(tmp_path, test_genesis())


def test_accepted_block_that_fails_is_invalid_on_head_change(tmp_path: Path) -> None:
    state = ExecutionState.open(tmp_path, genesis(), retain=8)
    g = genesis().block
    a1 = child(state, g, (pay(0, 100),))
    assert state.new_payload(a1).status is PayloadStatus.VALID
    b1 = child(state, g, salt=1)
    assert state.new_payload(b1).status is PayloadStatus.VALID
    lying = replace(child(state, g, salt=2), header=replace(b1.header, timestamp_ms=1))
    lying_child = replace(
        lying,
        header=replace(lying.header, parent_hash=b1.block_hash, height=2, state_root=b"\x05" * 32),
    )
    assert state.new_payload(lying_child).status is PayloadStatus.ACCEPTED
    with pytest.raises(ExecutionStateError, match="state root"):
        state.forkchoice_updated(lying_child.block_hash)
    assert state.head == a1.block_hash
    assert state.account(BOB.address) == Account(100)
    assert state.new_payload(lying_child).status is PayloadStatus.INVALID
    state.close()


def test_head_moved_back_to_an_ancestor_then_extended(tmp_path: Path) -> None:
    """Regression: after a head move to an ancestor, the state is the head's, not the newest
    tree version's — also after a failed payload rolls back and after a restart."""
    state = ExecutionState.open(tmp_path, genesis(), retain=8)
    g = genesis().block
    a1 = child(state, g, (pay(0, 100),))
    assert state.new_payload(a1).status is PayloadStatus.VALID
    a2 = child(state, a1, (pay(1, 10),))
    assert state.new_payload(a2).status is PayloadStatus.VALID
    state.forkchoice_updated(a1.block_hash)
    assert state.account(BOB.address) == Account(100)
    sibling = child(state, a1, salt=5)
    broken = replace(sibling, header=replace(sibling.header, state_root=bytes(32)))
    assert state.new_payload(broken).status is PayloadStatus.INVALID  # rolls back
    b2 = child(state, a1, (pay(1, 1),), salt=7)
    assert state.new_payload(b2).status is PayloadStatus.VALID
    assert state.account(BOB.address) == Account(101)
    state.forkchoice_updated(a1.block_hash)
    state.close()
    reopened = ExecutionState.open(tmp_path, genesis(), retain=8)
    assert reopened.account(BOB.address) == Account(100)
    reopened.close()


def test_children_of_accepted_blocks_are_not_executed_on_claimed_roots(
    state: ExecutionState,
) -> None:
    g = genesis().block
    a1 = child(state, g, (pay(0, 100),))
    assert state.new_payload(a1).status is PayloadStatus.VALID
    b1 = child(state, g, salt=1)
    assert state.new_payload(b1).status is PayloadStatus.VALID
    # b2 claims genesis's state root; it is ACCEPTED (its parent's state is not materialised)
    fake = replace(
        b1,
        header=replace(
            b1.header,
            height=2,
            parent_hash=b1.block_hash,
            state_root=state.block_info(g.block_hash)[2],
        ),
    )  # type: ignore[index]
    assert state.new_payload(fake).status is PayloadStatus.ACCEPTED
    grandchild = replace(fake, header=replace(fake.header, height=3, parent_hash=fake.block_hash))
    assert state.new_payload(grandchild).status is PayloadStatus.ACCEPTED
    wrong_height = replace(fake, header=replace(fake.header, height=9, timestamp_ms=7))
    verdict = state.new_payload(wrong_height)
    assert verdict.status is PayloadStatus.INVALID and "height" in verdict.reason


def test_a_data_directory_of_another_layout_is_refused_clearly(tmp_path: Path) -> None:
    ExecutionState.open(tmp_path, genesis()).close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    db.execute("DELETE FROM meta WHERE key = 'format'")  # what an older Qoin left behind
    db.commit()
    db.close()
    with pytest.raises(ExecutionStateError, match="older Qoin"):
        ExecutionState.open(tmp_path, genesis())
