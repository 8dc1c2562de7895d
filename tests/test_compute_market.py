"""The ``compute-market`` actor driven through real machines, height by height, with the cron run at
the start of every block (:mod:`tests.actorchain`); and its client side
(:mod:`qoin.compute.market`).

Acceptances are real hybrid signatures made with the client side's :func:`sign_acceptance` from
the actor's own views; commitments are the client side's. After every call and every height the
harness checks that the actor's balance is the sum of its totals and that no Shor was made or lost.
Every test names the money it expects exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qoin.actors import ACTOR_NAMES, COMPUTE_MARKET_ADDRESS, builtin_actors
from qoin.actors.base import topic
from qoin.actors.compute_market import (
    EVENT_NAMES,
    KEM_KEY_SIZE,
    MAX_MEDIATORS,
    PAGE_BYTES,
    ZERO_ADDRESS,
    Ask,
    Deal,
    FineReason,
    Mediator,
    Outcome,
    Phase,
    Replica,
    ReplicaState,
    Totals,
    VerdictKind,
)
from qoin.chain.genesis import Allocation
from qoin.compute import market
from qoin.compute.jobspec import Determinism, Executor, JobSpec, Resources, Verification
from qoin.compute.params import (
    MAX_COLLATERAL_PPM,
    PARAMS_KEY,
    ComputeParams,
    ComputeParamsError,
    from_json,
)
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridKeyPair
from qoin.encoding.codec import DecodeError
from qoin.execution import gas as costs
from qoin.execution.abi import Value, decode_value, encode_args
from qoin.execution.account import actor_address, storage_key
from qoin.execution.calls import event_json
from qoin.execution.client import ExecutionClient
from qoin.execution.receipt import CallStatus
from qoin.execution.state import ExecutionState
from qoin.rpc.serve import BackgroundServer
from qoin.storage.params import PPM
from tests.actorchain import CHAIN_ID, START, ActorChain, funded_state
from tests.chainutil import test_genesis
from tests.keys import keypair_for

MARKET = COMPUTE_MARKET_ADDRESS
PARAMS = ComputeParams(
    block_ms=1000,
    staging_blocks=5,
    reveal_blocks=4,
    dispute_blocks=6,
    mediation_blocks=8,
    max_bid_blocks=100,
    max_timeout=3600,
    min_collateral_ppm=500_000,
    fine_client_ppm=500_000,
    min_mediator_stake=10**6,
    mediator_exit_blocks=10,
    mediator_slash_ppm=100_000,
)
TIMEOUT = 10
RUN = PARAMS.run_blocks(TIMEOUT)  # 15 blocks
CPUS = 2
GIB = 1 << 30
PRICE_CPU = 7
PRICE_GPU = 100
K_PPM = 2 * PPM
LARGEST = CPUS * TIMEOUT * PRICE_CPU  # 140: a replica's largest payment at PRICE_CPU
COLLATERAL = LARGEST * 2  # k = 2
FEE = 50
MAX_FEE = 60
STAKE = 10**6
KEM = bytes(i % 251 for i in range(KEM_KEY_SIZE))
NAMES_BY_TOPIC = {topic(name): name for name in EVENT_NAMES}
ROOT = sha3_256(b"the right outputs")
WRONG = sha3_256(b"made-up outputs")
SALT = bytes(range(32))

PROVIDERS = [keypair_for(index=30 + i) for i in range(5)]
CLIENT = keypair_for(index=29).address
OTHER = keypair_for(index=28).address
MED = Address(sha3_256(b"mediator 1"))
MED2 = Address(sha3_256(b"mediator 2"))


@dataclass
class Chain(ActorChain):
    """The compute market over heights."""

    params: ComputeParams = PARAMS

    @classmethod
    def new(cls, people: Sequence[Address], params: ComputeParams = PARAMS) -> Chain:
        everyone = list(people)
        state = funded_state(everyone, MARKET, {PARAMS_KEY: params.encode()})
        chain = cls(state, START, everyone, MARKET, NAMES_BY_TOPIC, params=params)
        chain.supply = chain.total()
        return chain

    def totals(self) -> Totals:
        raw = self.record(b"totals")
        return Totals.decode(raw) if raw else Totals()

    def held(self) -> int:
        t = self.totals()
        return t.escrow + t.collateral + t.stakes + t.burned

    def ask(self, provider: Address) -> Ask:
        raw = self.record(b"A" + provider.raw)
        assert raw is not None
        return Ask.decode(raw)

    def mediator(self, address: Address) -> Mediator:
        raw = self.record(b"M" + address.raw)
        assert raw is not None
        return Mediator.decode(raw)

    def deal(self, deal_id: int) -> Deal | None:
        raw = self.record(b"D" + deal_id.to_bytes(8, "big"))
        return None if raw is None else Deal.decode(raw)

    def replica(self, deal_id: int, index: int) -> Replica | None:
        raw = self.record(b"R" + deal_id.to_bytes(8, "big") + bytes((index,)))
        return None if raw is None else Replica.decode(raw)

    def do(self, caller: Address, call: market.MarketCall) -> Value | None:
        """Run a client-side call; it must succeed."""
        return self.ok(caller, call.method, *call.args, value=call.value)

    def refuse(self, caller: Address, call: market.MarketCall) -> str:
        """Run a client-side call; it must revert; its reason."""
        return self.reverts(caller, call.method, *call.args, value=call.value)


@pytest.fixture
def chain() -> Chain:
    return Chain.new([CLIENT, OTHER, MED, MED2, *(p.address for p in PROVIDERS)])


def post_ask(
    chain: Chain,
    keys: HybridKeyPair,
    *,
    cpus: int = 8,
    memory: int = 16 * GIB,
    gpus: int = 0,
    gpu_model: str = "",
    executors: int = 7,
    price_cpu: int = PRICE_CPU,
    price_gpu: int = PRICE_GPU,
    collateral_ppm: int = K_PPM,
    mediators: Sequence[Address] = (MED, MED2),
    deposit: int = 10**6,
    endpoint: str = "127.0.0.1:9000",
) -> None:
    chain.do(
        keys.address,
        market.post_ask(
            cpus=cpus,
            memory=memory,
            gpus=gpus,
            gpu_model=gpu_model,
            executors=executors,
            price_cpu=price_cpu,
            price_gpu=price_gpu,
            collateral_ppm=collateral_ppm,
            mediators=mediators,
            endpoint=endpoint,
            kem_key=KEM,
            public_key=keys.public,
            deposit=deposit,
        ),
    )


def register(chain: Chain, mediator: Address = MED, fee: int = FEE, stake: int = STAKE) -> None:
    chain.do(mediator, market.register_mediator(fee, "127.0.0.1:9500", KEM, stake))


def spec_for(
    verification: Verification = Verification.NONE,
    *,
    cpus: int = CPUS,
    gpus: int = 0,
    gpu_model: str = "",
    executor: Executor = Executor.SANDBOX,
    timeout: int = TIMEOUT,
) -> JobSpec:
    image = "img@sha256:" + "ab" * 32 if executor is Executor.DOCKER else ""
    command = () if executor is Executor.DOCKER else ("sh", "-c", "echo hello")
    return JobSpec(
        executor=executor,
        command=command,
        image=image,
        resources=Resources(cpus=cpus, memory=GIB, gpus=gpus, gpu_model=gpu_model),
        timeout=timeout,
        determinism=Determinism.EXACT,
        verification=verification,
    )


def bid_call(
    chain: Chain,
    spec: JobSpec,
    *,
    max_price_cpu: int = PRICE_CPU,
    max_price_gpu: int = PRICE_GPU,
    collateral_ppm: int = K_PPM,
    mediators: Sequence[Address] | None = None,
    max_fee: int | None = None,
    deadline: int | None = None,
    extra: int = 0,
) -> market.MarketCall:
    none = spec.verification is Verification.NONE
    call = market.place_bid(
        spec,
        max_price_cpu=max_price_cpu,
        max_price_gpu=max_price_gpu,
        deadline=chain.height + 50 if deadline is None else deadline,
        mediators=(() if none else (MED, MED2)) if mediators is None else mediators,
        max_fee=(0 if none else MAX_FEE) if max_fee is None else max_fee,
        collateral_ppm=collateral_ppm,
    )
    return replace(call, value=call.value + extra)


def place(chain: Chain, spec: JobSpec, extra: int = 0, **kwargs: object) -> int:
    bid_id = chain.do(CLIENT, bid_call(chain, spec, extra=extra, **kwargs))  # type: ignore[arg-type]
    assert isinstance(bid_id, int)
    return bid_id


def acceptance(
    chain: Chain, keys: HybridKeyPair, bid_id: int, replica: int, mediator: Address | None
) -> bytes:
    """What a provider daemon would sign: from the actor's views, by the client side."""
    found = market.BidInfo.from_value(bid_id, chain.view("get_bid", bid_id))
    ask = market.AskInfo.from_value(chain.view("get_ask", keys.address))
    return market.sign_acceptance(keys, CHAIN_ID, found, replica, ask, mediator)


def deal_call(
    chain: Chain,
    bid_id: int,
    providers: Sequence[HybridKeyPair],
    mediator: Address | None,
) -> market.MarketCall:
    signatures = [acceptance(chain, p, bid_id, i, mediator) for i, p in enumerate(providers)]
    return market.form_deal(bid_id, [p.address for p in providers], signatures, mediator)


def formed(
    chain: Chain,
    verification: Verification,
    providers: Sequence[HybridKeyPair] | None = None,
    *,
    with_asks: bool = True,
    mediator: Address | None = MED,
    extra: int = 0,
) -> int:
    """A deal of ``spec_for(verification)``: asks posted and the mediator registered first."""
    chosen = list(providers or PROVIDERS[: verification.replicas])
    if with_asks:
        for keys in chosen:
            post_ask(chain, keys)
    none = verification is Verification.NONE
    if not none and chain.record(b"M" + MED.raw) is None:
        register(chain)
    bid_id = place(chain, spec_for(verification), extra=extra)
    deal_id = chain.do(CLIENT, deal_call(chain, bid_id, chosen, None if none else mediator))
    assert deal_id == bid_id
    return bid_id


def commit(chain: Chain, deal_id: int, keys: HybridKeyPair, root: bytes = ROOT) -> None:
    sealed = market.commitment(deal_id, keys.address, root, SALT)
    chain.do(keys.address, market.commit(deal_id, sealed))


def reveal(
    chain: Chain, deal_id: int, keys: HybridKeyPair, root: bytes = ROOT, usage: int = 15
) -> None:
    chain.do(keys.address, market.reveal(deal_id, root, SALT, usage, 0))


def run_all(
    chain: Chain, deal_id: int, providers: Sequence[HybridKeyPair], roots: Sequence[bytes]
) -> None:
    for keys, root in zip(providers, roots, strict=True):
        commit(chain, deal_id, keys, root)
    for keys, root in zip(providers, roots, strict=True):
        reveal(chain, deal_id, keys, root)


def settled(chain: Chain) -> tuple[int, int, int, int, int]:
    """The last DealSettled's (outcome, paid, refund, slashed, burned)."""
    data = chain.last("DealSettled")
    assert isinstance(data, tuple)
    _, outcome, paid, refund, slashed, burned = data
    return outcome, paid, refund, slashed, burned  # type: ignore[return-value]


def deposit_for(verification: Verification) -> int:
    none = verification is Verification.NONE
    return verification.replicas * LARGEST + (0 if none else MAX_FEE)


# -- registry and parameters ---------------------------------------------------------------------


def test_registered_as_a_builtin_actor() -> None:
    assert "compute-market" in ACTOR_NAMES
    assert actor_address("compute-market") == MARKET
    assert builtin_actors()[MARKET].name == "compute-market"
    assert market.COMPUTE_MARKET == MARKET


def test_params_view_reads_genesis_params_or_mainnet(chain: Chain) -> None:
    assert market.params_from_value(chain.view("params")) == PARAMS
    bare = Chain.new([CLIENT])
    del bare.state[storage_key(MARKET, PARAMS_KEY)]
    assert market.params_from_value(bare.view("params")) == ComputeParams()
    assert PARAMS.run_blocks(TIMEOUT) == 15
    assert PARAMS.run_blocks(1) == 6 and ComputeParams().run_blocks(1) == 61
    assert PARAMS.mediation_budget(TIMEOUT) == 2 * 15 + 8


# -- asks ----------------------------------------------------------------------------------------


def test_ask_posts_updates_and_holds_collateral(chain: Chain) -> None:
    keys = PROVIDERS[0]
    post_ask(chain, keys, gpus=2, gpu_model="H100", deposit=5_000)
    assert chain.last("AskPosted") == (
        8,
        16 * GIB,
        2,
        7,
        PRICE_CPU,
        PRICE_GPU,
        K_PPM,
        "127.0.0.1:9000",
    )
    info = market.AskInfo.from_value(chain.view("get_ask", keys.address))
    assert info == market.AskInfo(
        keys.address,
        8,
        16 * GIB,
        2,
        "H100",
        7,
        0,
        0,
        0,
        PRICE_CPU,
        PRICE_GPU,
        K_PPM,
        (MED, MED2),
        "127.0.0.1:9000",
        KEM,
        5_000,
        0,
        True,
        0,
        0,
        0,
    )
    assert info.offers(Executor.DOCKER) and info.free_gpus == 2
    assert chain.view("get_key", keys.address) == keys.public.encode()
    assert chain.totals() == Totals(collateral=5_000)
    post_ask(chain, keys, cpus=4, executors=1, mediators=(), deposit=1_000, endpoint="h:1")
    info = market.AskInfo.from_value(chain.view("get_ask", keys.address))
    assert (info.cpus, info.executors, info.mediators, info.endpoint, info.free_collateral) == (
        4,
        1,
        (),
        "h:1",
        6_000,
    )
    assert not info.offers(Executor.WASM)
    assert chain.ask(keys.address).position == 0


def test_ask_rules(chain: Chain) -> None:
    keys, other = PROVIDERS[0], PROVIDERS[1]
    address, public = keys.address, keys.public.encode()
    good: list[Value] = [8, GIB, 0, "", 7, 1, 1, K_PPM, (MED,), "h:1", KEM, public]

    def refused(position: int, value: Value) -> str:
        args = list(good)
        args[position] = value
        return chain.reverts(address, "ask", *args)

    assert "executors is a bit set from 1 to 7" in refused(4, 0)
    assert "executors is a bit set from 1 to 7" in refused(4, 8)
    assert "a GPU model needs gpus > 0" in refused(3, "A100")
    assert "a GPU model is at most 64 bytes" in refused(3, "x" * 65)
    assert "collateral_ppm is 500000 to" in refused(7, 499_999)
    assert "collateral_ppm is 500000 to" in refused(7, MAX_COLLATERAL_PPM + 1)
    assert "at most 8 mediators" in refused(8, tuple(Address(bytes([i]) * 32) for i in range(9)))
    assert "a mediator is named twice" in refused(8, (MED, MED))
    assert "endpoint is 1 to 255" in refused(9, "")
    assert "endpoint is 1 to 255" in refused(9, "x" * 256)
    assert "not the caller's" in refused(11, other.public.encode())
    assert "does not decode" in refused(11, public[:-1])
    wrong_kem = chain.call(address, "ask", *good[:10], KEM[:-1], public)
    assert wrong_kem.status is CallStatus.FAILED and "must be 1184 bytes" in wrong_kem.reason
    not_addresses = chain.call(address, "ask", *good[:8], (1,), *good[9:])
    assert not_addresses.status is CallStatus.FAILED
    assert chain.call(address, "ask", *good[:11]).status is CallStatus.FAILED
    assert "has no ask" in chain.reverts(address, "get_ask", address)
    assert "has no ask" in chain.reverts(address, "get_key", address)
    assert chain.totals() == Totals()


def test_capacity_below_what_deals_reserve_reverts(chain: Chain) -> None:
    deal_id = formed(chain, Verification.NONE)
    assert chain.deal(deal_id) is not None
    keys = PROVIDERS[0]
    base: list[Value] = [8, GIB, 0, "", 7, 1, 1, K_PPM, (MED,), "h:1", KEM, keys.public.encode()]
    assert "cpus 1 is below the 2" in chain.reverts(keys.address, "ask", 1, *base[1:])
    assert "memory 5 is below the" in chain.reverts(keys.address, "ask", 8, 5, *base[2:])
    chain.ok(keys.address, "ask", CPUS, GIB, *base[2:])


def test_withdraw_and_cancel_ask(chain: Chain) -> None:
    keys = PROVIDERS[0]
    post_ask(chain, keys, deposit=10_000)
    before = chain.balance(keys.address)
    assert "withdraw 1 to 10000" in chain.refuse(keys.address, market.withdraw(10_001))
    assert "withdraw 1 to 10000" in chain.refuse(keys.address, market.withdraw(0))
    assert "takes no payment" in chain.reverts(keys.address, "withdraw", 5, value=1)
    chain.do(keys.address, market.withdraw(4_000))
    assert chain.balance(keys.address) == before + 4_000
    chain.do(keys.address, market.cancel_ask())
    assert chain.last("AskCancelled") == ()
    assert chain.balance(keys.address) == before + 10_000
    assert chain.totals() == Totals()
    assert market.AskInfo.from_value(chain.view("get_ask", keys.address)).active is False
    assert "already cancelled" in chain.refuse(keys.address, market.cancel_ask())
    assert "has no ask" in chain.refuse(OTHER, market.cancel_ask())
    assert "has no ask" in chain.refuse(OTHER, market.withdraw(1))


def test_asks_page_in_posting_order_skipping_cancelled(chain: Chain) -> None:
    many = PROVIDERS + [keypair_for(index=30 + i) for i in range(len(PROVIDERS), 14)]
    chain = Chain.new([CLIENT, *(k.address for k in many)])
    for keys in many:
        post_ask(chain, keys, deposit=1)
    chain.do(PROVIDERS[2].address, market.cancel_ask())
    seen: list[Address] = []
    start, pages = 0, 0
    while True:
        page = chain.view("asks", start, 32)
        assert isinstance(page, tuple)
        next_start, records = page
        assert isinstance(records, tuple) and isinstance(next_start, int)
        assert len(encode_args(list(records))) <= PAGE_BYTES + 64
        seen.extend(market.AskInfo.from_value(r).provider for r in records)
        pages += 1
        if next_start == 0:
            break
        start = next_start
    assert seen == [k.address for i, k in enumerate(many) if i != 2]
    assert pages > 1  # KEM keys make records big
    assert chain.view("asks", 1, 1) == (2, (chain.view("get_ask", PROVIDERS[1].address),))
    assert chain.view("asks", 100, 5) == (0, ())
    assert "count is 1 to 32" in chain.reverts(CLIENT, "asks", 0, 33)


# -- mediators -----------------------------------------------------------------------------------


def test_mediator_registers_updates_and_lists(chain: Chain) -> None:
    assert "stakes at least 1000000" in chain.refuse(
        MED, market.register_mediator(FEE, "m:1", KEM, STAKE - 1)
    )
    register(chain)
    assert chain.last("MediatorRegistered") == (FEE, STAKE, "127.0.0.1:9500")
    assert chain.totals() == Totals(stakes=STAKE)
    chain.do(MED, market.register_mediator(FEE + 1, "m:2", KEM, 5))  # a top-up and a new fee
    info = market.MediatorInfo.from_value(chain.view("get_mediator", MED))
    assert info == market.MediatorInfo(MED, FEE + 1, STAKE + 5, 0, True, 0, "m:2", KEM, 0, 0)
    register(chain, MED2)
    page = chain.view("mediators", 0, 32)
    assert isinstance(page, tuple)
    assert [market.MediatorInfo.from_value(m).mediator for m in page[1]] == [MED, MED2]  # type: ignore[union-attr]
    assert "is not a mediator" in chain.reverts(CLIENT, "get_mediator", CLIENT)
    failed = chain.call(MED, "register_mediator", FEE, "m:1", KEM[:5], value=STAKE)
    assert failed.status is CallStatus.FAILED
    assert "endpoint is 1 to 255" in chain.refuse(MED, market.register_mediator(1, "", KEM))


def test_mediator_unregisters_and_gets_its_stake_back_after_the_delay(chain: Chain) -> None:
    register(chain)
    before = chain.balance(MED)
    exit_height = chain.do(MED, market.unregister_mediator())
    assert exit_height == START + PARAMS.mediator_exit_blocks
    assert chain.last("MediatorUnregistered") == (exit_height,)
    assert "not an active mediator" in chain.refuse(MED, market.unregister_mediator())
    assert chain.view("mediators", 0, 32) == (0, ())
    chain.advance(START + PARAMS.mediator_exit_blocks - 1)
    assert chain.balance(MED) == before
    chain.advance(START + PARAMS.mediator_exit_blocks)
    assert chain.last("MediatorReleased") == (STAKE,)
    assert chain.balance(MED) == before + STAKE
    assert chain.totals() == Totals()
    assert chain.mediator(MED).stake == 0
    register(chain)  # back, at its first position
    assert chain.mediator(MED).position == 0 and chain.mediator(MED).active


def test_a_mediator_that_comes_back_keeps_its_stake(chain: Chain) -> None:
    register(chain)
    chain.do(MED, market.unregister_mediator())
    register(chain, stake=0)
    chain.advance(START + PARAMS.mediator_exit_blocks + 1)
    assert "MediatorReleased" not in chain.event_names()
    assert chain.mediator(MED).stake == STAKE and chain.mediator(MED).active


def test_a_leaving_mediator_waits_for_its_open_deals(chain: Chain) -> None:
    deal_id = formed(chain, Verification.SPOT)
    chain.do(MED, market.unregister_mediator())
    chain.advance(START + PARAMS.mediator_exit_blocks + 1)
    assert "MediatorReleased" not in chain.event_names()
    assert chain.mediator(MED).deals == 1
    before = chain.balance(MED)
    run_all(chain, deal_id, PROVIDERS[:1], [ROOT])
    chain.advance(chain.height + PARAMS.dispute_blocks)
    assert chain.deal(deal_id) is None
    assert chain.event_names()[-2:] == ["MediatorReleased", "DealSettled"]
    assert chain.balance(MED) == before + STAKE


# -- bids ----------------------------------------------------------------------------------------


def test_bid_holds_the_deposit_and_can_be_cancelled(chain: Chain) -> None:
    spec = spec_for(Verification.REPLICATED)
    before = chain.balance(CLIENT)
    bid_id = place(chain, spec, extra=11)
    deposit = deposit_for(Verification.REPLICATED) + 11
    assert bid_id == 1
    assert chain.balance(CLIENT) == before - deposit
    assert chain.totals() == Totals(escrow=deposit)
    assert chain.last("BidPlaced") == (1, CPUS, GIB, 0, 0, TIMEOUT, 2, START + 50, deposit)
    info = market.BidInfo.from_value(1, chain.view("get_bid", 1))
    assert info == market.BidInfo(
        1,
        CLIENT,
        spec.job_hash,
        CPUS,
        GIB,
        0,
        "",
        Executor.SANDBOX,
        TIMEOUT,
        PRICE_CPU,
        PRICE_GPU,
        Verification.REPLICATED,
        K_PPM,
        (MED, MED2),
        MAX_FEE,
        START + 50,
        deposit,
    )
    assert info.replicas == 2
    assert "only its client" in chain.refuse(OTHER, market.cancel_bid(1))
    chain.do(CLIENT, market.cancel_bid(1))
    assert chain.last("BidCancelled") == (1,)
    assert chain.balance(CLIENT) == before
    assert "no open bid" in chain.refuse(CLIENT, market.cancel_bid(1))
    assert "no open bid" in chain.reverts(CLIENT, "get_bid", 1)
    assert chain.totals() == Totals()


def test_bid_rules(chain: Chain) -> None:
    spot = bid_call(chain, spec_for(Verification.SPOT))
    plenty = 10**12

    def refused(position: int, value: Value, call: market.MarketCall = spot) -> str:
        args = list(call.args)
        args[position] = value
        return chain.reverts(CLIENT, "bid", *args, value=plenty)

    assert "executor is 0 (sandbox), 1 (wasm) or 2 (docker), got 3" in refused(5, 3)
    assert "verification is 0 (none), 1 (spot) or 2 (replicated), got 3" in refused(9, 3)
    assert "at least 1 CPU" in refused(1, 0)
    assert "at least 1 CPU" in refused(2, 0)
    assert "a GPU model needs gpus > 0" in refused(4, "A100")
    assert "timeout is 1 to 3600 seconds, got 0" in refused(6, 0)
    assert "timeout is 1 to 3600 seconds, got 3601" in refused(6, 3601)
    assert "collateral_ppm is at most" in refused(10, MAX_COLLATERAL_PPM + 1)
    assert "at most 8 mediators" in refused(
        11, tuple(Address(bytes([i]) * 32) for i in range(MAX_MEDIATORS + 1))
    )
    assert "verification spot needs at least one mediator" in refused(11, ())
    none = bid_call(chain, spec_for())
    assert "verification none has no mediator" in refused(11, (MED,), none)
    assert "verification none has no mediator" in refused(12, 1, none)
    assert "the deadline must lie in heights 1001 to 1100" in refused(13, START)
    assert "the deadline must lie in heights" in refused(13, START + 101)
    assert f"at least {LARGEST + MAX_FEE} Shor" in chain.reverts(
        CLIENT, "bid", *spot.args, value=spot.value - 1
    )
    assert chain.call(CLIENT, "bid", *spot.args[:-1], value=plenty).status is CallStatus.FAILED
    short_job = chain.call(CLIENT, "bid", b"x", *spot.args[1:], value=plenty)
    assert short_job.status is CallStatus.FAILED
    assert chain.totals() == Totals()


def test_bid_expires_with_a_full_refund(chain: Chain) -> None:
    before = chain.balance(CLIENT)
    bid_id = place(chain, spec_for(Verification.SPOT), extra=5)
    chain.advance(START + 49)
    assert chain.view("get_bid", bid_id) is not None
    receipts = chain.advance(START + 50)
    assert [decode_value(r.return_data) for r in receipts] == [True]
    assert chain.last("BidExpired") == (bid_id, deposit_for(Verification.SPOT) + 5)
    assert chain.balance(CLIENT) == before
    assert chain.totals() == Totals()


# -- deals ---------------------------------------------------------------------------------------


def test_deal_reserves_resources_locks_collateral_and_refunds_the_rest(chain: Chain) -> None:
    chosen = PROVIDERS[:2]
    before = chain.balance(CLIENT)
    deal_id = formed(chain, Verification.REPLICATED, chosen, extra=9)
    escrow = 2 * LARGEST + FEE
    assert chain.balance(CLIENT) == before - escrow
    assert chain.last("DealFormed") == (
        deal_id,
        spec_for(Verification.REPLICATED).job_hash,
        tuple(p.address for p in chosen),
        MED,
        START + RUN,
        escrow,
    )
    for keys in chosen:
        ask = chain.ask(keys.address)
        assert (ask.used_cpus, ask.used_memory, ask.used_gpus) == (CPUS, GIB, 0)
        assert (ask.free, ask.locked) == (10**6 - COLLATERAL, COLLATERAL)
    assert chain.mediator(MED).deals == 1
    info = market.DealInfo.from_value(deal_id, chain.view("get_deal", deal_id))
    assert (info.client, info.mediator, info.verification, info.phase, info.deadline) == (
        CLIENT,
        MED,
        Verification.REPLICATED,
        Phase.RUN,
        START + RUN,
    )
    assert (info.escrow, info.fee, info.disputed, info.formed) == (escrow, FEE, False, START)
    assert [r.provider for r in info.replicas] == [p.address for p in chosen]
    assert info.replicas[0] == market.ReplicaInfo(
        0,
        chosen[0].address,
        PRICE_CPU,
        PRICE_GPU,
        COLLATERAL,
        ReplicaState.ASSIGNED,
        None,
        None,
        0,
        0,
    )
    assert "no open bid" in chain.reverts(CLIENT, "get_bid", deal_id)
    assert chain.totals() == Totals(escrow=escrow, collateral=2 * 10**6, stakes=STAKE)


def test_deal_rules(chain: Chain) -> None:
    for keys in PROVIDERS[:3]:
        post_ask(chain, keys)
    post_ask(chain, PROVIDERS[3], executors=1, mediators=(MED2,))
    register(chain)
    register(chain, MED2, fee=MAX_FEE + 1)
    bid_id = place(chain, spec_for(Verification.REPLICATED, executor=Executor.DOCKER))
    pair = PROVIDERS[:2]

    def refused(
        providers: Sequence[HybridKeyPair], mediator: Address | None = MED, caller: Address = CLIENT
    ) -> str:
        return chain.refuse(caller, deal_call(chain, bid_id, providers, mediator))

    assert "only its client" in refused(pair, caller=OTHER)
    assert "needs 2 providers" in refused(PROVIDERS[:1])
    assert "needs 2 providers" in refused(PROVIDERS[:3])
    assert "distinct" in refused([PROVIDERS[0], PROVIDERS[0]])
    assert "needs a mediator" in refused(pair, None)
    assert "does not accept mediator" in refused(pair, OTHER)
    assert "charges 61 Shor, the bid pays at most 60" in refused(pair, MED2)
    signature = acceptance(chain, PROVIDERS[0], bid_id, 0, MED)
    no_ask = market.form_deal(
        bid_id, [PROVIDERS[0].address, PROVIDERS[4].address], [signature, signature], MED
    )
    assert "replica 1: provider" in chain.refuse(CLIENT, no_ask)
    assert "has no active ask" in chain.refuse(CLIENT, no_ask)
    assert "does not offer the docker executor" in refused([PROVIDERS[0], PROVIDERS[3]])
    chain.do(MED, market.unregister_mediator())
    assert "is not an active mediator" in refused(pair)
    register(chain, stake=0)
    bad = deal_call(chain, bid_id, pair, MED)
    signatures = list(bad.args[2])  # type: ignore[arg-type]
    signatures[1] = signatures[0]
    reason = chain.reverts(CLIENT, "deal", bid_id, bad.args[1], tuple(signatures), MED)
    assert "replica 1" in reason and "the acceptance signature does not verify" in reason
    wrong_mediator = deal_call(chain, bid_id, pair, MED2).args[2]  # signed for another mediator
    assert "does not verify" in chain.reverts(
        CLIENT, "deal", bid_id, bad.args[1], wrong_mediator, MED
    )
    assert chain.call(CLIENT, "deal", bid_id, (1, 2), bad.args[2], MED).status is CallStatus.FAILED
    assert chain.totals().collateral == 4 * 10**6  # nothing locked by the refusals
    late = deal_call(chain, bid_id, pair, MED)
    chain.advance(START + 49)
    chain.height = START + 50  # the bid's deadline, its expiry delayed (more than 256 cron calls)
    assert f"bid {bid_id}: its deadline {START + 50} has passed" in chain.refuse(CLIENT, late)
    chain.advance(START + 51)
    assert "no open bid" in chain.refuse(CLIENT, late)


def test_deal_refuses_providers_that_cannot_take_the_job(chain: Chain) -> None:
    register(chain)
    keys = PROVIDERS[0]
    spec = spec_for(Verification.SPOT, cpus=4, gpus=1, gpu_model="H100")

    def reason(**ask: object) -> str:
        post_ask(chain, keys, **ask)  # type: ignore[arg-type]
        bid_id = place(chain, spec, collateral_ppm=K_PPM)
        return chain.refuse(CLIENT, deal_call(chain, bid_id, [keys], MED))

    assert "has 3 CPUs free, the job needs 4" in reason(cpus=3, gpus=1, gpu_model="H100")
    assert "bytes of memory free" in reason(memory=5, gpus=1, gpu_model="H100")
    assert "has 0 GPUs free, the job needs 1" in reason(gpus=0)
    assert "offers GPU model 'A100', not 'H100'" in reason(gpus=1, gpu_model="A100")
    assert "asks 8/100 Shor per CPU/GPU-second" in reason(price_cpu=8, gpus=1, gpu_model="H100")
    assert "asks 7/101" in reason(price_gpu=101, gpus=1, gpu_model="H100")
    assert "collateral multiple 1000000 ppm, the bid wants 2000000" in reason(
        collateral_ppm=PPM, gpus=1, gpu_model="H100"
    )
    assert "does not accept mediator" in reason(mediators=(MED2,), gpus=1, gpu_model="H100")
    chain.do(keys.address, market.withdraw(chain.ask(keys.address).free))
    assert "has 5 Shor free collateral, needs 2560" in reason(deposit=5, gpus=1, gpu_model="H100")


def test_mediator_may_not_be_a_party(chain: Chain) -> None:
    keys = PROVIDERS[0]
    post_ask(chain, keys, mediators=(keys.address, CLIENT))
    chain.do(keys.address, market.register_mediator(FEE, "m:1", KEM, STAKE))
    chain.do(CLIENT, market.register_mediator(FEE, "m:1", KEM, STAKE))
    mine = place(chain, spec_for(Verification.SPOT), mediators=(keys.address, CLIENT))
    assert "cannot mediate its own deal" in chain.refuse(
        CLIENT, deal_call(chain, mine, [keys], keys.address)
    )
    assert "the client cannot mediate its own deal" in chain.refuse(
        CLIENT, deal_call(chain, mine, [keys], CLIENT)
    )
    none = place(chain, spec_for())
    assert "verification none has no mediator" in chain.refuse(
        CLIENT, deal_call(chain, none, [keys], CLIENT)
    )


def test_a_slashed_mediator_below_the_minimum_stake_is_refused(chain: Chain) -> None:
    deal_id = formed(chain, Verification.SPOT)
    run_all(chain, deal_id, PROVIDERS[:1], [ROOT])
    chain.do(CLIENT, market.dispute(deal_id))
    chain.advance(chain.height + PARAMS.mediation_budget(TIMEOUT))
    assert chain.mediator(MED).stake == STAKE - STAKE // 10
    bid_id = place(chain, spec_for(Verification.SPOT))
    assert "below 1000000" in chain.refuse(CLIENT, deal_call(chain, bid_id, PROVIDERS[:1], MED))


def test_params_bounds_and_encoding() -> None:
    assert ComputeParams.decode(PARAMS.encode()) == PARAMS
    for change, reason in (
        ({"block_ms": 0}, "block_ms"),
        ({"reveal_blocks": 0}, "reveal_blocks"),
        ({"dispute_blocks": 0}, "dispute_blocks"),
        ({"mediation_blocks": 0}, "mediation_blocks"),
        ({"staging_blocks": (1 << 20) + 1}, "staging_blocks"),
        ({"max_bid_blocks": 0}, "max_bid_blocks"),
        ({"max_timeout": 30 * 86_400 + 1}, "max_timeout"),
        ({"min_collateral_ppm": MAX_COLLATERAL_PPM + 1}, "min_collateral_ppm"),
        ({"fine_client_ppm": PPM + 1}, "fine_client_ppm"),
        ({"min_mediator_stake": 0}, "min_mediator_stake"),
        ({"mediator_exit_blocks": (1 << 24) + 1}, "mediator_exit_blocks"),
        ({"mediator_slash_ppm": PPM + 1}, "mediator_slash_ppm"),
    ):
        with pytest.raises(ComputeParamsError, match=reason):
            replace(PARAMS, **change)
    with pytest.raises(ComputeParamsError, match="block_ms"):
        ComputeParams.decode(b"\x00" + replace(PARAMS, block_ms=5).encode()[1:])
    with pytest.raises(DecodeError):
        ComputeParams.decode(PARAMS.encode() + b"\x00")
    with pytest.raises(ComputeParamsError, match="must be an object"):
        from_json([])


def test_a_cancelled_asks_collateral_is_sent_back_at_settlement(chain: Chain) -> None:
    keys = PROVIDERS[0]
    deal_id = formed(chain, Verification.NONE)
    before = chain.balance(keys.address)
    chain.do(keys.address, market.cancel_ask())
    assert chain.balance(keys.address) == before + 10**6 - COLLATERAL  # the free part now
    run_all(chain, deal_id, [keys], [ROOT])
    assert chain.balance(keys.address) == before + 10**6 + 105  # the locked part at the end
    ask = chain.ask(keys.address)
    assert (ask.free, ask.locked, ask.used_cpus, ask.active) == (0, 0, 0, False)
    assert chain.totals() == Totals()


# -- the happy paths -----------------------------------------------------------------------------


def test_none_pays_at_the_reveal(chain: Chain) -> None:
    keys = PROVIDERS[0]
    before_client = chain.balance(CLIENT)
    deal_id = formed(chain, Verification.NONE, extra=3)
    before_provider = chain.balance(keys.address)
    mark = len(chain.events)
    commit(chain, deal_id, keys)
    assert chain.last("ResultCommitted") == (deal_id, 0)
    assert chain.last("PhaseStarted") == (deal_id, int(Phase.REVEAL), chain.height + 4)
    reveal(chain, deal_id, keys, usage=15)
    assert chain.event_names(mark) == [
        "ResultCommitted",
        "PhaseStarted",
        "ResultRevealed",
        "ProviderPaid",
        "DealSettled",
    ]
    assert chain.last("ResultRevealed") == (deal_id, 0, ROOT, 15, 0)
    assert chain.last("ProviderPaid") == (deal_id, 0, 15 * PRICE_CPU)
    assert settled(chain) == (Outcome.COMPLETED, 105, LARGEST - 105, 0, 0)
    assert chain.balance(keys.address) == before_provider + 105
    assert chain.balance(CLIENT) == before_client - 105
    assert chain.deal(deal_id) is None and chain.replica(deal_id, 0) is None
    ask = chain.ask(keys.address)
    assert (ask.used_cpus, ask.locked, ask.free, ask.settled) == (0, 0, 10**6, 1)
    assert chain.totals() == Totals(collateral=10**6)
    assert "no open deal" in chain.reverts(CLIENT, "get_deal", deal_id)


def test_spot_pays_after_the_dispute_window(chain: Chain) -> None:
    keys = PROVIDERS[0]
    before_client = chain.balance(CLIENT)
    deal_id = formed(chain, Verification.SPOT)
    run_all(chain, deal_id, [keys], [ROOT])
    found = chain.deal(deal_id)
    assert found is not None and found.phase is Phase.CHECK
    assert found.deadline == chain.height + PARAMS.dispute_blocks
    chain.advance(found.deadline - 1)
    assert chain.deal(deal_id) is not None
    chain.advance(found.deadline)
    assert settled(chain) == (Outcome.COMPLETED, 105, LARGEST + FEE - 105, 0, 0)
    assert chain.balance(CLIENT) == before_client - 105
    assert chain.mediator(MED).deals == 0


def test_replicated_equal_roots_pay_both(chain: Chain) -> None:
    chosen = PROVIDERS[:2]
    before = [chain.balance(p.address) for p in chosen]
    deal_id = formed(chain, Verification.REPLICATED)
    commit(chain, deal_id, chosen[0])
    assert chain.deal(deal_id).phase is Phase.RUN  # type: ignore[union-attr]
    commit(chain, deal_id, chosen[1])
    assert chain.deal(deal_id).phase is Phase.REVEAL  # type: ignore[union-attr]
    reveal(chain, deal_id, chosen[0], usage=10)
    reveal(chain, deal_id, chosen[1], usage=10**9)  # capped at the 20 CPU-seconds reserved
    assert chain.last("ResultRevealed") == (deal_id, 1, ROOT, CPUS * TIMEOUT, 0)
    chain.advance(chain.height + PARAMS.dispute_blocks)
    assert settled(chain) == (Outcome.COMPLETED, 70 + 140, 2 * LARGEST + FEE - 210, 0, 0)
    after = [chain.balance(p.address) for p in chosen]
    assert after[0] - before[0] == 70 - 10**6 and after[1] - before[1] == 140 - 10**6
    assert [chain.ask(p.address).settled for p in chosen] == [1, 1]


# -- commit and reveal rules ---------------------------------------------------------------------


def test_commit_and_reveal_rules(chain: Chain) -> None:
    chosen = PROVIDERS[:2]
    deal_id = formed(chain, Verification.REPLICATED)
    sealed = market.commitment(deal_id, chosen[0].address, ROOT, SALT)
    assert "not one of its providers" in chain.refuse(OTHER, market.commit(deal_id, sealed))
    assert "no open deal" in chain.refuse(chosen[0].address, market.commit(99, sealed))
    assert "only in the reveal phase" in chain.refuse(
        chosen[0].address, market.reveal(deal_id, ROOT, SALT, 1, 0)
    )
    commit(chain, deal_id, chosen[0])
    assert "already committed" in chain.refuse(chosen[0].address, market.commit(deal_id, sealed))
    failed = chain.call(chosen[0].address, "commit", deal_id, b"short")
    assert failed.status is CallStatus.FAILED
    commit(chain, deal_id, chosen[1])
    assert "only in the run phase" in chain.refuse(
        chosen[0].address, market.commit(deal_id, sealed)
    )
    wrong_salt = chain.call(chosen[1].address, "reveal", deal_id, ROOT, bytes(32), 1, 0)
    assert "do not open the commitment" in wrong_salt.reason
    assert "do not open the commitment" in chain.refuse(
        chosen[0].address, market.reveal(deal_id, WRONG, SALT, 1, 0)
    )
    reveal(chain, deal_id, chosen[0])
    assert "already revealed" in chain.refuse(
        chosen[0].address, market.reveal(deal_id, ROOT, SALT, 1, 0)
    )
    chain.advance(chain.deal(deal_id).deadline)  # type: ignore[union-attr]
    assert "only in the reveal phase" in chain.refuse(
        chosen[1].address, market.reveal(deal_id, ROOT, SALT, 1, 0)
    )
    assert "takes no payment" in chain.reverts(
        chosen[0].address, "commit", deal_id, sealed, value=1
    )


def test_copying_a_reveal_does_not_open_a_commitment(chain: Chain) -> None:
    """A cheater that commits the honest provider's commitment cannot open it: the provider's
    address is inside it."""
    honest, cheat = PROVIDERS[:2]
    deal_id = formed(chain, Verification.REPLICATED)
    sealed = market.commitment(deal_id, honest.address, ROOT, SALT)
    chain.do(honest.address, market.commit(deal_id, sealed))
    chain.do(cheat.address, market.commit(deal_id, sealed))
    reveal(chain, deal_id, honest)
    assert "do not open the commitment" in chain.refuse(
        cheat.address, market.reveal(deal_id, ROOT, SALT, 15, 0)
    )


def test_a_commit_at_the_deadline_is_too_late(chain: Chain) -> None:
    deal_id = formed(chain, Verification.NONE)
    chain.advance(START + RUN - 1)
    commit(chain, deal_id, PROVIDERS[0])  # the last height of the run phase
    other = formed(chain, Verification.NONE, PROVIDERS[1:2])
    found = chain.deal(other)
    assert found is not None and found.phase is Phase.RUN
    chain.height = found.deadline  # a block whose cron was delayed (more than 256 calls due)
    sealed = market.commitment(other, PROVIDERS[1].address, ROOT, SALT)
    assert "its run phase ended at" in chain.refuse(
        PROVIDERS[1].address, market.commit(other, sealed)
    )


# -- timeouts ------------------------------------------------------------------------------------


def test_nobody_commits_the_client_is_refunded_and_the_provider_slashed(chain: Chain) -> None:
    keys = PROVIDERS[0]
    before = chain.balance(CLIENT)
    deal_id = formed(chain, Verification.SPOT)
    chain.advance(START + RUN - 1)
    assert chain.deal(deal_id) is not None
    mark = len(chain.events)
    chain.advance(START + RUN)
    assert chain.event_names(mark) == ["DealTimedOut", "ProviderFined", "DealSettled"]
    assert chain.last("DealTimedOut") == (deal_id, int(Phase.RUN), 1)
    assert chain.last("ProviderFined") == (deal_id, 0, COLLATERAL, int(FineReason.NOT_DELIVERED))
    share = COLLATERAL // 2
    assert settled(chain) == (Outcome.UNDELIVERED, 0, LARGEST + FEE + share, COLLATERAL, share)
    assert chain.balance(CLIENT) == before + share
    ask = chain.ask(keys.address)
    assert (ask.not_delivered, ask.used_cpus, ask.locked, ask.free) == (
        1,
        0,
        0,
        10**6 - COLLATERAL,
    )
    assert chain.totals() == Totals(collateral=10**6 - COLLATERAL, stakes=STAKE, burned=share)
    assert chain.mediator(MED).deals == 0


def test_one_replica_missing_the_run_the_other_is_paid(chain: Chain) -> None:
    honest, lazy = PROVIDERS[:2]
    deal_id = formed(chain, Verification.REPLICATED)
    commit(chain, deal_id, honest)
    chain.advance(START + RUN)
    assert chain.last("DealTimedOut") == (deal_id, int(Phase.RUN), 1)
    found = chain.deal(deal_id)
    assert found is not None and found.phase is Phase.REVEAL
    assert "never committed" in chain.refuse(lazy.address, market.reveal(deal_id, ROOT, SALT, 1, 0))
    reveal(chain, deal_id, honest)  # the only committed replica: on to the dispute window
    assert chain.deal(deal_id).phase is Phase.CHECK  # type: ignore[union-attr]
    chain.advance(chain.height + PARAMS.dispute_blocks)
    share = COLLATERAL // 2
    assert settled(chain) == (
        Outcome.COMPLETED,
        105,
        2 * LARGEST + FEE - 105 + share,
        COLLATERAL,
        share,
    )
    assert chain.ask(lazy.address).not_delivered == 1
    assert chain.ask(honest.address).settled == 1


def test_a_commit_never_revealed_is_not_delivered(chain: Chain) -> None:
    keys = PROVIDERS[0]
    deal_id = formed(chain, Verification.NONE)
    commit(chain, deal_id, keys)
    deadline = chain.deal(deal_id).deadline  # type: ignore[union-attr]
    mark = len(chain.events)
    chain.advance(deadline)
    assert chain.event_names(mark) == ["DealTimedOut", "ProviderFined", "DealSettled"]
    assert chain.last("DealTimedOut") == (deal_id, int(Phase.REVEAL), 1)
    share = COLLATERAL // 2
    assert settled(chain) == (Outcome.UNDELIVERED, 0, LARGEST + share, COLLATERAL, share)


def test_replicated_one_reveal_missing_the_other_goes_to_the_window(chain: Chain) -> None:
    honest, withholder = PROVIDERS[:2]
    deal_id = formed(chain, Verification.REPLICATED)
    commit(chain, deal_id, honest)
    commit(chain, deal_id, withholder)
    reveal(chain, deal_id, honest)
    chain.advance(chain.deal(deal_id).deadline)  # type: ignore[union-attr]
    assert chain.last("DealTimedOut") == (deal_id, int(Phase.REVEAL), 1)
    assert chain.deal(deal_id).phase is Phase.CHECK  # type: ignore[union-attr]
    chain.advance(chain.height + PARAMS.dispute_blocks)
    outcome, paid, _, slashed, _ = settled(chain)
    assert (outcome, paid, slashed) == (Outcome.COMPLETED, 105, COLLATERAL)


def test_mediation_timeout_refunds_the_client_and_slashes_the_mediator(chain: Chain) -> None:
    honest, cheat = PROVIDERS[:2]
    before = {a: chain.balance(a) for a in (CLIENT, honest.address, cheat.address)}
    deal_id = formed(chain, Verification.REPLICATED)
    run_all(chain, deal_id, [honest, cheat], [ROOT, WRONG])
    found = chain.deal(deal_id)
    assert found is not None and found.phase is Phase.MEDIATION
    assert chain.last("MediationStarted") == (deal_id, found.deadline, False)
    assert found.deadline == chain.height + PARAMS.mediation_budget(TIMEOUT)
    mark = len(chain.events)
    chain.advance(found.deadline)
    assert chain.event_names(mark) == ["MediationTimedOut", "DealSettled"]
    slashed = STAKE // 10
    assert chain.last("MediationTimedOut") == (deal_id, slashed)
    assert settled(chain) == (Outcome.MEDIATION_TIMED_OUT, 0, 2 * LARGEST + FEE, 0, 0)
    assert chain.balance(CLIENT) == before[CLIENT]
    for keys in (honest, cheat):
        assert chain.balance(keys.address) == before[keys.address] - 10**6  # deposit, all free
        assert chain.ask(keys.address).free == 10**6
    record = chain.mediator(MED)
    assert (record.stake, record.missed, record.deals) == (STAKE - slashed, 1, 0)
    assert chain.totals() == Totals(collateral=2 * 10**6, stakes=STAKE - slashed, burned=slashed)


# -- disputes and verdicts -----------------------------------------------------------------------


def test_replicated_mismatch_the_cheater_is_fined(chain: Chain) -> None:
    honest, cheat = PROVIDERS[:2]
    before = {a: chain.balance(a) for a in (CLIENT, honest.address, cheat.address, MED)}
    deal_id = formed(chain, Verification.REPLICATED)
    run_all(chain, deal_id, [honest, cheat], [ROOT, WRONG])
    assert chain.deal(deal_id).phase is Phase.MEDIATION  # type: ignore[union-attr]
    assert "only in the check phase" in chain.refuse(CLIENT, market.dispute(deal_id))
    mark = len(chain.events)
    chain.do(MED, market.verdict(deal_id, VerdictKind.WRONG_RESULT, ROOT))
    assert chain.event_names(mark) == ["Verdict", "ProviderPaid", "ProviderFined", "DealSettled"]
    assert chain.last("Verdict") == (deal_id, int(VerdictKind.WRONG_RESULT), ROOT, FEE)
    assert chain.last("ProviderFined") == (deal_id, 1, COLLATERAL, int(FineReason.WRONG_RESULT))
    share = (COLLATERAL - FEE) // 2  # 115: the fee comes out of the fine first
    burned = COLLATERAL - FEE - share
    refund = 2 * LARGEST + FEE - 105  # the reserve back: the cheater paid the fee
    assert settled(chain) == (Outcome.MEDIATED, 105, refund + share, COLLATERAL, burned)
    assert chain.balance(CLIENT) == before[CLIENT] - 105 + share
    assert chain.balance(honest.address) == before[honest.address] - 10**6 + 105
    assert chain.balance(MED) == before[MED] - STAKE + FEE
    assert chain.ask(cheat.address).fined == 1
    assert chain.ask(cheat.address).free == 10**6 - COLLATERAL
    assert chain.mediator(MED).verdicts == 1
    assert chain.totals() == Totals(collateral=2 * 10**6 - COLLATERAL, stakes=STAKE, burned=burned)


def test_a_fee_the_fine_does_not_cover_comes_from_the_reserve(chain: Chain) -> None:
    honest, cheat = PROVIDERS[:2]
    post_ask(chain, honest)
    post_ask(chain, cheat, price_cpu=1, collateral_ppm=500_000)  # collateral 10 < fee 50
    register(chain)
    bid_id = place(chain, spec_for(Verification.REPLICATED), collateral_ppm=500_000)
    chain.do(CLIENT, deal_call(chain, bid_id, [honest, cheat], MED))
    assert chain.replica(bid_id, 1).collateral == 10  # type: ignore[union-attr]
    run_all(chain, bid_id, [honest, cheat], [ROOT, WRONG])
    before = chain.balance(MED)
    chain.do(MED, market.verdict(bid_id, VerdictKind.WRONG_RESULT, ROOT))
    escrow = LARGEST + 20 + FEE
    assert settled(chain) == (Outcome.MEDIATED, 105, escrow - 105 - (FEE - 10), 10, 0)
    assert chain.balance(MED) == before + FEE


def test_both_wrong_both_fined(chain: Chain) -> None:
    deal_id = formed(chain, Verification.REPLICATED)
    run_all(chain, deal_id, PROVIDERS[:2], [WRONG, sha3_256(b"other")])
    chain.do(MED, market.verdict(deal_id, VerdictKind.WRONG_RESULT, ROOT))
    outcome, paid, refund, slashed, burned = settled(chain)
    share = (2 * COLLATERAL - FEE) // 2
    assert (outcome, paid, slashed) == (Outcome.MEDIATED, 0, 2 * COLLATERAL)
    assert refund == 2 * LARGEST + FEE + share
    assert burned == 2 * COLLATERAL - FEE - share


def test_client_disputing_a_correct_result_pays_the_mediation(chain: Chain) -> None:
    keys = PROVIDERS[0]
    before = {a: chain.balance(a) for a in (CLIENT, MED)}
    deal_id = formed(chain, Verification.SPOT)
    run_all(chain, deal_id, [keys], [ROOT])
    assert "only its client" in chain.refuse(OTHER, market.dispute(deal_id))
    mark = len(chain.events)
    chain.do(CLIENT, market.dispute(deal_id))
    assert chain.event_names(mark) == ["DisputeOpened", "PhaseStarted", "MediationStarted"]
    found = chain.deal(deal_id)
    assert found is not None and found.disputed and found.phase is Phase.MEDIATION
    assert chain.last("MediationStarted") == (deal_id, found.deadline, True)
    assert "only its mediator" in chain.refuse(
        OTHER, market.verdict(deal_id, VerdictKind.CORRECT_RESULT, ROOT)
    )
    assert "that is a wrong result" in chain.refuse(
        MED, market.verdict(deal_id, VerdictKind.CORRECT_RESULT, WRONG)
    )
    assert "that is a correct result" in chain.refuse(
        MED, market.verdict(deal_id, VerdictKind.WRONG_RESULT, ROOT)
    )
    assert "verdict kind is 1" in chain.reverts(MED, "verdict", deal_id, 0, ROOT)
    assert "verdict kind is 1" in chain.reverts(MED, "verdict", deal_id, 5, ROOT)
    chain.do(MED, market.verdict(deal_id, VerdictKind.CORRECT_RESULT, ROOT))
    assert settled(chain) == (Outcome.MEDIATED, 105, LARGEST - 105, 0, 0)
    assert chain.balance(CLIENT) == before[CLIENT] - 105 - FEE
    assert chain.balance(MED) == before[MED] - STAKE + FEE
    assert chain.ask(keys.address).settled == 1


def test_non_deterministic_job_is_the_clients_fault(chain: Chain) -> None:
    chosen = PROVIDERS[:2]
    before = chain.balance(CLIENT)
    deal_id = formed(chain, Verification.REPLICATED)
    run_all(chain, deal_id, chosen, [ROOT, WRONG])
    chain.do(MED, market.verdict(deal_id, VerdictKind.NON_DETERMINISTIC))
    assert settled(chain) == (Outcome.MEDIATED, 210, 2 * LARGEST - 210, 0, 0)
    assert chain.balance(CLIENT) == before - 210 - FEE
    assert [chain.ask(p.address).fined for p in chosen] == [0, 0]


def test_not_delivered_verdict(chain: Chain) -> None:
    keys = PROVIDERS[0]
    deal_id = formed(chain, Verification.SPOT)
    run_all(chain, deal_id, [keys], [ROOT])
    chain.do(CLIENT, market.dispute(deal_id))
    chain.do(MED, market.verdict(deal_id, VerdictKind.NOT_DELIVERED, bytes(32)))
    assert chain.last("ProviderFined") == (deal_id, 0, COLLATERAL, int(FineReason.NOT_DELIVERED))
    share = (COLLATERAL - FEE) // 2
    outcome, paid, refund, _, _ = settled(chain)
    assert (outcome, paid, refund) == (Outcome.MEDIATED, 0, LARGEST + FEE + share)
    assert chain.ask(keys.address).not_delivered == 1


def test_dispute_and_verdict_timing(chain: Chain) -> None:
    keys = PROVIDERS[0]
    deal_id = formed(chain, Verification.SPOT)
    assert "only in the check phase" in chain.refuse(CLIENT, market.dispute(deal_id))
    assert "only in the mediation phase" in chain.refuse(
        MED, market.verdict(deal_id, VerdictKind.WRONG_RESULT, ROOT)
    )
    run_all(chain, deal_id, [keys], [ROOT])
    deadline = chain.deal(deal_id).deadline  # type: ignore[union-attr]
    chain.height = deadline  # a block whose cron was delayed: the window is over all the same
    assert "its check phase ended" in chain.refuse(CLIENT, market.dispute(deal_id))
    chain.height = deadline - 1
    chain.do(CLIENT, market.dispute(deal_id))
    found = chain.deal(deal_id)
    assert found is not None
    chain.height = found.deadline
    assert "its mediation phase ended" in chain.refuse(
        MED, market.verdict(deal_id, VerdictKind.WRONG_RESULT, WRONG)
    )


def test_a_deal_is_never_settled_twice(chain: Chain) -> None:
    """Every cron entry a deal left behind (the run deadline passed early, the reveal deadline)
    finds it gone or moved on: stale, False, nothing paid."""
    keys = PROVIDERS[0]
    deal_id = formed(chain, Verification.NONE)
    run_all(chain, deal_id, [keys], [ROOT])
    paid = chain.event_names().count("ProviderPaid")
    receipts = chain.advance(START + 60)  # the reveal and run deadlines, the bid's expiry
    assert [decode_value(r.return_data) for r in receipts] == [False, False, False]
    assert chain.event_names().count("ProviderPaid") == paid == 1
    assert "no open deal" in chain.refuse(keys.address, market.reveal(deal_id, ROOT, SALT, 1, 0))
    assert "cron only" in chain.reverts(CLIENT, "cron_phase", deal_id, 1, START + RUN)


# -- gas, events, client side --------------------------------------------------------------------


def test_gas_forming_and_settling_is_bounded(chain: Chain) -> None:
    for keys in PROVIDERS[:2]:
        post_ask(chain, keys)
    register(chain)
    bid_id = place(chain, spec_for(Verification.REPLICATED))
    call = deal_call(chain, bid_id, PROVIDERS[:2], MED)
    result = chain.call(CLIENT, call.method, *call.args)
    assert result.succeeded and result.gas_used < 600_000, result.gas_used
    run_all(chain, bid_id, PROVIDERS[:2], [ROOT, ROOT])
    receipts = chain.advance(chain.height + PARAMS.dispute_blocks)
    assert max(r.gas_used for r in receipts) < costs.CRON_CALL_GAS // 10


def test_lifecycle_emits_every_event(chain: Chain) -> None:
    mediated = formed(chain, Verification.REPLICATED)
    run_all(chain, mediated, PROVIDERS[:2], [ROOT, WRONG])
    chain.do(MED, market.verdict(mediated, VerdictKind.WRONG_RESULT, ROOT))
    post_ask(chain, PROVIDERS[4])
    chain.do(PROVIDERS[4].address, market.cancel_ask())
    chain.do(CLIENT, market.cancel_bid(place(chain, spec_for())))
    place(chain, spec_for())  # expires
    timed_out = formed(chain, Verification.SPOT, PROVIDERS[2:3])
    run_all(chain, timed_out, PROVIDERS[2:3], [ROOT])
    chain.do(CLIENT, market.dispute(timed_out))
    formed(chain, Verification.NONE, PROVIDERS[3:4])  # nobody commits
    register(chain, MED2)
    chain.do(MED2, market.unregister_mediator())
    chain.advance(chain.height + 60)
    contracts = {"ContractBidPlaced", "AnswerRevealed", "CallbackScheduled", "CallbackDone"}
    assert set(chain.event_names()) == set(EVENT_NAMES) - contracts  # tests/test_compute_contracts
    for event in chain.events:
        assert event.emitter == MARKET
        decoded = market.decode_event(event_json(event))
        assert decoded is not None and decoded[1] == decode_value(event.data)
        assert event.topics[0] == market.event_topic(decoded[0])


def test_messages_and_decoders() -> None:
    keys = PROVIDERS[0]
    message = market.acceptance_message(1, 2, 3, bytes(32), 4, 5, 6, MED, keys.address)
    assert message == sha3_256(
        bytes((22,)),
        b"QOIN/compute/accept/v1",
        (1).to_bytes(8, "big"),
        (2).to_bytes(8, "big"),
        bytes((3,)),
        bytes(32),
        (4).to_bytes(8, "big"),
        (5).to_bytes(8, "big"),
        (6).to_bytes(8, "big"),
        MED.raw,
        keys.address.raw,
    )
    assert market.acceptance_message(1, 2, 3, bytes(32), 4, 5, 6, None, keys.address) != message
    assert market.commitment(7, keys.address, ROOT, SALT) == sha3_256(
        bytes((22,)),
        b"QOIN/compute/commit/v1",
        (7).to_bytes(8, "big"),
        keys.address.raw,
        ROOT,
        SALT,
    )
    assert len(market.new_salt()) == 32 and market.new_salt() != market.new_salt()
    assert market.max_payment(2, 1, 10, 7, 100) == 140 + 1000
    assert market.collateral_for(141, 500_000) == 71
    assert market.payment_for(3, 2, 7, 100) == 221
    assert market.bid_deposit(2, 2, 0, 10, 7, 100, 60) == 340
    assert market.form_deal(1, [keys.address], [b"s"], None).args[-1] == ZERO_ADDRESS
    assert market.verdict(1, VerdictKind.NON_DETERMINISTIC).args == (1, 3, bytes(32))
    with pytest.raises(market.MarketError):
        market.AskInfo.from_value((1, 2))
    with pytest.raises(market.MarketError):
        market.DealInfo.from_value(1, (CLIENT,) * 15)
    with pytest.raises(market.MarketError):
        market.BidInfo.from_value(1, (CLIENT,) * 16)
    with pytest.raises(market.MarketError):
        market.MediatorInfo.from_value((MED,) * 10)
    with pytest.raises(market.MarketError):
        market.totals_from_value((1, 2, 3, True))
    with pytest.raises(market.MarketError):
        market.params_from_value((0,) * 12)
    with pytest.raises(market.MarketError):
        market.event_topic("Nothing")
    assert market.decode_event({"address": str(OTHER), "topics": [], "data": ""}) is None
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
    """A real execution client over a genesis with the test's compute parameters, serving its
    user RPC on 127.0.0.1."""
    genesis = replace(
        test_genesis(),
        allocation=(Allocation(CLIENT, test_genesis().allocation[0].amount),),
        compute=PARAMS,
    )
    state = ExecutionState.open(tmp_path, genesis)
    try:
        with BackgroundServer(ExecutionClient(state).user_server().app) as server:
            yield server.url
    finally:
        state.close()


def test_market_view_over_a_node(node_url: str) -> None:
    with market.ComputeMarketView(node_url) as view:
        assert view.params() == PARAMS
        assert view.totals() == Totals()
        assert view.get_ask(OTHER) is None
        assert view.get_key(OTHER) is None
        assert view.asks() == []
        assert view.get_mediator(MED) is None
        assert view.mediators() == []
        assert view.get_bid(1) is None
        assert view.get_deal(1) is None
