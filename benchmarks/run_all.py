"""Run every ``qoin bench`` benchmark and print one JSON document with all figures."""

from __future__ import annotations

import json
import subprocess
import sys

BENCHMARKS = ("crypto", "pow", "import", "sampling", "sync")


def main() -> int:
    """Run the benchmarks one after another (never in parallel: they measure the cores)."""
    results = {}
    for name in BENCHMARKS:
        done = subprocess.run(
            [sys.executable, "-m", "qoin", "bench", name, "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        results[name] = json.loads(done.stdout)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
