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

from qoin.chain.block import Block
from tests.conftest import keypair_for
from tests.procutil import (
    FUNDED,
    Process,
    Producer,
    network_files,
    network_files_args,
    pay,
    rpc,
    start,
    start_execution,
)

ALICE, BOB, CAROL = (keypair_for(index=i) for i in (2, 3, 4))
ENGINE_TIMEOUT_S = "3"


def start_consensus(workdir: Path, engines: list[str], *extra: str) -> tuple[Process, str]:
    """A `qoin consensus` in ``workdir/consensus`` judging with ``engines``: process, RPC URL."""
    executions = [arg for engine in engines for arg in ("--execution", engine)]
    proc = start("consensus", "--datadir", str(workdir / "consensus"),
                 *network_files_args(workdir), *executions, "--rpc-port", "0", *extra)  # fmt: skip
    return proc, proc.wait_for(r"; RPC (\S+);")[1]


@dataclass
class Network:
    workdir: Path
    honest: Process
    liar: Process
    honest_engine: str
    liar_engine: str
    liar_user: str

    def consensus(self, *extra: str) -> tuple[Process, str]:
        engines = [self.liar_engine, self.honest_engine]
        return start_consensus(self.workdir, engines, "--engine-timeout", ENGINE_TIMEOUT_S, *extra)


@pytest.fixture
def network(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Network]:
    mode: str = request.param
    network_files(tmp_path)
    honest, _, honest_engine = start_execution(tmp_path, "honest")
    try:
        liar, liar_user, liar_engine = start_execution(tmp_path, "liar", "--dishonest", mode)
        try:
            yield Network(tmp_path, honest, liar, honest_engine, liar_engine, liar_user)
        finally:
            liar.stop()
    finally:
        honest.stop()


def status(url: str) -> dict[str, Any]:
    result: dict[str, Any] = rpc(url, "consensus_status")
    return result


def submit(url: str, block: Block) -> dict[str, Any]:
    result: dict[str, Any] = rpc(url, "consensus_submitBlock", block.encode().hex())
    return result


def assert_dropped(state: dict[str, Any], network: Network, *words: str) -> None:
    assert network.liar_engine in state["dropped"], state
    reason = state["dropped"][network.liar_engine]["reason"]
    for word in words:
        assert word in reason, reason
    assert network.honest_engine not in state["dropped"]


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[Producer]:
    made = Producer(tmp_path)
    yield made
    made.close()


@pytest.mark.parametrize("network", ["wrong-state-root"], indirect=True)
def test_wrong_state_root_is_caught_and_remembered(network: Network, producer: Producer) -> None:
    consensus, url = network.consensus()
    try:
        first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
        answer = submit(url, first)  # the liar calls this valid block INVALID
        assert answer["status"] == "imported", answer
        producer.accept(first)
        state = status(url)
        assert state["head"] == first.block_hash.hex()
        assert state["judged"]["stateless"] == 1
        assert_dropped(state, network, "answered INVALID", "which is valid")
        consensus.wait_for("dropping execution client")
    finally:
        assert consensus.stop() == 0, consensus.output()
    # Remembered across a restart: the liar is not asked again, the chain goes on.
    consensus, url = network.consensus()
    try:
        consensus.wait_for("not using execution client .* dropped")
        second = producer.block((pay(ALICE, 0, BOB, 100, reveal=True),))
        assert submit(url, second)["status"] == "imported"
        state = status(url)
        assert state["head"] == second.block_hash.hex()
        assert [c["active"] for c in state["executionClients"]] == [False, True]
        assert state["judged"]["sampled"] == 1
    finally:
        assert consensus.stop() == 0, consensus.output()


@pytest.mark.parametrize("network", ["valid-for-invalid"], indirect=True)
def test_double_spend_called_valid_is_caught(network: Network, producer: Producer) -> None:
    consensus, url = network.consensus()
    try:
        first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
        assert submit(url, first)["status"] == "imported"
        producer.accept(first)
        assert status(url)["judged"]["sampled"] == 1  # both agreed, both samples held
        spend_twice = (pay(ALICE, 0, BOB, 800, reveal=True), pay(ALICE, 1, CAROL, 800))
        double = producer.block(spend_twice, honest_roots=False)
        answer = submit(url, double)
        assert answer["status"] == "invalid", answer
        assert "InsufficientBalance" in answer["reason"], answer
        state = status(url)
        assert state["head"] == first.block_hash.hex()
        assert_dropped(state, network, "answered VALID", "invalid")
        honest_next = producer.block((pay(ALICE, 0, BOB, 800, reveal=True),))
        assert submit(url, honest_next)["status"] == "imported"
        assert status(url)["head"] == honest_next.block_hash.hex()
    finally:
        assert consensus.stop() == 0, consensus.output()


@pytest.mark.parametrize("network", ["wrong-balance-proof"], indirect=True)
def test_proof_of_a_wrong_balance_is_caught(network: Network, producer: Producer) -> None:
    consensus, url = network.consensus()
    try:
        first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
        assert submit(url, first)["status"] == "imported"
        state = status(url)
        assert state["head"] == first.block_hash.hex()
        assert state["judged"]["stateless"] == 1  # the sample failed: decided by re-execution
        assert_dropped(state, network, "sample", "does not verify")
    finally:
        assert consensus.stop() == 0, consensus.output()


@pytest.mark.parametrize("network", ["silent"], indirect=True)
def test_silent_client_is_caught(network: Network, producer: Producer) -> None:
    consensus, url = network.consensus()
    try:
        first = producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))
        started = time.monotonic()
        assert submit(url, first)["status"] == "imported"
        assert time.monotonic() - started < 30  # bounded by the engine timeout, not the silence
        state = status(url)
        assert state["head"] == first.block_hash.hex()
        assert_dropped(state, network, "no verdict", "in time")
    finally:
        assert consensus.stop() == 0, consensus.output()


@pytest.mark.parametrize("network", ["omit-transaction"], indirect=True)
def test_payload_that_omits_a_transaction_is_caught(network: Network) -> None:
    # The transfer reaches only the liar's mempool; its payload leaves it out but keeps its
    # effect in the state root. The consensus client mines on the liar's payload (first client).
    sent = rpc(
        network.liar_user,
        "qoin_sendRawTransaction",
        pay(FUNDED, 0, ALICE, 1_000, reveal=True).encode().hex(),
    )
    assert len(sent) == 64
    consensus, _ = network.consensus("--mine", "--blocks", "2", "--workers", "1")
    try:
        assert consensus.proc.wait(timeout=120) == 0, consensus.output()
    finally:
        consensus.stop()
    output = consensus.output()
    assert "mined block rejected" in output, output
    assert "dropping execution client" in output, output
    state_file = network.workdir / "consensus" / "dropped-execution-clients.json"
    dropped = json.loads(state_file.read_text())
    assert network.liar_engine in dropped and network.honest_engine not in dropped
    assert "answered VALID" in dropped[network.liar_engine]["reason"]
    heights = [int(h) for h in re.findall(r"new head height=(\d+)", output)]
    assert heights == [1, 2]  # the honest chain, on the honest client's payloads


def test_a_fresh_execution_client_is_replayed_the_chain(tmp_path: Path, producer: Producer) -> None:
    """An execution client that lacks the consensus client's blocks (a new or wiped data
    directory) answers SYNCING; the consensus client replays the canonical chain to it."""
    network_files(tmp_path)
    first, _, engine = start_execution(tmp_path, "first")
    try:
        node, url = start_consensus(tmp_path, [engine])
        try:
            blocks = [producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),))]
            producer.accept(blocks[0])
            blocks.append(producer.block((pay(ALICE, 0, BOB, 10, reveal=True),)))
            for block in blocks:
                assert submit(url, block)["status"] == "imported"
        finally:
            assert node.stop() == 0, node.output()
    finally:
        first.stop()
    fresh, user, engine = start_execution(tmp_path, "fresh")
    try:
        assert rpc(user, "qoin_blockNumber") == 0
        node, url = start_consensus(tmp_path, [engine])
        try:
            node.wait_for("caught up to the head")
            assert rpc(user, "qoin_blockNumber") == 2
            assert rpc(user, "qoin_getBalance", str(BOB.address)) == 10
            assert status(url)["head"] == blocks[-1].block_hash.hex()
        finally:
            assert node.stop() == 0, node.output()
    finally:
        fresh.stop()


def test_side_blocks_do_not_get_the_honest_client_dropped(
    tmp_path: Path, producer: Producer
) -> None:
    """A competing block at the head's height is valid but off the execution client's head: it
    keeps no post-state for it, so it serves no proofs. Re-execution decides; nobody is dropped.
    One block deeper the side branch has no executed parent anywhere (ACCEPTED): the execution
    client is moved onto the branch to execute it, and the block is judged."""
    network_files(tmp_path)
    execution, _, engine = start_execution(tmp_path, "execution")
    try:
        node, url = start_consensus(tmp_path, [engine])
        try:
            siblings = [
                producer.block((pay(FUNDED, 0, ALICE, 1_000, reveal=True),)),
                producer.block((pay(FUNDED, 0, BOB, 2_000, reveal=True),)),
            ]
            # Fork choice breaks the tie by the lower hash: submitting the winner first keeps the
            # execution client's head on it, so the loser is only ever judged as a side block.
            winner, loser = sorted(siblings, key=lambda block: block.block_hash)
            assert submit(url, winner)["status"] == "imported"
            assert submit(url, loser)["status"] == "imported"  # judged statelessly
            state = status(url)
            assert state["dropped"] == {}, state
            assert state["judged"] == {"sampled": 1, "stateless": 1, "invalid": 0}
            assert state["head"] == winner.block_hash.hex()
            producer.accept(loser)
            payer = ALICE if loser is siblings[0] else BOB
            deeper = producer.block((pay(payer, 0, CAROL, 5, reveal=True),))
            answer = submit(url, deeper)
            assert answer["status"] == "imported", answer
            assert answer["head"] == deeper.block_hash.hex()
            assert status(url)["dropped"] == {}
        finally:
            assert node.stop() == 0, node.output()
    finally:
        execution.stop()


def test_a_deep_side_branch_is_judged_and_the_execution_client_returns_to_the_head(
    tmp_path: Path, producer: Producer
) -> None:
    """A side branch two blocks deep that stays lighter than the main chain: its second block has
    no executed parent (ACCEPTED), so the client executes the branch for the judgement, then
    follows the real head again."""
    network_files(tmp_path)
    execution, user, engine = start_execution(tmp_path, "execution")
    side = Producer(tmp_path / "side")
    try:
        node, url = start_consensus(tmp_path, [engine])
        try:
            for nonce in range(3):
                block = producer.block((pay(FUNDED, nonce, ALICE, 1_000 + nonce, nonce == 0),))
                assert submit(url, block)["status"] == "imported"
                producer.accept(block)
            main_head = producer.chain.head.hex()
            for nonce in range(2):
                block = side.block((pay(FUNDED, nonce, BOB, 7 + nonce, nonce == 0),))
                answer = submit(url, block)
                assert answer["status"] == "imported", answer
                assert answer["head"] == main_head and not answer["headChanged"]
                side.accept(block)
            node.wait_for(r"is on a side branch .*executing the branch", timeout=5)
            state = status(url)
            assert state["dropped"] == {} and state["invalidBlocks"] == 0, state
            assert rpc(user, "qoin_blockNumber") == 3
            assert rpc(user, "qoin_getBalance", str(BOB.address)) == 0
            assert rpc(user, "qoin_getBalance", str(ALICE.address)) == 3 * 1_000 + 3
        finally:
            assert node.stop() == 0, node.output()
    finally:
        side.close()
        execution.stop()
