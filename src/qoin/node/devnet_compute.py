"""The devnet's compute providers and mediators.

``qoin devnet --compute-providers N [--mediators M]`` runs M mediators and then N compute
providers (``qoin compute provider``) beside the nodes. Each has its own key (made on the first
start, under the devnet's password), is funded from the devnet allocation with the storage
providers, talks to node ``i mod nodes``'s execution client and listens on a port the system
picks. The mediators start first and are registered (``--mediator``) before any provider posts
its ask, so every provider accepts every mediator (``--mediators``, all of them); a mediator is
also a provider (it runs jobs too) that accepts the other mediators. Files::

    mediator<i>/key.json, mediator<i>/data/, mediator<i>.log   mediator i
    compute<i>/key.json, compute<i>/data/, compute<i>.log      compute provider i

AI runtime: every provider and mediator is given ``--runtime DIR`` for the devnet's AI runtime
(``qoin devnet --ai-runtime DIR``, which must load; by default the default runtime directory,
:func:`qoin.ai.runtime.default_dir`, when it holds a runtime that loads), so AI jobs run on the
devnet's market.

``devnet.json`` lists them under ``compute_providers`` and ``mediators`` (name, address, endpoint,
url, pid, datadir, keystore, rpc, log, mediator flag, the refs of the runtimes it offers) and the
AI runtime under ``ai_runtime`` (ref, path, torch; null without one). They are stopped with the
devnet, before the nodes. :class:`ComputeDevnet` is the devnet with them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from qoin.ai import runtime as ai_runtime
from qoin.ai.runtime import AiRuntimeError, RuntimeInfo
from qoin.errors import QoinError
from qoin.node.devnet_storage import (
    FUNDING,
    daemon_entry,
    made_keypair,
    ready_lines,
    start_daemon,
)
from qoin.process import Child

PRICE: Final = 1_000
"""Shor per CPU-second each devnet compute provider asks."""
MEDIATOR_FEE: Final = 100_000
"""Shor each devnet mediator charges per mediation."""
CPUS: Final = 1
"""CPUs each provider offers (every machine has one)."""
MEMORY: Final = "1GiB"
"""Memory each provider offers."""
READY: Final = r'^\{"ready": true.*\}\s*$'
"""The compute provider daemon's ready line (one JSON object)."""
STOP_TIMEOUT_S: Final = 30.0


class ComputeDaemonError(QoinError):
    """A compute provider or mediator of the devnet did not start."""


@dataclass
class ComputeNode:
    """One compute provider (or mediator) of the devnet."""

    name: str
    home: Path
    address: str
    rpc: str
    mediator: bool
    options: tuple[str, ...] = ()
    """Options added to its command line (e.g. the test-only ``--misbehave``)."""
    child: Child | None = None
    endpoint: str = ""
    """``host:port`` of its API, once it is ready."""
    url: str = ""
    """Its compute API base URL."""
    runtimes: tuple[str, ...] = ()
    """The refs of the runtimes it offers (from its ready line)."""

    def json(self) -> dict[str, Any]:
        """Its entry in ``devnet.json``."""
        return {**daemon_entry(self), "mediator": self.mediator, "runtimes": list(self.runtimes)}


class ComputeProviders:
    """Makes, funds, starts and stops the devnet's mediators and compute providers."""

    def __init__(
        self, root: Path, providers: int, mediators: int, ai_runtime_dir: Path | None = None
    ) -> None:
        self.root = root
        self.count = providers
        self.mediator_count = mediators
        self.mediators: list[ComputeNode] = []
        self.providers: list[ComputeNode] = []
        self.ai_runtime_dir = ai_runtime_dir
        """The AI runtime asked for (None: the default directory's, if it loads)."""
        self.ai_runtime: RuntimeInfo | None = None
        """The AI runtime the daemons are given (:meth:`prepare`)."""
        self.ai_runtime_note = ""
        """Why there is none (when there is none)."""

    def prepare(self, node_rpcs: Sequence[str]) -> None:
        """Each one's key (made on the first start) and node, and the AI runtime
        (:class:`ComputeDaemonError` if the one asked for does not load)."""
        if not (self.count or self.mediator_count):
            pass
        elif self.ai_runtime_dir is not None:
            try:
                self.ai_runtime = ai_runtime.load(self.ai_runtime_dir)
            except AiRuntimeError as exc:
                raise ComputeDaemonError(f"--ai-runtime {self.ai_runtime_dir}: {exc}") from None
        else:
            place = ai_runtime.default_dir()
            try:
                self.ai_runtime = ai_runtime.load(place)
            except AiRuntimeError as exc:
                self.ai_runtime_note = f"no AI runtime for the compute providers ({exc})"
        for i in range(self.mediator_count):
            self.mediators.append(self._node(f"mediator{i}", i, node_rpcs, mediator=True))
        for i in range(self.count):
            self.providers.append(self._node(f"compute{i}", i, node_rpcs, mediator=False))

    def add_provider(self, name: str, rpc: str, options: Sequence[str] = ()) -> ComputeNode:
        """One more compute provider (after :meth:`prepare`), started with ``options`` added to
        its command line."""
        node = self._node(name, 0, [rpc], mediator=False, options=options)
        self.providers.append(node)
        return node

    def _node(
        self,
        name: str,
        i: int,
        rpcs: Sequence[str],
        *,
        mediator: bool,
        options: Sequence[str] = (),
    ) -> ComputeNode:
        home = self.root / name
        keypair = made_keypair(home / "key.json")
        rpc = rpcs[i % len(rpcs)]
        return ComputeNode(name, home, str(keypair.address), rpc, mediator, tuple(options))

    @property
    def everyone(self) -> list[ComputeNode]:
        return self.mediators + self.providers

    def funding(self) -> dict[str, int]:
        """What each one is paid from the devnet allocation (collateral, stake, fees)."""
        return {node.address: FUNDING for node in self.everyone}

    def start(self, cancel: threading.Event) -> None:
        """Start the mediators, wait until they are registered, then the providers."""
        accepted = ",".join(m.address for m in self.mediators)
        for mediator in self.mediators:
            others = ",".join(m.address for m in self.mediators if m is not mediator)
            self._start(mediator, ["--mediator", "--fee", str(MEDIATOR_FEE), "--mediators", others])
        self._await(self.mediators, cancel)
        for provider in self.providers:
            self._start(provider, ["--mediators", accepted])
        self._await(self.providers, cancel)

    def _start(self, node: ComputeNode, extra: list[str]) -> None:
        if self.ai_runtime is not None:
            extra = [*extra, "--runtime", str(self.ai_runtime.path)]
        options = ["--cpus", str(CPUS), "--memory", MEMORY, "--price", str(PRICE),
                   "--listen", "127.0.0.1:0", *extra, *node.options]  # fmt: skip
        node.child = start_daemon(node, ("compute", "provider"), options, READY)

    def _await(self, nodes: Sequence[ComputeNode], cancel: threading.Event) -> None:
        for node, found in ready_lines(nodes, READY, cancel):
            try:
                ready = json.loads(found[0])
                node.endpoint = str(ready["endpoint"])
                node.url = str(ready.get("url") or f"http://{node.endpoint}/compute/v1")
                node.runtimes = tuple(str(ref) for ref in ready.get("runtimes") or ())
            except (ValueError, KeyError, TypeError):
                raise ComputeDaemonError(f"{node.name} printed an unreadable ready line") from None

    def children(self) -> list[Child]:
        """The running daemons, providers first."""
        return [n.child for n in self.providers + self.mediators if n.child is not None]

    def description(self) -> dict[str, Any]:
        """Their entries in ``devnet.json``: ``compute_providers``, ``mediators`` (each with the
        refs of its runtimes) and ``ai_runtime`` (the runtime they were given, or null)."""
        found = self.ai_runtime
        runtime = None
        if found is not None:
            runtime = {"ref": found.ref, "path": str(found.path), "torch": found.torch}
        return {
            "compute_providers": [node.json() for node in self.providers],
            "mediators": [node.json() for node in self.mediators],
            "ai_runtime": runtime,
        }
