"""Contracts that request verified computation (docs/spec/compute.md §3.12): the ``compute-market``
actor driven through real machines with the real WebAssembly runtime, the example contract
``examples/contracts/ai_oracle`` and small test contracts whose callbacks revert or burn gas.

As in tests/test_compute_market.py, acceptances are real signatures from the actor's views, and
after every call and every height no Shor is made or lost (the contracts' balances counted).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import wasmtime

from qoin.actors.compute_market import (
    CALLBACK_GAS,
    MAX_ANSWER,
    Bid,
    Deal,
    FailCode,
    Outcome,
)
from qoin.compute import market, outputs
from qoin.compute.executors.base import StopReason
from qoin.compute.jobspec import JobSpec, Verification
from qoin.contracts import default_runtime
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution import cron
from qoin.execution.abi import Value, decode_value, encode_args, encode_deploy
from qoin.execution.account import COMPUTE_MARKET_ADDRESS
from qoin.execution.overlay import StateOverlay
from qoin.execution.receipt import CallStatus
from qoin.execution.vm import BlockEnv, CallResult, Machine
from tests.actorchain import CHAIN_ID, parent_hash
from tests.test_compute_market import (
    CLIENT,
    COLLATERAL,
    LARGEST,
    MAX_FEE,
    MED,
    OTHER,
    PRICE_CPU,
    PRICE_GPU,
    PROVIDERS,
    SALT,
    Chain,
    acceptance,
    bid_call,
    post_ask,
    register,
    spec_for,
)
from tests.test_wasm import call as wasm_call

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "contracts"
ORACLE = (EXAMPLES / "ai_oracle.wasm").read_bytes()
AGENT = OTHER
ANSWER = b"42\n"


def manifest_for(stdout: bytes, reason: StopReason = StopReason.EXITED) -> outputs.Manifest:
    """The result manifest of a job that printed ``stdout`` and wrote no files."""
    entry = outputs.FileEntry(outputs.STDOUT, len(stdout), outputs.file_digest(stdout))
    return outputs.Manifest(reason, 0, entry)


def market_caller(names: str, funcs: str, storage: bool = False) -> bytes:
    """A contract that calls the market: the host functions it needs (and the storage's), the
    market's address at 0 and ``names`` (the method names, then the revert reason) at 32, and
    ``funcs``."""
    market_bytes = "".join(f"\\{b:02x}" for b in COMPUTE_MARKET_ADDRESS.raw)
    storage_imports = """
  (import "qoin" "storage_read" (func $storage_read (param i32 i32 i32 i32) (result i32)))
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))"""
    return bytes(
        wasmtime.wat2wasm(f"""
(module
  (import "qoin" "input_size" (func $input_size (result i32)))
  (import "qoin" "input_read" (func $input_read (param i32)))
  (import "qoin" "return_data" (func $return_data (param i32 i32)))
  (import "qoin" "revert" (func $revert (param i32 i32)))
  (import "qoin" "value" (func $value (result i64))){storage_imports if storage else ""}
  (import "qoin" "call" (func $call (param i32 i32 i32 i32 i32 i64 i64) (result i32)))
  (import "qoin" "result_size" (func $result_size (result i32)))
  (import "qoin" "result_read" (func $result_read (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{market_bytes}")
  (data (i32.const 32) "{names}")
{funcs})
""")
    )


def test_contract(body: str) -> bytes:
    """A contract whose ``forward`` passes its arguments to the market's ``bid`` with its value,
    and whose callbacks run ``body``."""
    return market_caller(
        "bidnope",
        f"""  (func (export "forward")
    (call $input_read (i32.const 1024))
    (if (call $call (i32.const 0) (i32.const 32) (i32.const 3) (i32.const 1024)
          (call $input_size) (call $value) (i64.const 0))
      (then (call $revert (i32.const 35) (i32.const 4))))
    (call $result_read (i32.const 8192))
    (call $return_data (i32.const 8192) (call $result_size)))
  (func (export "on_compute_result") {body})
  (func (export "on_compute_failed") {body})""",
    )


test_contract.__test__ = False  # type: ignore[attr-defined]

REVERTING = test_contract("(call $revert (i32.const 35) (i32.const 4))")
BURNING = test_contract("(loop $forever (br $forever))")


def rebidding_contract() -> bytes:
    """A contract whose ``forward`` keeps its arguments (under ``b``) and bids with them, and
    whose ``on_compute_failed`` bids again with them (no value), reverting if the market refuses:
    a chain of callbacks, if a callback could afford a bid."""
    return market_caller(
        "bidnopeb",
        """  (func $bid (param $size i32)
    (if (call $call (i32.const 0) (i32.const 32) (i32.const 3) (i32.const 1024)
          (local.get $size) (call $value) (i64.const 0))
      (then (call $revert (i32.const 35) (i32.const 4)))))
  (func (export "forward")
    (call $input_read (i32.const 1024))
    (call $storage_write (i32.const 39) (i32.const 1) (i32.const 1024) (call $input_size))
    (call $bid (call $input_size))
    (call $result_read (i32.const 8192))
    (call $return_data (i32.const 8192) (call $result_size)))
  (func (export "on_compute_result"))
  (func (export "on_compute_failed")
    (call $bid
      (call $storage_read (i32.const 39) (i32.const 1) (i32.const 1024) (i32.const 4096))))""",
        storage=True,
    )


@dataclass
class ContractChain(Chain):
    """The compute market over heights, with WebAssembly contracts."""

    def machine(self) -> Machine:
        env = BlockEnv(CHAIN_ID, self.height, self.height * 1000, parent_hash(self.height))
        return Machine(StateOverlay(self.state.get), env, _ACTORS, default_runtime(), cron.schedule)

    def deploy(self, code: bytes) -> Address:
        machine = self.machine()
        machine.begin_step()
        nonce = machine.leaf(CLIENT).nonce
        result = machine.deploy(
            deployer=CLIENT, nonce=nonce, data=encode_deploy(code), value=0, gas=10**8
        )
        assert result.status is CallStatus.SUCCESS, result.reason
        self.state.update(machine.state.changes())
        address = Address(result.return_data)
        self.people.append(address)
        return address

    def call_contract(
        self, caller: Address, to: Address, method: str, args: bytes, value: int = 0
    ) -> CallResult:
        machine = self.machine()
        machine.begin_step()
        result = wasm_call(machine, to, method, args, gas=10**8, value=value, caller=caller)
        if result.succeeded:
            self.state.update(machine.state.changes())
            self.events.extend(machine.events)
        self.check_money()
        return result

    def last(self, name: str) -> Value:
        """The data of the market's last event called ``name``."""
        for event in reversed(self.events):
            if event.emitter == self.actor and self.event_topics[event.topics[0]] == name:
                return decode_value(event.data)
        raise AssertionError(f"no {name} event")

    def event_names(self, since: int = 0) -> list[str]:
        """The names of the market's events since position ``since``."""
        return [
            self.event_topics[e.topics[0]] for e in self.events[since:] if e.emitter == self.actor
        ]

    def bid_record(self, bid_id: int) -> Bid | None:
        raw = self.record(b"B" + bid_id.to_bytes(8, "big"))
        return None if raw is None else Bid.decode(raw)


_ACTORS = Chain.new([]).machine().actors


@pytest.fixture
def chain() -> ContractChain:
    people = [CLIENT, OTHER, MED, *(p.address for p in PROVIDERS)]
    base = Chain.new(people)
    return ContractChain(
        base.state, base.height, base.people, base.actor, base.event_topics, base.supply
    )


def request_args(
    chain: Chain, spec: JobSpec, *, agent: Address = AGENT, mediators: tuple[Address, ...] = ()
) -> bytes:
    """``ai_oracle.request``'s arguments for ``spec`` at the test prices."""
    res = spec.resources
    none = spec.verification is Verification.NONE
    return encode_args(
        [
            spec.job_hash,
            res.cpus,
            res.memory,
            spec.timeout,
            PRICE_CPU,
            PRICE_GPU,
            int(spec.verification),
            mediators,
            0 if none else MAX_FEE,
            chain.height + 50,
            agent,
        ]
    )


def deposit(verification: Verification) -> int:
    none = verification is Verification.NONE
    return verification.replicas * LARGEST + (0 if none else MAX_FEE)


def request(
    chain: ContractChain,
    oracle: Address,
    verification: Verification = Verification.NONE,
    *,
    extra: int = 0,
) -> int:
    """``ai_oracle.request`` from the agent with the least deposit (+ ``extra``); the bid id."""
    spec = spec_for(verification)
    mediators = () if verification is Verification.NONE else (MED,)
    args = request_args(chain, spec, mediators=mediators)
    result = chain.call_contract(AGENT, oracle, "request", args, deposit(verification) + extra)
    assert result.status is CallStatus.SUCCESS, result.reason
    bid_id = decode_value(result.return_data)
    assert isinstance(bid_id, int)
    return bid_id


def form(
    chain: ContractChain, bid_id: int, providers: list[HybridKeyPair], mediator: Address | None
) -> None:
    signatures = [acceptance(chain, p, bid_id, i, mediator) for i, p in enumerate(providers)]
    call = market.form_deal(bid_id, [p.address for p in providers], signatures, mediator)
    assert chain.do(AGENT, call) == bid_id


def commit_and_reveal(
    chain: ContractChain,
    deal_id: int,
    keys: HybridKeyPair,
    stdout: bytes = ANSWER,
    *,
    sent: bytes | None = None,
) -> None:
    """Commit to the root of a job that printed ``stdout``; reveal with its manifest and
    ``sent`` (default: the stdout, or nothing when it is over the bound)."""
    manifest = manifest_for(stdout)
    root = manifest.root
    chain.do(
        keys.address, market.commit(deal_id, market.commitment(deal_id, keys.address, root, SALT))
    )
    if sent is None:
        sent = stdout if len(stdout) <= MAX_ANSWER else b""
    chain.do(keys.address, market.reveal(deal_id, root, SALT, 15, 0, (manifest.encode(), sent)))


def answer_of(chain: ContractChain, oracle: Address, deal_id: int) -> CallResult:
    return chain.call_contract(CLIENT, oracle, "answer", encode_args([deal_id]))


def callback_done(chain: ContractChain) -> tuple[int, str, int, int, str]:
    data = chain.last("CallbackDone")
    assert isinstance(data, tuple)
    return data  # type: ignore[return-value]


def scheduled(chain: ContractChain) -> tuple[int, str, int]:
    """The last ``CallbackScheduled``'s (id, method, code)."""
    data = chain.last("CallbackScheduled")
    assert isinstance(data, tuple)
    return data[0], data[1], data[2]  # type: ignore[return-value]


def test_the_oracle_asks_the_agent_forms_settlement_calls_back(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    post_ask(chain, PROVIDERS[0])
    before = chain.balance(AGENT)
    bid_id = request(chain, oracle, extra=1000)
    assert chain.balance(AGENT) == before - deposit(Verification.NONE) - 1000
    found = chain.bid_record(bid_id)
    assert found is not None
    assert (found.client, found.agent, found.max_answer) == (oracle, AGENT, MAX_ANSWER)
    info = market.BidInfo.from_value(bid_id, chain.view("get_bid", bid_id))
    assert (info.client, info.agent, info.max_answer, info.acting) == (
        oracle,
        AGENT,
        MAX_ANSWER,
        AGENT,
    )
    assert chain.last("ContractBidPlaced") == (bid_id, AGENT, MAX_ANSWER)

    # Nobody but the client or its agent forms the deal; the excess goes to the contract.
    signature = acceptance(chain, PROVIDERS[0], bid_id, 0, None)
    stranger = market.form_deal(bid_id, [PROVIDERS[0].address], [signature], None)
    assert "only its client" in chain.refuse(CLIENT, stranger)
    form(chain, bid_id, [PROVIDERS[0]], None)
    assert chain.balance(oracle) == 1000
    deal = Deal.decode(chain.record(b"D" + bid_id.to_bytes(8, "big")) or b"")
    assert (deal.client, deal.agent, deal.max_answer) == (oracle, AGENT, MAX_ANSWER)
    assert chain.last("DealFormed")[-1] == AGENT  # type: ignore[index]
    view = market.DealInfo.from_value(bid_id, chain.view("get_deal", bid_id))
    assert (view.agent, view.max_answer, view.acting) == (AGENT, MAX_ANSWER, AGENT)

    assert answer_of(chain, oracle, bid_id).reason == "no answer yet"
    commit_and_reveal(chain, bid_id, PROVIDERS[0])
    assert chain.deal(bid_id) is None  # none: settled at the reveal
    assert chain.last("DealSettled")[1] == int(Outcome.COMPLETED)  # type: ignore[index]
    assert chain.last("AnswerRevealed") == (bid_id, 0, True, ANSWER)
    assert chain.last("CallbackScheduled") == (bid_id, "on_compute_result", 0, chain.height + 1)
    refund = LARGEST - 15 * 7
    assert chain.balance(oracle) == 1000 + refund  # refunds go to the contract, not the agent
    chain.advance(chain.height + 1)
    number, method, status, gas_used, reason = callback_done(chain)
    assert (number, method, status, reason) == (bid_id, "on_compute_result", 0, "")
    assert 0 < gas_used < CALLBACK_GAS
    answered = answer_of(chain, oracle, bid_id)
    assert answered.status is CallStatus.SUCCESS, answered.reason
    assert decode_value(answered.return_data) == ANSWER
    root = chain.call_contract(CLIENT, oracle, "root", encode_args([bid_id]))
    assert decode_value(root.return_data) == manifest_for(ANSWER).root
    answered_event = [e for e in chain.events if e.emitter == oracle][-1]
    assert answered_event.topics == (sha3_256(b"Answered"), bid_id.to_bytes(32, "big"))
    assert answered_event.data == ANSWER
    assert chain.record(b"C" + bid_id.to_bytes(8, "big")) is None
    assert chain.record(b"W" + bid_id.to_bytes(8, "big") + b"\x00") is None
    # The callback ran once: a second cron entry for it finds nothing.
    assert chain.ok(cron.CRON_ADDRESS, "cron_callback", bid_id) is False


def test_only_the_market_calls_the_oracle_back(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    forged = encode_args([1, bytes(32), b"forged"])
    result = chain.call_contract(CLIENT, oracle, "on_compute_result", forged)
    assert (result.status, result.reason) == (
        CallStatus.REVERTED,
        "only the compute market calls back",
    )
    failed = chain.call_contract(CLIENT, oracle, "on_compute_failed", encode_args([1, 3]))
    assert failed.reason == "only the compute market calls back"
    assert answer_of(chain, oracle, 1).reason == "no answer yet"


def test_the_oracle_checks_its_arguments(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    spec = spec_for()
    good = request_args(chain, spec)
    for args, reason in (
        (encode_args([spec.job_hash]), "wrong number of arguments"),
        (good + b"\x00", "trailing argument bytes"),
        (good[:-1], "truncated arguments"),
        (encode_args([b"short", *decode_args_tail(good)]), "expected a 32-byte bytes argument"),
    ):
        result = chain.call_contract(AGENT, oracle, "request", args, deposit(Verification.NONE))
        assert (result.status, result.reason) == (CallStatus.REVERTED, reason)
    # A bid the market refuses (the deposit short) reverts the request, value and all.
    short = chain.call_contract(AGENT, oracle, "request", good, 1)
    assert (short.status, short.reason) == (
        CallStatus.REVERTED,
        "the compute market refused the bid",
    )


def decode_args_tail(args: bytes) -> list[Value]:
    from qoin.execution.abi import decode_args  # noqa: PLC0415

    return list(decode_args(args))[1:]


def test_reveals_must_carry_the_answer_the_root_commits_to(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    post_ask(chain, PROVIDERS[0])
    bid_id = request(chain, oracle)
    form(chain, bid_id, [PROVIDERS[0]], None)
    keys = PROVIDERS[0]
    manifest = manifest_for(ANSWER)
    root = manifest.root
    chain.do(
        keys.address, market.commit(bid_id, market.commitment(bid_id, keys.address, root, SALT))
    )
    chain.advance(chain.height + 1)

    def refused(answer: tuple[bytes, bytes] | None, *, with_root: bytes = root) -> str:
        return chain.refuse(keys.address, market.reveal(bid_id, with_root, SALT, 15, 0, answer))

    assert "asks for an answer" in refused(None)
    assert "not the revealed root's" in refused((manifest_for(b"43\n").encode(), b"43\n"))
    assert "not the stdout the manifest commits to" in refused((manifest.encode(), b"43\n"))
    assert "not the stdout the manifest commits to" in refused((manifest.encode(), ANSWER + b"!"))
    assert "at most 4096" in refused((manifest.encode() + bytes(5000), ANSWER))
    assert "do not open the commitment" in refused((manifest.encode(), ANSWER), with_root=bytes(32))
    chain.do(keys.address, market.reveal(bid_id, root, SALT, 15, 0, (manifest.encode(), ANSWER)))
    chain.advance(chain.height + 1)
    assert decode_value(answer_of(chain, oracle, bid_id).return_data) == ANSWER


def test_an_ordinary_deal_takes_no_answer_and_an_account_no_agent(chain: ContractChain) -> None:
    post_ask(chain, PROVIDERS[0])
    spec = spec_for()
    ordinary = bid_call(chain, spec)
    with_agent = market.MarketCall("bid", (*ordinary.args, AGENT, 10), ordinary.value)
    assert "only a contract bids with an agent" in chain.refuse(CLIENT, with_agent)
    bid_id = chain.do(CLIENT, ordinary)
    assert isinstance(bid_id, int)
    signature = acceptance(chain, PROVIDERS[0], bid_id, 0, None)
    chain.do(CLIENT, market.form_deal(bid_id, [PROVIDERS[0].address], [signature], None))
    manifest = manifest_for(ANSWER)
    keys = PROVIDERS[0]
    chain.do(
        keys.address,
        market.commit(bid_id, market.commitment(bid_id, keys.address, manifest.root, SALT)),
    )
    call = market.reveal(bid_id, manifest.root, SALT, 15, 0, (manifest.encode(), ANSWER))
    assert "asks for no answer" in chain.refuse(keys.address, call)
    chain.do(keys.address, market.reveal(bid_id, manifest.root, SALT, 15, 0))
    assert "CallbackScheduled" not in chain.event_names()


def test_contract_bid_rules(chain: ContractChain) -> None:
    forwarder = chain.deploy(REVERTING)
    spec = spec_for()
    ordinary = bid_call(chain, spec)
    for agent, max_answer in ((forwarder, 10), (market.ZERO_ADDRESS, 10), (AGENT, MAX_ANSWER + 1)):
        args = encode_args([*ordinary.args, agent, max_answer])
        result = chain.call_contract(CLIENT, forwarder, "forward", args, ordinary.value)
        assert result.status is CallStatus.REVERTED
    args = encode_args([*ordinary.args, AGENT, 0])
    placed = chain.call_contract(CLIENT, forwarder, "forward", args, ordinary.value)
    assert placed.status is CallStatus.SUCCESS, placed.reason


def forward_bid(
    chain: ContractChain,
    contract: Address,
    verification: Verification = Verification.NONE,
    max_answer: int = MAX_ANSWER,
) -> int:
    none = verification is Verification.NONE
    call = bid_call(chain, spec_for(verification), mediators=() if none else (MED,))
    args = encode_args([*call.args, AGENT, max_answer])
    result = chain.call_contract(CLIENT, contract, "forward", args, call.value)
    assert result.status is CallStatus.SUCCESS, result.reason
    bid_id = decode_value(result.return_data)
    assert isinstance(bid_id, int)
    return bid_id


@pytest.mark.parametrize(
    ("code", "status"), [(REVERTING, CallStatus.REVERTED), (BURNING, CallStatus.OUT_OF_GAS)]
)
def test_a_failing_callback_does_not_undo_the_settlement(
    chain: ContractChain, code: bytes, status: CallStatus
) -> None:
    contract = chain.deploy(code)
    post_ask(chain, PROVIDERS[0])
    bid_id = forward_bid(chain, contract)
    form(chain, bid_id, [PROVIDERS[0]], None)
    paid_before = chain.balance(PROVIDERS[0].address)
    commit_and_reveal(chain, bid_id, PROVIDERS[0])
    assert chain.balance(PROVIDERS[0].address) == paid_before + 15 * 7
    held = chain.balance(contract)
    chain.advance(chain.height + 1)
    number, method, done_status, gas_used, reason = callback_done(chain)
    assert (number, method, done_status) == (bid_id, "on_compute_result", int(status))
    assert reason
    if status is CallStatus.OUT_OF_GAS:
        assert gas_used == CALLBACK_GAS  # bounded: the protocol pays no more
    assert chain.deal(bid_id) is None
    assert chain.balance(contract) == held
    assert chain.balance(PROVIDERS[0].address) == paid_before + 15 * 7


def test_a_contract_bid_prepays_its_callback_so_a_callback_cannot_bid_again(
    chain: ContractChain,
) -> None:
    """A contract's bid is charged :data:`CALLBACK_GAS` (its callback's gas, which the cron call
    does not charge anyone): a callback, given that much, cannot place a bid, so no contract can
    keep itself called back for free (a zero-deposit bid whose callback bids again)."""
    contract = chain.deploy(rebidding_contract())
    free = bid_call(chain, spec_for(), max_price_cpu=0, max_price_gpu=0)
    assert free.value == 0
    args = encode_args([*free.args, AGENT, 0])
    placed = chain.call_contract(CLIENT, contract, "forward", args)
    assert placed.status is CallStatus.SUCCESS, placed.reason
    assert placed.gas_used > CALLBACK_GAS
    bid_id = decode_value(placed.return_data)
    assert isinstance(bid_id, int)
    chain.do(AGENT, market.cancel_bid(bid_id))
    assert scheduled(chain) == (bid_id, "on_compute_failed", int(FailCode.NO_DEAL))
    since = len(chain.events)
    chain.advance(chain.height + 1)
    # the bid it tries uses up the callback's gas
    assert callback_done(chain)[:3] == (bid_id, "on_compute_failed", int(CallStatus.OUT_OF_GAS))
    assert chain.bid_record(bid_id + 1) is None
    assert "BidPlaced" not in chain.event_names(since)
    chain.advance(chain.height + 60)  # past the first bid's deadline: nothing more called back
    assert "CallbackScheduled" not in chain.event_names(since)


def test_a_stdout_over_the_bound_is_paid_and_reported_too_long(chain: ContractChain) -> None:
    contract = chain.deploy(REVERTING)
    post_ask(chain, PROVIDERS[0])
    bid_id = forward_bid(chain, contract, max_answer=4)
    form(chain, bid_id, [PROVIDERS[0]], None)
    keys = PROVIDERS[0]
    long_out = b"a longer answer\n"
    manifest = manifest_for(long_out)
    chain.do(
        keys.address,
        market.commit(bid_id, market.commitment(bid_id, keys.address, manifest.root, SALT)),
    )
    call = market.reveal(bid_id, manifest.root, SALT, 15, 0, (manifest.encode(), long_out))
    assert "over max_answer" in chain.refuse(keys.address, call)
    chain.do(
        keys.address, market.reveal(bid_id, manifest.root, SALT, 15, 0, (manifest.encode(), b""))
    )
    assert chain.last("AnswerRevealed") == (bid_id, 0, False, b"")
    assert chain.last("ProviderPaid") == (bid_id, 0, 15 * 7)
    assert scheduled(chain) == (bid_id, "on_compute_failed", int(FailCode.ANSWER_TOO_LONG))


def test_an_expired_bid_calls_the_oracle_back_with_no_deal(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    bid_id = request(chain, oracle)
    chain.advance(chain.height + 52)
    assert chain.balance(oracle) == deposit(Verification.NONE)  # refunded to the contract
    assert scheduled(chain) == (bid_id, "on_compute_failed", int(FailCode.NO_DEAL))
    assert callback_done(chain)[:3] == (bid_id, "on_compute_failed", int(CallStatus.SUCCESS))
    assert answer_of(chain, oracle, bid_id).reason == "the job failed"
    failed = [e for e in chain.events if e.emitter == oracle][-1]
    assert failed.topics[0] == sha3_256(b"Failed")
    assert failed.data == int(FailCode.NO_DEAL).to_bytes(8, "big")


def test_the_agent_may_cancel_the_deposit_goes_to_the_contract(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    bid_id = request(chain, oracle)
    assert "only its client" in chain.refuse(CLIENT, market.cancel_bid(bid_id))
    before = chain.balance(AGENT)
    chain.do(AGENT, market.cancel_bid(bid_id))
    assert chain.balance(AGENT) == before
    assert chain.balance(oracle) == deposit(Verification.NONE)
    chain.advance(chain.height + 1)
    assert scheduled(chain) == (bid_id, "on_compute_failed", int(FailCode.NO_DEAL))
    assert callback_done(chain)[:3] == (bid_id, "on_compute_failed", int(CallStatus.SUCCESS))


def test_undelivered_deal_calls_back_a_failure(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    post_ask(chain, PROVIDERS[0])
    bid_id = request(chain, oracle)
    form(chain, bid_id, [PROVIDERS[0]], None)
    chain.advance(chain.height + 40)
    assert scheduled(chain) == (bid_id, "on_compute_failed", int(FailCode.UNDELIVERED))
    assert callback_done(chain)[:3] == (bid_id, "on_compute_failed", int(CallStatus.SUCCESS))
    # The escrow and the client's half of the slashed collateral go to the contract.
    assert chain.balance(oracle) == deposit(Verification.NONE) + COLLATERAL // 2


def test_replicated_mismatch_the_mediator_settles_and_the_honest_answer_comes(
    chain: ContractChain,
) -> None:
    oracle = chain.deploy(ORACLE)
    for keys in PROVIDERS[:2]:
        post_ask(chain, keys)
    register(chain)
    bid_id = request(chain, oracle, Verification.REPLICATED)
    form(chain, bid_id, PROVIDERS[:2], MED)
    honest, cheat = manifest_for(ANSWER), manifest_for(b"41\n")
    for keys, manifest in zip(PROVIDERS[:2], (honest, cheat), strict=True):
        sealed = market.commitment(bid_id, keys.address, manifest.root, SALT)
        chain.do(keys.address, market.commit(bid_id, sealed))
    for keys, manifest, out in zip(PROVIDERS[:2], (honest, cheat), (ANSWER, b"41\n"), strict=True):
        call = market.reveal(bid_id, manifest.root, SALT, 15, 0, (manifest.encode(), out))
        chain.do(keys.address, call)
    assert "MediationStarted" in chain.event_names()
    assert "only its client" in chain.refuse(CLIENT, market.dispute(bid_id))
    chain.do(MED, market.verdict(bid_id, market.VerdictKind.WRONG_RESULT, honest.root))
    chain.advance(chain.height + 1)
    assert callback_done(chain)[:3] == (bid_id, "on_compute_result", 0)
    assert decode_value(answer_of(chain, oracle, bid_id).return_data) == ANSWER


def test_the_agent_may_dispute(chain: ContractChain) -> None:
    oracle = chain.deploy(ORACLE)
    post_ask(chain, PROVIDERS[0])
    register(chain)
    bid_id = request(chain, oracle, Verification.SPOT)
    form(chain, bid_id, [PROVIDERS[0]], MED)
    commit_and_reveal(chain, bid_id, PROVIDERS[0])
    assert "only its client" in chain.refuse(CLIENT, market.dispute(bid_id))
    chain.do(AGENT, market.dispute(bid_id))
    assert "MediationStarted" in chain.event_names()
    chain.do(
        MED, market.verdict(bid_id, market.VerdictKind.CORRECT_RESULT, manifest_for(ANSWER).root)
    )
    chain.advance(chain.height + 1)
    assert decode_value(answer_of(chain, oracle, bid_id).return_data) == ANSWER


def test_records_round_trip_and_ordinary_encodings_are_unchanged() -> None:
    spec = spec_for()
    plain = Bid(
        CLIENT, spec.job_hash, 1, 2, 0, "", spec.executor, 10, 7, 0, Verification.NONE, 0, (), 0,
        99, 140,
    )  # fmt: skip
    assert Bid.decode(plain.encode()) == plain
    contract = dataclasses.replace(plain, agent=AGENT, max_answer=MAX_ANSWER)
    assert contract.encode().startswith(plain.encode())
    assert Bid.decode(contract.encode()) == contract
