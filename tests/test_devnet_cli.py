"""``qoin devnet``: real nodes (a ``qoin execution`` and a ``qoin consensus`` process each) over p2p
on 127.0.0.1. With ``--blocks K --json`` it exits 0 once every node is at height K or more and all
agree on the head, and prints a summary; without ``--blocks`` a SIGINT stops it cleanly. No process
it started outlives it. Every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from qoin.chain.chain import STORE_FILE, Chain
from qoin.chain.store import BlockStore
from qoin.chain.transaction import sign_transfer
from qoin.node.devnet import read_store, reorg_depth
from qoin.process import ChildFailed, Output
from qoin.storage.market import MarketView
from tests.chainutil import mine_template, test_genesis
from tests.cliutil import DEVNET_PASSWORD, run_qoin
from tests.framework import FUNDED, Network, read_to_end, wait_until
from tests.keys import keypair_for
from tests.test_chain import FAR_FUTURE, grow, template
from tests.test_node_cli import write_easy_genesis

RUN_S = 150.0
SMALL = ("--nodes", "2", "--miners", "1")
"""Two nodes, one mining: transfers go to the other one, so they reach the miner by gossip."""
VIEW = re.compile(r"n0\* h=(\d+) [0-9a-f]{8} p=(\d+)")
TEMP_DIR = re.compile(r"data in (\S+); Ctrl-C stops")
EASIER = 32
"""Attempts a block of the genesis the tests with a data directory use (the built-in devnet's, which
``test_sigint_stops_every_process`` runs, take ~500: seconds a block)."""


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """Every process below ``pid`` with its start time."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                parents.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found, todo = {}, [pid]
    while todo:
        for child, start in parents.get(todo.pop(), []):
            found[child] = start
            todo.append(child)
    return found


def _alive(pid: int, start_time: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start_time and stat[0] not in ("Z", "X")


class Devnet:
    """A running ``qoin devnet`` (a :class:`qoin.process.Child`: it stops if this test process
    dies): its stderr lines as they come, and every process seen below it."""

    def __init__(self, net: Network, *args: str) -> None:
        self.child = net.spawn("devnet", ["devnet", *args], Output(split=True))
        self.proc = self.child.proc
        self.seen: dict[int, int] = {}
        self._after = 0
        """Index of the first of the devnet's lines :meth:`watch_until` has not looked at."""

    @property
    def stderr(self) -> list[str]:
        return [line.text for line in self.child.collect() if line.stderr]

    @property
    def stdout(self) -> list[str]:
        return [line.text for line in self.child.collect() if not line.stderr]

    def watch_until(self, pattern: re.Pattern[str], timeout: float = RUN_S) -> re.Match[str]:
        """Note the processes below the devnet until a stderr line matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.seen.update(_descendants(self.proc.pid))
            try:
                found = self.child.poll_for(pattern.pattern, 0.2, self._after)
            except ChildFailed:  # the output ended
                raise AssertionError("".join(self.stderr)) from None
            if found is not None:
                self._after = found[0] + 1
                if self.child.seen[found[0]].stderr:
                    return found[1]
        raise AssertionError(f"no line matching {pattern.pattern!r}:\n{''.join(self.stderr)}")

    def finish(self, timeout: float = RUN_S) -> int:
        """Note the processes below the devnet until it exits (killed after ``timeout``); its
        exit status, once its output is read to the end."""
        deadline = time.monotonic() + timeout
        while self.child.exited() is None and time.monotonic() < deadline:
            self.seen.update(_descendants(self.proc.pid))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.2)
        code = self.child.finish(time.monotonic())
        read_to_end(self.child)
        return code

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads("".join(self.stdout))
        return result

    def assert_nothing_left(self) -> None:
        """Every execution, consensus and miner process is gone."""
        # two clients per node, and the miners' worker processes
        assert len(self.seen) >= 5, self.seen
        wait_until(lambda: not any(_alive(p, t) for p, t in self.seen.items()), timeout=5)


def easier_datadir(net: Network) -> Path:
    """A devnet data directory holding the devnet genesis made easier to mine (a block in a
    fraction of a second instead of seconds), which ``qoin devnet`` uses as a restart would."""
    datadir = net.workdir / "devnet"
    datadir.mkdir()
    write_easy_genesis(datadir / "genesis.json", attempts=EASIER)
    return datadir


@pytest.mark.slow
def test_blocks_json_agrees_and_leaves_nothing(net: Network) -> None:
    datadir = easier_datadir(net)
    started = time.monotonic()
    devnet = Devnet(net, *SMALL, "--blocks", "6", "--json", "--datadir", str(datadir))
    assert devnet.finish() == 0, "".join(devnet.stderr)
    wall = time.monotonic() - started
    devnet.assert_nothing_left()
    summary = devnet.summary()
    assert summary["agree"] is True
    assert summary["height"] >= 6
    assert [n["node"] for n in summary["nodes"]] == [0, 1]
    assert [n["mining"] for n in summary["nodes"]] == [True, False]
    for node in summary["nodes"]:
        assert (node["head"], node["height"]) == (summary["head"], summary["height"])
        assert node["peers"] == 1
        assert node["blocks_stored"] == node["height"] + 1 + node["side_blocks"]
    assert isinstance(summary["side_blocks"], int) and isinstance(summary["reorgs"], int)
    assert summary["transactions_included"] > 0, summary
    assert summary["transactions_sent"] >= summary["transactions_included"]
    assert 0 < summary["seconds"] <= wall
    assert summary["datadir"] == str(datadir)
    stderr = "".join(devnet.stderr)
    assert "Traceback" not in stderr
    assert VIEW.search(stderr), stderr  # the live view (on stderr, as stdout holds the JSON)
    # The data directory was kept: the logs of every process and the shared genesis.
    assert (datadir / "genesis.json").is_file()
    for index in (0, 1):
        assert "stopped at height" in (datadir / f"node{index}" / "consensus.log").read_text()
        assert (datadir / f"node{index}" / "execution.log").is_file()


@pytest.mark.slow
def test_sigint_stops_every_process(net: Network) -> None:
    devnet = Devnet(net, *SMALL, "--json")
    datadir = Path(devnet.watch_until(TEMP_DIR)[1])
    # running once node 0 has its peer and a block
    devnet.watch_until(re.compile(r"n0\* h=[1-9]\d* [0-9a-f]{8} p=1"))
    devnet.proc.send_signal(signal.SIGINT)
    assert devnet.finish(60) == 0, "".join(devnet.stderr)
    devnet.assert_nothing_left()
    stderr = "".join(devnet.stderr)
    assert "stopping (signal)" in stderr and "Traceback" not in stderr
    summary = devnet.summary()
    assert summary["interrupted"] is True and summary["error"] is None
    assert all(node["height"] is not None for node in summary["nodes"]), summary
    assert summary["datadir"] is None
    assert not datadir.exists()  # the temporary data directory is removed


@pytest.mark.slow
def test_storage_providers_are_started_described_and_stopped(net: Network) -> None:
    """``--storage-providers 2``: two provider daemons, funded, with asks on chain at the
    endpoints ``devnet.json`` gives; the client keystore it names can use them (a dry run); the
    providers stop with the devnet."""
    datadir = easier_datadir(net)
    devnet = Devnet(net, *SMALL, "--storage-providers", "2", "--datadir", str(datadir))
    path = Path(devnet.watch_until(re.compile(r"devnet description: (\S+)"))[1])
    described = json.loads(path.read_text())
    providers = described["storage_providers"]
    assert [p["name"] for p in providers] == ["provider0", "provider1"]
    rpc = described["nodes"][0]["rpc"]
    assert [n["name"] for n in described["nodes"]] == ["node0", "node1"]
    ui = described["nodes"][0]["ui"]  # every node serves the web UI, node 0's URL printed
    assert devnet.watch_until(re.compile(r"web UI \(node0\): (\S+)"))[1] == ui
    assert "Explorer" in httpx.get(ui, timeout=30).text
    wallets = list((datadir / "keystore").glob("*.json"))  # the UIs' wallets: the client key
    assert wallets and all(w.stat().st_mode & 0o777 == 0o600 for w in wallets), wallets
    with MarketView(rpc) as view:
        asks = {str(ask.provider): ask for ask in view.asks()}
    for provider in providers:
        ask = asks[provider["address"]]
        assert ask.active and ask.endpoint == provider["endpoint"]
        assert provider["url"] == f"http://{provider['endpoint']}"
        assert Path(provider["datadir"]).is_dir() and _proc_stat(provider["pid"]) is not None
    sample = net.workdir / "sample.bin"
    sample.write_bytes(bytes(range(256)) * 64)
    dry = run_qoin(
        "storage", "put", str(sample), "--dry-run", "--json", "--key", described["keystore"],
        "--rpc", rpc,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert {offer["provider"] for offer in plan["offers"]} == set(asks)
    assert plan["enough"] is True and plan["cost"] > 0
    assert Path(described["password_file"]).read_text().strip() == DEVNET_PASSWORD
    devnet.proc.send_signal(signal.SIGINT)
    assert devnet.finish(60) == 0, "".join(devnet.stderr)
    devnet.assert_nothing_left()
    assert all(p["pid"] in devnet.seen for p in providers)  # and so gone, as checked above


@pytest.mark.slow
def test_remote_nodes_judge_with_the_nodes_execution_clients(net: Network) -> None:
    """``--remote-nodes 1`` (implies ``--serve-execution``): every node serves its execution client,
    and a mining consensus client with none of its own judges with theirs (``--remote-execution``,
    two on a two-node devnet); ``devnet.json`` lists it, the live view shows the nodes it uses, and
    all agree at the end."""
    datadir = easier_datadir(net)
    args = ("--remote-nodes", "1", "--blocks", "4", "--json", "--datadir", str(datadir))
    devnet = Devnet(net, *SMALL, *args)
    assert devnet.finish() == 0, "".join(devnet.stderr)
    devnet.assert_nothing_left()
    summary = devnet.summary()
    assert summary["agree"] is True and summary["height"] >= 4, summary
    assert [(n["name"], n["remote"], n["mining"]) for n in summary["nodes"]] == [
        ("node0", False, True), ("node1", False, False), ("remote0", True, True)
    ]  # fmt: skip
    described = json.loads((datadir / "devnet.json").read_text())
    assert [n["serves_execution"] for n in described["nodes"]] == [True, True]
    (remote,) = described["remote_nodes"]
    assert remote["name"] == "remote0" and remote["remote_execution"] == 2, remote
    assert remote["enode"].startswith("qoin1") and remote["consensus_rpc"].startswith("http://")
    stderr = "".join(devnet.stderr)
    assert re.search(r"r0\* h=\d+ [0-9a-f]{8} p=2 x=2/2", stderr), stderr
    assert "stopped at height" in (datadir / "remote0" / "consensus.log").read_text()


def test_more_miners_than_nodes_is_refused() -> None:
    result = run_qoin("devnet", "--nodes", "2", "--miners", "3")
    assert result.returncode == 2
    assert "--miners 3 is more than --nodes 2" in result.stderr


def test_store_report_counts_side_blocks_reorgs_and_transactions(tmp_path: Path) -> None:
    """The summary reads a stopped node's store: a 3-block branch replaced by a 5-block one is one
    reorg of depth 3 and three side blocks; transactions are counted on the canonical chain."""
    chain = Chain.open(tmp_path / "main", test_genesis())
    shared = grow(chain, 2)
    short = grow(chain, 3, keypair_for(index=0))
    other = Chain.open(tmp_path / "other", test_genesis())
    for block in shared:
        other.import_block(block, now_ms=FAR_FUTURE)
    paid = sign_transfer(FUNDED, chain_id=4242, nonce=0, recipient=keypair_for(index=3).address,
                         amount=5, fee=1)  # fmt: skip
    longer = [mine_template(template(other, transactions=[paid]))]
    other.import_block(longer[0], now_ms=FAR_FUTURE)
    longer += grow(other, 4, keypair_for(index=1))
    other.close()
    for block in longer:
        chain.import_block(block, now_ms=FAR_FUTURE)
    chain.close()
    tip = longer[-1].block_hash.hex()
    assert reorg_depth_of(tmp_path / "main", short[-1].block_hash.hex(), tip) == 3
    assert reorg_depth_of(tmp_path / "main", shared[-1].block_hash.hex(), tip) == 0
    polled = [(b.block_hash.hex(), b.header.height) for b in (shared[0], short[-1], longer[2])]
    report = read_store(tmp_path / "main", test_genesis(), polled)
    assert (report.head, report.height) == (tip, 7)
    assert len(report.hashes) == 1 + 2 + 3 + 5
    assert len(report.hashes - set(report.canonical)) == 3
    assert report.reorgs == 1  # shared[0] -> short tip extends; short tip -> longer[2] does not
    assert report.transactions == 1


def reorg_depth_of(datadir: Path, old: str, new: str) -> int:
    store = BlockStore.open(datadir / STORE_FILE, test_genesis())
    try:
        return reorg_depth(store, old, new)
    finally:
        store.close()
