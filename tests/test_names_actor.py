"""The built-in actor registry and the ``names`` actor, called through ``Machine.call``."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from qoin.actors import ACTOR_NAMES, CRON_ADDRESS, NAMES_ADDRESS, builtin_actors
from qoin.actors.base import topic
from qoin.actors.names import (
    FEE_PER_BLOCK,
    MAX_NAME_SIZE,
    MAX_TERM,
    MIN_TERM,
    NameRecord,
    name_problem,
    record_key,
)
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.execution import cron
from qoin.execution import gas as costs
from qoin.execution.abi import Value, decode_value, encode_args, encode_value
from qoin.execution.account import AccountLeaf, actor_address, state_key, storage_key
from qoin.execution.overlay import StateOverlay
from qoin.execution.receipt import CallStatus, Event
from qoin.execution.vm import BlockEnv, CallResult, Context, Machine

ALICE, BOB, CAROL = (Address(sha3_256(who)) for who in (b"alice", b"bob", b"carol"))
PEOPLE = (ALICE, BOB, CAROL)
FUNDS = 10**12
START = 1_000
VALUE = bytes(range(32))
OTHER_VALUE = bytes(32)

Scheduled = tuple[Address, int, str, bytes]


class NoRuntime:
    """Actor-only tests never run contract code: any use of the runtime is a test failure."""

    def validate(self, code: bytes) -> None:
        raise AssertionError("the runtime was used by an actor-only test")

    def run(self, ctx: Context, code_hash: bytes, code: bytes, method: str, args: bytes) -> bytes:
        raise AssertionError("the runtime was used by an actor-only test")

    def has_method(self, code_hash: bytes, code: bytes, method: str) -> bool:
        raise AssertionError("the runtime was used by an actor-only test")


def fresh(height: int = START) -> tuple[Machine, list[Scheduled]]:
    """A machine over funded accounts whose cron hook records what the actors schedule."""
    base = {state_key(person): AccountLeaf(FUNDS).encode() for person in PEOPLE}
    machine = Machine(
        StateOverlay(base.get), BlockEnv(1337, height, 0, bytes(32)), builtin_actors(), NoRuntime()
    )
    scheduled: list[Scheduled] = []

    def record(_: Machine, address: Address, at: int, method: str, args: bytes) -> None:
        scheduled.append((address, at, method, args))

    machine.schedule = record
    return machine, scheduled


def call(
    machine: Machine,
    caller: Address,
    method: str,
    *args: Value,
    value: int = 0,
    gas: int = 10**6,
) -> CallResult:
    return machine.call(
        caller=caller,
        origin=caller,
        to=NAMES_ADDRESS,
        value=value,
        method=method,
        args=encode_args(list(args)),
        gas=gas,
        depth=1,
    )


def at_height(machine: Machine, height: int) -> None:
    machine.env = replace(machine.env, height=height)


def balance(machine: Machine, address: Address) -> int:
    return machine.leaf(address).balance


def total(machine: Machine) -> int:
    return sum(balance(machine, a) for a in (*PEOPLE, NAMES_ADDRESS, CRON_ADDRESS))


def register(
    machine: Machine, who: Address, name: str, blocks: int = MIN_TERM, extra: int = 0
) -> CallResult:
    return call(machine, who, "register", name, VALUE, blocks, value=FEE_PER_BLOCK * blocks + extra)


def resolved(machine: Machine, name: str) -> Value:
    result = call(machine, CAROL, "resolve", name)
    assert result.status is CallStatus.SUCCESS, result.reason
    return decode_value(result.return_data)


# -- the registry --------------------------------------------------------------------------------


def test_registry_is_cached_immutable_and_addressed_by_name() -> None:
    actors = builtin_actors()
    assert builtin_actors() is actors
    assert set(actors) == {actor_address(name) for name in ACTOR_NAMES}
    assert actors[NAMES_ADDRESS].name == "names"
    assert CRON_ADDRESS not in actors
    with pytest.raises(TypeError):
        actors[ALICE] = actors[NAMES_ADDRESS]  # type: ignore[index]


def test_unknown_method_fails() -> None:
    machine, _ = fresh()
    result = call(machine, ALICE, "steal")
    assert result.status is CallStatus.FAILED
    assert "no method 'steal'" in result.reason


# -- register, resolve, fees ------------------------------------------------------------------------


def test_register_then_resolve() -> None:
    machine, _ = fresh()
    result = register(machine, ALICE, "alice", blocks=500)
    assert result.status is CallStatus.SUCCESS, result.reason
    assert decode_value(result.return_data) == START + 500
    assert resolved(machine, "alice") == (ALICE, VALUE, START + 500)
    raw = machine.state.get(storage_key(NAMES_ADDRESS, b"nalice"))
    assert raw == NameRecord(ALICE, VALUE, START + 500).encode()


def test_unregistered_name_does_not_resolve() -> None:
    machine, _ = fresh()
    result = call(machine, ALICE, "resolve", "nobody")
    assert result.status is CallStatus.REVERTED
    assert result.reason == "name 'nobody': not registered"


@pytest.mark.parametrize("extra", [0, 1, 12_345])
def test_fee_is_kept_and_excess_refunded(extra: int) -> None:
    machine, _ = fresh()
    before = total(machine)
    fee = FEE_PER_BLOCK * 300
    result = register(machine, ALICE, "paid", blocks=300, extra=extra)
    assert result.status is CallStatus.SUCCESS, result.reason
    assert balance(machine, ALICE) == FUNDS - fee
    assert balance(machine, NAMES_ADDRESS) == fee
    assert total(machine) == before


def test_short_payment_reverts_and_moves_nothing() -> None:
    machine, scheduled = fresh()
    result = register(machine, ALICE, "cheap", blocks=300, extra=-1)
    assert result.status is CallStatus.REVERTED
    assert result.reason == f"name 'cheap': 300 blocks cost {300 * FEE_PER_BLOCK} Shor, 2999 sent"
    assert machine.state.changes() == {}
    assert scheduled == []
    assert machine.events == []


@pytest.mark.parametrize("blocks", [0, MIN_TERM - 1, MAX_TERM + 1, 2**64 - 1])
def test_term_out_of_range_reverts(blocks: int) -> None:
    machine, _ = fresh()
    result = call(machine, ALICE, "register", "term", VALUE, blocks, value=10**6)
    assert result.status is CallStatus.REVERTED
    assert f"a term is {MIN_TERM} to {MAX_TERM} blocks" in result.reason
    assert machine.state.changes() == {}


def register_gas(name: str, expiry: int, refund: bool) -> int:
    """What registering ``name`` costs: entering the actor plus the host costs of its steps."""
    record = NameRecord(ALICE, VALUE, expiry).encode()
    data = encode_value((name, VALUE, expiry))
    return (
        costs.ACTOR_CALL_GAS
        + costs.STORAGE_READ_GAS
        + (costs.VALUE_TRANSFER_GAS if refund else 0)
        + costs.STORAGE_WRITE_GAS
        + costs.STORAGE_BYTE_GAS * (len(record_key(name)) + len(record))
        + costs.HASH_GAS
        + costs.HASH_WORD_GAS * costs.words(len(name))
        + costs.EVENT_GAS
        + 3 * costs.EVENT_TOPIC_GAS
        + costs.EVENT_BYTE_GAS * len(data)
        + costs.CRON_SCHEDULE_GAS
    )


@pytest.mark.parametrize(("name", "extra"), [("gas", 0), ("gas-check", 0), ("a" * 63, 1)])
def test_register_gas_is_the_host_costs_of_what_it_does(name: str, extra: int) -> None:
    machine, _ = fresh()
    result = register(machine, ALICE, name, blocks=MIN_TERM, extra=extra)
    assert result.succeeded, result.reason
    assert result.gas_used == register_gas(name, START + MIN_TERM, refund=extra > 0)


# -- held names, expiry ----------------------------------------------------------------------------


def test_held_name_cannot_be_taken() -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, "taken").succeeded
    result = register(machine, BOB, "taken")
    assert result.status is CallStatus.REVERTED
    assert result.reason == f"name 'taken': held by {ALICE} until height {START + MIN_TERM}"
    at_height(machine, START + MIN_TERM - 1)
    assert register(machine, ALICE, "taken").status is CallStatus.REVERTED  # even by its owner
    assert resolved(machine, "taken") == (ALICE, VALUE, START + MIN_TERM)


def test_expired_name_is_free_for_anyone() -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, "fleeting").succeeded
    at_height(machine, START + MIN_TERM)
    result = call(machine, CAROL, "resolve", "fleeting")
    assert result.status is CallStatus.REVERTED
    assert result.reason == f"name 'fleeting': expired at height {START + MIN_TERM}"
    again = register(machine, BOB, "fleeting", blocks=200)
    assert again.status is CallStatus.SUCCESS, again.reason
    assert resolved(machine, "fleeting") == (BOB, VALUE, START + MIN_TERM + 200)
    assert balance(machine, NAMES_ADDRESS) == FEE_PER_BLOCK * (MIN_TERM + 200)


# -- renew -----------------------------------------------------------------------------------------


def test_anyone_may_renew_a_held_name() -> None:
    machine, scheduled = fresh()
    assert register(machine, ALICE, "kept", blocks=150).succeeded
    at_height(machine, START + 100)
    before = total(machine)
    result = call(machine, BOB, "renew", "kept", 120, value=FEE_PER_BLOCK * 120 + 7)
    assert result.status is CallStatus.SUCCESS, result.reason
    assert decode_value(result.return_data) == START + 150 + 120
    assert resolved(machine, "kept") == (ALICE, VALUE, START + 270)
    assert balance(machine, BOB) == FUNDS - FEE_PER_BLOCK * 120
    assert balance(machine, NAMES_ADDRESS) == FEE_PER_BLOCK * 270
    assert total(machine) == before
    assert scheduled[-1] == (NAMES_ADDRESS, START + 270, "expire", encode_args(["kept"]))
    assert machine.events[-1] == Event(
        NAMES_ADDRESS,
        (topic("NameRenewed"), sha3_256(b"kept"), BOB.raw),
        encode_value(("kept", START + 270)),
    )


def test_renewal_needs_a_held_name_and_a_bounded_expiry() -> None:
    machine, _ = fresh()
    free = call(machine, ALICE, "renew", "ghost", MIN_TERM, value=FEE_PER_BLOCK * MIN_TERM)
    assert free.status is CallStatus.REVERTED
    assert free.reason == "name 'ghost': not registered"
    assert register(machine, ALICE, "long", blocks=MAX_TERM).succeeded
    too_far = call(machine, ALICE, "renew", "long", MIN_TERM, value=FEE_PER_BLOCK * MIN_TERM)
    assert too_far.status is CallStatus.REVERTED
    assert f"more than {MAX_TERM} blocks ahead" in too_far.reason
    at_height(machine, START + MIN_TERM)
    ok = call(machine, ALICE, "renew", "long", MIN_TERM, value=FEE_PER_BLOCK * MIN_TERM)
    assert ok.status is CallStatus.SUCCESS, ok.reason
    at_height(machine, START + MAX_TERM + MIN_TERM)
    late = call(machine, ALICE, "renew", "long", MIN_TERM, value=FEE_PER_BLOCK * MIN_TERM)
    assert late.status is CallStatus.REVERTED
    assert "expired at height" in late.reason


# -- owner-only methods ----------------------------------------------------------------------------


def test_transfer_and_set_value_are_owner_only() -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, "house").succeeded
    stolen = call(machine, BOB, "transfer", "house", BOB)
    assert stolen.status is CallStatus.REVERTED
    assert stolen.reason == f"name 'house': only its owner {ALICE} may do this"
    assert call(machine, BOB, "set_value", "house", OTHER_VALUE).status is CallStatus.REVERTED
    assert resolved(machine, "house") == (ALICE, VALUE, START + MIN_TERM)

    given_away = call(machine, ALICE, "transfer", "house", BOB)
    assert given_away.status is CallStatus.SUCCESS, given_away.reason
    assert call(machine, ALICE, "set_value", "house", OTHER_VALUE).status is CallStatus.REVERTED
    changed = call(machine, BOB, "set_value", "house", OTHER_VALUE)
    assert changed.status is CallStatus.SUCCESS, changed.reason
    assert resolved(machine, "house") == (BOB, OTHER_VALUE, START + MIN_TERM)

    at_height(machine, START + MIN_TERM)
    expired = call(machine, BOB, "set_value", "house", VALUE)
    assert expired.status is CallStatus.REVERTED
    assert "expired at height" in expired.reason


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("transfer", ("paid-for", BOB)),
        ("set_value", ("paid-for", OTHER_VALUE)),
        ("resolve", ("paid-for",)),
    ],
)
def test_methods_that_take_no_payment_revert_on_one(method: str, args: tuple[Value, ...]) -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, "paid-for").succeeded
    before = machine.state.changes()
    result = call(machine, ALICE, method, *args, value=5)
    assert result.status is CallStatus.REVERTED
    assert result.reason == f"{method} takes no payment, 5 Shor sent"
    assert machine.state.changes() == before


# -- input checks ----------------------------------------------------------------------------------

NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{1,61})[a-z0-9]")


@pytest.mark.parametrize(
    "name",
    ["", "ab", "a" * 64, "Abc", "-ab", "ab-", "a_b", "ab c", "caf\u00e9", "ab.c", "x" * 1000],
)
def test_invalid_names_revert_with_a_reason(name: str) -> None:
    machine, _ = fresh()
    result = register(machine, ALICE, name)
    assert result.status is CallStatus.REVERTED
    assert result.reason.startswith("name '")
    assert machine.state.changes() == {}


@pytest.mark.parametrize("name", ["abc", "a" * MAX_NAME_SIZE, "a-b", "0-9", "x--y", "123"])
def test_valid_names_register(name: str) -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, name).status is CallStatus.SUCCESS


@settings(max_examples=300)
@given(st.text(alphabet="abcz09-_A. \u00e9", max_size=70))
def test_name_rule_is_the_documented_pattern(name: str) -> None:
    assert (name_problem(name) is None) == bool(NAME_PATTERN.fullmatch(name))


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("register", ("abc", VALUE)),  # too few
        ("register", ("abc", VALUE, 100, 1)),  # too many
        ("register", (b"abc", VALUE, 100)),  # name not a string
        ("register", ("abc", VALUE[:31], 100)),  # value not 32 bytes
        ("register", ("abc", "v" * 32, 100)),  # value not bytes
        ("register", ("abc", VALUE, True)),  # a bool is not a uint
        ("renew", ("abc", "100")),
        ("transfer", ("abc", str(BOB))),  # an address as text
        ("set_value", ("abc", VALUE + b"!")),
        ("resolve", (7,)),
        ("expire", ()),
    ],
)
def test_bad_argument_types_fail(method: str, args: tuple[Value, ...]) -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, "abc").succeeded
    before = machine.state.changes()
    result = call(machine, ALICE, method, *args, value=10**4 if method == "register" else 0)
    assert result.status is CallStatus.FAILED, result.reason
    assert machine.state.changes() == before


def test_undecodable_arguments_fail() -> None:
    machine, _ = fresh()
    result = machine.call(
        caller=ALICE,
        origin=ALICE,
        to=NAMES_ADDRESS,
        value=0,
        method="resolve",
        args=b"\x01\x09",
        gas=10**6,
        depth=1,
    )
    assert result.status is CallStatus.FAILED


# -- gas -------------------------------------------------------------------------------------------


def register_with_gas(machine: Machine, gas: int) -> CallResult:
    return call(
        machine, ALICE, "register", "partial", VALUE, 200, value=FEE_PER_BLOCK * 200 + 3, gas=gas
    )


def test_running_out_of_gas_anywhere_leaves_nothing_behind() -> None:
    probe, _ = fresh()
    needed = register_with_gas(probe, 10**6).gas_used
    for gas in [*range(0, needed, 97), needed - 1]:
        machine, scheduled = fresh()
        result = register_with_gas(machine, gas)
        assert result.status is CallStatus.OUT_OF_GAS, gas
        assert result.gas_used == gas
        assert machine.state.changes() == {}, gas
        assert machine.events == []
        assert scheduled == []
    machine, scheduled = fresh()
    assert register_with_gas(machine, needed).succeeded
    assert len(scheduled) == 1


# -- events ----------------------------------------------------------------------------------------


def test_events() -> None:
    machine, _ = fresh()
    name_topic = sha3_256(b"story")
    register(machine, ALICE, "story")
    call(machine, ALICE, "set_value", "story", OTHER_VALUE)
    call(machine, ALICE, "transfer", "story", BOB)
    call(machine, BOB, "renew", "story", MIN_TERM, value=FEE_PER_BLOCK * MIN_TERM)
    call(machine, BOB, "transfer", "story", CAROL, value=1)  # reverted: no event
    at_height(machine, START + 2 * MIN_TERM)
    machine.call(
        caller=CRON_ADDRESS,
        origin=CRON_ADDRESS,
        to=NAMES_ADDRESS,
        value=0,
        method="expire",
        args=encode_args(["story"]),
        gas=costs.CRON_CALL_GAS,
        depth=1,
    )
    expiry = START + MIN_TERM
    assert machine.events == [
        Event(
            NAMES_ADDRESS,
            (topic("NameRegistered"), name_topic, ALICE.raw),
            encode_value(("story", VALUE, expiry)),
        ),
        Event(
            NAMES_ADDRESS,
            (topic("NameValueChanged"), name_topic, ALICE.raw),
            encode_value(("story", OTHER_VALUE)),
        ),
        Event(
            NAMES_ADDRESS,
            (topic("NameTransferred"), name_topic, ALICE.raw, BOB.raw),
            encode_value(("story",)),
        ),
        Event(
            NAMES_ADDRESS,
            (topic("NameRenewed"), name_topic, BOB.raw),
            encode_value(("story", expiry + MIN_TERM)),
        ),
        Event(
            NAMES_ADDRESS,
            (topic("NameExpired"), name_topic, BOB.raw),
            encode_value(("story", expiry + MIN_TERM)),
        ),
    ]


# -- cron ------------------------------------------------------------------------------------------


def cron_expire(machine: Machine, name: str) -> CallResult:
    """Call ``expire`` the way the cron does."""
    return machine.call(
        caller=CRON_ADDRESS,
        origin=CRON_ADDRESS,
        to=NAMES_ADDRESS,
        value=0,
        method="expire",
        args=encode_args([name]),
        gas=costs.CRON_CALL_GAS,
        depth=1,
    )


def test_registration_schedules_expire_at_the_expiry_height() -> None:
    machine, scheduled = fresh()
    assert register(machine, ALICE, "tick", blocks=250).succeeded
    assert scheduled == [(NAMES_ADDRESS, START + 250, "expire", encode_args(["tick"]))]


def test_only_the_cron_may_expire() -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, "mine").succeeded
    at_height(machine, START + MIN_TERM)
    for who in (ALICE, BOB):
        result = call(machine, who, "expire", "mine")
        assert result.status is CallStatus.REVERTED
        assert result.reason == "expire is called by the cron only"
    assert machine.state.get(storage_key(NAMES_ADDRESS, record_key("mine")))


def test_expire_deletes_only_expired_records() -> None:
    machine, _ = fresh()
    assert register(machine, ALICE, "soon").succeeded
    early = cron_expire(machine, "soon")
    assert early.status is CallStatus.SUCCESS, early.reason
    assert decode_value(early.return_data) is False
    assert resolved(machine, "soon") == (ALICE, VALUE, START + MIN_TERM)

    at_height(machine, START + MIN_TERM)
    due = cron_expire(machine, "soon")
    assert decode_value(due.return_data) is True
    assert machine.state.get(storage_key(NAMES_ADDRESS, record_key("soon"))) == b""
    gone = call(machine, BOB, "resolve", "soon")
    assert gone.reason == "name 'soon': not registered"
    again = cron_expire(machine, "soon")
    assert again.status is CallStatus.SUCCESS
    assert decode_value(again.return_data) is False
    assert decode_value(cron_expire(machine, "never").return_data) is False


def test_stale_entries_after_renewal_and_reregistration_do_nothing() -> None:
    machine, scheduled = fresh()
    assert register(machine, ALICE, "stale").succeeded
    assert call(machine, BOB, "renew", "stale", 300, value=FEE_PER_BLOCK * 300).succeeded
    first, second = scheduled
    assert (first[1], second[1]) == (START + MIN_TERM, START + MIN_TERM + 300)
    at_height(machine, first[1])
    assert decode_value(cron_expire(machine, "stale").return_data) is False
    assert resolved(machine, "stale") == (ALICE, VALUE, second[1])

    # The cron runs late: by then the expired name was registered again by someone else.
    at_height(machine, second[1] + 5)
    assert register(machine, CAROL, "stale").succeeded
    assert decode_value(cron_expire(machine, "stale").return_data) is False
    assert resolved(machine, "stale") == (CAROL, VALUE, second[1] + 5 + MIN_TERM)


def test_with_the_real_cron_queue() -> None:
    """The same through :mod:`qoin.execution.cron`: entries are stored in state and run when due."""
    machine, _ = fresh()
    machine.schedule = cron.schedule
    assert register(machine, ALICE, "queued").succeeded
    at_height(machine, START + 50)
    assert call(machine, BOB, "renew", "queued", 100, value=FEE_PER_BLOCK * 100).succeeded

    at_height(machine, START + MIN_TERM)
    (stale,) = cron.run_due(machine, 0)
    assert stale.status is CallStatus.SUCCESS, stale.reason
    assert decode_value(stale.return_data) is False
    assert resolved(machine, "queued") == (ALICE, VALUE, START + MIN_TERM + 100)

    at_height(machine, START + MIN_TERM + 100)
    (due,) = cron.run_due(machine, 1)
    assert due.status is CallStatus.SUCCESS, due.reason
    assert decode_value(due.return_data) is True
    assert [event.topics[0] for event in due.events] == [topic("NameExpired")]
    assert call(machine, BOB, "resolve", "queued").reason == "name 'queued': not registered"


# -- a random walk against a model -----------------------------------------------------------------

VALID = ("abc", "name-1", "zz9")
INVALID = ("ab", "-x-")
NAMES = st.sampled_from(VALID * 4 + INVALID)
"""Names the walk uses, mostly valid ones."""
TERMS = st.integers(MIN_TERM - 10, 420).map(
    lambda blocks: MAX_TERM + 1 if blocks == 420 else blocks
)
"""Terms, mostly in range: some too short, a few too long."""
EXTRA = st.integers(-2, 40)
"""What a payment adds to the fee (negative: too little)."""


class NamesWalk(RuleBasedStateMachine):
    """Random calls at increasing heights; the cron runs due entries (or is late) as heights pass."""

    @initialize()
    def start(self) -> None:
        self.machine, self.scheduled = fresh()
        self.ran = 0  # scheduled entries the cron has run
        self.model: dict[str, tuple[Address, bytes, int]] = {}
        self.fees = 0
        self.money = total(self.machine)

    @property
    def height(self) -> int:
        return self.machine.env.height

    def held(self, name: str) -> bool:
        return name in self.model and self.height < self.model[name][2]

    def expect(self, result: CallResult, ok: bool) -> None:
        self.machine.state.end_step()
        expected = CallStatus.SUCCESS if ok else CallStatus.REVERTED
        assert result.status is expected, result.reason

    @rule(
        name=NAMES,
        who=st.sampled_from(PEOPLE),
        blocks=TERMS,
        extra=EXTRA,
        value=st.binary(min_size=32, max_size=32),
    )
    def register(self, name: str, who: Address, blocks: int, extra: int, value: bytes) -> None:
        fee = FEE_PER_BLOCK * blocks
        paid = max(0, fee + extra)
        ok = name in VALID and MIN_TERM <= blocks <= MAX_TERM and paid >= fee
        ok = ok and not self.held(name)
        result = call(self.machine, who, "register", name, value, blocks, value=paid)
        self.expect(result, ok)
        if ok:
            self.model[name] = (who, value, self.height + blocks)
            self.fees += fee
            entry = (NAMES_ADDRESS, self.height + blocks, "expire", encode_args([name]))
            assert self.scheduled[-1] == entry

    @rule(
        name=NAMES,
        who=st.sampled_from(PEOPLE),
        blocks=TERMS | st.just(MAX_TERM),
        extra=EXTRA,
    )
    def renew(self, name: str, who: Address, blocks: int, extra: int) -> None:
        fee = FEE_PER_BLOCK * blocks
        paid = max(0, fee + extra)
        ok = name in VALID and MIN_TERM <= blocks <= MAX_TERM and self.held(name) and paid >= fee
        if ok:
            owner, value, expiry = self.model[name]
            new_expiry = max(expiry, self.height) + blocks
            ok = new_expiry - self.height <= MAX_TERM
        result = call(self.machine, who, "renew", name, blocks, value=paid)
        self.expect(result, ok)
        if ok:
            self.model[name] = (owner, value, new_expiry)
            self.fees += fee

    @rule(name=NAMES, who=st.sampled_from(PEOPLE), to=st.sampled_from(PEOPLE))
    def transfer(self, name: str, who: Address, to: Address) -> None:
        ok = self.held(name) and self.model[name][0] == who
        self.expect(call(self.machine, who, "transfer", name, to), ok)
        if ok:
            _, value, expiry = self.model[name]
            self.model[name] = (to, value, expiry)

    @rule(
        name=NAMES,
        who=st.sampled_from(PEOPLE),
        value=st.binary(min_size=32, max_size=32),
    )
    def set_value(self, name: str, who: Address, value: bytes) -> None:
        ok = self.held(name) and self.model[name][0] == who
        self.expect(call(self.machine, who, "set_value", name, value), ok)
        if ok:
            owner, _, expiry = self.model[name]
            self.model[name] = (owner, value, expiry)

    def held_names(self) -> list[str]:
        return sorted(name for name in self.model if self.held(name))

    @precondition(lambda self: self.held_names())
    @rule(data=st.data(), to=st.sampled_from(PEOPLE), value=st.binary(min_size=32, max_size=32))
    def owner_acts(self, data: st.DataObject, to: Address, value: bytes) -> None:
        """Steps the random ones rarely hit: the owner of a held name renews, sets, gives it."""
        name = data.draw(st.sampled_from(self.held_names()))
        owner = self.model[name][0]
        action = data.draw(st.sampled_from(("renew", "set_value", "transfer")))
        if action == "renew":
            self.renew(name, owner, data.draw(st.integers(MIN_TERM, 300)), 0)
        elif action == "set_value":
            self.set_value(name, owner, value)
        else:
            self.transfer(name, owner, to)

    @rule(name=NAMES, who=st.sampled_from(PEOPLE))
    def expire_by_someone(self, name: str, who: Address) -> None:
        self.expect(call(self.machine, who, "expire", name), False)

    def run_expire(self, name: str) -> None:
        result = cron_expire(self.machine, name)
        self.expect(result, name in VALID)
        if result.succeeded:
            deleted = name in self.model and not self.held(name)
            assert decode_value(result.return_data) is deleted
            if deleted:
                del self.model[name]

    @rule(name=NAMES)
    def expire_by_cron(self, name: str) -> None:
        self.run_expire(name)

    @rule(blocks=st.integers(1, 150), cron_on_time=st.booleans())
    def advance(self, blocks: int, cron_on_time: bool) -> None:
        at_height(self.machine, self.height + blocks)
        if not cron_on_time:
            return
        due = sorted(
            (entry for entry in self.scheduled[self.ran :] if entry[1] <= self.height),
            key=lambda entry: entry[1],
        )
        pending = [entry for entry in self.scheduled[self.ran :] if entry[1] > self.height]
        self.scheduled[self.ran :] = due + pending
        for address, _, method, args in due:
            assert (address, method) == (NAMES_ADDRESS, "expire")
            name = decode_value(args[1:])
            assert isinstance(name, str)
            self.run_expire(name)
        self.ran += len(due)

    @invariant()
    def money_is_conserved_and_fees_are_burnt(self) -> None:
        assert total(self.machine) == self.money
        assert balance(self.machine, NAMES_ADDRESS) == self.fees

    @invariant()
    def resolve_agrees_with_the_model(self) -> None:
        for name in VALID:
            result = call(self.machine, CAROL, "resolve", name)
            if self.held(name):
                assert result.status is CallStatus.SUCCESS, result.reason
                assert decode_value(result.return_data) == self.model[name]
            elif name in self.model:
                assert result.reason == f"name {name!r}: expired at height {self.model[name][2]}"
            else:
                assert result.reason == f"name {name!r}: not registered"
        self.machine.state.end_step()


NamesWalk.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_names_walk = NamesWalk.TestCase
