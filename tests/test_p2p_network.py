"""Nodes over the p2p network, as real processes on 127.0.0.1: each node is a `qoin execution` and a
`qoin consensus --p2p-port 0`. A late node syncs a 500-block chain from two peers at once; a node
stopped mid-sync resumes from where it stopped; a network split in two mines on both sides (with
blocks mined in the test, and with the nodes' own miners) and, once joined, converges on the
GHOST-heaviest head, execution state included; transactions reach every execution client hop by
hop; a peer that serves an invalid block is banned while the honest nodes go on.

Chains are mined in the test process at the test network's maximum target (one hybrid signature
per block, stamped on schedule) and reach a node by `consensus_submitBlock` or a prepared data
directory; everything else travels over the encrypted transport.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qoin.chain.block import Block
from qoin.chain.chain import Chain
from qoin.crypto.hybrid import generate_keypair
from qoin.p2p.messages import (
    Blocks,
    Disconnect,
    DisconnectReason,
    GetBlocks,
    GetHeaders,
    Headers,
    NewBlockHashes,
    Status,
    decode_message,
    encode_message,
)
from qoin.p2p.peers import PeerAddress
from qoin.p2p.transport import NetworkId, TransportError, connect
from tests.conftest import keypair_for, wait_until
from tests.procutil import (
    FUNDED,
    Process,
    Producer,
    genesis,
    network_files,
    network_files_args,
    pay,
    rpc,
    start,
    start_execution,
)

ALICE, BOB = keypair_for(index=2), keypair_for(index=3)
LONG_CHAIN = 500
SYNC_S = 240.0


@dataclass
class Node:
    """One node: an execution process and a consensus process with p2p."""

    name: str
    execution: Process
    user: str
    consensus: Process
    url: str
    enode: str
    engine: str

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = rpc(self.url, "consensus_status")
        return result

    def height(self) -> int:
        return int(self.status()["height"])

    def stop(self) -> None:
        try:
            assert self.consensus.stop() == 0, self.consensus.output()
        finally:
            self.execution.stop()


@dataclass
class Net:
    workdir: Path
    nodes: list[Node] = field(default_factory=list)

    def start_consensus(self, name: str, engine: str, *extra: str) -> tuple[Process, str, str]:
        proc = start("consensus", "--datadir", str(self.workdir / name),
                     *network_files_args(self.workdir), "--execution", engine,
                     "--rpc-port", "0", "--p2p-port", "0", *extra)  # fmt: skip
        url = proc.wait_for(r"; RPC (\S+);")[1]
        return proc, url, proc.wait_for(r"p2p: node (\S+)")[1]

    def node(self, name: str, *extra: str) -> Node:
        execution, user, engine = start_execution(self.workdir, f"{name}-execution")
        try:
            consensus, url, enode = self.start_consensus(name, engine, *extra)
        except BaseException:
            execution.stop()
            raise
        node = Node(name, execution, user, consensus, url, enode, engine)
        self.nodes.append(node)
        return node

    def restart_consensus(self, node: Node, *extra: str) -> None:
        assert node.consensus.stop() == 0, node.consensus.output()
        node.consensus, node.url, node.enode = self.start_consensus(node.name, node.engine, *extra)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    network_files(tmp_path)
    made = Net(tmp_path)
    try:
        yield made
    finally:
        for node in reversed(made.nodes):
            node.execution.stop()
            node.consensus.stop()


@pytest.fixture(scope="module")
def long_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A consensus data directory holding a 500-block chain with a transfer every 25 blocks."""
    workdir = tmp_path_factory.mktemp("long-chain")
    producer = Producer(workdir)
    try:
        for height in range(1, LONG_CHAIN + 1):
            nonce, due = divmod(height, 25)
            txs = () if due else (pay(FUNDED, nonce - 1, ALICE, 1_000 * nonce, nonce == 1),)
            producer.accept(producer.block(txs))
    finally:
        producer.close()
    return workdir / "producer-chain"


def same_head(nodes: list[Node], height: int | None = None) -> bool:
    states = [node.status() for node in nodes]
    heads = {state["head"] for state in states}
    return len(heads) == 1 and (height is None or states[0]["height"] == height)


def test_a_late_node_syncs_500_blocks(net: Net, long_chain: Path) -> None:
    """...from two peers at once: both serve bodies (parallel download)."""
    seeds = []
    for name in ("seed-1", "seed-2"):
        shutil.copytree(long_chain, net.workdir / name)
        seeds.append(net.node(name))
        assert seeds[-1].height() == LONG_CHAIN
    late = net.node("late", *(arg for seed in seeds for arg in ("--bootnode", seed.enode)))
    wait_until(lambda: same_head([*seeds, late], LONG_CHAIN), timeout=SYNC_S, poll=0.5)
    p2p = late.status()["p2p"]
    assert p2p["blocks_imported"] == LONG_CHAIN and p2p["bans"] == [], p2p
    served = [peer["blocksServed"] for peer in p2p["peers"]]
    assert len(served) == 2 and min(served) > 0 and sum(served) >= LONG_CHAIN, p2p
    expected = 1_000 * sum(range(1, LONG_CHAIN // 25 + 1))
    assert rpc(late.user, "qoin_getBalance", str(ALICE.address)) == expected
    assert rpc(late.user, "qoin_blockNumber") == LONG_CHAIN


def test_a_node_restarted_mid_sync_resumes(net: Net, long_chain: Path) -> None:
    shutil.copytree(long_chain, net.workdir / "seed")
    seed = net.node("seed")
    late = net.node("late", "--bootnode", seed.enode)
    wait_until(lambda: late.height() >= 100, timeout=SYNC_S, poll=0.2)
    net.restart_consensus(late, "--bootnode", seed.enode)
    resumed_at = int(late.consensus.wait_for(r"; head height=(\d+) ")[1])
    assert 100 <= resumed_at < LONG_CHAIN, "it stopped after the sync had ended: make it longer"
    wait_until(lambda: same_head([seed, late], LONG_CHAIN), timeout=SYNC_S, poll=0.5)
    assert late.status()["p2p"]["blocks_imported"] == LONG_CHAIN - resumed_at
    assert rpc(late.user, "qoin_blockNumber") == LONG_CHAIN


def test_a_split_network_converges_on_the_heaviest_head(net: Net) -> None:
    """Two halves (a1-a2 and b1-b2) mine apart, spending the same coins differently; joined, all
    four agree on the head an in-process fork choice over both branches picks, and their execution
    clients on its state."""
    a1 = net.node("a1")
    a2 = net.node("a2", "--bootnode", a1.enode)
    b1 = net.node("b1")
    b2 = net.node("b2", "--bootnode", b1.enode)
    side_a, side_b = Producer(net.workdir / "side-a"), Producer(net.workdir / "side-b")
    judge = Chain.open(net.workdir / "judge", genesis())
    try:
        for producer, node, count, payee in ((side_a, a1, 6, ALICE), (side_b, b1, 4, BOB)):
            for nonce in range(count):
                block = producer.block((pay(FUNDED, nonce, payee, 100 + nonce, nonce == 0),))
                assert rpc(node.url, "consensus_submitBlock", block.encode().hex())["headChanged"]
                producer.accept(block)
                judge.import_block(block)
        wait_until(lambda: same_head([a1, a2], 6), timeout=60, poll=0.2)
        wait_until(lambda: same_head([b1, b2], 4), timeout=60, poll=0.2)
        assert rpc(a2.user, "qoin_getBalance", str(BOB.address)) == 0
        rpc(a2.url, "consensus_addPeer", b2.enode)  # join the halves
        expected = judge.head.hex()
        nodes = [a1, a2, b1, b2]
        wait_until(lambda: {n.status()["head"] for n in nodes} == {expected}, timeout=90, poll=0.5)
        balances = {
            (rpc(n.user, "qoin_getBalance", str(ALICE.address)),
             rpc(n.user, "qoin_getBalance", str(BOB.address)))
            for n in nodes
        }  # fmt: skip
        winner_paid = sum(100 + nonce for nonce in range(6))
        assert balances == {(winner_paid, 0)}
    finally:
        judge.close()
        side_a.close()
        side_b.close()


def test_a_transaction_reaches_every_execution_client(net: Net) -> None:
    """Sent to the first node of a line of three, transfers are gossiped hop by hop into the
    mempools of the others, both execution clients of the last one included: one sent before the
    others connected (announced when they connect), one sent after (announced as it arrives)."""
    first = net.node("first")
    early = pay(FUNDED, 0, ALICE, 1_234, reveal=True)
    rpc(first.user, "qoin_sendRawTransaction", early.encode().hex())
    middle = net.node("middle", "--bootnode", first.enode)
    extra, extra_user, extra_engine = start_execution(net.workdir, "last-execution-2")
    try:
        last = net.node("last", "--bootnode", middle.enode, "--execution", extra_engine)
        wait_until(lambda: len(middle.status()["p2p"]["peers"]) == 2, timeout=30, poll=0.2)
        late = pay(FUNDED, 1, BOB, 99)
        rpc(first.user, "qoin_sendRawTransaction", late.encode().hex())
        for user in (middle.user, last.user, extra_user):
            for tx in (early, late):
                wait_until(
                    lambda user=user, tx=tx: rpc(user, "qoin_getTransactionByHash", tx.tx_id.hex()),
                    timeout=30,
                    poll=0.2,
                )
                pending = rpc(user, "qoin_getTransactionByHash", tx.tx_id.hex())
                assert pending["pending"] is True
        assert last.status()["p2p"]["transactions_received"] == 2
    finally:
        extra.stop()


def stored_blocks(datadir: Path) -> dict[bytes, Block]:
    """Every block a stopped node's consensus store holds."""
    chain = Chain.open(datadir, genesis())
    try:
        metas = [meta for meta in chain.store.metas() if meta.height > 0]
        found = {meta.block_hash: chain.store.get_block(meta.block_hash) for meta in metas}
        return {block_hash: block for block_hash, block in found.items() if block is not None}
    finally:
        chain.close()


def test_halves_mining_apart_converge_once_joined(net: Net) -> None:
    """The same with the nodes' own miners: each half mines (one worker, the test network's
    maximum target) until both have a few blocks, mining stops (SIGUSR1), the halves join, and
    all four agree on the head that fork choice over every block any of them stored picks."""
    mining = ("--mine", "--workers", "1")
    a1 = net.node("a1", *mining)
    a2 = net.node("a2", "--bootnode", a1.enode)
    b1 = net.node("b1", *mining)
    b2 = net.node("b2", "--bootnode", b1.enode)
    wait_until(lambda: a2.height() >= 3 and b2.height() >= 3, timeout=120, poll=0.2)
    for miner in (a1, b1):
        miner.consensus.proc.send_signal(signal.SIGUSR1)
        miner.consensus.wait_for("mining stopped")
    wait_until(lambda: same_head([a1, a2]) and same_head([b1, b2]), timeout=60, poll=0.2)
    assert a1.status()["head"] != b1.status()["head"]  # the halves did split
    rpc(a2.url, "consensus_addPeer", b2.enode)
    nodes = [a1, a2, b1, b2]
    wait_until(lambda: same_head(nodes), timeout=120, poll=0.5)
    agreed = a1.status()["head"]
    for node in nodes:
        node.stop()
    union: dict[bytes, Block] = {}
    for node in nodes:
        union.update(stored_blocks(net.workdir / node.name))
    judge = Chain.open(net.workdir / "judge", genesis())
    try:
        for block in sorted(union.values(), key=lambda b: b.header.height):
            judge.import_block(block)
        assert judge.head.hex() == agreed
    finally:
        judge.close()


class BadPeer:
    """A peer that claims a heavier chain and serves a block whose state root is wrong."""

    def __init__(self, good: list[Block], bad: Block) -> None:
        self.blocks = {block.block_hash: block for block in [*good, bad]}
        self.chain = [*good, bad]
        self.identity = generate_keypair()
        self.network = NetworkId.from_genesis(genesis())
        self.goodbye: Disconnect | None = None
        self.requests = 0

    async def session(self, address: PeerAddress) -> None:
        channel = await connect(address.host, address.port, self.identity, self.network)
        tip = self.chain[-1].header
        status = Status(
            self.network.chain_id, self.network.genesis_hash, tip.block_hash, tip.height, 2**200, 0
        )
        await channel.send(encode_message(status))
        try:
            async with asyncio.timeout(60):
                while True:
                    message = decode_message(await channel.receive())
                    await self.answer(channel, message)
        except TransportError:
            pass
        finally:
            await channel.close()

    async def answer(self, channel: Any, message: Any) -> None:
        self.requests += isinstance(message, (GetHeaders, GetBlocks))
        if isinstance(message, GetHeaders):
            known = set(message.locator)
            start = next((i + 1 for i, b in reversed(list(enumerate(self.chain)))
                          if b.block_hash in known), 0)  # fmt: skip
            headers = tuple(block.header for block in self.chain[start:])
            await channel.send(encode_message(Headers(headers)))
        elif isinstance(message, GetBlocks):
            found = tuple(self.blocks[h] for h in message.hashes if h in self.blocks)
            await channel.send(encode_message(Blocks(found)))
        elif isinstance(message, Disconnect):
            self.goodbye = message
        elif isinstance(message, (Status, NewBlockHashes)):
            pass


def test_a_peer_serving_an_invalid_block_is_banned(net: Net) -> None:
    honest = net.node("honest")
    producer = Producer(net.workdir)
    try:
        good = []
        for nonce in range(3):
            block = producer.block((pay(FUNDED, nonce, ALICE, 10 + nonce, nonce == 0),))
            producer.accept(block)
            good.append(block)
        assert rpc(honest.url, "consensus_submitBlock", good[0].encode().hex())["headChanged"]
        bad = producer.block((pay(FUNDED, 3, BOB, 5),), honest_roots=False)
    finally:
        producer.close()
    evil = BadPeer(good, bad)
    enode = PeerAddress.parse(honest.enode)
    asyncio.run(evil.session(enode))
    assert evil.goodbye is not None and evil.goodbye.reason == DisconnectReason.BANNED
    state = honest.status()
    assert state["head"] == good[-1].block_hash.hex(), state  # the good blocks it served count
    assert str(evil.identity.address) in {b["subject"] for b in state["p2p"]["bans"]}
    assert state["invalidBlocks"] == 1
    evil.goodbye, evil.requests = None, 0
    asyncio.run(evil.session(enode))  # banned: refused as soon as it comes back
    assert evil.goodbye is not None and evil.goodbye.reason == DisconnectReason.BANNED
    assert evil.requests == 0
    # The honest node goes on: a new node syncs its chain, and its bans survive a restart.
    newcomer = net.node("newcomer", "--bootnode", honest.enode)
    wait_until(lambda: same_head([honest, newcomer], 3), timeout=60, poll=0.2)
    net.restart_consensus(honest)
    subjects = {b["subject"] for b in honest.status()["p2p"]["bans"]}
    assert str(evil.identity.address) in subjects
