"""Run every ``qoin bench`` benchmark and print one JSON document with all figures."""

from __future__ import annotations

import json
import sys
import time

from qoin.process import Child, Output

BENCHMARKS = ("crypto", "pow", "import", "sampling", "sync")
BENCHMARK_TIMEOUT_S = 3600.0
"""How long one benchmark may run before it is stopped."""


def main() -> int:
    """Run the benchmarks one after another (never in parallel: they measure the cores)."""
    results = {}
    for name in BENCHMARKS:
        child = Child.start(name, ["bench", name, "--json"], Output(split=True))
        try:
            code = child.finish(time.monotonic() + BENCHMARK_TIMEOUT_S)
        finally:
            child.stop()
        lines = child.collect()
        if code != 0:
            print("".join(line.text for line in lines if line.stderr), file=sys.stderr)
            return code if code > 0 else 1
        results[name] = json.loads("".join(line.text for line in lines if not line.stderr))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
