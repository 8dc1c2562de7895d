"""The ``storage-market`` actor driven through real machines, height by height, with the cron run at
the start of every block; and its client side (:mod:`qoin.storage.market`).

Shards are real random bytes with real shard trees and Merkle proofs; acceptances are real hybrid
signatures. After every call the harness checks that the actor's balance is the sum of its totals
and that no Shor was made or lost.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qoin.actors import ACTOR_NAMES, STORAGE_MARKET_ADDRESS, builtin_actors
from qoin.actors.base import topic
from qoin.actors.storage_market import (
    EVENT_NAMES,
    KEM_KEY_SIZE,
    MAX_SHARDS,
    PAGE_BYTES,
    Ask,
    Counters,
    Deal,
    Shard,
    ShardState,
    Totals,
    acceptance_message,
    shard_collateral,
    shard_price,
)
from qoin.chain.genesis import Allocation
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridKeyPair, sign
from qoin.execution import gas as costs
from qoin.execution.abi import Value, decode_value, encode_args
from qoin.execution.account import actor_address, storage_key
from qoin.execution.calls import event_json
from qoin.execution.client import ExecutionClient
from qoin.execution.receipt import CallStatus, Receipt
from qoin.execution.state import ExecutionState
from qoin.rpc.serve import BackgroundServer
from qoin.storage import market, merkle
from qoin.storage.params import DEVNET, PARAMS_KEY, PPM, StorageParams
from tests.actorchain import CHAIN_ID, START, ActorChain, funded_state
from tests.chainutil import test_genesis
from tests.keys import keypair_for

MARKET = STORAGE_MARKET_ADDRESS
PARAMS = DEVNET
P, W = PARAMS.period, PARAMS.window
GIB = 1 << 30
PRICE = GIB  # one Shor per byte per period
COLLATERAL = 4 * GIB
KEM = bytes(i % 251 for i in range(KEM_KEY_SIZE))
NAMES_BY_TOPIC = {topic(name): name for name in EVENT_NAMES}


@dataclass
class Chain(ActorChain):
    """The storage market over heights (:class:`tests.actorchain.ActorChain`)."""

    params: StorageParams = PARAMS

    @classmethod
    def new(
        cls, people: Iterable[Address], params: StorageParams = PARAMS, height: int = START
    ) -> Chain:
        everyone = list(people)
        state = funded_state(everyone, MARKET, {PARAMS_KEY: params.encode()})
        chain = cls(state, height, everyone, MARKET, NAMES_BY_TOPIC, params=params)
        chain.supply = chain.total()
        return chain

    def totals(self) -> Totals:
        raw = self.state.get(storage_key(MARKET, b"totals"))
        return Totals.decode(raw) if raw else Totals()

    def held(self) -> int:
        t = self.totals()
        return t.escrow + t.collateral + t.bonus + t.burned

    def ask(self, provider: Address) -> Ask:
        raw = self.record(b"A" + provider.raw)
        assert raw is not None
        return Ask.decode(raw)

    def deal(self, deal_id: int) -> Deal | None:
        raw = self.record(b"D" + deal_id.to_bytes(8, "big"))
        return None if raw is None else Deal.decode(raw)

    def shard(self, deal_id: int, index: int) -> Shard:
        raw = self.record(b"S" + deal_id.to_bytes(8, "big") + bytes((index,)))
        assert raw is not None
        return Shard.decode(raw)

    def period(self) -> int:
        return self.height // self.params.period

    def to_window(self, period: int) -> None:
        """Advance to the first height accepting proofs for ``period``."""
        self.advance(period * self.params.period + 1)

    def to_check(self, period: int) -> list[Receipt]:
        """Advance through the check of ``period``."""
        return self.advance(self.params.check_height(period))


@dataclass(frozen=True)
class File:
    """A file's shards (random bytes) and their trees."""

    size: int
    k: int
    shards: tuple[bytes, ...]
    trees: tuple[merkle.ShardTree, ...]

    @property
    def n(self) -> int:
        return len(self.shards)

    @property
    def shard_size(self) -> int:
        return len(self.shards[0])

    @property
    def roots(self) -> tuple[bytes, ...]:
        return tuple(t.root for t in self.trees)

    @property
    def cid(self) -> bytes:
        return merkle.content_id(self.roots)


def make_file(rng: random.Random, n: int = 3, k: int = 2, size: int = 3_000) -> File:
    shard_size = merkle.shard_size_for(size, k, PARAMS.leaf_size)
    shards = tuple(rng.randbytes(shard_size) for _ in range(n))
    return File(
        size, k, shards, tuple(merkle.ShardTree.from_bytes(s, PARAMS.leaf_size) for s in shards)
    )


def post_ask(
    chain: Chain,
    keys: HybridKeyPair,
    *,
    capacity: int = GIB,
    price: int = PRICE,
    collateral: int = COLLATERAL,
    value: int = 10**9,
    endpoint: str = "127.0.0.1:9000",
) -> None:
    chain.ok(
        keys.address,
        "ask",
        capacity,
        price,
        collateral,
        7,
        endpoint,
        KEM,
        keys.public.encode(),
        value=value,
    )


def deposit_for(file: File, duration: int, max_price: int = PRICE) -> int:
    return file.n * duration * shard_price(max_price, file.shard_size)


def bid_args(
    chain: Chain, file: File, duration: int = 5, max_price: int = PRICE, deadline: int | None = None
) -> list[Value]:
    return [
        file.cid,
        file.size,
        file.shard_size,
        file.k,
        file.roots,
        duration,
        max_price,
        chain.height + 50 if deadline is None else deadline,
        1,
    ]


def place_bid(chain: Chain, client: Address, file: File, duration: int = 5, extra: int = 0) -> int:
    bid_id = chain.ok(
        client, "bid", *bid_args(chain, file, duration), value=deposit_for(file, duration) + extra
    )
    assert isinstance(bid_id, int)
    return bid_id


def acceptance(
    chain: Chain, keys: HybridKeyPair, bid_id: int, index: int, file: File, price: int | None = None
) -> bytes:
    if price is None:
        price = shard_price(chain.ask(keys.address).price, file.shard_size)
    message = acceptance_message(
        CHAIN_ID, bid_id, index, file.roots[index], file.shard_size, price, keys.address
    )
    return sign(keys, message).encode()


def form_deal(
    chain: Chain, client: Address, file: File, providers: Sequence[HybridKeyPair], duration: int = 5
) -> int:
    bid_id = place_bid(chain, client, file, duration)
    signatures = tuple(acceptance(chain, p, bid_id, i, file) for i, p in enumerate(providers))
    deal_id = chain.ok(client, "deal", bid_id, tuple(p.address for p in providers), signatures)
    assert deal_id == bid_id
    return bid_id


def proof(
    chain: Chain, deal_id: int, index: int, file: File, period: int, tamper: bool = False
) -> Value:
    beacon = chain.view("get_beacon", period)
    assert isinstance(beacon, bytes)
    tree = file.trees[index]
    data = file.shards[index]
    seed = merkle.challenge_seed(beacon, deal_id, index, period)
    indices = merkle.challenge_indices(seed, tree.leaf_count, PARAMS.samples)
    leaves, paths = merkle.build_proof(tree, indices, lambda c: data[slice(*tree.chunk_span(c))])
    if tamper:
        leaves[0] = bytes(len(leaves[0]))
    return market.proof_item(deal_id, index, leaves, paths)


def prove(
    chain: Chain, keys: HybridKeyPair, deal_id: int, index: int, file: File, tamper: bool = False
) -> Value | None:
    period = chain.period()
    return chain.ok(
        keys.address, "prove", period, (proof(chain, deal_id, index, file, period, tamper),)
    )


PROVIDERS = [keypair_for(index=30 + i) for i in range(MAX_SHARDS + 2)]
CLIENT = keypair_for(index=29).address
OTHER = keypair_for(index=28).address


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
def chain() -> Chain:
    return Chain.new([CLIENT, OTHER, *(p.address for p in PROVIDERS)])


def providers(chain: Chain, count: int = 3, **ask: int) -> list[HybridKeyPair]:
    chosen = PROVIDERS[:count]
    for keys in chosen:
        post_ask(chain, keys, **ask)  # type: ignore[arg-type]
    return chosen


# -- registry ------------------------------------------------------------------------------------


def test_registered_as_a_builtin_actor() -> None:
    assert "storage-market" in ACTOR_NAMES
    assert actor_address("storage-market") == MARKET
    assert builtin_actors()[MARKET].name == "storage-market"
    assert market.STORAGE_MARKET == MARKET


def test_params_view_reads_genesis_params_or_mainnet(chain: Chain) -> None:
    assert chain.view("params") == tuple(
        getattr(PARAMS, f) for f in StorageParams.__dataclass_fields__
    )
    assert market.params_from_value(chain.view("params")) == PARAMS
    bare = Chain.new([CLIENT])
    del bare.state[storage_key(MARKET, PARAMS_KEY)]
    assert market.params_from_value(bare.view("params")) == StorageParams()


# -- asks --------------------------------------------------------------------------------------------


def test_ask_posts_updates_and_holds_collateral(chain: Chain) -> None:
    keys = PROVIDERS[0]
    post_ask(chain, keys, value=5_000)
    assert chain.last("AskPosted") == (GIB, PRICE, COLLATERAL, "127.0.0.1:9000")
    record = chain.view("get_ask", keys.address)
    info = market.AskInfo.from_value(record)
    assert info == market.AskInfo(
        keys.address, GIB, 0, PRICE, COLLATERAL, 7, "127.0.0.1:9000", KEM, 5_000, 0, True
    )
    assert chain.view("get_key", keys.address) == keys.public.encode()
    assert chain.totals() == Totals(collateral=5_000)
    post_ask(chain, keys, capacity=2 * GIB, price=3, value=1_000, endpoint="h:1")
    info = market.AskInfo.from_value(chain.view("get_ask", keys.address))
    assert (info.capacity, info.price, info.endpoint, info.free_collateral) == (
        2 * GIB,
        3,
        "h:1",
        6_000,
    )
    assert chain.ask(keys.address).position == 0  # an update keeps its place


def test_ask_rules(chain: Chain) -> None:
    keys, other = PROVIDERS[0], PROVIDERS[1]
    address = keys.address
    public = keys.public.encode()
    args: list[Value] = [GIB, PRICE, COLLATERAL, 0, "h:1", KEM, public]
    wrong_kem = chain.call(address, "ask", *args[:5], KEM[:-1], public)
    assert wrong_kem.status is CallStatus.FAILED
    assert "argument 5 must be 1184 bytes" in wrong_kem.reason
    assert "not the caller's" in chain.reverts(address, "ask", *args[:6], other.public.encode())
    assert "does not decode" in chain.reverts(address, "ask", *args[:6], public[:-1])
    assert "endpoint is 1 to 255" in chain.reverts(
        address, "ask", *args[:4], "x" * 256, KEM, public
    )
    assert "endpoint is 1 to 255" in chain.reverts(address, "ask", *args[:4], "", KEM, public)
    assert chain.call(address, "ask", *args[:6]).status is CallStatus.FAILED
    assert "has no ask" in chain.reverts(address, "get_ask", address)
    assert "has no ask" in chain.reverts(address, "get_key", address)


def test_capacity_below_use_reverts(chain: Chain, rng: random.Random) -> None:
    chosen = providers(chain)
    file = make_file(rng)
    form_deal(chain, CLIENT, file, chosen)
    keys = chosen[0]
    public = keys.public.encode()
    reason = chain.reverts(
        keys.address, "ask", file.shard_size - 1, PRICE, COLLATERAL, 0, "h:1", KEM, public
    )
    assert f"below the {file.shard_size} bytes" in reason
    chain.ok(keys.address, "ask", file.shard_size, PRICE, COLLATERAL, 0, "h:1", KEM, public)


def test_withdraw_and_cancel_ask(chain: Chain) -> None:
    keys = PROVIDERS[0]
    post_ask(chain, keys, value=10_000)
    before = chain.balance(keys.address)
    assert "withdraw 1 to 10000" in chain.reverts(keys.address, "withdraw", 10_001)
    assert "withdraw 1 to 10000" in chain.reverts(keys.address, "withdraw", 0)
    assert "takes no payment" in chain.reverts(keys.address, "withdraw", 5, value=1)
    chain.ok(keys.address, "withdraw", 4_000)
    assert chain.balance(keys.address) == before + 4_000
    chain.ok(keys.address, "cancel_ask")
    assert chain.last("AskCancelled") == ()
    assert chain.balance(keys.address) == before + 10_000
    assert chain.totals() == Totals()
    assert market.AskInfo.from_value(chain.view("get_ask", keys.address)).active is False
    assert "already cancelled" in chain.reverts(keys.address, "cancel_ask")
    assert "has no ask" in chain.reverts(OTHER, "cancel_ask")
    assert "has no ask" in chain.reverts(OTHER, "withdraw", 1)
    post_ask(chain, keys, value=1)  # back in the book, at its first place
    assert chain.ask(keys.address).active and chain.ask(keys.address).position == 0


def test_asks_pages_in_posting_order_skipping_cancelled(chain: Chain) -> None:
    for keys in PROVIDERS[:14]:
        post_ask(chain, keys, value=1)
    chain.ok(PROVIDERS[3].address, "cancel_ask")
    seen: list[Address] = []
    start = 0
    pages = 0
    while True:
        page = chain.view("asks", start, 32)
        assert isinstance(page, tuple)
        next_start, records = page
        assert isinstance(records, tuple) and isinstance(next_start, int)
        assert len(b"".join(encode_args([r]) for r in records)) <= PAGE_BYTES + 64
        seen.extend(market.AskInfo.from_value(r).provider for r in records)
        pages += 1
        if next_start == 0:
            break
        start = next_start
    expected = [k.address for i, k in enumerate(PROVIDERS[:14]) if i != 3]
    assert seen == expected
    assert pages > 1  # KEM keys make records big: a page stops before 16 KiB of return data
    assert chain.view("asks", 2, 2) == (4, (chain.view("get_ask", PROVIDERS[2].address),))
    assert chain.view("asks", 100, 5) == (0, ())
    assert "count is 1 to 32" in chain.reverts(CLIENT, "asks", 0, 33)


# -- bids --------------------------------------------------------------------------------------------


def test_bid_holds_the_deposit_and_can_be_cancelled(chain: Chain, rng: random.Random) -> None:
    file = make_file(rng)
    before = chain.balance(CLIENT)
    bid_id = place_bid(chain, CLIENT, file, duration=4, extra=11)
    deposit = deposit_for(file, 4) + 11
    assert bid_id == 1
    assert chain.balance(CLIENT) == before - deposit
    assert chain.totals() == Totals(escrow=deposit)
    assert chain.last("BidPlaced") == (1, file.size, 3, 2, 4, PRICE, START + 50, deposit)
    info = market.BidInfo.from_value(1, chain.view("get_bid", 1))
    assert (info.client, info.cid, info.roots, info.deposit, info.n, info.flags) == (
        CLIENT,
        file.cid,
        file.roots,
        deposit,
        3,
        1,
    )
    assert place_bid(chain, CLIENT, file) == 2
    assert "only its client" in chain.reverts(OTHER, "cancel_bid", 1)
    chain.ok(CLIENT, "cancel_bid", 1)
    assert chain.last("BidCancelled") == (1,)
    assert "no open bid" in chain.reverts(CLIENT, "cancel_bid", 1)
    assert "no open bid" in chain.reverts(CLIENT, "get_bid", 1)
    assert chain.totals() == Totals(escrow=deposit_for(file, 5))


def _bad_bid(chain: Chain, file: File, change: dict[int, Value], value: int) -> str:
    args = bid_args(chain, file)
    for position, replacement in change.items():
        args[position] = replacement
    return chain.reverts(CLIENT, "bid", *args, value=value)


def test_bid_rules(chain: Chain, rng: random.Random) -> None:
    file = make_file(rng)
    plenty = 10**12
    wide = make_file(rng, n=MAX_SHARDS + 1, k=2)
    cases: list[tuple[dict[int, Value], str]] = [
        ({4: file.roots[:1]}, "2 to 16 shard roots, got 1"),
        ({4: wide.roots, 0: wide.cid}, "2 to 16 shard roots, got 17"),
        ({3: 0}, "k must be 1 to n - 1 = 2"),
        ({3: 3}, "k must be 1 to n - 1 = 2"),
        ({2: file.shard_size + 256}, f"is {file.shard_size}, not"),
        ({1: 10**9}, f"not {file.shard_size}"),
        ({0: bytes(32)}, "the cid is not the root over the shard roots"),
        ({4: file.roots[::-1]}, "the cid is not the root"),
        ({5: 0}, "duration is 1 to"),
        ({5: PARAMS.max_duration + 1}, "duration is 1 to"),
        ({7: START}, "the deadline must lie in heights"),
        ({7: START + PARAMS.max_bid_blocks + 1}, "the deadline must lie in heights"),
    ]
    for change, reason in cases:
        assert reason in _bad_bid(chain, file, change, plenty), change
    need = deposit_for(file, 5)
    assert f"at least {need} Shor" in _bad_bid(chain, file, {}, need - 1)
    failed = chain.call(CLIENT, "bid", *bid_args(chain, file)[:-1], value=need)
    assert failed.status is CallStatus.FAILED
    short_root = bid_args(chain, file)
    short_root[4] = (file.roots[0], b"x")
    assert chain.call(CLIENT, "bid", *short_root, value=need).status is CallStatus.FAILED
    assert chain.totals() == Totals()


def test_bid_expires_with_a_full_refund(chain: Chain, rng: random.Random) -> None:
    file = make_file(rng)
    before = chain.balance(CLIENT)
    bid_id = place_bid(chain, CLIENT, file, extra=5)
    chain.advance(START + 49)
    assert chain.view("get_bid", bid_id) is not None
    receipts = chain.advance(START + 50)
    assert [decode_value(r.return_data) for r in receipts] == [True]
    assert chain.last("BidExpired") == (bid_id, deposit_for(file, 5) + 5)
    assert chain.balance(CLIENT) == before
    assert chain.totals() == Totals()


# -- deals -------------------------------------------------------------------------------------------


def test_deal_locks_collateral_and_escrow_and_refunds_the_rest(
    chain: Chain, rng: random.Random
) -> None:
    cheap = PROVIDERS[2]
    chosen = providers(chain, 2)
    post_ask(chain, cheap, price=PRICE // 2)
    chosen.append(cheap)
    file = make_file(rng)
    before = chain.balance(CLIENT)
    deal_id = form_deal(chain, CLIENT, file, chosen, duration=6)
    price = shard_price(PRICE, file.shard_size)
    prices = [price, price, shard_price(PRICE // 2, file.shard_size)]
    escrow = 6 * sum(prices)
    assert chain.balance(CLIENT) == before - escrow
    first = START // P + 1 + PARAMS.grace_periods
    assert chain.last("DealFormed") == (
        deal_id,
        file.cid,
        tuple(p.address for p in chosen),
        first,
        first + 6,
        escrow,
    )
    info = market.DealInfo.from_value(deal_id, chain.view("get_deal", deal_id))
    assert (info.client, info.first, info.end, info.escrow, info.k) == (
        CLIENT,
        first,
        first + 6,
        escrow,
        2,
    )
    collateral = shard_collateral(COLLATERAL, file.shard_size)
    for index, shard in enumerate(info.shards):
        assert shard.provider == chosen[index].address
        assert shard.state is ShardState.PENDING
        assert (shard.price, shard.collateral, shard.first_due) == (
            prices[index],
            collateral,
            first,
        )
        assert shard.leaver is None and shard.root == file.roots[index]
        ask = chain.ask(chosen[index].address)
        assert (ask.used, ask.locked, ask.free) == (file.shard_size, collateral, 10**9 - collateral)
    assert chain.view("deal_of", file.cid) == deal_id
    assert chain.totals() == Totals(escrow=escrow, collateral=3 * 10**9)
    assert "no open bid" in chain.reverts(CLIENT, "get_bid", deal_id)
    # the bid's expiry entry finds the bid gone and does nothing
    chain.advance(START + 49)
    before = chain.balance(CLIENT)
    expiry = chain.advance(START + 50)
    assert [decode_value(r.return_data) for r in expiry] == [False]
    assert chain.balance(CLIENT) == before
    assert "BidExpired" not in chain.event_names()


def test_deal_rules(chain: Chain, rng: random.Random) -> None:
    chosen = providers(chain)
    file = make_file(rng)
    bid_id = place_bid(chain, CLIENT, file)
    addresses = tuple(p.address for p in chosen)
    good = tuple(acceptance(chain, p, bid_id, i, file) for i, p in enumerate(chosen))

    def deal(
        providers_: tuple[Address, ...] = addresses,
        signatures: tuple[bytes, ...] = good,
        caller: Address = CLIENT,
    ) -> str:
        return chain.reverts(caller, "deal", bid_id, providers_, signatures)

    assert "only its client" in deal(caller=OTHER)
    assert "name 3 providers and 3 signatures" in deal(addresses[:2], good[:2])
    assert "distinct" in deal((addresses[0], addresses[0], addresses[2]))
    swapped = (good[1], good[0], good[2])
    assert "shard 0" in deal(signatures=swapped) and "does not verify" in deal(signatures=swapped)
    wrong_price = acceptance(chain, chosen[0], bid_id, 0, file, price=1)
    assert "does not verify" in deal(signatures=(wrong_price, *good[1:]))
    stranger = PROVIDERS[5]
    assert "has no active ask" in deal((stranger.address, *addresses[1:]))
    assert chain.call(CLIENT, "deal", bid_id, (b"x",) * 3, good).status is CallStatus.FAILED
    # an ask too small, too dear, or short of collateral
    keys = chosen[1]
    public = keys.public.encode()
    chain.ok(keys.address, "ask", file.shard_size - 1, PRICE, COLLATERAL, 0, "h:1", KEM, public)
    assert "shard 1" in deal() and "bytes free" in deal()
    chain.ok(keys.address, "ask", GIB, PRICE * 2, COLLATERAL, 0, "h:1", KEM, public)
    assert "the bid pays at most" in deal()
    chain.ok(keys.address, "ask", GIB, PRICE, 10**6 * GIB, 0, "h:1", KEM, public)
    assert "free collateral" in deal()
    chain.ok(keys.address, "ask", GIB, PRICE, COLLATERAL, 0, "h:1", KEM, public)
    chain.ok(chosen[2].address, "cancel_ask")
    assert "shard 2" in deal() and "has no active ask" in deal()
    post_ask(chain, chosen[2])
    chain.advance(START + 49)
    chain.ok(CLIENT, "deal", bid_id, addresses, good)
    assert "no open bid" in chain.reverts(CLIENT, "deal", bid_id, addresses, good)


def test_deal_past_the_deadline_reverts(chain: Chain, rng: random.Random) -> None:
    """Even when the expiry entry has not run yet (a congested cron), the deadline holds."""
    chosen = providers(chain)
    file = make_file(rng)
    bid_id = place_bid(chain, CLIENT, file)
    signatures = tuple(acceptance(chain, p, bid_id, i, file) for i, p in enumerate(chosen))
    chain.height = START + 50  # at the deadline, its cron entry not run
    reason = chain.reverts(CLIENT, "deal", bid_id, tuple(p.address for p in chosen), signatures)
    assert "deadline 1050 has passed" in reason


# -- proofs ------------------------------------------------------------------------------------------


def formed(chain: Chain, rng: random.Random, n: int = 3, duration: int = 5) -> tuple[int, File]:
    chosen = providers(chain, n)
    file = make_file(rng, n=n)
    return form_deal(chain, CLIENT, file, chosen, duration), file


def test_valid_proofs_are_accepted_and_paid(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    chain.to_window(first)
    price = shard_price(PRICE, file.shard_size)
    for index in range(3):
        keys = PROVIDERS[index]
        before = chain.balance(keys.address)
        assert prove(chain, keys, deal_id, index, file) == (True,)
        assert chain.balance(keys.address) == before + price
        assert chain.last("ProofAccepted") == (deal_id, index, first, price)
        shard = chain.shard(deal_id, index)
        assert (shard.state, shard.last_proved, shard.misses) == (ShardState.ACTIVE, first + 1, 0)
    assert chain.deal(deal_id).escrow == 4 * 3 * price  # type: ignore[union-attr]
    # the check finds every shard proved: nothing refunded
    before = chain.balance(CLIENT)
    chain.to_check(first)
    assert chain.balance(CLIENT) == before
    assert "ProofMissed" not in chain.event_names()


def test_one_call_proves_several_shards_of_several_deals(chain: Chain, rng: random.Random) -> None:
    keys = providers(chain, 3)
    file_a, file_b = make_file(rng), make_file(rng)
    a = form_deal(chain, CLIENT, file_a, keys)
    b = form_deal(chain, CLIENT, file_b, [keys[1], keys[0], keys[2]])
    first = chain.deal(a).first  # type: ignore[union-attr]
    chain.to_window(first)
    items = (proof(chain, a, 0, file_a, first), proof(chain, b, 1, file_b, first))
    assert chain.ok(keys[0].address, "prove", first, items) == (True, True)
    twice = (proof(chain, a, 1, file_a, first),) * 2
    assert "already proved" in chain.reverts(keys[1].address, "prove", first, twice)


def test_invalid_proof_fails_the_shard_and_relists_it(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    chain.to_window(first)
    keys = PROVIDERS[1]
    collateral = shard_collateral(COLLATERAL, file.shard_size)
    before = chain.balance(keys.address)
    mark = len(chain.events)
    assert prove(chain, keys, deal_id, 1, file, tamper=True) == (False,)
    assert chain.balance(keys.address) == before
    assert chain.event_names(mark) == ["ProofInvalid", "ShardFailed", "ShardRelisted"]
    bonus = collateral * PARAMS.repair_bonus_ppm // PPM
    assert chain.last("ShardFailed") == (deal_id, 1, collateral, bonus)
    assert chain.last("ShardRelisted") == (
        deal_id,
        1,
        file.shard_size,
        shard_price(PRICE, file.shard_size),
        bonus,
        file.roots[1],
    )
    shard = chain.shard(deal_id, 1)
    assert (shard.provider, shard.state, shard.collateral, shard.bonus) == (
        None,
        ShardState.RELISTED,
        0,
        bonus,
    )
    ask = chain.ask(keys.address)
    assert (ask.used, ask.locked) == (0, 0)
    assert chain.totals().burned == collateral - bonus
    assert chain.totals().bonus == bonus
    # the period's price goes back to the client at the check (the others did not prove either)
    before = chain.balance(CLIENT)
    chain.to_check(first)
    assert chain.balance(CLIENT) == before + 3 * shard_price(PRICE, file.shard_size)


def test_timing_and_format_errors_revert_without_slashing(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    keys = PROVIDERS[0]
    address = keys.address
    chain.to_window(first - 1)  # a period before the shard's first due one
    early = proof(chain, deal_id, 0, file, first - 1)
    assert "due for periods" in chain.reverts(address, "prove", first - 1, (early,))
    chain.to_window(first)
    item = proof(chain, deal_id, 0, file, first)
    assert isinstance(item, tuple)
    assert "not the caller's" in chain.reverts(OTHER, "prove", first, (item,))
    assert "not the caller's" in chain.reverts(PROVIDERS[1].address, "prove", first, (item,))
    assert "heights" in chain.reverts(address, "prove", first + 1, (item,))
    leaves, paths = item[2], item[3]
    assert isinstance(leaves, tuple) and isinstance(paths, bytes)
    assert all(isinstance(leaf, bytes) for leaf in leaves)
    first_leaf = leaves[0]
    assert isinstance(first_leaf, bytes)
    bad_items: list[Value] = [
        (deal_id, 0, leaves[:-1], paths),
        (deal_id, 0, (first_leaf[:-1], *leaves[1:]), paths),
        (deal_id, 0, leaves, paths[:-32]),
        (deal_id, 3, leaves, paths),
        (deal_id + 9, 0, leaves, paths),
    ]
    for bad in bad_items:
        chain.reverts(address, "prove", first, (bad,))
    assert chain.call(address, "prove", first, ((deal_id, 0, leaves),)).status is (
        CallStatus.FAILED
    )
    assert chain.call(address, "prove", first, ((deal_id, 0, (1,), paths),)).status is (
        CallStatus.FAILED
    )
    # the window's last height still takes it; the one after does not
    chain.advance(first * P + W)
    assert chain.ok(address, "prove", first, (item,)) == (True,)
    assert "already proved" in chain.reverts(address, "prove", first, (item,))
    chain.advance(first * P + W + 1)
    late = proof(chain, deal_id, 1, file, first)
    reason = chain.reverts(PROVIDERS[1].address, "prove", first, (late,))
    assert f"not {first * P + W + 1}" in reason
    assert chain.shard(deal_id, 0).collateral == shard_collateral(COLLATERAL, file.shard_size)
    assert "no beacon recorded" in chain.reverts(address, "get_beacon", first + 5)


def test_misses_refund_slash_and_fail_after_m(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    price = shard_price(PRICE, file.shard_size)
    collateral = shard_collateral(COLLATERAL, file.shard_size)
    per_miss = collateral * PARAMS.miss_slash_ppm // PPM
    chain.to_window(first)
    prove(chain, PROVIDERS[0], deal_id, 0, file)
    prove(chain, PROVIDERS[1], deal_id, 1, file)
    before = chain.balance(CLIENT)
    chain.to_check(first)
    assert chain.balance(CLIENT) == before + price
    assert chain.last("ProofMissed") == (deal_id, 2, first, 1, per_miss)
    shard = chain.shard(deal_id, 2)
    assert (shard.misses, shard.collateral, shard.state) == (
        1,
        collateral - per_miss,
        ShardState.PENDING,
    )
    info = market.DealInfo.from_value(deal_id, chain.view("get_deal", deal_id)).shards[2]
    assert info.misses == 1
    # one more miss (M = 2) fails it: all that is left is slashed
    chain.to_window(first + 1)
    prove(chain, PROVIDERS[0], deal_id, 0, file)
    prove(chain, PROVIDERS[1], deal_id, 1, file)
    mark = len(chain.events)
    chain.to_check(first + 1)
    left = collateral - 2 * per_miss
    bonus = left * PARAMS.repair_bonus_ppm // PPM
    assert chain.event_names(mark) == ["ProofMissed", "ShardFailed", "ShardRelisted"]
    assert chain.last("ShardFailed") == (deal_id, 2, left, bonus)
    assert chain.totals().burned == 2 * per_miss + left - bonus
    assert chain.ask(PROVIDERS[2].address).locked == 0
    # a proof after the failure is refused: the shard is no longer its
    chain.to_window(first + 2)
    late = proof(chain, deal_id, 2, file, first + 2)
    assert "not the caller's" in chain.reverts(PROVIDERS[2].address, "prove", first + 2, (late,))


def test_a_miss_never_slashes_more_than_is_left(rng: random.Random) -> None:
    harsh = replace(PARAMS, miss_slash_ppm=700_000, max_misses=3)
    chain = Chain.new([CLIENT, OTHER, *(p.address for p in PROVIDERS)], harsh)
    deal_id, file = formed(chain, rng)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    collateral = shard_collateral(COLLATERAL, file.shard_size)
    chain.to_check(first)
    assert chain.shard(deal_id, 0).collateral == collateral - collateral * 7 // 10
    chain.to_check(first + 1)
    assert chain.shard(deal_id, 0).collateral == 0
    assert chain.last("ProofMissed") == (
        deal_id,
        2,
        first + 1,
        2,
        collateral - collateral * 7 // 10,
    )
    chain.to_check(first + 2)
    assert chain.last("ShardFailed") == (deal_id, 2, 0, 0)
    assert chain.totals().burned == 3 * collateral
    assert chain.totals().collateral == 3 * (10**9 - collateral)


# -- repair --------------------------------------------------------------------------------------


def test_take_then_first_proof_pays_the_bonus(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng, duration=8)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    chain.to_window(first)
    prove(chain, PROVIDERS[0], deal_id, 0, file, tamper=True)  # fails shard 0
    bonus = chain.shard(deal_id, 0).bonus
    assert bonus > 0
    taker = PROVIDERS[5]
    assert "has no active ask" in chain.reverts(taker.address, "take", deal_id, 0)
    post_ask(chain, taker, collateral=2 * COLLATERAL)
    assert "holds or left shard 1" in chain.reverts(PROVIDERS[1].address, "take", deal_id, 0)
    assert "is not re-listed" in chain.reverts(taker.address, "take", deal_id, 1)
    assert "has 3 shards" in chain.reverts(taker.address, "take", deal_id, 3)
    due = chain.ok(taker.address, "take", deal_id, 0)
    assert due == first + 1 + PARAMS.grace_periods  # taken in the middle of period `first`
    assert chain.last("ShardTaken") == (deal_id, 0, due)
    collateral = shard_collateral(2 * COLLATERAL, file.shard_size)
    shard = chain.shard(deal_id, 0)
    assert (shard.provider, shard.state, shard.collateral, shard.first_due) == (
        taker.address,
        ShardState.PENDING,
        collateral,
        due,
    )
    assert "is not re-listed" in chain.reverts(PROVIDERS[6].address, "take", deal_id, 0)
    # the check of `first` and `first + 1`: taken but not due, refunded, never missed
    price = shard_price(PRICE, file.shard_size)
    chain.to_window(first + 1)
    prove(chain, PROVIDERS[1], deal_id, 1, file)
    prove(chain, PROVIDERS[2], deal_id, 2, file)
    early = proof(chain, deal_id, 0, file, first + 1)
    assert "due for periods" in chain.reverts(taker.address, "prove", first + 1, (early,))
    before = chain.balance(CLIENT)
    mark = len(chain.events)
    chain.to_check(first + 1)
    assert chain.balance(CLIENT) == before + price
    assert "ProofMissed" not in chain.event_names(mark)
    assert isinstance(due, int)
    chain.to_window(due)
    before = chain.balance(taker.address)
    assert prove(chain, taker, deal_id, 0, file) == (True,)
    assert chain.balance(taker.address) == before + price + bonus
    assert chain.last("ProofAccepted") == (deal_id, 0, due, price + bonus)
    assert chain.shard(deal_id, 0).bonus == 0
    assert chain.totals().bonus == 0


def test_leave_keeps_collateral_until_the_takers_first_proof(
    chain: Chain, rng: random.Random
) -> None:
    deal_id, file = formed(chain, rng, duration=8)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    leaver = PROVIDERS[2]
    collateral = shard_collateral(COLLATERAL, file.shard_size)
    chain.to_window(first)
    prove(chain, leaver, deal_id, 2, file)
    assert "not the caller's" in chain.reverts(OTHER, "leave", deal_id, 2)
    chain.ok(leaver.address, "leave", deal_id, 2)
    assert chain.last("ShardLeft") == (deal_id, 2)
    shard = chain.shard(deal_id, 2)
    assert (shard.provider, shard.leaver, shard.leaver_collateral, shard.state) == (
        None,
        leaver.address,
        collateral,
        ShardState.RELISTED,
    )
    assert chain.ask(leaver.address).locked == collateral  # still locked, nothing slashed
    assert "holds or left shard 2" in chain.reverts(leaver.address, "take", deal_id, 2)
    # a taker that leaves before proving is released at once; the first leaver still waits
    first_taker, taker = PROVIDERS[5], PROVIDERS[6]
    post_ask(chain, first_taker)
    chain.ok(first_taker.address, "take", deal_id, 2)
    chain.ok(first_taker.address, "leave", deal_id, 2)
    assert chain.ask(first_taker.address).locked == 0
    assert chain.ask(first_taker.address).used == 0
    assert chain.shard(deal_id, 2).leaver == leaver.address
    post_ask(chain, taker)
    due = chain.ok(taker.address, "take", deal_id, 2)
    assert isinstance(due, int)
    chain.to_window(due)
    free = chain.ask(leaver.address).free
    prove(chain, taker, deal_id, 2, file)
    ask = chain.ask(leaver.address)
    assert (ask.locked, ask.used, ask.free) == (0, 0, free + collateral)
    assert chain.shard(deal_id, 2).leaver is None


def test_a_cancelled_leavers_collateral_is_sent_back(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng, duration=8)
    leaver = PROVIDERS[0]
    collateral = shard_collateral(COLLATERAL, file.shard_size)
    chain.ok(leaver.address, "leave", deal_id, 0)
    chain.ok(leaver.address, "cancel_ask")
    balance = chain.balance(leaver.address)
    taker = PROVIDERS[5]
    post_ask(chain, taker)
    due = chain.ok(taker.address, "take", deal_id, 0)
    assert isinstance(due, int)
    chain.to_window(due)
    prove(chain, taker, deal_id, 0, file)
    assert chain.balance(leaver.address) == balance + collateral


def test_take_refused_when_the_deal_ends_first(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng, duration=2)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    chain.ok(PROVIDERS[0].address, "leave", deal_id, 0)
    taker = PROVIDERS[5]
    post_ask(chain, taker, capacity=file.shard_size - 1)
    assert "bytes free" in chain.reverts(taker.address, "take", deal_id, 0)
    post_ask(chain, taker, collateral=10**7 * GIB)
    assert "free collateral" in chain.reverts(taker.address, "take", deal_id, 0)
    post_ask(chain, taker)
    chain.to_window(first)
    assert "the deal ends before period" in chain.reverts(taker.address, "take", deal_id, 0)


# -- cancel and settlement -------------------------------------------------------------------------


def test_full_term_settles_once_and_returns_everything(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng, duration=3)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    price = shard_price(PRICE, file.shard_size)
    paid = {p.address: chain.balance(p.address) for p in PROVIDERS[:3]}
    for period in range(first, first + 3):
        chain.to_window(period)
        for index in range(3):
            prove(chain, PROVIDERS[index], deal_id, index, file)
    mark = len(chain.events)
    chain.to_check(first + 2)
    assert chain.event_names(mark) == ["DealSettled"]
    assert chain.last("DealSettled") == (deal_id, 0)
    for keys in PROVIDERS[:3]:
        assert chain.balance(keys.address) == paid[keys.address] + 3 * price
        ask = chain.ask(keys.address)
        assert (ask.used, ask.locked, ask.free) == (0, 0, 10**9)
    assert chain.deal(deal_id) is None
    assert "no open deal" in chain.reverts(CLIENT, "get_deal", deal_id)
    assert "no open deal stores" in chain.reverts(CLIENT, "deal_of", file.cid)
    assert chain.totals() == Totals(collateral=3 * 10**9)
    # a stale check entry finds nothing to do; the beacon chain stops
    chain.advance(chain.height + 3 * P)
    assert chain.event_names(mark) == ["DealSettled"]
    counters = chain.record(b"counters")
    assert counters is not None
    assert Counters.decode(counters).open_deals == 0
    assert Counters.decode(counters).beacon_next == 0


def test_cancel_deal_refunds_later_periods_and_settles_after_the_current(
    chain: Chain, rng: random.Random
) -> None:
    deal_id, file = formed(chain, rng, duration=6)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    price = shard_price(PRICE, file.shard_size)
    chain.to_window(first)
    for index in range(3):
        prove(chain, PROVIDERS[index], deal_id, index, file)
    chain.to_window(first + 1)
    assert "only its client" in chain.reverts(OTHER, "cancel_deal", deal_id)
    before = chain.balance(CLIENT)
    chain.ok(CLIENT, "cancel_deal", deal_id)
    refund = 3 * price * 4  # periods first + 2 .. first + 5
    assert chain.last("DealCancelled") == (deal_id, refund)
    assert chain.balance(CLIENT) == before + refund
    assert chain.deal(deal_id).end == first + 2  # type: ignore[union-attr]
    assert "nothing left to cancel" in chain.reverts(CLIENT, "cancel_deal", deal_id)
    # the current period is still proved and paid, then the deal settles
    for index in range(3):
        prove(chain, PROVIDERS[index], deal_id, index, file)
    chain.to_check(first + 1)
    assert chain.deal(deal_id) is None
    assert chain.last("DealSettled") == (deal_id, 0)
    assert chain.totals() == Totals(collateral=3 * 10**9)


def test_cancel_before_the_first_period_settles_at_once(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng, duration=4)
    before = chain.balance(CLIENT)
    chain.ok(CLIENT, "cancel_deal", deal_id)
    assert chain.balance(CLIENT) == before + 4 * 3 * shard_price(PRICE, file.shard_size)
    assert chain.event_names()[-2:] == ["DealCancelled", "DealSettled"]
    assert chain.deal(deal_id) is None
    assert chain.totals() == Totals(collateral=3 * 10**9)
    chain.advance(chain.height + 4 * P)  # stale entries do nothing


def test_cancel_after_the_current_check_settles_at_once(chain: Chain, rng: random.Random) -> None:
    deal_id, _ = formed(chain, rng, duration=4)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    chain.to_check(first)
    chain.ok(CLIENT, "cancel_deal", deal_id)
    assert chain.deal(deal_id) is None
    assert chain.totals().escrow == 0


def test_settlement_returns_unpaid_bonus_and_leaver_collateral(
    chain: Chain, rng: random.Random
) -> None:
    deal_id, file = formed(chain, rng, duration=2)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    chain.to_window(first)
    prove(chain, PROVIDERS[0], deal_id, 0, file, tamper=True)
    bonus = chain.shard(deal_id, 0).bonus
    chain.ok(PROVIDERS[1].address, "leave", deal_id, 1)
    locked = chain.ask(PROVIDERS[1].address).locked
    assert locked > 0
    before = chain.balance(CLIENT)
    chain.to_check(first + 1)
    price = shard_price(PRICE, file.shard_size)
    # both periods: shards 0, 1, 2 unproved (0 failed, 1 left, 2 missed, then failed at M = 2)
    collateral = shard_collateral(COLLATERAL, file.shard_size)
    left = collateral - 2 * (collateral * PARAMS.miss_slash_ppm // PPM)
    bonuses = bonus + left * PARAMS.repair_bonus_ppm // PPM
    assert chain.balance(CLIENT) == before + 6 * price + bonuses
    assert chain.last("DealSettled") == (deal_id, bonuses)
    assert chain.ask(PROVIDERS[1].address).locked == 0
    assert chain.totals().bonus == 0 and chain.totals().escrow == 0


# -- gas ---------------------------------------------------------------------------------------------


def test_a_16_shard_check_fits_the_cron_gas_and_a_proof_is_cheap(
    chain: Chain, rng: random.Random
) -> None:
    deal_id, file = formed(chain, rng, n=MAX_SHARDS, duration=2)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    chain.to_window(first)
    period = chain.period()
    item = proof(chain, deal_id, 0, file, period)
    result = chain.call(PROVIDERS[0].address, "prove", period, (item,))
    assert result.succeeded
    assert result.gas_used < 100_000, result.gas_used
    chain.to_check(first)
    receipts = chain.to_check(first + 1)  # 15 shards miss and fail at once, then settlement
    check = [r for r in receipts if r.gas_used > 100_000]
    assert len(check) == 1
    assert check[0].status is CallStatus.SUCCESS
    assert check[0].gas_used < costs.CRON_CALL_GAS // 4, check[0].gas_used
    assert chain.deal(deal_id) is None


def test_forming_a_16_shard_deal_fits_a_block(chain: Chain, rng: random.Random) -> None:
    chosen = providers(chain, MAX_SHARDS)
    file = make_file(rng, n=MAX_SHARDS, k=8)
    bid_id = place_bid(chain, CLIENT, file)
    signatures = tuple(acceptance(chain, p, bid_id, i, file) for i, p in enumerate(chosen))
    result = chain.call(CLIENT, "deal", bid_id, tuple(p.address for p in chosen), signatures)
    assert result.succeeded
    assert result.gas_used < 6_000_000, result.gas_used


# -- every event, once through -----------------------------------------------------------------


def test_lifecycle_emits_every_event(chain: Chain, rng: random.Random) -> None:
    deal_id, file = formed(chain, rng, duration=6)
    first = chain.deal(deal_id).first  # type: ignore[union-attr]
    post_ask(chain, PROVIDERS[7])
    chain.ok(PROVIDERS[7].address, "cancel_ask")
    other = make_file(rng)
    chain.ok(CLIENT, "cancel_bid", place_bid(chain, CLIENT, other))
    place_bid(chain, CLIENT, other)
    chain.to_window(first)
    prove(chain, PROVIDERS[0], deal_id, 0, file)
    prove(chain, PROVIDERS[1], deal_id, 1, file, tamper=True)
    post_ask(chain, PROVIDERS[5])
    chain.ok(PROVIDERS[5].address, "take", deal_id, 1)
    chain.ok(PROVIDERS[0].address, "leave", deal_id, 0)
    chain.to_window(first + 1)
    chain.ok(CLIENT, "cancel_deal", deal_id)
    chain.advance(chain.height + 6 * P)
    assert set(chain.event_names()) == set(EVENT_NAMES)
    for event in chain.events:
        assert event.emitter == MARKET
        decoded = market.decode_event(event_json(event))
        assert decoded is not None and decoded[1] == decode_value(event.data)
        assert event.topics[0] == market.event_topic(decoded[0])


# -- client side -------------------------------------------------------------------------------


def test_messages_and_decoders(chain: Chain, rng: random.Random) -> None:
    keys = PROVIDERS[0]
    message = market.acceptance_message(1, 2, 3, bytes(32), 4, 5, keys.address)
    assert message == sha3_256(
        bytes((22,)),
        b"QOIN/storage/accept/v1",
        (1).to_bytes(8, "big"),
        (2).to_bytes(8, "big"),
        bytes((3,)),
        bytes(32),
        (4).to_bytes(8, "big"),
        (5).to_bytes(8, "big"),
        keys.address.raw,
    )
    assert market.upload_message(1, 2, 3, bytes(32)) == sha3_256(
        bytes((22,)),
        b"QOIN/storage/upload/v1",
        (1).to_bytes(8, "big"),
        (2).to_bytes(8, "big"),
        bytes((3,)),
        bytes(32),
    )
    assert market.shard_price(3, GIB) == 3
    assert market.shard_price(3, GIB + 1) == 4
    assert market.shard_collateral(1, 1) == 1
    assert market.shard_collateral(0, GIB) == 0
    with pytest.raises(market.MarketError):
        market.AskInfo.from_value((1, 2))
    with pytest.raises(market.MarketError):
        market.DealInfo.from_value(1, (CLIENT,) * 10)
    with pytest.raises(market.MarketError):
        market.totals_from_value((1, 2, 3, True))
    with pytest.raises(market.MarketError):
        market.params_from_value((0,) * 10)
    with pytest.raises(market.MarketError):
        market.event_topic("Nothing")
    foreign = {"address": str(OTHER), "topics": [], "data": ""}
    assert market.decode_event(foreign) is None
    unknown = {"address": str(MARKET), "topics": [bytes(32).hex()], "data": "00"}
    assert market.decode_event(unknown) is None
    with pytest.raises(market.MarketError):
        market.decode_event({"address": str(MARKET), "topics": ["zz"], "data": ""})
    with pytest.raises(market.MarketError):
        market.decode_event(
            {"address": str(MARKET), "topics": [topic("AskPosted").hex()], "data": "ff"}
        )


@pytest.fixture
def node_url(tmp_path: Path) -> Iterator[str]:
    """A real execution client over a genesis with devnet storage parameters, serving its user
    RPC on 127.0.0.1."""
    genesis = replace(
        test_genesis(),
        allocation=(Allocation(CLIENT, test_genesis().allocation[0].amount),),
        storage=PARAMS,
    )
    state = ExecutionState.open(tmp_path, genesis)
    try:
        with BackgroundServer(ExecutionClient(state).user_server().app) as server:
            yield server.url
    finally:
        state.close()


def test_market_view_over_a_node(node_url: str) -> None:
    with market.MarketView(node_url) as view:
        assert view.params() == PARAMS
        assert view.totals() == Totals()
        assert view.get_ask(OTHER) is None
        assert view.get_key(OTHER) is None
        assert view.asks() == []
        assert view.get_bid(1) is None
        assert view.get_deal(1) is None
        assert view.deal_of(bytes(32)) is None
        assert view.get_beacon(3) is None
