"""The execution client's user RPC and engine API over real sockets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from qoin.chain.block import Block, Coinbase, Payout, siblings_root, transactions_root
from qoin.chain.transaction import sign_transfer
from qoin.crypto.hashing import HASH_SIZE
from qoin.execution.account import AccountLeaf, state_key
from qoin.execution.client import ExecutionClient
from qoin.execution.state import ExecutionState, PayloadStatus
from qoin.execution.trace import TraceSummary, decode_step_records
from qoin.pow.proof import placeholder_proof
from qoin.rpc.client import RpcClient
from qoin.rpc.jwt import encode
from qoin.rpc.serve import BackgroundServer
from qoin.state.smt import Proof, verify_proof
from tests.keys import keypair_for
from tests.test_execution_state import ALICE, BOB, MINER, child, genesis, pay

SECRET = bytes(range(32))


@dataclass
class Running:
    user: str
    engine: str
    state: ExecutionState


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Running]:
    state = ExecutionState.open(tmp_path, genesis())
    client = ExecutionClient(state)
    with (
        BackgroundServer(client.user_server().app) as user,
        BackgroundServer(client.engine_server(SECRET).app) as engine,
    ):
        yield Running(user.url, engine.url, state)
    state.close()


def rpc(url: str, method: str, *params: object, token: str | None = None) -> dict[str, object]:
    """The whole JSON-RPC answer (result or error object) of one call."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    with RpcClient(url, token=(lambda: token) if token else None) as client:
        return client.post(body, method)  # type: ignore[no-any-return]


def engine(url: str, method: str, *params: object) -> dict[str, object]:
    return rpc(url, method, *params, token=encode(SECRET))


def template_on(parent: Block) -> Block:
    """What a consensus client sends: header fields, coinbase with a zero fee payout, no txs."""
    coinbase = Coinbase((Payout(MINER.address, 10), Payout(MINER.address, 0)))
    header = replace(
        parent.header,
        height=parent.header.height + 1,
        parent_hash=parent.block_hash,
        timestamp_ms=parent.header.timestamp_ms + 1000,
        transactions_root=transactions_root(coinbase, ()),
        siblings_root=siblings_root(()),
        coinbase=MINER.address,
        miner=MINER.public,
        pow_proof=placeholder_proof(MINER.suite),
        pow_nonce=bytes(HASH_SIZE),
    )
    return Block(header, (), coinbase, ())


def test_transfer_through_rpc_and_engine(node: Running) -> None:
    assert rpc(node.user, "qoin_chainId")["result"] == genesis().chain_id
    tx = sign_transfer(
        ALICE, chain_id=genesis().chain_id, nonce=0, recipient=BOB.address, amount=1234, fee=5
    )
    sent = rpc(node.user, "qoin_sendRawTransaction", tx.encode().hex())
    assert sent["result"] == tx.tx_id.hex()
    pending = rpc(node.user, "qoin_getTransactionByHash", tx.tx_id.hex())["result"]
    assert pending["pending"] is True  # type: ignore[index]
    head = genesis().block
    built = engine(
        node.engine,
        "engine_forkchoiceUpdated",
        head.block_hash.hex(),
        template_on(head).encode().hex(),
    )["result"]
    payload_id = built["payloadId"]  # type: ignore[index]
    block = Block.decode(
        bytes.fromhex(engine(node.engine, "engine_getPayload", payload_id)["result"])
    )  # type: ignore[arg-type]
    assert block.transactions == (tx,)
    assert block.coinbase.payouts[-1].amount == 5
    verdict = engine(node.engine, "engine_newPayload", block.encode().hex())["result"]
    assert verdict["status"] == "VALID"  # type: ignore[index]
    engine(node.engine, "engine_forkchoiceUpdated", block.block_hash.hex())
    assert rpc(node.user, "qoin_blockNumber")["result"] == 1
    assert rpc(node.user, "qoin_getBalance", str(BOB.address))["result"] == 1234
    receipt = rpc(node.user, "qoin_getTransactionReceipt", tx.tx_id.hex())["result"]
    assert receipt["blockHash"] == block.block_hash.hex()  # type: ignore[index]
    assert receipt["index"] == 0 and receipt["fee"] == tx.fee  # type: ignore[index]
    assert receipt["revealedKeys"] is (tx.public_keys is not None)  # type: ignore[index]
    proof = rpc(node.user, "qoin_getProof", str(BOB.address))["result"]
    value = verify_proof(
        bytes.fromhex(proof["stateRoot"]),
        state_key(BOB.address),  # type: ignore[index]
        Proof.decode(bytes.fromhex(proof["proof"])),
    )  # type: ignore[index]
    assert AccountLeaf.decode(value or b"") == AccountLeaf(1234)
    witness = engine(node.engine, "engine_getWitness", block.block_hash.hex())["result"]
    assert isinstance(witness, str) and len(witness) > 0
    bob_key = state_key(BOB.address).hex()
    proofs = engine(node.engine, "engine_getProofs", block.block_hash.hex(), [bob_key])["result"]
    assert [entry["key"] for entry in proofs["proofs"]] == [bob_key]  # type: ignore[index]
    trace = engine(node.engine, "engine_getTrace", block.block_hash.hex())["result"]
    steps = TraceSummary.decode(bytes.fromhex(trace)).steps  # type: ignore[arg-type]
    assert len(steps) == 3  # cron, the transfer, the payouts
    assert state_key(BOB.address) in dict(steps[1].post)
    served = engine(node.engine, "engine_getSteps", block.block_hash.hex(), [1])["result"]
    records = decode_step_records(bytes.fromhex(served))  # type: ignore[arg-type]
    assert list(records) == [1] and steps[1].mismatch(records[1]) is None
    assert AccountLeaf.decode(dict(records[1].post)[state_key(BOB.address)]) == AccountLeaf(1234)
    assert rpc(node.user, "qoin_getBlockByNumber", 1)["result"]["hash"] == block.block_hash.hex()  # type: ignore[index]


def test_a_verdict_asked_by_hash(node: Running, tmp_path: Path) -> None:
    """``engine_getVerdict``: the ``engine_newPayload`` answer for a block executed and held
    (VALID: on the head's branch or a side one); "unknown block <hash>" for one not held, found
    invalid, or ACCEPTED (stored, not executed yet)."""
    g = genesis().block
    scratch = ExecutionState.open(tmp_path / "scratch", genesis(), retain=8)  # the roots
    side = ExecutionState.open(tmp_path / "side", genesis(), retain=8)
    try:
        a1 = child(scratch, g, (pay(0, 100),))
        b1 = child(side, g, (pay(0, 7),), salt=1)  # another post-state: not retained here
        assert side.new_payload(b1).status is PayloadStatus.VALID
        b2 = child(side, b1)
    finally:
        scratch.close()
        side.close()

    def verdict(block: Block) -> dict[str, object]:
        return engine(node.engine, "engine_getVerdict", block.block_hash.hex())

    def sent(block: Block) -> object:
        return engine(node.engine, "engine_newPayload", block.encode().hex())["result"]["status"]  # type: ignore[index]

    unknown = verdict(a1)["error"]
    assert f"unknown block {a1.block_hash.hex()}" in unknown["message"]  # type: ignore[index]
    assert sent(a1) == "VALID"
    assert verdict(a1)["result"] == {"status": "VALID", "validationError": None}
    assert sent(b1) == "VALID"  # a side block whose parent's state is retained: executed
    assert verdict(b1)["result"] == {"status": "VALID", "validationError": None}
    assert sent(b2) == "ACCEPTED"  # stored, not executed
    assert "unknown block" in verdict(b2)["error"]["message"]  # type: ignore[index]
    bad = replace(a1, header=replace(a1.header, state_root=bytes(32), timestamp_ms=1))
    assert sent(bad) == "INVALID"
    assert "unknown block" in verdict(bad)["error"]["message"]  # type: ignore[index]
    assert engine(node.engine, "engine_getVerdict", "zz")["error"]["code"] == -32602  # type: ignore[index]


def test_errors(node: Running) -> None:
    assert rpc(node.user, "qoin_getBalance", "qoin1bad")["error"]["code"] == -32602  # type: ignore[index]
    assert rpc(node.user, "qoin_sendRawTransaction", "zz")["error"]["code"] == -32602  # type: ignore[index]
    assert rpc(node.user, "qoin_nope")["error"]["code"] == -32601  # type: ignore[index]
    foreign = sign_transfer(
        keypair_for(index=7), chain_id=1, nonce=0, recipient=BOB.address, amount=1, fee=1
    )
    refused = rpc(node.user, "qoin_sendRawTransaction", foreign.encode().hex())["error"]
    assert refused["code"] == -32000 and "WrongChainId" in refused["message"]  # type: ignore[index]
    unauthenticated = httpx.post(
        node.engine,
        json={"jsonrpc": "2.0", "id": 1, "method": "engine_getPayload", "params": ["x"]},
        timeout=10,
    )
    assert unauthenticated.status_code == 401
    assert engine(node.engine, "engine_getPayload", "nope")["error"]["code"] == -32000  # type: ignore[index]


def test_refused_transactions_carry_the_refusal_class(node: Running) -> None:
    """A -32000 refusal of ``qoin_sendRawTransaction`` says in ``data`` whether the transaction
    can never be valid (intrinsic) or was refused for the state or the pool (stateful)."""
    foreign = sign_transfer(
        keypair_for(index=7), chain_id=1, nonce=0, recipient=BOB.address, amount=1, fee=1
    )
    broke = sign_transfer(
        keypair_for(index=7), chain_id=genesis().chain_id, nonce=0, recipient=BOB.address,
        amount=1, fee=1,
    )  # fmt: skip
    accepted = sign_transfer(
        ALICE, chain_id=genesis().chain_id, nonce=0, recipient=BOB.address, amount=1, fee=1
    )
    assert rpc(node.user, "qoin_sendRawTransaction", accepted.encode().hex())["result"]
    for tx, name, refusal in (
        (foreign, "WrongChainId", "intrinsic"),
        (broke, "InsufficientFunds", "stateful"),
        (accepted, "AlreadyKnown", None),
    ):
        error = rpc(node.user, "qoin_sendRawTransaction", tx.encode().hex())["error"]
        assert error["code"] == -32000 and error["message"].startswith(f"{name}: ")  # type: ignore[index]
        assert error["data"] == {"refusal": refusal}  # type: ignore[index]


def test_parameter_bounds(node: Running) -> None:
    assert rpc(node.user, "qoin_getBlockByNumber", 2**70)["error"]["code"] == -32602  # type: ignore[index]
    assert rpc(node.user, "qoin_getBalance", str(BOB.address), 2**64)["error"]["code"] == -32602  # type: ignore[index]
    many = [str(BOB.address)] * 1025
    head = genesis().block.block_hash.hex()
    assert engine(node.engine, "engine_getProofs", head, many)["error"]["code"] == -32602  # type: ignore[index]
    assert engine(node.engine, "engine_getProofs", head, [1, 2])["error"]["code"] == -32602  # type: ignore[index]
    unknown = engine(node.engine, "engine_forkchoiceUpdated", "ab" * 32)["result"]
    assert unknown["payloadStatus"]["status"] == "SYNCING"  # type: ignore[index]
