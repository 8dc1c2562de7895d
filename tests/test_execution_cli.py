"""`qoin execution` as a real process; `qoin tx send` and `qoin balance` against it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qoin.chain import genesis as genesis_mod
from qoin.chain.block import Block
from qoin.rpc.jwt import encode, load_secret
from tests.cliutil import DEVNET_PASSWORD, run_qoin
from tests.conftest import keypair_for
from tests.test_execution_rpc import template_on

DEV_KEY = Path(genesis_mod.__file__).parent / "networks" / "devnet-key.json"


@pytest.fixture
def execution(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qoin",
            "execution",
            "--datadir",
            str(tmp_path),
            "--rpc-port",
            "0",
            "--engine-port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "user RPC" in line or not line:
            break
    found = re.search(r"user RPC (\S+), engine API (\S+)", line)
    assert found, line
    try:
        yield found.group(1), found.group(2), tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def qoin(*args: str) -> subprocess.CompletedProcess[str]:
    return run_qoin(*args, env={"QOIN_PASSWORD": DEVNET_PASSWORD})


def test_send_and_balance(execution: tuple[str, str, Path]) -> None:
    user, engine, datadir = execution
    bob = keypair_for(index=3).address
    sent = qoin(
        "tx", "send", "--key", str(DEV_KEY), "--to", str(bob), "--amount", "777", "--rpc", user
    )
    assert sent.returncode == 0, sent.stderr
    tx_hash = sent.stdout.strip()
    assert len(tx_hash) == 64
    # produce a block through the engine API, as a consensus client would
    token = encode(load_secret(datadir / "jwt.hex"))

    def call(url: str, method: str, *params: object, auth: bool = False) -> object:
        headers = {"Authorization": f"Bearer {token}"} if auth else {}
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        answer = httpx.post(url, json=body, headers=headers, timeout=30).json()
        assert "error" not in answer, answer
        return answer["result"]

    genesis_block = Block.decode(bytes.fromhex(call(user, "qoin_getBlockByNumber", 0)["raw"]))  # type: ignore[index]
    built = call(
        engine,
        "engine_forkchoiceUpdated",
        genesis_block.block_hash.hex(),
        template_on(genesis_block).encode().hex(),
        auth=True,
    )
    payload = call(engine, "engine_getPayload", built["payloadId"], auth=True)  # type: ignore[index]
    block = Block.decode(bytes.fromhex(payload))  # type: ignore[arg-type]
    assert call(engine, "engine_newPayload", payload, auth=True)["status"] == "VALID"  # type: ignore[index]
    call(engine, "engine_forkchoiceUpdated", block.block_hash.hex(), auth=True)
    shown = qoin("balance", str(bob), "--rpc", user)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "777"


def test_clear_errors(execution: tuple[str, str, Path]) -> None:
    user, _, _ = execution
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
