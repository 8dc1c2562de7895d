"""A real consensus process judging blocks with two real execution processes, one of them lying
(`qoin execution --dishonest MODE`, test only): every lie is caught, the block gets the honest
verdict, the liar is dropped (and stays dropped after a restart), and the chain goes on.

Blocks come from a producer in the test process (its own chain and execution state compute the
honest roots) and reach the consensus client through `consensus_submitBlock`; the
``omit-transaction`` case has the consensus client mine on the liar's payloads instead. The test
network's target is the maximum, so sealing a block takes one hybrid signature.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import FEE_PER_BLOCK, MIN_TERM
from qoin.chain.block import Block
from qoin.chain.transaction import sign_call
from qoin.execution.abi import encode_call
from tests.framework import (
    CONSENSUS,
    FUNDED,
    Network,
    Node,
    genesis,
    pay,
    read_to_end,
    wait_until,
)
from tests.keys import keypair_for
from tests.procutil import Producer

ALICE, BOB, CAROL = (keypair_for(index=i) for i in (2, 3, 4))
ENGINE_TIMEOUT_S = "3"


@dataclass
class Clients:
    """An honest and a lying execution client, and a consensus node (not started) that judges
    with both, the liar first."""

    net: Network
    honest: Node
    liar: Node
    judge: Node

    def consensus(self, *extra: str) -> Node:
        """Start the consensus client; the node."""
        self.judge.start_consensus("--engine-timeout", ENGINE_TIMEOUT_S, *extra)
        return self.judge


@pytest.fixture
def network(net: Network, request: pytest.FixtureRequest) -> Clients:
    mode: str = request.param
    honest = net.execution("honest")
    liar = net.execution("liar", "--dishonest", mode)
    judge = net.add("consensus")
    judge.engines = [str(liar.engine), str(honest.engine)]
    return Clients(net, honest, liar, judge)


def submit(node: Node, block: Block) -> dict[str, Any]:
    result: dict[str, Any] = node.rpc.call("consensus_submitBlock", block.encode().hex())
    return result


def assert_dropped(state: dict[str, Any], network: Clients, *words: str) -> None:
    assert network.liar.engine in state["dropped"], state
    reason = state["dropped"][network.liar.engine]["reason"]
    for word in words:
        assert word in reason, reason
    assert network.honest.engine not in state["dropped"]


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[Producer]:
    made = Producer(tmp_path)
    yield made
    made.close()


@pytest.mark.parametrize("network", ["wrong-state-root"], indirect=True)
def test_wrong_state_root_is_caught_and_remembered(network: Clients, producer: Producer) -> None:
    node = network.consensus()
    first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
    answer = submit(node, first)  # the liar calls this valid block INVALID
    assert answer["status"] == "imported", answer
    producer.accept(first)
    state = node.status()
    assert state["head"] == first.block_hash.hex()
    assert state["judged"]["stateless"] == 1
    assert_dropped(state, network, "answered INVALID", "which is valid")
    node.child(CONSENSUS).wait_for("dropping execution client")
    node.stop(CONSENSUS)
    # Remembered across a restart: the liar is not asked again, the chain goes on.
    node = network.consensus()
    node.child(CONSENSUS).wait_for("not using execution client .* dropped")
    second = producer.block((pay(ALICE, 0, BOB, 100, reveal=True),))
    assert submit(node, second)["status"] == "imported"
    state = node.status()
    assert state["head"] == second.block_hash.hex()
    assert [c["active"] for c in state["executionClients"]] == [False, True]
    assert state["judged"]["sampled"] == 1
    node.stop(CONSENSUS)


@pytest.mark.parametrize("network", ["valid-for-invalid"], indirect=True)
def test_double_spend_called_valid_is_caught(network: Clients, producer: Producer) -> None:
    node = network.consensus()
    first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
    assert submit(node, first)["status"] == "imported"
    producer.accept(first)
    assert node.status()["judged"]["sampled"] == 1  # both agreed, both samples held
    spend_twice = (pay(ALICE, 0, BOB, 800, reveal=True), pay(ALICE, 1, CAROL, 800))
    double = producer.block(spend_twice, honest_roots=False)
    answer = submit(node, double)
    assert answer["status"] == "invalid", answer
    assert "InsufficientBalance" in answer["reason"], answer
    state = node.status()
    assert state["head"] == first.block_hash.hex()
    assert_dropped(state, network, "answered VALID", "invalid")
    honest_next = producer.block((pay(ALICE, 0, BOB, 800, reveal=True),))
    assert submit(node, honest_next)["status"] == "imported"
    assert node.status()["head"] == honest_next.block_hash.hex()
    node.stop(CONSENSUS)


@pytest.mark.parametrize("network", ["wrong-balance-proof"], indirect=True)
def test_proof_of_a_wrong_balance_is_caught(network: Clients, producer: Producer) -> None:
    node = network.consensus()
    first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
    assert submit(node, first)["status"] == "imported"
    state = node.status()
    assert state["head"] == first.block_hash.hex()
    assert state["judged"]["stateless"] == 1  # the sample failed: decided by re-execution
    assert_dropped(state, network, "sample", "does not verify")
    node.stop(CONSENSUS)


@pytest.mark.parametrize("network", ["silent"], indirect=True)
def test_silent_client_is_caught(network: Clients, producer: Producer) -> None:
    node = network.consensus()
    first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
    started = time.monotonic()
    assert submit(node, first)["status"] == "imported"
    assert time.monotonic() - started < 30  # bounded by the engine timeout, not the silence
    state = node.status()
    assert state["head"] == first.block_hash.hex()
    # no answer is not a lie: quarantined and retried, not dropped (test_consensus_recovery.py)
    assert state["dropped"] == {} and network.liar.engine in state["quarantined"], state
    assert "in time" in state["quarantined"][network.liar.engine]["reason"]
    node.stop(CONSENSUS)


@pytest.mark.parametrize("network", ["omit-transaction"], indirect=True)
def test_payload_that_omits_a_transaction_is_caught(network: Clients) -> None:
    # The transfer reaches only the liar's mempool; its payload leaves it out but keeps its
    # effect in the state root. The consensus client mines on the liar's payload (first client).
    sent = network.liar.user.call(
        "qoin_sendRawTransaction", pay(FUNDED, 0, ALICE, 1_000, reveal=True).encode().hex()
    )
    assert len(sent) == 64
    node = network.consensus("--mine", "--blocks", "2", "--workers", "1")
    child = node.child(CONSENSUS)
    assert child.proc.wait(timeout=120) == 0, child.tail()
    output = "".join(line.text for line in read_to_end(child))
    assert "mined block rejected" in output, output
    assert "dropping execution client" in output, output
    state_file = node.datadir / "dropped-execution-clients.json"
    dropped = json.loads(state_file.read_text())
    assert network.liar.engine in dropped and network.honest.engine not in dropped
    assert "answered VALID" in dropped[network.liar.engine]["reason"]
    heights = [int(h) for h in re.findall(r"new head height=(\d+)", output)]
    assert heights == [1, 2]  # the honest chain, on the honest client's payloads


@pytest.mark.slow
def test_a_fresh_execution_client_is_replayed_the_chain(net: Network, producer: Producer) -> None:
    """An execution client that lacks the consensus client's blocks (a new or wiped data
    directory) answers SYNCING; the consensus client replays the canonical chain to it."""
    first = net.execution("first")
    node = net.node("consensus", p2p=False, engines=[first])
    blocks = [producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))]
    producer.accept(blocks[0])
    blocks.append(producer.block((pay(ALICE, 0, BOB, 10, reveal=True),)))
    for block in blocks:
        assert submit(node, block)["status"] == "imported"
    node.stop(CONSENSUS)
    first.stop()
    fresh = net.execution("fresh")
    assert fresh.user.call("qoin_blockNumber") == 0
    node.engines = [str(fresh.engine)]
    node.start_consensus()
    node.child(CONSENSUS).wait_for("caught up to the head")
    assert fresh.user.call("qoin_blockNumber") == 2
    assert fresh.user.call("qoin_getBalance", str(BOB.address)) == 10
    assert node.status()["head"] == blocks[-1].block_hash.hex()
    node.stop(CONSENSUS)


def test_side_blocks_do_not_get_the_honest_client_dropped(net: Network, producer: Producer) -> None:
    """A competing block at the head's height is valid but off the execution client's head: it
    keeps no post-state for it, so it serves no proofs. Re-execution decides; nobody is dropped.
    One block deeper the side branch has no executed parent anywhere (ACCEPTED): the execution
    client is moved onto the branch to execute it, and the block is judged."""
    execution = net.execution("execution")
    node = net.node("consensus", p2p=False, engines=[execution])
    siblings = [
        producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),)),
        producer.block((pay(FUNDED, 0, BOB, 2_000, reveal=True),)),
    ]
    # Fork choice breaks the tie by the lower hash: submitting the winner first keeps the
    # execution client's head on it, so the loser is only ever judged as a side block.
    winner, loser = sorted(siblings, key=lambda block: block.block_hash)
    assert submit(node, winner)["status"] == "imported"
    assert submit(node, loser)["status"] == "imported"  # judged statelessly
    state = node.status()
    assert state["dropped"] == {}, state
    assert state["judged"] == {"sampled": 1, "stateless": 1, "invalid": 0}
    assert state["head"] == winner.block_hash.hex()
    producer.accept(loser)
    payer = ALICE if loser is siblings[0] else BOB
    deeper = producer.block((pay(payer, 0, CAROL, 5, reveal=True),))
    answer = submit(node, deeper)
    assert answer["status"] == "imported", answer
    assert answer["head"] == deeper.block_hash.hex()
    assert node.status()["dropped"] == {}
    node.stop(CONSENSUS)


def test_a_deep_side_branch_is_judged_and_the_execution_client_returns_to_the_head(
    net: Network, producer: Producer
) -> None:
    """A side branch two blocks deep that stays lighter than the main chain: its second block has
    no executed parent (ACCEPTED), so the client executes the branch for the judgement, then
    follows the real head again."""
    execution = net.execution("execution")
    node = net.node("consensus", p2p=False, engines=[execution])
    side = Producer(net.workdir / "side")
    try:
        for nonce in range(3):
            block = producer.block((pay(FUNDED, nonce, ALICE, 1_000 + nonce, nonce == 0),))
            assert submit(node, block)["status"] == "imported"
            producer.accept(block)
        main_head = producer.chain.head.hex()
        for nonce in range(2):
            block = side.block((pay(FUNDED, nonce, BOB, 7 + nonce, nonce == 0),))
            answer = submit(node, block)
            assert answer["status"] == "imported", answer
            assert answer["head"] == main_head and not answer["headChanged"]
            side.accept(block)
        node.child(CONSENSUS).wait_for(r"is on a side branch .*executing the branch", timeout=5)
        state = node.status()
        assert state["dropped"] == {} and state["invalidBlocks"] == 0, state
        assert execution.user.call("qoin_blockNumber") == 3
        assert execution.user.call("qoin_getBalance", str(BOB.address)) == 0
        assert execution.user.call("qoin_getBalance", str(ALICE.address)) == 3 * 1_000 + 3
    finally:
        side.close()
    node.stop(CONSENSUS)


def test_a_falsified_storage_value_is_caught_by_sampling(net: Network) -> None:
    """A lying execution client builds a payload whose state root has one storage value of the
    ``names`` actor changed (and serves proofs that verify against it); sampling every key
    catches it, and the client is dropped."""
    liar = net.execution("liar", "--dishonest", "wrong-storage-value")
    judge = net.add("consensus")
    judge.engines = [str(liar.engine)]  # the liar alone: an honest client would disagree first
    tx = sign_call(
        FUNDED,
        chain_id=genesis().chain_id,
        nonce=0,
        to=NAMES_ADDRESS,
        data=encode_call("register", ["bobby", bytes(32), MIN_TERM]),
        value=FEE_PER_BLOCK * MIN_TERM,
        gas_limit=300_000,
        fee_per_gas=1,
        reveal_keys=True,
    )
    assert len(liar.user.call("qoin_sendRawTransaction", tx.encode().hex())) == 64
    judge.start_consensus("--mine", "--blocks", "1", "--workers", "1", "--samples", "1024")
    judge.child(CONSENSUS).wait_for("dropping execution client", timeout=60)
    dropped = wait_until(lambda: judge.status()["dropped"] or None, what="the liar dropped")
    assert "the trace leaves it" in dropped[str(liar.engine)]["reason"]
    judge.stop(CONSENSUS)
