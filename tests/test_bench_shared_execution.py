"""``qoin bench shared-execution`` runs end to end at a tiny size and prints the documented JSON
(the figures are not judged: the machine is shared)."""

from __future__ import annotations

import json
import os

import pytest

from qoin.bench.shared_execution import REMOTE_NODES, cpu_seconds, table
from tests.cliutil import run_qoin


def test_cpu_seconds_of_this_process() -> None:
    spent = cpu_seconds(os.getpid())
    sum(range(200_000))  # some CPU
    assert cpu_seconds(os.getpid()) >= spent >= 0


@pytest.mark.slow
def test_bench_shared_execution_json() -> None:
    result = run_qoin(
        "bench",
        "shared-execution",
        "--json",
        "--blocks",
        "2",
        "--txs",
        "4",
        "--senders",
        "4",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "shared-execution"
    assert report["blocks"] == 3  # the setup block and 2 blocks of transfers
    assert report["transactions"] == 4 + 2 * 4
    assert report["remote_nodes"] == REMOTE_NODES
    for name in ("local", "remote"):
        run = report[name]
        blocks = run["blocks_measured"]
        assert 1 <= blocks <= 3
        assert run["judging_cpu_s"] > 0
        assert run["serving_cpu_s"] >= 0
        assert run["judging_cpu_s_per_block"] == pytest.approx(
            run["judging_cpu_s"] / blocks, rel=0.05, abs=1e-3
        )
        assert sum(run["judged"].values()) >= 3  # every block judged (sampled or re-executed)
        engine = run["engine"]
        assert engine["calls"] >= blocks and engine["bytes"] > 0, engine
    # The remote run judged with the three nodes (one that connected after the sync began is
    # asked about the blocks from then on only: docs/spec/consensus.md §6.5).
    per_node = report["remote"]["per_node_calls"]
    assert len(per_node) == REMOTE_NODES
    assert all(url.startswith("p2p:qoin1") for url in per_node)
    assert all(calls >= 1 for calls in per_node.values()), per_node
    assert max(per_node.values()) >= report["remote"]["blocks_measured"], per_node
    # The serving nodes answered engine calls during the remote run only.
    assert report["local"]["served"]["served"] == 0
    assert report["remote"]["served"]["served"] >= sum(per_node.values())
    assert "judging CPU-s/block" in table(report)
