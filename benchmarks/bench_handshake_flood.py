"""Mining rate of a `qoin node --dev --mine --p2p-port 0` before and during a flood of forced
inbound handshakes from 127.0.0.1 (bounded: PHASE_S seconds, CONCURRENCY connections at a time),
printed as JSON. `NODE_SRC=DIR` runs the node from another source tree (e.g. an older commit's
`src`, checked out with `git worktree`) to compare.

    .venv/bin/python benchmarks/bench_handshake_flood.py
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qoin.chain import genesis as genesis_mod
from qoin.crypto.hybrid import generate_keypair
from qoin.p2p.transport import NetworkId, TransportError, connect
from qoin.process import Child, Output

PHASE_S = 25.0
CONCURRENCY = 16
RATE = re.compile(r"attempts/s=([\d,]+)")


def rates(child: Child, after: int) -> tuple[list[float], int]:
    lines = child.collect()
    found = [
        float(m[1].replace(",", "")) for line in lines[after:] if (m := RATE.search(line.text))
    ]
    return found, len(lines)


async def flood(port: int, network: NetworkId, seconds: float) -> tuple[int, int]:
    identity = generate_keypair()
    done = refused = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, refused
        while time.monotonic() < deadline:
            try:
                channel = await connect("127.0.0.1", port, identity, network)
                await channel.close()
                done += 1
            except (TransportError, OSError):
                refused += 1
                await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done, refused


def main() -> None:
    if os.environ.get("NODE_SRC"):
        os.environ["PYTHONPATH"] = os.environ["NODE_SRC"]
    home = Path(tempfile.mkdtemp(prefix="flood-"))
    obj = genesis_mod.builtin_json("devnet")
    obj["timestamp_ms"] = int(time.time() * 1000)
    (home / "genesis.json").write_text(json.dumps(obj))
    genesis = genesis_mod.load_file(home / "genesis.json")
    network = NetworkId.from_genesis(genesis)
    node = Child.start(
        "node",
        [
            "node",
            "--dev",
            "--mine",
            "--workers",
            "1",
            "--datadir",
            str(home / "node"),
            "--genesis",
            str(home / "genesis.json"),
            "--rpc-port",
            "0",
            "--consensus-rpc-port",
            "0",
            "--p2p-port",
            "0",
        ],
        Output(split=True),
    )
    try:
        port = int(node.wait_for(r"p2p: node qoin1\w+@127\.0\.0\.1:(\d+)", 120)[1][1])
        node.wait_for(r"attempts/s=", 120)
        time.sleep(PHASE_S)  # the undisturbed phase: blocks mined meanwhile are the baseline
        before, seen = rates(node, 0)
        done, refused = asyncio.run(flood(port, network, PHASE_S))
        during, _ = rates(node, seen)
        print(
            json.dumps(
                {
                    "before_attempts_per_s": statistics.median(before[1:])
                    if len(before) > 1
                    else None,
                    "before_blocks": len(before),
                    "during_attempts_per_s": statistics.median(during) if during else None,
                    "during_blocks": len(during),
                    "handshakes_completed": done,
                    "handshakes_per_s": round(done / PHASE_S, 1),
                    "connections_refused_or_failed": refused,
                }
            )
        )
    finally:
        node.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
