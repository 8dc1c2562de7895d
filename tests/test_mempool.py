"""Mempool: entry validation, nonce ordering, fee priority, replacement, bounds, chain events."""

from __future__ import annotations

from contextlib import suppress
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.chain.transaction import Transaction, sign_transfer
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.account import EMPTY_ACCOUNT, Account
from qoin.execution.mempool import (
    AlreadyKnown,
    CostTooHigh,
    InsufficientFunds,
    InvalidTransactionSignature,
    KeysNotRevealed,
    Mempool,
    MempoolError,
    NonceTooHigh,
    NonceTooLow,
    Refusal,
    TransactionTooLarge,
    Underpriced,
    WrongChainId,
)
from qoin.execution.transition import MAX_BALANCE
from tests.keys import keypair_for

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


def refused(pool: Mempool, t: Transaction) -> MempoolError:
    """The error ``pool`` refuses ``t`` with (the test fails if it is admitted)."""
    with pytest.raises(MempoolError) as caught:
        pool.add(t)
    return caught.value


def test_refusals_say_whether_intrinsic_or_stateful(state: dict[Address, Account]) -> None:
    state[CAROL.address] = Account(1_000)  # funded, keys not revealed
    pool = pool_for(state, max_count=2)
    pending = tx(ALICE, 0, fee=100)
    pool.add(pending)
    forged = Transaction(**{**tx(ALICE, 1).__dict__, "amount": 2})
    # Alice's keys carried by Bob's transaction: they do not hash to the sender.
    foreign_keys = Transaction(**{**tx(BOB, 0).__dict__, "public_keys": ALICE.public})
    intrinsic = {
        "wrong chain": (tx(ALICE, 1, chain=1), WrongChainId),
        "cost past the largest balance": (tx(ALICE, 1, amount=MAX_BALANCE), CostTooHigh),
        "bad signature": (forged, InvalidTransactionSignature),
        "keys of another address": (foreign_keys, InvalidTransactionSignature),
    }
    stateful = {
        "nonce too high": (tx(ALICE, 500), NonceTooHigh),
        "funds": (tx(ALICE, 1, amount=990), InsufficientFunds),
        "keys not revealed yet": (tx(CAROL, 0, reveal=False), KeysNotRevealed),
        "replacement underpriced": (tx(ALICE, 0, fee=105), Underpriced),
    }
    for name, (t, kind) in intrinsic.items():
        error = refused(pool, t)
        assert type(error) is kind and error.refusal is Refusal.INTRINSIC, name
    for name, (t, kind) in stateful.items():
        error = refused(pool, t)
        assert type(error) is kind and error.refusal is Refusal.STATEFUL, name
    known = refused(pool, pending)
    assert isinstance(known, AlreadyKnown) and known.refusal is None
    pool.add(tx(BOB, 0, fee=50, reveal=False))
    full = refused(pool, tx(BOB, 1, fee=1, reveal=False))  # a full pool, a lower fee rate
    assert isinstance(full, Underpriced) and full.refusal is Refusal.STATEFUL
    state[ALICE.address] = Account(1_000, 1, ALICE.public)
    used = refused(pool, tx(ALICE, 0, fee=999))
    assert isinstance(used, NonceTooLow) and used.refusal is Refusal.STATEFUL
    # No transaction can reach the size bound through decoding; the class says it all.
    assert TransactionTooLarge.refusal is Refusal.INTRINSIC
    assert len(pool) == 2


def test_before_insert_runs_last_and_a_failure_changes_nothing(
    state: dict[Address, Account],
) -> None:
    """The journal's hook: called only for a transaction that is admitted, before any change
    (a replacement or an eviction included), and its failure leaves the pool as it was."""
    pool = pool_for(state, max_count=2)
    seen: list[Transaction] = []

    def fail(t: Transaction) -> None:
        seen.append(t)
        raise OSError("disk full")

    cheap, bob0 = tx(ALICE, 0, fee=1), tx(BOB, 0, fee=20, reveal=False)
    pool.add(cheap, before_insert=seen.append)
    pool.add(bob0, before_insert=seen.append)
    assert seen == [cheap, bob0]
    with pytest.raises(NonceTooHigh):
        pool.add(tx(ALICE, 500), before_insert=fail)
    assert seen == [cheap, bob0]  # not called for a refusal
    before = (pool.added_since(0, 10, 10**6), pool.total_bytes)
    for admissible in (tx(BOB, 1, fee=500, reveal=False), tx(ALICE, 0, fee=20)):  # evicts, replaces
        with pytest.raises(OSError):
            pool.add(admissible, before_insert=fail)
        assert seen[-1] == admissible
        assert (pool.added_since(0, 10, 10**6), pool.total_bytes) == before
        assert pool.pending_of(ALICE.address) == [cheap] and pool.pending_of(BOB.address) == [bob0]
    pool.add(tx(BOB, 1, fee=500, reveal=False))
    assert cheap.tx_id not in pool and len(pool) == 2


def test_eviction_takes_several_tails_of_one_sender(state: dict[Address, Account]) -> None:
    """A large newcomer to a byte-bounded pool evicts as many of the cheapest tails as it needs,
    from the last nonce down, never leaving a gap."""
    a = [tx(ALICE, n, fee=1, reveal=n == 0) for n in range(3)]
    rich = sign_transfer(
        BOB, chain_id=CHAIN, nonce=0, recipient=CAROL.address, amount=1, fee=900,
        payload=bytes(4096), reveal_keys=False,
    )  # fmt: skip
    sizes = [len(t.encode()) for t in a]
    # Room for all of Alice's, but for the newcomer only once two of them are gone.
    pool = pool_for(state, max_bytes=max(sum(sizes), sizes[0] + len(rich.encode())))
    assert sizes[0] + sizes[1] + len(rich.encode()) > pool.max_bytes
    for t in a:
        pool.add(t)
    pool.add(rich)
    assert rich.tx_id in pool
    assert pool.pending_of(ALICE.address) == a[:1]
    assert pool.total_bytes <= pool.max_bytes


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


# -- sequence numbers and added_since ------------------------------------------------------------


def test_added_since_pages_in_admission_order(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    a0, b0, a1 = tx(ALICE, 0), tx(BOB, 0, reveal=False), tx(ALICE, 1, reveal=False)
    for t in (a0, b0, a1):
        pool.add(t)
    assert pool.top_sequence == 3
    assert pool.added_since(0, 2, 10**6) == (2, [a0, b0])
    assert pool.added_since(2, 2, 10**6) == (3, [a1])
    assert pool.added_since(3, 2, 10**6) == (3, [])
    assert pool.added_since(0, 10, 1) == (1, [a0])  # the byte bound, but never nothing
    assert pool.added_since(0, 10, len(a0.encode()) + len(b0.encode())) == (2, [a0, b0])
    with pytest.raises(ValueError):
        pool.added_since(0, 0, 10**6)


def test_added_since_skips_what_left(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    a0, a1, b0 = tx(ALICE, 0), tx(ALICE, 1, reveal=False), tx(BOB, 0, reveal=False)
    for t in (a0, a1, b0):
        pool.add(t)
    state[ALICE.address] = Account(1_000 - 11, 1, ALICE.public)
    pool.on_block([a0])
    assert pool.added_since(0, 10, 10**6) == (3, [a1, b0])
    state[BOB.address] = Account(1_000, 1, BOB.public)
    pool.on_block([tx(BOB, 0, fee=99, reveal=False)])  # another b0 was mined: ours is stale
    state[ALICE.address] = Account(0, 1, ALICE.public)
    pool.revalidate()  # Alice cannot pay a1 any more
    assert len(pool) == 0
    assert pool.added_since(1, 10, 10**6) == (3, [])  # the cursor jumps past what was removed


def test_replacement_and_reorg_get_new_numbers(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    old, b0 = tx(ALICE, 0, fee=10), tx(BOB, 0, reveal=False)
    pool.add(old)
    pool.add(b0)
    new = tx(ALICE, 0, fee=20)
    pool.add(new)
    assert pool.added_since(0, 10, 10**6) == (3, [b0, new])
    assert pool.added_since(2, 10, 10**6) == (3, [new])
    state[BOB.address] = Account(1_000 - 11, 1, BOB.public)
    pool.on_block([b0])
    state[BOB.address] = Account(1_000, 0, BOB.public)
    pool.on_reorg(disconnected=[b0], connected=[])
    assert pool.added_since(3, 10, 10**6) == (4, [b0])  # back: announced again


def test_eviction_leaves_the_sequence(state: dict[Address, Account]) -> None:
    pool = pool_for(state, max_count=1)
    cheap, rich = tx(ALICE, 0, fee=1), tx(BOB, 0, fee=500, reveal=False)
    pool.add(cheap)
    pool.add(rich)
    assert pool.added_since(0, 10, 10**6) == (2, [rich])


def test_a_cursor_from_a_previous_process_starts_over(state: dict[Address, Account]) -> None:
    pool = pool_for(state)
    a0 = tx(ALICE, 0)
    pool.add(a0)
    assert pool.added_since(10_000, 10, 10**6) == (1, [a0])


def test_many_removals_keep_the_cursor_right(state: dict[Address, Account]) -> None:
    """Remove and re-admit one transaction many times (past the lazy compaction's threshold)."""
    pool = pool_for(state)
    a0, b0 = tx(ALICE, 0), tx(BOB, 0, reveal=False)
    pool.add(b0)
    pool.add(a0)
    cursor = 1  # b0 seen
    for round_ in range(1, 200):
        state[ALICE.address] = Account(1_000 - 11, 1, ALICE.public)
        pool.on_block([a0])
        state[ALICE.address] = Account(1_000)
        pool.on_reorg(disconnected=[a0], connected=[])
        if round_ % 50 == 0:
            cursor, seen = pool.added_since(cursor, 10, 10**6)
            assert (cursor, seen) == (pool.top_sequence, [a0])
    assert pool.top_sequence == 201
    assert pool.added_since(0, 10, 10**6) == (201, [b0, a0])
    assert pool.added_since(1, 1, 1) == (201, [a0])


SENDERS = (ALICE, BOB, keypair_for(index=6))
FEES = (10, 30)  # 30 replaces 10 (and pays a higher rate, so it can evict it too)


@cache
def variant(sender: int, nonce: int, fee: int) -> Transaction:
    """A pre-signed transfer (signing is the slow part): 50 Shor plus fee ``FEES[fee]``."""
    return tx(SENDERS[sender], nonce, fee=FEES[fee], amount=50)


_sender = st.integers(0, len(SENDERS) - 1)
_fee = st.integers(0, len(FEES) - 1)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _sender, st.integers(0, 3), _fee),
        st.tuples(st.just("block"), _sender, _fee),
        st.tuples(st.just("reorg")),
        st.tuples(st.just("poll"), st.integers(1, 3), st.booleans()),
    ),
    max_size=40,
)


class CursorFollower:
    """Applies random operations to a small pool and follows :meth:`Mempool.added_since` as the
    consensus client does, checking every answer against a model of what was admitted when."""

    def __init__(self) -> None:
        self.state = {k.address: Account(300) for k in SENDERS}
        self.pool = pool_for(self.state, max_count=6)
        self.blocks: list[tuple[Transaction, Account]] = []  # connected, with the pre-state
        self.admitted: dict[bytes, int] = {}  # pending id -> operation that admitted it
        self.received: dict[bytes, int] = {}  # pending id -> times handed out since admitted
        self.cursor = 0
        self.last_admission = 0

    def apply(self, step: int, op: tuple[Any, ...]) -> None:
        if op[0] == "add":
            with suppress(MempoolError):
                self.pool.add(variant(*op[1:]))
        elif op[0] == "block":
            self.connect(*op[1:])
        elif op[0] == "reorg" and self.blocks:
            included, before = self.blocks.pop()
            self.state[included.sender] = before
            self.pool.on_reorg(disconnected=[included], connected=[])
        elif op[0] == "poll":
            self.poll(op[1], 1 if op[2] else 10**6)
        self.observe(step)

    def connect(self, sender: int, fee: int) -> None:
        """A block with the sender's next transaction: the pending one or another variant."""
        before = self.state[SENDERS[sender].address]
        included = variant(sender, before.nonce, fee) if before.nonce <= 3 else None
        if included is None or included.amount + included.fee > before.balance:
            return
        after = Account(before.balance - included.amount - included.fee, before.nonce + 1)
        self.state[included.sender] = after
        self.blocks.append((included, before))
        self.pool.on_block([included])

    def pending(self) -> set[bytes]:
        return {t.tx_id for k in SENDERS for t in self.pool.pending_of(k.address)}

    def observe(self, step: int) -> None:
        now = self.pending()
        for gone in set(self.admitted) - now:
            del self.admitted[gone], self.received[gone]
        for new in now - set(self.admitted):
            self.admitted[new], self.received[new] = step, 0

    def poll(self, max_count: int, max_bytes: int) -> list[Transaction]:
        cursor, got = self.pool.added_since(self.cursor, max_count, max_bytes)
        assert cursor >= self.cursor and len(got) <= max_count
        if not got:
            assert cursor == self.pool.top_sequence
        for t in got:
            assert t.tx_id in self.admitted, "handed out a transaction no longer pending"
            self.received[t.tx_id] += 1
            assert self.received[t.tx_id] == 1, "handed out twice"
            assert self.admitted[t.tx_id] >= self.last_admission, "out of admission order"
            self.last_admission = self.admitted[t.tx_id]
        self.cursor = cursor
        return got

    def drain(self) -> None:
        for _ in range(len(self.admitted) + 1):
            if not self.poll(2, 10**6):
                break
        assert all(count == 1 for count in self.received.values()), "a pending one was missed"


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_following_the_cursor_yields_every_pending_tx_once_in_order(
    ops: list[tuple[Any, ...]],
) -> None:
    follower = CursorFollower()
    for step, op in enumerate(ops, start=1):
        follower.apply(step, op)
    follower.drain()
    assert follower.cursor == follower.pool.top_sequence
