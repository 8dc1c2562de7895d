"""``qoin bench ai --json`` in a small configuration (a 3-second direct training of an ``mlp`` on
``sklearn:digits``, the runtime of the ``ai_runtime`` fixture): the command calibrates and runs the
training directly, starts a live network (a node, 2 storage daemons, a mediator and 2 compute
providers offering the runtime), runs the whole ``qoin ai train`` flow with verification none and
replicated, stops every process, and prints a report with every documented figure, consistent
with itself: the phases add up, the replicas' roots are equal and the direct run's model is byte
for byte the network's. The timings themselves are not judged (a shared machine)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qoin.ai.runtime import RuntimeInfo
from qoin.bench import ai
from tests.aiutil import ai_runtime  # noqa: F401 (the fixture)
from tests.cliutil import run_qoin

pytestmark = pytest.mark.slow

PHASES = (
    "match", "staging", "sandbox_start", "run", "hashing", "settlement", "outputs", "model_store",
)  # fmt: skip


def _network_run(run: dict[str, Any], direct: dict[str, Any], replicas: int) -> None:
    assert len(run["providers"]) == replicas and len(run["roots"]) == replicas
    phases = run["phases_s"]
    assert tuple(phases) == PHASES
    assert all(value >= 0 for value in phases.values()), phases
    assert sum(phases.values()) == pytest.approx(run["total_s"])
    assert sum(run["match_s"].values()) == pytest.approx(phases["match"])
    assert run["until_saved_s"] == pytest.approx(run["total_s"] - phases["model_store"])
    assert run["direct_s"] == direct["wall_s"]
    assert run["overhead"] == pytest.approx((run["total_s"] - direct["wall_s"]) / direct["wall_s"])
    provider = run["provider_s"]
    assert provider["run"] == pytest.approx(phases["run"] + run["program_start_s"])
    assert run["train_s"] == pytest.approx(phases["run"]) and run["train_s"] > 0
    assert provider["upload"] > 0 and run["model_storage_deal"] > 0
    assert run["samples_per_s"] > 0 and len(run["job_cpu_s"]) == replicas
    assert run["model_sha256"] == direct["model_sha256"]
    assert run["model_bytes"] == direct["model_bytes"]
    assert (run["loss"], run["testLoss"], run["accuracy"]) == (
        direct["loss"], direct["testLoss"], direct["accuracy"],
    )  # fmt: skip
    assert run["blocks_formed_to_settled"] > 0 and run["cost"]["paid"] > 0


def test_bench_ai_json(ai_runtime: RuntimeInfo) -> None:  # noqa: F811 (the fixture)
    result = run_qoin(
        "bench", "ai", "--json", "--seconds", "3", "--runtime", str(ai_runtime.path), timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "network: the mlp training" in result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["benchmark"] == "ai" and report["machine"]["cpus"] >= 1
    params = report["parameters"]
    assert (params["seconds"], params["arch"], params["dataset"]) == (3, "mlp", "sklearn:digits")
    assert params["runtime"]["ref"] == ai_runtime.ref and params["threads"] == 1
    calibration = report["calibration"]
    assert calibration["epochs"] == params["epochs"] >= 1 and calibration["per_epoch_s"] > 0
    probes = calibration["probes"]
    assert probes[0]["epochs"] == 2 and probes[-1]["epochs_span_s"] > 0
    dataset = report["dataset"]
    assert dataset["bytes"] == dataset["local_bytes"] and dataset["task"] == "classification"
    assert dataset["samples"] == 1797 and len(dataset["cid"]) == 64
    direct = report["direct"]
    assert direct["epochs"] == params["epochs"] and direct["wall_s"] > direct["train_s"] > 0
    assert direct["cpu_s"] > 0 and direct["samples_per_s"] > direct["samples_per_s_wall"] > 0
    assert direct["train_samples"] == dataset["samples"] - dataset["test"]
    assert 0 < direct["accuracy"] <= 1
    none, replicated = report["network"]["none"], report["network"]["replicated"]
    _network_run(none, direct, 1)
    _network_run(replicated, direct, 2)
    assert (none["verification"], replicated["verification"]) == ("none", "replicated")
    overhead = report["overhead"]
    assert overhead["ratio"] == none["overhead"] and overhead["goal"] == ai.OVERHEAD_GOAL
    assert overhead["goal_met"] == (overhead["ratio"] <= ai.OVERHEAD_GOAL)
    verification = report["verification"]
    assert verification["roots_equal"] and verification["root_equals_none"]
    assert verification["adds_s"] == pytest.approx(replicated["total_s"] - none["total_s"])
    assert report["models_identical"] is True
    lines = ai.table(report).splitlines()
    assert lines[1].startswith("direct: ") and lines[2].startswith("network, verify none: ")
