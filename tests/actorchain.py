"""A built-in actor driven through real machines, height by height, with the cron run at the start
of every block: the harness of the market actors' tests (tests/test_storage_market.py,
tests/test_compute_market.py).

After every call and every height it checks that the actor's balance is what its totals say it
holds (:meth:`ActorChain.held`) and that no Shor was made or lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from qoin.actors import builtin_actors
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.execution import cron
from qoin.execution.abi import Value, decode_value, encode_args
from qoin.execution.account import AccountLeaf, state_key, storage_key
from qoin.execution.overlay import StateOverlay
from qoin.execution.receipt import CallStatus, Event, Receipt
from qoin.execution.vm import BlockEnv, CallResult, Machine
from tests.test_names_actor import NoRuntime

CHAIN_ID = 1337
FUNDS = 10**15
START = 1_000


def parent_hash(height: int) -> bytes:
    """The (made-up, distinct) hash of the block before ``height``."""
    return sha3_256(b"test block", (height - 1).to_bytes(8, "big"))


def funded_state(
    people: Iterable[Address], actor: Address, records: Mapping[bytes, bytes]
) -> dict[bytes, bytes]:
    """Every person funded with :data:`FUNDS`, and ``records`` in the actor's storage."""
    state = {state_key(a): AccountLeaf(FUNDS).encode() for a in people}
    for key, value in records.items():
        state[storage_key(actor, key)] = value
    return state


@dataclass
class ActorChain:
    """State over heights: every height's cron runs (as a block's would), calls run at the head.
    Subclasses say what the actor holds (:meth:`held`) and name its events."""

    state: dict[bytes, bytes]
    height: int
    people: list[Address]
    actor: Address
    event_topics: Mapping[bytes, str]
    supply: int = 0
    events: list[Event] = field(default_factory=list)
    cron_receipts: list[Receipt] = field(default_factory=list)

    def held(self) -> int:
        """What the actor's own bookkeeping says it holds (its totals)."""
        raise NotImplementedError

    def machine(self) -> Machine:
        env = BlockEnv(CHAIN_ID, self.height, self.height * 1000, parent_hash(self.height))
        return Machine(
            StateOverlay(self.state.get), env, builtin_actors(), NoRuntime(), cron.schedule
        )

    def advance(self, height: int) -> list[Receipt]:
        """Run every block's cron step up to ``height``; the cron receipts."""
        assert height >= self.height
        receipts: list[Receipt] = []
        while self.height < height:
            self.height += 1
            machine = self.machine()
            ran = cron.run_due(machine, 0)
            self.state.update(machine.state.changes())
            for receipt in ran:
                assert receipt.status is CallStatus.SUCCESS, receipt.reason
                self.events.extend(receipt.events)
            receipts.extend(ran)
            self.check_money()
        self.cron_receipts.extend(receipts)
        return receipts

    def call(
        self, caller: Address, method: str, *args: Value, value: int = 0, gas: int = 10**8
    ) -> CallResult:
        machine = self.machine()
        machine.begin_step()
        result = machine.call(
            caller=caller,
            origin=caller,
            to=self.actor,
            value=value,
            method=method,
            args=encode_args(list(args)),
            gas=gas,
            depth=1,
        )
        if result.succeeded:
            self.state.update(machine.state.changes())
            self.events.extend(machine.events)
        else:
            assert machine.state.changes() == {}
        self.check_money()
        return result

    def ok(self, caller: Address, method: str, *args: Value, value: int = 0) -> Value | None:
        """Call; it must succeed; its decoded return value (None for no return data)."""
        result = self.call(caller, method, *args, value=value)
        assert result.status is CallStatus.SUCCESS, result.reason
        return decode_value(result.return_data) if result.return_data else None

    def reverts(self, caller: Address, method: str, *args: Value, value: int = 0) -> str:
        """Call; it must revert; its reason."""
        result = self.call(caller, method, *args, value=value)
        assert result.status is CallStatus.REVERTED, (result.status, result.reason)
        return result.reason

    def view(self, method: str, *args: Value) -> Value:
        found = self.ok(self.people[0], method, *args)
        assert found is not None
        return found

    def balance(self, address: Address) -> int:
        return self.machine().leaf(address).balance

    def total(self) -> int:
        return sum(self.balance(a) for a in {*self.people, self.actor, cron.CRON_ADDRESS})

    def check_money(self) -> None:
        """The actor holds exactly its totals; no Shor made or lost."""
        assert self.balance(self.actor) == self.held()
        assert self.total() == self.supply

    def record(self, key: bytes) -> bytes | None:
        return self.state.get(storage_key(self.actor, key)) or None

    def event_names(self, since: int = 0) -> list[str]:
        """The names of the events since position ``since``."""
        return [self.event_topics[e.topics[0]] for e in self.events[since:]]

    def last(self, name: str) -> Value:
        """The data of the last event called ``name``."""
        for event in reversed(self.events):
            if self.event_topics[event.topics[0]] == name:
                return decode_value(event.data)
        raise AssertionError(f"no {name} event")
