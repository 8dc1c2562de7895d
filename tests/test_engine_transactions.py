"""Transaction gossip through the engine API: ``engine_submitTransactions`` and
``engine_pendingTransactions`` on a real engine server (JWT), driven by the consensus client's
:class:`EngineClient`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qoin.chain.block import Block
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.consensus.engine import EngineClient, EngineError, Submission, _batches
from qoin.execution.client import MAX_ENGINE_TRANSACTIONS, MAX_PENDING_BYTES, ExecutionClient
from qoin.execution.mempool import MAX_TX_SIZE, Refusal
from qoin.execution.state import ExecutionState
from qoin.p2p.messages import MAX_ANNOUNCED_TRANSACTIONS
from qoin.rpc.serve import BackgroundServer
from qoin.rpc.server import Method, Param, RpcServer
from tests.keys import keypair_for
from tests.test_execution_rpc import SECRET, template_on
from tests.test_execution_state import ALICE, BOB, genesis

CHAIN = genesis().chain_id


@dataclass
class Engine:
    client: EngineClient
    state: ExecutionState


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    state = ExecutionState.open(tmp_path, genesis())
    with BackgroundServer(ExecutionClient(state).engine_server(SECRET).app) as server:
        client = EngineClient(server.url, SECRET, timeout=30)
        yield Engine(client, state)
        client.close()
    state.close()


def statuses(answers: list[Submission]) -> list[str]:
    """The statuses of ``engine_submitTransactions`` answers, in order."""
    return [answer.status for answer in answers]


def pay(nonce: int, amount: int = 1_000, fee: int = 5) -> Transaction:
    return sign_transfer(
        ALICE, chain_id=CHAIN, nonce=nonce, recipient=BOB.address, amount=amount, fee=fee,
        reveal_keys=nonce == 0,
    )  # fmt: skip


def mine_on_head(engine: Engine) -> Block:
    """Build a payload on the head from the mempool, execute it and make it the head."""
    head = engine.state.block(engine.state.head)
    assert head is not None
    payload_id = engine.client.forkchoice_updated(head.block_hash, template_on(head))
    assert payload_id is not None
    block = engine.client.get_payload(payload_id)
    assert engine.client.new_payload(block).status == "VALID"
    engine.client.forkchoice_updated(block.block_hash)
    return block


def test_the_bound_is_the_p2p_message_bound() -> None:
    assert MAX_ENGINE_TRANSACTIONS == MAX_ANNOUNCED_TRANSACTIONS


def test_submit_then_resubmit(engine: Engine) -> None:
    t0, t1 = pay(0), pay(1)
    assert statuses(engine.client.submit_transactions([t0, t1])) == ["added", "added"]
    assert statuses(engine.client.submit_transactions([t1, t0])) == ["known", "known"]
    assert statuses(engine.client.submit_transactions([])) == []


def test_large_submissions_are_split(engine: Engine) -> None:
    t0 = pay(0)
    many = [t0] * (MAX_ENGINE_TRANSACTIONS + 100)
    batches = list(_batches(many))
    assert [t for batch in batches for t in batch] == many and len(batches) > 1
    for batch in batches:
        assert len(batch) <= MAX_ENGINE_TRANSACTIONS
        assert sum(len(t.encode()) for t in batch) <= MAX_PENDING_BYTES
    assert statuses(engine.client.submit_transactions(many)) == ["added"] + ["known"] * (
        len(many) - 1
    )


def test_bad_transactions_are_rejected_with_a_reason(engine: Engine) -> None:
    foreign = sign_transfer(
        keypair_for(index=7), chain_id=1, nonce=0, recipient=BOB.address, amount=1, fee=1
    )
    broke = sign_transfer(
        keypair_for(index=8), chain_id=CHAIN, nonce=0, recipient=BOB.address, amount=1, fee=1
    )
    assert statuses(engine.client.submit_transactions([foreign, pay(0), broke])) == [
        "rejected",
        "added",
        "rejected",
    ]
    raws = [
        "zz",
        "",
        pay(1).encode().hex() + "00",
        "00" * (MAX_TX_SIZE + 1),
        foreign.encode().hex(),
    ]
    answer = engine.client.call("engine_submitTransactions", raws)
    assert [entry["status"] for entry in answer] == ["rejected"] * 5
    assert all(entry["reason"].startswith("undecodable: ") for entry in answer[:4])
    assert [entry["id"] for entry in answer[:4]] == [None] * 4
    assert answer[4]["id"] == foreign.tx_id.hex()
    assert answer[4]["reason"].startswith("WrongChainId: ")
    with pytest.raises(EngineError, match="invalid params"):
        engine.client.call("engine_submitTransactions", [1])
    with pytest.raises(EngineError, match="invalid params"):
        engine.client.call("engine_submitTransactions", ["00"] * (MAX_ENGINE_TRANSACTIONS + 1))


def test_each_answer_says_why_a_transaction_was_refused(engine: Engine) -> None:
    """``refusal``: intrinsic (never valid anywhere: the relay is at fault), stateful (depends on
    the state or the pool), null when added or known."""
    t0 = pay(0)
    forged = Transaction(**{**pay(1).__dict__, "amount": 2})
    foreign = sign_transfer(
        keypair_for(index=7), chain_id=1, nonce=0, recipient=BOB.address, amount=1, fee=1
    )
    overflow = pay(1, amount=2**64 - 1)
    keys_of_another = Transaction(**{**pay(1).__dict__, "public_keys": BOB.public})
    unrevealed = sign_transfer(
        keypair_for(index=8), chain_id=CHAIN, nonce=0, recipient=BOB.address, amount=0, fee=0,
        reveal_keys=False,
    )  # fmt: skip
    broke = sign_transfer(
        keypair_for(index=8), chain_id=CHAIN, nonce=0, recipient=BOB.address, amount=1, fee=1
    )
    expected = [
        (t0.encode().hex(), "added", None),
        (t0.encode().hex(), "known", None),
        ("zz", "rejected", "intrinsic"),
        (pay(1).encode().hex() + "00", "rejected", "intrinsic"),
        (forged.encode().hex(), "rejected", "intrinsic"),
        (foreign.encode().hex(), "rejected", "intrinsic"),
        (overflow.encode().hex(), "rejected", "intrinsic"),
        (keys_of_another.encode().hex(), "rejected", "intrinsic"),
        (unrevealed.encode().hex(), "rejected", "stateful"),
        (broke.encode().hex(), "rejected", "stateful"),
        (pay(500).encode().hex(), "rejected", "stateful"),
        (pay(0, amount=7).encode().hex(), "rejected", "stateful"),  # replacement underpriced
        (pay(1, amount=GENESIS_ALLOCATION).encode().hex(), "rejected", "stateful"),
    ]
    answer = engine.client.call("engine_submitTransactions", [raw for raw, _, _ in expected])
    assert [(entry["status"], entry["refusal"]) for entry in answer] == [
        (status, refusal) for _, status, refusal in expected
    ], answer


def test_pending_transactions_page_with_the_cursor(engine: Engine) -> None:
    base, empty = engine.client.pending_transactions(0)  # numbers start at the start time (µs)
    assert empty == [] and base > 0
    txs = [pay(nonce) for nonce in range(5)]
    assert statuses(engine.client.submit_transactions(txs)) == ["added"] * 5
    seen: list[Transaction] = []
    cursor, page = engine.client.pending_transactions(0, limit=2)
    while page:
        assert len(page) <= 2
        seen += page
        cursor, page = engine.client.pending_transactions(cursor, limit=2)
    assert seen == txs and cursor == base + 5
    assert engine.client.pending_transactions(base + 3, limit=MAX_ENGINE_TRANSACTIONS) == (
        base + 5,
        txs[3:],
    )
    for limit in (0, MAX_ENGINE_TRANSACTIONS + 1):
        with pytest.raises(EngineError, match="invalid params"):
            engine.client.pending_transactions(0, limit=limit)
    with pytest.raises(EngineError, match="invalid params"):
        engine.client.pending_transactions(-1)


def test_included_transactions_leave_pending(engine: Engine) -> None:
    t0, t1 = pay(0), pay(1)
    base = engine.client.pending_transactions(0)[0]
    assert statuses(engine.client.submit_transactions([t0])) == ["added"]
    block = mine_on_head(engine)
    assert block.transactions == (t0,)
    assert engine.client.pending_transactions(0) == (base + 1, [])  # t0 left with its block
    assert statuses(engine.client.submit_transactions([t1, t0])) == [
        "added",
        "known",
    ]  # t0 is in the chain
    assert engine.client.pending_transactions(0) == (base + 2, [t1])
    assert engine.client.pending_transactions(base + 1) == (base + 2, [t1])
    stale = pay(0, amount=7)  # nonce 0 is used by t0: not known, refused
    assert not engine.state.has_transaction(stale.tx_id)
    assert engine.client.call("engine_submitTransactions", [stale.encode().hex()]) == [
        {
            "id": stale.tx_id.hex(),
            "status": "rejected",
            "reason": "NonceTooLow: nonce 0 already used (account nonce 1)",
            "refusal": "stateful",
        }
    ]


def test_malformed_answers_are_engine_errors() -> None:
    """A real server answering whatever the test sets: every bad shape is an EngineError."""
    answer: list[Any] = [None]
    methods = [
        Method(name, lambda **_: answer[0], (Param("a", {}), Param("b", {}, required=False)))
        for name in ("engine_pendingTransactions", "engine_submitTransactions")
    ]
    t0, t1 = pay(0), pay(1)
    good = {"id": t0.tx_id.hex(), "status": "added", "reason": None, "refusal": None}
    with BackgroundServer(RpcServer("liar", methods).app) as server:
        client = EngineClient(server.url, SECRET, timeout=30)
        pending_lies: list[Any] = [
            [],
            {"next": True, "transactions": []},
            {"next": -1, "transactions": []},
            {"next": 1, "transactions": "00"},
            {"next": 1, "transactions": [t0.encode().hex(), t1.encode().hex()]},  # limit 1
            {"next": 1, "transactions": ["zz"]},
            {"next": 1, "transactions": [t0.encode().hex() + "00"]},
            {"next": 1, "transactions": ["00" * (MAX_TX_SIZE + 1)]},
        ]
        for lie in pending_lies:
            answer[0] = lie
            with pytest.raises(EngineError, match="malformed answer"):
                client.pending_transactions(0, limit=1)
        answer[0] = {"next": 1, "transactions": [t0.encode().hex()]}
        assert client.pending_transactions(0, limit=1) == (1, [t0])
        submit_lies: list[Any] = [
            {"id": None},
            [],
            [good, good],
            [{**good, "status": "maybe"}],
            [{**good, "id": t1.tx_id.hex()}],
            [{**good, "id": None}],
            [{**good, "status": "rejected", "refusal": "maybe"}],
            [{**good, "refusal": "intrinsic"}],  # only a rejected transaction has a refusal
        ]
        for lie in submit_lies:
            answer[0] = lie
            with pytest.raises(EngineError):
                client.submit_transactions([t0])
        answer[0] = [
            {**good, "status": "rejected", "id": None, "reason": "x", "refusal": "intrinsic"}
        ]
        assert client.submit_transactions([t0]) == [Submission("rejected", Refusal.INTRINSIC)]
        del answer[0][0]["refusal"]  # a client that does not say why: no blame
        assert client.submit_transactions([t0]) == [Submission("rejected", None)]
        client.close()
