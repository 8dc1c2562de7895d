"""The p2p service in-process: two or more services over loopback, each on a real chain (real
blocks, real validation, a real store file) without execution clients, and a scripted peer that
misbehaves on purpose. The multi-process tests (tests/test_p2p_network.py) cover the full node."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from qoin.chain.block import Block, Header
from qoin.chain.chain import Chain, ImportResult
from qoin.chain.genesis import Genesis
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.consensus.network import read_encodings, tree_weight
from qoin.crypto.hybrid import generate_keypair
from qoin.p2p import blocks as blocks_module
from qoin.p2p import download as download_module
from qoin.p2p import service as service_module
from qoin.p2p import session as session_module
from qoin.p2p.access import FraudJudgement, FraudVerdict, TxVerdict
from qoin.p2p.addresses import PeerAddress
from qoin.p2p.messages import (
    AnnouncedBlock,
    Blocks,
    Disconnect,
    DisconnectReason,
    GetBlocks,
    GetHeaders,
    GetTransactions,
    Headers,
    NewBlockHashes,
    NewTransactionHashes,
    Status,
    Transactions,
    decode_message,
    encode_message,
)
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.service import P2PService
from qoin.p2p.session import BlockRequests
from qoin.p2p.sync import block_locator, headers_after
from qoin.p2p.transport import HELLO_SIZE, NetworkId, TransportError, connect
from tests.chainutil import mine_next, test_genesis
from tests.framework import wait_until
from tests.keys import keypair_for


class ChainOnly:
    """A :class:`~qoin.p2p.access.ChainAccess` over a plain chain (consensus rules only)."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.genesis: Genesis = chain.genesis
        self.submitted: list[Transaction] = []

    def head(self) -> tuple[bytes, int, int]:
        return self.chain.head, self.chain.head_header.height, tree_weight(self.chain.forks)

    def tips(self, max_count: int) -> list[AnnouncedBlock]:
        return [AnnouncedBlock(self.chain.head, self.chain.head_header.height)][:max_count]

    def locator(self) -> list[bytes]:
        return block_locator(self.chain.head_header.height, self.chain.store.canonical_hash)

    def headers_after(self, locator: Sequence[bytes], stop: bytes, max_count: int) -> list[Header]:
        store = self.chain.store

        def height_of(block_hash: bytes) -> int | None:
            meta = self.chain.forks.blocks.get(block_hash)
            return None if meta is None else meta.height

        head_height = self.chain.head_header.height
        return headers_after(
            locator, stop, max_count, head_height, height_of, store.canonical_hash, store.header
        )

    def header(self, block_hash: bytes) -> Header | None:
        return self.chain.store.header(block_hash)

    def has_block(self, block_hash: bytes) -> bool:
        return self.chain.has_block(block_hash)

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        return [h for h in hashes if not self.chain.has_block(h)]

    def block_encodings(self, hashes: Sequence[bytes], max_bytes: int) -> list[tuple[bytes, bytes]]:
        return read_encodings(self.chain.store.block_encoding, hashes, max_bytes)

    def import_block(self, block: Block) -> ImportResult:
        return self.chain.import_block(block)

    def new_transactions(self) -> list[Transaction]:
        return []

    def pending_transactions(self) -> list[Transaction]:
        return list(self.submitted)

    def submit_transactions(self, txs: Sequence[Transaction]) -> list[TxVerdict]:
        self.submitted.extend(txs)
        return [TxVerdict.ADDED] * len(txs)

    def judge_fraud(self, report: bytes) -> FraudJudgement:
        return FraudJudgement(FraudVerdict.UNDECIDED, None, "no execution clients here")


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.services: list[P2PService] = []
        self.chains: list[Chain] = []

    def node(
        self,
        name: str,
        blocks: int = 0,
        *bootnodes: P2PService,
        access: Callable[[Chain], ChainOnly] = ChainOnly,
    ) -> P2PService:
        chain = Chain.open(self.tmp_path / name, test_genesis())
        self.chains.append(chain)
        for _ in range(blocks):
            chain.import_block(mine_next(chain))
        service = P2PService(
            access(chain),
            generate_keypair(),
            bootnodes=[PeerAddress.parse(b.enode) for b in bootnodes],
            datadir=self.tmp_path / name,
        )
        service.start()
        self.services.append(service)
        return service

    def close(self) -> None:
        for service in self.services:
            service.stop()
        for chain in self.chains:
            chain.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    made.close()


def canonical_blocks(chain: Chain, count: int) -> list[Block]:
    """The first ``count`` blocks of the chain's canonical chain."""
    found = []
    for height in range(1, count + 1):
        block_hash = chain.store.canonical_hash(height)
        block = None if block_hash is None else chain.store.get_block(block_hash)
        assert block is not None
        found.append(block)
    return found


def chain_of(service: P2PService) -> Chain:
    access = service.access
    assert isinstance(access, ChainOnly)
    return access.chain


def test_a_new_node_syncs_and_then_follows_gossip(cluster: Cluster) -> None:
    seed = cluster.node("seed", 40)
    late = cluster.node("late", 0, seed)
    wait_until(lambda: chain_of(late).head == chain_of(seed).head, timeout=30)
    assert late.snapshot()["syncs"] >= 1
    # A block mined later reaches it by announcement and fetch.
    seed_chain = chain_of(seed)
    block = mine_next(seed_chain)
    result = seed_chain.import_block(block)
    seed.announce(result)
    wait_until(lambda: chain_of(late).head == block.block_hash, timeout=30)


def test_nodes_relay_blocks_along_a_line(cluster: Cluster) -> None:
    first = cluster.node("first", 5)
    middle = cluster.node("middle", 0, first)
    last = cluster.node("last", 0, middle)
    wait_until(lambda: chain_of(last).head == chain_of(first).head, timeout=30)
    assert not any(p["id"] == str(first.identity.address) for p in last.snapshot()["peers"])


class Scripted:
    """A raw peer: does the handshake, sends exactly what the test says, records what it receives
    for ``linger`` seconds (or until the node hangs up), answering each message with what
    ``answer`` returns."""

    def __init__(self, genesis: Genesis) -> None:
        self.identity = generate_keypair()
        self.network = NetworkId.from_genesis(genesis)
        self.received: list[object] = []

    async def run(
        self,
        service: P2PService,
        payloads: list[bytes],
        linger: float = 3.0,
        answer: Callable[[object], list[bytes]] = lambda message: [],
    ) -> None:
        address = PeerAddress.parse(service.enode)
        channel = await connect(address.host, address.port, self.identity, self.network)
        try:
            for payload in payloads:
                await channel.send(payload)
            async with asyncio.timeout(linger):
                while True:
                    message = decode_message(await channel.receive())
                    self.received.append(message)
                    for reply in answer(message):
                        await channel.send(reply)
        except (TransportError, TimeoutError):
            pass
        finally:
            await channel.close()

    def count(self, kind: type) -> int:
        """How many messages of ``kind`` it received."""
        return sum(isinstance(message, kind) for message in self.received)

    def goodbye(self) -> Disconnect | None:
        found = [m for m in self.received if isinstance(m, Disconnect)]
        return found[0] if found else None


def status_of(genesis: Genesis) -> bytes:
    return encode_message(
        Status(genesis.chain_id, genesis.genesis_hash, genesis.genesis_hash, 0, 1, 0)
    )


def test_garbage_twice_is_a_ban(cluster: Cluster) -> None:
    node = cluster.node("node", 2)
    genesis = chain_of(node).genesis
    seed = random.randrange(2**32)
    junk = random.Random(seed).randbytes(40)
    peer = Scripted(genesis)
    asyncio.run(peer.run(node, [status_of(genesis), b"\xee" + junk]))  # unknown type: 50 points
    assert peer.goodbye() is None or peer.goodbye().reason != DisconnectReason.BANNED, seed
    asyncio.run(peer.run(node, [status_of(genesis), b"\xee" + junk]))
    goodbye = peer.goodbye()
    assert goodbye is not None and goodbye.reason == DisconnectReason.BANNED, seed
    subjects = {b["subject"] for b in node.snapshot()["bans"]}
    assert str(peer.identity.address) in subjects


def test_another_network_is_refused_at_status(cluster: Cluster) -> None:
    node = cluster.node("node", 1)
    genesis = chain_of(node).genesis
    peer = Scripted(genesis)
    other = Status(genesis.chain_id, bytes(32), bytes(32), 0, 1, 0)  # hello ok, Status lies
    asyncio.run(peer.run(node, [encode_message(other)]))
    goodbye = peer.goodbye()
    assert goodbye is not None and goodbye.reason == DisconnectReason.INCOMPATIBLE


def test_unsolicited_and_out_of_order_messages_cost_points(cluster: Cluster) -> None:
    node = cluster.node("node", 1)
    genesis = chain_of(node).genesis
    peer = Scripted(genesis)
    unasked = encode_message(Headers(()))
    asyncio.run(peer.run(node, [status_of(genesis), unasked, unasked], linger=1.0))
    # two unsolicited replies, 10 each
    wait_until(lambda: node.peers.score(peer.identity.address) == 20, timeout=10)
    asyncio.run(peer.run(node, [status_of(genesis), status_of(genesis)], linger=1.0))
    # a second Status: 20
    wait_until(lambda: node.peers.score(peer.identity.address) == 40, timeout=10)


def test_a_header_with_bad_proof_of_work_bans_the_sender(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.node("node", 1)
    genesis = chain_of(node).genesis
    forged_chain = Chain.open(tmp_path / "forged", test_genesis())
    try:
        good = mine_next(forged_chain, keypair_for(index=7))
    finally:
        forged_chain.close()
    # A valid header with its timestamp changed: the proof no longer signs it.
    header = replace(good.header, timestamp_ms=good.header.timestamp_ms + 1)
    forged = encode_message(Headers((header,)))
    peer = Scripted(genesis)
    heavy = Status(genesis.chain_id, genesis.genesis_hash, good.block_hash, 5, 2**100, 0)

    def answer(message: object) -> list[bytes]:
        return [forged] if isinstance(message, GetHeaders) else []

    asyncio.run(peer.run(node, [encode_message(heavy)], linger=10, answer=answer))
    goodbye = peer.goodbye()
    assert goodbye is not None and goodbye.reason == DisconnectReason.BANNED, peer.received
    assert chain_of(node).head_header.height == 1


def test_a_peer_claiming_work_it_does_not_serve_is_not_asked_in_a_loop(cluster: Cluster) -> None:
    node = cluster.node("node", 1)
    genesis = chain_of(node).genesis
    peer = Scripted(genesis)
    boast = encode_message(
        Status(genesis.chain_id, genesis.genesis_hash, bytes(32), 10**6, 2**200, 0)
    )

    def answer(message: object) -> list[bytes]:
        return [encode_message(Headers(()))] if isinstance(message, GetHeaders) else []

    asyncio.run(peer.run(node, [boast], answer=answer))
    assert peer.count(GetHeaders) == 1  # then it rests (SYNC_REST_S), not asked again at once
    asyncio.run(peer.run(node, [boast], answer=answer))  # reconnecting: still resting
    assert peer.count(GetHeaders) == 1


def test_a_peer_repeating_headers_we_have_cannot_hold_the_sync(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A liar claiming the most work answers every GetHeaders with the same full batch of
    headers the node already has: the second batch does not follow the first, which costs it
    points and ends its sync; the node then syncs from an honest peer."""
    monkeypatch.setattr(download_module, "MAX_HEADERS", 20)
    seed = cluster.node("seed", 60)
    late = cluster.node("late", 0)
    ours = canonical_blocks(chain_of(seed), 30)
    for block in ours:
        chain_of(late).import_block(block)
    genesis = chain_of(late).genesis
    liar = Scripted(genesis)
    boast = Status(genesis.chain_id, genesis.genesis_hash, bytes(32), 10**6, 2**200, 0)

    def answer(message: object) -> list[bytes]:
        if isinstance(message, GetHeaders):
            return [encode_message(Headers(tuple(b.header for b in ours[:20])))]
        if isinstance(message, GetBlocks):
            found = [b for b in ours if b.block_hash in set(message.hashes)]
            return [encode_message(Blocks(tuple(found)))]
        return []

    asyncio.run(liar.run(late, [encode_message(boast)], linger=5, answer=answer))
    replies = liar.count(GetHeaders)
    assert replies == 2, replies  # the second reply broke the rule; no third request
    assert late.peers.score(liar.identity.address) == 20
    late.add_peer(PeerAddress.parse(seed.enode))
    wait_until(lambda: chain_of(late).head == chain_of(seed).head, timeout=30)


def test_a_finished_request_does_not_release_a_newer_request_for_the_same_block(
    tmp_path: Path,
) -> None:
    """The race the devnet hit: request A's answer arrives, request B asks for the same block
    before A cleans up; A's clean-up must leave B waiting for its own answer."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        requests = BlockRequests()
        chain = Chain.open(tmp_path, test_genesis())
        block = mine_next(chain)
        chain.close()
        first, first_created = requests.register([block.block_hash], loop)
        assert requests.answer(block.block_hash, block) and first[0].result() is block
        second, second_created = requests.register([block.block_hash], loop)
        assert second_created and second[0] is not first[0]
        requests.release(first_created)  # A cleans up late
        assert requests.answer(block.block_hash, block)  # B's answer is not "unsolicited"
        assert second[0].result() is block
        requests.release(second_created)
        assert not requests.answer(block.block_hash, block)  # now nothing waits
        shared, created = requests.register([block.block_hash, block.block_hash], loop)
        assert shared[0] is shared[1] and len(created) == 1
        requests.cancel_all()
        assert shared[0].cancelled()

    asyncio.run(scenario())


def test_a_flood_of_announcements_starts_a_bounded_number_of_fetches(cluster: Cluster) -> None:
    node = cluster.node("node", 1)
    genesis = chain_of(node).genesis
    peer = Scripted(genesis)
    rng = random.Random(seed := random.randrange(2**32))
    floods = [
        encode_message(
            NewBlockHashes(tuple(AnnouncedBlock(rng.randbytes(32), 2) for _ in range(64)))
        )
        for _ in range(300)
    ]
    asyncio.run(peer.run(node, [status_of(genesis), *floods], linger=1.0))
    fetches = peer.count(GetBlocks)
    assert fetches <= blocks_module.FETCHES_PER_PEER, (fetches, seed)
    assert node.snapshot()["enode"]  # the node still answers at once


def test_the_handshakes_in_flight_are_capped_for_every_host(cluster: Cluster) -> None:
    """Loopback is exempt from the per-host handshake rate, not from the global cap: beyond
    MAX_HANDSHAKES_IN_FLIGHT half-open handshakes, a connection is closed before the node sends
    anything (no cryptography spent); once they end, an honest peer connects."""
    node = cluster.node("node", 1)
    genesis = chain_of(node).genesis
    address = PeerAddress.parse(node.enode)
    cap = service_module.MAX_HANDSHAKES_IN_FLIGHT
    held = [socket.create_connection((address.host, address.port), timeout=10) for _ in range(cap)]
    try:
        for sock in held:  # each is in a handshake: the responder's hello comes at once
            assert len(receive_exactly(sock, HELLO_SIZE)) == HELLO_SIZE
        wait_until(lambda: node.snapshot()["handshakes"] == cap, timeout=10)
        refused_before = node.snapshot()["handshakes_refused"]
        with socket.create_connection((address.host, address.port), timeout=10) as extra:
            assert extra.recv(HELLO_SIZE) == b""  # closed at once, not even a hello
        assert node.snapshot()["handshakes_refused"] == refused_before + 1
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: node.snapshot()["handshakes"] == 0, timeout=10)
    honest = Scripted(genesis)
    asyncio.run(honest.run(node, [status_of(genesis)], linger=1.0))
    assert honest.count(Status) == 1 and honest.goodbye() is None


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock`` (its timeout bounds each read), or fewer if it closes."""
    data = b""
    for _ in range(size):  # at least one byte per read
        chunk = sock.recv(size - len(data))
        data += chunk
        if not chunk or len(data) == size:
            break
    return data


class SlowImports(ChainOnly):
    """A chain whose first import takes :data:`SLOW_IMPORT_S` on the node's chain worker."""

    def __init__(self, chain: Chain) -> None:
        super().__init__(chain)
        self.importing = threading.Event()

    def import_block(self, block: Block) -> ImportResult:
        if not self.importing.is_set():
            self.importing.set()
            time.sleep(SLOW_IMPORT_S)  # the long import being simulated, not a wait of the test
        return super().import_block(block)


SLOW_IMPORT_S = 5.0


def test_a_peer_is_not_blamed_for_our_slow_import(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node asks a peer for two blocks; while it imports the first (slowly), the peer sends a
    GetHeaders (which waits on the node's chain worker) and then the second block, in time. The
    node's reader must read that answer at once: the peer is not charged a timeout."""
    monkeypatch.setattr(session_module, "REQUEST_TIMEOUT_S", 1.5)
    node = cluster.node("node", 0, access=SlowImports)
    access = node.access
    assert isinstance(access, SlowImports)
    genesis = chain_of(node).genesis
    other = Chain.open(tmp_path / "other", test_genesis())
    try:
        first, second = (
            mine_next(other, keypair_for(index=7)),
            mine_next(other, keypair_for(index=8)),
        )
    finally:
        other.close()
    peer = Scripted(genesis)

    async def scenario() -> None:
        address = PeerAddress.parse(node.enode)
        channel = await connect(address.host, address.port, peer.identity, peer.network)
        try:
            await channel.send(status_of(genesis))
            for block in (first, second):
                announced = NewBlockHashes((AnnouncedBlock(block.block_hash, 1),))
                await channel.send(encode_message(announced))
            asked: set[bytes] = set()
            async with asyncio.timeout(10):
                while asked != {first.block_hash, second.block_hash}:
                    message = decode_message(await channel.receive())
                    if isinstance(message, GetBlocks):
                        asked.update(message.hashes)
            await channel.send(encode_message(Blocks((first,))))
            assert await asyncio.to_thread(access.importing.wait, 10)
            await channel.send(encode_message(GetHeaders((genesis.genesis_hash,), max_count=8)))
            await channel.send(encode_message(Blocks((second,))))
            async with asyncio.timeout(SLOW_IMPORT_S + 10):
                while not isinstance(decode_message(await channel.receive()), Headers):
                    pass
        finally:
            await channel.close()

    asyncio.run(scenario())
    wait_until(lambda: chain_of(node).has_block(second.block_hash), timeout=10)
    assert node.peers.score(peer.identity.address) == 0


class JudgedTransactions(ChainOnly):
    """Execution clients that refuse the transactions named in ``verdicts``."""

    def __init__(self, chain: Chain) -> None:
        super().__init__(chain)
        self.verdicts: dict[bytes, TxVerdict] = {}

    def submit_transactions(self, txs: Sequence[Transaction]) -> list[TxVerdict]:
        self.submitted.extend(txs)
        return [self.verdicts.get(tx.tx_id, TxVerdict.ADDED) for tx in txs]


def test_relaying_a_transaction_that_can_never_be_valid_costs_points(cluster: Cluster) -> None:
    """A stateful refusal (a nonce used meanwhile, a full pool) costs the relay nothing; an
    intrinsic one (bad signature, wrong chain, ...) costs INVALID_TRANSACTION's penalty."""
    node = cluster.node("node", 1, access=JudgedTransactions)
    access = node.access
    assert isinstance(access, JudgedTransactions)
    genesis = chain_of(node).genesis
    sender = keypair_for(index=9)
    stale, forged = (
        sign_transfer(
            sender, chain_id=genesis.chain_id, nonce=n, recipient=sender.address, amount=1, fee=1
        )
        for n in (0, 1)
    )
    access.verdicts = {stale.tx_id: TxVerdict.REFUSED, forged.tx_id: TxVerdict.INVALID}
    peer = Scripted(genesis)

    def relay(tx: Transaction) -> None:
        def answer(message: object) -> list[bytes]:
            if isinstance(message, GetTransactions) and tx.tx_id in message.tx_ids:
                return [encode_message(Transactions((tx,)))]
            return []

        announce = encode_message(NewTransactionHashes((tx.tx_id,)))
        asyncio.run(peer.run(node, [status_of(genesis), announce], linger=1.0, answer=answer))
        wait_until(lambda: tx in access.submitted, timeout=10)

    relay(stale)
    assert node.peers.score(peer.identity.address) == 0
    relay(forged)
    expected = Misbehaviour.INVALID_TRANSACTION.penalty
    wait_until(lambda: node.peers.score(peer.identity.address) == expected, timeout=10)
