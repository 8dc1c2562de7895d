"""A consensus process rides out execution clients that stop answering, and does not pay for side
branches that cannot win, against real processes (:mod:`tests.framework`):

* an execution client that does not answer is quarantined (and retried with backoff), not dropped
  for good; ``consensus_status`` answers at once meanwhile (from a snapshot, not behind the chain
  lock an engine call holds), and a node whose only execution client was stalled (SIGSTOP) mines
  again by itself after SIGCONT;
* a long side branch lighter than the head is kept undecided — its blocks never reach the execution
  client — until it becomes competitive; then it is judged as a whole, and the node reorgs to it
  once it is heavier.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from qoin.consensus.branches import COMPETITIVE_MARGIN_BLOCKS, NEAR_HEAD_DEPTH
from qoin.consensus.judge import QUARANTINE_FIRST_S
from tests.framework import EXECUTION, FUNDED, Network, Node, pay, wait_until
from tests.keys import keypair_for
from tests.procutil import Producer

ALICE, BOB = keypair_for(index=2), keypair_for(index=3)
ENGINE_TIMEOUT_S = 2.0
PROMPT_S = 2.0
"""How long ``consensus_status`` may take while an engine call is pending."""


def timed_status(node: Node) -> dict[str, Any]:
    """``consensus_status``, which must answer within :data:`PROMPT_S`."""
    started = time.monotonic()
    state = node.status()
    took = time.monotonic() - started
    assert took < PROMPT_S, f"consensus_status took {took:.1f} s"
    return state


def retried(node: Node, failures: int, engine: str | None = None) -> dict[str, Any] | None:
    """The status once the execution client ``engine`` (the node's own by default) has failed
    ``failures`` times in a row."""
    state = timed_status(node)
    entry = state["quarantined"].get(engine or node.engine)
    return state if entry is not None and entry["failures"] >= failures else None


def submit(node: Node, block: Any) -> dict[str, Any]:
    answer: dict[str, Any] = node.rpc.call("consensus_submitBlock", block.encode().hex())
    return answer


@pytest.mark.slow
def test_a_stalled_execution_client_is_quarantined_and_mining_resumes(net: Network) -> None:
    """The issue's case: the only execution client of a mining node is stopped for longer than
    the engine timeout (several times over), then continued. (Its miner pauses 100 ms after each
    block: unpaused, it would take a core for blocks the test does not need.)"""
    node = net.node(
        "miner", "--engine-timeout", str(ENGINE_TIMEOUT_S), "--block-interval-ms", "100",
        p2p=False, mine=True,
    )  # fmt: skip
    wait_until(lambda: node.height() >= 2, timeout=120, poll=0.2)
    execution = node.child(EXECUTION).proc
    execution.send_signal(signal.SIGSTOP)
    try:
        # Retried with backoff while it stays stopped (each try costs an engine timeout), and
        # the status answers at once throughout and says so.
        state = wait_until(lambda: retried(node, 3), timeout=60, poll=0.2)
        assert state is not None
        entry = state["quarantined"][node.engine]
        assert "in time" in entry["reason"], entry
        assert 0 <= entry["retryInS"] <= 4 * QUARANTINE_FIRST_S, entry
        assert state["executionClients"] == [
            {"url": node.engine, "active": False, "state": "quarantined"}
        ]
        assert state["dropped"] == {}
        stalled_at = state["height"]
    finally:
        execution.send_signal(signal.SIGCONT)
    wait_until(lambda: timed_status(node)["height"] >= stalled_at + 2, timeout=120, poll=0.2)
    state = timed_status(node)
    assert state["quarantined"] == {} and state["dropped"] == {}, state
    assert state["executionClients"][0]["state"] == "active"
    node.child("consensus").wait_for("answers again: back in use", 5)
    assert node.user.call("qoin_blockNumber") >= stalled_at + 2  # it follows the chain again


@pytest.mark.slow
def test_a_silent_execution_client_is_quarantined_not_dropped(net: Network, tmp_path: Path) -> None:
    """A client that never answers gives no verdict: the block is judged with the other one
    (re-executed, since one client failed), and the silent one is left alone for a while."""
    silent = net.execution("silent", "--dishonest", "silent")
    honest = net.execution("honest")
    node = net.node(
        "judge", "--engine-timeout", str(ENGINE_TIMEOUT_S), p2p=False, engines=[silent, honest]
    )
    producer = Producer(tmp_path / "producer")
    try:
        # Told the head at start-up, it did not answer: quarantined. Once due, it is asked again.
        wait_until(lambda: retried(node, 1, silent.engine), timeout=30, poll=0.2)
        wait_until(
            lambda: timed_status(node)["quarantined"][silent.engine]["retryInS"] == 0,
            timeout=10,
            poll=0.2,
        )
        block = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
        started = time.monotonic()
        answer = submit(node, block)
        assert answer["status"] == "imported", answer
        assert time.monotonic() - started < 30  # bounded by the engine timeout
        state = timed_status(node)
        assert state["head"] == block.block_hash.hex()
        assert state["judged"]["stateless"] == 1
        assert state["dropped"] == {}, state
        assert list(state["quarantined"]) == [silent.engine], state
        entry = state["quarantined"][silent.engine]
        assert entry["failures"] == 2 and "engine_newPayload: no answer" in entry["reason"], entry
        assert [c["state"] for c in state["executionClients"]] == ["quarantined", "active"]
        assert not (node.datadir / "dropped-execution-clients.json").exists()
    finally:
        producer.close()


def test_a_long_light_side_branch_is_not_executed_until_it_competes(
    net: Network, tmp_path: Path
) -> None:
    main_length = NEAR_HEAD_DEPTH + 4
    node = net.node("judge", p2p=False)
    main, side = Producer(tmp_path / "main"), Producer(tmp_path / "side")
    try:
        for nonce in range(main_length):
            block = main.block((pay(FUNDED, nonce, ALICE, 100 + nonce, nonce == 0),))
            assert submit(node, block)["status"] == "imported"
            main.accept(block)
        main_head = main.chain.head.hex()
        judged_before = timed_status(node)["judged"]
        # Lighter than the main chain even with the margin: kept, never sent to the execution
        # client.
        waiting = main_length - COMPETITIVE_MARGIN_BLOCKS - 1
        kept = []
        for nonce in range(waiting):
            block = side.block((pay(FUNDED, nonce, BOB, 7 + nonce, nonce == 0),))
            started = time.monotonic()
            answer = submit(node, block)
            assert time.monotonic() - started < 5, "a pending block must not be executed"
            assert answer["status"] == "pending", answer
            assert answer["head"] == main_head and not answer["headChanged"]
            side.accept(block)
            kept.append(block)
        state = timed_status(node)
        assert state["pendingBlocks"] == waiting and state["judged"] == judged_before, state
        for block in kept:
            assert node.user.call("qoin_getBlockByHash", block.block_hash.hex()) is None
        # One more and the branch is within the margin: judged as a whole, parents first.
        block = side.block()
        answer = submit(node, block)
        side.accept(block)
        assert answer["status"] == "imported", answer
        assert answer["head"] == main_head, answer  # still lighter
        node.child("consensus").wait_for(rf"judging its {waiting + 1} blocks", 5)
        state = timed_status(node)
        assert state["pendingBlocks"] == 0 and state["dropped"] == {}, state
        assert state["invalidBlocks"] == 0
        for member in kept:
            assert node.user.call("qoin_getBlockByHash", member.block_hash.hex()) is not None
        # Heavier than the main chain: the node reorgs to it, and so does the execution client.
        while side.chain.head_header.height <= main_length:
            block = side.block()
            answer = submit(node, block)
            assert answer["status"] == "imported", answer
            side.accept(block)
        state = timed_status(node)
        assert state["head"] == side.chain.head.hex(), state
        assert node.user.call("qoin_blockNumber") == main_length + 1
        assert node.user.call("qoin_getBalance", str(BOB.address)) == sum(
            7 + nonce for nonce in range(waiting)
        )
        assert node.user.call("qoin_getBalance", str(ALICE.address)) == 0
    finally:
        side.close()
        main.close()


def test_a_side_branch_relayed_tip_first_is_judged_once_complete(
    net: Network, tmp_path: Path
) -> None:
    """A peer walking back from a branch's tip sends its blocks newest first: they wait as
    orphans; the first one (its parent stored) makes the branch whole, which is then weighed as a
    whole — kept while light, judged and reorged to once heavier."""
    main_length = NEAR_HEAD_DEPTH + 4
    node = net.node("judge", p2p=False)
    main, side = Producer(tmp_path / "main"), Producer(tmp_path / "side")
    try:
        for _ in range(main_length):
            block = main.block()
            assert submit(node, block)["status"] == "imported"
            main.accept(block)
        light = main_length - COMPETITIVE_MARGIN_BLOCKS - 1
        branch = []
        for nonce in range(main_length + 1):
            branch.append(side.block((pay(FUNDED, nonce, BOB, 1 + nonce, nonce == 0),)))
            side.accept(branch[-1])
        for block in reversed(branch[1:light]):
            assert submit(node, block)["status"] == "orphan"
        assert submit(node, branch[0])["status"] == "pending"
        assert timed_status(node)["pendingBlocks"] == light
        assert node.user.call("qoin_getBlockByHash", branch[0].block_hash.hex()) is None
        for block in reversed(branch[light + 1 :]):
            assert submit(node, block)["status"] == "orphan"
        answer = submit(node, branch[light])  # joins the pending branch and completes it
        assert answer["status"] == "imported" and answer["headChanged"], answer
        assert answer["head"] == branch[-1].block_hash.hex()
        state = timed_status(node)
        assert state["pendingBlocks"] == 0 and state["dropped"] == {}, state
        assert state["head"] == branch[-1].block_hash.hex()
        assert node.user.call("qoin_blockNumber") == main_length + 1
        assert node.user.call("qoin_getBalance", str(BOB.address)) == sum(
            1 + nonce for nonce in range(main_length + 1)
        )
    finally:
        side.close()
        main.close()
