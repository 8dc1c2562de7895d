"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

from qoin.errors import QoinError


class BenchmarkCheckFailed(QoinError):
    """Something that must hold on a benchmark's workload did not: the figures would be void."""


def rate(fn: Callable[[], object], seconds: float, min_calls: int = 3) -> float:
    """Calls per second of ``fn``, running at least ``min_calls`` times and about ``seconds``."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while calls < min_calls or time.perf_counter() < deadline:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def best_rates(
    fns: dict[str, Callable[[], object]], seconds: float, rounds: int = 3
) -> dict[str, float]:
    """Best rate of each function over ``rounds`` interleaved rounds (so drift hits all alike)."""
    best = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = max(best[name], rate(fn, seconds / rounds))
    return best


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
