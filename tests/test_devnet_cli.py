"""``qoin devnet --blocks K`` mines K validated blocks with a real miner process and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys


def test_devnet_mines_blocks_and_exits() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qoin",
            "devnet",
            "--blocks",
            "3",
            "--block-time-ms",
            "300",
            "--workers",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    heads = [line for line in lines if line.startswith("new head")]
    assert [h.split()[2] for h in heads] == ["height=1", "height=2", "height=3"]
    summary = json.loads(lines[-1])
    assert summary["height"] == 3
    assert summary["blocks_mined"] == 3
    assert summary["attempts"] >= 3
    assert len(summary["head"]) == 64
