"""Mempool: entry validation, nonce ordering, fee priority, replacement, bounds, chain events."""

from __future__ import annotations

import pytest

from qoin.chain.transaction import Transaction, sign_transfer
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.account import EMPTY_ACCOUNT, Account
from qoin.execution.mempool import (
    AlreadyKnown,
    InsufficientFunds,
    InvalidTransactionSignature,
    Mempool,
    NonceTooHigh,
    NonceTooLow,
    Underpriced,
    WrongChainId,
)
from tests.conftest import keypair_for

CHAIN = 77
ALICE, BOB, CAROL = keypair_for(index=2), keypair_for(index=3), keypair_for(index=4)


def tx(
    sender: HybridKeyPair,
    nonce: int,
    fee: int = 10,
    amount: int = 1,
    chain: int = CHAIN,
    reveal: bool = True,
) -> Transaction:
    return sign_transfer(
        sender,
        chain_id=chain,
        nonce=nonce,
        recipient=CAROL.address,
        amount=amount,
        fee=fee,
        reveal_keys=reveal,
    )


@pytest.fixture
def state() -> dict[Address, Account]:
    return {ALICE.address: Account(1_000), BOB.address: Account(1_000, 0, BOB.public)}


def pool_for(state: dict[Address, Account], **kw: int) -> Mempool:
    return Mempool(CHAIN, lambda a: state.get(a, EMPTY_ACCOUNT), **kw)


def test_entry_rules(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    first = tx(ALICE, 0)
    pool.add(first)
    with pytest.raises(AlreadyKnown):
        pool.add(first)
    with pytest.raises(WrongChainId):
        pool.add(tx(ALICE, 1, chain=1))
    with pytest.raises(NonceTooHigh):
        pool.add(tx(ALICE, 500))
    forged = Transaction(**{**tx(ALICE, 1).__dict__, "amount": 2})
    with pytest.raises(InvalidTransactionSignature):
        pool.add(forged)
    with pytest.raises(InsufficientFunds):
        pool.add(tx(ALICE, 1, amount=990))  # 11 already committed by nonce 0
    state[ALICE.address] = Account(1_000, 1, ALICE.public)
    with pytest.raises(NonceTooLow):
        pool.add(tx(ALICE, 0, fee=99))


def test_unrevealed_keys_may_come_from_pending(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    with pytest.raises(InvalidTransactionSignature, match="not revealed"):
        pool.add(tx(ALICE, 0, reveal=False))
    pool.add(tx(ALICE, 0))
    pool.add(tx(ALICE, 1, reveal=False))
    assert len(pool) == 2


def test_selection_by_fee_rate_in_nonce_order(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    a0, a1 = tx(ALICE, 0, fee=5), tx(ALICE, 1, fee=100)
    b0 = tx(BOB, 0, fee=50, reveal=False)
    for t in (a1, a0, b0):  # a gapped nonce waits for its predecessor
        pool.add(t) if t is not a1 else None
    pool.add(a1)
    chosen = pool.select(10, 10**6)
    assert chosen.index(a0) < chosen.index(a1)
    assert chosen[0] == b0  # highest rate among the senders' next transactions
    assert pool.select(1, 10**6) == [b0]


def test_gapped_nonce_not_selected(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    pool.add(tx(ALICE, 0))
    pool.add(tx(ALICE, 2, reveal=False))
    assert [t.nonce for t in pool.select(10, 10**6)] == [0]
    assert pool.next_nonce(ALICE.address) == 1


def test_replacement_needs_a_higher_fee(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    old = tx(ALICE, 0, fee=100)
    pool.add(old)
    with pytest.raises(Underpriced, match="at least 110"):
        pool.add(tx(ALICE, 0, fee=105))
    new = tx(ALICE, 0, fee=110)
    pool.add(new)
    assert old.tx_id not in pool and new.tx_id in pool
    assert len(pool) == 1


def test_bounded_with_eviction(state: dict[Address, Account]) -> None:
    pool = pool_for(state, max_count=2)
    cheap, mid = tx(ALICE, 0, fee=1), tx(BOB, 0, fee=20, reveal=False)
    pool.add(cheap)
    pool.add(mid)
    with pytest.raises(Underpriced):
        pool.add(tx(BOB, 1, fee=0, reveal=False))
    rich = tx(BOB, 1, fee=500, reveal=False)
    pool.add(rich)
    assert cheap.tx_id not in pool
    assert len(pool) == 2


def test_block_and_reorg_events(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    a0, a1 = tx(ALICE, 0), tx(ALICE, 1, reveal=False)
    pool.add(a0)
    pool.add(a1)
    # a block includes a0: the state moves on, a0 leaves, a1 stays
    state[ALICE.address] = Account(1_000 - 11, 1, ALICE.public)
    pool.on_block([a0])
    assert a0.tx_id not in pool and a1.tx_id in pool
    # the block is reorged out: state goes back, a0 returns
    state[ALICE.address] = Account(1_000)
    pool.on_reorg(disconnected=[a0], connected=[])
    assert a0.tx_id in pool and a1.tx_id in pool
    assert [t.nonce for t in pool.select(10, 10**6)] == [0, 1]


def test_funds_count_every_pending_nonce(state: dict[Address, Account]) -> None:
    """Submitting nonces from high to low must not commit more than the balance."""
    pool = pool_for(state)
    pool.add(tx(ALICE, 0, amount=400))
    pool.add(tx(ALICE, 2, amount=400, reveal=False))
    with pytest.raises(InsufficientFunds):
        pool.add(tx(ALICE, 1, amount=400, reveal=False))
    pool.add(tx(ALICE, 1, amount=100, reveal=False))
