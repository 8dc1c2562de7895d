"""Fraud reports (qoin.consensus.fraud): a remote execution node's lie, caught by the judge through a
:class:`RemoteEngineClient`, reported with the node's own signed statements, and checked by another
consensus node. Every kind of evidence proves a lie; a true statement, a forged signature, a
statement about another network or a sample of foreign keys is FALSE; a block whose parent is
unknown is UNDECIDED.

The execution clients are real (honest and dishonest, over HTTP with JWT); the seam between the
remote client and the network is a small in-test object whose ``engine_call`` forwards the call to
one of them and signs the answer with that node's real hybrid key, as a serving node does."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from qoin.chain.block import Block, Header
from qoin.chain.builder import next_block
from qoin.chain.transaction import sign_transfer
from qoin.consensus.engine import EngineClient
from qoin.consensus.fraud import (
    FraudReport,
    NodeContext,
    build_report,
    candidate_reports,
    verify_report,
)
from qoin.consensus.network import NodeAccess
from qoin.consensus.node import ConsensusNode
from qoin.consensus.remote import RemoteEngineClient, RemotePool, remote_url
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.client import ExecutionClient
from qoin.execution.dishonest import DishonestClient
from qoin.execution.state import ExecutionState
from qoin.p2p.access import FraudJudgement, FraudVerdict
from qoin.p2p.statements import (
    EngineStatement,
    ExecutionNode,
    PeerUnavailable,
    SignedStatement,
)
from qoin.rpc import jwt
from qoin.rpc.client import RpcCallError, RpcClient
from qoin.rpc.serve import BackgroundServer
from tests.keys import keypair_for
from tests.test_execution_state import ALICE, BOB, genesis

SECRET = bytes(range(32))
MINER = keypair_for(index=4)
GENESIS = genesis()


@dataclass
class Serving:
    """One execution client served as a p2p node would: its url and identity key."""

    url: str
    key: HybridKeyPair
    rpc: RpcClient

    @property
    def node(self) -> ExecutionNode:
        return ExecutionNode(self.key.address, "127.0.0.1", 1, self.key.public)


@dataclass
class Network:
    """The in-test seam: ``engine_call`` as ``P2PService`` offers it, over real engine servers;
    bans and fraud reports recorded."""

    nodes: dict[Address, Serving] = field(default_factory=dict)
    banned: list[tuple[Address, str]] = field(default_factory=list)
    reports: list[bytes] = field(default_factory=list)

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        serving = self.nodes.get(node_id)
        if serving is None:
            raise PeerUnavailable(f"{node_id} is not connected")
        try:
            result = serving.rpc.call(method, *json.loads(params))
            answer, error = json.dumps(result, separators=(",", ":")).encode(), False
        except RpcCallError as exc:
            answer, error = str(exc).encode(), True
        statement = EngineStatement(GENESIS.genesis_hash, method, params, answer, error)
        return SignedStatement.create(serving.key, statement)

    def execution_nodes(self) -> list[ExecutionNode]:
        return [serving.node for serving in self.nodes.values()]

    def want_execution_nodes(self, n: int) -> None:
        pass

    def ban_node(self, node_id: Address, reason: str) -> None:
        self.banned.append((node_id, reason))

    def broadcast_fraud(self, report: bytes, skip: Address | None = None) -> None:
        self.reports.append(report)

    def snapshot(self) -> dict[str, object]:
        return {}


@contextlib.contextmanager
def served(tmp_path: Path, name: str, index: int, mode: str | None = None) -> Iterator[Serving]:
    """An execution client (dishonest in ``mode``) on its own state, served over HTTP."""
    state = ExecutionState.open(tmp_path / name, GENESIS)
    client = ExecutionClient(state) if mode is None else DishonestClient(state, mode=mode)
    try:
        with (
            BackgroundServer(client.engine_server(SECRET).app) as server,
            RpcClient(server.url, timeout=30, token=lambda: jwt.encode(SECRET)) as rpc,
        ):
            yield Serving(server.url, keypair_for(index=index), rpc)
    finally:
        state.close()


@dataclass
class World:
    network: Network
    honest: Serving
    verifier: ConsensusNode
    """A consensus node with a local honest execution client: checks reports."""
    roots: ExecutionState
    """An execution state that computes the roots of the blocks made here."""
    tmp_path: Path

    def remote_node(self, name: str, *liars: Serving) -> ConsensusNode:
        """A consensus node judging with remote clients only: the honest one and ``liars``."""
        node = ConsensusNode(self.tmp_path / name, GENESIS, [], remote=1 + len(liars))
        node.p2p = self.network  # type: ignore[assignment]
        for serving in (self.honest, *liars):
            self.network.nodes[serving.key.address] = serving
            node.judge.add_client(RemoteEngineClient(serving.node, self.network, timeout=30))
        return node


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    roots = ExecutionState.open(tmp_path / "roots", GENESIS)
    with served(tmp_path, "honest", 60) as honest:
        local = EngineClient(honest.url, SECRET, timeout=30)
        verifier = ConsensusNode(tmp_path / "verifier", GENESIS, [local])
        try:
            yield World(Network(), honest, verifier, roots, tmp_path)
        finally:
            verifier.close()
            roots.close()


def transfer_block(world: World, parent: Header, **changes: object) -> Block:
    """A sealed block on ``parent`` with a transfer from Alice to Bob, roots from ``roots``."""
    tx = sign_transfer(
        ALICE, chain_id=GENESIS.chain_id, nonce=0, recipient=BOB.address, amount=5, fee=21_000
    )
    block = next_block(GENESIS, parent, MINER, [tx], execution=world.roots, changes=changes)
    return block


def check(world: World, data: bytes) -> FraudJudgement:
    return verify_report(data, NodeContext(world.verifier))


def signed(
    key: HybridKeyPair, method: str, params: list[object], answer: object
) -> SignedStatement:
    statement = EngineStatement(
        GENESIS.genesis_hash,
        method,
        json.dumps(params).encode(),
        json.dumps(answer).encode(),
        False,
    )
    return SignedStatement.create(key, statement)


# --- lies caught by the judge, reported, and proven elsewhere ------------------------------------


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("wrong-state-root", "engine_newPayload"),
        ("wrong-state-root", "engine_getVerdict"),
        ("wrong-balance-proof", "engine_getTrace"),
        ("garbled-proof", "engine_getTrace"),
        ("wrong-step-record", "engine_getTrace"),
    ],
)
def test_a_remote_liar_is_banned_and_its_report_proven(world: World, mode: str, kind: str) -> None:
    """A liar that does not hold the block is sent it (``engine_newPayload``); one that holds it
    is asked its verdict by hash (``engine_getVerdict``), and the report then carries the block."""
    with served(world.tmp_path, "liar", 61, mode) as liar:
        node = world.remote_node("remote", liar)
        try:
            block = transfer_block(world, GENESIS.header)
            if kind == "engine_getVerdict":  # the liar holds the block already
                liar.rpc.call("engine_newPayload", block.encode().hex())
            result = node.import_block(block)
            assert block.block_hash in result.connected
            liar_url = remote_url(liar.key.address)
            assert liar_url in node.dropped
            assert [node_id for node_id, _ in world.network.banned] == [liar.key.address]
            assert len(world.network.reports) == 1
            report = FraudReport.decode(world.network.reports[0])
            assert report.statements[0].statement.method == kind
            assert {s.signer for s in report.statements} == {liar.key.public}
            assert (report.block == block.encode()) == (kind != "engine_newPayload")
            # another node, which has not seen the block yet, agrees (a verdict: by importing it;
            # a sample: by replaying it on the parent's state)
            judgement = check(world, world.network.reports[0])
            assert judgement.verdict is FraudVerdict.PROVEN, judgement
            assert judgement.accused == liar.key.address
            imported = world.verifier.chain.has_block(block.block_hash)
            assert imported == (kind in ("engine_newPayload", "engine_getVerdict"))
        finally:
            node.close()


@pytest.mark.parametrize("held", [False, True], ids=["sent", "asked-by-hash"])
def test_valid_for_an_invalid_block_is_proven(world: World, held: bool) -> None:
    """The lie is told to ``engine_newPayload`` and, for a block it lied about before, to
    ``engine_getVerdict`` alike."""
    with served(world.tmp_path, "liar", 62, "valid-for-invalid") as liar:
        node = world.remote_node("remote", liar)
        try:
            bad = transfer_block(world, GENESIS.header, state_root=bytes(32))
            if held:
                assert liar.rpc.call("engine_newPayload", bad.encode().hex())["status"] == "VALID"
            with pytest.raises(Exception, match=r"state root mismatch|StateRootMismatch"):
                node.import_block(bad)
            assert bad.block_hash in node.chain.invalid
            assert len(world.network.reports) == 1
            (lie,) = FraudReport.decode(world.network.reports[0]).statements
            method = "engine_getVerdict" if held else "engine_newPayload"
            assert lie.statement.method == method
            judgement = check(world, world.network.reports[0])
            assert judgement.verdict is FraudVerdict.PROVEN, judgement
            assert "invalid" in judgement.detail
            assert bad.block_hash in world.verifier.chain.invalid  # found so by importing it
        finally:
            node.close()


# --- each kind of evidence, checked directly -------------------------------------------------------


def honest_statements(world: World, block: Block) -> list[SignedStatement]:
    """What the honest node says when judged remotely about ``block`` (a sample included)."""
    world.network.nodes[world.honest.key.address] = world.honest
    client = RemoteEngineClient(world.honest.node, world.network, timeout=30)
    assert client.new_payload(block).status == "VALID"
    summary = client.get_trace(block.block_hash)
    keys = sorted(set(summary.keys()))[:4]
    client.get_proofs(block.block_hash, keys)
    client.get_steps(block.block_hash, [0, 1, 2])
    client.get_witness(block.block_hash, block)
    return client.transcript()


def test_true_statements_are_false_reports(world: World) -> None:
    block = transfer_block(world, GENESIS.header)
    transcript = honest_statements(world, block)
    candidates = candidate_reports(transcript, block)
    assert {c.statements[0].statement.method for c in candidates} == {
        "engine_newPayload",
        "engine_getWitness",
        "engine_getTrace",
    }
    for report in candidates:
        judgement = check(world, report.encode())
        assert judgement.verdict is FraudVerdict.FALSE, judgement
        assert judgement.accused is None
    assert build_report(transcript, block, NodeContext(world.verifier)) is None


def test_a_forged_signature_is_false(world: World) -> None:
    with served(world.tmp_path, "liar", 63, "wrong-state-root") as liar:
        world.network.nodes[liar.key.address] = liar
        client = RemoteEngineClient(liar.node, world.network, timeout=30)
        block = transfer_block(world, GENESIS.header)
        assert client.new_payload(block).status == "INVALID"
        asked, lie = client.transcript()  # asked by hash first: not held there, so sent
        assert asked.statement.method == "engine_getVerdict" and asked.statement.error
        world.verifier.import_block(block)
        assert check(world, FraudReport(b"", (lie,)).encode()).verdict is FraudVerdict.PROVEN
        # the same statement, "signed" by the liar with another node's signature
        other = SignedStatement.create(world.honest.key, lie.statement)
        forged = replace(lie, signature=other.signature)
        judgement = check(world, FraudReport(b"", (forged,)).encode())
        assert judgement.verdict is FraudVerdict.FALSE and "signature" in judgement.detail
        # an honest node framed: its key named, a statement it never signed
        framed = replace(lie, signer=world.honest.key.public)
        assert check(world, FraudReport(b"", (framed,)).encode()).verdict is FraudVerdict.FALSE
        # a statement about another network
        elsewhere = SignedStatement.create(liar.key, replace(lie.statement, genesis_hash=bytes(32)))
        judgement = check(world, FraudReport(b"", (elsewhere,)).encode())
        assert judgement.verdict is FraudVerdict.FALSE and "another network" in judgement.detail


def test_an_unknown_parent_is_undecided(world: World) -> None:
    with served(world.tmp_path, "liar", 64, "wrong-state-root") as liar:
        world.network.nodes[liar.key.address] = liar
        client = RemoteEngineClient(liar.node, world.network, timeout=30)
        first = transfer_block(world, GENESIS.header)
        world.roots.new_payload(first)
        second = next_block(GENESIS, first.header, MINER, execution=world.roots)
        assert client.new_payload(first).status == "INVALID"
        assert client.new_payload(second).status == "INVALID"
        report = candidate_reports(client.transcript(), second)[0]
        judgement = check(world, report.encode())
        assert judgement.verdict is FraudVerdict.UNDECIDED, judgement
        assert not world.verifier.chain.has_block(second.block_hash)
        # once the parent is known, the same report proves the lie
        world.verifier.import_block(first)
        assert check(world, report.encode()).verdict is FraudVerdict.PROVEN


def test_a_sample_of_keys_outside_the_trace_is_false(world: World) -> None:
    """The reporter chooses the keys: keys the block never touched would fail an honest node's
    sample, so they make the report false rather than prove anything."""
    block = transfer_block(world, GENESIS.header)
    world.network.nodes[world.honest.key.address] = world.honest
    client = RemoteEngineClient(world.honest.node, world.network, timeout=30)
    client.new_payload(block)
    client.get_trace(block.block_hash)
    client.get_proofs(block.block_hash, [bytes(32)])
    world.verifier.import_block(block)
    trace, proofs = client.transcript()[-2:]
    judgement = check(world, FraudReport(block.encode(), (trace, proofs)).encode())
    assert judgement.verdict is FraudVerdict.FALSE and "not distinct keys" in judgement.detail


def test_a_bad_witness_is_proven(world: World) -> None:
    liar = keypair_for(index=65)
    block = transfer_block(world, GENESIS.header)
    world.verifier.import_block(block)
    params: list[object] = [block.block_hash.hex(), block.encode().hex()]
    garbled = signed(liar, "engine_getWitness", params, "ff" * 40)
    judgement = check(world, FraudReport(b"", (garbled,)).encode())
    assert judgement.verdict is FraudVerdict.PROVEN and "does not decode" in judgement.detail
    # the honest witness, re-signed by the liar, is a true statement
    world.network.nodes[world.honest.key.address] = world.honest
    client = RemoteEngineClient(world.honest.node, world.network, timeout=30)
    client.get_witness(block.block_hash, block)
    honest = client.transcript()[-1]
    true = SignedStatement.create(liar, honest.statement)
    assert check(world, FraudReport(b"", (true,)).encode()).verdict is FraudVerdict.FALSE
    # a witness that decodes but does not prove the parent state: the one of another block
    world.roots.new_payload(block)
    child = next_block(GENESIS, block.header, MINER, execution=world.roots)
    world.verifier.import_block(child)
    client.new_payload(child)
    client.get_witness(child.block_hash, child)
    wrong = signed(
        liar, "engine_getWitness", params, json.loads(client.transcript()[-1].statement.answer)
    )
    judgement = check(world, FraudReport(b"", (wrong,)).encode())
    assert judgement.verdict is FraudVerdict.PROVEN and "bad witness" in judgement.detail


def test_a_payload_that_breaks_its_template_is_proven(world: World) -> None:
    liar = keypair_for(index=66)
    template = next_block(GENESIS, GENESIS.header, MINER, sealed=False)
    world.network.nodes[world.honest.key.address] = world.honest
    client = RemoteEngineClient(world.honest.node, world.network, timeout=30)
    payload_id = client.forkchoice_updated(GENESIS.genesis_hash, template)
    assert payload_id is not None
    payload = client.get_payload(payload_id)
    (honest,) = client.transcript()
    assert honest.statement.method == "engine_buildPayload"
    judgement = check(world, FraudReport(b"", (honest,)).encode())
    assert judgement.verdict is FraudVerdict.FALSE, judgement
    changed = replace(payload, header=replace(payload.header, timestamp_ms=1))
    lie = signed(liar, "engine_buildPayload", [template.encode().hex()], changed.encode().hex())
    judgement = check(world, FraudReport(b"", (lie,)).encode())
    assert judgement.verdict is FraudVerdict.PROVEN and "header fields" in judgement.detail
    assert judgement.accused == liar.address


def test_garbage_is_a_false_report(world: World) -> None:
    for data in (b"", b"\x01", b"\x07" + bytes(100), b"\x01\x00\x00"):
        assert check(world, data).verdict is FraudVerdict.FALSE


def test_a_block_from_the_future_is_undecided_not_false(world: World) -> None:
    """The future-drift rule depends on the verifier's clock: a relay that proved the report under
    its own may be honest. A verdict about a block from the future is undecided here (nothing
    happens), never FALSE (which would penalise the relay)."""
    ahead = int(time.time() * 1000) + 24 * 3600 * 1000
    tx = sign_transfer(
        ALICE, chain_id=GENESIS.chain_id, nonce=0, recipient=BOB.address, amount=5, fee=21_000
    )
    future = next_block(GENESIS, GENESIS.header, MINER, [tx], timestamp_ms=ahead)
    lie = signed(
        keypair_for(index=67), "engine_newPayload", [future.encode().hex()], {"status": "VALID"}
    )
    judgement = check(world, FraudReport(b"", (lie,)).encode())
    assert judgement.verdict is FraudVerdict.UNDECIDED, judgement
    assert "timestamp" in judgement.detail
    assert not world.verifier.chain.has_block(future.block_hash)


def test_a_proven_liar_is_dropped_only_if_used_here(world: World) -> None:
    """Anyone can sign a lie with a fresh key: a proven report about a node this node does not
    use adds nothing to its dropped list (which every such report would otherwise grow); about a
    node it uses, that node is dropped and let go."""
    with served(world.tmp_path, "liar", 68, "wrong-state-root") as liar:
        world.network.nodes[liar.key.address] = liar
        block = transfer_block(world, GENESIS.header)
        lying = RemoteEngineClient(liar.node, world.network, timeout=30)
        assert lying.new_payload(block).status == "INVALID"
        lie = lying.transcript()[-1]
        world.verifier.import_block(block)
        pool = RemotePool(world.verifier, world.network, 1)
        world.verifier.remote = pool
        pool.refresh()
        assert pool.client_of(liar.key.address) is not None
        access = NodeAccess(world.verifier)
        stranger = keypair_for(index=69)
        fresh = SignedStatement.create(stranger, lie.statement)  # the same lie, a fresh key
        judgement = access.judge_fraud(FraudReport(b"", (fresh,)).encode())
        assert judgement.verdict is FraudVerdict.PROVEN and judgement.accused == stranger.address
        assert remote_url(stranger.address) not in world.verifier.dropped
        judgement = access.judge_fraud(FraudReport(b"", (lie,)).encode())
        assert judgement.verdict is FraudVerdict.PROVEN and judgement.accused == liar.key.address
        assert remote_url(liar.key.address) in world.verifier.dropped
        assert pool.client_of(liar.key.address) is None


def test_a_report_of_many_witnesses_is_false(world: World) -> None:
    """Each witness statement costs the verifier a re-execution of the block: a report carries
    one (as the reporting side builds them), more is an attack on the verifiers."""
    liar = keypair_for(index=75)
    block = transfer_block(world, GENESIS.header)
    world.verifier.import_block(block)
    params: list[object] = [block.block_hash.hex(), block.encode().hex()]
    garbled = [signed(liar, "engine_getWitness", params, "ff" * (40 + i)) for i in range(2)]
    judgement = check(world, FraudReport(b"", (garbled[0],)).encode())
    assert judgement.verdict is FraudVerdict.PROVEN
    judgement = check(world, FraudReport(b"", tuple(garbled)).encode())
    assert judgement.verdict is FraudVerdict.FALSE and "more than one witness" in judgement.detail


def test_a_verdict_by_hash_proves_a_lie_only_about_its_block(world: World) -> None:
    """An ``engine_getVerdict`` statement names the block by hash: the report carries the block,
    and a block of another hash (or none) makes the report FALSE."""
    with served(world.tmp_path, "liar", 76, "wrong-state-root") as liar:
        world.network.nodes[liar.key.address] = liar
        block = transfer_block(world, GENESIS.header)
        liar.rpc.call("engine_newPayload", block.encode().hex())  # held there
        client = RemoteEngineClient(liar.node, world.network, timeout=30)
        assert client.new_payload(block).status == "INVALID"
        (lie,) = client.transcript()  # asked by hash only: the block was not sent
        assert lie.statement.method == "engine_getVerdict" and not lie.statement.error
        assert client.traffic()["bytesSent"] < 100
        (report,) = candidate_reports(client.transcript(), block)
        assert report == FraudReport(block.encode(), (lie,))
        built = build_report(client.transcript(), block, NodeContext(world.verifier))
        assert built is not None and built[1].verdict is FraudVerdict.PROVEN, built
        assert built[1].accused == liar.key.address and "INVALID" in built[1].detail
        world.roots.new_payload(block)
        other = next_block(GENESIS, block.header, MINER, execution=world.roots)
        world.verifier.import_block(block)
        world.verifier.import_block(other)
        judgement = check(world, FraudReport(other.encode(), (lie,)).encode())
        assert judgement.verdict is FraudVerdict.FALSE and "another block" in judgement.detail
        judgement = check(world, FraudReport(b"", (lie,)).encode())
        assert judgement.verdict is FraudVerdict.FALSE and "no block" in judgement.detail
        # the same statement about the right block, once more: proven
        assert check(world, report.encode()).verdict is FraudVerdict.PROVEN
        # a true verdict by hash shows no lie
        world.network.nodes[world.honest.key.address] = world.honest
        world.honest.rpc.call("engine_newPayload", block.encode().hex())
        honest = RemoteEngineClient(world.honest.node, world.network, timeout=30)
        assert honest.new_payload(block).status == "VALID"
        (true,) = honest.transcript()
        judgement = check(world, FraudReport(block.encode(), (true,)).encode())
        assert judgement.verdict is FraudVerdict.FALSE and "true" in judgement.detail
