"""`qoin node --dev --mine` with its execution client: a transfer sent over RPC gets mined, `qoin
balance` shows it, and the state survives a restart (real processes, loopback only)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from qoin.chain import genesis as genesis_mod
from tests.cliutil import DEVNET_PASSWORD, run_qoin
from tests.framework import RPC_POLL_S, SUPERVISOR, Network, Node, wait_until
from tests.keys import keypair_for
from tests.test_node_cli import write_easy_genesis

DEV_KEY = Path(genesis_mod.__file__).parent / "networks" / "devnet-key.json"
EASIER = 32
"""Attempts a block of the test's genesis (the built-in devnet's take ~500, seconds a block)."""


def qoin(*args: str) -> subprocess.CompletedProcess[str]:
    return run_qoin(*args, env={"QOIN_PASSWORD": DEVNET_PASSWORD})


def start_node(node: Node, *args: str) -> str:
    """``qoin node --dev --mine ARGS`` (one worker) in the node's data directory: its user RPC
    URL."""
    node.start_supervisor("--dev", "--mine", "--workers", "1", "--rpc-port", "0", *args)
    return node.user.url


def wait_for_balance(node: Node, address: str, expected: int, timeout: float = 90) -> None:
    """Wait (asking the node's RPC, not a process per ask) until ``address`` holds ``expected``;
    then ``qoin balance`` must show it."""
    wait_until(
        lambda: node.user.call("qoin_getBalance", address) == expected,
        timeout,
        RPC_POLL_S,
        f"{address} to hold {expected}",
    )
    shown = qoin("balance", address, "--rpc", node.user.url)
    assert shown.stdout.strip() == str(expected), shown.stderr


def stop(node: Node) -> None:
    """Ctrl-C: the node stops cleanly."""
    assert node.stop_process(SUPERVISOR, signal.SIGINT) == 0


@pytest.mark.slow
def test_transfer_is_mined_and_survives_restart(net: Network) -> None:
    """On the devnet genesis made easier to mine (:func:`tests.test_node_cli.write_easy_genesis`,
    a block in a fraction of a second instead of seconds; the devnet key funded as on the built-in
    one)."""
    bob = str(keypair_for(index=3).address)
    node = net.add("dev")
    easier = write_easy_genesis(net.workdir / "easier-genesis.json", attempts=EASIER)
    url = start_node(node, "--genesis", str(easier))
    sent = qoin("tx", "send", "--key", str(DEV_KEY), "--to", bob, "--amount", "4242", "--rpc", url)
    assert sent.returncode == 0, sent.stderr
    wait_for_balance(node, bob, 4242)
    receipt = qoin("balance", bob, "--rpc", url, "--json")
    assert '"nonce": 0' in receipt.stdout
    stop(node)
    start_node(node)  # the genesis is kept in the data directory
    wait_for_balance(node, bob, 4242, timeout=30)
    stop(node)
