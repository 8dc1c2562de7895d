"""Transactions a user submitted survive the execution client's crash: a real ``qoin execution``
takes transfers through its user RPC while blocks include some of them, and is SIGKILLed at random
moments, then restarted on the same data directory. Every transfer the RPC acknowledged must be
pending again or included; the journal's replay line must count the pending ones. The seed is
logged so a failure can be replayed (``QOIN_JOURNAL_CRASH_SEED``)."""

from __future__ import annotations

import logging
import random
import re
import threading

import pytest

from qoin.chain.block import Block
from qoin.chain.transaction import Transaction
from qoin.process import Child
from qoin.rpc.client import RpcCallError, RpcClient
from qoin.rpc.jwt import encode, load_secret
from tests.framework import EXECUTION, FUNDED, MINER, Network, Node, pay, test_seed, wait_until
from tests.test_execution_rpc import template_on

log = logging.getLogger(__name__)

KILLS = 6
TRANSFERS = 300
"""Transfers signed for the test: each life takes up to 20 acknowledgements and then however many
more land before the kill (on a fast disk, a dozen or more), and must still find some to send."""
MINE_AT = 32
"""Pending transfers from which a life always starts with a block (the pool refuses a nonce more
than 64 above the account's: a life must have room for its acknowledgements)."""
RESTORED = r"local transactions journal: (\d+) re-added, (\d+) dropped"


def _restored(child: Child) -> tuple[int, int] | None:
    """(re-added, dropped) from the journal's replay line (printed before the ready line), None
    if it printed none."""
    for line in child.seen:
        if found := re.search(RESTORED, line.text):
            return int(found[1]), int(found[2])
    return None


def _mine(user: RpcClient, engine: RpcClient) -> Block:
    """Build a block of the pending transactions through the engine API; make it the head."""
    head_json = user.call("qoin_getBlockByNumber", user.call("qoin_blockNumber"))
    head = Block.decode(bytes.fromhex(head_json["raw"]))
    built = engine.call(
        "engine_forkchoiceUpdated", head.block_hash.hex(), template_on(head).encode().hex()
    )
    block = Block.decode(bytes.fromhex(engine.call("engine_getPayload", built["payloadId"])))
    assert engine.call("engine_newPayload", block.encode().hex())["status"] == "VALID"
    engine.call("engine_forkchoiceUpdated", block.block_hash.hex())
    return block


def _submit(
    user: RpcClient, txs: list[Transaction], acked: list[int], stop: threading.Event
) -> None:
    """Send the transfers from the sender's next nonce on, one by one, recording each nonce the RPC
    acknowledged, until ``stop``, the end, or the process is gone."""
    try:
        first = user.call("qoin_getAccount", str(FUNDED.address))["nextNonce"]
        for tx in txs[first:]:
            if stop.is_set():
                return
            user.call("qoin_sendRawTransaction", tx.encode().hex())
            acked.append(tx.nonce)
    except RpcCallError:
        return  # killed


def _kill_while_submitting(
    node: Node, txs: list[Transaction], acked: list[int], rng: random.Random
) -> None:
    """SIGKILL the node's execution client at a random moment shortly after a random number of
    acknowledgements."""
    stop = threading.Event()
    target = len(acked) + rng.randint(1, 20)
    submitter = threading.Thread(target=_submit, args=(node.user, txs, acked, stop))
    submitter.start()
    child = node.child(EXECUTION)
    try:
        wait_until(lambda: len(acked) >= target or not submitter.is_alive(), timeout=60)
        stop.wait(rng.uniform(0.0, 0.01))  # a random moment: an append may be under way
        child.proc.kill()
        child.proc.wait(timeout=30)
    finally:
        stop.set()
        submitter.join(timeout=30)
    assert not submitter.is_alive()
    node.kill(EXECUTION)


def _check(user: RpcClient, txs: list[Transaction], acked: list[int], where: str) -> int:
    """Every acknowledged transfer is pending or included; returns how many are pending."""
    pending = 0
    for tx in txs:
        found = user.call("qoin_getTransactionByHash", tx.tx_id.hex())
        if tx.nonce in acked:
            assert found is not None, f"{where}: acknowledged transfer {tx.nonce} was lost"
        pending += found is not None and found.get("pending", False)
    next_nonce = user.call("qoin_getAccount", str(FUNDED.address))["nextNonce"]
    assert next_nonce >= max(acked, default=-1) + 1, where
    return pending


@pytest.mark.slow
def test_acknowledged_transfers_survive_kill_9(net: Network) -> None:
    rng = random.Random(seed := test_seed("QOIN_JOURNAL_CRASH_SEED"))
    secret = load_secret(net.jwt_file)
    txs = [pay(FUNDED, nonce, MINER, 1_000, reveal=nonce == 0) for nonce in range(TRANSFERS)]
    acked: list[int] = []
    included = 0
    node = net.add("node")
    for life in range(KILLS):
        where = f"seed {seed}, life {life}"
        node.start_execution()
        with RpcClient(str(node.engine), token=lambda: encode(secret)) as engine:
            pending = _check(node.user, txs, acked, where)
            restored = _restored(node.child(EXECUTION))
            if life > 0 and acked:
                assert restored is not None and restored[0] == pending, (where, restored)
            # A block now and then; always once many are pending, as the pool takes a sender's
            # nonces at most 64 ahead of its account's (more would be refused, not acknowledged).
            if pending and (rng.random() < 0.6 or pending >= MINE_AT):
                included += len(_mine(node.user, engine).transactions)  # still in the journal
        before = len(acked)
        _kill_while_submitting(node, txs, acked, rng)
        assert len(acked) > before, f"{where}: nothing acknowledged"
    # A clean stop rewrites the journal to the pending transfers alone: none is dropped on start.
    node.start_execution()
    pending = _check(node.user, txs, acked, f"seed {seed}, after the last kill")
    node.stop(EXECUTION)
    node.start_execution()
    assert _check(node.user, txs, acked, f"seed {seed}, after a clean stop") == pending
    assert _restored(node.child(EXECUTION)) == (pending, 0)
    with RpcClient(str(node.engine), token=lambda: encode(secret)) as engine:
        for _ in range(10):  # one block takes them all; bounded all the same
            if not pending:
                break
            pending -= len(_mine(node.user, engine).transactions)
    assert pending == 0
    assert node.user.call("qoin_getAccount", str(FUNDED.address))["nonce"] >= len(set(acked))
    log.warning(
        "journal crash: %d kills, %d acknowledged, %d included before a kill",
        KILLS, len(acked), included,
    )  # fmt: skip
