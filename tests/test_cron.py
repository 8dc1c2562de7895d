"""Cron: many calls due at one height run in canonical order, bounded per block, the rest carried
over; every effect is state under the root, and stateless re-execution agrees."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qoin.actors import NAMES_ADDRESS, builtin_actors
from qoin.actors.names import FEE_PER_BLOCK, MIN_TERM, record_key
from qoin.chain.block import Block, Coinbase, Payout
from qoin.execution import cron
from qoin.execution.abi import encode_args
from qoin.execution.account import AccountLeaf, state_key, storage_key
from qoin.execution.receipt import CallStatus
from qoin.execution.transition import execute_block, new_machine, touched_keys
from qoin.execution.vm import CallFailed
from qoin.execution.witness import execute_stateless, make_witness, root_after
from qoin.state.nodestore import MemoryNodeStore
from qoin.state.smt import SparseMerkleTree
from tests.chainutil import test_genesis
from tests.keys import keypair_for

OWNER = keypair_for(index=2).address
MINER = keypair_for(index=5).address
START = 10
ENTRIES = 2 * cron.MAX_CRON_CALLS + 37


def empty_block(height: int) -> Block:
    """A block at ``height`` with no transactions (its cron step still runs)."""
    header = replace(test_genesis().header, height=height)
    return Block(header, (), Coinbase((Payout(MINER, 50), Payout(MINER, 0))), ())


def registered_state() -> dict[bytes, bytes]:
    """A state in which ENTRIES names were registered at height START for MIN_TERM blocks: as
    many cron entries due at height START + MIN_TERM."""
    state = {state_key(OWNER): AccountLeaf(10**12).encode()}
    machine = new_machine(state.get, empty_block(START))
    for index in range(ENTRIES):
        result = machine.call(
            caller=OWNER,
            origin=OWNER,
            to=NAMES_ADDRESS,
            value=FEE_PER_BLOCK * MIN_TERM,
            method="register",
            args=encode_args([f"name-{index}", bytes(32), MIN_TERM]),
            gas=10**6,
            depth=1,
        )
        assert result.succeeded, result.reason
    state.update(machine.state.changes())
    return state


def test_many_entries_due_at_one_height_run_in_order_over_several_blocks() -> None:
    state = registered_state()
    due = START + MIN_TERM
    ran: list[bytes] = []
    per_block = []
    for height in range(START + 1, due + 4):
        outcome = execute_block(state.get, empty_block(height))
        state.update(outcome.changes)
        cron_receipts = outcome.receipts  # no transactions: every receipt is a cron call's
        assert all(r.status is CallStatus.SUCCESS for r in cron_receipts)
        assert all(r.sender == cron.CRON_ADDRESS and r.fee == 0 for r in cron_receipts)
        ran.extend(r.tx_id for r in cron_receipts)
        per_block.append(len(cron_receipts))
    # nothing before the due height, then the bound per block, the rest carried over, then done
    assert per_block == [0] * (MIN_TERM - 1) + [
        cron.MAX_CRON_CALLS,
        cron.MAX_CRON_CALLS,
        ENTRIES - 2 * cron.MAX_CRON_CALLS,
        0,
    ]
    assert ran == [cron.entry_id(due, seq) for seq in range(ENTRIES)]  # canonical order
    # every expired name's record is gone (the empty value), each entry emptied
    for index in range(ENTRIES):
        assert state[storage_key(NAMES_ADDRESS, record_key(f"name-{index}"))] == b""
        assert (
            state[
                storage_key(
                    cron.CRON_ADDRESS, b"entry" + due.to_bytes(8, "big") + index.to_bytes(4, "big")
                )
            ]
            == b""
        )


def test_carried_over_entries_run_before_later_ones() -> None:
    """Entries left over from a cut-short height run first in the next block, before that
    block's own height's entries."""
    state = registered_state()
    due = START + MIN_TERM
    # one more entry, due one height later
    machine = new_machine(state.get, empty_block(START + 1))
    result = machine.call(
        caller=OWNER,
        origin=OWNER,
        to=NAMES_ADDRESS,
        value=FEE_PER_BLOCK * MIN_TERM,
        method="register",
        args=encode_args(["late", bytes(32), MIN_TERM]),
        gas=10**6,
        depth=1,
    )
    assert result.succeeded
    state.update(machine.state.changes())
    ids: list[bytes] = []
    for height in range(due, due + 3):
        outcome = execute_block(state.get, empty_block(height))
        state.update(outcome.changes)
        ids.extend(r.tx_id for r in outcome.receipts)
    expected = [cron.entry_id(due, seq) for seq in range(ENTRIES)] + [cron.entry_id(due + 1, 0)]
    assert ids == expected


def test_scheduling_rules() -> None:
    machine = new_machine({}.get, empty_block(7))
    with pytest.raises(CallFailed, match="heights 8 to"):
        cron.schedule(machine, NAMES_ADDRESS, 7, "expire", encode_args(["x"]))
    with pytest.raises(CallFailed, match="heights 8 to"):
        cron.schedule(machine, NAMES_ADDRESS, 7 + cron.MAX_HORIZON + 1, "expire", b"\x00")
    cron.schedule(machine, NAMES_ADDRESS, 8, "expire", encode_args(["x"]))
    # a contract cannot schedule: only built-in actors
    assert NAMES_ADDRESS in builtin_actors()


def test_cron_state_is_under_the_root_and_stateless_agrees() -> None:
    """The cron step's reads and writes are part of the trace like any step's, so a witness built
    from them re-executes the block to the same root."""

    state = registered_state()
    tree = SparseMerkleTree(MemoryNodeStore())
    tree.update(state, 1)
    root = tree.root
    block = empty_block(START + MIN_TERM)
    outcome = execute_block(tree.get, block)
    assert outcome.trace.steps[0].post  # the cron step changed state
    witness = make_witness(tree, root, touched_keys(tree.get, block))
    post_root, receipts_root = execute_stateless(root, block, witness)
    assert post_root == root_after(tree, root, outcome.changes)
    assert receipts_root == outcome.receipts_root


def test_a_cron_entry_the_state_lost_gets_a_clear_receipt() -> None:
    """Defensive: an entry counted but emptied (cannot happen in a state cron wrote) is reported,
    not a crash."""
    state: dict[bytes, bytes] = {}
    machine = new_machine(state.get, empty_block(3))
    cron.schedule(machine, NAMES_ADDRESS, 4, "expire", encode_args(["gone"]))
    state.update(machine.state.changes())
    entry = storage_key(cron.CRON_ADDRESS, b"entry" + (4).to_bytes(8, "big") + bytes(4))
    state[entry] = b""
    machine = new_machine(state.get, empty_block(4))
    receipts = cron.run_due(machine, 0)
    assert [(r.status, r.reason) for r in receipts] == [(CallStatus.FAILED, "no entry")]
