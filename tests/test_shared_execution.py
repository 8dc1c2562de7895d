"""Shared execution (issue 18) as real processes on 127.0.0.1: consensus clients that judge and mine
with *other operators'* execution nodes over p2p (``qoin consensus --remote-execution N``), trusted
only through sampling.

One network for the module: three serving nodes (a ``qoin execution`` and a
``qoin consensus --serve-execution`` each) and a consensus client with no execution client of its
own (``--remote-execution 3``, the three as bootnodes). It follows the chain one serving node mines,
mines a block itself on a payload a remote node builds, and all agree on the head. Then, for each
way an execution client can lie (``qoin execution --dishonest MODE``, but ``silent``), the third
serving node stops and a serving node whose execution client lies takes its place: the remote
client catches the lie (the liar dropped, with the reason), bans it, and sends a fraud report by
which its honest peers ban it too; a new honest serving node replaces it; the chain goes on. Last,
every serving node's consensus process stops: the client says it has no usable execution node, a
block is ``undecided`` and the head stays; they come back, and it resumes.

Blocks come from a :class:`~tests.procutil.Producer` (reaching the remote client by
``consensus_submitBlock``), or from the nodes' own miners, which the producer then catches up with
(raw blocks from a serving node's execution client). The nodes a case starts (the liar, the honest
one that replaces it) start at the head: their data directories are copies of the producer's, so
that the block a liar lies about is the first one it sees. Each has a fresh node key, so that a
banned liar cannot poison the next case; and the third node is a new one each time rather than the
same one stopped and started again, which the remote client, counting each disconnection as a
failure in a row, would leave unused for a growing quarantine (up to a minute) once it is back.
"""

from __future__ import annotations

import functools
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import FEE_PER_BLOCK, MIN_TERM
from qoin.chain.block import Block
from qoin.chain.transaction import AnyTransaction, sign_call
from qoin.execution.abi import encode_call
from qoin.execution.dishonest import MODES
from qoin.process import STOP_TIMEOUT_S
from qoin.rpc.client import RpcClient
from qoin.rpc.jwt import encode, load_secret
from tests.framework import (
    CONSENSUS,
    FUNDED,
    RPC_POLL_S,
    SERVE_EXECUTION,
    Network,
    Node,
    genesis,
    output,
    pay,
    wait_until,
)
from tests.keys import keypair_for
from tests.procutil import Producer

pytestmark = pytest.mark.slow  # five nodes' processes, a liar per case

ALICE = keypair_for(index=2)
WANTED = 3
"""Remote execution nodes the remote client judges with."""
PAUSE = ("--block-interval-ms", "300", "--workers", "1")
"""Miners (started by ``consensus_setMining``) pause after each block, with one worker."""
WAIT_S = 60.0
MINED = r"new head height=(\d+) hash=([0-9a-f]{64})"
REJECTED = "mined block rejected"
"""What a miner says of a block it mined on a payload that its execution nodes then judge
invalid."""
LIES: dict[str, str] = {
    "wrong-state-root": "answered INVALID",
    "valid-for-invalid": "answered VALID",
    "wrong-balance-proof": "does not verify",
    "garbled-proof": "do not decode",
    "omit-transaction": "answered VALID",
    "wrong-storage-value": "answered VALID",
    "wrong-step-record": "does not match the trace",
}
"""Each lie but ``silent`` (no answer is not a lie), with words the liar's dropped reason holds (a
block mined on a lying payload is judged as any block: the honest nodes call it INVALID, the liar
VALID)."""


@dataclass
class Shared:
    """The module's network: three serving nodes, the remote client, the producer."""

    net: Network
    serving: list[Node]
    """The three honest serving nodes (the third is replaced in each lying case)."""
    remote: Node
    producer: Producer
    started: int = 0
    """Nodes started at the head so far (each with a name of its own)."""

    def __post_init__(self) -> None:
        self.honest_ids = {node.node_id for node in self.serving}
        """The serving nodes' node ids (they keep them across restarts)."""

    @property
    def nodes(self) -> list[Node]:
        return [*self.serving, self.remote]

    def reader(self) -> Node:
        """A serving node whose execution client is running (the blocks and accounts are read
        from it)."""
        return self.serving[0]

    def catch_up(self) -> None:
        """Give the producer the blocks the nodes mined (the heads must agree first)."""
        reader = self.reader()
        height = int(reader.user.call("qoin_blockNumber"))
        for number in range(self.producer.chain.head_header.height + 1, height + 1):
            found = reader.user.call("qoin_getBlockByNumber", number)
            self.producer.accept(Block.decode(bytes.fromhex(found["raw"])))
        assert self.producer.chain.head.hex() == self.remote.head()

    def nonce(self) -> int:
        """The funded account's next nonce on the chain."""
        account = self.reader().user.call("qoin_getAccount", str(FUNDED.address))
        return int(account["nonce"])

    def valid_block(self) -> Block:
        """The next block on the producer's head, paying Alice."""
        nonce = self.nonce()
        return self.producer.block((pay(FUNDED, nonce, ALICE, 100 + nonce, nonce == 0),))

    def go_on(self) -> str:
        """The chain goes on: a valid block submitted to the remote client is imported and every
        node takes it; the head."""
        block = self.valid_block()
        answer = submit(self.remote, block)
        assert answer["status"] == "imported" and answer["headChanged"], answer
        self.producer.accept(block)
        return self.net.sync_heads(self.nodes, WAIT_S, block.header.height)

    def start_at_head(self, role: str, *execution_args: str) -> Node:
        """A serving node at the head (its data directories are copies of the producer's), with
        a fresh node id, dialling the remote client; its execution client started with
        ``execution_args``."""
        self.started += 1
        name = f"{role}-{self.started}"
        workdir = self.net.workdir
        self.producer.close()  # copied closed: every write is in the files
        try:
            skip = shutil.ignore_patterns("*.lock")
            shutil.copytree(workdir / "producer-chain", workdir / name, ignore=skip)
            shutil.copytree(workdir / "producer-execution", workdir / f"{name}-execution",
                            ignore=skip)  # fmt: skip
        finally:
            self.producer = Producer(workdir)
        return self.net.node(
            name, serve=True, bootnodes=[self.remote], execution_args=execution_args
        )

    def replace_third(self) -> Node:
        """A new honest serving node at the head in the third one's place (the old one stopped
        before)."""
        fresh = self.start_at_head("honest")
        self.serving[2] = fresh
        self.honest_ids = {node.node_id for node in self.serving}
        return fresh


def submit(node: Node, block: Block) -> dict[str, Any]:
    result: dict[str, Any] = node.rpc.call("consensus_submitBlock", block.encode().hex())
    return result


def bans(node: Node, subject: str) -> bool:
    """Whether ``node``'s p2p service bans ``subject``."""
    return subject in node.banned()


def unusable(node: Node) -> dict[str, Any] | None:
    """``node``'s status while it says it has no usable execution node, else None."""
    state = node.status()
    return None if state["execution"]["usable"] else state


def dropped(node: Node) -> dict[str, Any]:
    """The execution clients ``node`` dropped, by URL (a remote one: ``p2p:`` and its node
    id)."""
    found: dict[str, Any] = node.status()["dropped"]
    return found


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    workdir = tmp_path_factory.mktemp("shared-execution")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QOIN_HOME", str(workdir / "home"))
        patch.delenv("QOIN_PASSWORD", raising=False)
        net = Network(workdir)
        producer = Producer(workdir)
        made: Shared | None = None
        try:
            first = net.node("serving-1", *PAUSE, serve=True)
            serving = [first] + [
                net.node(f"serving-{i}", serve=True, bootnodes=[first]) for i in (2, 3)
            ]
            remote = net.remote("remote", *PAUSE, wanted=WANTED, bootnodes=serving)
            made = Shared(net, serving, remote, producer)
            yield made
        finally:
            net.stop_all()
            (made.producer if made is not None else producer).close()


def test_a_remote_only_client_follows_mines_and_agrees(shared: Shared) -> None:
    net, remote, serving = shared.net, shared.remote, shared.serving
    wait_until(lambda: remote.using() == shared.honest_ids, WAIT_S, RPC_POLL_S,
               "the three serving nodes in use")  # fmt: skip
    state = remote.status()
    assert state["remoteExecution"]["wanted"] == WANTED, state
    assert state["remoteExecution"]["problem"] is None, state
    assert state["execution"]["usable"] is True and state["execution"]["reason"] is None, state
    assert {entry["node"]: entry["state"] for entry in state["remoteExecution"]["using"]} == {
        node_id: "active" for node_id in shared.honest_ids
    }, state
    assert state["executionClients"] and all(
        str(client["url"]).startswith("p2p:") for client in state["executionClients"]
    ), state
    # It follows: the first serving node mines a few blocks.
    serving[0].rpc.call("consensus_setMining", True)
    wait_until(lambda: remote.height() >= 3, WAIT_S, RPC_POLL_S, "the remote client at 3")
    serving[0].rpc.call("consensus_setMining", False)
    net.sync_heads(shared.nodes, WAIT_S)
    judged = remote.status()["judged"]
    assert judged["sampled"] >= 3 and judged["invalid"] == 0, judged
    # It mines: a remote node fills the template, the block goes to everyone.
    remote.rpc.call("consensus_setMining", True)
    found = remote.child(CONSENSUS).wait_for(MINED, WAIT_S)[1]
    remote.rpc.call("consensus_setMining", False)
    head = net.sync_heads(shared.nodes, WAIT_S)
    height, mined = int(found[1]), found[2]
    for node in serving:
        assert node.user.call("qoin_getBlockByNumber", height)["hash"] == mined
    assert remote.status()["mining"]["blocksMined"] >= 1
    assert remote.head() == head and remote.using() == shared.honest_ids
    assert remote.status()["p2p"]["bans"] == []


# -- lies -----------------------------------------------------------------------------------------


def lie_about_a_valid_block(shared: Shared, liar: Node) -> None:
    """A valid block: the liar calls it INVALID, or its samples fail; re-execution decides."""
    block = shared.valid_block()
    answer = submit(shared.remote, block)
    assert answer["status"] == "imported", answer
    shared.producer.accept(block)


def lie_about_a_held_block(shared: Shared, liar: Node) -> None:
    """A valid block the liar's execution client holds already (given to it first, as when the
    block reached the liar's own node before): the remote client asks its verdict by hash
    (``engine_getVerdict``), never sends it the block, and the liar calls it INVALID."""
    block = shared.valid_block()
    secret = load_secret(shared.net.jwt_file)
    with RpcClient(str(liar.engine), token=lambda: encode(secret)) as engine:
        engine.call("engine_newPayload", block.encode().hex())  # its answer is the lie: unused
    answer = submit(shared.remote, block)
    assert answer["status"] == "imported", answer
    shared.producer.accept(block)
    served = liar.status()["p2p"]["engine"]
    assert served["bytesIn"] < len(block.encode().hex()), served  # the block was never sent


def lie_about_an_invalid_block(shared: Shared, liar: Node) -> None:
    """A block that spends more than the funded account holds: the liar calls it VALID."""
    nonce = shared.nonce()
    balance = int(shared.reader().user.call("qoin_getBalance", str(FUNDED.address)))
    overspend = pay(FUNDED, nonce, ALICE, balance, nonce == 0)
    block = shared.producer.block((overspend,), honest_roots=False)
    answer = submit(shared.remote, block)
    assert answer["status"] == "invalid", answer
    assert "InsufficientBalance" in answer["reason"], answer


def transfer(nonce: int) -> AnyTransaction:
    return pay(FUNDED, nonce, ALICE, 7, nonce == 0)


def registration(nonce: int) -> AnyTransaction:
    """A ``names`` registration: it writes storage (what ``wrong-storage-value`` falsifies)."""
    return sign_call(
        FUNDED,
        chain_id=genesis().chain_id,
        nonce=nonce,
        to=NAMES_ADDRESS,
        data=encode_call("register", [f"shared-{nonce}", bytes(32), MIN_TERM]),
        value=FEE_PER_BLOCK * MIN_TERM,
        gas_limit=300_000,
        fee_per_gas=1,
        reveal_keys=nonce == 0,
    )


def lie_in_a_payload(make: Callable[[int], AnyTransaction]) -> Callable[[Shared, Node], None]:
    """The remote client mines; its builders take turns, the liar among them. A transaction sent
    to the liar waits in its mempool (a new one once a block includes it), so that the liar's
    payload, when its turn comes, holds one to lie about."""

    def lie(shared: Shared, liar: Node) -> None:
        remote, key = shared.remote, f"p2p:{liar.node_id}"
        rejected = output(remote.child(CONSENSUS)).count(REJECTED)
        nonce = shared.nonce()
        sent: AnyTransaction | None = None

        def caught() -> bool:
            """Whether the liar is dropped; else a transaction waits in its mempool."""
            nonlocal nonce, sent
            if key in dropped(remote):
                return True
            included = sent is not None and shared.reader().user.call(
                "qoin_getTransactionReceipt", sent.tx_id.hex()
            )
            if sent is None or included:
                sent = make(nonce)
                liar.user.call("qoin_sendRawTransaction", sent.encode().hex())
                nonce += 1
            return False

        remote.rpc.call("consensus_setMining", True)
        try:
            wait_until(caught, WAIT_S, RPC_POLL_S, "the liar caught building a payload")
        finally:
            remote.rpc.call("consensus_setMining", False)
        assert output(remote.child(CONSENSUS)).count(REJECTED) > rejected
        shared.net.sync_heads([*shared.serving[:2], remote], WAIT_S)
        shared.catch_up()  # the blocks it mined

    return lie


TRIGGERS: dict[str, Callable[[Shared, Node], None]] = {
    "wrong-state-root": lie_about_a_held_block,
    "valid-for-invalid": lie_about_an_invalid_block,
    "wrong-balance-proof": lie_about_a_valid_block,
    "garbled-proof": lie_about_a_valid_block,
    "omit-transaction": lie_in_a_payload(transfer),
    "wrong-storage-value": lie_in_a_payload(registration),
    "wrong-step-record": lie_about_a_valid_block,
}


def test_every_lie_is_known() -> None:
    assert set(LIES) == set(TRIGGERS) == set(MODES) - {"silent"}


@pytest.mark.parametrize("mode", list(LIES))
def test_a_lying_node_is_caught_banned_and_replaced(shared: Shared, mode: str) -> None:
    net, remote, serving = shared.net, shared.remote, shared.serving
    net.sync_heads(shared.nodes, WAIT_S)
    shared.catch_up()
    # The third serving node leaves, and a liar comes in its place.
    net.stop_nodes([serving[2]])
    liar = shared.start_at_head("liar", "--dishonest", mode)
    expected = {serving[0].node_id, serving[1].node_id, liar.node_id}
    wait_until(lambda: remote.using() == expected, WAIT_S, RPC_POLL_S, "the liar in use")
    TRIGGERS[mode](shared, liar)
    # Caught: dropped with the reason, banned; its honest peers ban it too on the fraud report.
    key = f"p2p:{liar.node_id}"
    entry = wait_until(lambda: dropped(remote).get(key), WAIT_S, RPC_POLL_S, "the liar dropped")
    assert entry is not None and LIES[mode] in entry["reason"], entry
    assert liar.node_id in remote.banned()
    for honest in serving[:2]:
        wait_until(functools.partial(bans, honest, liar.node_id), WAIT_S, RPC_POLL_S,
                   f"{honest.name} banned the liar")  # fmt: skip
        assert not any(url.startswith("p2p:") for url in dropped(honest))
    assert not set(dropped(remote)) & {f"p2p:{node_id}" for node_id in shared.honest_ids}
    # A new honest serving node replaces it; the chain goes on.
    shared.replace_third()
    wait_until(lambda: remote.using() == shared.honest_ids, WAIT_S, RPC_POLL_S,
               "a new honest serving node in the liar's place")  # fmt: skip
    shared.go_on()
    net.stop_nodes([liar])


def test_without_remote_nodes_blocks_wait_and_the_client_resumes(shared: Shared) -> None:
    net, remote, serving = shared.net, shared.remote, shared.serving
    net.sync_heads(shared.nodes, WAIT_S)
    shared.catch_up()
    head = remote.head()
    block = shared.valid_block()
    stopping = [node.signal_stop(CONSENSUS, signal.SIGTERM) for node in serving]
    deadline = time.monotonic() + STOP_TIMEOUT_S
    assert [child.finish(deadline) for child in stopping] == [0, 0, 0]
    state = wait_until(functools.partial(unusable, remote), WAIT_S, RPC_POLL_S,
                       "no usable execution node")  # fmt: skip
    assert state is not None
    assert state["execution"]["reason"], state
    assert state["remoteExecution"]["problem"], state
    answer = submit(remote, block)
    assert answer["status"] == "undecided" and answer["reason"], answer
    assert remote.head() == head
    # They come back (dialling the remote client: their p2p ports are new): it resumes.
    for node in serving:
        node.start_consensus(SERVE_EXECUTION, "--bootnode", str(remote.enode))
    wait_until(lambda: remote.status()["execution"]["usable"], WAIT_S, RPC_POLL_S,
               "a usable execution node again")  # fmt: skip
    wait_until(lambda: remote.using() == shared.honest_ids, WAIT_S, RPC_POLL_S)
    if remote.head() != block.block_hash.hex():
        answer = submit(remote, block)
        assert answer["status"] in ("imported", "duplicate"), answer
    shared.producer.accept(block)
    net.sync_heads(shared.nodes, WAIT_S, block.header.height)
    assert remote.head() == block.block_hash.hex()
    # ... and follows: a block submitted to a serving node reaches it.
    following = shared.valid_block()
    assert submit(serving[1], following)["status"] == "imported"
    shared.producer.accept(following)
    net.sync_heads(shared.nodes, WAIT_S, following.header.height)
