"""The ``compute-market`` actor under random sequences of asks, mediators, bids, deals, commits and
reveals (honest, wrong, withheld, copied), disputes, verdicts, timeouts (heights advanced with the
cron), cancellations and withdrawals, with its invariants checked after every step.

Invariants:

* the actor holds exactly ``escrow + collateral + stakes + burned``, and the total Shor of every
  account is unchanged (checked by the harness after every call and every height);
* each client's deposits are, at every step, paid to providers, paid to mediators as fees,
  refunded, or held (in its open bids and deals): measured by balances and events, not by the
  actor's own bookkeeping;
* no settlement without a revealed result or a timeout: a deal settles ``completed`` only with a
  revealed result, ``mediated`` only after a verdict, ``undelivered`` only after a phase timed
  out, and a provider is paid only for a replica it revealed;
* a provider is never paid twice for a deal, and a deal settles once;
* the same holds for bids placed by a contract (docs/spec/compute.md §3.12) through a nested call
  with its agent's deposit: every refund goes to the contract, the agent forms, disputes and may
  cancel, and the contract's callbacks (which revert) never move Shor;
* every ask's reserved resources and locked collateral are exactly its open replicas', never over
  what it offers; the totals equal the sums over the records; a deal's escrow is its replicas'
  largest payments plus the mediator's fee; a mediator's open-deal count is exact.
"""

from __future__ import annotations

from dataclasses import replace

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

from qoin.actors.compute_market import (
    Ask,
    Bid,
    Counters,
    Deal,
    Mediator,
    Outcome,
    Phase,
    Replica,
    ReplicaState,
    VerdictKind,
    max_payment,
)
from qoin.compute import market
from qoin.compute.jobspec import Verification
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.execution.abi import Value, decode_value, encode_args
from qoin.execution.receipt import CallStatus
from qoin.storage.params import PPM
from tests.actorchain import CHAIN_ID, FUNDS
from tests.framework import test_seed
from tests.test_compute_market import (
    CLIENT,
    KEM,
    MED,
    MED2,
    OTHER,
    PROVIDERS,
    Chain,
    spec_for,
)
from tests.test_compute_market import PARAMS as TEST_PARAMS
from tests.test_compute_market_contracts import REVERTING, ContractChain

KEYS = PROVIDERS[:4]
CLIENTS = (CLIENT, OTHER)
MEDIATORS = (MED, MED2)
ALLOWED = (CallStatus.SUCCESS, CallStatus.REVERTED)
BEHAVIOURS = ("honest", "wrong", "copy", "withhold")
PARAMS = replace(TEST_PARAMS, staging_blocks=20)
"""Run budgets of 21 and 25 blocks: long enough for jobs to finish between the advances."""


def honest_root(deal_id: int) -> bytes:
    return sha3_256(b"the job's outputs", deal_id.to_bytes(8, "big"))


class ComputeModel(RuleBasedStateMachine):
    """Random walks over the market, with the invariants of the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        base = Chain.new([*CLIENTS, *MEDIATORS, *(k.address for k in KEYS)], PARAMS)
        self.chain = ContractChain(
            base.state, base.height, base.people, base.actor, base.event_topics, base.supply,
            params=PARAMS,
        )  # fmt: skip
        self.contract = self.chain.deploy(REVERTING)
        """A contract client: its bids name an agent (CLIENT or OTHER), its callbacks revert."""
        self.clients = (*CLIENTS, self.contract)
        self.deposits = dict.fromkeys(self.clients, 0)
        self.spent = dict.fromkeys(self.clients, 0)
        """What left each account's balance for deposits (an agent's for its contract's bids)."""
        self.paid = dict.fromkeys(self.clients, 0)
        self.fees = dict.fromkeys(self.clients, 0)
        self.shares = dict.fromkeys(self.clients, 0)
        self.client_of: dict[int, Address] = {}
        self.revealed: set[tuple[int, int]] = set()
        self.paid_replicas: set[tuple[int, int]] = set()
        self.paid_providers: set[tuple[int, Address]] = set()
        self.verdict_fee: dict[int, tuple[int, int]] = {}
        self.timed_out: set[int] = set()
        self.mediation_missed: set[int] = set()
        self.settled: set[int] = set()
        self.opened: dict[tuple[int, int], tuple[bytes, bytes]] = {}
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

    def do(self, caller: Address, call: market.MarketCall) -> Value | None:
        return self.call(caller, call.method, *call.args, value=call.value)

    def sync(self) -> None:
        """Follow the events since the last step, checking the settlement rules."""
        for event in self.chain.events[self.seen :]:
            name = self.chain.event_topics[event.topics[0]]
            data = decode_value(event.data)
            assert isinstance(data, tuple)
            deal_id = data[0] if data and isinstance(data[0], int) else 0
            if name == "DealFormed":
                self.client_of[deal_id] = Address(event.topics[1])
            elif name == "ResultRevealed":
                replica = data[1]
                assert isinstance(replica, int)
                self.revealed.add((deal_id, replica))
            elif name == "ProviderPaid":
                replica, amount = data[1], data[2]
                assert isinstance(replica, int) and isinstance(amount, int)
                assert (deal_id, replica) in self.revealed, "paid for a result never revealed"
                assert (deal_id, replica) not in self.paid_replicas, "a replica paid twice"
                provider = Address(event.topics[1])
                assert (deal_id, provider) not in self.paid_providers, "a provider paid twice"
                self.paid_replicas.add((deal_id, replica))
                self.paid_providers.add((deal_id, provider))
                self.paid[self.client_of[deal_id]] += amount
            elif name == "Verdict":
                kind, fee = data[1], data[3]
                assert isinstance(kind, int) and isinstance(fee, int)
                self.verdict_fee[deal_id] = (kind, fee)
            elif name == "DealTimedOut":
                self.timed_out.add(deal_id)
            elif name == "MediationTimedOut":
                self.mediation_missed.add(deal_id)
            elif name == "DealSettled":
                self.settle(deal_id, data)
        self.seen = len(self.chain.events)

    def settle(self, deal_id: int, data: tuple[Value, ...]) -> None:
        assert deal_id not in self.settled, "a deal settled twice"
        self.settled.add(deal_id)
        outcome, _, _, slashed, burned = data[1:]
        assert isinstance(slashed, int) and isinstance(burned, int)
        revealed = any(d == deal_id for d, _ in self.revealed)
        if outcome == Outcome.COMPLETED:
            assert revealed, "completed without a revealed result"
        elif outcome == Outcome.MEDIATED:
            assert deal_id in self.verdict_fee, "mediated without a verdict"
        elif outcome == Outcome.UNDELIVERED:
            assert deal_id in self.timed_out, "undelivered without a timeout"
        else:
            assert outcome == Outcome.MEDIATION_TIMED_OUT
            assert deal_id in self.mediation_missed
        kind, fee = self.verdict_fee.get(deal_id, (0, 0))
        from_fines = kind in (VerdictKind.WRONG_RESULT, VerdictKind.NOT_DELIVERED)
        fee_from_slash = min(fee, slashed) if from_fines else 0
        client = self.client_of[deal_id]
        self.fees[client] += fee - fee_from_slash
        share = slashed - fee_from_slash - burned
        assert share == (slashed - fee_from_slash) * PARAMS.fine_client_ppm // PPM
        self.shares[client] += share

    def counters(self) -> Counters:
        raw = self.chain.record(b"counters")
        return Counters.decode(raw) if raw else Counters()

    def bids(self) -> dict[int, Bid]:
        found = {}
        for bid_id in range(1, self.counters().last_bid + 1):
            raw = self.chain.record(b"B" + bid_id.to_bytes(8, "big"))
            if raw:
                found[bid_id] = Bid.decode(raw)
        return found

    def deals(self) -> dict[int, Deal]:
        found = {}
        for deal_id in range(1, self.counters().last_bid + 1):
            record = self.chain.deal(deal_id)
            if record is not None:
                found[deal_id] = record
        return found

    def pick_deal(self, index: int, phase: Phase | None = None) -> tuple[int, Deal] | None:
        """An open deal (one in ``phase`` if there is any)."""
        open_deals = sorted(self.deals().items())
        wanted = [(i, d) for i, d in open_deals if d.phase is phase] or open_deals
        return wanted[index % len(wanted)] if wanted else None

    def replica(self, deal_id: int, index: int) -> Replica:
        found = self.chain.replica(deal_id, index)
        assert found is not None
        return found

    # -- rules -----------------------------------------------------------------------------------

    @initialize(prices=st.lists(st.integers(1, 9), min_size=len(KEYS), max_size=len(KEYS)))
    def setup(self, prices: list[int]) -> None:
        for keys, price in zip(KEYS, prices, strict=True):
            self.post(keys.address, 8, price, 2 * PPM, MEDIATORS, 10**6)
        for mediator in MEDIATORS:
            self.do(mediator, market.register_mediator(50, "m:1", KEM, PARAMS.min_mediator_stake))

    def post(
        self,
        provider: Address,
        cpus: int,
        price: int,
        collateral_ppm: int,
        mediators: tuple[Address, ...],
        deposit: int,
    ) -> None:
        keys = next(k for k in KEYS if k.address == provider)
        self.do(
            provider,
            market.post_ask(
                cpus=cpus,
                memory=1 << 40,
                gpus=0,
                gpu_model="",
                executors=7,
                price_cpu=price,
                price_gpu=0,
                collateral_ppm=collateral_ppm,
                mediators=mediators,
                endpoint="127.0.0.1:1",
                kem_key=KEM,
                public_key=keys.public,
                deposit=deposit,
            ),
        )

    @rule(
        who=st.integers(0, len(KEYS) - 1),
        cpus=st.sampled_from([0, 4, 8, 8]),
        price=st.integers(1, 9),
        collateral_ppm=st.sampled_from([PPM // 2, PPM, 3 * PPM]),
        mediators=st.sampled_from([MEDIATORS, (MED,), (MED2,), ()]),
        deposit=st.sampled_from([0, 100, 10**6]),
    )
    def ask(
        self,
        who: int,
        cpus: int,
        price: int,
        collateral_ppm: int,
        mediators: tuple[Address, ...],
        deposit: int,
    ) -> None:
        self.post(KEYS[who].address, cpus, price, collateral_ppm, mediators, deposit)

    @rule(who=st.integers(0, len(KEYS) - 1), amount=st.sampled_from([0, 1, 5_000, 10**6]))
    def withdraw(self, who: int, amount: int) -> None:
        self.do(KEYS[who].address, market.withdraw(amount))

    @rule(who=st.integers(0, len(KEYS) - 1), roll=st.integers(0, 3))
    def cancel_ask(self, who: int, roll: int) -> None:
        if roll == 0:
            self.do(KEYS[who].address, market.cancel_ask())

    @rule(
        which=st.sampled_from(MEDIATORS), fee=st.sampled_from([0, 50, 50, 80]), top_up=st.booleans()
    )
    def register(self, which: Address, fee: int, top_up: bool) -> None:
        stake = PARAMS.min_mediator_stake if top_up else 0
        self.do(which, market.register_mediator(fee, "m:1", KEM, stake))

    @rule(which=st.sampled_from(MEDIATORS), roll=st.integers(0, 3))
    def unregister(self, which: Address, roll: int) -> None:
        if roll == 0:
            self.do(which, market.unregister_mediator())

    @precondition(lambda self: len(self.bids()) < 3)
    @rule(
        who=st.sampled_from(CLIENTS),
        verification=st.sampled_from(Verification),
        cpus=st.sampled_from([1, 2, 4]),
        timeout=st.sampled_from([1, 5]),
        max_price=st.sampled_from([4, 9, 12]),
        extra=st.integers(0, 100),
        ahead=st.integers(1, 40),
        then_deal=st.booleans(),
        mediator=st.sampled_from(MEDIATORS),
        via_contract=st.booleans(),
    )
    def bid(
        self,
        who: Address,
        verification: Verification,
        cpus: int,
        timeout: int,
        max_price: int,
        extra: int,
        ahead: int,
        then_deal: bool,
        mediator: Address,
        via_contract: bool,
    ) -> None:
        """A bid (``via_contract``: the contract's, ``who`` its agent), and (``then_deal``) a
        deal at once with the providers that can take it."""
        bid_id = self.place(who, verification, cpus, timeout, max_price, extra, ahead, via_contract)
        if then_deal:
            self.form(bid_id, list(range(len(KEYS))), mediator, able_first=True)

    def place(
        self,
        who: Address,
        verification: Verification,
        cpus: int,
        timeout: int,
        max_price: int,
        extra: int,
        ahead: int,
        via_contract: bool = False,
    ) -> int:
        none = verification is Verification.NONE
        call = market.place_bid(
            spec_for(verification, cpus=cpus, timeout=timeout),
            max_price_cpu=max_price,
            max_price_gpu=0,
            deadline=self.chain.height + ahead,
            mediators=() if none else MEDIATORS,
            max_fee=0 if none else 70,
            collateral_ppm=PPM,
        )
        call = market.MarketCall(call.method, call.args, call.value + extra)
        if via_contract:
            args = encode_args([*call.args, who, 0])
            result = self.chain.call_contract(who, self.contract, "forward", args, call.value)
            assert result.status is CallStatus.SUCCESS, result.reason
            self.sync()
            bid_id = decode_value(result.return_data)
            client = self.contract
        else:
            bid_id = self.do(who, call)
            client = who
        assert isinstance(bid_id, int), bid_id
        self.deposits[client] += call.value
        self.spent[who] += call.value
        return bid_id

    @rule(
        who=st.sampled_from(CLIENTS),
        verification=st.sampled_from([*Verification, Verification.REPLICATED]),
        mediator=st.sampled_from(MEDIATORS),
        behaviours=st.lists(st.sampled_from(BEHAVIOURS), min_size=2, max_size=2),
        usage=st.integers(0, 30),
        dispute=st.booleans(),
        kind=st.none() | st.sampled_from(VerdictKind),
        honest=st.booleans(),
        via_contract=st.booleans(),
    )
    def job(
        self,
        who: Address,
        verification: Verification,
        mediator: Address,
        behaviours: list[str],
        usage: int,
        dispute: bool,
        kind: VerdictKind | None,
        honest: bool,
        via_contract: bool,
    ) -> None:
        """A whole job at once: bid, deal, commits and reveals (each replica as it behaves),
        then perhaps a dispute, then perhaps a verdict (right away: the mediator is fast)."""
        bid_id = self.place(who, verification, 2, 5, 12, 0, 10, via_contract)
        self.form(bid_id, list(range(len(KEYS))), mediator, able_first=True)
        found = self.chain.deal(bid_id)
        if found is None:
            return
        self.work(bid_id, found, behaviours, usage)
        found = self.chain.deal(bid_id)
        if found is not None and dispute and found.phase is Phase.CHECK:
            assert self.do(found.agent or found.client, market.dispute(bid_id)) is None
        found = self.chain.deal(bid_id)
        if found is not None and kind is not None and found.mediator is not None:
            root = honest_root(bid_id) if honest else bytes(32)
            self.do(found.mediator, market.verdict(bid_id, kind, root))

    @rule(index=st.integers(0, 100), by_client=st.booleans())
    def cancel_bid(self, index: int, by_client: bool) -> None:
        bids = self.bids()
        if not bids:
            return
        bid_id = sorted(bids)[index % len(bids)]
        client, agent = bids[bid_id].client, bids[bid_id].agent
        caller = client if by_client else next(c for c in CLIENTS if c not in (client, agent))
        reason = self.do(caller, market.cancel_bid(bid_id))
        assert (reason is None) == by_client

    @rule(
        index=st.integers(0, 100),
        order=st.permutations(range(len(KEYS))),
        mediator=st.sampled_from(MEDIATORS),
        able_first=st.booleans(),
    )
    def deal(self, index: int, order: list[int], mediator: Address, able_first: bool) -> None:
        bids = self.bids()
        if bids:
            self.form(sorted(bids)[index % len(bids)], order, mediator, able_first)

    def form(self, bid_id: int, order: list[int], mediator: Address, able_first: bool) -> None:
        """The bid's client asks for a deal with providers in ``order`` (``able_first``: those
        that can take the job first)."""
        found = market.BidInfo.from_value(bid_id, self.chain.view("get_bid", bid_id))
        named = None if found.verification is Verification.NONE else mediator

        def able(i: int) -> bool:
            ask = market.AskInfo.from_value(self.chain.view("get_ask", KEYS[i].address))
            return (
                ask.active
                and ask.free_cpus >= found.cpus
                and ask.price_cpu <= found.max_price_cpu
                and (named is None or named in ask.mediators)
            )

        if able_first:
            order = sorted(order, key=lambda i: not able(i))
        chosen = [KEYS[i] for i in order[: found.replicas]]
        signatures = []
        for replica, keys in enumerate(chosen):
            ask = market.AskInfo.from_value(self.chain.view("get_ask", keys.address))
            signatures.append(market.sign_acceptance(keys, CHAIN_ID, found, replica, ask, named))
        self.do(
            found.acting,
            market.form_deal(bid_id, [k.address for k in chosen], signatures, named),
        )

    @rule(index=st.integers(0, 100), replica=st.integers(0, 1), how=st.sampled_from(BEHAVIOURS))
    def commit(self, index: int, replica: int, how: str) -> None:
        picked = self.pick_deal(index)
        if picked is not None:
            self.commit_as(picked[0], picked[1], replica % picked[1].replicas, how)

    def commit_as(self, deal_id: int, found: Deal, replica: int, how: str) -> None:
        """Replica ``replica`` commits: honestly, to a wrong root, to a copy of the other
        replica's commitment, or not at all."""
        provider = self.replica(deal_id, replica).provider
        salt = sha3_256(b"salt", deal_id.to_bytes(8, "big"), bytes((replica,)))
        root = honest_root(deal_id)
        if how == "withhold":
            return
        if how == "wrong":
            root = sha3_256(b"made up", salt)
        sealed = market.commitment(deal_id, provider, root, salt)
        other = self.chain.replica(deal_id, 1 - replica) if found.replicas == 2 else None
        if how == "copy" and other is not None and other.state is not ReplicaState.ASSIGNED:
            sealed = other.commitment  # copied: it will not open with this provider's address
            root, salt = self.opened.get((deal_id, 1 - replica), (root, salt))
        answer = self.do(provider, market.commit(deal_id, sealed))
        if answer is None:
            self.opened[deal_id, replica] = (root, salt)

    @rule(
        index=st.integers(0, 100),
        behaviours=st.lists(st.sampled_from(BEHAVIOURS), min_size=2, max_size=2),
        usage=st.integers(0, 60),
    )
    def run_job(self, index: int, behaviours: list[str], usage: int) -> None:
        """The replicas of a deal in its run or reveal phase commit (or not), then reveal."""
        running = [
            (deal_id, found)
            for deal_id, found in sorted(self.deals().items())
            if found.phase in (Phase.RUN, Phase.REVEAL)
        ]
        if not running:
            return
        deal_id, found = running[index % len(running)]
        self.work(deal_id, found, behaviours, usage)

    def work(self, deal_id: int, found: Deal, behaviours: list[str], usage: int) -> None:
        """Each replica commits as it behaves (in the run phase), then reveals (in the reveal
        phase)."""
        for replica in range(found.replicas):
            if found.phase is Phase.RUN and self.replica(deal_id, replica).state is (
                ReplicaState.ASSIGNED
            ):
                self.commit_as(deal_id, found, replica, behaviours[replica])
        for replica in range(found.replicas):
            now = self.chain.deal(deal_id)
            if now is None or now.phase is not Phase.REVEAL:
                return
            if self.replica(deal_id, replica).state is ReplicaState.COMMITTED:
                self.reveal_as(deal_id, replica, usage)

    @rule(index=st.integers(0, 100), replica=st.integers(0, 1), usage=st.integers(0, 100))
    def reveal(self, index: int, replica: int, usage: int) -> None:
        picked = self.pick_deal(index)
        if picked is not None:
            self.reveal_as(picked[0], replica % picked[1].replicas, usage)

    def reveal_as(self, deal_id: int, replica: int, usage: int) -> None:
        """Replica ``replica`` reveals what it committed to (a copier reveals the copied root
        and salt: refused)."""
        provider = self.replica(deal_id, replica).provider
        root, salt = self.opened.get((deal_id, replica), (honest_root(deal_id), bytes(32)))
        self.do(provider, market.reveal(deal_id, root, salt, usage, 0))

    @rule(index=st.integers(0, 100), by_client=st.booleans())
    def dispute(self, index: int, by_client: bool) -> None:
        picked = self.pick_deal(index, Phase.CHECK)
        if picked is None:
            return
        deal_id, found = picked
        acting = (found.client, found.agent)
        caller = (
            found.agent or found.client
            if by_client
            else next(c for c in CLIENTS if c not in acting)
        )
        reason = self.do(caller, market.dispute(deal_id))
        if by_client and found.phase is Phase.CHECK and self.chain.height < found.deadline:
            assert reason is None, reason

    @rule(
        index=st.integers(0, 100),
        kind=st.sampled_from(VerdictKind),
        honest=st.booleans(),
        by_mediator=st.booleans(),
    )
    def verdict(self, index: int, kind: VerdictKind, honest: bool, by_mediator: bool) -> None:
        picked = self.pick_deal(index, Phase.MEDIATION)
        if picked is None:
            return
        deal_id, found = picked
        caller = (found.mediator or MED) if by_mediator else CLIENT
        root = honest_root(deal_id) if honest else bytes(32)
        self.do(caller, market.verdict(deal_id, kind, root))

    @rule(blocks=st.integers(1, 6))
    def advance(self, blocks: int) -> None:
        self.chain.advance(self.chain.height + blocks)
        self.sync()

    @rule(index=st.integers(0, 100), roll=st.integers(0, 2))
    def to_deadline(self, index: int, roll: int) -> None:
        """Advance to a deal's phase deadline (its cron ends the phase); rarer than the rest."""
        picked = self.pick_deal(index)
        if picked is not None and roll == 0:
            self.chain.advance(max(picked[1].deadline, self.chain.height))
            self.sync()

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def deposits_are_paid_refunded_or_held(self) -> None:
        bids, deals = self.bids(), self.deals()
        for client in self.clients:
            held = sum(b.deposit for b in bids.values() if b.client == client)
            held += sum(d.escrow for d in deals.values() if d.client == client)
            start = 0 if client == self.contract else FUNDS
            received = self.chain.balance(client) - (start - self.spent[client])
            refunded = received - self.shares[client]
            assert self.deposits[client] == (
                self.paid[client] + self.fees[client] + refunded + held
            )

    @invariant()
    def records_add_up(self) -> None:
        reserved = {k.address: [0, 0, 0] for k in KEYS}
        mediated = dict.fromkeys(MEDIATORS, 0)
        bids, deals = self.bids(), self.deals()
        escrow = sum(b.deposit for b in bids.values())
        for deal_id, found in deals.items():
            escrow += found.escrow
            largest = 0
            for index in range(found.replicas):
                replica = self.replica(deal_id, index)
                reserved[replica.provider][0] += found.cpus
                reserved[replica.provider][1] += replica.collateral
                largest += max_payment(
                    found.cpus, found.gpus, found.timeout, replica.price_cpu, replica.price_gpu
                )
            assert found.escrow == largest + found.fee
            assert (found.mediator is None) == (found.verification is Verification.NONE)
            if found.mediator is not None:
                mediated[found.mediator] += 1
            assert found.deadline > self.chain.height, "a deal outlived its phase deadline"
        collateral = 0
        for keys in KEYS:
            raw = self.chain.record(b"A" + keys.address.raw)
            assert raw is not None
            own = Ask.decode(raw)
            assert [own.used_cpus, own.locked] == reserved[keys.address][:2]
            collateral += own.free + own.locked
        stakes = 0
        for mediator in MEDIATORS:
            raw = self.chain.record(b"M" + mediator.raw)
            assert raw is not None
            record = Mediator.decode(raw)
            assert record.deals == mediated[mediator]
            stakes += record.stake
        totals = self.chain.totals()
        assert (totals.escrow, totals.collateral, totals.stakes) == (escrow, collateral, stakes)
        assert self.counters().open_deals == len(deals)


def test_compute_market_model() -> None:
    class Seeded(ComputeModel):
        pass

    seed(test_seed())(Seeded)
    run_state_machine_as_test(
        Seeded,
        settings=settings(max_examples=50, stateful_step_count=80, deadline=None, database=None),
    )
