"""Call transactions in blocks: gas and fees, refunds, atomic frames, the per-transaction module
load charge, block-level rules (intrinsic gas, balance, fee payout, block gas limit) and the
mempool's view of calls."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import FEE_PER_BLOCK, MIN_TERM
from qoin.chain.block import Block, Coinbase, Payout, transactions_root
from qoin.chain.transaction import CallTransaction
from qoin.chain.validation import BlockGasLimitExceeded, validate_body
from qoin.execution import gas as costs
from qoin.execution.account import Account, contract_address, storage_key
from qoin.execution.mempool import GasLimitRefused, Mempool
from qoin.execution.receipt import CallStatus
from qoin.execution.transition import (
    BadFeePayout,
    InsufficientBalance,
    IntrinsicGasTooLow,
    execute_block,
)
from tests.blocktools import CHAIN, built_block, call_tx, deploy_tx, example
from tests.chainutil import test_genesis
from tests.keys import keypair_for
from tests.statetools import leaves, post_accounts

ALICE, BOB, MINER = keypair_for(index=2), keypair_for(index=3), keypair_for(index=5)
COUNTER_CODE = example("counter.wasm")
COUNTER = contract_address(ALICE.address, 0)


def deployed_state() -> dict[bytes, bytes]:
    """Alice and Bob funded, Alice's counter deployed (Alice's nonce is then 1)."""
    state = leaves({ALICE.address: Account(10**9), BOB.address: Account(10**9)})
    block = built_block(state.get, [deploy_tx(ALICE, 0, COUNTER_CODE)], MINER.address)
    outcome = execute_block(state.get, block)
    assert outcome.receipts[0].succeeded, outcome.receipts[0].reason
    state.update(outcome.changes)
    return state


def test_fee_is_gas_used_times_price_and_the_rest_is_refunded() -> None:
    state = deployed_state()
    tx = call_tx(BOB, 0, COUNTER, "increment", gas=500_000, fee_per_gas=3)
    block = built_block(state.get, [tx], MINER.address, height=2)
    outcome = execute_block(state.get, block)
    receipt = outcome.receipts[0]
    assert receipt.status is CallStatus.SUCCESS
    assert receipt.fee == receipt.gas_used * 3 and outcome.fees == receipt.fee
    assert block.coinbase.payouts[-1].amount == receipt.fee
    bob = post_accounts({BOB.address: Account(10**9)}, outcome)[BOB.address]
    assert bob.balance == 10**9 - receipt.fee  # only the gas used was paid
    expected = costs.call_intrinsic_gas(len(tx.data)) + costs.CODE_LOAD_BYTE_GAS * len(COUNTER_CODE)
    assert receipt.gas_used > expected  # plus the contract's own instructions and host calls
    assert outcome.changes[storage_key(COUNTER, b"count")] == (1).to_bytes(8, "big")


def test_a_failed_call_is_included_charged_and_undone() -> None:
    state = deployed_state()
    txs = [
        call_tx(BOB, 0, COUNTER, "increment", value=500),  # the counter accepts value
        call_tx(BOB, 1, COUNTER, "nope"),  # no such method: FAILED
        call_tx(BOB, 2, COUNTER, "increment", gas=21_000 + 16 * 20 + 100),  # OUT_OF_GAS
    ]
    block = built_block(state.get, txs, MINER.address, height=2)
    outcome = execute_block(state.get, block)
    statuses = [r.status for r in outcome.receipts]
    assert statuses == [CallStatus.SUCCESS, CallStatus.FAILED, CallStatus.OUT_OF_GAS]
    assert "no method" in outcome.receipts[1].reason
    assert outcome.receipts[2].gas_used == txs[2].gas_limit  # all of it
    assert all(r.fee == r.gas_used for r in outcome.receipts)  # fee per gas 1
    assert [r.events != () for r in outcome.receipts] == [True, False, False]
    # one increment stands; the value moved with the successful call only
    assert outcome.changes[storage_key(COUNTER, b"count")] == (1).to_bytes(8, "big")
    accounts = post_accounts({BOB.address: Account(10**9)}, outcome, COUNTER)
    assert accounts[COUNTER].balance == 500
    assert accounts[BOB.address].balance == 10**9 - 500 - sum(r.fee for r in outcome.receipts)


def test_the_module_load_charge_is_paid_once_per_transaction() -> None:
    state = deployed_state()
    one = built_block(state.get, [call_tx(BOB, 0, COUNTER, "get")], MINER.address, height=2)
    two = built_block(
        state.get,
        [call_tx(BOB, 0, COUNTER, "get"), call_tx(BOB, 1, COUNTER, "get")],
        MINER.address,
        height=2,
    )
    first = execute_block(state.get, one).receipts[0].gas_used
    both = [r.gas_used for r in execute_block(state.get, two).receipts]
    assert both == [first, first]  # each transaction pays to load the module
    assert first > costs.CODE_LOAD_BYTE_GAS * len(COUNTER_CODE)


def test_block_invalidating_rules_of_calls() -> None:
    state = deployed_state()
    low = call_tx(BOB, 0, COUNTER, "increment", gas=21_000)  # below its intrinsic gas
    with pytest.raises(IntrinsicGasTooLow):
        execute_block(state.get, _block([low], 0))
    greedy = call_tx(BOB, 0, COUNTER, "increment", gas=10**6, fee_per_gas=10**4)
    with pytest.raises(InsufficientBalance):  # cannot pay gas_limit x fee_per_gas
        execute_block(state.get, _block([greedy], 0))
    fine = call_tx(BOB, 0, COUNTER, "increment")
    with pytest.raises(BadFeePayout):  # the declared fees are not the fees charged
        execute_block(state.get, _block([fine], fine.max_fee))


def _block(txs: list[CallTransaction], fees: int) -> Block:
    """A block at height 2 of ``txs`` declaring ``fees`` (execution alone: no roots needed)."""
    header = replace(test_genesis().header, height=2)
    payouts = (Payout(MINER.address, 77), Payout(MINER.address, fees))
    return Block(header, (), Coinbase(payouts), tuple(txs))


def test_the_block_gas_limit_bounds_what_transactions_reserve() -> None:
    genesis = replace(test_genesis(), block_gas_limit=100_000)
    txs = (call_tx(BOB, 0, COUNTER, "get", gas=60_000), call_tx(BOB, 1, COUNTER, "get", gas=60_000))
    coinbase = Coinbase((Payout(MINER.address, 0),))
    header = replace(genesis.header, transactions_root=transactions_root(coinbase, txs))
    block = Block(header, (), coinbase, txs)
    with pytest.raises(BlockGasLimitExceeded, match="reserve 120000 gas"):
        validate_body(genesis, None, genesis.header, block, 0)  # type: ignore[arg-type]


def test_names_register_through_a_transaction() -> None:
    state = deployed_state()
    tx = call_tx(
        BOB,
        0,
        NAMES_ADDRESS,
        "register",
        ("bob", bytes(32), MIN_TERM),
        value=FEE_PER_BLOCK * MIN_TERM + 7,
    )
    outcome = execute_block(state.get, built_block(state.get, [tx], MINER.address, height=2))
    receipt = outcome.receipts[0]
    assert receipt.succeeded, receipt.reason
    accounts = post_accounts({BOB.address: Account(10**9)}, outcome, NAMES_ADDRESS)
    assert accounts[NAMES_ADDRESS].balance == FEE_PER_BLOCK * MIN_TERM  # the excess came back
    assert accounts[BOB.address].balance == 10**9 - FEE_PER_BLOCK * MIN_TERM - receipt.fee


def test_mempool_orders_by_fee_per_gas_and_refuses_what_no_block_can_hold() -> None:
    pool = Mempool(CHAIN, lambda address: Account(10**12), block_gas_limit=1_000_000)
    cheap = call_tx(ALICE, 0, COUNTER, "get", gas=100_000, fee_per_gas=1)
    dear = call_tx(BOB, 0, COUNTER, "get", gas=100_000, fee_per_gas=5)
    pool.add(cheap)
    pool.add(dear)
    assert pool.select(10, 10**7) == [dear, cheap]
    assert pool.select(10, 10**7, max_gas=150_000) == [dear]  # the next one no longer fits
    with pytest.raises(GasLimitRefused, match="exceeds the block gas limit"):
        pool.add(call_tx(ALICE, 1, COUNTER, "get", gas=2_000_000))
    with pytest.raises(GasLimitRefused, match="intrinsic gas"):
        pool.add(call_tx(ALICE, 1, COUNTER, "get", gas=21_000))
