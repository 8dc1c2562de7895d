"""Block validation, import, orphans, reorgs and persistence on real mined blocks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from qoin.chain.block import Block, Coinbase, Header, Payout, transactions_root
from qoin.chain.builder import next_block, next_on_head
from qoin.chain.chain import Chain, ExecutionRejected, ExecutionUndecided, ImportStatus
from qoin.chain.issuance import block_subsidy
from qoin.chain.store import StoreError
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.chain.validation import (
    BadCoinbase,
    BadHeight,
    BadNbits,
    BadProofOfWork,
    BadSiblingsRoot,
    BadTimestamp,
    BadTransactionsRoot,
    DuplicateTransaction,
    InvalidSibling,
    UnknownParent,
    WrongChain,
    validate_block,
    validate_siblings,
)
from qoin.crypto.hybrid import HybridKeyPair
from qoin.pow.proof import max_target
from tests.chainutil import mine_next, mine_template, on_schedule, test_genesis
from tests.keys import keypair_for

FAR_FUTURE = on_schedule(test_genesis(), 100_000)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    opened = Chain.open(tmp_path, test_genesis())
    yield opened
    opened.close()


def grow(chain: Chain, count: int, keypair: HybridKeyPair | None = None) -> list[Block]:
    blocks = []
    for _ in range(count):
        block = mine_next(chain, keypair)
        chain.import_block(block, now_ms=FAR_FUTURE)
        blocks.append(block)
    return blocks


def template(
    chain: Chain, keypair: HybridKeyPair | None = None, transactions: Sequence[Transaction] = ()
) -> Block:
    """The next block on the head, not sealed (to edit, then seal with ``mine_template``)."""
    return next_on_head(chain, keypair or keypair_for(), transactions, sealed=False)


def check(chain: Chain, block: Block) -> None:
    validate_block(chain.genesis, chain.store, block, FAR_FUTURE)


def test_valid_chain_imports_and_reopens(tmp_path: Path) -> None:
    chain = Chain.open(tmp_path, test_genesis())
    blocks = grow(chain, 5)
    assert chain.head == blocks[-1].block_hash
    assert chain.store.canonical_hash(3) == blocks[2].block_hash
    chain.close()
    again = Chain.open(tmp_path, test_genesis())
    assert again.head == blocks[-1].block_hash
    assert again.import_block(blocks[2]).status is ImportStatus.DUPLICATE
    again.close()


def test_other_network_datadir_refused(tmp_path: Path) -> None:
    Chain.open(tmp_path, test_genesis()).close()

    with pytest.raises(StoreError, match="another network"):
        Chain.open(tmp_path, test_genesis(block_time_ms=2_000))


def test_wrong_chain(chain: Chain) -> None:
    with pytest.raises(WrongChain):
        check(chain, mine_next(chain, chain_id=1))


def test_unknown_parent(chain: Chain) -> None:
    block = mine_next(chain, parent_hash=b"\x42" * 32)
    with pytest.raises(UnknownParent):
        check(chain, block)
    assert chain.import_block(block).status is ImportStatus.ORPHAN


def test_bad_height(chain: Chain) -> None:
    with pytest.raises(BadHeight):
        check(chain, mine_next(chain, height=5))


def test_bad_nbits(chain: Chain) -> None:
    with pytest.raises(BadNbits):
        check(chain, mine_next(chain, nbits=(96 << 8) | 64))


def test_timestamp_rules(chain: Chain) -> None:
    grow(chain, 3)
    old = chain.store.ancestor_timestamps(chain.head, 11)
    with pytest.raises(BadTimestamp, match="median"):
        check(chain, mine_next(chain, timestamp_ms=sorted(old)[(len(old) - 1) // 2]))
    future = mine_next(chain, timestamp_ms=FAR_FUTURE + 60_000)
    with pytest.raises(BadTimestamp, match="ahead"):
        check(chain, future)


def test_difficulty_and_pow(chain: Chain) -> None:
    grow(chain, 1)
    with pytest.raises(BadProofOfWork, match="TargetMismatch"):
        check(chain, mine_next(chain, target=max_target(chain.genesis.nbits) - 1))
    good = mine_next(chain)
    forged = replace(good, header=replace(good.header, pow_r=b"\x01" * 32))
    with pytest.raises(BadProofOfWork, match="ProofSignatureInvalid"):
        check(chain, forged)


def test_body_roots(chain: Chain) -> None:
    with pytest.raises(BadTransactionsRoot):
        check(chain, mine_next(chain, transactions_root=b"\x00" * 32))
    with pytest.raises(BadSiblingsRoot):
        check(chain, mine_next(chain, siblings_root=b"\x00" * 32))


def test_coinbase_must_be_exact(chain: Chain) -> None:
    grow(chain, 2)
    base = template(chain)
    payouts = list(base.coinbase.payouts)
    payouts[0] = Payout(payouts[0].recipient, payouts[0].amount + 1)
    greedy = Coinbase(tuple(payouts))
    edited = replace(
        base,
        coinbase=greedy,
        header=replace(base.header, transactions_root=transactions_root(greedy, ())),
    )
    with pytest.raises(BadCoinbase, match="the rules give"):
        check(chain, mine_template(edited))


def fork_generation(chain: Chain) -> tuple[Block, Block]:
    """Two children of the head, by different miners; returns them."""
    first = mine_next(chain, keypair_for(index=0))
    second = mine_next(chain, keypair_for(index=1))
    chain.import_block(first, now_ms=FAR_FUTURE)
    chain.import_block(second, now_ms=FAR_FUTURE)
    return first, second


def test_sibling_reward_split_and_fees(chain: Chain) -> None:
    grow(chain, 2)
    first, second = fork_generation(chain)
    head = chain.head_header
    other = second if head.block_hash == first.block_hash else first
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    tx = sign_transfer(
        alice, chain_id=chain.genesis.chain_id, nonce=0, recipient=bob.address, amount=5, fee=7
    )
    block = mine_template(
        template(chain, keypair_for(index=4), transactions=[tx]), keypair_for(index=4)
    )
    assert block.siblings == (other.header,)
    reward = block_subsidy(chain.genesis.issuance, head.height)
    share, rest = divmod(reward, 2)
    assert [p.amount for p in block.coinbase.payouts] == [share + rest, share, 7]
    assert [p.recipient for p in block.coinbase.payouts] == [
        head.coinbase,
        other.header.coinbase,
        keypair_for(index=4).address,
    ]
    result = chain.import_block(block, now_ms=FAR_FUTURE)
    assert result.status is ImportStatus.IMPORTED
    assert chain.head == block.block_hash


def _with_siblings(chain: Chain, siblings: tuple[Header, ...]) -> Block:
    return next_block(chain.genesis, chain.head_header, keypair_for(), siblings=siblings)


def test_sibling_rules(chain: Chain) -> None:
    grow(chain, 2)
    first, second = fork_generation(chain)
    head = chain.head_header
    parent_block = first if head.block_hash == first.block_hash else second
    other = second if parent_block is first else first
    # the parent itself
    with pytest.raises(InvalidSibling, match="parent itself"):
        check(chain, _with_siblings(chain, (parent_block.header,)))
    # not in the parent's generation (an older block)
    older = chain.store.header(chain.store.canonical_hash(1) or b"")
    assert older is not None
    with pytest.raises(InvalidSibling, match="generation"):
        check(chain, _with_siblings(chain, (older,)))
    # twice
    with pytest.raises(InvalidSibling, match="unique"):
        check(chain, _with_siblings(chain, (other.header, other.header)))
    # a sibling with a broken proof-of-work
    broken = replace(other.header, pow_r=b"\x07" * 32)
    with pytest.raises(BadProofOfWork, match="sibling"):
        check(chain, _with_siblings(chain, (broken,)))
    # and the valid reference passes
    check(chain, _with_siblings(chain, (other.header,)))


def test_children_of_genesis_have_no_siblings(chain: Chain) -> None:
    first, second = fork_generation(chain)
    with pytest.raises(InvalidSibling, match="genesis"):
        validate_siblings(
            chain.genesis, chain.store, chain.genesis.header, (second.header,), FAR_FUTURE
        )
    # one level up the same header is a valid sibling reference
    other = second if chain.head == first.block_hash else first
    check(chain, _with_siblings(chain, (other.header,)))


def test_transactions_rules(chain: Chain) -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    tx = sign_transfer(
        alice, chain_id=chain.genesis.chain_id, nonce=0, recipient=bob.address, amount=1, fee=1
    )
    with pytest.raises(DuplicateTransaction):
        check(chain, mine_template(template(chain, transactions=[tx, tx])))
    foreign = sign_transfer(alice, chain_id=1, nonce=0, recipient=bob.address, amount=1, fee=1)
    with pytest.raises(WrongChain, match="transaction"):
        check(chain, mine_template(template(chain, transactions=[foreign])))


def test_orphans_connect_when_parent_arrives(tmp_path: Path) -> None:
    source = Chain.open(tmp_path / "a", test_genesis())
    blocks = grow(source, 4)
    source.close()
    chain = Chain.open(tmp_path / "b", test_genesis())
    for block in reversed(blocks[1:]):
        assert chain.import_block(block, now_ms=FAR_FUTURE).status is ImportStatus.ORPHAN
    assert chain.head == chain.genesis.genesis_hash
    result = chain.import_block(blocks[0], now_ms=FAR_FUTURE)
    assert result.connected == tuple(b.block_hash for b in blocks)
    assert chain.head == blocks[-1].block_hash
    assert len(chain.orphans) == 0
    chain.close()


def test_reorg_updates_canonical_index(tmp_path: Path) -> None:
    chain = Chain.open(tmp_path / "main", test_genesis())
    shared = grow(chain, 2)
    short = grow(chain, 3, keypair_for(index=0))
    # a competing branch from the fork point (height 2), built in another store
    other = Chain.open(tmp_path / "other", test_genesis())
    for block in shared:
        other.import_block(block, now_ms=FAR_FUTURE)
    longer = grow(other, 5, keypair_for(index=1))
    other.close()
    results = [chain.import_block(block, now_ms=FAR_FUTURE) for block in longer]
    assert chain.head == longer[-1].block_hash
    assert max(r.reorg_depth for r in results) == len(short)
    for block in shared + longer:
        assert chain.store.canonical_hash(block.header.height) == block.block_hash
    assert chain.store.canonical_hash(longer[-1].header.height + 1) is None
    chain.close()
    reopened = Chain.open(tmp_path / "main", test_genesis())
    assert reopened.head == longer[-1].block_hash
    reopened.close()


def test_stripping_revealed_keys_changes_the_block(chain: Chain) -> None:
    """A relay that strips a first-spend transaction's keys must not keep the block hash valid."""
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    tx = sign_transfer(
        alice, chain_id=chain.genesis.chain_id, nonce=0, recipient=bob.address, amount=1, fee=1
    )
    block = mine_template(template(chain, transactions=[tx]))
    check(chain, block)
    stripped_tx = replace(tx, public_keys=None)
    assert stripped_tx.tx_id == tx.tx_id
    stripped = replace(block, transactions=(stripped_tx,))
    assert stripped.block_hash == block.block_hash
    with pytest.raises(BadTransactionsRoot):
        check(chain, stripped)


def test_data_directory_is_locked(tmp_path: Path) -> None:
    first = Chain.open(tmp_path, test_genesis())
    with pytest.raises(StoreError, match="in use"):
        Chain.open(tmp_path, test_genesis())
    first.close()
    Chain.open(tmp_path, test_genesis()).close()


def test_orphans_need_valid_pow_and_chain(chain: Chain) -> None:
    orphan = mine_next(chain, parent_hash=b"\x42" * 32)
    forged = replace(orphan, header=replace(orphan.header, pow_r=b"\x01" * 32))
    with pytest.raises(BadProofOfWork, match="orphan"):
        chain.import_block(forged, now_ms=FAR_FUTURE)
    with pytest.raises(WrongChain):
        chain.import_block(
            mine_next(chain, parent_hash=b"\x42" * 32, chain_id=9), now_ms=FAR_FUTURE
        )
    assert len(chain.orphans) == 0


def test_execution_check_rejects_remembers_and_defers(tmp_path: Path) -> None:
    """A consensus client's chain stores a block only once its execution check passes: a
    rejected block and its descendants fail at once afterwards; an undecided block is not stored,
    not remembered, and an orphan waiting on it goes back to the pool."""
    verdicts: dict[bytes, str] = {}
    checked: list[bytes] = []

    def check(block: Block) -> None:
        checked.append(block.block_hash)
        verdict = verdicts.get(block.block_hash, "valid")
        if verdict == "invalid":
            raise ExecutionRejected("state root mismatch")
        if verdict == "undecided":
            raise ExecutionUndecided("no execution client answered")

    producer = Chain.open(tmp_path / "producer", test_genesis())
    chain = Chain.open(tmp_path / "judged", test_genesis(), execution_check=check)
    try:
        first, second, third = grow(producer, 3)
        verdicts[first.block_hash] = "invalid"
        with pytest.raises(ExecutionRejected, match="state root mismatch"):
            chain.import_block(first, now_ms=FAR_FUTURE)
        assert not chain.has_block(first.block_hash) and chain.head_header.height == 0
        with pytest.raises(ExecutionRejected, match="rejected before"):
            chain.import_block(first, now_ms=FAR_FUTURE)
        with pytest.raises(ExecutionRejected, match=r"parent .* is invalid"):
            chain.import_block(second, now_ms=FAR_FUTURE)
        assert checked == [first.block_hash]  # neither re-submission was executed again

        verdicts[first.block_hash] = "undecided"
        other = Chain.open(tmp_path / "judged-2", test_genesis(), execution_check=check)
        try:
            assert other.import_block(third, now_ms=FAR_FUTURE).status is ImportStatus.ORPHAN
            assert other.import_block(second, now_ms=FAR_FUTURE).status is ImportStatus.ORPHAN
            with pytest.raises(ExecutionUndecided):
                other.import_block(first, now_ms=FAR_FUTURE)
            assert other.head_header.height == 0 and first.block_hash not in other.invalid
            verdicts[first.block_hash] = "valid"  # the execution clients are back
            result = other.import_block(first, now_ms=FAR_FUTURE)
            assert result.connected == (first.block_hash, second.block_hash, third.block_hash)
            assert other.head == third.block_hash
        finally:
            other.close()
    finally:
        chain.close()
        producer.close()


def test_an_undecided_orphan_is_not_kept_under_a_stored_parent(tmp_path: Path) -> None:
    """An orphan whose execution is undecided once its parent is stored leaves the pool (under a
    stored parent it could never connect, and the pool would name a block we hold as missing);
    the orphans above it keep waiting on it, which the pool names as the block to fetch."""
    verdicts: dict[bytes, str] = {}

    def check(block: Block) -> None:
        if verdicts.get(block.block_hash) == "undecided":
            raise ExecutionUndecided("no execution client answered")

    producer = Chain.open(tmp_path / "producer", test_genesis())
    chain = Chain.open(tmp_path / "judged", test_genesis(), execution_check=check)
    try:
        first, second, third = grow(producer, 3)
        verdicts[second.block_hash] = "undecided"
        for orphan in (third, second):
            assert chain.import_block(orphan, now_ms=FAR_FUTURE).status is ImportStatus.ORPHAN
        result = chain.import_block(first, now_ms=FAR_FUTURE)
        assert result.connected == (first.block_hash,) and not result.rejected_orphans
        assert second.block_hash not in chain.orphans
        assert third.block_hash in chain.orphans
        assert chain.orphans.missing_parents() == {second.block_hash}
        verdicts.clear()  # the execution clients are back; a peer sends the block again
        result = chain.import_block(second, now_ms=FAR_FUTURE)
        assert result.connected == (second.block_hash, third.block_hash)
        assert len(chain.orphans) == 0 and chain.head == third.block_hash
    finally:
        chain.close()
        producer.close()
