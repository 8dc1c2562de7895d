"""The journal of local transactions: its file format, torn records, its bound, and the execution
client's replay of it on restart (real files; the process-level crash test is in
``test_execution_journal_crash.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from qoin.chain.genesis import to_json
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.execution.client import ExecutionClient
from qoin.execution.journal import (
    JOURNAL_FILE,
    MAGIC,
    JournalFull,
    TransactionJournal,
    parse,
    record,
)
from qoin.execution.state import ExecutionState
from qoin.rpc.server import RpcError
from tests.keys import keypair_for
from tests.test_execution_state import ALICE, BOB, child, genesis

CHAIN = genesis().chain_id


def pay(nonce: int, amount: int = 1_000, fee: int = 5) -> Transaction:
    return sign_transfer(
        ALICE, chain_id=CHAIN, nonce=nonce, recipient=BOB.address, amount=amount, fee=fee,
        reveal_keys=nonce == 0,
    )  # fmt: skip


TXS = [pay(nonce) for nonce in range(4)]


def test_records_round_trip_and_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    journal = TransactionJournal(tmp_path / JOURNAL_FILE)
    assert journal.load().transactions == ()  # no file yet
    journal.rewrite([])
    for tx in TXS:
        journal.append(tx)
    data = (tmp_path / JOURNAL_FILE).read_bytes()
    assert data == MAGIC + b"".join(record(tx) for tx in TXS)
    assert journal.size == len(data)
    assert journal.load().transactions == tuple(TXS)
    journal.close()
    # Every cut inside the last record leaves the first three; the cut bytes are reported.
    last = len(record(TXS[-1]))
    for cut in range(1, last + 1):
        contents = parse(data[:-cut])
        assert contents.transactions == tuple(TXS[:3]), cut
        assert contents.ignored_bytes == last - cut
    # A corrupted record ends the journal there (CRC), as does any junk after the last record.
    first = len(MAGIC) + len(record(TXS[0]))
    flipped = bytearray(data)
    flipped[first + 100] ^= 1
    assert parse(bytes(flipped)).transactions == (TXS[0],)
    assert parse(data + b"\x00" * 7).transactions == tuple(TXS)
    assert parse(data + b"\xff" * 9).ignored_bytes == 9
    # A file that is not a journal holds nothing.
    assert parse(b"").transactions == () and parse(b"junk" + data).transactions == ()


def test_rewrite_replaces_atomically_and_the_bound_holds(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    bound = len(MAGIC) + sum(len(record(tx)) for tx in TXS[:2])
    journal = TransactionJournal(path, max_bytes=bound)
    with pytest.raises(JournalFull, match="rewritten first"):
        journal.append(TXS[0])  # never written: the owner must rewrite it first
    journal.rewrite(TXS)  # what does not fit is left out
    assert journal.load().transactions == tuple(TXS[:2])
    assert not journal.fits(TXS[2])
    with pytest.raises(JournalFull, match="full"):
        journal.append(TXS[2])
    assert journal.load().transactions == tuple(TXS[:2])
    journal.rewrite(TXS[1:2])
    journal.append(TXS[3])
    assert journal.load().transactions == (TXS[1], TXS[3])
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOURNAL_FILE]  # no temporary file left
    journal.close()


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    return tmp_path / "execution"


def open_client(datadir: Path, max_bytes: int | None = None) -> ExecutionClient:
    state = ExecutionState.open(datadir, genesis())
    path = datadir / JOURNAL_FILE
    journal = TransactionJournal(path) if max_bytes is None else TransactionJournal(path, max_bytes)
    return ExecutionClient(state, journal)


@pytest.fixture
def clients(datadir: Path) -> Iterator[list[ExecutionClient]]:
    """Clients the test opens (one at a time on the datadir); closed at the end."""
    opened: list[ExecutionClient] = []
    yield opened
    for client in opened:
        if client.journal is not None:
            client.journal.close()
        client.state.close()


def reopen(clients: list[ExecutionClient], datadir: Path) -> ExecutionClient:
    """Close the last client without saving its journal (as a crash would), open a new one."""
    if clients:
        last = clients.pop()
        assert last.journal is not None
        last.journal.close()
        last.state.close()
    clients.append(open_client(datadir))
    return clients[-1]


def test_local_transactions_come_back_after_a_restart(
    datadir: Path, clients: list[ExecutionClient]
) -> None:
    client = reopen(clients, datadir)
    assert client.restore_local_transactions() == (0, 0, 0)
    for tx in TXS:
        assert client.send_raw_transaction(tx) == tx.tx_id.hex()
    relayed = sign_transfer(
        keypair_for(index=3), chain_id=CHAIN, nonce=0, recipient=ALICE.address, amount=0, fee=0
    )
    assert client.submit_transactions([relayed.encode().hex()])[0]["status"] == "added"
    # A block includes the first two; then the process dies with its journal unrewritten.
    block = child(client.state, genesis().block, tuple(TXS[:2]))
    assert client.new_payload(block)["status"] == "VALID"
    assert len(client.mempool) == 3
    journal = datadir / JOURNAL_FILE
    cut = len(record(TXS[3])) // 2
    journal.write_bytes(journal.read_bytes()[:-cut])  # a torn append: the RPC never answered it

    client = reopen(clients, datadir)
    assert client.restore_local_transactions() == (1, 2, len(record(TXS[3])) - cut)
    assert [client.mempool.get(tx.tx_id) for tx in TXS] == [None, None, TXS[2], None]
    assert relayed.tx_id not in client.mempool  # relayed transactions are not journaled
    assert parse(journal.read_bytes()).transactions == (TXS[2],)  # rewritten clean
    assert client.send_raw_transaction(TXS[3]) == TXS[3].tx_id.hex()

    client = reopen(clients, datadir)
    assert client.restore_local_transactions() == (2, 0, 0)
    assert client.mempool.pending_of(ALICE.address) == TXS[2:]
    block = child(client.state, block, (TXS[2],))
    assert client.new_payload(block)["status"] == "VALID"
    client.save_journal()  # as on a clean stop: only what is still pending
    assert parse(journal.read_bytes()).transactions == (TXS[3],)


def test_replacements_replay_in_order(datadir: Path, clients: list[ExecutionClient]) -> None:
    client = reopen(clients, datadir)
    client.restore_local_transactions()
    later, first = pay(1), pay(0, fee=5)
    dearer = pay(0, fee=50)
    for tx in (first, later, dearer):  # nonce 1 before its replaced nonce 0
        client.send_raw_transaction(tx)
    client = reopen(clients, datadir)
    assert client.restore_local_transactions() == (2, 1, 0)  # `first` stays replaced
    assert client.mempool.pending_of(ALICE.address) == [dearer, later]


def test_a_full_journal_refuses_and_leaves_the_pool_unchanged(datadir: Path) -> None:
    bound = len(MAGIC) + sum(len(record(tx)) for tx in TXS[:2])
    client = open_client(datadir, max_bytes=bound)
    try:
        client.restore_local_transactions()
        client.send_raw_transaction(TXS[0])
        client.send_raw_transaction(TXS[1])
        with pytest.raises(RpcError) as refused:
            client.send_raw_transaction(TXS[2])
        assert refused.value.message.startswith("JournalFull: ")
        assert refused.value.data == {"refusal": "stateful"}
        assert TXS[2].tx_id not in client.mempool and len(client.mempool) == 2
        # Once one is included, the rewrite before the append makes room.
        block = child(client.state, genesis().block, (TXS[0],))
        assert client.new_payload(block)["status"] == "VALID"
        client.send_raw_transaction(TXS[2])
        assert client.journal is not None
        assert client.journal.load().transactions == (TXS[1], TXS[2])
    finally:
        assert client.journal is not None
        client.journal.close()
        client.state.close()


FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from pathlib import Path
    from qoin.chain.genesis import from_json
    from qoin.chain.transaction import Transaction
    from qoin.execution.client import ExecutionClient
    from qoin.execution.journal import JOURNAL_FILE, TransactionJournal, record
    from qoin.execution.state import ExecutionState
    from qoin.process import lifeline
    from qoin.rpc.server import RpcError

    lifeline(int(sys.argv[2]))  # dies with the test
    datadir = Path(sys.argv[1])
    given = json.loads(sys.stdin.read())
    TXS = [Transaction.decode(bytes.fromhex(tx)) for tx in given["transactions"]]
    state = ExecutionState.open(datadir, from_json(given["genesis"]))
    client = ExecutionClient(state, TransactionJournal(datadir / JOURNAL_FILE))
    client.restore_local_transactions()
    client.send_raw_transaction(TXS[0])
    journal = datadir / JOURNAL_FILE
    size = journal.stat().st_size
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Room for half a record (a short write), then for less than the journal (its rewrite fails).
    for limit in (size + len(record(TXS[1])) // 2, size // 2):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            client.send_raw_transaction(TXS[1])
        except RpcError as exc:
            assert exc.message.startswith("JournalError: "), exc.message
            assert exc.data == {"refusal": "stateful"}, exc.data
        else:
            raise AssertionError("admitted without being journaled")
        assert TXS[1].tx_id not in client.mempool and len(client.mempool) == 1
        assert journal.stat().st_size == size  # no torn record of the refused one
        leftovers = sorted(p.name for p in datadir.iterdir() if p.name.startswith(JOURNAL_FILE))
        assert leftovers == [JOURNAL_FILE], leftovers  # no partial copy holds the space
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    client.send_raw_transaction(TXS[1])
    client.send_raw_transaction(TXS[2])
    os._exit(0)  # a crash: the journal is not rewritten
    """
)


def test_a_full_disk_refuses_and_loses_nothing_acknowledged(
    datadir: Path, clients: list[ExecutionClient]
) -> None:
    """A write that fails (the process's file size limit: EFBIG, as ENOSPC on a full disk) refuses
    the transaction with the pool unchanged and leaves no partial copy behind; once there is
    space again, every transaction acknowledged before and after survives a crash."""
    given = {"genesis": to_json(genesis()), "transactions": [tx.encode().hex() for tx in TXS]}
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(datadir), str(os.getpid())],
        input=json.dumps(given),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    client = reopen(clients, datadir)
    assert client.restore_local_transactions() == (3, 0, 0)
    assert client.mempool.pending_of(ALICE.address) == TXS[:3]


def test_a_cursor_of_the_previous_life_gets_the_restored_transactions(
    datadir: Path, clients: list[ExecutionClient]
) -> None:
    """A consensus client that outlived the execution client's restart keeps its cursor: the new
    life numbers its admissions above it, so the restored local transactions are gossiped again
    (however many there are)."""
    client = reopen(clients, datadir)
    client.restore_local_transactions()
    for tx in TXS:
        client.send_raw_transaction(tx)
    answer = client.pending_transactions(0)
    assert answer["transactions"] == [tx.encode().hex() for tx in TXS]
    client = reopen(clients, datadir)
    assert client.restore_local_transactions() == (4, 0, 0)
    again = client.pending_transactions(answer["next"])
    assert again["transactions"] == answer["transactions"] and again["next"] > answer["next"]
