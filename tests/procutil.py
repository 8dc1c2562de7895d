"""Real ``qoin`` processes for tests: start them, read their output, call their RPC."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import httpx

from qoin.chain import genesis as genesis_mod
from qoin.chain.block import Block, Coinbase, Payout, transactions_root
from qoin.chain.chain import Chain
from qoin.chain.genesis import Allocation, Genesis
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.producer import build_template
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.execution.state import ExecutionState, PayloadStatus
from qoin.rpc.jwt import create_secret
from tests.chainutil import mine_template, on_schedule, test_genesis
from tests.conftest import keypair_for

FUNDED, MINER = keypair_for(index=9), keypair_for(index=5)
START_S = 60.0


def genesis() -> Genesis:
    return replace(test_genesis(), allocation=(Allocation(FUNDED.address, GENESIS_ALLOCATION),))


@dataclass
class Process:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None]
    seen: list[str]

    def wait_for(self, pattern: str, timeout: float = START_S) -> re.Match[str]:
        """The first line (seen so far or coming) matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.seen:
            if found := regex.search(line):
                return found
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if found := regex.search(line):
                return found
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.seen)}")

    def output(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return "".join(self.seen)
            if line is not None:
                self.seen.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def start(*args: str) -> Process:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qoin", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    return Process(proc, lines, [])


def rpc(url: str, method: str, *params: object) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    answer = httpx.post(url, json=body, timeout=60).json()
    assert "error" not in answer, answer
    return answer["result"]


def network_files(workdir: Path) -> None:
    """Write the genesis and the engine secret that every process of a test shares."""
    (workdir / "genesis.json").write_text(json.dumps(genesis_mod.to_json(genesis())))
    create_secret(workdir / "jwt.hex")


def start_execution(workdir: Path, name: str, *extra: str) -> tuple[Process, str, str]:
    """A `qoin execution` in ``workdir/name``: the process, its user RPC and engine URLs."""
    proc = start("execution", "--datadir", str(workdir / name), *network_files_args(workdir),
                 "--rpc-port", "0", "--engine-port", "0", *extra)  # fmt: skip
    found = proc.wait_for(r"user RPC (\S+), engine API (\S+)")
    return proc, found[1], found[2]


def network_files_args(workdir: Path) -> list[str]:
    """The arguments naming the files of :func:`network_files`."""
    return ["--genesis", str(workdir / "genesis.json"), "--jwt-secret", str(workdir / "jwt.hex")]


class Producer:
    """Builds valid (or deliberately invalid) sealed blocks on its own copy of the chain."""

    def __init__(self, workdir: Path) -> None:
        self.chain = Chain.open(workdir / "producer-chain", genesis())
        self.state = ExecutionState.open(workdir / "producer-execution", genesis())

    def block(self, txs: tuple[Transaction, ...] = (), honest_roots: bool = True) -> Block:
        """The next block with ``txs``; with ``honest_roots=False`` it keeps its parent's roots
        (for a block whose execution fails)."""
        height = self.chain.head_header.height + 1
        template = build_template(self.chain, MINER.public, on_schedule(genesis(), height))
        payouts = list(template.coinbase.payouts)
        payouts[-1] = Payout(payouts[-1].recipient, sum(tx.fee for tx in txs))
        coinbase = Coinbase(tuple(payouts))
        header = replace(template.header, transactions_root=transactions_root(coinbase, txs))
        block = replace(template, header=header, coinbase=coinbase, transactions=txs)
        if honest_roots:
            block = self.state.fill_roots(block)
        return mine_template(block, MINER)

    def accept(self, block: Block) -> None:
        """Make ``block`` the producer's head too."""
        self.chain.import_block(block)
        assert self.state.new_payload(block).status is PayloadStatus.VALID
        self.state.forkchoice_updated(block.block_hash)

    def close(self) -> None:
        self.state.close()
        self.chain.close()


def pay(sender: Any, nonce: int, to: Any, amount: int, reveal: bool = False) -> Transaction:
    return sign_transfer(
        sender,
        chain_id=genesis().chain_id,
        nonce=nonce,
        recipient=to.address,
        amount=amount,
        fee=10,
        reveal_keys=reveal,
    )
