"""The ``storage-market`` actor under random sequences of asks, bids, deals, valid and invalid proofs,
missed periods (heights advanced with the cron), takes, leaves, cancellations and withdrawals, with
its money invariants checked after every step.

Invariants:

* the actor holds exactly ``escrow + collateral + bonus + burned``, and the total Shor of every
  account is unchanged (checked by the harness after every call and every height);
* each client's deposits are, at every step, paid to providers, refunded, or held (in its open
  bids and deals): measured by balances and events, not by the actor's own bookkeeping;
* one payment per accepted proof: no (deal, shard, period) is paid twice;
* every ask's used bytes are exactly its shards' (held or left), never over its capacity, and its
  locked collateral exactly theirs;
* the totals equal the sums over the records, and each deal's escrow exactly covers its shards'
  unpaid periods.
"""

from __future__ import annotations

import random

from hypothesis import seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from qoin.actors.storage_market import Ask, Bid, Counters, Shard, ShardState, shard_price
from qoin.crypto.address import Address
from qoin.crypto.hybrid import sign
from qoin.execution.abi import Value, decode_value
from qoin.execution.receipt import CallStatus
from qoin.storage import merkle
from qoin.storage.market import acceptance_message, proof_item
from qoin.storage.params import DEVNET
from tests.actorchain import CHAIN_ID, FUNDS
from tests.framework import test_seed
from tests.test_storage_market import (
    CLIENT,
    COLLATERAL,
    GIB,
    KEM,
    NAMES_BY_TOPIC,
    OTHER,
    PRICE,
    PROVIDERS,
    Chain,
    File,
    make_file,
)

KEYS = PROVIDERS[:6]
CLIENTS = (CLIENT, OTHER)
P, W = DEVNET.period, DEVNET.window
ALLOWED = (CallStatus.SUCCESS, CallStatus.REVERTED)


class MarketModel(RuleBasedStateMachine):
    """Random walks over the market, with the invariants of the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = Chain.new([*CLIENTS, *(k.address for k in KEYS)])
        self.rng = random.Random(0)
        self.files: dict[int, File] = {}
        self.deposits = dict.fromkeys(CLIENTS, 0)
        self.price_paid = dict.fromkeys(CLIENTS, 0)
        self.bonus_returned = dict.fromkeys(CLIENTS, 0)
        self.client_of: dict[int, Address] = {}
        self.bonus: dict[tuple[int, int], int] = {}
        self.paid: set[tuple[int, int, int]] = set()
        self.seen = 0

    # -- helpers ---------------------------------------------------------------------------------

    def call(self, caller: Address, method: str, *args: Value, value: int = 0) -> Value | None:
        """Call; it must succeed or revert; its decoded return value, None for none, or the
        reason it reverted."""
        result = self.chain.call(caller, method, *args, value=value)
        assert result.status in ALLOWED, (method, result.status, result.reason)
        self.sync()
        if result.status is CallStatus.SUCCESS and result.return_data:
            return decode_value(result.return_data)
        return None if result.succeeded else result.reason

    def sync(self) -> None:
        """Follow the events since the last step."""
        for event in self.chain.events[self.seen :]:
            name = NAMES_BY_TOPIC[event.topics[0]]
            data = decode_value(event.data)
            assert isinstance(data, tuple)
            if name == "DealFormed":
                deal_id = data[0]
                assert isinstance(deal_id, int)
                self.client_of[deal_id] = Address(event.topics[1])
            elif name == "ShardRelisted":
                deal_id, shard, bonus = data[0], data[1], data[4]
                assert isinstance(deal_id, int) and isinstance(shard, int)
                assert isinstance(bonus, int)
                self.bonus[deal_id, shard] = bonus
            elif name == "ProofAccepted":
                deal_id, shard, period, paid = data
                assert isinstance(deal_id, int) and isinstance(shard, int)
                assert isinstance(period, int) and isinstance(paid, int)
                assert (deal_id, shard, period) not in self.paid, "a period paid twice"
                self.paid.add((deal_id, shard, period))
                bonus = self.bonus.pop((deal_id, shard), 0)
                self.price_paid[self.client_of[deal_id]] += paid - bonus
            elif name == "DealSettled":
                deal_id = data[0]
                assert isinstance(deal_id, int)
                returned = sum(v for (d, _), v in self.bonus.items() if d == deal_id)
                self.bonus = {key: v for key, v in self.bonus.items() if key[0] != deal_id}
                self.bonus_returned[self.client_of[deal_id]] += returned
        self.seen = len(self.chain.events)

    def last_bid(self) -> int:
        raw = self.chain.record(b"counters")
        return Counters.decode(raw).last_bid if raw else 0

    def bids(self) -> dict[int, Bid]:
        found = {}
        for bid_id in range(1, self.last_bid() + 1):
            raw = self.chain.record(b"B" + bid_id.to_bytes(8, "big"))
            if raw:
                found[bid_id] = Bid.decode(raw)
        return found

    def deal_ids(self) -> list[int]:
        return [d for d in range(1, self.last_bid() + 1) if self.chain.deal(d) is not None]

    def pick_deal(self, index: int) -> int | None:
        open_deals = self.deal_ids()
        return open_deals[index % len(open_deals)] if open_deals else None

    def proof(self, deal_id: int, shard: int, period: int, valid: bool) -> Value:
        beacon = self.chain.record(b"R" + period.to_bytes(8, "big"))
        file = self.files[deal_id]
        tree, data = file.trees[shard], file.shards[shard]
        if beacon is None:
            indices = [0] * DEVNET.samples
        else:
            seed_bytes = merkle.challenge_seed(beacon, deal_id, shard, period)
            indices = merkle.challenge_indices(seed_bytes, tree.leaf_count, DEVNET.samples)
        leaves, paths = merkle.build_proof(
            tree, indices, lambda c: data[slice(*tree.chunk_span(c))]
        )
        if not valid:
            leaves[-1] = bytes((leaves[-1][0] ^ 1,)) + leaves[-1][1:]
        return proof_item(deal_id, shard, leaves, paths)

    # -- rules -----------------------------------------------------------------------------------

    @initialize(file_seed=st.integers(0, 2**32 - 1), order=st.permutations(range(len(KEYS))))
    def setup(self, file_seed: int, order: list[int]) -> None:
        self.rng = random.Random(file_seed)
        for keys in KEYS:
            self.post(keys.address, GIB, PRICE, COLLATERAL, 10**9)
        bid_id = self.place(CLIENT, (3, 2), 2_000, 4, 0, 30)
        found = self.bids()[bid_id]
        self.form(bid_id, found, order, True)
        assert self.chain.deal(bid_id) is not None

    def post(
        self, provider: Address, capacity: int, price: int, collateral: int, value: int
    ) -> None:
        keys = next(k for k in KEYS if k.address == provider)
        self.call(
            provider,
            "ask",
            capacity,
            price,
            collateral,
            1,
            "127.0.0.1:1",
            KEM,
            keys.public.encode(),
            value=value,
        )

    @rule(
        who=st.integers(0, len(KEYS) - 1),
        capacity=st.sampled_from([0, 1_500, 5_000, GIB]),
        price=st.sampled_from([PRICE // 2, PRICE, 2 * PRICE]),
        collateral=st.sampled_from([0, COLLATERAL, 10**6 * COLLATERAL]),
        value=st.sampled_from([0, 10_000, 10**9]),
    )
    def ask(self, who: int, capacity: int, price: int, collateral: int, value: int) -> None:
        self.post(KEYS[who].address, capacity, price, collateral, value)

    @rule(who=st.integers(0, len(KEYS) - 1), amount=st.sampled_from([0, 1, 5_000, 10**9]))
    def withdraw(self, who: int, amount: int) -> None:
        self.call(KEYS[who].address, "withdraw", amount)

    @rule(who=st.integers(0, len(KEYS) - 1), roll=st.integers(0, 2))
    def cancel_ask(self, who: int, roll: int) -> None:
        if roll == 0:
            self.call(KEYS[who].address, "cancel_ask")

    @precondition(lambda self: len(self.bids()) < 3)
    @rule(
        who=st.sampled_from(CLIENTS),
        shape=st.sampled_from([(2, 1), (3, 1), (3, 2)]),
        size=st.integers(1, 3_000),
        duration=st.integers(1, 4),
        extra=st.integers(0, 1_000),
        ahead=st.integers(1, 60),
    )
    def bid(
        self, who: Address, shape: tuple[int, int], size: int, duration: int, extra: int, ahead: int
    ) -> None:
        self.place(who, shape, size, duration, extra, ahead)

    def place(
        self, who: Address, shape: tuple[int, int], size: int, duration: int, extra: int, ahead: int
    ) -> int:
        n, k = shape
        file = make_file(self.rng, n=n, k=k, size=size)
        value = n * duration * shard_price(PRICE, file.shard_size) + extra
        args: list[Value] = [
            file.cid,
            file.size,
            file.shard_size,
            file.k,
            file.roots,
            duration,
            PRICE,
            self.chain.height + ahead,
            0,
        ]
        bid_id = self.call(who, "bid", *args, value=value)
        assert isinstance(bid_id, int), bid_id
        self.files[bid_id] = file
        self.deposits[who] += value
        return bid_id

    @rule(index=st.integers(0, 100), by_client=st.booleans())
    def cancel_bid(self, index: int, by_client: bool) -> None:
        bids = self.bids()
        if not bids:
            return
        bid_id = sorted(bids)[index % len(bids)]
        client = bids[bid_id].client
        caller = client if by_client else next(c for c in CLIENTS if c != client)
        reason = self.call(caller, "cancel_bid", bid_id)
        assert (reason is None) == by_client

    @rule(index=st.integers(0, 100), order=st.permutations(range(len(KEYS))), able=st.booleans())
    def deal(self, index: int, order: list[int], able: bool) -> None:
        bids = self.bids()
        if bids:
            bid_id = sorted(bids)[index % len(bids)]
            self.form(bid_id, bids[bid_id], order, able)

    def form(self, bid_id: int, found: Bid, order: list[int], able: bool) -> None:
        """Ask for a deal with providers in ``order`` (``able``: those that can take a shard
        first)."""

        def can(keys: int) -> bool:
            raw = self.chain.record(b"A" + KEYS[keys].address.raw)
            if raw is None:
                return False
            ask = Ask.decode(raw)
            return ask.active and ask.used + found.shard_size <= ask.capacity

        if able:
            order = sorted(order, key=lambda i: not can(i))
        chosen = [KEYS[i] for i in order[: found.n]]
        signatures = []
        for shard, keys in enumerate(chosen):
            raw = self.chain.record(b"A" + keys.address.raw)
            rate = Ask.decode(raw).price if raw else 0
            message = acceptance_message(
                CHAIN_ID,
                bid_id,
                shard,
                found.roots[shard],
                found.shard_size,
                shard_price(rate, found.shard_size),
                keys.address,
            )
            signatures.append(sign(keys, message).encode())
        self.call(found.client, "deal", bid_id, tuple(k.address for k in chosen), tuple(signatures))

    @rule(index=st.integers(0, 100), shard=st.integers(0, 2), valid=st.booleans())
    def prove(self, index: int, shard: int, valid: bool) -> None:
        deal_id = self.pick_deal(index)
        if deal_id is None:
            return
        found = self.chain.deal(deal_id)
        assert found is not None
        shard %= found.n
        state = self.chain.shard(deal_id, shard)
        period = self.chain.period()
        prover = state.provider or KEYS[0].address
        item = self.proof(deal_id, shard, period, valid)
        expected_ok = (
            state.provider is not None
            and self.chain.height % P != 0
            and self.chain.height % P <= W
            and state.first_due <= period < found.end
            and not state.proved(period)
            and self.chain.record(b"R" + period.to_bytes(8, "big")) is not None
        )
        answer = self.call(prover, "prove", period, (item,))
        if expected_ok:
            assert answer == (valid,), answer
            again = self.chain.call(prover, "prove", period, (item,))
            assert again.status is CallStatus.REVERTED  # never twice, never slashed for it
        else:
            assert isinstance(answer, str), answer

    @rule(blocks=st.integers(1, 2 * P + 5))
    def advance(self, blocks: int) -> None:
        self.chain.advance(self.chain.height + blocks)
        self.sync()

    @rule(offset=st.integers(1, W + 1))
    def next_period(self, offset: int) -> None:
        """Advance into the next period's window (or just past it: its check)."""
        self.chain.advance((self.chain.period() + 1) * P + offset)
        self.sync()

    @rule()
    def prove_every_due_shard(self) -> None:
        """Each provider proves all its due shards in one call, valid: all are accepted."""
        period = self.chain.period()
        if (
            not 0 < self.chain.height % P <= W
            or self.chain.record(b"R" + period.to_bytes(8, "big")) is None
        ):
            return
        items: dict[Address, list[Value]] = {}
        for deal_id in self.deal_ids():
            found = self.chain.deal(deal_id)
            assert found is not None
            for index in range(found.n):
                shard = self.chain.shard(deal_id, index)
                if (
                    shard.provider is not None
                    and shard.first_due <= period < found.end
                    and not shard.proved(period)
                ):
                    item = self.proof(deal_id, index, period, True)
                    items.setdefault(shard.provider, []).append(item)
        for provider, batch in items.items():
            answer = self.call(provider, "prove", period, tuple(batch))
            assert answer == (True,) * len(batch), answer

    @rule(index=st.integers(0, 100), shard=st.integers(0, 2), who=st.integers(0, len(KEYS) - 1))
    def take(self, index: int, shard: int, who: int) -> None:
        deal_id = self.pick_deal(index)
        if deal_id is None:
            return
        found = self.chain.deal(deal_id)
        assert found is not None
        relisted = [
            i for i in range(found.n) if self.chain.shard(deal_id, i).state is ShardState.RELISTED
        ]
        if relisted:
            shard = relisted[shard % len(relisted)]
        members = set()
        for i in range(found.n):
            held = self.chain.shard(deal_id, i)
            members |= {held.provider, held.leaver}
        outsiders = [k.address for k in KEYS if k.address not in members]
        taker = outsiders[who % len(outsiders)] if outsiders and who % 2 else KEYS[who].address
        self.call(taker, "take", deal_id, shard)

    @rule(index=st.integers(0, 100), shard=st.integers(0, 2), roll=st.integers(0, 1))
    def leave(self, index: int, shard: int, roll: int) -> None:
        deal_id = self.pick_deal(index)
        if deal_id is None or roll:
            return
        found = self.chain.deal(deal_id)
        assert found is not None
        shard %= found.n
        provider = self.chain.shard(deal_id, shard).provider
        if provider is not None:
            assert self.call(provider, "leave", deal_id, shard) is None

    @rule(index=st.integers(0, 100), roll=st.integers(0, 3))
    def cancel_deal(self, index: int, roll: int) -> None:
        deal_id = self.pick_deal(index)
        if deal_id is not None and roll == 0:  # rarer than the rest: deals should live a while
            self.call(self.client_of[deal_id], "cancel_deal", deal_id)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def deposits_are_paid_refunded_or_held(self) -> None:
        bids = self.bids()
        for client in CLIENTS:
            held = sum(b.deposit for b in bids.values() if b.client == client)
            for deal_id in self.deal_ids():
                found = self.chain.deal(deal_id)
                assert found is not None
                if found.client == client:
                    held += found.escrow
            received = self.chain.balance(client) - (FUNDS - self.deposits[client])
            refunded = received - self.bonus_returned[client]
            assert self.deposits[client] == self.price_paid[client] + refunded + held

    @invariant()
    def records_add_up(self) -> None:
        used = dict.fromkeys((k.address for k in KEYS), 0)
        locked = dict.fromkeys((k.address for k in KEYS), 0)
        escrow = sum(b.deposit for b in self.bids().values())
        bonus = 0
        for deal_id in self.deal_ids():
            found = self.chain.deal(deal_id)
            assert found is not None
            escrow += found.escrow
            unpaid = 0
            for index in range(found.n):
                shard: Shard = self.chain.shard(deal_id, index)
                bonus += shard.bonus
                assert (shard.provider is None) == (shard.state is ShardState.RELISTED)
                for holder, amount in (
                    (shard.provider, shard.collateral),
                    (shard.leaver, shard.leaver_collateral),
                ):
                    if holder is not None:
                        used[holder] += found.shard_size
                        locked[holder] += amount
                assert shard.collateral <= shard.original
                if found.next_check < found.end:
                    periods = found.end - found.next_check - int(shard.proved(found.next_check))
                    unpaid += shard.price * periods
            assert found.escrow == unpaid, (deal_id, found, unpaid)
        collateral = 0
        for keys in KEYS:
            raw = self.chain.record(b"A" + keys.address.raw)
            if raw is None:
                continue
            ask = Ask.decode(raw)
            assert ask.used == used[keys.address]
            assert ask.used <= ask.capacity
            assert ask.locked == locked[keys.address]
            collateral += ask.free + ask.locked
        totals = self.chain.totals()
        assert (totals.escrow, totals.collateral, totals.bonus) == (escrow, collateral, bonus)


def test_market_model() -> None:
    class Seeded(MarketModel):
        pass

    seed(test_seed())(Seeded)
    run_state_machine_as_test(
        Seeded,
        settings=settings(max_examples=50, stateful_step_count=80, deadline=None, database=None),
    )
