"""Account state sampling over every key a block touched (docs/spec/sampling.md), on real executed
blocks — transfers, deployments, WebAssembly contract calls, ``names`` actor calls, the cron step —
real state trees and real proofs.

* ``check_trace`` / ``check_sample`` confirm an honest block, sampled key by key, and name each
  kind of lie: a falsified storage value, an altered recorded write, a step left out of a key's
  history, a read left out of a step's record, a wrong step fee, a wrong fee payout, a bad
  signature, an empty cron record;
* the trace summary (values as references: short ones as themselves, long ones as their hash) and
  the step records fetched for re-execution: encodings decoded strictly, only the steps to
  re-execute fetched, a fetched record that differs from its summary caught (another fee, another
  value, a key left out, a record withheld), a wrong reference of a long value caught when its key
  is drawn;
* hypothesis: on random blocks mixing all of these, honest traces pass with every key sampled, their
  summaries travel and match them, and one falsified post value of any key is always caught;
* the detection rate measured over seeded trials matches the exact hypergeometric probability
  (``QOIN_SAMPLING_SEED`` replays a run: the seed is printed);
* the judge, over the engine API: an honest execution client's VALID is confirmed by sampling, a
  dishonest one whose payload falsifies one storage value (``wrong-storage-value``) is caught, and
  so is one whose step records do not match its summary (``wrong-step-record``); engine_getSteps
  refuses what it must.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import FEE_PER_BLOCK, MIN_TERM, record_key
from qoin.chain.block import Block, Coinbase, Payout
from qoin.chain.builder import next_block
from qoin.chain.genesis import Allocation
from qoin.chain.transaction import (
    DEPLOY_ADDRESS,
    AnyTransaction,
    sign_call,
    sign_transfer,
)
from qoin.consensus.engine import EngineClient, EngineError
from qoin.consensus.judge import DroppedClients, ExecutionJudge, Judgement
from qoin.consensus.sampling import (
    MAX_SAMPLES,
    BadSampleProof,
    KeyProofs,
    SampleFailed,
    SampleMismatch,
    SampleRuleBroken,
    StepFetch,
    check_sample,
    check_trace,
    detection_probability,
    draw_sample,
    fetch_records,
)
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256, tagged_hash
from qoin.crypto.hybrid import HybridKeyPair
from qoin.encoding.codec import encode_varint
from qoin.errors import QoinError
from qoin.execution.abi import encode_call, encode_deploy
from qoin.execution.account import (
    code_key,
    contract_address,
    genesis_state,
    keys_key,
    state_key,
    storage_key,
)
from qoin.execution.client import ExecutionClient
from qoin.execution.cron import CURSOR_KEY
from qoin.execution.dishonest import DishonestClient
from qoin.execution.overlay import StepAccess
from qoin.execution.receipt import CallStatus
from qoin.execution.state import ExecutionState
from qoin.execution.trace import (
    ABSENT_REF,
    MAX_INLINE_VALUE,
    MAX_STEP_RECORDS,
    MAX_TRACE_STEPS,
    REF_HASH,
    REF_VALUE,
    BlockTrace,
    StepSummary,
    TraceSummary,
    ValueRef,
    decode_step_records,
    encode_step_records,
    parse_ref,
    ref_is_hash,
    ref_matches,
    ref_value,
    show_ref,
    step_indexes,
    value_ref,
)
from qoin.execution.transition import BadSignature, BlockOutcome, execute_block, replay_step
from qoin.rpc.serve import BackgroundServer
from qoin.state.nodestore import MemoryNodeStore
from qoin.state.smt import Proof, SparseMerkleTree
from tests.chainutil import test_genesis
from tests.keys import keypair_for

ALICE, BOB, CAROL = (keypair_for(index=i) for i in (50, 51, 52))
MINER = keypair_for(index=53)
FUNDS = 10**12
GENESIS = replace(
    test_genesis(),
    allocation=tuple(Allocation(k.address, FUNDS) for k in (ALICE, BOB, CAROL)),
)
CHAIN = GENESIS.chain_id
REWARD = 77
CODE = (Path(__file__).parents[1] / "examples" / "contracts" / "counter.wasm").read_bytes()
COUNTER = contract_address(ALICE.address, 1)
"""The counter ALICE deploys in the setup block."""
COUNT_KEY = storage_key(COUNTER, b"count")
CALL_GAS = 300_000
DEPLOY_GAS = 1_000_000
TERM_FEE = FEE_PER_BLOCK * MIN_TERM
EXPIRY = 1 + MIN_TERM
"""The height at which the name BOB registers in the setup block expires (the cron runs then)."""


def fresh(index: int) -> Address:
    """An address nobody holds keys for."""
    return Address(tagged_hash(b"QOIN/test/fresh", index.to_bytes(4, "big")))


# --- transactions (cached by content: signing costs a millisecond or so) -------------------------

_SIGNED: dict[tuple[object, ...], AnyTransaction] = {}


def transfer(
    sender: HybridKeyPair, nonce: int, to: Address, amount: int, reveal: bool = False
) -> AnyTransaction:
    key: tuple[object, ...] = ("transfer", sender.address, nonce, to, amount, reveal)
    if key not in _SIGNED:
        _SIGNED[key] = sign_transfer(
            sender,
            chain_id=CHAIN,
            nonce=nonce,
            recipient=to,
            amount=amount,
            fee=21_000,
            reveal_keys=reveal,
        )
    return _SIGNED[key]


def call(
    sender: HybridKeyPair,
    nonce: int,
    to: Address,
    data: bytes,
    value: int = 0,
    gas: int = CALL_GAS,
    reveal: bool = False,
) -> AnyTransaction:
    key: tuple[object, ...] = ("call", sender.address, nonce, to, data, value, gas, reveal)
    if key not in _SIGNED:
        _SIGNED[key] = sign_call(
            sender,
            chain_id=CHAIN,
            nonce=nonce,
            to=to,
            data=data,
            gas_limit=gas,
            fee_per_gas=1,
            value=value,
            reveal_keys=reveal,
        )
    return _SIGNED[key]


def deploy(sender: HybridKeyPair, nonce: int, reveal: bool = False) -> AnyTransaction:
    return call(sender, nonce, DEPLOY_ADDRESS, encode_deploy(CODE), gas=DEPLOY_GAS, reveal=reveal)


def increment(
    sender: HybridKeyPair, nonce: int, to: Address = COUNTER, reveal: bool = False
) -> AnyTransaction:
    return call(sender, nonce, to, encode_call("increment"), reveal=reveal)


def register(
    sender: HybridKeyPair, nonce: int, name: str, value: int = TERM_FEE, reveal: bool = False
) -> AnyTransaction:
    data = encode_call("register", [name, bytes(32), MIN_TERM])
    return call(sender, nonce, NAMES_ADDRESS, data, value=value, reveal=reveal)


# --- executing blocks on an in-memory state ------------------------------------------------------


def template(height: int, txs: Sequence[AnyTransaction]) -> Block:
    """A block at ``height`` paying MINER a reward and the fees (filled in by execution)."""
    header = replace(
        GENESIS.header,
        height=height,
        timestamp_ms=GENESIS.header.timestamp_ms + 1_000 * height,
        parent_hash=sha3_256(height.to_bytes(8, "big")),
    )
    payouts = (Payout(MINER.address, REWARD), Payout(MINER.address, 0))
    return Block(header, (), Coinbase(payouts), tuple(txs))


def tree_of(values: Mapping[bytes, bytes], *changes: Mapping[bytes, bytes]) -> SparseMerkleTree:
    """A real state tree: ``values`` as version 1, then each of ``changes`` as the next version."""
    tree = SparseMerkleTree(MemoryNodeStore())
    tree.update(values, 1)
    for version, more in enumerate(changes, start=2):
        tree.update(more, version)
    return tree


@dataclass(frozen=True)
class Executed:
    """A block executed on ``base``: the block (roots filled in), its outcome, and the proofs an
    honest execution client serves."""

    base: dict[bytes, bytes]
    block: Block
    outcome: BlockOutcome
    parent_root: bytes
    tree: SparseMerkleTree

    @property
    def trace(self) -> BlockTrace:
        return self.outcome.trace

    @property
    def keys(self) -> list[bytes]:
        return self.trace.keys()

    def proofs(self, keys: Sequence[bytes] | None = None) -> dict[bytes, KeyProofs]:
        """Pre proofs at the parent root, post proofs at the tree's current root."""
        tree = self.tree
        return {
            key: KeyProofs(tree.prove_at(self.parent_root, key), tree.prove_at(tree.root, key))
            for key in (self.keys if keys is None else keys)
        }

    def lie(self, changes: Mapping[bytes, bytes], **block: object) -> tuple[Block, Executed]:
        """What a lying client commits to: the parent state with ``changes`` written over it (its
        proofs all verify); the block claiming its root (and ``block``'s other fields)."""
        tree = tree_of(self.base, changes)
        lying = replace(self.block, header=replace(self.block.header, state_root=tree.root))
        lying = replace(lying, **block)  # type: ignore[arg-type]
        return lying, replace(self, block=lying, tree=tree)

    def check(self, sample: Sequence[bytes] | None = None, trace: BlockTrace | None = None) -> None:
        """``check_sample`` of this block with ``sample`` (default: every key of the trace)."""
        chosen = self.keys if sample is None else list(sample)
        check_sample(
            self.parent_root, self.block, trace or self.trace, chosen, self.proofs(self.keys)
        )


def execute(base: Mapping[bytes, bytes], block: Block) -> Executed:
    """Execute ``block`` (fee payout filled in) on ``base``; keep the real post-state tree."""
    outcome = execute_block(base.get, block, fill_fee_payout=True, workers=1)
    values = dict(base)
    tree = tree_of(values)
    parent_root = tree.root
    tree.update(outcome.changes, 2)
    header = replace(block.header, state_root=tree.root, receipts_root=outcome.receipts_root)
    done = replace(block, header=header, coinbase=outcome.coinbase)
    return Executed(values, done, outcome, parent_root, tree)


@cache
def setup_state() -> dict[bytes, bytes]:
    """The state after the setup block (height 1): ALICE and BOB revealed, ALICE's counter
    deployed, BOB's name ``alice`` registered until :data:`EXPIRY` (a cron entry due then)."""
    base = genesis_state(GENESIS)
    txs = [
        transfer(ALICE, 0, BOB.address, 1, reveal=True),
        deploy(ALICE, 1),
        register(BOB, 0, "alice", reveal=True),
    ]
    done = execute(base, template(1, txs))
    assert all(r.status is CallStatus.SUCCESS for r in done.outcome.receipts)
    return {**base, **done.outcome.changes}


def scenario_txs() -> list[AnyTransaction]:
    return [
        increment(ALICE, 2),  # step 1: COUNT_KEY absent -> 1
        increment(BOB, 1),  # step 2: COUNT_KEY 1 -> 2
        transfer(CAROL, 0, fresh(0), 10, reveal=True),  # step 3: a first spend
        register(BOB, 2, "bobby"),  # step 4: actor storage, a cron entry for later
        deploy(CAROL, 1),  # step 5: the same module again
    ]


@cache
def scenario() -> Executed:
    """Five transactions at :data:`EXPIRY`: the cron step expires ``alice`` first."""
    done = execute(setup_state(), template(EXPIRY, scenario_txs()))
    assert [r.status for r in done.outcome.receipts] == [CallStatus.SUCCESS] * 6
    return done


def step_with(
    trace: BlockTrace,
    index: int,
    pre: Mapping[bytes, bytes | None] | None = None,
    post: Mapping[bytes, bytes] | None = None,
    fee: int | None = None,
) -> BlockTrace:
    """``trace`` with step ``index``'s record replaced in part."""
    old = trace.steps[index]
    new = StepAccess(
        tuple(sorted((dict(old.pre) if pre is None else pre).items())),
        tuple(sorted((dict(old.post) if post is None else post).items())),
        old.fee if fee is None else fee,
    )
    steps = list(trace.steps)
    steps[index] = new
    return BlockTrace(tuple(steps))


V = TypeVar("V")


def without(items: Mapping[bytes, V], key: bytes) -> dict[bytes, V]:
    return {k: v for k, v in items.items() if k != key}


def bumped(value: bytes | None) -> bytes:
    """Another value than ``value``."""
    return b"\x01" if not value else bytes([value[0] ^ 1]) + value[1:]


# --- an honest block -----------------------------------------------------------------------------


def test_honest_block_passes_key_by_key() -> None:
    done = scenario()
    keys = done.keys
    # every kind of key is in the population sampled
    expected = {
        state_key(ALICE.address),
        keys_key(ALICE.address),
        keys_key(CAROL.address),
        state_key(COUNTER),
        code_key(sha3_256(CODE)),
        COUNT_KEY,
        storage_key(NAMES_ADDRESS, record_key("alice")),
        storage_key(NAMES_ADDRESS, record_key("bobby")),
        CURSOR_KEY,
        state_key(fresh(0)),
        state_key(MINER.address),
    }
    assert expected <= set(keys)
    check_trace(done.block, done.trace)
    done.check()
    for key in keys:
        done.check([key])
    done.check([])  # the trace alone is checked
    # the fee payout is what the steps charged
    assert done.block.coinbase.payouts[-1].amount == sum(s.fee for s in done.trace.steps) > 0


def test_an_honest_client_over_the_real_database(tmp_path: Path) -> None:
    """The execution client's own trace summary, key proofs and step records (engine_getTrace /
    engine_getProofs / engine_getSteps, here called in process) pass, for every key; its JSON
    answers parse through the engine client's shapes in the judge test below."""
    state = ExecutionState.open(tmp_path, GENESIS)
    try:
        client = ExecutionClient(state)
        parent = GENESIS.block.header
        blocks = []
        for txs in (
            [transfer(ALICE, 0, BOB.address, 1, reveal=True), deploy(ALICE, 1)],
            [
                increment(ALICE, 2),
                increment(BOB, 0, reveal=True),
                register(CAROL, 0, "carol", reveal=True),
            ],
        ):
            block = next_block(GENESIS, parent, MINER, txs, execution=state, sealed=False)
            assert client.new_payload(block)["status"] == "VALID"
            client.forkchoice_updated(block.block_hash)
            blocks.append(block)
            parent = block.header
        block = blocks[-1]
        trace = TraceSummary.decode(bytes.fromhex(client.get_trace(block.block_hash)))
        full = state.trace(block.block_hash)
        assert trace == full.summary() and trace.keys() == full.keys()
        asked: list[list[int]] = []

        def fetch(indexes: Sequence[int]) -> dict[int, StepAccess]:
            asked.append(list(indexes))
            served = client.get_steps(block.block_hash, list(indexes))
            return decode_step_records(bytes.fromhex(served))

        keys = trace.keys()
        answer = client.get_proofs(block.block_hash, keys)
        proofs = {
            bytes.fromhex(entry["key"]): KeyProofs(
                Proof.decode(bytes.fromhex(entry["pre"])),
                Proof.decode(bytes.fromhex(entry["post"])),
            )
            for entry in answer["proofs"]
        }
        parent_root = state.state_root(blocks[0].block_hash)
        assert bytes.fromhex(answer["parentStateRoot"]) == parent_root
        plan = check_sample(parent_root, block, trace, keys, proofs, fetch=fetch)
        # every step changed some key; those whose summary refers to a value by its hash (a
        # sender's keys leaf, the module, a contract's leaf) were fetched, in one call
        assert plan.rerun == tuple(range(len(full.steps)))
        assert asked == [plan.to_fetch(trace)] and asked[0]
        assert all(trace.steps[i].full() is None for i in asked[0])
        for key in keys:
            check_sample(parent_root, block, trace, [key], proofs, fetch=fetch)
        # the records served are the trace's own
        assert fetch([0, 2]) == {0: full.steps[0], 2: full.steps[2]}
        with pytest.raises(ValueError, match="needs a way to fetch"):
            check_sample(parent_root, block, trace, keys, proofs)
    finally:
        state.close()


# --- lies ----------------------------------------------------------------------------------------


def test_a_falsified_storage_value_is_caught_when_its_key_is_sampled() -> None:
    done = scenario()
    changes = dict(done.outcome.changes)
    changes[COUNT_KEY] = bumped(changes[COUNT_KEY])
    _, lying = done.lie(changes)
    with pytest.raises(SampleMismatch, match=f"key {COUNT_KEY.hex()}: the trace leaves it"):
        lying.check([COUNT_KEY])
    with pytest.raises(SampleMismatch):
        lying.check()
    lying.check([key for key in done.keys if key != COUNT_KEY])  # not caught without it


def test_an_altered_recorded_write_is_caught_by_re_execution() -> None:
    """The liar makes the trace agree with its falsified value: the last write of the counter
    records 3 instead of 2. The history fits; re-executing the writer does not."""
    done = scenario()
    step = done.trace.steps[2]
    assert dict(step.post)[COUNT_KEY] == (2).to_bytes(8, "big")
    falsified = (3).to_bytes(8, "big")
    trace = step_with(done.trace, 2, post={**dict(step.post), COUNT_KEY: falsified})
    _, lying = done.lie({**done.outcome.changes, COUNT_KEY: falsified})
    with pytest.raises(SampleMismatch, match=r"step 2 \(transaction 1\) re-executed: key"):
        lying.check([COUNT_KEY], trace)
    with pytest.raises(SampleMismatch, match="re-executed"):
        lying.check(None, trace)
    # BOB's leaf is written by the same step: sampling it re-executes the step too
    with pytest.raises(SampleMismatch, match="re-executed"):
        lying.check([state_key(BOB.address)], trace)
    lying.check([state_key(CAROL.address), CURSOR_KEY], trace)


def test_a_step_left_out_of_a_keys_history() -> None:
    done = scenario()
    first = done.trace.steps[1]  # ALICE's increment: COUNT_KEY absent -> 1
    trace = step_with(
        done.trace, 1, without(dict(first.pre), COUNT_KEY), without(dict(first.post), COUNT_KEY)
    )
    # the next writer recorded 1 before it; the proven pre-value is absent
    with pytest.raises(SampleMismatch, match=r"step 2 \(transaction 1\) records it as 0000"):
        done.check([COUNT_KEY], trace)
    # ALICE's step no longer reproduces its record: it reads and writes a key the record lacks
    with pytest.raises(SampleMismatch, match="lacks"):
        done.check([state_key(ALICE.address)], trace)
    # the last writer left out: the value changed with no writer
    last = done.trace.steps[2]
    trace = step_with(
        done.trace, 2, without(dict(last.pre), COUNT_KEY), without(dict(last.post), COUNT_KEY)
    )
    with pytest.raises(SampleMismatch, match=r"the trace leaves it 0+1; the proven .* has 0+2"):
        done.check([COUNT_KEY], trace)
    # a key only that step accessed is then not in the trace at all: it cannot be drawn, but
    # re-executing the step (when a key it changed is drawn) shows the omission
    name = storage_key(NAMES_ADDRESS, record_key("bobby"))
    bobby = done.trace.steps[4]
    trace = step_with(
        done.trace, 4, without(dict(bobby.pre), name), without(dict(bobby.post), name)
    )
    assert name not in set(trace.keys())
    with pytest.raises(SampleMismatch, match=f"key {name.hex()}, which its access record lacks"):
        done.check([state_key(BOB.address)], trace)


def test_a_read_left_out_of_a_steps_record() -> None:
    """ALICE's call reads the counter's module; its record says it did not. The module's own
    history is fine (nobody changes it): the omission shows when a key ALICE's step changed is
    sampled, since re-executing the step reads the module."""
    done = scenario()
    module = code_key(sha3_256(CODE))
    step = done.trace.steps[1]
    assert module in dict(step.pre) and module not in dict(step.post)
    trace = step_with(done.trace, 1, pre=without(dict(step.pre), module))
    assert module in set(trace.keys())  # still read by others
    done.check([module], trace)
    for changed in (state_key(ALICE.address), COUNT_KEY):
        with pytest.raises(SampleMismatch, match=f"reads key {module.hex()}.*lacks"):
            done.check([changed], trace)


def test_a_wrong_step_fee() -> None:
    """The liar charges ALICE's call 5 Shor more and pays them to the miner: the fee payout
    matches the steps' fees, and the payout step re-executes to its record; re-executing ALICE's
    step shows the lie."""
    done = scenario()
    steps = done.trace.steps
    last = len(steps) - 1
    trace = step_with(done.trace, 1, fee=steps[1].fee + 5)
    payouts = list(done.block.coinbase.payouts)
    payouts[-1] = Payout(payouts[-1].recipient, payouts[-1].amount + 5)
    coinbase = Coinbase(tuple(payouts))
    fees = sum(step.fee for step in trace.steps)
    paid = replay_step(replace(done.block, coinbase=coinbase), last, steps[last], fees)
    trace = step_with(trace, last, post=dict(paid.post))
    _, lying = done.lie({**done.outcome.changes, **dict(paid.post)}, coinbase=coinbase)
    check_trace(lying.block, trace)
    lying.check([state_key(MINER.address)], trace)  # the payout itself is consistent
    with pytest.raises(SampleMismatch, match=r"charges \d+ Shor, the trace says"):
        lying.check([state_key(ALICE.address)], trace)


def test_a_wrong_fee_payout_is_caught_whatever_is_sampled() -> None:
    done = scenario()
    payouts = list(done.block.coinbase.payouts)
    payouts[-1] = Payout(payouts[-1].recipient, payouts[-1].amount + 1)
    block = replace(done.block, coinbase=Coinbase(tuple(payouts)))
    for sample in ([], [COUNT_KEY], done.keys):
        with pytest.raises(SampleRuleBroken, match="last coinbase payout"):
            check_sample(done.parent_root, block, done.trace, sample, done.proofs())


def test_trace_shape_checks() -> None:
    done = scenario()
    steps = done.trace.steps
    with pytest.raises(SampleMismatch, match="the trace has 6 steps; a block of 5"):
        check_trace(done.block, BlockTrace(steps[:-1]))
    with pytest.raises(SampleMismatch, match="fee in the cron or payout step"):
        check_trace(done.block, step_with(done.trace, 0, fee=1))
    carol = state_key(CAROL.address)  # step 3 is CAROL's transfer to fresh(0)
    bare = step_with(
        done.trace, 3, without(dict(steps[3].pre), carol), without(dict(steps[3].post), carol)
    )
    with pytest.raises(SampleMismatch, match="account leaf of its sender"):
        check_trace(done.block, bare)
    payee = state_key(fresh(0))
    bare = step_with(
        done.trace, 3, without(dict(steps[3].pre), payee), without(dict(steps[3].post), payee)
    )
    with pytest.raises(SampleMismatch, match="account leaf of its recipient"):
        check_trace(done.block, bare)
    miner = state_key(MINER.address)
    bare = step_with(
        done.trace, 6, without(dict(steps[6].pre), miner), without(dict(steps[6].post), miner)
    )
    with pytest.raises(SampleMismatch, match="payout step does not access"):
        check_trace(done.block, bare)


def flipped(proof: Proof) -> list[Proof]:
    """Every decodable proof that differs from ``proof`` in one byte of its encoding."""
    data = proof.encode()
    out = []
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x01
        try:
            out.append(Proof.decode(bytes(altered)))
        except QoinError:
            continue
    return out


@pytest.mark.parametrize("which", ["pre", "post"])
def test_proofs_altered_in_a_byte(which: str) -> None:
    done = scenario()
    proofs = done.proofs([COUNT_KEY])
    good = proofs[COUNT_KEY]
    variants = flipped(getattr(good, which))
    assert len(variants) > 10
    for proof in variants:
        forged = {COUNT_KEY: replace(good, **{which: proof})}
        with pytest.raises(BadSampleProof, match=f"{which}-state proof .* does not verify"):
            check_sample(done.parent_root, done.block, done.trace, [COUNT_KEY], forged)


def test_proofs_missing_or_against_another_root() -> None:
    done = scenario()
    proofs = done.proofs()
    block, trace = done.block, done.trace
    with pytest.raises(BadSampleProof, match="no proofs"):
        check_sample(done.parent_root, block, trace, [COUNT_KEY], {})
    with pytest.raises(SampleFailed, match="not in the trace"):
        check_sample(done.parent_root, block, trace, [state_key(fresh(7))], proofs)
    stale = {COUNT_KEY: replace(proofs[COUNT_KEY], post=proofs[COUNT_KEY].pre)}
    with pytest.raises(BadSampleProof, match="post-state proof"):
        check_sample(done.parent_root, block, trace, [COUNT_KEY], stale)
    with pytest.raises(BadSampleProof, match="pre-state proof"):
        check_sample(block.header.state_root, block, trace, [COUNT_KEY], proofs)


def test_signatures_are_checked_with_the_senders_keys_only() -> None:
    """ALICE's call carries a valid signature of another message. The trace is the honest one
    (execution never looks at signatures): only sampling ALICE's account leaf — the key her step
    changes as sender — shows it. CAROL's first spend, which carries her keys, likewise through
    her keys leaf."""
    done = scenario()
    txs = list(done.block.transactions)
    for index, other, sender in ((0, increment(ALICE, 3), ALICE), (2, deploy(CAROL, 1), CAROL)):
        forged = list(txs)
        forged[index] = replace(txs[index], signature=other.signature)
        block = replace(done.block, transactions=tuple(forged))
        caught = [state_key(sender.address)] + (
            [keys_key(CAROL.address)] if sender is CAROL else []
        )
        for key in caught:
            with pytest.raises(SampleRuleBroken, match="bad signature"):
                check_sample(done.parent_root, block, done.trace, [key], done.proofs())
        others = [k for k in done.keys if k not in caught]
        check_sample(done.parent_root, block, done.trace, others, done.proofs())
        with pytest.raises(BadSignature):
            execute_block(done.base.get, block)


def test_a_cron_step_left_out() -> None:
    """The liar skips the due cron call (the name ``alice`` stays registered) and records an empty
    cron step: empty records are always re-executed, so it is caught whatever is sampled. A cron
    step that records reading the cursor and changing nothing is caught when the cursor is
    sampled."""
    done = scenario()
    steps = done.trace.steps
    later: dict[bytes, bytes] = {}
    for step in steps[1:]:
        later.update(step.post)
    empty = step_with(done.trace, 0, {}, {})
    _, lying = done.lie(later)
    with pytest.raises(SampleMismatch, match=r"step 0 \(cron\) re-executed: .*lacks"):
        lying.check([], empty)
    cursor = dict(steps[0].pre)[CURSOR_KEY]
    idle = step_with(done.trace, 0, {CURSOR_KEY: cursor}, {})
    lying.check([state_key(ALICE.address)], idle)
    with pytest.raises(SampleMismatch, match=r"step 0 \(cron\) re-executed"):
        lying.check([CURSOR_KEY], idle)


# --- the trace summary and the step records ------------------------------------------------------


def test_the_summary_refers_to_each_value_by_itself_or_its_hash() -> None:
    done = scenario()
    trace = done.trace
    summary = trace.summary()
    assert len(summary.steps) == len(trace.steps) and summary.keys() == trace.keys()
    hashed = inline = absent = 0
    for step, summed in zip(trace.steps, summary.steps, strict=True):
        assert summed.keys() == step.keys() and summed.fee == step.fee
        assert [k for k, _ in summed.post] == [k for k, _ in step.post]
        for (_, value), (_, ref) in zip(
            step.pre + step.post, summed.pre + summed.post, strict=True
        ):
            assert ref_matches(ref, value) and ref == value_ref(value)
            if value is None:
                absent += 1
                assert ref == ABSENT_REF and ref_value(ref) is None
            elif len(value) <= MAX_INLINE_VALUE:
                inline += 1
                assert ref[0] == REF_VALUE and ref_value(ref) == value
            else:
                hashed += 1
                assert ref_is_hash(ref) and ref == bytes([REF_HASH]) + sha3_256(value)
                with pytest.raises(ValueError, match="does not carry"):
                    ref_value(ref)
        assert StepSummary.of(step) == summed and summed.mismatch(step) is None
        # a step whose summary carries every value is its own full record
        refs = [ref for _, ref in summed.pre + summed.post]
        assert summed.full() == (None if any(map(ref_is_hash, refs)) else step)
    assert hashed and inline and absent  # keys leaves and the module; balances; new keys
    encoded = summary.encode()
    assert TraceSummary.decode(encoded) == summary
    assert trace.encode_summary() == encoded
    assert len(encoded) * 2 < len(trace.encode())  # the module and the public keys stay home
    # the boundary: 32 bytes travel as themselves, 33 as their hash; empty is not absent
    for size in (0, 1, MAX_INLINE_VALUE, MAX_INLINE_VALUE + 1, 2_000):
        value = bytes(i % 251 for i in range(size))
        ref = value_ref(value)
        assert parse_ref(ref) == ref and ref_matches(ref, value)
        assert ref_is_hash(ref) == (size > MAX_INLINE_VALUE)
        assert not ref_matches(ref, value + b"\x00") and not ref_matches(ref, None)
        assert show_ref(ref)
    assert value_ref(b"") != ABSENT_REF and not ref_matches(value_ref(b""), None)
    for bad in (b"", b"\x03", b"\x00\x00", b"\x01\x21" + bytes(33), b"\x02" + bytes(31)):
        with pytest.raises(ValueError, match="not a value reference"):
            parse_ref(bad)


def test_summaries_and_step_records_decode_strictly() -> None:
    key_a, key_b = sha3_256(b"a"), sha3_256(b"b")
    good = TraceSummary(
        (
            StepSummary(
                ((key_a, value_ref(b"x" * 40)), (key_b, ABSENT_REF)), ((key_b, value_ref(b"y")),), 3
            ),
        )
    )
    encoded = good.encode()
    assert TraceSummary.decode(encoded) == good
    # items: a count, then key, tag and reference each
    assert encoded[0] == 3 and encoded[33] == REF_HASH
    for bad, reason in (
        (encoded[:33] + b"\x03" + encoded[34:], "tag must be 0, 1 or 2"),
        (encoded[:-1], "ends too soon"),
        (encoded + b"\x00", "trailing bytes"),
    ):
        with pytest.raises(QoinError, match=reason):
            TraceSummary.decode(bad)
    inline_33 = b"\x01" + key_a + b"\x01\x21" + bytes(33) + b"\x01\x01\x00\x00\x00"
    with pytest.raises(QoinError, match="at most 32 bytes"):
        TraceSummary.decode(inline_33)
    outside = b"\x01" + key_a + b"\x00" + b"\x01\x01\x01\x00\x00"
    with pytest.raises(QoinError, match="outside the table"):
        TraceSummary.decode(outside)
    # hand-built steps with unsorted keys or foreign changes encode, and are refused on decode
    for pre, post, reason in (
        (((key_b, ABSENT_REF), (key_a, ABSENT_REF)), (), "not sorted and distinct"),
        (((key_a, ABSENT_REF),), ((key_a, ABSENT_REF),), "changes a key it did not access"),
        (((key_a, ABSENT_REF),), ((key_b, value_ref(b"z")),), "changes a key it did not access"),
    ):
        with pytest.raises(QoinError, match=reason):
            TraceSummary.decode(TraceSummary((StepSummary(pre, post),)).encode())
    with pytest.raises(ValueError, match="not a value reference"):
        TraceSummary((StepSummary(((key_a, ValueRef(b"\x05")),), ()),)).encode()
    # step records: strictly increasing step numbers, one per record, at most MAX_STEP_RECORDS
    steps = scenario().trace.steps
    records = {4: steps[4], 1: steps[1]}
    served = encode_step_records(records)
    assert decode_step_records(served) == records
    assert list(decode_step_records(served)) == [1, 4]
    assert decode_step_records(encode_step_records({})) == {}
    body = served[3:]  # count 2, indexes 1 and 4, then the records as a trace
    for bad, reason in (
        (b"\x02\x04\x01" + body, "strictly increasing"),
        (b"\x02\x01\x01" + body, "strictly increasing"),
        (b"\x01\x01" + body, "1 step indexes for 2 records"),
        (
            b"\x01" + encode_varint(MAX_TRACE_STEPS) + BlockTrace((steps[1],)).encode(),
            "step numbers",
        ),
        (encode_varint(MAX_STEP_RECORDS + 1), "exceed the bound"),
    ):
        with pytest.raises(QoinError, match=reason):
            decode_step_records(bad)
    with pytest.raises(ValueError, match="at most"):
        encode_step_records(dict.fromkeys(range(MAX_STEP_RECORDS + 1), steps[1]))
    # what engine_getSteps accepts
    assert step_indexes([5, 0, 5, 2]) == [0, 2, 5]
    for bad_indexes, reason in (
        ([True], "integers"),
        (["1"], "integers"),
        ([-1], "between"),
        ([MAX_TRACE_STEPS], "between"),
        (list(range(MAX_STEP_RECORDS + 1)), "at most"),
    ):
        with pytest.raises(ValueError, match=reason):
            step_indexes(bad_indexes)


def honest_records(trace: BlockTrace, asked: list[list[int]] | None = None) -> StepFetch:
    """What an honest execution client serves for ``engine_getSteps``: the trace's own records
    (each call's indexes appended to ``asked``)."""

    def fetch(indexes: Sequence[int]) -> dict[int, StepAccess]:
        if asked is not None:
            asked.append(list(indexes))
        return decode_step_records(encode_step_records({i: trace.steps[i] for i in indexes}))

    return fetch


def test_only_the_steps_to_re_execute_are_fetched() -> None:
    """Sampling the counter's value re-executes the two calls that wrote it (they read the module:
    their records are fetched); sampling the cron cursor re-executes the cron step, whose summary
    carries every value (nothing is fetched for it)."""
    done = scenario()
    summary = done.trace.summary()
    proofs = done.proofs()
    asked: list[list[int]] = []
    fetch = honest_records(done.trace, asked)
    plan = check_sample(done.parent_root, done.block, summary, [COUNT_KEY], proofs, fetch=fetch)
    assert plan.rerun == (1, 2) and plan.signed == () and asked == [[1, 2]]
    asked.clear()
    plan = check_sample(done.parent_root, done.block, summary, [CURSOR_KEY], proofs, fetch=fetch)
    assert 0 in plan.rerun
    fetched = set(itertools.chain.from_iterable(asked))
    assert all(index not in fetched for index in plan.rerun if summary.steps[index].full())
    asked.clear()
    alice = state_key(ALICE.address)
    plan = check_sample(done.parent_root, done.block, summary, [alice], proofs, fetch=fetch)
    assert 1 in plan.signed and 1 in asked[0]  # her call: re-executed, fetched, signature checked
    # fetch_records asks in calls of at most MAX_STEP_RECORDS and keeps only what it asked for
    calls: list[int] = []

    def generous(indexes: Sequence[int]) -> dict[int, StepAccess]:
        calls.append(len(indexes))
        return {i: StepAccess((), (), i) for i in [*indexes, 10**6]}

    got = fetch_records(generous, list(range(2 * MAX_STEP_RECORDS + 3)))
    assert calls == [MAX_STEP_RECORDS, MAX_STEP_RECORDS, 3]
    assert sorted(got) == list(range(2 * MAX_STEP_RECORDS + 3))


def test_a_fetched_step_that_differs_from_its_summary_is_caught() -> None:
    """The summary is honest; the records served for the counter's writers are not what it says:
    another fee, another module, a key left out, or no record at all. Each is caught when the
    counter's value is sampled, before anything is re-executed."""
    done = scenario()
    summary = done.trace.summary()
    proofs = done.proofs()
    honest = done.trace.steps[2]
    module = code_key(sha3_256(CODE))
    pre = dict(honest.pre)
    assert ref_is_hash(dict(summary.steps[2].pre)[module])
    forgeries = {
        "fee": (replace(honest, fee=honest.fee + 1), r"charges \d+ Shor, the summary says"),
        "module": (
            replace(honest, pre=tuple(sorted({**pre, module: CODE + b"\x00"}.items()))),
            f"key {module.hex()} before it is a value of SHA3-256 .*, the summary says a value",
        ),
        "key left out": (
            replace(honest, pre=tuple(sorted(without(pre, module).items()))),
            "the keys it records before the step are not those of the summary",
        ),
    }
    for name, (forged, reason) in forgeries.items():

        def lying(indexes: Sequence[int], forged: StepAccess = forged) -> dict[int, StepAccess]:
            return {i: forged if i == 2 else done.trace.steps[i] for i in indexes}

        with pytest.raises(
            SampleMismatch, match=r"step 2 \(transaction 1\): the record served"
        ) as caught:
            check_sample(done.parent_root, done.block, summary, [COUNT_KEY], proofs, fetch=lying)
        assert re.search(reason, str(caught.value)), (name, caught.value)
        # a key whose steps do not include step 2 passes: the lie is not looked at
        check_sample(done.parent_root, done.block, summary, [CURSOR_KEY], proofs, fetch=lying)

    def withholding(indexes: Sequence[int]) -> dict[int, StepAccess]:
        return {i: done.trace.steps[i] for i in indexes if i != 2}

    with pytest.raises(SampleMismatch, match=r"step 2 .*did not serve its record"):
        check_sample(done.parent_root, done.block, summary, [COUNT_KEY], proofs, fetch=withholding)


def test_a_wrong_reference_of_a_long_value_is_caught_when_its_key_is_drawn() -> None:
    """The summary says ALICE's call read BOB's public keys as hers (the hash of BOB's keys leaf
    where hers is). Drawing her keys leaf walks its history into that reference: caught. Drawing
    a key her call changed re-executes her call: the honest record does not match the summary;
    a record made to match it (BOB's keys) does not re-execute or verify as hers. A key that leads
    elsewhere does not see the lie."""
    done = scenario()
    summary = done.trace.summary()
    proofs = done.proofs()
    hers, his = keys_key(ALICE.address), keys_key(BOB.address)
    step = done.trace.steps[1]  # ALICE's increment: reads her keys leaf
    bobs_keys = dict(done.trace.steps[2].pre)[his]  # BOB's increment reads his
    assert len(dict(step.pre)[hers] or b"") > MAX_INLINE_VALUE
    wrong = value_ref(bobs_keys)
    steps = list(summary.steps)
    steps[1] = replace(steps[1], pre=tuple((k, wrong if k == hers else r) for k, r in steps[1].pre))
    lying = TraceSummary(tuple(steps))
    lying = TraceSummary.decode(lying.encode())  # it travels
    honest = honest_records(done.trace)
    with pytest.raises(
        SampleMismatch, match=f"key {hers.hex()}: step 1 .* records it as a value of SHA3-256"
    ):
        check_sample(done.parent_root, done.block, lying, [hers], proofs, fetch=honest)
    alice = state_key(ALICE.address)
    with pytest.raises(SampleMismatch, match=r"step 1 .*record served does not match the trace"):
        check_sample(done.parent_root, done.block, lying, [alice], proofs, fetch=honest)
    forged = replace(step, pre=tuple((k, bobs_keys if k == hers else v) for k, v in step.pre))

    def matching(indexes: Sequence[int]) -> dict[int, StepAccess]:
        return {i: forged if i == 1 else done.trace.steps[i] for i in indexes}

    with pytest.raises(SampleFailed):
        check_sample(done.parent_root, done.block, lying, [alice], proofs, fetch=matching)
    check_sample(
        done.parent_root, done.block, lying, [state_key(CAROL.address)], proofs, fetch=matching
    )


# --- random blocks -------------------------------------------------------------------------------

SENDERS = (ALICE, BOB, CAROL)
RECIPIENTS = (ALICE.address, BOB.address, COUNTER, NAMES_ADDRESS, fresh(1), fresh(2))
NAMES = ("alice", "bobby", "carol")


@st.composite
def random_blocks(draw: st.DrawFn) -> Block:
    """Up to six transactions by three senders: transfers (some of nothing), deployments,
    counter calls (to the counter, to a fresh deployment, to no contract), names registrations
    (some short of the fee, some of a held name), undecodable call data, calls that run out of
    gas; at a height where the cron has a name to expire, or not."""
    nonces = {ALICE.address: 2, BOB.address: 1, CAROL.address: 0}
    txs: list[AnyTransaction] = []
    for _ in range(draw(st.integers(0, 6))):
        sender = draw(st.sampled_from(SENDERS))
        nonce = nonces[sender.address]
        reveal = sender is CAROL and nonce == 0
        kind = draw(st.sampled_from(("transfer", "deploy", "increment", "register", "bad", "oog")))
        if kind == "transfer":
            to = draw(st.sampled_from(RECIPIENTS))
            tx = transfer(sender, nonce, to, draw(st.sampled_from((0, 1, 500))), reveal)
        elif kind == "deploy":
            tx = deploy(sender, nonce, reveal)
        elif kind == "increment":
            target = draw(st.sampled_from(("counter", "own", "nowhere")))
            to = {
                "counter": COUNTER,
                "own": contract_address(sender.address, max(nonce - 1, 0)),
                "nowhere": fresh(3),
            }[target]
            tx = call(sender, nonce, to, encode_call("increment"), reveal=reveal)
        elif kind == "register":
            value = draw(st.sampled_from((TERM_FEE, TERM_FEE - 1, TERM_FEE + 7)))
            data = encode_call("register", [draw(st.sampled_from(NAMES)), bytes(32), MIN_TERM])
            tx = call(sender, nonce, NAMES_ADDRESS, data, value=value, reveal=reveal)
        elif kind == "bad":
            tx = call(sender, nonce, COUNTER, b"\xff\xff", reveal=reveal)
        else:
            tx = call(sender, nonce, COUNTER, encode_call("increment"), gas=21_200, reveal=reveal)
        txs.append(tx)
        nonces[sender.address] += 1
    return template(draw(st.sampled_from((2, EXPIRY))), txs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_blocks(), st.integers(0, 2**32))
def test_random_blocks_honest_pass_and_one_falsified_value_is_caught(
    block: Block, pick: int
) -> None:
    done = execute(setup_state(), block)
    for receipt in done.outcome.receipts:
        event(receipt.status.name)
    keys = done.keys
    done.check()  # every key of an honest trace
    summary = done.trace.summary()  # its summary travels, and matches it step by step
    assert TraceSummary.decode(summary.encode()) == summary
    assert done.trace.encode_summary() == summary.encode()
    for step, summed in zip(done.trace.steps, summary.steps, strict=True):
        assert summed.mismatch(step) is None and summed.full() in (None, step)
    key = keys[pick % len(keys)]
    value = done.outcome.touched.get(key)
    changes = {**done.outcome.changes, key: bumped(value)}
    _, lying = done.lie(changes)
    event("absent key falsified" if value is None else "value falsified")
    with pytest.raises(SampleMismatch):
        lying.check()
    with pytest.raises(SampleMismatch):
        lying.check([key])


# --- draw_sample and the detection probability --------------------------------------------------


def sampling_seed() -> int:
    seed = int(os.environ.get("QOIN_SAMPLING_SEED", "20240917"))
    print(f"QOIN_SAMPLING_SEED={seed}")
    return seed


def test_draw_sample_distinct_and_uniform() -> None:
    rng = random.Random(sampling_seed())
    keys = [sha3_256(bytes([i])) for i in range(20)]
    for k in (0, 1, 5, 19):
        sample = draw_sample(keys, k, rng)
        assert len(sample) == k == len(set(sample))
        assert set(sample) <= set(keys)
    for k in (20, 21, 1_000):
        assert sorted(draw_sample(keys, k, rng)) == sorted(keys)
    assert sorted(draw_sample(keys + keys, 40, rng)) == sorted(keys)  # distinct keys
    assert draw_sample([], 16) == []
    system = draw_sample(keys, 7)  # the default CSPRNG
    assert len(set(system)) == 7 and set(system) <= set(keys)
    trials, k = 4_000, 5
    counts = dict.fromkeys(keys, 0)
    for _ in range(trials):
        for key in draw_sample(keys, k, rng):
            counts[key] += 1
    p = k / len(keys)
    bound = 4.5 * math.sqrt(p * (1 - p) / trials)
    assert all(abs(count / trials - p) <= bound for count in counts.values()), counts


def test_detection_probability_formula() -> None:
    for n in range(7):
        for m in range(n + 1):
            bad = set(range(m))
            for k in range(n + 2):
                samples = list(itertools.combinations(range(n), min(k, n)))
                caught = sum(1 for s in samples if bad.intersection(s))
                assert detection_probability(n, m, k) == pytest.approx(caught / len(samples))
    for m, k in ((10, 16), (50, 64), (1, 999)):
        missed = math.prod((1_000 - m - i) / (1_000 - i) for i in range(k))
        assert detection_probability(1_000, m, k) == pytest.approx(1 - missed, rel=1e-12)
    for f, k in itertools.product((0.01, 0.1, 0.5), (1, 16, 64)):
        exact = detection_probability(100_000, int(f * 100_000), k)
        assert exact == pytest.approx(1 - (1 - f) ** k, abs=2e-3)
        assert exact >= 1 - (1 - f) ** k - 1e-12
    assert detection_probability(40, 1, 40) == 1.0
    assert detection_probability(40, 0, 16) == 0.0
    for bad_args in ((3, 4, 1), (3, -1, 1), (3, 1, -1), (-1, 0, 0)):
        with pytest.raises(ValueError):
            detection_probability(*bad_args)


TRIALS = 400
"""Trials per (k, m) pair whose outcome is random; 100 where the formula gives 0 or 1."""
PAIRS = ((1, 4), (4, 2), (16, 1), (16, 4), (16, 0), (64, 2))
"""(k sampled, m falsified) pairs measured."""


def test_detection_rate_matches_formula() -> None:
    """A block of transfers and counter calls; the liar falsifies the post values of ``m`` of its
    keys (every proof verifies). Each falsified key is caught alone, every other key passes alone,
    and the rate at which random samples of ``k`` keys are caught matches the formula."""
    seed = sampling_seed()
    rng = random.Random(seed)
    txs = [
        transfer(ALICE, 2, fresh(10), 5),
        increment(BOB, 1),
        transfer(CAROL, 0, fresh(11), 7, True),
    ]
    txs += [increment(ALICE, 3), transfer(BOB, 2, fresh(12), 9), increment(CAROL, 1)]
    done = execute(setup_state(), template(2, txs))
    keys = done.keys
    n = len(keys)
    order = rng.sample(keys, n)
    for m in sorted({m for _, m in PAIRS}):
        falsified = set(order[:m])
        changes = dict(done.outcome.changes)
        for key in falsified:
            changes[key] = bumped(done.outcome.touched.get(key))
        _, lying = done.lie(changes)
        for key in keys:
            if key in falsified:
                with pytest.raises(SampleMismatch):
                    lying.check([key])
            else:
                lying.check([key])
        for k in sorted({k for k, pm in PAIRS if pm == m}):
            expected = detection_probability(n, m, k)
            trials = 100 if expected in (0.0, 1.0) else TRIALS
            detected = 0
            for _ in range(trials):
                try:
                    lying.check(draw_sample(keys, k, rng))
                except SampleMismatch:
                    detected += 1
            measured = detected / trials
            print(f"n={n} m={m} k={k}: detected {measured:.4f}, formula {expected:.4f}")
            if expected in (0.0, 1.0):
                assert measured == expected, (seed, n, m, k)
            else:
                bound = max(4 * math.sqrt(expected * (1 - expected) / trials), 0.01)
                assert abs(measured - expected) <= bound, (seed, n, m, k, measured, expected)


# --- the judge over the engine API ---------------------------------------------------------------

SECRET = bytes(range(32))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[ExecutionState]:
    """An execution database with the setup block: ALICE and BOB revealed, the counter deployed."""
    state = ExecutionState.open(tmp_path / "execution", GENESIS)
    txs = [transfer(ALICE, 0, BOB.address, 1, reveal=True), deploy(ALICE, 1)]
    block = next_block(GENESIS, GENESIS.block.header, MINER, txs, execution=state, sealed=False)
    assert state.new_payload(block).status.value == "VALID"
    state.forkchoice_updated(block.block_hash)
    yield state
    state.close()


def judged_payload(
    state: ExecutionState, client: ExecutionClient, tmp_path: Path
) -> tuple[Block, Judgement, dict[str, dict[str, str]]]:
    """Serve ``client``'s engine API; have it build a payload of a counter call, a names
    registration and a transfer; judge it with that client alone, every key sampled."""
    txs = [
        increment(ALICE, 2),
        register(BOB, 0, "bobby", reveal=True),
        transfer(ALICE, 3, fresh(4), 5),
    ]
    submitted = client.submit_transactions([tx.encode().hex() for tx in txs])
    assert [s["status"] for s in submitted] == ["added"] * 3, submitted
    head = state.head
    parent = state.block(head)
    assert parent is not None
    template_block = next_block(GENESIS, parent.header, MINER, (), sealed=False)
    with BackgroundServer(client.engine_server(SECRET).app) as server:
        engine = EngineClient(server.url, SECRET, timeout=10)
        payload_id = engine.forkchoice_updated(head, template_block)
        assert payload_id is not None
        block = engine.get_payload(payload_id)
        assert len(block.transactions) == 3
        dropped = DroppedClients(tmp_path / "dropped.json")
        judge = ExecutionJudge([engine], dropped, samples=MAX_SAMPLES)
        try:
            judgement = judge.judge(block, state.state_root(head))
            return block, judgement, dict(judge.report()["dropped"])
        finally:
            judge.close()


def test_the_judge_confirms_an_honest_client_by_sampling(
    database: ExecutionState, tmp_path: Path
) -> None:
    _, judgement, dropped = judged_payload(database, ExecutionClient(database), tmp_path)
    assert judgement.valid and judgement.how == "sampled"
    assert dropped == {}


def test_the_judge_catches_a_falsified_storage_value(
    database: ExecutionState, tmp_path: Path
) -> None:
    """The dishonest client builds a payload whose state root has one storage value changed and
    calls it VALID; its trace and proofs are consistent with that root. With every key sampled,
    the falsified key's history does not end at its proven value: the sample fails, stateless
    re-execution finds the block invalid, and the client is dropped."""
    liar = DishonestClient(database, mode="wrong-storage-value")
    block, judgement, dropped = judged_payload(database, liar, tmp_path)
    assert not judgement.valid and judgement.how == "stateless"
    assert judgement.reason is not None and "state root mismatch" in judgement.reason
    (reason,) = (entry["reason"] for entry in dropped.values())
    assert "sample of block" in reason and "the trace leaves it" in reason, reason
    assert block.header.state_root != database.fill_roots(block).header.state_root


def test_the_judge_catches_records_that_do_not_match_the_summary(
    database: ExecutionState, tmp_path: Path
) -> None:
    """The dishonest client executes honestly and serves the honest summary and proofs, but step
    records that charge one Shor more than the summary says: the sample fails on the first record
    checked, stateless re-execution finds the block valid, and the client is dropped."""
    liar = DishonestClient(database, mode="wrong-step-record")
    _, judgement, dropped = judged_payload(database, liar, tmp_path)
    assert judgement.valid and judgement.how == "stateless"
    (reason,) = (entry["reason"] for entry in dropped.values())
    assert "sample of block" in reason and "does not match the trace" in reason, reason


def test_engine_get_steps_over_the_api(database: ExecutionState) -> None:
    """engine_getSteps serves the full records asked for, each once, in step order; it refuses
    more than MAX_STEP_RECORDS indexes, indexes that are not step numbers, and a step the block
    does not have. engine_getTrace serves the summary."""
    head = database.head
    trace = database.trace(head)
    client = ExecutionClient(database)
    with BackgroundServer(client.engine_server(SECRET).app) as server:
        engine = EngineClient(server.url, SECRET, timeout=10)
        try:
            assert engine.get_trace(head) == trace.summary()
            last = len(trace.steps) - 1
            assert engine.get_steps(head, [last, 0, 0]) == {
                0: trace.steps[0],
                last: trace.steps[last],
            }
            assert engine.get_steps(head, []) == {}
            for indexes, reason in (
                (list(range(MAX_STEP_RECORDS + 1)), "more than"),
                ([-1], "between"),
                ([True], "integers"),
                ([last + 1], "has no step"),
            ):
                with pytest.raises(EngineError, match=reason):
                    engine.call("engine_getSteps", head.hex(), indexes)
        finally:
            engine.close()
