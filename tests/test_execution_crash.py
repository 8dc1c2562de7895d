"""Crash safety of the execution database: ``kill -9`` a real ``qoin execution`` importing blocks
of transfers over the engine API at random moments, and check its database after every kill.

A prepared chain (blocks of transfers to many new accounts, and a side branch that becomes the
head by a reorg of depth 4) is fed step by step, each step an ``engine_newPayload`` and an
``engine_forkchoiceUpdated``, to a real process on a real database file, which is SIGKILLed at
random moments, 20+ times (before it is ready, right after an acknowledged step, or at a random
moment of an import), then restarted on the same data directory, where it must go on. After every
kill the database, opened directly, must hold the head of the last acknowledged step or of the one
in flight; a state tree whose every node is stored and hashes right, and whose leaves are exactly
those of a fresh replay of the chain to that head (so its root is the replay's); balances summing
to the supply (the genesis allocation plus the rewards paid, fees moving between accounts); a
canonical index that is the head's ancestry and a transaction index of exactly its transactions.
The seed is logged so a failure can be replayed (``QOIN_EXECUTION_CRASH_SEED``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qoin.chain.block import Block
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.compute.params import PARAMS_KEY as COMPUTE_PARAMS_KEY
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.account import (
    COMPUTE_MARKET_ADDRESS,
    STORAGE_MARKET_ADDRESS,
    AccountLeaf,
    keys_key,
    state_key,
    storage_key,
)
from qoin.execution.cron import CURSOR_KEY
from qoin.execution.state import ExecutionState, PayloadStatus
from qoin.rpc.client import RpcCallError, RpcClient
from qoin.rpc.jwt import encode, load_secret
from qoin.state.smt import EMPTY, NODE_INNER, NODE_LEAF, compute_root, leaf_hash, node_hash
from qoin.storage.params import PARAMS_KEY
from tests.framework import FUNDED, Network, genesis, test_seed
from tests.keys import keypair_for
from tests.test_execution_state import MINER, child

log = logging.getLogger(__name__)

KILLS = 20
ROUND_TIMEOUT_S = 30.0
READY = r"user RPC (\S+), engine API (\S+)"
SENDERS = (FUNDED, keypair_for(index=20), keypair_for(index=21), keypair_for(index=22))
PER_BLOCK = 12
MAIN, FORK_AT, SIDE, AFTER = 24, 20, 6, 24
"""Main chain to height 24; a side branch of 6 from height 20 becomes the head; 24 more on it."""


@dataclass(frozen=True)
class Step:
    """Send ``block`` (engine_newPayload), then make ``head`` the head (engine_forkchoiceUpdated)."""

    block: Block
    head: bytes
    verdicts: tuple[str, ...] = ("VALID",)
    """What ``engine_newPayload`` may answer: a side block whose parent's state was never
    materialised is ACCEPTED until the head change executes it (then VALID if sent again)."""


@dataclass(frozen=True)
class Prepared:
    steps: list[Step]
    heads: list[bytes]
    """``heads[k]``: the head once the first ``k`` steps are done (``heads[0]``: genesis)."""
    blocks: dict[bytes, Block]
    leaves: dict[bytes, dict[bytes, bytes]]
    """Every state leaf (key → value) after each block, from a fresh replay (genesis included)."""
    addresses: list[Address]
    """Every address the chain touches."""


def _transfers(
    state: ExecutionState, rng: random.Random, fund: bool = False
) -> tuple[Transaction, ...]:
    """A block's worth of transfers on the head state: from every sender in turn to new
    addresses (or, with ``fund``, from the funded account to the other senders)."""
    nonces = {k.address: state.account(k.address).nonce for k in SENDERS}
    revealed = {k.address: state.account(k.address).public_keys is not None for k in SENDERS}
    txs = []

    def pay(sender: HybridKeyPair, to: Address, amount: int) -> None:
        txs.append(
            sign_transfer(
                sender,
                chain_id=genesis().chain_id,
                nonce=nonces[sender.address],
                recipient=to,
                amount=amount,
                fee=rng.randint(0, 20),
                reveal_keys=not revealed[sender.address],
            )
        )
        nonces[sender.address] += 1
        revealed[sender.address] = True

    if fund:
        for sender in SENDERS[1:]:
            pay(FUNDED, sender.address, GENESIS_ALLOCATION // 8)
        return tuple(txs)
    for index in range(PER_BLOCK):
        pay(SENDERS[index % len(SENDERS)], Address(rng.randbytes(32)), rng.randint(1, 10_000))
    return tuple(txs)


def _leaves(state: ExecutionState) -> dict[bytes, bytes]:
    return _walk(state, state.state_root())


def _walk(state: ExecutionState, root: bytes) -> dict[bytes, bytes]:
    """Every leaf under ``root``, each node checked: stored, well formed, hashing to its name."""
    leaves: dict[bytes, bytes] = {}
    stack = [] if root == EMPTY else [root]
    for _ in range(1_000_000):  # bounded: the trees here hold a few thousand nodes
        if not stack:
            return leaves
        name = stack.pop()
        data = state.nodes.get(name)
        assert data is not None, f"node {name.hex()} is missing"
        if data[0] == NODE_LEAF:
            key, value = data[1:33], data[33:]
            assert leaf_hash(key, value) == name, f"leaf {name.hex()} does not hash to its name"
            leaves[key] = value
        else:
            assert data[0] == NODE_INNER and len(data) == 65, f"node {name.hex()} is malformed"
            left, right = data[1:33], data[33:65]
            assert node_hash(left, right) == name, f"node {name.hex()} does not hash to its name"
            stack += [side for side in (left, right) if side != EMPTY]
    raise AssertionError("the tree walk did not end")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prepared]:
    """Build the chain once on a reference database (the fresh replay)."""
    workdir = tmp_path_factory.mktemp("execution-crash")
    rng = random.Random(1)
    ref = ExecutionState.open(workdir / "reference", genesis(), retain=1_000)
    g = genesis().block
    blocks = {g.block_hash: g}
    leaves = {g.block_hash: _leaves(ref)}
    steps: list[Step] = []

    def extend(parent: Block, fund: bool = False) -> Block:
        block = child(ref, parent, _transfers(ref, rng, fund))
        assert ref.new_payload(block).status is PayloadStatus.VALID
        assert ref.head == block.block_hash
        blocks[block.block_hash] = block
        leaves[block.block_hash] = _leaves(ref)
        return block

    try:
        tip = extend(g, fund=True)
        steps.append(Step(tip, tip.block_hash))
        for _ in range(MAIN - 1):
            tip = extend(tip)
            steps.append(Step(tip, tip.block_hash))
        main_tip = tip
        # The side branch, built on the reference moved back to the fork point.
        fork = next(b for b in blocks.values() if b.header.height == FORK_AT)
        ref.forkchoice_updated(fork.block_hash)
        tip = fork
        for index in range(SIDE):
            tip = extend(tip)
            last = index == SIDE - 1
            verdicts = ("VALID",) if index == 0 else ("ACCEPTED", "VALID")
            steps.append(Step(tip, tip.block_hash if last else main_tip.block_hash, verdicts))
        for _ in range(AFTER):
            tip = extend(tip)
            steps.append(Step(tip, tip.block_hash))
    finally:
        ref.close()
    addresses = [genesis().allocation[0].address, MINER.address]
    addresses += [k.address for k in SENDERS[1:]]
    addresses += [tx.recipient for b in blocks.values() for tx in b.transactions]
    heads = [g.block_hash, *(step.head for step in steps)]
    yield Prepared(steps, heads, blocks, leaves, list(dict.fromkeys(addresses)))


def _ancestry(prepared: Prepared, head: bytes) -> list[Block]:
    """The blocks from genesis to ``head``."""
    chain = [prepared.blocks[head]]
    while chain[-1].header.height > 0:
        chain.append(prepared.blocks[chain[-1].header.parent_hash])
    return chain[::-1]


def _check_database(prepared: Prepared, datadir: Path, done: int, where: str) -> None:
    """Open the database of a killed process and check it (see the module docstring)."""
    state = ExecutionState.open(datadir, genesis())
    try:
        head = state.head
        allowed = prepared.heads[done : done + 2]
        assert head in allowed, f"{where}: head {head.hex()} is not that of step {done} or next"
        chain = _ancestry(prepared, head)
        height = chain[-1].header.height
        where = f"{where}, head at height {height}"
        root = state.state_root()
        if height > 0:  # (the genesis header holds the genesis commitment, not a state root)
            assert root == chain[-1].header.state_root, f"{where}: the head's root is not its own"
        leaves, expected = _walk(state, root), prepared.leaves[head]
        differing = {k for k in leaves.keys() | expected.keys() if leaves.get(k) != expected.get(k)}
        assert not differing, f"{where}: {len(differing)} leaves differ from a fresh replay"
        assert compute_root(leaves) == root, where
        accounts = {state_key(a) for a in prepared.addresses}
        keys = {keys_key(a) for a in prepared.addresses}
        cron = {CURSOR_KEY}  # the cron step's cursor, written by every block
        markets = {  # the markets' genesis parameters
            storage_key(STORAGE_MARKET_ADDRESS, PARAMS_KEY),
            storage_key(COMPUTE_MARKET_ADDRESS, COMPUTE_PARAMS_KEY),
        }
        assert set(leaves) <= accounts | keys | cron | markets, f"{where}: unknown leaves"
        total = sum(AccountLeaf.decode(v).balance for k, v in leaves.items() if k in accounts)
        supply = GENESIS_ALLOCATION + sum(
            payout.amount for block in chain[1:] for payout in block.coinbase.payouts[:-1]
        )
        assert total == supply, f"{where}: balances sum to {total}, the supply is {supply}"
        for block in chain:
            at = block.header.height
            assert state.canonical_hash(at) == block.block_hash, f"{where}: canonical at {at}"
        assert state.canonical_hash(height + 1) is None, f"{where}: canonical above the head"
        canonical = {tx.tx_id for block in chain for tx in block.transactions}
        for block in prepared.blocks.values():
            for tx in block.transactions:
                indexed = tx.tx_id in canonical
                assert state.has_transaction(tx.tx_id) == indexed, f"{where}: {tx.tx_id.hex()}"
                assert (state.receipt(tx.tx_id) is not None) == indexed, f"{where}: receipt"
    finally:
        state.close()


class Feeder:
    """Feeds the steps from ``start`` on in a thread; ``done`` counts the acknowledged ones."""

    def __init__(self, engine: RpcClient, steps: list[Step], start: int) -> None:
        self.engine = engine
        self.steps = steps
        self.done = start
        self.in_flight = False
        self.finished = False
        self.errors: list[str] = []
        self.progress = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.done < len(self.steps):
                step = self.steps[self.done]
                self.in_flight = True
                verdict = self.engine.call("engine_newPayload", step.block.encode().hex())
                if verdict["status"] not in step.verdicts:
                    self.errors.append(f"step {self.done}: {verdict}")
                    return
                moved = self.engine.call("engine_forkchoiceUpdated", step.head.hex())
                if moved["payloadStatus"]["status"] != "VALID":
                    self.errors.append(f"step {self.done}: {moved}")
                    return
                with self.progress:
                    self.done += 1
                    self.in_flight = False
                    self.progress.notify_all()
        except RpcCallError:
            return  # killed
        finally:
            with self.progress:
                self.finished = True
                self.progress.notify_all()

    def wait(self, steps: int) -> None:
        """Until ``steps`` steps are acknowledged or the feeding ended (bounded)."""
        with self.progress:
            ended = self.progress.wait_for(
                lambda: self.done >= steps or self.finished, timeout=ROUND_TIMEOUT_S
            )
        assert ended, f"the feeding stalled at step {self.done}"

    def join(self) -> None:
        self.thread.join(timeout=ROUND_TIMEOUT_S)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


def _round(
    net: Network, datadir: Path, steps: list[Step], start: int, rng: random.Random | None
) -> tuple[int, bool, bool]:
    """One life of the process from step ``start``, SIGKILLed at a random moment (without
    ``rng``: fed to the end and stopped cleanly). Returns (steps acknowledged, whether it was
    killed, whether a step was in flight then)."""
    child = net.spawn(
        f"execution {datadir.name}",
        ["execution", "--datadir", str(datadir), *net.files_args(),
         "--rpc-port", "0", "--engine-port", "0"],
    )  # fmt: skip
    secret = load_secret(net.jwt_file)
    engine: RpcClient | None = None
    feeder: Feeder | None = None
    mode = 1.0 if rng is None else rng.random()
    try:
        if rng is not None and mode < 0.2:
            # Start-up, the database's opening and recovery, the first steps.
            kill_at = time.monotonic() + rng.uniform(0.0, 1.0)
            found = child.poll_for(READY, timeout=kill_at - time.monotonic())
        else:
            kill_at = None
            found = child.wait_for(READY, timeout=ROUND_TIMEOUT_S)
        if found is not None:
            engine = RpcClient(found[1][2], timeout=ROUND_TIMEOUT_S, token=lambda: encode(secret))
            feeder = Feeder(engine, steps, start)
        if feeder is not None and rng is None:
            feeder.wait(len(steps))
        elif feeder is not None and mode < 0.6 and kill_at is None:
            assert rng is not None
            feeder.wait(start + rng.randint(1, 6))  # right after the n-th acknowledged step
        elif feeder is not None and kill_at is None:
            assert rng is not None
            feeder.wait(start + 1)
            kill_at = time.monotonic() + rng.uniform(0.0, 0.1)  # likely inside an import
        if kill_at is not None:
            time.sleep(max(0.0, kill_at - time.monotonic()))  # the random moment itself
        killed = rng is not None and child.proc.poll() is None
        in_flight = feeder is not None and feeder.in_flight and not feeder.finished
        if killed:
            child.proc.kill()
            child.proc.wait(timeout=ROUND_TIMEOUT_S)
        if feeder is not None:
            feeder.join()
        if rng is None:
            assert child.stop() == 0, child.tail()
        return (start if feeder is None else feeder.done), killed, killed and in_flight
    finally:
        if engine is not None:
            engine.close()
        child.stop()


@pytest.mark.slow
def test_execution_database_survives_kill_9(prepared: Prepared, net: Network) -> None:
    seed = test_seed("QOIN_EXECUTION_CRASH_SEED")
    rng = random.Random(seed)
    total = len(prepared.steps)
    kills = inside = lives = 0
    # Each life is one data directory, killed and restarted until every step is done, then fed to
    # the end; a new life starts (from an empty directory) until there were KILLS kills.
    while kills < KILLS:
        datadir = net.workdir / f"execution{lives}"
        lives += 1
        done = 0
        while True:
            final = done == total or kills >= KILLS
            where = f"seed {seed}, life {lives}, kill {kills}, step {done}"
            done, killed, in_flight = _round(
                net, datadir, prepared.steps, done, None if final else rng
            )
            _check_database(prepared, datadir, done, where)
            kills += killed
            inside += in_flight
            if final:
                assert done == total, where
                break
    log.warning(
        "execution crash test: %d kills (%d inside a step) over %d lives", kills, inside, lives
    )
    assert inside >= KILLS // 4, f"seed {seed}: too few kills landed inside a step"
