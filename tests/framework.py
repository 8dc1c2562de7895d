"""The test framework for real ``qoin`` processes, in the spirit of Bitcoin Core's functional tests.

A :class:`Node` is one Qoin node: the processes it owns, each a :class:`qoin.process.Child` with a
role (an execution client and a consensus client with or without p2p, an execution client alone, or
a ``qoin node`` supervisor; later daemons add roles of their own), and JSON-RPC clients
(:class:`qoin.rpc.client.RpcClient`) for its servers. A :class:`Network` holds a test's nodes: it
writes the files they share (genesis, engine JWT secret) once in the test's directory, starts
nodes, connects them, waits until their heads agree, forms halves and joins them, and stops every
process it started when the test ends, passed or failed (the ``net`` fixture of
``tests/conftest.py``). :func:`wait_until` is the one bounded wait of the tests: on timeout it
names what it waited for and the last value it saw. :func:`test_seed` is where a test's random
seed comes from, logged so that a failure can be replayed.

Chains are the test network's (:func:`genesis`: maximum target, so sealing a block costs one
hybrid signature; :data:`FUNDED` holds the allocation); blocks made in the test process reach a
node by ``consensus_submitBlock`` or a prepared data directory.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import random
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qoin.chain import genesis as genesis_mod
from qoin.chain.genesis import Allocation, Genesis
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.crypto.hybrid import HybridKeyPair
from qoin.process import KEEP_ALL, STOP_TIMEOUT_S, Child, ChildFailed, Line, Output
from qoin.process import stop_all as stop_children
from qoin.rpc.client import RpcClient
from tests.chainutil import test_genesis
from tests.keys import keypair_for

log = logging.getLogger(__name__)

T = TypeVar("T")

WAIT_S = 30.0
"""How long :func:`wait_until` polls by default before failing the test."""
POLL_S = 0.01
"""How often :func:`wait_until` asks by default."""
RPC_POLL_S = 0.2
"""How often waits that call a node's RPC ask (each call costs the node some work)."""
SYNC_S = 120.0
"""How long :meth:`Network.sync_heads` waits by default."""
RPC_TIMEOUT_S = 60.0
"""How long one RPC call to a node may take (a busy node on a shared test machine is slow)."""
START_S = 60.0
"""How long a process may take to print its ready line."""
OUTPUT_CHARS = 4_000
"""Characters of a process's output quoted when it fails."""
DESCRIPTION_CHARS = 2_000
"""Characters of a predicate's description and last value quoted when a wait fails."""

EXECUTION, CONSENSUS, SUPERVISOR = "execution", "consensus", "node"
"""Roles of a node's processes: ``qoin execution``, ``qoin consensus`` and ``qoin node``."""
SERVE_EXECUTION = "--serve-execution"
"""What a consensus client is started with to offer its execution client to its p2p peers."""

FUNDED, MINER = keypair_for(index=9), keypair_for(index=5)
"""The test network's funded account (the whole genesis allocation) and the tests' miner key."""


def genesis() -> Genesis:
    """The test network: maximum target, the allocation held by :data:`FUNDED`."""
    return replace(test_genesis(), allocation=(Allocation(FUNDED.address, GENESIS_ALLOCATION),))


def pay(
    sender: HybridKeyPair, nonce: int, to: HybridKeyPair, amount: int, reveal: bool = False
) -> Transaction:
    """A transfer on the test network with a fee of 10 (``reveal``: the sender's first, which
    carries its public keys)."""
    return sign_transfer(
        sender,
        chain_id=genesis().chain_id,
        nonce=nonce,
        recipient=to.address,
        amount=amount,
        fee=10,
        reveal_keys=reveal,
    )


# -- waiting ------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    timeout: float = WAIT_S,
    poll: float = POLL_S,
    what: str | None = None,
) -> T:
    """Ask ``predicate`` every ``poll`` seconds until it returns a true value, and return that
    value. After ``timeout`` seconds fail the test, naming ``what`` (by default the predicate's
    source) and the last value it returned. An exception from ``predicate`` ends the wait at
    once (a node that died does not come back by waiting)."""
    if timeout <= 0 or poll <= 0:
        raise ValueError("wait_until needs a positive timeout and poll interval")
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            described = (what or _source(predicate))[:DESCRIPTION_CHARS]
            last = repr(value)[:DESCRIPTION_CHARS]
            pytest.fail(f"waited {timeout:g} s for {described}; last value {last}")
        time.sleep(poll)
        value = predicate()
    return value


def _source(predicate: Callable[..., object]) -> str:
    """The source of ``predicate`` (for a lambda: the lines it is written on)."""
    try:
        return " ".join(line.strip() for line in inspect.getsource(predicate).splitlines())
    except (OSError, TypeError):
        return repr(predicate)


def test_seed(env: str = "QOIN_TEST_SEED") -> int:
    """A test's random seed: ``$env`` when set (to replay a failure), else a fresh one; logged and
    printed (pytest shows a failed test's output) with the way to replay it."""
    seed = int(os.environ.get(env) or random.randrange(2**32))
    log.warning("random seed %d (rerun with %s=%d)", seed, env, seed)
    print(f"random seed {seed} (rerun with {env}={seed})")
    return seed


test_seed.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test to collect


def output(child: Child) -> str:
    """Everything ``child`` printed so far, without waiting (lines still in the pipe are not)."""
    return "".join(line.text for line in child.collect())


def read_to_end(child: Child, timeout: float = STOP_TIMEOUT_S) -> list[Line]:
    """Every line of an exiting ``child``: wait (at most ``timeout`` seconds) until its output
    ends; fail the test if it does not."""
    try:
        child.poll_for(r"(?!)", timeout, after=len(child.seen))  # matches nothing: read to EOF
    except ChildFailed:  # the output ended (and stays marked as ended for later waits)
        return child.seen
    pytest.fail(f"{child.name} still writing after {timeout:g} s:\n{child.tail()}")


def write_network_files(workdir: Path, chosen: Genesis | None = None) -> tuple[Path, Path]:
    """Write the files every process of a test shares: the genesis (the test network by default)
    and the engine JWT secret; their paths."""
    return genesis_mod.write_network_files(workdir, chosen or genesis())


# -- nodes --------------------------------------------------------------------------------------


class FrameworkError(Exception):
    """A test asked a node for something it does not run (a test bug, not a node bug)."""


@dataclass(frozen=True)
class Process:
    """One process of a node: its role and the running child."""

    role: str
    child: Child


class Node:
    """One Qoin node of a :class:`Network`: the processes it owns (:attr:`processes`, the last
    started last; stopped ones are removed) and clients for their RPC. Its consensus data
    directory is ``WORKDIR/NAME``, its execution client's ``WORKDIR/NAME-execution``."""

    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.name = name
        self.processes: list[Process] = []
        self.engines: list[str] = []
        """The engine URLs its consensus client judges with."""
        self.p2p = False
        self.engine: str | None = None
        """Its own execution client's engine API URL."""
        self.enode: str | None = None
        """``qoin1…@host:port`` while its consensus client runs with p2p."""
        self._user: RpcClient | None = None
        self._rpc: RpcClient | None = None

    def __repr__(self) -> str:
        return f"Node({self.name}: {', '.join(p.role for p in self.processes) or 'stopped'})"

    @property
    def datadir(self) -> Path:
        """The consensus client's (or ``qoin node``'s) data directory."""
        return self.network.workdir / self.name

    @property
    def execution_datadir(self) -> Path:
        return self.network.workdir / f"{self.name}-execution"

    @property
    def rpc(self) -> RpcClient:
        """The consensus client's RPC."""
        if self._rpc is None:
            raise FrameworkError(f"{self.name} runs no consensus client")
        return self._rpc

    @property
    def user(self) -> RpcClient:
        """The execution client's user RPC."""
        if self._user is None:
            raise FrameworkError(f"{self.name} runs no execution client")
        return self._user

    def child(self, role: str) -> Child:
        """The running process of ``role``."""
        for process in reversed(self.processes):
            if process.role == role:
                return process.child
        raise FrameworkError(f"{self.name} runs no {role} process")

    # -- starting ---------------------------------------------------------------------------

    def start(self, role: str, args: Sequence[str], ready: str) -> re.Match[str]:
        """Start ``qoin ARGS`` as this node's ``role`` process and wait for its ready line (the
        match of ``ready``). The one place the framework starts a process: every child is
        stopped when the test ends."""
        if any(process.role == role for process in self.processes):
            raise FrameworkError(f"{self.name} already runs a {role} process")
        child = self.network.spawn(f"{self.name} {role}", args)
        self.processes.append(Process(role, child))
        _, found, _ = child.wait_for(ready, START_S)
        return found

    def start_execution(self, *args: str, shared_files: bool = True) -> None:
        """Start ``qoin execution`` on the network's files (with ``shared_files=False``, on its
        defaults: the devnet genesis, a secret in its data directory), ports chosen by the
        system."""
        files = self.network.files_args() if shared_files else []
        found = self.start(
            EXECUTION,
            ["execution", "--datadir", str(self.execution_datadir), *files,
             "--rpc-port", "0", "--engine-port", "0", *args],
            r"user RPC (\S+), engine API (\S+)",
        )  # fmt: skip
        self._user = self.network.client(found[1])
        self.engine = found[2]

    def start_consensus(self, *args: str) -> None:
        """Start ``qoin consensus`` judging with :attr:`engines` (p2p on a system-chosen port
        when :attr:`p2p`)."""
        executions = [arg for engine in self.engines for arg in ("--execution", engine)]
        p2p = ["--p2p-port", "0"] if self.p2p else []
        found = self.start(
            CONSENSUS,
            ["consensus", "--datadir", str(self.datadir), *self.network.files_args(),
             *executions, "--rpc-port", "0", *p2p, *args],
            r"; RPC (\S+);",
        )  # fmt: skip
        self._rpc = self.network.client(found[1])
        if self.p2p:
            self.enode = self.child(CONSENSUS).wait_for(r"p2p: node (\S+)", START_S)[1][1]

    def start_supervisor(self, *args: str) -> None:
        """Start ``qoin node ARGS`` (its own execution and consensus clients) in :attr:`datadir`;
        its user RPC is :attr:`user`. Its consensus RPC port is one the system picks, unless
        ``args`` name one (tests run side by side; the default port would clash)."""
        ports = [] if "--consensus-rpc-port" in args else ["--consensus-rpc-port", "0"]
        found = self.start(
            SUPERVISOR,
            ["node", "--datadir", str(self.datadir), *ports, *args],
            r"user RPC (http://[^\s,]+)",
        )
        self._user = self.network.client(found[1])

    # -- stopping ---------------------------------------------------------------------------

    def stop_process(self, role: str, sig: signal.Signals = signal.SIGTERM) -> int:
        """Stop the ``role`` process with ``sig`` (killed, with what is left of its process
        group, if it does not exit in :data:`qoin.process.STOP_TIMEOUT_S`); its exit status."""
        child = self.signal_stop(role, sig)
        return child.finish(time.monotonic() + STOP_TIMEOUT_S)

    def signal_stop(self, role: str, sig: signal.Signals = signal.SIGTERM) -> Child:
        """Forget the ``role`` process (and close the clients of its RPC) and send it ``sig``,
        without waiting; the child, to :meth:`~qoin.process.Child.finish`."""
        child = self.child(role)
        self.processes = [p for p in self.processes if p.child is not child]
        if role in (EXECUTION, SUPERVISOR) and self._user is not None:
            self._user.close()
            self._user = None
        if role == CONSENSUS and self._rpc is not None:
            self._rpc.close()
            self._rpc, self.enode = None, None
        if child.exited() is None:
            child.proc.send_signal(sig)
        return child

    def stop(self, role: str | None = None) -> None:
        """Stop the ``role`` process, or every process (the last started first); fail the test
        if one exits with a status other than 0, quoting its output."""
        roles = [p.role for p in reversed(self.processes)] if role is None else [role]
        for each in roles:
            child = self.child(each)
            code = self.stop_process(each)
            if code != 0:
                tail = output(child)[-OUTPUT_CHARS:]
                pytest.fail(f"{child.name} exited with {code}:\n{tail}")

    def restart_consensus(self, *args: str) -> None:
        """Stop the consensus client (it must exit with 0) and start it again with ``args``."""
        self.stop(CONSENSUS)
        self.start_consensus(*args)

    def send_signal(self, role: str, sig: signal.Signals) -> None:
        """Send ``sig`` to the ``role`` process (e.g. SIGUSR1: a consensus client stops mining)."""
        self.child(role).proc.send_signal(sig)

    def kill(self, role: str) -> None:
        """SIGKILL the ``role`` process (no clean stop) and forget it."""
        child = self.child(role)
        child.proc.kill()
        self.stop_process(role)

    # -- reading ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``consensus_status``."""
        result: dict[str, Any] = self.rpc.call("consensus_status")
        return result

    def head(self) -> str:
        """The consensus client's head hash (hex)."""
        return str(self.status()["head"])

    def height(self) -> int:
        return int(self.status()["height"])

    def peer_ids(self) -> set[str]:
        """The node ids of its connected p2p peers."""
        return {str(peer["id"]) for peer in self.status()["p2p"]["peers"]}

    def banned(self) -> set[str]:
        """The node ids (and hosts) its p2p service bans."""
        return {str(ban["subject"]) for ban in self.status()["p2p"]["bans"]}

    def remote_execution(self) -> dict[str, Any]:
        """What its status says of the remote execution nodes it judges with
        (``remoteExecution``: ``wanted``, ``using``, ``candidates``, ``problem``)."""
        found: dict[str, Any] = self.status()["remoteExecution"]
        return found

    def using(self, state: str | None = "active") -> set[str]:
        """The node ids of the remote execution nodes it uses (in ``state``; None: any)."""
        return {
            str(entry["node"])
            for entry in self.remote_execution()["using"]
            if state is None or entry["state"] == state
        }

    @property
    def node_id(self) -> str:
        """Its p2p node id (the ``qoin1…`` part of :attr:`enode`)."""
        if self.enode is None:
            raise FrameworkError(f"{self.name} runs no consensus client with p2p")
        return self.enode.split("@", 1)[0]


@dataclass(frozen=True)
class Heads:
    """What :meth:`Network.sync_heads` waits on: each node's height and head; true when they
    agree (and are at ``height`` when one is expected)."""

    heads: dict[str, tuple[int, str]]
    height: int | None

    def __bool__(self) -> bool:
        seen = set(self.heads.values())
        return len(seen) == 1 and (self.height is None or next(iter(seen))[0] == self.height)

    def __repr__(self) -> str:
        shown = ", ".join(f"{n} {h}@{head[:12]}" for n, (h, head) in self.heads.items())
        return f"Heads({shown}; expected height {self.height})"


class Network:
    """The nodes of one test in ``workdir`` and the files they share; see the module docstring."""

    def __init__(self, workdir: Path, chosen: Genesis | None = None) -> None:
        self.workdir = workdir
        self.genesis = chosen or genesis()
        self.genesis_file, self.jwt_file = write_network_files(workdir, self.genesis)
        self.nodes: list[Node] = []
        self.children: list[Child] = []
        """Every process started, in order (stopped at the end, the last first)."""
        self._clients: list[RpcClient] = []

    def files_args(self) -> list[str]:
        """The arguments naming the shared genesis and engine secret."""
        return ["--genesis", str(self.genesis_file), "--jwt-secret", str(self.jwt_file)]

    def spawn(self, name: str, args: Sequence[str], output: Output = KEEP_ALL) -> Child:
        """Start ``qoin ARGS`` (see :meth:`qoin.process.Child.start`), to be stopped by
        :meth:`stop_all`: a process that is not one of a node's, such as ``qoin node`` or
        ``qoin devnet`` themselves."""
        child = Child.start(name, args, output)
        self.children.append(child)
        return child

    def client(self, url: str) -> RpcClient:
        """An RPC client for ``url``, closed by :meth:`stop_all`."""
        made = RpcClient(url, timeout=RPC_TIMEOUT_S)
        self._clients.append(made)
        return made

    def add(self, name: str) -> Node:
        """A node with no process yet (start them with its ``start_*`` methods)."""
        if any(node.name == name for node in self.nodes):
            raise FrameworkError(f"there is already a node named {name}")
        node = Node(self, name)
        self.nodes.append(node)
        return node

    def execution(self, name: str, *args: str) -> Node:
        """A node that is only an execution client."""
        node = self.add(name)
        node.start_execution(*args)
        return node

    def node(
        self,
        name: str,
        *args: str,
        p2p: bool = True,
        mine: bool = False,
        bootnodes: Sequence[Node] = (),
        engines: Sequence[Node] = (),
        serve: bool = False,
        execution_args: Sequence[str] = (),
    ) -> Node:
        """A node: its own execution client (started with ``execution_args``; or the given
        ``engines``' execution clients, in order) and a consensus client started with ``args``,
        with p2p unless ``p2p=False``, dialling ``bootnodes`` first, mining with one worker when
        ``mine``, offering its execution client to its peers when ``serve``
        (:data:`SERVE_EXECUTION`)."""
        node = self.add(name)
        if engines:
            node.engines = [str(engine.engine) for engine in engines]
        else:
            node.start_execution(*execution_args)
            node.engines = [str(node.engine)]
        node.p2p = p2p
        dials = [arg for boot in bootnodes for arg in ("--bootnode", str(boot.enode))]
        mining = ["--mine", "--workers", "1"] if mine else []
        serving = [SERVE_EXECUTION] if serve else []
        node.start_consensus(*dials, *mining, *serving, *args)
        return node

    def remote(
        self, name: str, *args: str, wanted: int = 3, bootnodes: Sequence[Node] = ()
    ) -> Node:
        """A consensus client with no execution client of its own: it judges (and mines) with
        ``wanted`` execution nodes its p2p peers serve (``--remote-execution``), dialling
        ``bootnodes`` first."""
        node = self.add(name)
        node.p2p = True
        dials = [arg for boot in bootnodes for arg in ("--bootnode", str(boot.enode))]
        node.start_consensus(*dials, "--remote-execution", str(wanted), *args)
        return node

    # -- topology -----------------------------------------------------------------------------

    def connected(self, a: Node, b: Node) -> bool:
        """Whether ``a`` and ``b`` have each other as p2p peers."""
        return b.node_id in a.peer_ids() and a.node_id in b.peer_ids()

    def connect(self, a: Node, b: Node, timeout: float = WAIT_S) -> None:
        """Have ``a`` dial ``b`` (``consensus_addPeer``, unless they are connected already) and
        wait until both see the link."""
        if self.connected(a, b):
            return
        a.rpc.call("consensus_addPeer", b.enode)
        wait_until(
            lambda: self.connected(a, b), timeout, RPC_POLL_S, f"{a.name} connected to {b.name}"
        )

    def disconnect(self, a: Node, b: Node, timeout: float = WAIT_S) -> None:
        """Have ``a`` and ``b`` drop each other (``consensus_removePeer`` on both sides: neither
        dials the other again until :meth:`connect`) and wait until neither sees the link."""
        a.rpc.call("consensus_removePeer", b.node_id)
        b.rpc.call("consensus_removePeer", a.node_id)
        wait_until(
            lambda: b.node_id not in a.peer_ids() and a.node_id not in b.peer_ids(),
            timeout,
            RPC_POLL_S,
            f"{a.name} and {b.name} disconnected",
        )

    def split(self, *groups: Sequence[Node], timeout: float = WAIT_S) -> None:
        """Form ``groups`` as separate networks: every link across groups is dropped
        (:meth:`disconnect`), each group's nodes are connected in a line (where they are not yet),
        and no link crosses groups (checked)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.disconnect(a, b, timeout)
        for group in groups:
            for a, b in itertools.pairwise(group):
                self.connect(a, b, timeout)
        for i, group in enumerate(groups):
            others = {node.node_id for other in groups[i + 1 :] for node in other}
            for node in group:
                crossing = node.peer_ids() & others
                if crossing:
                    raise FrameworkError(f"{node.name} is connected across the split: {crossing}")

    def join(self, a: Node, b: Node, timeout: float = WAIT_S) -> None:
        """Join two halves formed by :meth:`split` through ``a`` and ``b``."""
        self.connect(a, b, timeout)

    def heads(self, nodes: Sequence[Node], height: int | None = None) -> Heads:
        """Each node's height and head now."""
        states = {node.name: node.status() for node in nodes}
        return Heads({n: (int(s["height"]), str(s["head"])) for n, s in states.items()}, height)

    def sync_heads(
        self,
        nodes: Sequence[Node],
        timeout: float = SYNC_S,
        height: int | None = None,
        poll: float = RPC_POLL_S,
    ) -> str:
        """Wait until ``nodes`` have the same head (at ``height`` if given); that head."""
        agreed = wait_until(lambda: self.heads(nodes, height), timeout, poll, "the same head")
        return next(iter(agreed.heads.values()))[1]

    # -- the end ------------------------------------------------------------------------------

    def stop_nodes(self, nodes: Sequence[Node]) -> None:
        """Stop every process of ``nodes`` as :meth:`Node.stop` stops one node's, all nodes at
        once: SIGTERM to the processes other than execution clients together, then to the
        execution clients (consensus clients call them while they stop); fail the test if one
        exits with a status other than 0, quoting its output."""
        running = [(node, process.role) for node in nodes for process in node.processes]
        for executions in (False, True):
            stopping = [
                node.signal_stop(role)
                for node, role in running
                if (role == EXECUTION) is executions
            ]
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for child, code in [(child, child.finish(deadline)) for child in stopping]:
                if code != 0:
                    tail = output(child)[-OUTPUT_CHARS:]
                    pytest.fail(f"{child.name} exited with {code}:\n{tail}")

    def stop_all(self) -> None:
        """Stop every process started, whatever state the test left: SIGTERM to all but the
        execution clients at once, then to the execution clients (consensus clients call them
        while they stop), each killed if it does not exit in :data:`STOP_TIMEOUT_S`; print each
        one's last output (pytest shows it when the test failed); close the clients."""
        executions = {
            id(p.child) for node in self.nodes for p in node.processes if p.role == EXECUTION
        }
        first = [child for child in self.children if id(child) not in executions]
        last = [child for child in self.children if id(child) in executions]
        self.children.clear()
        for group in (first, last):
            for child, code in zip(list(group), stop_children(group), strict=True):
                print(f"--- {child.name} (exit {code}):\n{output(child)[-OUTPUT_CHARS:]}")
        for node in self.nodes:
            node.processes.clear()
        for made in self._clients:
            made.close()
        self._clients.clear()
