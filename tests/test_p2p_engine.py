"""Shared execution over p2p, in-process: real p2p services on loopback serving a real execution
client's engine API (over HTTP with its JWT), signed statements, rate limits, timeouts, a peer that
goes away, discovery of serving nodes, and fraud reports judged through the ChainAccess seam."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.chain.chain import Chain
from qoin.consensus.engine import MAX_ANSWER_BYTES, EngineClient
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridSignature, SignatureError, generate_keypair
from qoin.encoding.codec import DecodeError, OversizeField, TrailingBytes
from qoin.execution.client import ExecutionClient
from qoin.execution.state import ExecutionState
from qoin.p2p import engine as engine_module
from qoin.p2p import service as service_module
from qoin.p2p.access import FraudJudgement, FraudVerdict
from qoin.p2p.addresses import PeerAddress
from qoin.p2p.engine import (
    ALL_PEERS_BURST,
    ALL_PEERS_PER_S,
    MAX_BUFFERED,
    MAX_BUFFERED_PER_PEER,
    NOT_SERVED,
    RATE_LIMITED,
    REFUSAL_BURST,
    REFUSALS_PER_S,
    Call,
    EngineFramingError,
    EngineServer,
)
from qoin.p2p.messages import (
    DisconnectReason,
    EngineAnswer,
    EngineRequest,
    ExecutionFraud,
    ExecutionNodes,
    GetExecutionNodes,
    Status,
    encode_message,
)
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.service import FRAUD_BURST, P2PService
from qoin.p2p.statements import (
    ENGINE_CHUNK,
    MAX_METHOD_BYTES,
    MAX_STATEMENT_ANSWER,
    BadEngineAnswer,
    EngineCallTimeout,
    EngineStatement,
    ExecutionNode,
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

    # a lie proven about a node neither knows (anyone can sign one with a fresh key): banned by
    # the node that got the report, not relayed (the neighbour never judges it)
    stranger = keypair_for(index=16).address
    unknown = f"proven {stranger}".encode()
    asyncio.run(reporter.run(judge, [status_of(genesis), encode_message(ExecutionFraud(unknown))]))
    wait_until(lambda: judge.peers.is_banned(stranger))
    neighbour_access = neighbour.access
    assert isinstance(neighbour_access, Judged)

    liar = keypair_for(index=14).address
    for service in (judge, neighbour):  # a node both deal with
        service.peers.add_known([PeerAddress("127.0.0.1", 1, liar)])
    proven = f"proven {liar}".encode()
    asyncio.run(reporter.run(judge, [status_of(genesis), encode_message(ExecutionFraud(proven))]))
    wait_until(lambda: str(liar) in {b["subject"] for b in judge.snapshot()["bans"]})
    wait_until(lambda: neighbour_access.reports == [proven])  # relayed, judged there too
    wait_until(lambda: str(liar) in {b["subject"] for b in neighbour.snapshot()["bans"]})
    reasons = [b["reason"] for b in judge.snapshot()["bans"]]
    assert reasons == [Misbehaviour.EXECUTION_LIE.value] * 2

    # the neighbour relays nothing back: it does not relay to its sender, nor twice
    assert access.reports.count(proven) == 1

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


def test_a_peer_gets_only_so_many_fraud_reports_judged(nodes: Nodes) -> None:
    """Undecided reports cost their sender nothing: past a burst, one peer's reports are not even
    judged (no penalty: they are ignored, and not remembered, so another peer may relay them)."""
    judge = nodes.node("busy-judge")
    access = judge.access
    assert isinstance(access, Judged)
    genesis = test_genesis()
    reporter = Scripted(genesis)
    sent = [f"undecided flood {i}".encode() for i in range(int(FRAUD_BURST) + 4)]
    script = [status_of(genesis), *(encode_message(ExecutionFraud(r)) for r in sent)]
    asyncio.run(reporter.run(judge, script, linger=3.0))
    wait_until(lambda: len(access.reports) >= FRAUD_BURST)
    assert access.reports == sent[: int(FRAUD_BURST)]
    assert judge.peers.score(reporter.identity.address) == 0
    assert reporter.goodbye() is None


def test_buffered_request_bytes_are_bounded_per_peer_and_in_all() -> None:
    """A peer may open requests of up to MAX_ENGINE_REQUEST bytes each, several at once: what
    the server holds is bounded per peer and in all before a part is kept; a request that would
    go over becomes a signed "rate limited" refusal over all its params (no penalty)."""
    server = EngineServer(EngineClient("http://127.0.0.1:9/", SECRET, timeout=1))
    chunk = b"x" * ENGINE_CHUNK
    parts = MAX_BUFFERED_PER_PEER // ENGINE_CHUNK
    try:

        def send(peer: int, request_id: int, count: int, last: bool = True) -> Call | None:
            call = None
            for index in range(count):
                message = EngineRequest(
                    request_id, "engine_getTrace", index, last and index == count - 1, chunk
                )
                call = server.receive(peer, message)
            return call

        assert send(1, 1, parts, last=False) is None  # accepted: exactly the peer's bound
        assert server.buffered == MAX_BUFFERED_PER_PEER and server.in_flight == 1
        over = send(1, 2, 3)  # a second request of this peer: over its bound
        assert over is not None and over.refusal == RATE_LIMITED and over.params == b""
        assert over.params_size == 3 * ENGINE_CHUNK
        assert over.params_digest == hashlib.sha3_256(chunk * 3).digest()
        assert server.buffered == MAX_BUFFERED_PER_PEER and server.in_flight == 1
        peers = MAX_BUFFERED // MAX_BUFFERED_PER_PEER
        for peer in range(2, peers + 1):  # the others fill the bound of all peers together
            call = send(peer, 1, parts)
            assert call is not None and call.refusal is None
        assert server.buffered == MAX_BUFFERED
        late = send(peers + 1, 1, 1)  # a new peer: over the bound in all
        assert late is not None and late.refusal == RATE_LIMITED
        assert server.buffered == MAX_BUFFERED
        server.forget(1)  # its open request is let go
        for peer in range(2, peers + 1):  # and the running ones as they finish
            server.finished(peer, 1)
        assert server.buffered == 0 and server.in_flight == 0
    finally:
        server.close()


def test_refusals_are_answered_only_so_often() -> None:
    """Each answer is signed (milliseconds of CPU): one peer's refusals are answered at most
    REFUSAL_BURST at once, then REFUSALS_PER_S a second; the rest are not answered at all."""
    clock = Clock()
    server = EngineServer(EngineClient("http://127.0.0.1:9/", SECRET, timeout=1), clock=clock)
    try:
        refusals = [
            server.receive(1, EngineRequest(i, "engine_forkchoiceUpdated", 0, True, b"[]"))
            for i in range(int(REFUSAL_BURST) + 3)
        ]
        answered = [call for call in refusals if call is not None]
        assert len(answered) == REFUSAL_BURST and all(c.refusal == NOT_SERVED for c in answered)
        assert refusals[-3:] == [None, None, None]
        assert server.counters.unanswered == 3 and server.counters.refused == len(refusals)
        clock.now += 1  # REFUSALS_PER_S more
        again = [
            server.receive(1, EngineRequest(100 + i, "eth_x", 0, True, b"[]"))
            for i in range(int(REFUSALS_PER_S) + 1)
        ]
        assert [c is not None for c in again] == [True] * int(REFUSALS_PER_S) + [False]
        # another peer has its own allowance
        assert server.receive(2, EngineRequest(1, "eth_x", 0, True, b"[]")) is not None
    finally:
        server.close()


def test_blocking_calls_on_the_loop_thread_fail_at_once(
    pair: tuple[P2PService, P2PService],
) -> None:
    """engine_call waits for the p2p loop: made on the loop's own thread it would block the loop
    for its whole timeout. It fails at once instead; execution_nodes answers from there."""
    serving, user = pair
    loop = user._loop
    assert loop is not None

    async def on_loop() -> tuple[BaseException | None, list[ExecutionNode]]:
        failure: BaseException | None = None
        try:
            user.engine_call(
                serving.identity.address, "engine_getTrace", b"[]", timeout=60, max_answer=100
            )
        except PeerUnavailable as exc:
            failure = exc
        return failure, user.execution_nodes()

    started = time.monotonic()
    failure, found = asyncio.run_coroutine_threadsafe(on_loop(), loop).result(timeout=30)
    assert time.monotonic() - started < 10
    assert failure is not None and "loop" in str(failure)
    assert [n.node_id for n in found] == [serving.identity.address]


def test_execution_nodes_name_the_address_connected_to(nodes: Nodes) -> None:
    """A serving peer dialled by a name is listed by the IP address connected to, so that
    names a peer chooses cannot make one network group look like many."""
    serving = nodes.node("named", server=EngineServer(nodes.engine()))
    chain = Chain.open(nodes.tmp / "by-name", test_genesis())
    nodes.chains.append(chain)
    dialler = P2PService(
        Judged(chain),
        generate_keypair(),
        bootnodes=[PeerAddress.parse(f"{serving.identity.address}@localhost:{serving.port}")],
        datadir=nodes.tmp / "by-name",
    )
    dialler.start()
    nodes.services.append(dialler)
    (found,) = wait_until(dialler.execution_nodes)
    assert ipaddress.ip_address(found.host).is_loopback, found


def test_bans_of_liars_not_known_here_are_bounded(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proven lies of made-up keys could fill the ban list (pushing out real liars' bans): such
    bans are bounded in all (a token bucket); a liar this node knows is banned regardless."""
    monkeypatch.setattr(service_module, "STRANGER_BAN_BURST", 1.0)
    judge = nodes.node("strangers-judge")
    genesis = test_genesis()
    first, second, known = (keypair_for(index=i).address for i in (17, 18, 19))
    judge.peers.add_known([PeerAddress("127.0.0.1", 1, known)])
    script = [status_of(genesis)] + [
        encode_message(ExecutionFraud(f"proven {node_id}".encode()))
        for node_id in (first, second, known)
    ]
    asyncio.run(Scripted(genesis).run(judge, script, linger=2.0))
    wait_until(lambda: judge.peers.is_banned(known))
    assert judge.peers.is_banned(first) and not judge.peers.is_banned(second)


def test_answers_held_are_bounded(nodes: Nodes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers may be large (up to MAX_STATEMENT_ANSWER each): past MAX_ANSWERS_HELD bytes
    computed and not yet sent, an answer is replaced by a signed "rate limited" refusal over the
    very request (no lie, no penalty), and its bytes let go."""
    server = EngineServer(nodes.engine())
    server.bind(SIGNER, GENESIS_HASH)
    params = b"[0, 10]"
    try:

        def ask(request_id: int) -> list[EngineAnswer]:
            call = server.receive(
                1, EngineRequest(request_id, "engine_pendingTransactions", 0, True, params)
            )
            assert call is not None and call.refusal is None
            parts = asyncio.run(server.answer(call))
            server.finished(1, request_id)
            assert parts is not None
            return parts

        (served,) = ask(1)
        assert not served.error and server.held == len(served.data)
        monkeypatch.setattr(engine_module, "MAX_ANSWERS_HELD", server.held + 1)
        (busy,) = ask(2)  # the first one is not sent yet: no room for the second
        assert busy.error and busy.data == RATE_LIMITED.encode()
        statement = EngineStatement(
            GENESIS_HASH, "engine_pendingTransactions", params, busy.data, True
        )
        SignedStatement(statement, SIGNER.public, HybridSignature.decode(busy.signature)).verify(
            SIGNER.address
        )
        server.release([served])
        server.release([busy])
        assert server.held == 0
        (again,) = ask(3)
        assert not again.error
        assert server.counters.refused == 1 and server.counters.served == 2
    finally:
        server.close()


def test_one_answer_per_ask_for_execution_nodes(nodes: Nodes) -> None:
    """Each GetExecutionNodes takes one ExecutionNodes: a peer asked once cannot go on filling the
    known addresses with entries of its choice (the second answer is unsolicited)."""
    seeker = nodes.node("asking")
    seeker.want_execution_nodes(1)
    genesis = test_genesis()
    peer = Scripted(genesis)
    entry = f"{keypair_for(index=20).address}@127.0.0.1:1"
    reply = encode_message(ExecutionNodes((entry,)))

    def answer(message: object) -> list[bytes]:
        return [reply, reply] if isinstance(message, GetExecutionNodes) else []

    asyncio.run(peer.run(seeker, [status_of(genesis)], linger=4.0, answer=answer))
    assert peer.count(GetExecutionNodes) >= 1
    unsolicited = Misbehaviour.UNSOLICITED.penalty
    wait_until(lambda: seeker.peers.score(peer.identity.address) == unsolicited)
    assert any(
        str(a.node_id) == entry.split("@", maxsplit=1)[0] for a in seeker.peers.known_addresses()
    )


def test_requests_of_all_peers_together_are_bounded() -> None:
    """Many peers, each within its own rate, are bounded together (each answer costs a
    signature): past ALL_PEERS_BURST, ALL_PEERS_PER_S a second, the rest "rate limited"."""
    clock = Clock()
    server = EngineServer(EngineClient("http://127.0.0.1:9/", SECRET, timeout=1), clock=clock)
    try:

        def ask(peer: int) -> Call | None:
            call = server.receive(peer, EngineRequest(1, "engine_getTrace", 0, True, b"[]"))
            if call is not None and call.refusal is None:
                server.finished(peer, 1)
            server.forget(peer)
            return call

        burst = int(ALL_PEERS_BURST)
        calls = [ask(peer) for peer in range(burst + 1)]
        assert all(c is not None and c.refusal is None for c in calls[:burst])
        last = calls[burst]
        assert last is not None and last.refusal == RATE_LIMITED
        clock.now += 1
        more = [ask(1000 + peer) for peer in range(int(ALL_PEERS_PER_S) + 1)]
        assert [c is not None and c.refusal is None for c in more] == [True] * int(
            ALL_PEERS_PER_S
        ) + [False]
    finally:
        server.close()
