"""``qoin bench compute --json`` in its smallest configuration (a 0.05 CPU-second job, a 1 MiB
output, one trivial job, the sandbox only): the command runs the executor part and the whole market
on a live network (a node, 2 storage daemons, 2 honest compute providers, a cheating one and a
mediator), stops every process, and prints a report with every documented figure, consistent with
itself. The figures themselves are not judged (timings on a shared machine)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qoin.bench import compute
from tests.cliutil import run_qoin

pytestmark = pytest.mark.slow

WORKLOADS = ("trivial", "cpu", "output")


def _market_deal(deal: dict[str, Any], verification: str, replicas: int) -> None:
    assert deal["verification"] == verification and len(deal["providers"]) == replicas
    phases = deal["phases_s"]
    assert set(phases) >= {"match", "staging", "sandbox_start", "run", "hashing", "settlement"}
    assert sum(phases.values()) == pytest.approx(deal["total_s"])
    assert sum(deal["match_s"].values()) == pytest.approx(phases["match"])
    assert deal["overhead_s"] == pytest.approx(deal["total_s"] - deal["direct_s"])
    assert deal["overhead_vs_one_core_s"] == pytest.approx(
        deal["total_s"] - deal["direct_one_core_s"]
    )
    assert phases["sandbox_start"] > 0 and phases["run"] >= 0 and deal["upload_s"] > 0
    heights = deal["heights"]
    assert heights["DealFormed"] <= heights["ResultCommitted"]["0"]
    assert heights["ResultCommitted"]["0"] < heights["ResultRevealed"]["0"]
    assert heights["ResultRevealed"]["0"] <= heights["DealSettled"]
    assert deal["blocks_formed_to_settled"] == heights["DealSettled"] - heights["DealFormed"]
    assert set(heights["ProviderPaid"]) == {str(i) for i in range(replicas)}
    assert deal["cost"]["paid"] > 0
    cpu = deal["cpu"]
    assert cpu["jobs_cpu_s"] > 0 and cpu["daemons_cpu_s"] >= 0
    assert cpu["total_cpu_s"] == pytest.approx(cpu["jobs_cpu_s"] + cpu["daemons_cpu_s"])
    assert sum("job_s" in daemon for daemon in cpu["per_daemon"].values()) == replicas


def test_bench_compute_json() -> None:
    result = run_qoin(
        "bench", "compute", "--json", "--cpu-seconds", "0.05", "--output-mib", "1",
        "--repeat", "1", "--executors", "sandbox", timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "market: the trivial job replicated on compute0 and cheater0" in result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["benchmark"] == "compute" and report["machine"]["cpus"] >= 1
    params = report["parameters"]
    assert (params["cpu_seconds"], params["output_mib"], params["repeat"]) == (0.05, 1, 1)
    assert params["cpu_job_bytes"] >= 1 << 20 and params["cpu_job_bytes"] % (1 << 20) == 0
    # 1. Start overhead: the sandbox only, judged against 50 ms.
    (name, start), *others = report["start_overhead"].items()
    assert name == "sandbox" and not others and start["available"] is True
    assert start["repeat"] == 1 and start["job_ms_median"] > 0 and start["goal_ms"] == 50
    assert start["goal_met"] == (start["overhead_ms_median"] < 50)
    # 2. The three jobs in the sandbox alone, then through the market, against running directly.
    for workload in WORKLOADS:
        alone = report["executor_only"][workload]
        assert alone["direct_s"] > 0 and alone["direct_one_core_s"] > 0
        assert alone["job_s"] > 0 and alone["hash_s"] >= 0
        assert alone["overhead_s"] == pytest.approx(
            alone["job_s"] + alone["hash_s"] - alone["direct_s"]
        )
        deal = report["market"]["jobs"][workload]
        _market_deal(deal, "none", 1)
        assert deal["direct_s"] == alone["direct_s"]
        assert deal["direct_one_core_s"] == alone["direct_one_core_s"]
    output = report["market"]["jobs"]["output"]
    assert output["archive_bytes"] > 1 << 20
    # 3. Replicated against none, the cpu job.
    replicated = report["replicated"]
    _market_deal(replicated["deal"], "replicated", 2)
    assert replicated["none_cpu_s"] == report["market"]["jobs"]["cpu"]["cpu"]["total_cpu_s"]
    assert replicated["ratio"] == pytest.approx(
        replicated["replicated_cpu_s"] / replicated["none_cpu_s"]
    )
    assert replicated["goal"] == 2.2 and replicated["goal_met"] == (replicated["ratio"] <= 2.2)
    # 4. The cheater: revealed, then fined by the mediator's verdict.
    cheater = report["cheater"]
    assert cheater["misbehave"] == "random-output"
    assert cheater["revealed_height"] < cheater["fined_height"]
    assert cheater["blocks"] == cheater["fined_height"] - cheater["revealed_height"]
    assert cheater["heights"]["Verdict"] == cheater["fined_height"]
    assert cheater["seconds"] is None or cheater["seconds"] > 0
    during = report["machine_during_run"]
    assert during["seconds"] > 0 and during["benchmark_cpu_s"] > 0
    lines = compute.table(report).splitlines()
    assert lines[1].startswith("sandbox start overhead: median")
    assert any(line.startswith("cheater: revealed at height") for line in lines)
