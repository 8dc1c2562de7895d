"""`qoin node --dev --mine` with its execution client: a transfer sent over RPC gets mined, `qoin
balance` shows it, and the state survives a restart (real processes, loopback only)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from qoin.chain import genesis as genesis_mod
from tests.cliutil import DEVNET_PASSWORD, run_qoin
from tests.conftest import keypair_for

DEV_KEY = Path(genesis_mod.__file__).parent / "networks" / "devnet-key.json"


def qoin(*args: str) -> subprocess.CompletedProcess[str]:
    return run_qoin(*args, env={"QOIN_PASSWORD": DEVNET_PASSWORD})


def start_node(datadir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qoin",
            "node",
            "--dev",
            "--mine",
            "--datadir",
            str(datadir),
            "--workers",
            "1",
            "--rpc-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "QOIN_HOME": str(datadir / "home")},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(text) for text in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        found = re.search(r"user RPC (http://[^\s,]+)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError("the node did not print its RPC URL")


def wait_for_balance(url: str, address: str, expected: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = qoin("balance", address, "--rpc", url).stdout.strip()
        if shown == expected:
            return
        time.sleep(0.5)  # poll interval of a bounded wait-until
    raise AssertionError(f"balance stayed {shown!r}, expected {expected}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def test_transfer_is_mined_and_survives_restart(tmp_path: Path) -> None:
    bob = str(keypair_for(index=3).address)
    proc, url = start_node(tmp_path)
    try:
        sent = qoin(
            "tx", "send", "--key", str(DEV_KEY), "--to", bob, "--amount", "4242", "--rpc", url
        )
        assert sent.returncode == 0, sent.stderr
        wait_for_balance(url, bob, "4242")
        receipt = qoin("balance", bob, "--rpc", url, "--json")
        assert '"nonce": 0' in receipt.stdout
    finally:
        stop(proc)
    proc, url = start_node(tmp_path)
    try:
        wait_for_balance(url, bob, "4242", timeout=30)
    finally:
        stop(proc)
