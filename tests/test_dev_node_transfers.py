"""`qoin node --dev --mine` with its execution client: a transfer sent over RPC gets mined, `qoin
balance` shows it, and the state survives a restart (real processes, loopback only)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from qoin.chain import genesis as genesis_mod
from tests.cliutil import DEVNET_PASSWORD, run_qoin
from tests.framework import SUPERVISOR, Network, Node, wait_until
from tests.keys import keypair_for

DEV_KEY = Path(genesis_mod.__file__).parent / "networks" / "devnet-key.json"
CLI_POLL_S = 0.5
"""How often the balance is asked (each ask starts a `qoin` process: dearer than an RPC call)."""


def qoin(*args: str) -> subprocess.CompletedProcess[str]:
    return run_qoin(*args, env={"QOIN_PASSWORD": DEVNET_PASSWORD})


def start_node(node: Node) -> str:
    """``qoin node --dev --mine`` (one worker) in the node's data directory: its user RPC URL."""
    node.start_supervisor("--dev", "--mine", "--workers", "1", "--rpc-port", "0")
    return node.user.url


def wait_for_balance(url: str, address: str, expected: str, timeout: float = 90) -> None:
    wait_until(
        lambda: qoin("balance", address, "--rpc", url).stdout.strip() == expected,
        timeout,
        CLI_POLL_S,
        f"qoin balance {address} to show {expected}",
    )


def stop(node: Node) -> None:
    """Ctrl-C: the node stops cleanly."""
    assert node.stop_process(SUPERVISOR, signal.SIGINT) == 0


@pytest.mark.slow
def test_transfer_is_mined_and_survives_restart(net: Network) -> None:
    bob = str(keypair_for(index=3).address)
    node = net.add("dev")
    url = start_node(node)
    sent = qoin("tx", "send", "--key", str(DEV_KEY), "--to", bob, "--amount", "4242", "--rpc", url)
    assert sent.returncode == 0, sent.stderr
    wait_for_balance(url, bob, "4242")
    receipt = qoin("balance", bob, "--rpc", url, "--json")
    assert '"nonce": 0' in receipt.stdout
    stop(node)
    url = start_node(node)
    wait_for_balance(url, bob, "4242", timeout=30)
    stop(node)
