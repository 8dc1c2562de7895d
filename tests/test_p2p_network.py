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
import functools
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from qoin.chain.block import Block
from qoin.chain.chain import Chain
from qoin.crypto.hybrid import generate_keypair
from qoin.p2p.addresses import PeerAddress
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
from qoin.p2p.transport import NetworkId, TransportError, connect
from tests.framework import CONSENSUS, FUNDED, RPC_POLL_S, Network, genesis, pay, wait_until
from tests.keys import keypair_for
from tests.procutil import Producer

pytestmark = pytest.mark.slow  # several nodes each, tens of seconds a test

ALICE, BOB = keypair_for(index=2), keypair_for(index=3)
LONG_CHAIN = 500
SYNC_S = 240.0
SLOW_POLL_S = 0.5
"""How often the long waits ask (each status call costs the nodes some work)."""
MINER_PAUSE_MS = 200
"""The nodes' miners pause this long after each block (unpaused, a miner at the maximum target
takes a core and makes hundreds of blocks while the other nodes start)."""


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


def test_a_late_node_syncs_500_blocks(net: Network, long_chain: Path) -> None:
    """...from two peers at once: both serve bodies (parallel download)."""
    seeds = []
    for name in ("seed-1", "seed-2"):
        shutil.copytree(long_chain, net.workdir / name)
        seeds.append(net.node(name))
        assert seeds[-1].height() == LONG_CHAIN
    late = net.node("late", bootnodes=seeds)
    net.sync_heads([*seeds, late], SYNC_S, LONG_CHAIN, SLOW_POLL_S)
    p2p = late.status()["p2p"]
    assert p2p["blocks_imported"] == LONG_CHAIN and p2p["bans"] == [], p2p
    served = [peer["blocksServed"] for peer in p2p["peers"]]
    assert len(served) == 2 and min(served) > 0 and sum(served) >= LONG_CHAIN, p2p
    expected = 1_000 * sum(range(1, LONG_CHAIN // 25 + 1))
    assert late.user.call("qoin_getBalance", str(ALICE.address)) == expected
    assert late.user.call("qoin_blockNumber") == LONG_CHAIN


def test_a_node_restarted_mid_sync_resumes(net: Network, long_chain: Path) -> None:
    shutil.copytree(long_chain, net.workdir / "seed")
    seed = net.node("seed")
    late = net.node("late", bootnodes=[seed])
    wait_until(lambda: late.height() >= 100, SYNC_S, RPC_POLL_S)
    late.restart_consensus("--bootnode", str(seed.enode))
    resumed_at = int(late.child(CONSENSUS).wait_for(r"; head height=(\d+) ")[1][1])
    assert 100 <= resumed_at < LONG_CHAIN, "it stopped after the sync had ended: make it longer"
    net.sync_heads([seed, late], SYNC_S, LONG_CHAIN, SLOW_POLL_S)
    assert late.status()["p2p"]["blocks_imported"] == LONG_CHAIN - resumed_at
    assert late.user.call("qoin_blockNumber") == LONG_CHAIN


def test_a_split_network_converges_on_the_heaviest_head(net: Network) -> None:
    """Two halves (a1-a2 and b1-b2) mine apart, spending the same coins differently; joined, all
    four agree on the head an in-process fork choice over both branches picks, and their execution
    clients on its state."""
    a1 = net.node("a1")
    a2 = net.node("a2", bootnodes=[a1])
    b1 = net.node("b1")
    b2 = net.node("b2", bootnodes=[b1])
    net.split([a1, a2], [b1, b2])
    side_a, side_b = Producer(net.workdir / "side-a"), Producer(net.workdir / "side-b")
    judge = Chain.open(net.workdir / "judge", genesis())
    try:
        for producer, node, count, payee in ((side_a, a1, 6, ALICE), (side_b, b1, 4, BOB)):
            for nonce in range(count):
                block = producer.block((pay(FUNDED, nonce, payee, 100 + nonce, nonce == 0),))
                answer = node.rpc.call("consensus_submitBlock", block.encode().hex())
                assert answer["headChanged"]
                producer.accept(block)
                judge.import_block(block)
        net.sync_heads([a1, a2], 60, 6)
        net.sync_heads([b1, b2], 60, 4)
        assert a2.user.call("qoin_getBalance", str(BOB.address)) == 0
        net.join(a2, b2)
        expected = judge.head.hex()
        nodes = [a1, a2, b1, b2]
        wait_until(lambda: {n.head() for n in nodes} == {expected}, 90, SLOW_POLL_S)
        winner_paid = sum(100 + nonce for nonce in range(6))

        def balances() -> set[tuple[int, int]]:
            alice, bob = str(ALICE.address), str(BOB.address)
            return {
                (n.user.call("qoin_getBalance", alice), n.user.call("qoin_getBalance", bob))
                for n in nodes
            }

        # A node that gets the losing branch's last blocks after the heads agree still judges them
        # by moving its execution client onto that branch for a moment (docs/spec/consensus.md,
        # import step 4), and a read then sees that branch's state (once (615, 406): the two reads
        # fell on either side of such a moment); the balances settle on the head's state.
        wait_until(lambda: balances() == {(winner_paid, 0)}, 60, SLOW_POLL_S, "the winner's state")
    finally:
        judge.close()
        side_a.close()
        side_b.close()


def test_a_live_network_splits_and_joins(net: Network) -> None:
    """Peers linked by a bootnode are split (``consensus_removePeer`` on both sides): blocks
    submitted to one side no longer travel and neither side dials the other again; joined, the
    other side syncs them."""
    a = net.node("a")
    b = net.node("b", bootnodes=[a])
    wait_until(lambda: net.connected(a, b), 60, RPC_POLL_S, "the bootnode link")
    net.split([a], [b])
    producer = Producer(net.workdir / "producer")
    try:
        for _ in range(3):
            block = producer.block()
            assert a.rpc.call("consensus_submitBlock", block.encode().hex())["headChanged"]
            producer.accept(block)
    finally:
        producer.close()
    for _ in range(8):  # four upkeep rounds: a redial or a gossiped block would show by now
        assert not net.connected(a, b) and b.height() == 0
        time.sleep(SLOW_POLL_S)
    net.join(a, b)
    net.sync_heads([a, b], 60, 3)


def test_a_transaction_reaches_every_execution_client(net: Network) -> None:
    """Sent to the first node of a line of three, transfers are gossiped hop by hop into the
    mempools of the others, both execution clients of the last one included: one sent before the
    others connected (announced when they connect), one sent after (announced as it arrives)."""
    first = net.node("first")
    early = pay(FUNDED, 0, ALICE, 1_234, reveal=True)
    first.user.call("qoin_sendRawTransaction", early.encode().hex())
    middle = net.node("middle", bootnodes=[first])
    extra = net.execution("last-2")
    last = net.node("last", "--execution", str(extra.engine), bootnodes=[middle])
    wait_until(lambda: len(middle.status()["p2p"]["peers"]) == 2, 30, RPC_POLL_S)
    late = pay(FUNDED, 1, BOB, 99)
    first.user.call("qoin_sendRawTransaction", late.encode().hex())
    for node in (middle, last, extra):
        for tx in (early, late):
            pending = wait_until(
                functools.partial(node.user.call, "qoin_getTransactionByHash", tx.tx_id.hex()),
                30,
                RPC_POLL_S,
                f"{tx.tx_id.hex()[:12]} in the mempool of {node.name}",
            )
            assert pending["pending"] is True
    assert last.status()["p2p"]["transactions_received"] == 2


def stored_blocks(datadir: Path) -> dict[bytes, Block]:
    """Every block a stopped node's consensus store holds."""
    chain = Chain.open(datadir, genesis())
    try:
        metas = [meta for meta in chain.store.metas() if meta.height > 0]
        found = {meta.block_hash: chain.store.get_block(meta.block_hash) for meta in metas}
        return {block_hash: block for block_hash, block in found.items() if block is not None}
    finally:
        chain.close()


def test_halves_mining_apart_converge_once_joined(net: Network) -> None:
    """The same with the nodes' own miners: each half mines (one worker, the test network's
    maximum target, a pause after each block so that the miners leave the other nodes' start-up
    some room) until both have a few blocks, mining stops (SIGUSR1), the halves join, and all
    four agree on the head that fork choice over every block any of them stored picks."""
    pause = ("--block-interval-ms", str(MINER_PAUSE_MS))
    a1 = net.node("a1", *pause, mine=True)
    a2 = net.node("a2", bootnodes=[a1])
    b1 = net.node("b1", *pause, mine=True)
    b2 = net.node("b2", bootnodes=[b1])
    net.split([a1, a2], [b1, b2])
    wait_until(lambda: a2.height() >= 3 and b2.height() >= 3, 120, RPC_POLL_S)
    for miner in (a1, b1):
        miner.send_signal(CONSENSUS, signal.SIGUSR1)
        miner.child(CONSENSUS).wait_for("mining stopped")
    net.sync_heads([a1, a2], 60)
    net.sync_heads([b1, b2], 60)
    assert a1.head() != b1.head()  # the halves did split
    net.join(a2, b2)
    nodes = [a1, a2, b1, b2]
    agreed = net.sync_heads(nodes, 120, poll=SLOW_POLL_S)
    net.stop_nodes(nodes)
    union: dict[bytes, Block] = {}
    for node in nodes:
        union.update(stored_blocks(node.datadir))
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


def test_a_peer_serving_an_invalid_block_is_banned(net: Network) -> None:
    honest = net.node("honest")
    producer = Producer(net.workdir)
    try:
        good = []
        for nonce in range(3):
            block = producer.block((pay(FUNDED, nonce, ALICE, 10 + nonce, nonce == 0),))
            producer.accept(block)
            good.append(block)
        answer = honest.rpc.call("consensus_submitBlock", good[0].encode().hex())
        assert answer["headChanged"]
        bad = producer.block((pay(FUNDED, 3, BOB, 5),), honest_roots=False)
    finally:
        producer.close()
    evil = BadPeer(good, bad)
    enode = PeerAddress.parse(str(honest.enode))
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
    newcomer = net.node("newcomer", bootnodes=[honest])
    net.sync_heads([honest, newcomer], 60, 3)
    honest.restart_consensus()
    subjects = {b["subject"] for b in honest.status()["p2p"]["bans"]}
    assert str(evil.identity.address) in subjects
