"""Shared execution over p2p, in-process: real p2p services on loopback serving a real execution
client's engine API (over HTTP with its JWT), signed statements, rate limits, timeouts, a peer that
goes away, discovery of serving nodes, and fraud reports judged through the ChainAccess seam."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.chain.chain import Chain
from qoin.consensus.engine import MAX_ANSWER_BYTES, EngineClient
from qoin.crypto.address import Address
from qoin.crypto.hybrid import SignatureError, generate_keypair
from qoin.encoding.codec import DecodeError, OversizeField, TrailingBytes
from qoin.execution.client import ExecutionClient
from qoin.execution.state import ExecutionState
from qoin.p2p.access import FraudJudgement, FraudVerdict
from qoin.p2p.addresses import PeerAddress
from qoin.p2p.engine import NOT_SERVED, RATE_LIMITED, EngineFramingError, EngineServer
from qoin.p2p.messages import (
    DisconnectReason,
    EngineAnswer,
    EngineRequest,
    ExecutionFraud,
    Status,
    encode_message,
)
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.service import P2PService
from qoin.p2p.statements import (
    MAX_METHOD_BYTES,
    MAX_STATEMENT_ANSWER,
    BadEngineAnswer,
    EngineCallTimeout,
    EngineStatement,
    PeerUnavailable,
    SignedStatement,
    StatementError,
)
from qoin.rpc.serve import BackgroundServer
from tests.chainutil import test_genesis
from tests.framework import wait_until
from tests.keys import keypair_for
from tests.test_execution_state import genesis as execution_genesis
from tests.test_p2p_service import ChainOnly, Scripted, status_of

SECRET = bytes(range(32))
SIGNER = keypair_for(index=11)
GENESIS_HASH = test_genesis().genesis_hash

# --- statements ------------------------------------------------------------------------------

statements = st.builds(
    EngineStatement,
    genesis_hash=st.binary(min_size=32, max_size=32),
    method=st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_METHOD_BYTES // 4),
    params=st.binary(max_size=300),
    answer=st.binary(max_size=300),
    error=st.booleans(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements)
def test_a_signed_statement_round_trips_and_verifies(statement: EngineStatement) -> None:
    signed = SignedStatement.create(SIGNER, statement)
    data = signed.encode()
    decoded = SignedStatement.decode(data)
    assert decoded == signed and decoded.encode() == data
    decoded.verify()
    decoded.verify(SIGNER.address)
    with pytest.raises(SignatureError):
        decoded.verify(keypair_for(index=12).address)  # another signer
    with pytest.raises(SignatureError):  # any change of the statement breaks the signature
        replace(decoded, statement=replace(statement, answer=statement.answer + b" ")).verify()
    with pytest.raises(SignatureError):
        replace(decoded, statement=replace(statement, error=not statement.error)).verify()
    with pytest.raises(TrailingBytes):
        SignedStatement.decode(data + b"\x00")
    with pytest.raises(DecodeError):
        SignedStatement.decode(data[:-1])


def test_statements_out_of_bounds_are_refused() -> None:
    good = EngineStatement(GENESIS_HASH, "engine_getTrace", b"[]", b"{}", False)
    signed = SignedStatement.create(SIGNER, good)
    data = signed.encode()
    with pytest.raises(OversizeField):
        SignedStatement.decode(data, max_size=len(data) - 1)
    flag_at = 32 + 1 + len(good.method) + 1 + len(good.params) + 1 + len(good.answer)
    assert data[flag_at] == 0
    with pytest.raises(StatementError):
        SignedStatement.decode(data[:flag_at] + b"\x02" + data[flag_at + 1 :])
    for bad in (
        replace(good, method="m" * (MAX_METHOD_BYTES + 1)),
        replace(good, method=""),
        replace(good, genesis_hash=bytes(31)),
    ):
        with pytest.raises(StatementError):
            bad.signing_message()
        with pytest.raises(StatementError):
            replace(signed, statement=bad).encode()
        with pytest.raises(SignatureError):
            replace(signed, statement=bad).verify()
    assert MAX_STATEMENT_ANSWER == MAX_ANSWER_BYTES  # one bound for the HTTP and the p2p path
    # an answer length past the bound is refused before anything is read
    head = data[: 32 + 1 + len(good.method) + 1 + len(good.params)]
    with pytest.raises(OversizeField):
        SignedStatement.decode(head + b"\x81\x80\x80\x40" + bytes(8))


# --- services --------------------------------------------------------------------------------


class Judged(ChainOnly):
    """Fraud reports judged by their first word: ``proven <node id>``, ``false``, anything else
    undecided; every report judged is recorded."""

    def __init__(self, chain: Chain) -> None:
        super().__init__(chain)
        self.reports: list[bytes] = []

    def judge_fraud(self, report: bytes) -> FraudJudgement:
        self.reports.append(report)
        words = report.decode().split()
        if words[0] == "proven":
            return FraudJudgement(FraudVerdict.PROVEN, Address.from_text(words[1]), "lied")
        if words[0] == "false":
            return FraudJudgement(FraudVerdict.FALSE, None, "no lie shown")
        return FraudJudgement(FraudVerdict.UNDECIDED, None, "unknown parent")


@dataclass
class Nodes:
    tmp: Path
    engine_url: str
    services: list[P2PService]
    chains: list[Chain]

    def node(
        self, name: str, *bootnodes: P2PService, server: EngineServer | None = None
    ) -> P2PService:
        chain = Chain.open(self.tmp / name, test_genesis())
        self.chains.append(chain)
        service = P2PService(
            Judged(chain),
            generate_keypair(),
            bootnodes=[PeerAddress.parse(b.enode) for b in bootnodes],
            datadir=self.tmp / name,
            engine_server=server,
        )
        service.start()
        self.services.append(service)
        return service

    def engine(self, timeout: float = 10.0) -> EngineClient:
        return EngineClient(self.engine_url, SECRET, timeout=timeout)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    tmp = tmp_path_factory.mktemp("p2p-engine")
    state = ExecutionState.open(tmp / "execution", execution_genesis())
    made = Nodes(tmp, "", [], [])
    try:
        with BackgroundServer(ExecutionClient(state).engine_server(SECRET).app) as server:
            made.engine_url = server.url
            yield made
            for service in made.services:
                service.stop()
    finally:
        for chain in made.chains:
            chain.close()
        state.close()


def connected(a: P2PService, b: P2PService) -> bool:
    """Whether ``a`` and ``b`` are connected and have exchanged their Status."""

    def sees(x: P2PService, y: P2PService) -> bool:
        peers = x.snapshot()["peers"]
        return any(p["id"] == str(y.identity.address) and p["head"] for p in peers)

    return sees(a, b) and sees(b, a)


@pytest.fixture(scope="module")
def pair(nodes: Nodes) -> tuple[P2PService, P2PService]:
    """A serving node and a node connected to it."""
    serving = nodes.node("serving", server=EngineServer(nodes.engine()))
    user = nodes.node("user", serving)
    wait_until(lambda: connected(serving, user))
    wait_until(user.execution_nodes)
    return serving, user


def test_a_call_round_trips_signed_by_the_serving_node(pair: tuple[P2PService, P2PService]) -> None:
    serving, user = pair
    [node] = user.execution_nodes()
    assert node.node_id == serving.identity.address
    assert node.public_key == serving.identity.public and node.port == serving.port
    params = json.dumps([0, 10]).encode()
    signed = user.engine_call(
        node.node_id, "engine_pendingTransactions", params, timeout=20, max_answer=1 << 20
    )
    assert not signed.statement.error, signed.statement.answer
    answer = json.loads(signed.statement.answer)
    assert answer["transactions"] == [] and isinstance(answer["next"], int)
    assert signed.statement.params == params and signed.statement.genesis_hash == GENESIS_HASH
    signed.verify(serving.identity.address)
    assert SignedStatement.decode(signed.encode()) == signed  # evidence others can check
    # an error of the execution client is a signed error answer
    failed = user.engine_call(
        node.node_id, "engine_getTrace", b'["00"]', timeout=20, max_answer=1 << 20
    )
    assert failed.statement.error and failed.statement.answer
    failed.verify(serving.identity.address)
    snapshot = serving.snapshot()
    assert snapshot["services"] == 1 and snapshot["engine"]["served"] >= 2
    assert [p["services"] for p in user.snapshot()["peers"]] == [1]
    assert [p["services"] for p in snapshot["peers"]] == [0]


def test_what_is_not_served_is_refused(pair: tuple[P2PService, P2PService]) -> None:
    serving, user = pair
    node_id = serving.identity.address
    for method in ("engine_forkchoiceUpdated", "engine_getPayload", "eth_anything"):
        refused = user.engine_call(node_id, method, b'["00"]', timeout=20, max_answer=1 << 20)
        assert refused.statement.error and refused.statement.answer == NOT_SERVED.encode()
        refused.verify(node_id)
    garbage = user.engine_call(node_id, "engine_getTrace", b"{", timeout=20, max_answer=1 << 20)
    assert garbage.statement.error and b"JSON array" in garbage.statement.answer
    assert serving.peers.score(user.identity.address) == 0  # refusals cost the asker nothing


def test_an_answer_over_the_callers_bound_is_bad(pair: tuple[P2PService, P2PService]) -> None:
    serving, user = pair
    with pytest.raises(BadEngineAnswer):
        user.engine_call(
            serving.identity.address,
            "engine_pendingTransactions",
            b"[0, 10]",
            timeout=20,
            max_answer=5,
        )
    with pytest.raises(PeerUnavailable):
        user.engine_call(
            keypair_for(index=13).address, "engine_getTrace", b"[]", timeout=5, max_answer=100
        )


def test_over_the_rate_a_request_is_rate_limited(nodes: Nodes) -> None:
    serving = nodes.node("strict", server=EngineServer(nodes.engine(), burst=2, per_s=0.001))
    user = nodes.node("strict-user", serving)
    wait_until(lambda: connected(serving, user))
    answers = [
        user.engine_call(
            serving.identity.address,
            "engine_pendingTransactions",
            b"[0, 1]",
            timeout=20,
            max_answer=1 << 20,
        )
        for _ in range(3)
    ]
    assert [a.statement.error for a in answers] == [False, False, True]
    assert answers[2].statement.answer == RATE_LIMITED.encode()
    answers[2].verify(serving.identity.address)  # a refusal is signed over the request too
    assert serving.snapshot()["engine"]["refused"] == 1
    assert serving.peers.score(user.identity.address) == 0


def silent_port() -> tuple[socket.socket, int]:
    """A listening socket that never answers (an execution client that hangs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def test_a_slow_node_times_out_and_a_node_that_goes_away_is_unavailable(nodes: Nodes) -> None:
    sock, port = silent_port()
    try:
        hanging = EngineServer(EngineClient(f"http://127.0.0.1:{port}/", SECRET, timeout=4))
        serving = nodes.node("hanging", server=hanging)
        user = nodes.node("hanging-user", serving)
        wait_until(lambda: connected(serving, user))
        node_id = serving.identity.address
        with pytest.raises(EngineCallTimeout):
            user.engine_call(node_id, "engine_getTrace", b'["00"]', timeout=1, max_answer=1000)
        assert user.peers.score(node_id) == 0  # slowness is not punished here: the caller judges
        failure: list[BaseException] = []

        def call() -> None:
            try:
                user.engine_call(node_id, "engine_getTrace", b'["01"]', timeout=30, max_answer=99)
            except BaseException as exc:
                failure.append(exc)

        before = hanging.counters.bytes_in
        thread = threading.Thread(target=call)
        thread.start()
        wait_until(lambda: hanging.counters.bytes_in > before)
        serving.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert len(failure) == 1 and isinstance(failure[0], PeerUnavailable), failure
    finally:
        sock.close()


def test_a_node_behind_a_peer_is_discovered(nodes: Nodes) -> None:
    serving = nodes.node("far-serving", server=EngineServer(nodes.engine()))
    middle = nodes.node("middle", serving)
    seeker = nodes.node("seeker", middle)
    wait_until(lambda: connected(serving, middle) and connected(middle, seeker))
    assert seeker.execution_nodes() == []
    seeker.want_execution_nodes(1)
    found = wait_until(seeker.execution_nodes)
    assert [n.node_id for n in found] == [serving.identity.address]


def test_fraud_reports_are_judged_once_and_acted_on(nodes: Nodes) -> None:
    judge = nodes.node("judge")
    neighbour = nodes.node("neighbour", judge)
    wait_until(lambda: connected(judge, neighbour))
    genesis = test_genesis()
    access = judge.access
    assert isinstance(access, Judged)
    reporter = Scripted(genesis)
    undecided = encode_message(ExecutionFraud(b"undecided 1"))
    asyncio.run(reporter.run(judge, [status_of(genesis), undecided, undecided], linger=1.0))
    wait_until(lambda: access.reports == [b"undecided 1"])
    assert judge.peers.score(reporter.identity.address) == 0

    liar = keypair_for(index=14).address
    proven = f"proven {liar}".encode()
    asyncio.run(reporter.run(judge, [status_of(genesis), encode_message(ExecutionFraud(proven))]))
    wait_until(lambda: str(liar) in {b["subject"] for b in judge.snapshot()["bans"]})
    neighbour_access = neighbour.access
    assert isinstance(neighbour_access, Judged)
    wait_until(lambda: neighbour_access.reports == [proven])  # relayed, judged there too
    wait_until(lambda: str(liar) in {b["subject"] for b in neighbour.snapshot()["bans"]})
    assert [b["reason"] for b in judge.snapshot()["bans"]] == [Misbehaviour.EXECUTION_LIE.value]

    false = encode_message(ExecutionFraud(b"false alarm"))
    asyncio.run(reporter.run(judge, [status_of(genesis), false], linger=5.0))
    goodbye = reporter.goodbye()
    assert goodbye is not None and goodbye.reason == DisconnectReason.BANNED


def test_ban_node_and_broadcast_fraud(nodes: Nodes) -> None:
    first = nodes.node("first")
    second = nodes.node("second", first)
    wait_until(lambda: connected(first, second))
    second_access = second.access
    assert isinstance(second_access, Judged)
    first.broadcast_fraud(b"undecided 2")
    wait_until(lambda: second_access.reports == [b"undecided 2"])
    first.broadcast_fraud(b"undecided 3", skip=second.identity.address)
    absent = keypair_for(index=15).address
    first.ban_node(absent, "lied about a block")  # not connected: banned all the same
    wait_until(lambda: str(absent) in {b["subject"] for b in first.snapshot()["bans"]})
    first.ban_node(second.identity.address, "lied")
    wait_until(lambda: not connected(first, second), timeout=10)
    assert second_access.reports == [b"undecided 2"]
    ban_file = (nodes.tmp / "first").glob("*ban*")
    assert any(str(absent) in path.read_text() for path in ban_file)


def test_broken_framing_is_a_protocol_violation(pair: tuple[P2PService, P2PService]) -> None:
    serving, _ = pair
    genesis = test_genesis()
    peer = Scripted(genesis)
    first = encode_message(EngineRequest(1, "engine_getTrace", 0, False, b"["))
    skipped = encode_message(EngineRequest(1, "engine_getTrace", 2, True, b"]"))
    asyncio.run(peer.run(serving, [status_of(genesis), first, skipped], linger=2.0))
    penalty = Misbehaviour.PROTOCOL_VIOLATION.penalty
    wait_until(lambda: serving.peers.score(peer.identity.address) == penalty)
    reused = encode_message(EngineRequest(5, "engine_getTrace", 0, False, b"["))
    asyncio.run(peer.run(serving, [status_of(genesis), reused, reused], linger=2.0))
    wait_until(lambda: serving.peers.score(peer.identity.address) == 2 * penalty)
    stray = encode_message(EngineAnswer(9, 0, True, False, b"{}"))  # answers nothing asked
    asyncio.run(peer.run(serving, [status_of(genesis), stray], linger=1.0))
    unsolicited = Misbehaviour.UNSOLICITED.penalty
    wait_until(lambda: serving.peers.score(peer.identity.address) == 2 * penalty + unsolicited)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_server_bounds_calls_per_peer_and_in_all() -> None:
    clock = Clock()
    server = EngineServer(
        EngineClient("http://127.0.0.1:9/", SECRET, timeout=1),
        max_in_flight=2,
        per_peer_in_flight=1,
        burst=3,
        per_s=1.0,
        clock=clock,
    )
    try:

        def part(
            request_id: int, index: int, last: bool, method: str = "engine_getTrace"
        ) -> EngineRequest:
            return EngineRequest(request_id, method, index, last, b"[]")

        assert server.receive(1, part(1, 0, False)) is None  # open: holds peer 1's only slot
        refused = server.receive(1, part(2, 0, True))
        assert refused is not None and refused.refusal == RATE_LIMITED and not refused.params
        accepted = server.receive(2, part(1, 0, True))
        assert accepted is not None and accepted.refusal is None and accepted.params == b"[]"
        assert server.in_flight == 2
        third = server.receive(3, part(1, 0, True))  # all peers together are at the bound
        assert third is not None and third.refusal == RATE_LIMITED
        not_served = server.receive(3, part(2, 0, True, "engine_forkchoiceUpdated"))
        assert not_served is not None and not_served.refusal == NOT_SERVED
        with pytest.raises(EngineFramingError):  # part 0 again: the id is in use
            server.receive(1, part(1, 0, True))
        with pytest.raises(EngineFramingError):  # the running call's id is in use too
            server.receive(2, part(1, 0, True))
        with pytest.raises(EngineFramingError):  # a part of nothing open
            server.receive(2, part(7, 1, True))
        server.forget(1)
        assert server.in_flight == 1
        server.forget(2)  # gone with a call running: its slot is held until it finishes
        assert server.in_flight == 1
        server.finished(2, 1)
        assert server.in_flight == 0
        assert server.receive(4, part(1, 0, False)) is None
        clock.now += 61  # the rest never came
        server.prune()
        assert server.in_flight == 0
        # the token bucket: 3 at once (peer 5 used none yet), then one a second
        for request_id in range(3):
            call = server.receive(5, part(request_id, 0, True))
            assert call is not None and call.refusal is None
            server.finished(5, request_id)
        late = server.receive(5, part(9, 0, True))
        assert late is not None and late.refusal == RATE_LIMITED
        clock.now += 1
        again = server.receive(5, part(10, 0, True))
        assert again is not None and again.refusal is None
    finally:
        server.close()


def test_an_answer_signed_over_something_else_is_bad(pair: tuple[P2PService, P2PService]) -> None:
    """A serving peer whose signature does not cover this call (here: other params) is caught:
    BadEngineAnswer, and the peer is scored as for a malformed message."""
    _, user = pair
    genesis = test_genesis()
    liar = Scripted(genesis)
    offer = encode_message(
        Status(genesis.chain_id, genesis.genesis_hash, genesis.genesis_hash, 0, 1, 0, 1)
    )

    def answer(message: object) -> list[bytes]:
        if not isinstance(message, EngineRequest):
            return []
        other = EngineStatement(GENESIS_HASH, message.method, b"[1]", b"{}", False)
        signature = SignedStatement.create(liar.identity, other).signature.encode()
        return [encode_message(EngineAnswer(message.request_id, 0, True, False, b"{}", signature))]

    thread = threading.Thread(
        target=lambda: asyncio.run(liar.run(user, [offer], linger=15.0, answer=answer))
    )
    thread.start()
    try:
        wait_until(lambda: liar.identity.address in [n.node_id for n in user.execution_nodes()])
        with pytest.raises(BadEngineAnswer):
            user.engine_call(
                liar.identity.address, "engine_getTrace", b"[0]", timeout=10, max_answer=1000
            )
        penalty = Misbehaviour.MALFORMED_MESSAGE.penalty
        wait_until(lambda: user.peers.score(liar.identity.address) == penalty)
    finally:
        user.remove_peer(liar.identity.address)
        thread.join(timeout=30)
