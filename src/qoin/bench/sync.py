"""``qoin bench sync``: a fresh node syncs a prepared chain from a peer over loopback, against the
local import rate of the same chain measured in the same run.

Setup (not timed): the ``qoin bench import`` workload (:func:`qoin.bench.importing.prepare`:
``senders`` funded senders, one setup block revealing their keys, then ``blocks`` blocks of
``txs_per_block`` transfers), but every block consensus-valid: the exact coinbase, stamped on
schedule and sealed with one proof-of-work attempt (the genesis's initial target is the maximum, and
ASERT keeps it there). The chain is written offline into the consensus data directory of the
*serving* node, whose two processes (``qoin execution``, ``qoin consensus --p2p-port 0``) are
started on it; the consensus client replays the chain to its fresh execution client, and the
benchmark waits until that one's head is the chain's.

Measured, :data:`ROUNDS` rounds (the order of the two alternating from round to round):

* **local import**: a fresh ``qoin execution`` process, and a :class:`ConsensusNode` in this process
  driving it over the engine API, decodes the chain's encoded blocks one by one and imports each
  with :meth:`ConsensusNode.import_block` — the call the p2p service makes for every synced block
  (consensus rules, ``engine_newPayload``, account state sampling, durable commit,
  ``engine_forkchoiceUpdated``). Timed from the first block to the last.
* **sync**: a fresh ``qoin execution`` process and a fresh ``qoin consensus`` process with
  ``--bootnode`` naming the serving node. Timed from the line the syncing node logs when the peer
  connected (after the encrypted handshake and the ``Status`` exchange) to the line it logs when its
  headers-first sync ends, once ``consensus_status`` shows the chain's head at the chain's height
  (when the head came by other means than that sync, to the status answer that showed it). The
  time from spawning the consensus process (interpreter start, chain open, p2p start, dial) is
  reported too.

Both count every block of the chain, the setup block included. The medians of the rounds are
compared: ``ratio`` = sync rate / local rate (goal: >= 0.8). Every process runs on the same cores:
during the sync the serving node reads, encodes and encrypts the blocks it sends.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qoin.bench.importing import prepare
from qoin.bench.timing import BenchmarkCheckFailed, machine_info, peak_rss_bytes
from qoin.chain.block import Block
from qoin.chain.chain import Chain, ImportResult, ImportStatus
from qoin.chain.genesis import Genesis, write_network_files
from qoin.consensus.engine import EngineClient
from qoin.consensus.node import ConsensusNode
from qoin.crypto.batch import default_workers, favour_verifier_threads
from qoin.process import Child, stop_all
from qoin.rpc.client import call
from qoin.rpc.jwt import load_secret

ROUNDS = 3
"""Local imports and syncs measured, interleaved; the medians are compared."""
GOAL_RATIO = 0.8
SYNC_TIMEOUT_S = 600.0
"""How long a sync may take before the benchmark gives up."""
RPC_TIMEOUT_S = 60.0
"""How long one RPC call to a node may take (they share the cores with a sync)."""
STATUS_POLL_S = 0.25
"""How often the syncing node's status is read while no sync-ended line comes."""
CAUGHT_UP_POLL_S = 0.05
PEER_CONNECTED = r"peer \S+ connected: head height"
SYNC_ENDED = r"sync from \S+: (\d+) blocks in"


@dataclass(frozen=True)
class Network:
    """The files every process of the benchmark shares, and the chain they hold."""

    workdir: Path
    genesis: Genesis
    encoded: list[bytes]
    """The prepared blocks, heights 1 to the top, encoded."""
    chain: list[Block]
    """The same, decoded."""
    genesis_file: Path
    """The genesis every node reads."""
    secret_file: Path
    """The engine API's JWT secret (every node's)."""
    secret: bytes
    """Its contents."""

    @property
    def head(self) -> Block:
        return self.chain[-1]

    def files_args(self) -> list[str]:
        """The arguments naming the shared genesis and engine secret."""
        return ["--genesis", str(self.genesis_file), "--jwt-secret", str(self.secret_file)]


def _write_network(workdir: Path, genesis: Genesis, encoded: list[bytes]) -> Network:
    """Write the genesis and a fresh engine secret into ``workdir``
    (:func:`~qoin.chain.genesis.write_network_files`)."""
    genesis_file, secret_file = write_network_files(workdir, genesis)
    chain = [Block.decode(raw) for raw in encoded]
    return Network(
        workdir, genesis, encoded, chain, genesis_file, secret_file, load_secret(secret_file)
    )


def _write_chain(datadir: Path, network: Network) -> None:
    """Store the chain in a consensus data directory, offline (consensus rules checked)."""
    chain = Chain.open(datadir, network.genesis)
    try:
        for block in network.chain:
            result = chain.import_block(block)
            if result.status is not ImportStatus.IMPORTED:
                raise BenchmarkCheckFailed(f"block {block.header.height} is {result.status.value}")
    finally:
        chain.close()


def _start_execution(network: Network, name: str, children: list[Child]) -> tuple[str, str]:
    """A fresh ``qoin execution`` (added to ``children`` at once): its user RPC and engine URLs."""
    child = Child.start(
        f"{name} execution",
        ["execution", "--datadir", str(network.workdir / name / "execution"),
         *network.files_args(), "--rpc-port", "0", "--engine-port", "0"],
    )  # fmt: skip
    children.append(child)
    _, found, _ = child.wait_for(r"user RPC (\S+), engine API (\S+)")
    return found[1], found[2]


def _start_consensus(
    network: Network, name: str, engine_url: str, children: list[Child], bootnode: str = ""
) -> Child:
    """A ``qoin consensus`` with p2p on a free port (added to ``children``), dialling
    ``bootnode`` if given."""
    args = ["consensus", "--datadir", str(network.workdir / name / "consensus"),
            *network.files_args(), "--execution", engine_url, "--rpc-port", "0",
            "--p2p-port", "0"]  # fmt: skip
    if bootnode:
        args += ["--bootnode", bootnode]
    child = Child.start(f"{name} consensus", args)
    children.append(child)
    return child


def _consensus_rpc(child: Child) -> str:
    """The consensus client's RPC URL, once it serves it."""
    _, found, _ = child.wait_for(r"; RPC (\S+);")
    return found[1]


def _start_server(network: Network, children: list[Child]) -> str:
    """The serving node on the prepared chain, its execution client caught up; its enode."""
    _write_chain(network.workdir / "server" / "consensus", network)
    user_url, engine_url = _start_execution(network, "server", children)
    consensus = _start_consensus(network, "server", engine_url, children)
    _, found, _ = consensus.wait_for(r"p2p: node (\S+)")
    _consensus_rpc(consensus)
    height = network.head.header.height
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while call(user_url, "qoin_blockNumber", timeout=RPC_TIMEOUT_S) != height:
        if time.monotonic() > deadline:
            raise BenchmarkCheckFailed("the serving node's execution client did not catch up")
        time.sleep(CAUGHT_UP_POLL_S)
    return found[1]


def _local_import(network: Network, name: str) -> dict[str, Any]:
    """Import the chain in this process through a fresh execution process, block by block, as
    the p2p service does; the seconds and how the blocks were judged."""
    children: list[Child] = []
    try:
        _, engine_url = _start_execution(network, name, children)
        engine = EngineClient(engine_url, network.secret)
        node = ConsensusNode(network.workdir / name / "consensus", network.genesis, [engine])
        try:
            node.follow_head()
            start = time.perf_counter()
            for raw in network.encoded:  # from bytes, as blocks come from a peer or a file
                block = Block.decode(raw)
                _check_imported(block, node.import_block(block))
            seconds = time.perf_counter() - start
            if node.chain.head != network.head.block_hash:
                raise BenchmarkCheckFailed("the local import ended on another head")
            return {"seconds": seconds, "judged": dict(node.judged)}
        finally:
            node.close()
    finally:
        stop_all(children)


def _check_imported(block: Block, result: ImportResult) -> None:
    if result.status is not ImportStatus.IMPORTED or not result.head_changed:
        raise BenchmarkCheckFailed(
            f"block {block.header.height}: {result.status.value}, head changed: "
            f"{result.head_changed}"
        )


def _synced(url: str, network: Network) -> dict[str, Any] | None:
    """The syncing node's status once its head is the chain's head, else None."""
    status: dict[str, Any] = call(url, "consensus_status", timeout=RPC_TIMEOUT_S)
    head = network.head
    if status["height"] == head.header.height and status["head"] == head.block_hash.hex():
        return status
    return None


def _sync(network: Network, name: str, enode: str) -> dict[str, Any]:
    """A fresh node syncs the chain from the serving node (see the module docstring); the
    seconds from the peer connection and from the process start, and its final status."""
    children: list[Child] = []
    try:
        _, engine_url = _start_execution(network, name, children)
        consensus = _start_consensus(network, name, engine_url, children, enode)
        _, _, connected_at = consensus.wait_for(PEER_CONNECTED, SYNC_TIMEOUT_S)
        url = _consensus_rpc(consensus)
        ended_at, status = _wait_synced(consensus, url, network)
        return {
            "seconds": ended_at - connected_at,
            "seconds_from_start": ended_at - consensus.started_at,
            "status": status,
        }
    finally:
        stop_all(children)


def _wait_synced(consensus: Child, url: str, network: Network) -> tuple[float, dict[str, Any]]:
    """When the syncing node reached the chain's head (the sync-ended line, or the status answer
    that first showed it), and its status then."""
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    after = 0
    while time.monotonic() < deadline:
        found = consensus.poll_for(SYNC_ENDED, STATUS_POLL_S, after)
        if found is not None:
            after = found[0] + 1
        status = _synced(url, network)
        if status is not None:
            return (found[2] if found is not None else time.perf_counter()), status
    raise BenchmarkCheckFailed(f"the node did not sync in {SYNC_TIMEOUT_S} s:\n{consensus.tail()}")


def _rates(seconds: list[float], blocks: int, transactions: int) -> dict[str, Any]:
    """Blocks/s and transactions/s of the median run, and every run's seconds."""
    median = statistics.median(seconds)
    return {
        "seconds": median,
        "blocks_per_s": blocks / median,
        "tx_per_s": transactions / median,
        "runs_seconds": seconds,
    }


def _rounds(
    network: Network, enode: str, rounds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Local imports and syncs, interleaved, the order alternating."""
    local: list[dict[str, Any]] = []
    synced: list[dict[str, Any]] = []
    for index in range(rounds):
        if index % 2 == 0:
            local.append(_local_import(network, f"local-{index}"))
        synced.append(_sync(network, f"sync-{index}", enode))
        if index % 2 == 1:
            local.append(_local_import(network, f"local-{index}"))
    return local, synced


def run(
    blocks: int = 40, txs_per_block: int = 250, senders: int = 500, rounds: int = ROUNDS
) -> dict[str, Any]:
    """The sync benchmark as one JSON-ready object."""
    favour_verifier_threads()  # as the consensus client process does
    load_before = os.getloadavg()
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="qoin-bench-sync-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        genesis, encoded = prepare(
            senders, blocks, txs_per_block, workdir / "build", sealed=True, network="bench-sync"
        )
        network = _write_network(workdir, genesis, encoded)
        setup_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            enode = _start_server(network, children)
            serve_s = time.perf_counter() - started
            local, synced = _rounds(network, enode, rounds)
        finally:
            stop_all(children)
    height = network.head.header.height
    transactions = sum(len(block.transactions) for block in network.chain)
    local_rates = _rates([r["seconds"] for r in local], height, transactions)
    sync_rates = _rates([r["seconds"] for r in synced], height, transactions)
    ratio = sync_rates["blocks_per_s"] / local_rates["blocks_per_s"]
    last = synced[-1]["status"]
    return {
        "benchmark": "sync",
        "machine": machine_info(),
        "senders": senders,
        "blocks": height,
        "transfer_blocks": blocks,
        "transactions_per_block": txs_per_block,
        "transactions": transactions,
        "chain_bytes": sum(len(raw) for raw in encoded),
        "rounds": rounds,
        "setup_seconds": round(setup_s, 2),
        "serving_node_ready_seconds": round(serve_s, 2),
        "local_import": {**local_rates, "judged": local[-1]["judged"]},
        "sync": {
            **sync_rates,
            "runs_seconds_from_start": [r["seconds_from_start"] for r in synced],
            "head": last["head"],
            "height": last["height"],
            "judged": last["judged"],
            "p2p": {k: v for k, v in last["p2p"].items() if k not in ("peers", "bans", "enode")},
        },
        "ratio": ratio,
        "goal": GOAL_RATIO,
        "met": ratio >= GOAL_RATIO,
        "workers": default_workers(),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "peak_rss_bytes": peak_rss_bytes(),
    }
