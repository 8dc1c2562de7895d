"""``qoin devnet``: a local network of real nodes on 127.0.0.1 that mines, carries transfers and
can be watched.

Each node is two processes, as ``qoin node`` runs them: a ``qoin execution`` and a
``qoin consensus`` joined by the engine API (a JWT secret per node). Node 0 starts first; the others
dial it as their bootnode and each also dials the next one (``consensus_addPeer``), so the network
is not a star. The first ``miners`` nodes mine (``--mine``, one worker process each by default);
once every node has its peers, a sender thread submits a transfer from the published devnet key
about once a second to the last node's execution client, from where p2p gossip carries it to the
miners. Once a second a line shows every node's height, head and peer count, and the network's
blocks/s and attempts/s.

With ``blocks`` the run ends once every node's head is at least that high: mining stops (SIGUSR1,
see :func:`qoin.cli.consensus.mine_until_stopped`), and the nodes get
:attr:`DevnetConfig.converge_s` seconds to agree on a head. Either way every process is then
stopped (consensus clients first) and the block stores are read for the summary: heads, side
blocks, reorgs, transactions included.

Every child is a :class:`qoin.process.Child`: it runs in its own session, so a Ctrl-C at the
terminal reaches only the devnet, which stops them in order; whatever happens (an error, a signal,
an output that closed), no child is left behind, and a child whose devnet is killed stops too (its
lifeline).

The data directory::

    genesis.json        the devnet genesis, re-timed to the first start (shared by every node)
    node<i>/jwt.hex     node i's engine secret
    node<i>/execution/  its execution client's data; that client's output in node<i>/execution.log
    node<i>/consensus/  its consensus client's data (blocks, node key, bans); node<i>/consensus.log
    node<i>/web/        its web UI's data (``qoin web``, :mod:`qoin.web`); its output node<i>/web.log
    remote<j>/consensus/  remote node j's consensus client's data (``remote_nodes``, below)
    keystore/           the wallets every node's web UI lists (the funded client key among them)

Each node also serves the web UI (``qoin web``, its URL under ``ui`` in ``devnet.json``); node 0's
URL is printed before the live view. A web UI is no part of a node's health: the devnet runs on
without one that stopped.

Shared execution (docs/spec/consensus.md): with ``serve_execution`` every node's consensus client
offers its execution client to its peers (``--serve-execution``). ``remote_nodes`` adds that many
consensus clients with no execution client of their own (``remote<j>/consensus/``, output in
``remote<j>/consensus.log``): each dials every node and judges and mines with
:data:`REMOTE_EXECUTION` of them (``--remote-execution``; fewer on a smaller devnet).
They imply ``serve_execution``; ``devnet.json`` lists them under ``remote_nodes``, and the live
view shows each one's remote execution nodes in use (``x=used/wanted``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qoin.chain import genesis as genesis_mod
from qoin.chain.chain import STORE_FILE
from qoin.chain.forkchoice import UnknownBlock, path_between
from qoin.chain.store import BlockStore, StoreError
from qoin.chain.transaction import sign_transfer
from qoin.crypto import keystore
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.node.devnet_compute import ComputeProviders
from qoin.node.devnet_storage import (
    CLIENT_FUNDING,
    StorageProviders,
    client_keystore,
    describe,
    dev_keystore,
    fund,
    made_keypair,
)
from qoin.node.supervisor import STOP_SIGNALS
from qoin.process import Child, ChildFailed, Line, Output, stop_all, stop_on_signals
from qoin.rpc.client import RpcClient, RpcTimeout
from qoin.rpc.jwt import create_secret
from qoin.web.server import READY as WEB_URL
from qoin.web.server import web_args

START_TIMEOUT_S = 120.0
"""How long a client may take to print its addresses (six Python processes start on few cores)."""
STOP_TIMEOUT_S = 30.0
"""How long the clients may take to stop after SIGTERM before they are killed."""
PAUSE_TIMEOUT_S = 30.0
SETTLE_S = 3.0
"""After a stop signal, how long the nodes may take to agree on a head once mining has stopped (a
block mined just before the signal is still on its way to the others); then they stop whatever
their heads, and the summary says so."""
"""How long a miner may take to confirm that it stopped mining."""
CONVERGE_S = 60.0
"""How long the nodes may take to agree on a head once mining stopped."""
VIEW_INTERVAL_S = 1.0
POLL_S = 0.25
RPC_TIMEOUT_S = 5.0
TX_INTERVAL_S = 1.0
TX_AMOUNT = 1_000
RECIPIENTS = 3
RATE_WINDOW_S = 30.0

EXECUTION_URLS = r"user RPC (http://\S+), engine API (http://\S+)"
CONSENSUS_URL = r"; RPC (http://\S+);"
ENODE = r"p2p: node (\S+)"
MINED = re.compile(r"^(?:new head|side block) height=\d+ .*attempts/s=([\d,.]+)")
PAUSED = r"^mining stopped"
REMOTE_EXECUTION = 3
"""How many execution nodes a remote node judges with (at most the devnet's nodes)."""
MAX_REMOTE_NODES = 16
PAUSE_SIGNAL = signal.SIGUSR1
"""What ``qoin consensus --mine`` stops mining on, following the network still (the same as
:data:`qoin.cli.consensus.PAUSE_SIGNAL`, not imported: that module brings the whole client)."""


class DevnetError(QoinError):
    """A node could not be started, or one of its processes died."""


@dataclass(frozen=True)
class DevnetConfig:
    """What ``qoin devnet`` runs."""

    nodes: int = 3
    miners: int = 2
    """The first ``miners`` nodes mine."""
    blocks: int = 0
    """Stop once every node's head is at least this high (0: run until a signal)."""
    block_time_ms: int = 2_000
    """The genesis target block time (a fresh data directory only)."""
    workers: int = 1
    """Miner processes per mining node."""
    converge_s: float = CONVERGE_S
    tx_interval_s: float = TX_INTERVAL_S
    storage_providers: int = 0
    """Storage provider daemons to run beside the nodes (:mod:`qoin.node.devnet_storage`)."""
    compute_providers: int = 0
    """Compute provider daemons to run beside the nodes (:mod:`qoin.node.devnet_compute`)."""
    mediators: int = 0
    """Compute mediators, started before the compute providers."""
    ai_runtime: Path | None = None
    """The AI runtime the compute providers and mediators offer (``--runtime``); None: the
    default runtime directory's (:func:`qoin.ai.runtime.default_dir`) when it loads."""
    serve_execution: bool = False
    """Every node offers its execution client to its peers (``--serve-execution``)."""
    remote_nodes: int = 0
    """Consensus clients with no execution client, judging and mining with the nodes' (implies
    :attr:`serve_execution`)."""

    @property
    def serving(self) -> bool:
        """Whether the nodes serve their execution clients."""
        return self.serve_execution or self.remote_nodes > 0

    @property
    def remote_execution(self) -> int:
        """How many execution nodes each remote node judges with."""
        return min(REMOTE_EXECUTION, self.nodes)


# -- processes ------------------------------------------------------------------------------------


def start_child(
    name: str,
    args: Sequence[str],
    log_path: Path,
    watch: Sequence[str],
    on_line: Callable[[Line], None] | None = None,
) -> Child:
    """One ``qoin`` process of the devnet: its output goes to a log file and is watched for the
    lines the devnet waits on (only their first match and the last lines are kept: it runs for
    long)."""
    return Child.start(name, args, Output(keep=False, watch=tuple(watch), log=log_path,
                                          on_line=on_line))  # fmt: skip


# -- nodes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStatus:
    """What ``consensus_status`` says about a node."""

    height: int
    head: str
    peers: int
    syncing: bool
    remote: tuple[int, int] | None = None
    """A remote node's execution nodes in use (active) and wanted; None for a node."""


@dataclass
class Node:
    """One node of the devnet: its files, its two processes and their addresses."""

    index: int
    home: Path
    mining: bool
    remote: bool = False
    """A consensus client with no execution client (``--remote-execution``)."""
    serving: bool = False
    """Its consensus client serves its execution client to its peers."""
    execution: Child | None = None
    consensus: Child | None = None
    user_rpc: str = ""
    engine: str = ""
    rpc: str = ""
    client: RpcClient | None = None
    """A client of its consensus RPC, once it serves it."""
    web: Child | None = None
    """Its web UI (``qoin web``)."""
    ui: str = ""
    """The web UI's URL, once it serves."""
    enode: str = ""
    attempts_per_second: float = 0.0
    """The miner's rate, as printed with its last mined block."""
    heads: list[tuple[str, int]] = field(default_factory=list)
    """The heads seen by polling, in order (for counting reorgs afterwards)."""
    last: NodeStatus | None = None

    @property
    def name(self) -> str:
        return f"{'remote' if self.remote else 'node'}{self.index}"

    @property
    def label(self) -> str:
        """Its name in the live view."""
        return f"{'r' if self.remote else 'n'}{self.index}"

    def children(self) -> list[Child]:
        return [c for c in (self.consensus, self.execution) if c is not None]

    def rpc_client(self) -> RpcClient:
        """The client of its consensus RPC (:class:`DevnetError` before it serves it)."""
        if self.client is None:
            raise DevnetError(f"{self.name}'s consensus client is not serving its RPC")
        return self.client

    def status(self) -> NodeStatus | None:
        """Poll ``consensus_status``; None if it does not answer now."""
        if self.client is None:
            return None
        try:
            result = self.client.call("consensus_status")
            p2p = result.get("p2p") or {}
            status = NodeStatus(
                int(result["height"]),
                str(result["head"]),
                len(p2p.get("peers", ())),
                bool(p2p.get("syncing")),
                _remote_use(result.get("remoteExecution")) if self.remote else None,
            )
        except (QoinError, AttributeError, KeyError, TypeError, ValueError):
            return None
        if not self.heads or self.heads[-1][0] != status.head:
            self.heads.append((status.head, status.height))
        self.last = status
        return status

    def on_consensus_line(self, line: Line) -> None:
        """Note the miner's rate from a mined-block line."""
        found = MINED.search(line.text)
        if found:
            with contextlib.suppress(ValueError):
                self.attempts_per_second = float(found[1].replace(",", ""))


def _remote_use(report: Any) -> tuple[int, int] | None:
    """(in use and active, wanted) from a status's ``remoteExecution``; None if it has none."""
    if not isinstance(report, dict):
        return None
    using = report.get("using") or []
    active = sum(1 for entry in using if isinstance(entry, dict) and entry.get("state") == "active")
    return active, int(report.get("wanted") or 0)


# -- transfers ------------------------------------------------------------------------------------


def recipients(count: int = RECIPIENTS) -> list[Address]:
    """Fixed addresses the devnet pays (nobody holds their keys: the amounts are burnt)."""
    return [
        Address(hashlib.sha3_256(f"qoin devnet recipient {i}".encode()).digest())
        for i in range(count)
    ]


class TransferSender:
    """Sends a transfer from ``keypair`` to one execution client every ``interval`` seconds until
    stopped. The client's ``nextNonce`` counts its pending transactions, so one client is used for
    all; a transfer reveals the sender's keys until a revealing one is included."""

    def __init__(self, url: str, keypair: HybridKeyPair, chain_id: int, interval: float) -> None:
        self.client = RpcClient(url, timeout=RPC_TIMEOUT_S)
        self.keypair = keypair
        self.chain_id = chain_id
        self.interval = interval
        self.sent = 0
        self.failed = 0
        self.last_error = ""
        self.stopped = threading.Event()
        self._to = recipients()
        self._thread = threading.Thread(target=self._run, name="transfers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=RPC_TIMEOUT_S * 4)
        if not self._thread.is_alive():
            self.client.close()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.send_one()
            except (QoinError, KeyError, TypeError, ValueError) as exc:  # busy: try again later
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.stopped.wait(self.interval)

    def send_one(self) -> str:
        """Sign and submit one transfer; its hash."""
        sender = str(self.keypair.address)
        account = self.client.call("qoin_getAccount", sender)
        fee = self.client.call("qoin_estimateFee")["fee"]
        tx = sign_transfer(
            self.keypair,
            chain_id=self.chain_id,
            nonce=int(account["nextNonce"]),
            recipient=self._to[self.sent % len(self._to)],
            amount=TX_AMOUNT,
            fee=int(fee),
            reveal_keys=not account["publicKeysRevealed"],
        )
        try:
            tx_hash = str(self.client.call("qoin_sendRawTransaction", tx.encode().hex()))
        except RpcTimeout:
            # No answer in time, but the node may well have taken it (a busy machine): it counts
            # as sent, so that "sent" is never below what the chain includes.
            self.sent += 1
            raise
        self.sent += 1
        return tx_hash


# -- the chain, read back -------------------------------------------------------------------------


def reorg_depth(store: BlockStore, old: str, new: str) -> int:
    """How many blocks of ``old``'s chain are not on ``new``'s (0: ``new`` extends ``old``, or a
    head's branch is not wholly stored, so no reorg can be measured)."""

    def link(block_hash: bytes) -> tuple[int, bytes]:
        header = store.header(block_hash)
        if header is None:
            raise UnknownBlock(f"block {block_hash.hex()} is not stored")
        return header.height, header.parent_hash

    try:
        disconnect, _ = path_between(link, bytes.fromhex(old), bytes.fromhex(new))
    except UnknownBlock:
        return 0
    return len(disconnect)


@dataclass
class StoreReport:
    """What a node's block store holds once it stopped."""

    head: str
    height: int
    hashes: set[bytes]
    canonical: list[bytes]
    reorgs: int
    transactions: int


def read_store(
    home: Path, genesis: genesis_mod.Genesis, heads: Sequence[tuple[str, int]]
) -> StoreReport:
    """Read a stopped node's blocks: head, every stored hash, the canonical chain, the
    transactions on it, and how many of the polled head changes were reorgs."""
    store = BlockStore.open(home / STORE_FILE, genesis)
    try:
        header = store.header(store.head())
        if header is None:
            raise StoreError(f"the head of {home} is not stored")
        canonical = [store.canonical_hash(h) or b"" for h in range(header.height + 1)]
        transactions = 0
        for block_hash in canonical[1:]:
            block = store.get_block(block_hash)
            transactions += 0 if block is None else len(block.transactions)
        seen = [head for head, _ in heads] + [header.block_hash.hex()]
        reorgs = sum(1 for old, new in itertools.pairwise(seen) if reorg_depth(store, old, new))
        hashes = {meta.block_hash for meta in store.metas()}
        return StoreReport(
            header.block_hash.hex(), header.height, hashes, canonical, reorgs, transactions
        )
    finally:
        store.close()


# -- the devnet -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a run ended."""

    reached: bool = False
    """``blocks`` was reached (always False without it)."""
    agreed: bool = False
    """The nodes agreed on a head after mining stopped."""
    interrupted: bool = False
    error: str = ""
    seconds: float = 0.0
    codes: list[int] = field(default_factory=list)
    """The exit statuses of every process."""


class Devnet:
    """Starts, watches and stops the nodes (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        config: DevnetConfig,
        keypair: HybridKeyPair,
        show: Callable[[str], None],
        note: Callable[[str], None],
    ) -> None:
        self.root = root
        self.config = config
        self.keypair = keypair
        self.show = show
        """Where the live view goes."""
        self.note = note
        """Where messages go."""
        self.genesis = self._genesis()
        self.nodes = [
            Node(i, root / f"node{i}", mining=i < config.miners, serving=config.serving)
            for i in range(config.nodes)
        ]
        self.remotes = [
            Node(j, root / f"remote{j}", mining=True, remote=True)
            for j in range(config.remote_nodes)
        ]
        """The remote nodes (:attr:`DevnetConfig.remote_nodes`)."""
        self.sender: TransferSender | None = None
        self.funding_sent = 0
        """Transfers :meth:`_fund` sent this run."""
        self.storage = StorageProviders(root, config.storage_providers)
        self.compute = ComputeProviders(
            root, config.compute_providers, config.mediators, config.ai_runtime
        )
        self._samples: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()
        self._shown = 0.0

    def _genesis(self) -> genesis_mod.Genesis:
        """The network's genesis: the one in the data directory, else the built-in devnet
        genesis re-timed to now with the configured block time (written there)."""
        path = self.root / "genesis.json"
        if path.exists():
            return genesis_mod.load_file(path)
        obj = genesis_mod.builtin_json("devnet")
        obj["timestamp_ms"] = int(time.time() * 1000)
        obj["block_time_ms"] = self.config.block_time_ms
        chosen = genesis_mod.from_json(obj)
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2) + "\n")
        return chosen

    # -- running ----------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Start the nodes, watch them until ``blocks`` (then let them agree) or a signal, stop
        them all. Every process is stopped before this returns, whatever happens."""
        cancel = threading.Event()
        outcome = Outcome()
        self._started = time.monotonic()
        with stop_on_signals(cancel.set, STOP_SIGNALS) as received:
            try:
                self._start(cancel)
                if not cancel.is_set():
                    self._watch(cancel, outcome)
            except (QoinError, OSError) as exc:  # DevnetError, ChildFailed, RpcCallError, ...
                outcome.error = str(exc)
            finally:
                if self.sender is not None:
                    self.sender.stop()
                outcome.interrupted = bool(received)
                if received:
                    self.note("stopping (signal)")
                    if not outcome.error and all(n.consensus for n in self.everyone):
                        self._settle()
                outcome.codes = self._stop_all()
        outcome.seconds = time.monotonic() - self._started
        return outcome

    def _stop_all(self) -> list[int]:
        stop_all([n.web for n in self.nodes if n.web is not None], STOP_TIMEOUT_S)
        codes = stop_all(self.compute.children(), STOP_TIMEOUT_S)
        codes += stop_all(self.storage.children(), STOP_TIMEOUT_S)
        everyone = self.everyone
        for node in everyone:
            if node.client is not None:
                node.client.close()
        consensus = [n.consensus for n in everyone if n.consensus is not None]
        execution = [n.execution for n in everyone if n.execution is not None]
        return codes + stop_all(consensus, STOP_TIMEOUT_S) + stop_all(execution, STOP_TIMEOUT_S)

    def _start(self, cancel: threading.Event) -> None:
        shared = (
            f" serving execution, remote nodes={self.config.remote_nodes}"
            if self.config.serving
            else ""
        )
        self.note(
            f"qoin devnet: nodes={self.config.nodes} miners={self.config.miners} "
            f"workers={self.config.workers} (per miner){shared} on 127.0.0.1, genesis "
            f"{self.genesis.genesis_hash.hex()[:16]}, data in {self.root}; Ctrl-C stops"
        )
        self._start_nodes(cancel)
        if cancel.is_set():
            return
        for a, b in links(len(self.nodes)):
            if a != 0:  # node 0 is every other node's bootnode
                self.nodes[a].rpc_client().call("consensus_addPeer", self.nodes[b].enode)
        self._start_web(cancel)
        self._await_peers(cancel)
        self._fund(cancel)
        self._share_client_key()
        if self.storage.count and not cancel.is_set():
            self._start_storage(cancel)
        if self.compute.everyone and not cancel.is_set():
            self._start_compute(cancel)
        self._describe()
        # Only now: a transaction is announced to the peers connected when it arrives.
        self.sender = TransferSender(
            self.nodes[-1].user_rpc, self.keypair, self.genesis.chain_id, self.config.tx_interval_s
        )
        self.sender.start()
        if self.nodes[0].ui:
            self.note(f"web UI (node0): {self.nodes[0].ui}")
        self.note(
            f"running; transfers go to {self.nodes[-1].name}'s execution client; view: height "
            "h, head hash, peers p per node (* mines)"
        )

    def _start_nodes(self, cancel: threading.Event) -> None:
        """Start the execution clients, node 0's consensus client, the other nodes' (node 0 their
        bootnode), then the remote nodes' (every node their bootnode)."""
        for node in self.nodes:
            self._start_execution(node)
        for node in self.nodes:
            self._await_execution(node, cancel)
        first, others = self.nodes[0], self.nodes[1:]
        if not cancel.is_set():
            self._start_consensus(first, ())
            self._await_consensus(first, cancel)
        if not cancel.is_set():
            for node in others:
                self._start_consensus(node, ("--bootnode", first.enode))
            for node in others:
                self._await_consensus(node, cancel)
        if self.remotes and not cancel.is_set():
            dials = [arg for node in self.nodes for arg in ("--bootnode", node.enode)]
            for node in self.remotes:
                self._start_consensus(node, dials)
            for node in self.remotes:
                self._await_consensus(node, cancel)

    def _fund(self, cancel: threading.Event) -> None:
        """Fund the user's client key, the storage and the compute providers from the devnet key
        (before the transfers start: one sender at a time)."""
        client = made_keypair(client_keystore(self.root))
        rpcs = [node.user_rpc for node in self.nodes]
        self.storage.prepare(rpcs)
        self.compute.prepare(rpcs)
        amounts = {
            str(client.address): CLIENT_FUNDING,
            **self.storage.funding(),
            **self.compute.funding(),
        }
        self.note(
            f"funding the client key, {self.storage.count} storage providers, "
            f"{self.compute.mediator_count} mediators and {self.compute.count} compute providers"
        )
        self.funding_sent = fund(self.nodes[-1].user_rpc, self.keypair, amounts, cancel)

    def _start_storage(self, cancel: threading.Event) -> None:
        """Start the storage providers (funded by :meth:`_fund`)."""
        self.storage.start()
        self.storage.await_ready(cancel)
        for provider in self.storage.providers:
            self.note(f"{provider.name} {provider.address} serves {provider.url}")

    def _start_compute(self, cancel: threading.Event) -> None:
        """Start the mediators, then the compute providers (funded by :meth:`_fund`)."""
        if self.compute.ai_runtime_note:
            self.note(self.compute.ai_runtime_note)
        self.compute.start(cancel)
        for node in self.compute.everyone:
            role = "mediator" if node.mediator else "compute provider"
            offers = f"; runtimes {', '.join(node.runtimes)}" if node.runtimes else ""
            self.note(f"{node.name} ({role}) {node.address} serves {node.url}{offers}")

    def _describe(self) -> None:
        """Write ``devnet.json`` (:func:`qoin.node.devnet_storage.describe`)."""
        nodes = [
            {"name": n.name, "rpc": n.user_rpc, "consensus_rpc": n.rpc, "engine": n.engine,
             "enode": n.enode, "mining": n.mining, "datadir": str(n.home), "ui": n.ui,
             "serves_execution": n.serving}
            for n in self.nodes
        ]  # fmt: skip
        remotes = [
            {"name": n.name, "consensus_rpc": n.rpc, "enode": n.enode, "mining": n.mining,
             "datadir": str(n.home), "remote_execution": self.config.remote_execution}
            for n in self.remotes
        ]  # fmt: skip
        path = describe(
            self.root,
            self.genesis.genesis_hash.hex(),
            nodes,
            self.storage.providers,
            dev_keystore(self.root, self.keypair),
            {"remote_nodes": remotes, **self.compute.description()},
        )
        self.note(f"devnet description: {path}")

    def _start_web(self, cancel: threading.Event) -> None:
        """Start every node's web UI and wait for their URLs (a UI that does not start is noted
        and left out)."""
        wallets = self.root / "keystore"
        for node in self.nodes:
            args = web_args(node.user_rpc, node.rpc, 0, wallets, node.home / "web")
            node.web = start_child(f"{node.name}'s web UI", args, node.home / "web.log", [WEB_URL])
        for node in self.nodes:
            try:
                found = node.web.first_match(WEB_URL, START_TIMEOUT_S, cancel) if node.web else None
            except ChildFailed as exc:
                self.note(f"{node.name}'s web UI did not start: {exc}")
                continue
            if found is not None:
                node.ui = found[0][1]

    def _share_client_key(self) -> None:
        """Put the funded client key where the web UIs list wallets (its password is the
        devnet's, see ``devnet.json``)."""
        client = client_keystore(self.root)
        wallets = self.root / "keystore"
        if client.exists():
            store = keystore.load(client)
            target = wallets / f"{store.address}.json"
            if not target.exists():
                keystore.save(store, target)  # mode 0600, as every keystore

    @property
    def everyone(self) -> list[Node]:
        """The nodes, then the remote nodes."""
        return [*self.nodes, *self.remotes]

    def _await_peers(self, cancel: threading.Event) -> None:
        """Wait until every node is connected to all the peers :func:`links` gives it (and each
        remote node to every node, each node to every remote node)."""
        wanted = [len(self.remotes)] * len(self.nodes) + [len(self.nodes)] * len(self.remotes)
        for a, b in links(len(self.nodes)):
            wanted[a], wanted[b] = wanted[a] + 1, wanted[b] + 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while not cancel.is_set():
            peers = [s.peers if s else 0 for s in self._poll()]
            if all(have >= want for have, want in zip(peers, wanted, strict=True)):
                return
            if time.monotonic() > deadline:
                raise DevnetError(f"the nodes did not connect: peers {peers}, expected {wanted}")
            cancel.wait(POLL_S)

    def _files(self, node: Node) -> list[str]:
        return ["--genesis", str(self.root / "genesis.json"), "--jwt-secret",
                str(node.home / "jwt.hex")]  # fmt: skip

    def _start_execution(self, node: Node) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        create_secret(node.home / "jwt.hex")
        args = ["execution", "--datadir", str(node.home / "execution"), *self._files(node),
                "--rpc-port", "0", "--engine-port", "0"]  # fmt: skip
        node.execution = start_child(
            f"{node.name}'s execution client", args, node.home / "execution.log", [EXECUTION_URLS]
        )

    def _await_execution(self, node: Node, cancel: threading.Event) -> None:
        if node.execution is None:  # never: started by the step before
            raise DevnetError(f"{node.name}'s execution client was not started")
        found = node.execution.first_match(EXECUTION_URLS, START_TIMEOUT_S, cancel)
        if found is not None:
            node.user_rpc, node.engine = found[0][1], found[0][2]

    def _start_consensus(self, node: Node, extra: Sequence[str]) -> None:
        if node.remote:  # no execution client (nor engine secret): the nodes', over p2p
            node.home.mkdir(parents=True, exist_ok=True)
            execution = ["--genesis", str(self.root / "genesis.json"),
                         "--remote-execution", str(self.config.remote_execution)]  # fmt: skip
        else:
            execution = [*self._files(node), "--execution", node.engine]
            execution += ["--serve-execution"] if node.serving else []
        args = ["consensus", "--datadir", str(node.home / "consensus"), *execution,
                "--rpc-port", "0", "--p2p-port", "0", *extra]  # fmt: skip
        if node.mining:
            args += ["--mine", "--workers", str(self.config.workers)]
        node.consensus = start_child(
            f"{node.name}'s consensus client",
            args,
            node.home / "consensus.log",
            [ENODE, CONSENSUS_URL, PAUSED],
            node.on_consensus_line,
        )

    def _await_consensus(self, node: Node, cancel: threading.Event) -> None:
        if node.consensus is None:  # never: started by the step before
            raise DevnetError(f"{node.name}'s consensus client was not started")
        found = node.consensus.first_match(CONSENSUS_URL, START_TIMEOUT_S, cancel)
        enode = node.consensus.first_match(ENODE, START_TIMEOUT_S, cancel)
        if found is not None and enode is not None:
            node.rpc, node.enode = found[0][1], enode[0][1]
            node.client = RpcClient(node.rpc, timeout=RPC_TIMEOUT_S)

    # -- watching ---------------------------------------------------------------------------------

    def _check_children(self) -> None:
        for node in self.everyone:
            for child in node.children():
                code = child.exited()
                if code is not None:
                    raise DevnetError(
                        f"{child.name} exited with status {code}{child.last_output()}"
                    )

    def _poll(self) -> list[NodeStatus | None]:
        self._check_children()
        statuses = [node.status() for node in self.everyone]
        heights = [s.height for s in statuses if s is not None]
        if heights:
            now = time.monotonic()
            self._samples.append((now, max(heights)))
            while self._samples and now - self._samples[0][0] > RATE_WINDOW_S:
                self._samples.popleft()
        return statuses

    def _tick(self, cancel: threading.Event) -> list[NodeStatus | None]:
        """Poll every node (often: the heads seen are what reorgs are counted from), show the
        view once per :data:`VIEW_INTERVAL_S`, wait a moment."""
        statuses = self._poll()
        now = time.monotonic()
        if now - self._shown >= VIEW_INTERVAL_S:
            self._shown = now
            self.show(self.view(statuses))
        cancel.wait(POLL_S)
        return statuses

    def _watch(self, cancel: threading.Event, outcome: Outcome) -> None:
        target = self.config.blocks
        while not cancel.is_set():
            statuses = self._tick(cancel)
            if target and all(s is not None and s.height >= target for s in statuses):
                outcome.reached = True
                outcome.agreed = self._converge(cancel)
                return

    def _converge(self, cancel: threading.Event) -> bool:
        """Stop mining, then wait until every node reports the same head twice in a row (and
        none is syncing); False if that does not happen within ``converge_s``."""
        if self.sender is not None:
            self.sender.stop()
        for child in self._pause_miners():
            child.first_match(PAUSED, PAUSE_TIMEOUT_S, cancel)
        self.note(f"mining stopped; waiting up to {self.config.converge_s:.0f} s for agreement")
        return self._agree_within(self.config.converge_s, cancel)

    def _settle(self) -> None:
        """After a stop signal: stop mining and give the nodes up to :data:`SETTLE_S` to agree on
        a head, so that the summary is not of a split the stop itself made (found by
        ``tests/test_lifeline.py``: a block mined the moment the signal came had not reached the
        other node when every process was stopped)."""
        self._pause_miners()
        self._agree_within(SETTLE_S, threading.Event())  # the signal set ``cancel`` already

    def _pause_miners(self) -> list[Child]:
        """Tell every miner to stop mining (it follows the network on); their children."""
        miners = [n.consensus for n in self.everyone if n.mining and n.consensus is not None]
        for child in miners:
            if child.proc.poll() is None:
                child.proc.send_signal(PAUSE_SIGNAL)
        return miners

    def _agree_within(self, seconds: float, cancel: threading.Event) -> bool:
        """Whether every node reports the same head twice in a row (none syncing) within
        ``seconds``."""
        deadline = time.monotonic() + seconds
        agreeing = 0
        while not cancel.is_set() and time.monotonic() < deadline:
            statuses = self._tick(cancel)
            agreeing = agreeing + 1 if agree(statuses) else 0
            if agreeing >= 2:
                self.show(self.view(statuses))
                return True
        return False

    def view(self, statuses: Sequence[NodeStatus | None]) -> str:
        """One line of the live view."""
        parts = [f"{time.monotonic() - self._started:5.0f}s"]
        everyone = self.everyone
        for node, status in zip(everyone, statuses, strict=True):
            mark = "*" if node.mining else " "
            if status is None:
                parts.append(f"{node.label}{mark} (no answer)")
            else:
                sync = " sync" if status.syncing else ""
                used = f" x={status.remote[0]}/{status.remote[1]}" if status.remote else ""
                head = f"h={status.height} {status.head[:8]} p={status.peers}{used}{sync}"
                parts.append(f"{node.label}{mark} {head}")
        attempts = sum(n.attempts_per_second for n in everyone if n.mining)
        sent = self.sender.sent if self.sender is not None else 0
        parts.append(
            f"{self.blocks_per_second():.2f} blocks/s {attempts:,.0f} attempts/s {sent} txs"
        )
        return " | ".join(parts)

    def blocks_per_second(self) -> float:
        """The network's best height gained per second over the last :data:`RATE_WINDOW_S`."""
        if len(self._samples) < 2:
            return 0.0
        (t0, h0), (t1, h1) = self._samples[0], self._samples[-1]
        return (h1 - h0) / (t1 - t0) if t1 > t0 else 0.0

    # -- the summary ------------------------------------------------------------------------------

    def summary(self, outcome: Outcome) -> dict[str, Any]:
        """The JSON summary of a finished run (it reads the block stores: call after
        :meth:`run`)."""
        reports: list[StoreReport | None] = []
        problems = []
        everyone = self.everyone
        for node in everyone:
            try:
                reports.append(read_store(node.home / "consensus", self.genesis, node.heads))
            except (StoreError, QoinError, OSError) as exc:
                reports.append(None)
                problems.append(f"{node.name}: {exc}")
        heads = {r.head for r in reports if r is not None}
        agreed = len(heads) == 1 and None not in reports
        base = next((r for r in reports if r is not None), None)
        all_hashes = set().union(*(r.hashes for r in reports if r is not None))
        return {
            "agree": agreed,
            "head": base.head if agreed and base else None,
            "height": base.height if agreed and base else None,
            "nodes": [self._node_json(n, r) for n, r in zip(everyone, reports, strict=True)],
            "side_blocks": len(all_hashes - set(base.canonical)) if base else None,
            "reorgs": sum(r.reorgs for r in reports if r is not None),
            # The funding transfers count: they are on the chain too.
            "transactions_sent": self.funding_sent + (self.sender.sent if self.sender else 0),
            "transactions_failed": self.sender.failed if self.sender else 0,
            "transactions_error": self.sender.last_error or None if self.sender else None,
            "transactions_included": base.transactions if base else None,
            "seconds": round(outcome.seconds, 2),
            "reached": outcome.reached,
            "interrupted": outcome.interrupted,
            "error": outcome.error or None,
            "unreadable": problems,
        }

    def _node_json(self, node: Node, report: StoreReport | None) -> dict[str, Any]:
        return {
            "node": node.index,
            "name": node.name,
            "remote": node.remote,
            "mining": node.mining,
            "head": report.head if report else None,
            "height": report.height if report else None,
            "peers": node.last.peers if node.last else None,
            "blocks_stored": len(report.hashes) if report else None,
            "side_blocks": len(report.hashes) - report.height - 1 if report else None,
            "reorgs": report.reorgs if report else None,
        }


def links(nodes: int) -> list[tuple[int, int]]:
    """Who dials whom: every node dials node 0 (its bootnode), and node i dials node i+1 among
    the others (a ring but for the closing link, which node 0 stands for)."""
    return [(i, 0) for i in range(1, nodes)] + [(i, i + 1) for i in range(1, nodes - 1)]


def agree(statuses: Sequence[NodeStatus | None]) -> bool:
    """Every node answered, none is syncing, and all have the same head."""
    if any(s is None or s.syncing for s in statuses):
        return False
    return len({s.head for s in statuses if s is not None}) == 1
