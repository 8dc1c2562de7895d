"""``qoin bench shared-execution``: the same chain judged with a local execution client and with
remote execution nodes over p2p, in one run — where the CPU goes and how many engine bytes travel.

Setup (not timed): the ``qoin bench import`` workload (:func:`qoin.bench.importing.prepare`:
``senders`` funded senders, one setup block revealing their keys, then ``blocks`` blocks of
``txs_per_block`` transfers), every block consensus-valid, as ``qoin bench sync`` builds it. Three
*serving nodes* (``qoin execution`` + ``qoin consensus --serve-execution --p2p-port 0``) are
started on the chain, written offline into their consensus data directories: each consensus client
replays it to its fresh execution client, and the benchmark waits until each execution client's
head is the chain's. So the serving nodes hold the chain before anything is measured, as nodes
that follow the network do.

Measured, one after the other, each with a fresh consensus client (``--p2p-port 0``) to which the
benchmark submits the chain's blocks in order with ``consensus_submitBlock`` (the same RPC path
for both, so the two differ only in how blocks are judged):

* **local**: a fresh ``qoin execution`` process next to it (``--execution``), no peers.
  Judging = the consensus process and its execution process (which executes every block).
* **remote**: ``--remote-execution 3``, no execution client of its own, the three serving nodes
  added with ``consensus_addPeer`` (the measurement starts before, see below). Judging = the
  consensus process alone; the serving nodes answer its engine calls. They already hold every
  block, so its verdict is asked by hash (``engine_getVerdict``, a lookup) and the block is not
  sent: what they spend is the traces, proofs and step records, a signature per answer, and the
  transport. Measured from before the peers are added: they connect and sync the chain to it at
  once (the pool takes them into use for the first block, ``docs/spec/consensus.md`` §6.5), so
  the submission finds most blocks already imported; the three handshakes are counted too.

For each: CPU seconds (user + system, ``/proc/PID/stat``) per block of the judging processes and of
the serving nodes (their consensus and execution processes, all three), from a baseline taken
between two status answers at the same height to the status answer that shows the chain's head;
engine calls and bytes per block (the JSON params and results the consensus client's engine clients
counted, ``consensus_status.engineTraffic``: over HTTP for local, over p2p for remote); what the
serving nodes served (``p2p.engine`` of their status); the wall seconds. Every process shares the
same cores, so the wall time says little; CPU seconds are the figure. The blocks are counted with
the setup block (which reveals ``senders`` public keys).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qoin.bench.importing import prepare
from qoin.bench.sync import (
    Network,
    _consensus_rpc,
    _start_execution,
    _write_chain,
    _write_network,
)
from qoin.bench.timing import BenchmarkCheckFailed, machine_info
from qoin.process import Child, stop_all
from qoin.rpc.client import call

REMOTE_PREFIX = "p2p:"
"""The URL of a remote execution node's engine client starts with this (then its node id)."""
REMOTE_NODES = 3
"""``--remote-execution`` of the remote run; also the number of serving nodes."""
IMPORT_TIMEOUT_S = 300.0
"""How long one run may take to reach the chain's head before the benchmark gives up."""
RPC_TIMEOUT_S = 60.0
"""How long one RPC call to a node may take (they share the cores)."""
REMOTE_IN_USE = r"using remote execution node p2p:"
"""The line it logs when it takes a remote execution node into use."""
POLL_S = 0.1
BASELINE_TRIES = 50
"""Tries at a baseline that no import straddles."""
"""How often the judging node's status is read while it imports."""
READY_TIMEOUT_S = 300.0
"""How long the serving nodes may take to replay the chain to their execution clients."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat`` fields 14 and 15);
    :class:`BenchmarkCheckFailed` if it cannot be read (the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read(4096).decode("ascii", "replace")
        fields = raw.rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError) as exc:
        raise BenchmarkCheckFailed(f"cannot read the CPU time of process {pid}: {exc}") from None
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu(children: Sequence[Child]) -> dict[str, float]:
    """CPU seconds so far of each process, by its name."""
    return {child.name: cpu_seconds(child.proc.pid) for child in children}


def _spent(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 3) for name in after}


@dataclass(frozen=True)
class ServingNode:
    """A node serving its execution client to peers."""

    execution: Child
    consensus: Child
    enode: str
    """``qoin1…@host:port``, for ``consensus_addPeer``."""
    rpc: str
    """Its consensus RPC."""
    user_rpc: str
    """Its execution client's user RPC."""

    @property
    def processes(self) -> tuple[Child, Child]:
        return self.execution, self.consensus


def _start_consensus(
    network: Network, name: str, extra: Sequence[str], children: list[Child]
) -> tuple[Child, str]:
    """A ``qoin consensus`` with p2p on a free port and no peers (added to ``children``), and its
    RPC URL once it serves it."""
    args = ["consensus", "--datadir", str(network.workdir / name / "consensus"),
            *network.files_args(), "--rpc-port", "0", "--p2p-port", "0", *extra]  # fmt: skip
    child = Child.start(f"{name} consensus", args)
    children.append(child)
    return child, _consensus_rpc(child)


def _start_serving(network: Network, index: int, children: list[Child]) -> ServingNode:
    """Serving node ``index`` on the prepared chain (its execution client not yet caught up)."""
    name = f"serve-{index}"
    _write_chain(network.workdir / name / "consensus", network)
    user_url, engine_url = _start_execution(network, name, children)
    execution = children[-1]
    consensus, rpc = _start_consensus(
        network, name, ["--execution", engine_url, "--serve-execution"], children
    )
    _, found, _ = consensus.wait_for(r"p2p: node (\S+)")
    return ServingNode(execution, consensus, found[1], rpc, user_url)


def _wait_caught_up(network: Network, user_urls: Sequence[str]) -> None:
    """Until every serving node's execution client's head is the chain's."""
    height = network.head.header.height
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = list(user_urls)
    while waiting:
        waiting = [
            url for url in waiting if call(url, "qoin_blockNumber", timeout=RPC_TIMEOUT_S) != height
        ]
        if waiting and time.monotonic() > deadline:
            raise BenchmarkCheckFailed("the serving nodes' execution clients did not catch up")
        if waiting:
            time.sleep(POLL_S)


def _wait_head(url: str, network: Network, consensus: Child) -> dict[str, Any]:
    """The judging node's status once its head is the chain's head."""
    head = network.head
    deadline = time.monotonic() + IMPORT_TIMEOUT_S
    while time.monotonic() < deadline:
        status: dict[str, Any] = call(url, "consensus_status", timeout=RPC_TIMEOUT_S)
        if status["height"] == head.header.height and status["head"] == head.block_hash.hex():
            return status
        time.sleep(POLL_S)
    raise BenchmarkCheckFailed(
        f"the judging node did not reach the chain's head in {IMPORT_TIMEOUT_S} s:\n"
        f"{consensus.tail()}"
    )


def _traffic(status: dict[str, Any], remote: bool) -> dict[str, dict[str, int]] | None:
    """The engine traffic counters (``engineTraffic``: calls, bytes sent and received, as JSON)
    of the node's local engine clients, or of its remote ones; None if the status shows none (a
    build without them)."""
    found = status.get("engineTraffic")
    if not isinstance(found, dict):
        return None
    return {
        url: counters
        for url, counters in found.items()
        if str(url).startswith(REMOTE_PREFIX) == remote and isinstance(counters, dict)
    }


def _summed(
    after: dict[str, dict[str, int]] | None, before: dict[str, dict[str, int]] | None
) -> dict[str, int] | None:
    """The counters of every client in ``after`` less those in ``before``, summed."""
    if after is None:
        return None
    keys = ("calls", "bytesSent", "bytesReceived")
    return {
        key: sum(
            int(counters.get(key, 0)) - int((before or {}).get(url, {}).get(key, 0))
            for url, counters in after.items()
        )
        for key in keys
    }


def _wait_lines(consensus: Child, patterns: Sequence[str]) -> None:
    """Until lines matching each of ``patterns`` have come, in turn."""
    after = 0
    for pattern in patterns:
        after = consensus.wait_for(pattern, IMPORT_TIMEOUT_S, after)[0] + 1


def _baseline(
    url: str, judging: Sequence[Child], serving: Sequence[Child]
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """The judging node's status and the CPU seconds of the judging and serving processes, taken
    between two status answers at the same height (so no block is counted on one side only)."""
    for _ in range(BASELINE_TRIES):
        first: dict[str, Any] = call(url, "consensus_status", timeout=RPC_TIMEOUT_S)
        judging_cpu, serving_cpu = _cpu(judging), _cpu(serving)
        second: dict[str, Any] = call(url, "consensus_status", timeout=RPC_TIMEOUT_S)
        if first["height"] == second["height"]:
            return second, judging_cpu, serving_cpu
    raise BenchmarkCheckFailed(f"no baseline between two blocks in {BASELINE_TRIES} tries")


def _submit(url: str, network: Network) -> dict[str, int]:
    """Submit the chain's blocks in order; how many were imported, and how many had come by
    another way (a sync) first. :class:`BenchmarkCheckFailed` for any other answer."""
    outcomes = {"imported": 0, "duplicate": 0}
    for raw, block in zip(network.encoded, network.chain, strict=True):
        answer = call(url, "consensus_submitBlock", raw.hex(), timeout=RPC_TIMEOUT_S)
        status = answer.get("status")
        if status not in outcomes:
            raise BenchmarkCheckFailed(
                f"block {block.header.height}: {status}: {answer.get('reason')}"
            )
        outcomes[status] += 1
    return outcomes


def _judged_run(
    network: Network,
    name: str,
    serving: Sequence[ServingNode],
    start: Callable[[list[Child]], tuple[list[Child], Child, str]],
    peers: Sequence[ServingNode] = (),
    ready: Sequence[str] = (),
) -> dict[str, Any]:
    """One measured import: ``start`` starts the judging processes (added to the list given) and
    returns them, the consensus one and its RPC URL; measured from a baseline taken then, while
    ``peers`` are added to it (which sync the chain to it at once), lines matching ``ready``
    awaited and the chain is submitted, until the node's head is the chain's."""
    children: list[Child] = []
    try:
        judging, consensus, url = start(children)
        serving_processes = [child for node in serving for child in node.processes]
        before, judging_before, serving_before = _baseline(url, judging, serving_processes)
        started = time.perf_counter()
        for peer in peers:
            call(url, "consensus_addPeer", peer.enode, timeout=RPC_TIMEOUT_S)
        _wait_lines(consensus, ready)
        submitted = _submit(url, network)
        status = _wait_head(url, network, consensus)
        seconds = time.perf_counter() - started
        judging_by = _spent(_cpu(judging), judging_before)
        serving_by = _spent(_cpu(serving_processes), serving_before)
    finally:
        stop_all(children)
    judging_cpu, serving_cpu = sum(judging_by.values()), sum(serving_by.values())
    blocks = network.head.header.height - int(before["height"])
    if blocks < 1:
        raise BenchmarkCheckFailed(f"{name}: the chain was imported before the measurement")
    return {
        "name": name,
        "blocks_measured": blocks,
        "submitted": submitted,
        "seconds": round(seconds, 3),
        "judging_cpu_s": round(judging_cpu, 3),
        "serving_cpu_s": round(serving_cpu, 3),
        "judging_cpu_s_per_block": judging_cpu / blocks,
        "serving_cpu_s_per_block": serving_cpu / blocks,
        "judging_cpu_s_by_process": judging_by,
        "serving_cpu_s_by_process": serving_by,
        "judged": status.get("judged"),
        "before": before,
        "status": status,
    }


def _local(network: Network, serving: Sequence[ServingNode]) -> dict[str, Any]:
    def start(children: list[Child]) -> tuple[list[Child], Child, str]:
        _, engine_url = _start_execution(network, "local", children)
        execution = children[-1]
        consensus, url = _start_consensus(network, "local", ["--execution", engine_url], children)
        return [consensus, execution], consensus, url

    run = _judged_run(network, "local", serving, start)
    before, status = run.pop("before"), run.pop("status")
    traffic = _summed(_traffic(status, remote=False), _traffic(before, remote=False))
    return {**run, "engine": _per_block(traffic, run["blocks_measured"])}


def _remote(network: Network, serving: Sequence[ServingNode]) -> dict[str, Any]:
    def start(children: list[Child]) -> tuple[list[Child], Child, str]:
        consensus, url = _start_consensus(
            network, "remote", ["--remote-execution", str(REMOTE_NODES)], children
        )
        return [consensus], consensus, url

    ready = [REMOTE_IN_USE] * REMOTE_NODES
    run = _judged_run(network, "remote", serving, start, serving, ready)
    before, status = run.pop("before"), run.pop("status")
    remote = status.get("remoteExecution") or {}
    using = remote.get("using", [])
    if len(using) != REMOTE_NODES:
        raise BenchmarkCheckFailed(
            f"the remote run ended using {len(using)} remote execution nodes, not "
            f"{REMOTE_NODES}: {remote.get('problem')}"
        )
    after, earlier = _traffic(status, remote=True), _traffic(before, remote=True)
    return {
        **run,
        "engine": _per_block(_summed(after, earlier), run["blocks_measured"]),
        "per_node_calls": {
            url: (_summed({url: counters}, earlier) or {}).get("calls")
            for url, counters in (after or {}).items()
        },
    }


def _per_block(traffic: dict[str, int] | None, blocks: int) -> dict[str, Any]:
    """Engine calls and bytes in all, and per block; or why there are none."""
    if traffic is None:
        return {"missing": "this build's consensus_status shows no engine traffic counters"}
    total = traffic["bytesSent"] + traffic["bytesReceived"]
    return {
        **traffic,
        "bytes": total,
        "bytes_per_block": total / blocks,
        "calls_per_block": traffic["calls"] / blocks,
    }


def _served(serving: Sequence[ServingNode]) -> list[dict[str, Any] | None]:
    """What each serving node's p2p status says it served (``p2p.engine``)."""
    counters: list[dict[str, Any] | None] = []
    for node in serving:
        status = call(node.rpc, "consensus_status", timeout=RPC_TIMEOUT_S)
        counters.append((status.get("p2p") or {}).get("engine"))
    return counters


def run(blocks: int = 12, txs_per_block: int = 200, senders: int = 200) -> dict[str, Any]:
    """The benchmark as one JSON-ready object (see the module docstring)."""
    load_before = os.getloadavg()
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="qoin-bench-shared-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        genesis, encoded = prepare(
            senders, blocks, txs_per_block, workdir / "build", sealed=True,
            network="bench-shared-execution",
        )  # fmt: skip
        network = _write_network(workdir, genesis, encoded)
        setup_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            serving = [_start_serving(network, index, children) for index in range(REMOTE_NODES)]
            _wait_caught_up(network, [node.user_rpc for node in serving])
            ready_s = time.perf_counter() - started
            served_before = _served(serving)
            local = _local(network, serving)
            served_between = _served(serving)
            remote = _remote(network, serving)
            served_after = _served(serving)
        finally:
            stop_all(children)
    height = network.head.header.height
    return {
        "benchmark": "shared-execution",
        "machine": machine_info(),
        "senders": senders,
        "blocks": height,
        "transfer_blocks": blocks,
        "transactions_per_block": txs_per_block,
        "transactions": sum(len(block.transactions) for block in network.chain),
        "chain_bytes": sum(len(raw) for raw in encoded),
        "remote_nodes": REMOTE_NODES,
        "setup_seconds": round(setup_s, 2),
        "serving_nodes_ready_seconds": round(ready_s, 2),
        "local": {**local, "served": _served_between(served_between, served_before)},
        "remote": {**remote, "served": _served_between(served_after, served_between)},
        "ratios": _ratios(local, remote),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
    }


def _served_between(
    after: Sequence[dict[str, Any] | None], before: Sequence[dict[str, Any] | None]
) -> dict[str, int] | None:
    """What the serving nodes together served between two readings of their counters (engine
    requests answered and refused, params bytes in, answer bytes out); None without counters."""
    if any(entry is None for entry in (*after, *before)):
        return None
    keys = ("served", "refused", "bytesIn", "bytesOut")
    return {
        key: sum(int(a[key]) - int(b[key]) for a, b in zip(after, before, strict=True) if a and b)
        for key in keys
    }


def _ratios(local: dict[str, Any], remote: dict[str, Any]) -> dict[str, Any]:
    """Remote over local: the judging side's CPU, the serving side's, and the engine bytes."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    return {
        "judging_cpu": ratio(remote["judging_cpu_s"], local["judging_cpu_s"]),
        "all_cpu": ratio(
            remote["judging_cpu_s"] + remote["serving_cpu_s"],
            local["judging_cpu_s"] + local["serving_cpu_s"],
        ),
        "engine_bytes": ratio(remote["engine"].get("bytes"), local["engine"].get("bytes")),
    }


def table(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    rows = [
        f"shared execution: {report['blocks']} blocks ({report['transfer_blocks']} x "
        f"{report['transactions_per_block']} transfers and a setup block), "
        f"{report['remote_nodes']} serving nodes",
        f"{'':8} {'judging CPU-s/block':>20} {'serving CPU-s/block':>20} "
        f"{'engine kB/block':>16} {'calls/block':>12} {'wall s':>8}",
    ]
    for name in ("local", "remote"):
        entry = report[name]
        engine = entry["engine"]
        kb = f"{engine['bytes_per_block'] / 1000:.1f}" if "bytes" in engine else "—"
        calls = f"{engine['calls_per_block']:.1f}" if "calls" in engine else "—"
        rows.append(
            f"{name:8} {entry['judging_cpu_s_per_block']:>20.4f} "
            f"{entry['serving_cpu_s_per_block']:>20.4f} {kb:>16} {calls:>12} "
            f"{entry['seconds']:>8.2f}"
        )
    for name in ("local", "remote"):
        entry = report[name]
        blocks = entry["blocks_measured"]
        spent = {**entry["judging_cpu_s_by_process"], **entry["serving_cpu_s_by_process"]}
        busy = ", ".join(
            f"{process} {seconds / blocks:.4f}" for process, seconds in spent.items() if seconds
        )
        rows.append(f"{name} CPU-s/block by process: {busy or 'none'}")
    ratios = report["ratios"]
    rows.append(
        "remote / local: judging CPU "
        + (f"{ratios['judging_cpu']:.2f}" if ratios["judging_cpu"] is not None else "—")
        + ", all CPU "
        + (f"{ratios['all_cpu']:.2f}" if ratios["all_cpu"] is not None else "—")
        + ", engine bytes "
        + (f"{ratios['engine_bytes']:.2f}" if ratios["engine_bytes"] is not None else "—")
    )
    return "\n".join(rows)
