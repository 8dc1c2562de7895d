"""The live part of ``qoin bench storage``: retrieval throughput and repair time, measured on a real
network of processes on 127.0.0.1.

The network: one node, ``qoin execution`` and ``qoin consensus --mine --block-interval-ms 100`` (its
genesis has the maximum target, so one attempt seals a block: a block about every 0.1 s plus the
time to make and import it), with the storage market's periods of :data:`PARAMS` (40 blocks, M = 2);
and :data:`PROVIDERS` ``qoin storage provider`` daemons made, funded and started as
``qoin devnet --storage-providers`` does (:class:`qoin.node.devnet_storage.StorageProviders`). The
client is this process, with a key funded at genesis: it stores files with
:func:`qoin.storage.client.put` (encrypted, n = 2, k = 1: what ``qoin storage put`` does).

Measured:

1. **Retrieval** (:func:`measure_retrieval`): a file of ``size`` random bytes is stored, then each
   round, with the shard files' pages dropped from the page cache (``posix_fadvise(DONTNEED)``:
   "cold", the disk) and then again with them cached ("warm"):

   * *disk*: reading one shard's file from the provider's data directory in 1 MiB reads (the
     baseline);
   * *verified disk*: reading it chunk by chunk and verifying each chunk as a retrieval does
     (:func:`qoin.storage.merkle.verify_chunk`): what any verified retrieval is bounded by here;
   * *download*: :func:`qoin.storage.retrieve.download`, what ``qoin storage get`` does short of
     writing the file: every holder streamed at once from its HTTP server, every 64 KiB chunk
     verified against the committed root as it arrives, the other streams stopped once k shards
     are whole, decoded and decrypted (checked equal to the file);
   * *stream*: :func:`qoin.storage.retrieve.fetch_shard` of one shard from one provider, verified,
     to ``/dev/null`` (the transfer and the verification alone).

   Throughputs are the k shards' bytes per second (the bytes the disk reads move too); the
   fastest round counts. The ratios download / disk are judged against :data:`GOAL_RATIO`. The node
   keeps mining meanwhile (a block every ~0.15 s, a fifth of a core with the daemons following it).
2. **Repair** (:func:`measure_repair`): a small file is stored; once the provider of shard 0 has
   had a proof accepted, it is killed (SIGKILL) at once, so the measured path is the longest one:
   (M + grace + 1) periods less the few blocks into the period the kill came. The actor's events are
   then watched (``qoin_getLogs``, every 0.1 s) for its misses, the shard's failure, the take by
   another provider and that provider's first accepted proof; each is reported in blocks and
   seconds after the kill.

Every process is stopped when the measurement ends, fails or is interrupted (SIGINT or SIGTERM stop
the current wait; every child also has :mod:`qoin.process`'s lifeline). Progress lines go to
``progress``; each process's output to a log file in the scratch directory.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import httpx

from qoin.bench.importing import bench_genesis
from qoin.bench.timing import BenchmarkCheckFailed
from qoin.chain.genesis import builtin, write_network_files
from qoin.crypto.address import Address
from qoin.crypto.hybrid import generate_keypair
from qoin.errors import QoinError
from qoin.execution.abi import Value
from qoin.node.devnet import CONSENSUS_URL, EXECUTION_URLS, start_child
from qoin.node.devnet_storage import Provider, StorageProviders, fund
from qoin.process import Child, stop_all, stop_on_signals
from qoin.rpc.client import RpcClient
from qoin.storage import client, crypt, merkle, retrieve
from qoin.storage.client import NO_PROGRESS, PutOptions, PutResult, actor_logs, endpoint_url
from qoin.storage.market import MarketView
from qoin.storage.params import MAINNET, StorageParams
from qoin.storage.provider.store import SHARDS_DIR, shard_file_name
from qoin.wallet import Wallet

MIB: Final = 1 << 20
PARAMS: Final = replace(
    MAINNET, period=40, window=28, max_misses=2, max_bid_blocks=400, max_duration=1_000
)
"""The bench network's market: mainnet's but for periods of 40 blocks (proofs in the first 28),
M = 2 and bounds that fit them (the figures in blocks scale with ``period``)."""
BLOCK_INTERVAL_MS: Final = 100
"""The miner's pause after each block."""
PROVIDERS: Final = 3
"""Provider daemons: the two holders of an n = 2 file and one to repair."""
DURATION: Final = 100
"""Periods every stored file's deal lasts (longer than the benchmark)."""
DEFAULT_RETRIEVAL_SIZE: Final = 64 * MIB
"""Bytes of the file retrieved."""
REPAIR_SIZE: Final = 256 * 1024
"""Bytes of the file whose shard is repaired."""
GOAL_RATIO: Final = 0.5
"""Retrieval over loopback against the local read of the same shard bytes."""
READ_BLOCK: Final = MIB
"""Bytes per read of the local disk read."""
START_TIMEOUT_S: Final = 120.0
"""How long a process may take to print its ready line."""
FIRST_PROOF_TIMEOUT_S: Final = 180.0
"""How long the repaired file's first proof may take to be accepted."""
REPAIR_TIMEOUT_S: Final = 600.0
"""How long the repair may take, from the kill to the new provider's first accepted proof."""
POLL_S: Final = 0.1
"""How often the chain's head and events are read while waiting."""
STOP_TIMEOUT_S: Final = 30.0

REPAIR_STEPS: Final = ("ProofMissed", "ShardFailed", "ShardTaken", "ProofAccepted")
"""The events of the repair, in the order they come."""


class BenchmarkInterrupted(QoinError):
    """A signal stopped the benchmark (every process it started was stopped)."""


class LiveNetwork:
    """The node and provider daemons (see the module docstring) in ``root``; use as a context
    manager (:meth:`start` on entry, :meth:`close` on exit, whatever happened)."""

    def __init__(self, root: Path, say: Callable[[str], None], cancel: threading.Event) -> None:
        self.root = root
        self.say = say
        self.cancel = cancel
        self.keypair = generate_keypair()
        """The client's key (the whole genesis allocation)."""
        self.genesis = replace(bench_genesis([self.keypair], "bench-storage"), storage=PARAMS)
        self.nodes: list[Child] = []
        """The node's processes (execution client first)."""
        self.providers = StorageProviders(root, PROVIDERS)
        self.url = ""
        """The node's user RPC."""

    def __enter__(self) -> LiveNetwork:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        """:class:`BenchmarkInterrupted` once a signal came."""
        if self.cancel.is_set():
            raise BenchmarkInterrupted("interrupted: every process started was stopped")

    def _ready(self, child: Child, pattern: str) -> Sequence[str]:
        found = child.first_match(pattern, START_TIMEOUT_S, self.cancel)
        self.check()
        if found is None:  # never: cancelled is checked above
            raise BenchmarkInterrupted("interrupted")
        return found[0].groups()

    def start(self) -> None:
        """Start the node, then the providers (funded from the client's key)."""
        genesis_file, jwt_file = write_network_files(self.root, self.genesis)
        files = ["--genesis", str(genesis_file), "--jwt-secret", str(jwt_file)]
        self.say(f"starting a mining node (pausing {BLOCK_INTERVAL_MS} ms after each block)")
        execution = start_child(
            "execution client",
            ["execution", "--datadir", str(self.root / "execution"), *files,
             "--rpc-port", "0", "--engine-port", "0"],
            self.root / "execution.log",
            [EXECUTION_URLS],
        )  # fmt: skip
        self.nodes.append(execution)
        self.url, engine = self._ready(execution, EXECUTION_URLS)
        consensus = start_child(
            "consensus client",
            ["consensus", "--datadir", str(self.root / "consensus"), *files,
             "--execution", engine, "--rpc-port", "0", "--mine", "--workers", "1",
             "--block-interval-ms", str(BLOCK_INTERVAL_MS)],
            self.root / "consensus.log",
            [CONSENSUS_URL],
        )  # fmt: skip
        self.nodes.append(consensus)
        self._ready(consensus, CONSENSUS_URL)
        self.say(f"starting {PROVIDERS} storage provider daemons")
        self.providers.prepare([self.url])
        fund(self.url, self.keypair, self.providers.funding(), self.cancel)
        self.check()
        self.providers.start()
        self.providers.await_ready(self.cancel)
        self.check()

    def close(self) -> None:
        """Stop the providers, then the consensus client, then the execution client."""
        stop_all(self.providers.children(), STOP_TIMEOUT_S)
        for child in reversed(self.nodes):
            child.stop(STOP_TIMEOUT_S)
        self.nodes.clear()

    def provider(self, address: Address) -> Provider:
        """The daemon of ``address``."""
        for provider in self.providers.providers:
            if provider.address == str(address):
                return provider
        raise BenchmarkCheckFailed(f"{address} is none of the benchmark's providers")

    def shard_file(self, address: Address, deal: int, shard: int) -> Path:
        """Where ``address``'s daemon keeps a shard."""
        return self.provider(address).home / "data" / SHARDS_DIR / shard_file_name(deal, shard)

    def store(self, data: bytes) -> PutResult:
        """Store ``data`` as ``qoin storage put`` does (n = 2, k = 1, encrypted); every upload
        must succeed."""
        with Wallet(self.url, self.keypair) as wallet, MarketView(self.url) as view:
            stored = client.put(wallet, view, data, PutOptions(duration=DURATION))
        if stored.failed:
            raise BenchmarkCheckFailed(f"uploads failed: {stored.failed}")
        self.check()
        return stored


def chain_height(rpc: RpcClient) -> int:
    """The node's height."""
    height = rpc.call("qoin_blockNumber")
    if not isinstance(height, int):
        raise BenchmarkCheckFailed(f"qoin_blockNumber answered {height!r:.80}")
    return height


@contextmanager
def live_network(workdir: Path | None, say: Callable[[str], None]) -> Iterator[LiveNetwork]:
    """A started :class:`LiveNetwork` in a fresh directory under ``workdir`` (the system's
    temporary directory if None: shard files on a disk, not in memory), stopped and removed at
    the end. Must run on the main thread (it handles SIGINT and SIGTERM)."""
    cancel = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="qoin-bench-storage-net-", dir=workdir) as scratch,
        stop_on_signals(cancel.set),
        LiveNetwork(Path(scratch), say, cancel) as network,
    ):
        yield network
    if cancel.is_set():
        raise BenchmarkInterrupted("interrupted: every process started was stopped")


# -- retrieval ---------------------------------------------------------------------------------


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (its clean pages: shard files are fsynced)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def read_seconds(path: Path) -> float:
    """Seconds to read ``path`` to its end in :data:`READ_BLOCK` reads."""
    buffer = bytearray(READ_BLOCK)
    started = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - started


def shard_nodes(content: retrieve.Content, source: retrieve.Source) -> bytes:
    """The level-c nodes of ``source``'s shard (from its provider, checked against the root)."""
    url = f"{endpoint_url(source.endpoint)}/v1/shards/{content.deal}/{source.index}/nodes"
    nodes = httpx.get(url, timeout=30.0).content
    root = content.roots[source.index]
    if not merkle.verify_chunk_nodes(root, nodes, content.leaf_count, content.leaf_size):
        raise BenchmarkCheckFailed(f"{source.endpoint} sent tree nodes that do not give the root")
    return nodes


def verified_read_seconds(path: Path, content: retrieve.Content, nodes: bytes) -> float:
    """Seconds to read a shard's file chunk by chunk, verifying each against ``nodes`` as a
    retrieval does (the most any verified retrieval can do in one process)."""
    leaf_count, leaf_size = content.leaf_count, content.leaf_size
    started = time.perf_counter()
    with path.open("rb") as handle:
        for chunk in range(merkle.chunk_count(leaf_count, leaf_size)):
            start, end = merkle.chunk_bounds(chunk, leaf_count, leaf_size)
            data = handle.read(end - start)
            if not merkle.verify_chunk(nodes, chunk, data, leaf_count, leaf_size):
                raise BenchmarkCheckFailed(f"chunk {chunk} of {path} does not verify")
    return time.perf_counter() - started


def download_seconds(content: retrieve.Content, master: bytes, data: bytes) -> float:
    """Seconds of one :func:`~qoin.storage.retrieve.download`; the file must come back."""
    started = time.perf_counter()
    retrieved = retrieve.download(content, master)
    seconds = time.perf_counter() - started
    if retrieved.data != data:
        raise BenchmarkCheckFailed("the retrieved file is not the stored one")
    return seconds


def stream_seconds(content: retrieve.Content, source: retrieve.Source) -> float:
    """Seconds of one verified :func:`~qoin.storage.retrieve.fetch_shard` to ``/dev/null``."""
    with (
        httpx.Client(headers={"accept-encoding": "identity"}, follow_redirects=False) as http,
        open(os.devnull, "wb") as sink,
    ):
        task = NO_PROGRESS.task("", content.shard_size)
        started = time.perf_counter()
        retrieve.fetch_shard(http, content, source, sink, threading.Event(), task)
        return time.perf_counter() - started


def cancel_deal(network: LiveNetwork, cid: bytes, say: Callable[[str], None]) -> None:
    """``qoin storage cancel`` of ``cid`` (the client leaves room for a settlement in it)."""
    with Wallet(network.url, network.keypair) as wallet, MarketView(network.url) as view:
        client.cancel(wallet, view, cid)


def measure_retrieval(
    network: LiveNetwork, size: int, rounds: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """Retrieval over loopback against the local disk (see the module docstring)."""
    data = os.urandom(size)
    say(f"storing {size / MIB:,.1f} MiB (n = 2, k = 1, encrypted) for the retrieval")
    started = time.perf_counter()
    stored = network.store(data)
    put_s = time.perf_counter() - started
    with MarketView(network.url) as view:
        content = retrieve.locate(view, stored.cid)
    master = crypt.master_key(network.keypair)
    files = [network.shard_file(s.provider, content.deal, s.index) for s in content.sources]
    source = next(s for s in content.sources if s.index == 0)
    own_file = network.shard_file(source.provider, content.deal, 0)
    nodes = shard_nodes(content, source)
    moved = content.k * content.shard_size
    best: dict[str, dict[str, float]] = {
        cache: dict.fromkeys(("disk", "verified_disk", "download", "stream"), float("inf"))
        for cache in ("cold", "warm")
    }
    for round_ in range(rounds):
        say(f"retrieval, disk and download, cold and warm (round {round_ + 1} of {rounds})")
        for cache in ("cold", "warm"):
            measures: dict[str, Callable[[], float]] = {
                "disk": lambda: read_seconds(own_file),
                "verified_disk": lambda: verified_read_seconds(own_file, content, nodes),
                "download": lambda: download_seconds(content, master, data),
                "stream": lambda: stream_seconds(content, source),
            }
            for what, measure in measures.items():
                for path in files:  # every holder's file: the download reads them all
                    if cache == "cold":
                        evict(path)
                    else:
                        read_seconds(path)
                best[cache][what] = min(best[cache][what], measure())
                network.check()
    say(f"cancelling deal {content.deal} (a kill in the repair measurement fails one shard only)")
    cancel_deal(network, stored.cid, say)
    figures: dict[str, Any] = {}
    for cache, seconds in best.items():
        ratio = seconds["disk"] / seconds["download"]
        figures[cache] = {
            **{f"{what}_mb_per_s": moved / s / 1e6 for what, s in seconds.items()},
            "ratio": ratio,
            "stream_ratio": seconds["disk"] / seconds["stream"],
            "verified_ratio": seconds["verified_disk"] / seconds["download"],
            "goal_met": ratio >= GOAL_RATIO,
        }
    return {
        "file_bytes": size,
        "stored_bytes": content.size,
        "n": content.n,
        "k": content.k,
        "shard_size": content.shard_size,
        "bytes_per_retrieval": moved,
        "rounds": rounds,
        "put_seconds": put_s,
        "goal": GOAL_RATIO,
        **figures,
    }


# -- repair --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """An event of the repair: where and when it was first seen."""

    height: int
    """The block that holds it."""
    at: float
    """``time.monotonic()`` when it was seen."""
    data: tuple[Value, ...]
    """Its decoded data."""


def first_event(
    rpc: RpcClient,
    name: str,
    topics: Sequence[Address | int | None],
    start: int,
    end: int,
    wanted: Callable[[tuple[Value, ...]], bool],
) -> tuple[int, tuple[Value, ...]] | None:
    """The first ``name`` event in heights ``[start, end]`` with ``topics`` whose data is
    ``wanted``: its height and data."""
    for height, data in actor_logs(rpc, name, topics, start, end):
        if wanted(data):
            return height, data
    return None


def wait_event(
    network: LiveNetwork,
    rpc: RpcClient,
    name: str,
    topics: Sequence[Address | int | None],
    start: int,
    wanted: Callable[[tuple[Value, ...]], bool],
    timeout: float,
) -> Seen:
    """Poll until a ``name`` event from height ``start`` on is ``wanted``."""
    deadline = time.monotonic() + timeout
    while True:
        found = first_event(rpc, name, topics, start, chain_height(rpc), wanted)
        if found is not None:
            return Seen(found[0], time.monotonic(), found[1])
        if time.monotonic() > deadline:
            raise BenchmarkCheckFailed(f"no {name} event came within {timeout:g} s")
        network.cancel.wait(POLL_S)
        network.check()


def repair_bound(params: StorageParams) -> int:
    """Blocks from a kill just after a proof to the repaired shard's first proof, at most:
    (M + grace + 1) periods (less the blocks into the period the kill came, plus the block or two
    the take and the proof take to be mined)."""
    return (params.max_misses + params.grace_periods + 1) * params.period


def watch_repair(
    network: LiveNetwork, rpc: RpcClient, victim: Address, deal: int, index: int, height: int
) -> dict[str, Seen]:
    """Each step of :data:`REPAIR_STEPS` of shard ``index`` of ``deal`` from ``height`` on (the
    misses and failure ``victim``'s, the proof after the take), as it is first seen."""
    seen: dict[str, Seen] = {}
    deadline = time.monotonic() + REPAIR_TIMEOUT_S
    while True:
        head = chain_height(rpc)
        for name in REPAIR_STEPS:
            if name in seen:
                continue
            if name == "ProofAccepted" and "ShardTaken" not in seen:
                break
            after = seen["ShardTaken"].height if name == "ProofAccepted" else height
            who = victim if name in ("ProofMissed", "ShardFailed") else None
            found = first_event(rpc, name, [who, deal], after, head, lambda d: d[1] == index)
            if found is None:
                break
            seen[name] = Seen(found[0], time.monotonic(), found[1])
            network.say(f"{name} at height {found[0]} ({found[0] - height} blocks after the kill)")
        if len(seen) == len(REPAIR_STEPS):
            return seen
        if time.monotonic() > deadline:
            missing = next(name for name in REPAIR_STEPS if name not in seen)
            raise BenchmarkCheckFailed(
                f"the repair did not finish within {REPAIR_TIMEOUT_S:g} s: no {missing} event"
            )
        network.cancel.wait(POLL_S)
        network.check()


def measure_repair(network: LiveNetwork, say: Callable[[str], None]) -> dict[str, Any]:
    """SIGKILL a holder; blocks and seconds to each step of the repair (module docstring)."""
    params = PARAMS
    with RpcClient(network.url, timeout=30.0) as rpc:
        start = chain_height(rpc)
        say(f"storing {REPAIR_SIZE / 1024:,.0f} KiB (n = 2, k = 1) for the repair")
        stored = network.store(os.urandom(REPAIR_SIZE))
        deal, index = stored.deal, 0
        victim = stored.providers[index]
        say(f"waiting for the first proof of deal {deal} shard {index} by {victim}")
        proved = wait_event(
            network,
            rpc,
            "ProofAccepted",
            [victim, deal],
            start,
            lambda data: data[1] == index,
            FIRST_PROOF_TIMEOUT_S,
        )
        child = network.provider(victim).child
        if child is None:
            raise BenchmarkCheckFailed(f"{victim}'s daemon is not running")
        child.proc.kill()
        killed_at = time.monotonic()
        height = chain_height(rpc)
        say(
            f"killed {victim} (SIGKILL) at height {height}, {height % params.period} blocks into "
            f"period {height // params.period}; waiting for the repair"
        )
        seen = watch_repair(network, rpc, victim, deal, index, height)
    with MarketView(network.url) as view:
        info = view.get_deal(deal)
    taker = None if info is None else info.shards[index].provider
    if taker is None or taker in stored.providers:
        raise BenchmarkCheckFailed(
            f"shard {index} of deal {deal} was not taken by a third provider"
        )
    accepted = seen["ProofAccepted"]
    blocks = accepted.height - height
    seconds = accepted.at - killed_at
    mainnet = builtin("mainnet")
    mainnet_blocks = repair_bound(mainnet.storage)
    block_s = mainnet.block_time_ms / 1000
    return {
        "file_bytes": REPAIR_SIZE,
        "shard_size": stored.prepared.shard_size,
        "params": {
            "period": params.period,
            "window": params.window,
            "max_misses": params.max_misses,
            "grace_periods": params.grace_periods,
            "block_interval_ms": BLOCK_INTERVAL_MS,
        },
        "deal": deal,
        "shard": index,
        "killed": str(victim),
        "taker": str(taker),
        "killed_after_proof_of_period": proved.data[2],
        "killed_at_height": height,
        "kill_offset_in_period": height % params.period,
        "first_due": seen["ShardTaken"].data[2],
        "repaired_period": accepted.data[2],
        "steps": {
            name: {"height": s.height, "blocks": s.height - height, "seconds": s.at - killed_at}
            for name, s in seen.items()
        },
        "blocks": blocks,
        "seconds": seconds,
        "blocks_per_s": blocks / seconds,
        "formula": "(max_misses + grace_periods + 1) * period - the kill's offset in its period",
        "bound_blocks": repair_bound(params),
        "mainnet": {
            "period": mainnet.storage.period,
            "max_misses": mainnet.storage.max_misses,
            "grace_periods": mainnet.storage.grace_periods,
            "block_time_s": block_s,
            "bound_blocks": mainnet_blocks,
            "bound_hours": mainnet_blocks * block_s / 3600,
        },
    }


def measure_live(
    retrieval_size: int = DEFAULT_RETRIEVAL_SIZE,
    rounds: int = 3,
    repair: bool = True,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Retrieval (and, with ``repair``, repair) figures on a fresh live network."""
    if retrieval_size < 1 or rounds < 1:
        raise BenchmarkCheckFailed("the retrieval size and rounds are at least 1")
    say = progress or (lambda _message: None)
    with live_network(workdir, say) as network:
        figures: dict[str, Any] = {
            "retrieval": measure_retrieval(network, retrieval_size, rounds, say)
        }
        if repair:
            figures["repair"] = measure_repair(network, say)
    return figures


def table(report: dict[str, Any]) -> list[str]:
    """The retrieval and repair figures of ``report`` (those it has) as human-readable lines."""
    lines = []
    retrieval = report.get("retrieval")
    if retrieval is not None:
        for cache in ("cold", "warm"):
            figures = retrieval[cache]
            lines.append(
                f"retrieval ({cache} cache), MB/s: download {figures['download_mb_per_s']:,.1f}, "
                f"one stream {figures['stream_mb_per_s']:,.1f}, local disk "
                f"{figures['disk_mb_per_s']:,.0f}: ratio {figures['ratio']:.3f} (goal "
                f"{retrieval['goal']}, {'met' if figures['goal_met'] else 'not met'})"
            )
    repair = report.get("repair")
    if repair is not None:
        lines.append(
            f"repair: SIGKILL to the repaired shard's first accepted proof {repair['blocks']} "
            f"blocks, {repair['seconds']:.1f} s (bound {repair['bound_blocks']} blocks; mainnet "
            f"{repair['mainnet']['bound_blocks']} blocks, {repair['mainnet']['bound_hours']:.1f} h)"
        )
    return lines
