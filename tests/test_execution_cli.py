"""`qoin execution` as a real process; `qoin tx send` and `qoin balance` against it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qoin.chain import genesis as genesis_mod
from qoin.chain.block import Block
from qoin.rpc.client import RpcClient
from qoin.rpc.jwt import encode, load_secret
from tests.cliutil import DEVNET_PASSWORD, run_qoin
from tests.framework import EXECUTION, Network, Node
from tests.keys import keypair_for
from tests.test_execution_rpc import template_on

DEV_KEY = Path(genesis_mod.__file__).parent / "networks" / "devnet-key.json"


@pytest.fixture
def execution(net: Network) -> Iterator[Node]:
    """A `qoin execution` on the devnet genesis (its default), its engine secret in its datadir;
    it must stop cleanly."""
    node = net.add("execution")
    node.start_execution(shared_files=False)
    yield node
    node.stop(EXECUTION)  # exit status 0


def qoin(*args: str) -> subprocess.CompletedProcess[str]:
    return run_qoin(*args, env={"QOIN_PASSWORD": DEVNET_PASSWORD})


def test_send_and_balance(execution: Node) -> None:
    user = execution.user.url
    bob = keypair_for(index=3).address
    sent = qoin(
        "tx", "send", "--key", str(DEV_KEY), "--to", str(bob), "--amount", "777", "--rpc", user
    )
    assert sent.returncode == 0, sent.stderr
    tx_hash = sent.stdout.strip()
    assert len(tx_hash) == 64
    # produce a block through the engine API, as a consensus client would
    token = encode(load_secret(execution.execution_datadir / "jwt.hex"))
    with RpcClient(str(execution.engine), token=lambda: token) as engine:
        raw = execution.user.call("qoin_getBlockByNumber", 0)["raw"]
        genesis_block = Block.decode(bytes.fromhex(raw))
        built = engine.call(
            "engine_forkchoiceUpdated",
            genesis_block.block_hash.hex(),
            template_on(genesis_block).encode().hex(),
        )
        payload = engine.call("engine_getPayload", built["payloadId"])
        block = Block.decode(bytes.fromhex(payload))
        assert engine.call("engine_newPayload", payload)["status"] == "VALID"
        engine.call("engine_forkchoiceUpdated", block.block_hash.hex())
    shown = qoin("balance", str(bob), "--rpc", user)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "777"


def test_clear_errors(execution: Node) -> None:
    user = execution.user.url
    bad = qoin("balance", "qoin1nope", "--rpc", user)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    unreachable = qoin("balance", str(keypair_for(index=3).address), "--rpc", "http://127.0.0.1:9/")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    broke = qoin(
        "tx",
        "send",
        "--key",
        str(DEV_KEY),
        "--to",
        str(keypair_for(index=3).address),
        "--amount",
        str(10**15),
        "--rpc",
        user,
    )
    assert broke.returncode == 1 and "InsufficientFunds" in broke.stderr
