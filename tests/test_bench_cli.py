"""``qoin bench crypto`` runs end to end and prints the documented JSON (figures are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_crypto_json() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qoin",
            "bench",
            "crypto",
            "--json",
            "--seconds",
            "0.1",
            "--suite",
            "falcon512+mldsa44",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
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
    result = subprocess.run(
        [sys.executable, "-m", "qoin", "bench", "crypto", "--suite", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown signature suite" in result.stderr
