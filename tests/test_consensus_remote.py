"""Remote execution nodes (qoin.consensus.remote): the engine client over p2p (its answers,
refusals, silences and the payloads it builds), the diverse pick of nodes, and — real processes —
a consensus client with no execution client of its own (``--remote-execution 1``) that follows the
chain another node mines, judging every block with the execution node a third node serves over
p2p (``--serve-execution``): sampled, over signed answers, its bytes counted.

The unit tests call a real execution client through the in-test seam of :mod:`tests.test_fraud`
(``engine_call`` over a real engine server, the answer signed with a real hybrid key)."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytest

from qoin.chain.builder import next_block
from qoin.cli.common import EXIT_USAGE
from qoin.consensus.engine import ClientUnavailable, EngineError, MalformedAnswer
from qoin.consensus.node import ConsensusNode
from qoin.consensus.remote import (
    LONG_NO_VERDICT,
    LONG_QUARANTINE,
    VERDICT_ANSWER_BYTES,
    RemoteEngineClient,
    RemotePool,
    netgroup,
    pick_nodes,
    remote_url,
)
from qoin.crypto.address import Address
from qoin.execution.state import ExecutionState
from qoin.p2p.statements import (
    EngineCallTimeout,
    EngineStatement,
    ExecutionNode,
    PeerUnavailable,
    SignedStatement,
)
from tests.cliutil import run_qoin
from tests.framework import CONSENSUS, Network, wait_until
from tests.keys import keypair_for
from tests.test_fraud import GENESIS, MINER, served
from tests.test_fraud import Network as Seam

WAIT_S = 120.0
BLOCKS = 4
PROMPT_S = 6.0
"""How long a remote-only client that has just started may take to reach its peer's head: well
under the 10 s an undecided block would make the peer rest."""
log = logging.getLogger(__name__)


class Silent(Seam):
    """A seam whose peer never answers in time."""

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        raise EngineCallTimeout(f"{method}: no answer in {timeout} s")


class NotJson(Seam):
    """A seam whose peer signs an answer that is not JSON."""

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        statement = EngineStatement(GENESIS.genesis_hash, method, params, b"{not json", False)
        return SignedStatement.create(keypair_for(index=70), statement)


def node_at(host: str, port: int, index: int) -> ExecutionNode:
    key = keypair_for(index=index)
    return ExecutionNode(key.address, host, port, key.public)


def test_calls_answers_refusals_and_payloads(tmp_path: Path) -> None:
    seam = Seam()
    with served(tmp_path, "honest", 71) as honest:
        seam.nodes[honest.key.address] = honest
        client = RemoteEngineClient(honest.node, seam, timeout=5)
        assert client.url == remote_url(honest.key.address) == f"p2p:{honest.key.address}"
        outcomes: list[object] = []
        client.on_outcome = lambda _, failure: outcomes.append(failure)
        template = next_block(GENESIS, GENESIS.header, MINER, sealed=False)
        # no template: nothing sent (a remote node follows its own operator's head)
        assert client.forkchoice_updated(GENESIS.genesis_hash) is None
        assert client.transcript() == [] and client.traffic()["calls"] == 0
        payload_id = client.forkchoice_updated(GENESIS.genesis_hash, template)
        assert payload_id is not None
        payload = client.get_payload(payload_id)
        assert payload.header.parent_hash == GENESIS.genesis_hash
        with pytest.raises(EngineError, match="unknown payload id"):
            client.get_payload(payload_id)  # handed out once
        # a refusal is signed too, and is an answer (not a quarantine)
        with pytest.raises(EngineError, match="no valid block") as refused:
            client.get_trace(bytes(32))
        assert not isinstance(refused.value, ClientUnavailable | MalformedAnswer)
        assert outcomes == [None, None]
        (built, refusal) = client.transcript()
        assert built.statement.method == "engine_buildPayload" and not built.statement.error
        assert refusal.statement.error and refusal.signer == honest.key.public
        traffic = client.traffic()
        assert traffic["calls"] == 2 and traffic["bytesReceived"] > len(payload.encode())
    silent = RemoteEngineClient(node_at("127.0.0.1", 1, 72), Silent(), timeout=1)
    failures: list[object] = []
    silent.on_outcome = lambda _, failure: failures.append(failure)
    with pytest.raises(ClientUnavailable, match="no answer"):
        silent.new_payload(template)
    assert len(failures) == 1 and isinstance(failures[0], ClientUnavailable)
    garbled = RemoteEngineClient(node_at("127.0.0.1", 1, 70), NotJson(), timeout=1)
    with pytest.raises(MalformedAnswer, match="not JSON"):
        garbled.new_payload(template)
    assert len(garbled.transcript()) == 1  # kept: a signed answer that does not parse


class Refusing(Seam):
    """A seam whose peer refuses every call "rate limited" (signed); the methods called are
    recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: list[str] = []

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        self.methods.append(method)
        statement = EngineStatement(GENESIS.genesis_hash, method, params, b"rate limited", True)
        return SignedStatement.create(keypair_for(index=77), statement)


def test_a_verdict_is_asked_by_hash_and_the_block_sent_only_if_unknown(tmp_path: Path) -> None:
    """A serving node usually holds the block already: its verdict is asked by hash
    (``engine_getVerdict``), and the block is sent (``engine_newPayload``) only when the node
    says it does not hold it; any other refusal is no verdict, and sends nothing more."""
    seam = Seam()
    roots = ExecutionState.open(tmp_path / "roots", GENESIS)
    try:
        block = next_block(GENESIS, GENESIS.header, MINER, execution=roots)
    finally:
        roots.close()
    with served(tmp_path, "honest", 78) as honest:
        seam.nodes[honest.key.address] = honest
        client = RemoteEngineClient(honest.node, seam, timeout=5)
        assert client.new_payload(block).status == "VALID"  # unknown there: sent
        asked, sent = client.transcript()
        assert asked.statement.method == "engine_getVerdict" and asked.statement.error
        assert b"unknown block" in asked.statement.answer
        assert sent.statement.method == "engine_newPayload" and not sent.statement.error
        before = client.traffic()
        assert client.new_payload(block).status == "VALID"  # held there now: asked by hash
        assert [s.statement.method for s in client.transcript()[2:]] == ["engine_getVerdict"]
        after = client.traffic()
        assert after["calls"] == before["calls"] + 1
        assert after["bytesSent"] - before["bytesSent"] < 100 < len(block.encode())
    refusing = Refusing()
    client = RemoteEngineClient(node_at("127.0.0.1", 1, 77), refusing, timeout=1)
    with pytest.raises(EngineError, match="rate limited") as refused:
        client.new_payload(block)
    assert not isinstance(refused.value, ClientUnavailable | MalformedAnswer)
    assert refusing.methods == ["engine_getVerdict"] and client.no_verdicts == 1


def test_nodes_are_picked_one_per_network_group_first() -> None:
    a1, a2 = node_at("10.1.2.3", 1, 80), node_at("10.1.9.9", 1, 81)  # one /16
    b = node_at("10.2.0.1", 1, 82)
    c = node_at("2001:db8:1::1", 1, 83)
    assert netgroup("10.1.2.3", 1) == netgroup("10.1.200.1", 7) != netgroup("10.2.0.1", 1)
    assert netgroup("::ffff:10.1.2.3", 1) == netgroup("10.1.2.3", 1)
    assert netgroup("2001:db8:1::1", 1) == netgroup("2001:db8:ffff::1", 1)
    assert netgroup("127.0.0.1", 1) != netgroup("127.0.0.1", 2)  # a devnet on one machine
    picked, problem = pick_nodes([a1, a2, b, c], 3, [])
    assert problem is None and len(picked) == 3
    assert len({netgroup(n.host, n.port) for n in picked}) == 3
    # with two groups, the third comes from a group in use
    picked, problem = pick_nodes([a1, a2, b], 3, [])
    assert problem is None and {n.node_id for n in picked} == {a1.node_id, a2.node_id, b.node_id}
    # never all from one group: fewer are used, and the status says why
    picked, problem = pick_nodes([a1, a2], 2, [])
    assert len(picked) == 1 and problem is not None and "one network group" in problem
    # nodes in use count; too few candidates is said too
    picked, problem = pick_nodes([a1, b], 3, [c])
    assert len(picked) == 2 and problem is None
    picked, problem = pick_nodes([], 2, [c])
    assert picked == [] and problem is not None and "no other connected peer" in problem
    assert pick_nodes([a1, b], 1, []) == ([a1], None)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--remote-execution", "1"], "--p2p-port"),
        (
            ["--serve-execution", "--remote-execution", "1", "--p2p-port", "0"],
            "--execution or --serve-execution-url",
        ),
        (["--serve-execution", "--p2p-port", "0"], "--execution or --serve-execution-url"),
        (
            [
                "--serve-execution-url",
                "http://127.0.0.1:1/",
                "--remote-execution",
                "1",
                "--p2p-port",
                "0",
            ],
            "only with --serve-execution",
        ),
        ([], "--remote-execution N"),
    ],
    ids=[
        "remote-without-p2p",
        "serving-nothing",
        "serving-nothing-judging-nothing",
        "serve-url-without-serving",
        "no-execution-at-all",
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], words: str) -> None:
    done = run_qoin("consensus", "--datadir", str(tmp_path / "c"), "--rpc-port", "0", *args)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert words in done.stderr


def test_node_usage_error(tmp_path: Path) -> None:
    done = run_qoin("node", "--dev", "--datadir", str(tmp_path / "n"), "--remote-execution", "2")
    assert done.returncode == EXIT_USAGE and "--p2p-port" in done.stderr, done.stderr


@pytest.mark.slow
def test_a_remote_only_client_follows_the_chain(net: Network) -> None:
    miner = net.node("miner", "--block-interval-ms", "300", mine=True)
    server = net.node("server", serve=True, bootnodes=[miner])
    follower = net.remote("follower", wanted=1, bootnodes=[server])
    wait_until(
        lambda: follower.using() == {server.node_id},
        WAIT_S,
        0.2,
        "the follower uses the serving node",
    )
    wait_until(lambda: follower.height() >= BLOCKS, WAIT_S, 0.2, f"the follower at {BLOCKS}")
    state = follower.status()
    assert state["execution"] == {"usable": True, "reason": None}, state
    remote = state["remoteExecution"]
    assert remote["wanted"] == 1 and remote["problem"] is None, remote
    (used,) = remote["using"]
    assert used["node"] == server.node_id and used["state"] == "active"
    assert used["traffic"]["bytesReceived"] > 0 and used["traffic"]["calls"] > 0
    assert state["judged"]["sampled"] >= 1, state
    assert state["dropped"] == {}
    # the miner does not serve: it is never a candidate, only the server is
    assert remote["candidates"] == 1
    # the miner stops mining: all three agree on its head
    miner.send_signal(CONSENSUS, signal.SIGUSR1)
    net.sync_heads([miner, server, follower], WAIT_S)
    assert follower.status()["dropped"] == {}


@pytest.mark.slow
def test_a_remote_only_client_judges_as_soon_as_its_peers_connect(net: Network) -> None:
    """Its serving peer connects and at once starts a sync of the blocks it has; the pool takes
    the peer into use then (the first block with no node to ask fills the pool at once), not at
    its next refresh: no block comes back undecided, so the peer never rests 10 s
    (docs/spec/consensus.md §6.5). The peer mines no more meanwhile: only the sync brings the
    blocks."""
    server = net.node("server", "--block-interval-ms", "300", mine=True, serve=True)
    wait_until(lambda: server.height() >= BLOCKS, WAIT_S, 0.2, f"the server at {BLOCKS}")
    server.send_signal(CONSENSUS, signal.SIGUSR1)  # stops mining
    server.child(CONSENSUS).wait_for(r"mining stopped", WAIT_S)
    follower = net.remote("follower", wanted=1, bootnodes=[server])
    started = time.monotonic()
    wait_until(
        lambda: follower.head() == server.head(), PROMPT_S, 0.1, "the follower at the server's head"
    )
    log.info("the follower reached its peer's head in %.1f s", time.monotonic() - started)
    undecided = follower.child(CONSENSUS).poll_for(r"undecided", 0.2)
    assert undecided is None, undecided[1].string if undecided else None
    assert follower.using() == {server.node_id}


class Syncing(Seam):
    """A seam whose one serving peer answers every newPayload SYNCING (signed, so never
    quarantined); the answer bound each call asked for is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.node = node_at("127.0.0.1", 1, 73)
        self.bounds: dict[str, int] = {}

    def execution_nodes(self) -> list[ExecutionNode]:
        return [self.node]

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        self.bounds[method] = max_answer
        answer = b'{"status":"SYNCING"}'
        statement = EngineStatement(GENESIS.genesis_hash, method, params, answer, False)
        return SignedStatement.create(keypair_for(index=73), statement)


def test_a_node_that_never_gives_a_verdict_is_replaced(tmp_path: Path) -> None:
    """A remote node that answers but never judges (SYNCING or ACCEPTED forever) is not
    quarantined — it answers — yet every block would need a witness or stay undecided: after
    LONG_NO_VERDICT such answers in a row the pool lets it go, and does not pick it again at once.
    Its verdict answers are read with a small bound."""
    node = ConsensusNode(tmp_path / "c", GENESIS, [], remote=1)
    network = Syncing()
    pool = RemotePool(node, network, 1, timeout=5)
    node.remote = pool
    try:
        pool.refresh()
        (client,) = pool.using()
        template = next_block(GENESIS, GENESIS.header, MINER, sealed=False)
        for _ in range(LONG_NO_VERDICT):
            assert client.new_payload(template).status == "SYNCING"
        assert network.bounds == {"engine_getVerdict": VERDICT_ANSWER_BYTES}  # asked by hash
        assert client.url not in node.judge.quarantine.entries()
        pool.refresh()
        assert pool.using() == [] and client not in node.judge.clients
        pool.refresh()  # benched: not picked again at once
        assert pool.using() == []
        problem = pool.report()["problem"]
        assert problem is not None and "without a verdict" in problem, problem
        assert client.url not in node.dropped  # not a lie
    finally:
        node.close()


class Flapping(Seam):
    """A seam whose one serving peer can be connected or not; calls while it is not fail as
    they do over p2p (``PeerUnavailable``)."""

    def __init__(self) -> None:
        super().__init__()
        self.node = node_at("127.0.0.1", 1, 74)
        self.connected = True

    def execution_nodes(self) -> list[ExecutionNode]:
        return [self.node] if self.connected else []

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        raise PeerUnavailable(f"{node_id} is not connected")


def test_a_node_that_comes_back_is_used_again_at_once(tmp_path: Path) -> None:
    """Calls to a node that has just disconnected fail before the pool notices; those failures
    are not held against it when it connects again (found by the shared-execution tests: it
    stayed unused for up to a minute of backoff after each reconnection)."""
    node = ConsensusNode(tmp_path / "c", GENESIS, [], remote=1)
    network = Flapping()
    pool = RemotePool(node, network, 1, timeout=5)
    node.remote = pool
    try:
        for _ in range(3):
            pool.refresh()
            (client,) = pool.using()
            network.connected = False
            for _ in range(LONG_QUARANTINE + 2):  # e.g. the mempool polls, twice a second
                with pytest.raises(ClientUnavailable):
                    client.pending_transactions(0)
            assert node.judge.quarantine.entries()[client.url].failures >= LONG_QUARANTINE
            pool.refresh()
            assert pool.using() == []
            network.connected = True
            pool.refresh()
            (again,) = pool.using()
            assert again.url == client.url and again in node.judge.active
            network.connected = False
            pool.refresh()
            network.connected = True
    finally:
        node.close()
