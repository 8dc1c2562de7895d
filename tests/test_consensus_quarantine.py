"""Quarantine: an execution client that does not answer is left alone for a while (backing off) and
used again once it answers, not dropped for good; one that serves proofs that do not decode is
dropped. On real engine servers (the execution client's, over HTTP with JWT) and a closed port; the
clock of the quarantine is the test's."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qoin.chain.block import Block
from qoin.chain.builder import next_block
from qoin.consensus.engine import ClientUnavailable, EngineClient, EngineError, MalformedAnswer
from qoin.consensus.judge import (
    QUARANTINE_FIRST_S,
    QUARANTINE_MAX_S,
    DroppedClients,
    ExecutionJudge,
    ExecutionUnavailable,
    Quarantine,
)
from qoin.consensus.node import genesis_state_root
from qoin.execution.account import state_key
from qoin.execution.client import ExecutionClient
from qoin.execution.dishonest import DishonestClient
from qoin.execution.state import ExecutionState
from qoin.rpc.serve import BackgroundServer
from tests.keys import keypair_for
from tests.test_execution_state import genesis

SECRET = bytes(range(32))
MINER = keypair_for(index=4)
ROOT = genesis_state_root(genesis())


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_bound_and_ends_on_release() -> None:
    clock = Clock()
    quarantine = Quarantine(clock)
    waits = []
    for _ in range(9):
        entry = quarantine.fail("http://a/", "no answer")
        waits.append(entry.retry_at - clock.now)
        assert quarantine.holds("http://a/")
        clock.now = entry.retry_at  # due: it may be asked again
        assert not quarantine.holds("http://a/")
    assert waits[:3] == [QUARANTINE_FIRST_S, 2 * QUARANTINE_FIRST_S, 4 * QUARANTINE_FIRST_S]
    assert max(waits) == QUARANTINE_MAX_S and waits[-1] == QUARANTINE_MAX_S
    first = quarantine.entries()["http://a/"]
    assert first.failures == 9
    assert quarantine.release("http://a/") and not quarantine.release("http://a/")
    assert quarantine.entries() == {}
    clock.now += QUARANTINE_MAX_S  # well for a whole backoff period since it answered
    assert quarantine.fail("http://a/", "again").failures == 1  # a new row starts over


def test_a_client_failing_soon_after_answering_continues_its_row() -> None:
    """A client that answers one call (e.g. newPayload) and times out on the next (getProofs)
    ended its quarantine at every answer and was asked at every block, each costing the engine
    timeout: now its row goes on while it has not stayed well for a whole backoff period."""
    clock = Clock()
    quarantine = Quarantine(clock)
    for expected in range(1, 8):
        entry = quarantine.fail("http://a/", "proofs timed out")
        assert entry.failures == expected
        assert entry.retry_at - clock.now == min(
            QUARANTINE_MAX_S, QUARANTINE_FIRST_S * 2 ** (expected - 1)
        )
        clock.now = entry.retry_at
        assert quarantine.release("http://a/")  # answered the next newPayload
        clock.now += 1  # ... and timed out on its proofs a second later


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Engines:
    state: ExecutionState
    honest: str
    clock: Clock


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    state = ExecutionState.open(tmp_path / "execution", genesis())
    with BackgroundServer(ExecutionClient(state).engine_server(SECRET).app) as server:
        yield Engines(state, server.url, Clock())
    state.close()


def a_block(state: ExecutionState) -> Block:
    """A valid empty block on genesis (the judge does not look at proof-of-work)."""
    return next_block(genesis(), genesis().header, MINER, execution=state, sealed=False)


def judge_of(engines: Engines, tmp_path: Path, *urls: str) -> ExecutionJudge:
    clients = [EngineClient(url, SECRET, timeout=5) for url in urls]
    dropped = DroppedClients(tmp_path / "dropped.json")
    return ExecutionJudge(clients, dropped, quarantine=Quarantine(engines.clock))


def test_a_client_that_does_not_answer_is_quarantined_then_back(
    engines: Engines, tmp_path: Path
) -> None:
    port = closed_port()
    down = f"http://127.0.0.1:{port}/"
    judge = judge_of(engines, tmp_path, down, engines.honest)
    try:
        block = a_block(engines.state)
        judgement = judge.judge(block, ROOT)
        # the honest client's verdict, confirmed by re-execution since one client failed
        assert judgement.valid and judgement.how == "stateless"
        report = judge.report()
        assert report["dropped"] == {}
        assert not (tmp_path / "dropped.json").exists()
        held = report["quarantined"]
        assert isinstance(held, dict) and list(held) == [down]
        assert held[down]["failures"] == 1 and held[down]["retryInS"] == QUARANTINE_FIRST_S
        assert "unreachable" in held[down]["reason"]
        assert [c.url for c in judge.active] == [engines.honest]
        assert [s["state"] for s in report["executionClients"]] == ["quarantined", "active"]
        # 0 s means due: 40 ms before its retry the status said 0 (rounded) while the client was
        # still left out, and a test that submitted on that 0 raced the retry
        engines.clock.now += QUARANTINE_FIRST_S - 0.04
        assert judge.report()["quarantined"][down]["retryInS"] == 0.1
        assert [c.url for c in judge.active] == [engines.honest]
        engines.clock.now -= QUARANTINE_FIRST_S - 0.04
        # it comes back on the same port (with a state of its own); once due it is asked again,
        # and answers
        second = ExecutionState.open(tmp_path / "second", genesis())
        with (
            contextlib.closing(second),
            BackgroundServer(ExecutionClient(second).engine_server(SECRET).app, port=port),
        ):
            engines.clock.now += QUARANTINE_FIRST_S
            assert [c.url for c in judge.active] == [down, engines.honest]
            assert judge.judge(block, ROOT).valid
            assert judge.report()["quarantined"] == {}
            assert [c.url for c in judge.take_returned()] == [down]
            assert judge.take_returned() == []
    finally:
        judge.close()


def test_with_every_client_quarantined_the_block_is_undecided(
    engines: Engines, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{closed_port()}/"
    judge = judge_of(engines, tmp_path, down)
    try:
        block = a_block(engines.state)
        with pytest.raises(ExecutionUnavailable, match="usable witness"):
            judge.judge(block, ROOT)
        with pytest.raises(ExecutionUnavailable, match=r"quarantined \(the next retry in 1 s\)"):
            judge.judge(block, ROOT)
        assert judge.report()["dropped"] == {}
    finally:
        judge.close()


def test_proofs_that_do_not_decode_are_bad_proofs(engines: Engines, tmp_path: Path) -> None:
    """A liar serving undecodable proofs used to be taken as one serving none (re-execution,
    never dropped); an empty proof list was dropped at once. Both are bad proofs."""
    state = ExecutionState.open(tmp_path / "liar", genesis())
    liar = DishonestClient(state, mode="garbled-proof")
    try:
        with BackgroundServer(liar.engine_server(SECRET).app) as server:
            judge = judge_of(engines, tmp_path, server.url, engines.honest)
            try:
                block = a_block(engines.state)  # the sample is the coinbase's recipient
                judgement = judge.judge(block, ROOT)
                assert judgement.valid
                report = judge.report()
                dropped = report["dropped"]
                assert list(dropped) == [server.url], report
                assert "do not decode" in dropped[server.url]["reason"]
                assert report["quarantined"] == {}
                assert [c.url for c in judge.active] == [engines.honest]
            finally:
                judge.close()
    finally:
        state.close()


def test_a_refusal_is_an_answer(engines: Engines, tmp_path: Path) -> None:
    """A JSON-RPC error (here: proofs of a block the client does not have) is the client
    answering: neither a quarantine nor a lie; the engine client says which kind of failure."""
    judge = judge_of(engines, tmp_path, engines.honest)
    try:
        client = judge.clients[0]
        with pytest.raises(EngineError, match="unknown block") as refused:
            client.get_proofs(bytes(32), [state_key(MINER.address)])
        assert not isinstance(refused.value, ClientUnavailable | MalformedAnswer)
        assert judge.report()["quarantined"] == {} and judge.active == [client]
        with pytest.raises(ClientUnavailable):
            EngineClient(f"http://127.0.0.1:{closed_port()}/", SECRET).call("engine_getPayload")
    finally:
        judge.close()
