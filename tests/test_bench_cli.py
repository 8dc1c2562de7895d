"""``qoin bench`` commands run end to end and print the documented JSON (figures are not judged)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qoin.bench.contracts import table
from qoin.bench.storage import table as storage_table
from tests.cliutil import run_qoin


@pytest.mark.slow
def test_bench_crypto_json() -> None:
    result = run_qoin(
        "bench", "crypto", "--json", "--seconds", "0.1", "--suite", "falcon512+mldsa44", timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (suite,) = report["suites"]
    assert suite["suite"] == "falcon512+mldsa44"
    for key in ("sign_per_s", "verify_per_s"):
        figures = suite[key]
        assert figures["qoin"] > 0 and figures["raw"] > 0
        assert abs(figures["ratio"] - figures["qoin"] / figures["raw"]) < 1e-9
    parallel = report["parallel_verify"]
    assert parallel["workers"] >= 1
    assert parallel["speedup"] > 0


def test_bench_unknown_suite_is_a_clear_error() -> None:
    result = run_qoin("bench", "crypto", "--suite", "nope", timeout=60)
    assert result.returncode == 2
    assert "unknown signature suite" in result.stderr


def test_bench_sampling_json() -> None:
    result = run_qoin(
        "bench",
        "sampling",
        "--json",
        "--senders",
        "8",
        "--blocks",
        "2",
        "--txs-per-block",
        "8",
        "--samples",
        "4",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "sampling"
    assert report["samples"] == 4
    assert report["transactions"] == 16
    assert report["sampled_keys_per_block"] == 4
    assert report["touched_keys_per_block"] >= 4
    assert report["peak_rss_bytes"] > 0
    assert report["machine"]["cpus"] >= 1
    for path in ("sampling", "stateless"):
        figures = report[path]
        assert figures["mean_ms"] > 0 and figures["min_ms"] > 0
        assert figures["min_ms"] <= figures["mean_ms"]
        assert len(figures["per_block_mean_ms"]) == 2
        assert figures["bytes_fetched_mean"] > 0
    ratio = report["stateless"]["mean_ms"] / report["sampling"]["mean_ms"]
    assert abs(report["ratio"] - ratio) < 1e-9


def test_bench_sampling_refuses_too_many_samples() -> None:
    result = run_qoin("bench", "sampling", "--samples", "100000", timeout=60)
    assert result.returncode == 2
    assert "--samples must be at most" in result.stderr


@pytest.mark.slow
def test_bench_sync_json() -> None:
    result = run_qoin(
        "bench", "sync", "--json", "--blocks", "3", "--txs", "20", "--senders", "10",
        "--rounds", "1", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "sync"
    assert report["blocks"] == 4  # the setup block revealing the senders' keys, then 3
    assert report["transactions"] == 10 + 3 * 20
    assert report["machine"]["cpus"] >= 1
    synced = report["sync"]
    assert synced["height"] == report["blocks"]  # the synced node reached the chain's head
    assert len(synced["head"]) == 64
    assert synced["judged"]["sampled"] + synced["judged"]["stateless"] == report["blocks"]
    assert synced["p2p"]["syncs"] >= 1
    for path in ("local_import", "sync"):
        figures = report[path]
        assert len(figures["runs_seconds"]) == 1
        assert figures["blocks_per_s"] > 0 and figures["tx_per_s"] > 0
        assert abs(figures["tx_per_s"] / figures["blocks_per_s"] - 70 / 4) < 1e-6
    ratio = synced["blocks_per_s"] / report["local_import"]["blocks_per_s"]
    assert abs(report["ratio"] - ratio) < 1e-9
    assert report["goal"] == 0.8
    assert report["met"] == (report["ratio"] >= 0.8)


@pytest.mark.slow
def test_bench_contracts_json() -> None:
    result = run_qoin(
        "bench", "contracts", "--json", "--senders", "3", "--blocks", "1",
        "--txs-per-block", "6", "--sampling-txs-per-block", "9", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "contracts"
    assert report["transactions"] == 6
    assert report["machine"]["cpus"] >= 1
    assert report["peak_rss_bytes"] > 0
    imports = report["import"]
    assert set(imports) == {"transfer", "counter", "token", "names"}
    for figures in imports.values():
        assert figures["tx_per_s"] > 0
        assert len(figures["runs_tx_per_s"]) == report["rounds"]
    assert imports["transfer"]["gas_per_tx"] == 21_000
    assert imports["counter"]["gas_per_tx"] > 21_000  # the calls ran: they paid for storage
    for name, goal in (("counter", 0.5), ("token", 0.5), ("names", 0.8)):
        ratio = report["ratios"][f"{name}_to_transfer"]
        expected = imports[name]["tx_per_s"] / imports["transfer"]["tx_per_s"]
        assert abs(ratio["ratio"] - expected) < 1e-9
        assert ratio["goal"] == goal
        assert ratio["goal_met"] == (ratio["ratio"] >= goal)
    wasm = report["wasm"]
    assert wasm["spin_gas_per_s"] > 0 and wasm["counter_call_us"] > 0
    assert wasm["counter_gas_per_call"] > 0
    sampling = report["sampling"]
    assert sampling["samples"] == 16
    for path in ("sampling", "stateless"):
        assert 0 < sampling[path]["min_ms"] <= sampling[path]["mean_ms"]
    assert sampling["sampling"]["mean_ms"] <= sampling["sampling"]["worst_ms"]
    ratio = sampling["stateless"]["mean_ms"] / sampling["sampling"]["mean_ms"]
    assert abs(sampling["ratio"] - ratio) < 1e-9
    assert sampling["goal_met"] == (sampling["ratio"] >= 10)
    # Without --json the same figures print as a small table.
    lines = table(report).splitlines()
    assert lines[2].split() == ["workload", "tx/s", "gas/tx", "vs", "transfer", "goal", "met"]
    assert [line.split()[0] for line in lines[3:7]] == ["transfer", "counter", "token", "names"]
    assert any(line.startswith("sampling k=16") for line in lines)


def storage_report(*extra: str, timeout: float) -> dict[str, Any]:
    """``qoin bench storage --json`` on a 1 MiB file (set up, proved, stored and retrieved on a
    live node with 3 provider daemons); the report, checked for the keys every run has."""
    result = run_qoin(
        "bench", "storage", "--json", "--size-mib", "1", "--proofs", "5",
        "--shards-per-provider", "70", "--rounds", "1", "--retrieval-mib", "1", *extra,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "starting 3 storage provider daemons" in result.stderr  # progress goes to stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["benchmark"] == "storage"
    assert (report["size_bytes"], report["n"], report["k"]) == (1 << 20, 4, 2)
    assert report["machine"]["cpus"] >= 1 and report["peak_rss_bytes"] > 0
    assert report["sha3"]["mb_per_s"] > 0
    assert report["setup"]["one_core"]["s_per_gib"] > 0
    assert report["setup"]["two_cores"]["s_per_gib"] > 0
    assert report["proofs"]["count"] == 5 and report["proofs"]["verify_us_median"] > 0
    assert report["chain"]["shards_per_provider"] == 70
    retrieval = report["retrieval"]
    assert retrieval["file_bytes"] == 1 << 20
    assert (retrieval["n"], retrieval["k"], retrieval["rounds"]) == (2, 1, 1)
    assert retrieval["stored_bytes"] > retrieval["file_bytes"]  # encrypted: nonce and tag
    assert retrieval["bytes_per_retrieval"] == retrieval["shard_size"] >= retrieval["stored_bytes"]
    assert retrieval["goal"] == 0.5
    for cache in ("cold", "warm"):
        figures = retrieval[cache]
        for what in ("disk", "verified_disk", "download", "stream"):
            assert figures[f"{what}_mb_per_s"] > 0
        ratio = figures["download_mb_per_s"] / figures["disk_mb_per_s"]
        assert abs(figures["ratio"] - ratio) < 1e-9
        assert figures["goal_met"] == (figures["ratio"] >= 0.5)
    return report


@pytest.mark.slow
def test_bench_storage_json_without_repair() -> None:
    report = storage_report("--no-repair", timeout=180)
    assert "repair" not in report
    lines = storage_table(report).splitlines()
    assert any(line.startswith("retrieval (cold cache)") for line in lines)
