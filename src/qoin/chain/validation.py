"""Block validation: every consensus rule a consensus client checks, with a typed reason each.

The rules, in the order they are checked, are listed in ``docs/spec/chain.md``. Account state is not
needed here (the consensus client has none): transaction signatures, nonces and balances are the
execution layer's verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from qoin.chain.block import (
    MAX_BLOCK_SIZE,
    Block,
    Coinbase,
    Header,
    Payout,
    siblings_root,
    transactions_root,
)
from qoin.chain.forkchoice import BlockMeta
from qoin.chain.genesis import Genesis
from qoin.chain.issuance import SUPPLY_CAP, block_subsidy
from qoin.crypto.address import Address
from qoin.encoding.codec import OversizeField
from qoin.errors import QoinError
from qoin.pow.difficulty import MEDIAN_TIME_SPAN, TimestampError, asert_target, check_timestamp
from qoin.pow.proof import PowError, params_of, verify_header_pow


class InvalidBlock(QoinError):
    """A block breaks a consensus rule; the subclass names the rule."""


class WrongChain(InvalidBlock):
    """The block (or one of its transactions or siblings) is for another chain id."""


class UnknownParent(InvalidBlock):
    """The parent is not known (the caller may keep the block as an orphan)."""


class BadHeight(InvalidBlock):
    """The height is not the parent's height plus one."""


class BadNbits(InvalidBlock):
    """The header's MQ parameters are not this network's."""


class BadTimestamp(InvalidBlock):
    """The timestamp breaks the median-time-past or future-drift rule."""


class BadProofOfWork(InvalidBlock):
    """The header's proof-of-work fails (the message names the PoW check)."""


class BlockTooLarge(InvalidBlock):
    """The encoded block exceeds the size bound."""


class BadTransactionsRoot(InvalidBlock):
    """The header's transactions root does not commit to the body's coinbase and transactions."""


class BadSiblingsRoot(InvalidBlock):
    """The header's siblings root does not commit to the body's sibling headers."""


class InvalidSibling(InvalidBlock):
    """A referenced sibling header breaks a sibling rule."""


class DuplicateTransaction(InvalidBlock):
    """The same transaction appears twice."""


class BadCoinbase(InvalidBlock):
    """The coinbase does not pay exactly what the reward and fee rules give."""


class ChainView(Protocol):
    """What validation needs to know about blocks already accepted."""

    def header(self, block_hash: bytes) -> Header | None:
        """The header of a known block, or None."""

    def ancestor_timestamps(self, block_hash: bytes, count: int) -> Sequence[int]:
        """Timestamps of the block and up to ``count - 1`` of its ancestors, oldest first."""


def block_work(header: Header) -> int:
    """Expected number of attempts behind a header: ``2^m / (target + 1)``."""
    return (1 << params_of(header.nbits).m) // (header.target + 1)


def expected_target(genesis: Genesis, parent: Header) -> int:
    """The target every child of ``parent`` must carry (ASERT from the genesis anchor)."""
    return asert_target(genesis.difficulty, genesis.anchor, parent.height, parent.timestamp_ms)


def expected_coinbase(
    genesis: Genesis, parent: Header, siblings: Sequence[Header], miner: Address, fees: int
) -> Coinbase:
    """The exact coinbase of a block: the parent height's reward split among the parent's miner and
    the referenced siblings' miners (remainder to the parent's miner), then the fees to this block's
    miner."""
    reward = block_subsidy(genesis.issuance, parent.height)
    share, remainder = divmod(reward, len(siblings) + 1)
    return Coinbase(
        (
            Payout(parent.coinbase, share + remainder),
            *(Payout(sibling.coinbase, share) for sibling in siblings),
            Payout(miner, fees),
        )
    )


def check_header_pow(header: Header, target: int, what: str) -> None:
    """Check a header's proof-of-work against ``target``; :class:`BadProofOfWork` says why not."""
    try:
        verify_header_pow(header, target)
    except PowError as exc:
        raise BadProofOfWork(f"{what}: {type(exc).__name__}: {exc}") from exc


def _check_timestamp(genesis: Genesis, chain: ChainView, header: Header, now_ms: int) -> None:
    ancestors = chain.ancestor_timestamps(header.parent_hash, MEDIAN_TIME_SPAN)
    try:
        check_timestamp(genesis.difficulty, header.timestamp_ms, ancestors, now_ms)
    except TimestampError as exc:
        raise BadTimestamp(str(exc)) from exc


def validate_siblings(
    genesis: Genesis, chain: ChainView, parent: Header, siblings: Sequence[Header], now_ms: int
) -> None:
    """Sibling rules: same generation as the parent, not the parent, strictly ascending hashes
    (so no sibling twice), this chain and nbits, valid timestamp and PoW."""
    if not siblings:
        return
    if parent.height == 0:
        raise InvalidSibling("children of genesis cannot reference siblings (genesis has none)")
    grandparent = chain.header(parent.parent_hash)
    if grandparent is None:
        raise UnknownParent("the parent's parent is unknown; cannot check siblings")
    target = expected_target(genesis, grandparent)
    previous = b""
    for sibling in siblings:
        where = f"sibling {sibling.block_hash.hex()[:16]}"
        # Same generation: another child of the parent's parent.
        if sibling.parent_hash != parent.parent_hash or sibling.height != parent.height:
            raise InvalidSibling(f"{where} is not in the parent's generation")
        if sibling.block_hash == parent.block_hash:
            raise InvalidSibling(f"{where} is the parent itself")
        # Canonical order, which also rules out referencing one sibling twice.
        if sibling.block_hash <= previous:
            raise InvalidSibling(f"{where}: siblings must be unique, in ascending hash order")
        previous = sibling.block_hash
        if sibling.chain_id != genesis.chain_id:
            raise WrongChain(f"{where} is for chain {sibling.chain_id}")
        if sibling.nbits != genesis.nbits:
            raise InvalidSibling(f"{where} has nbits 0x{sibling.nbits:04x}")
        _check_timestamp(genesis, chain, sibling, now_ms)
        check_header_pow(sibling, target, where)


def validate_body(
    genesis: Genesis, chain: ChainView, parent: Header, block: Block, now_ms: int
) -> None:
    """Body rules: size, commitments, siblings, transactions, exact coinbase."""
    header = block.header
    # Size bound (also enforced when decoding from the network).
    try:
        size = len(block.encode())
    except OversizeField as exc:
        raise BlockTooLarge(str(exc)) from None
    if size > MAX_BLOCK_SIZE:
        raise BlockTooLarge(f"block of {size} bytes exceeds {MAX_BLOCK_SIZE}")
    # Body commitments.
    if header.transactions_root != transactions_root(block.coinbase, block.transactions):
        raise BadTransactionsRoot("transactions root does not match the coinbase and transactions")
    if header.siblings_root != siblings_root(block.siblings):
        raise BadSiblingsRoot("siblings root does not match the referenced sibling headers")
    validate_siblings(genesis, chain, parent, block.siblings, now_ms)
    # Transactions: this chain, no duplicates (state checks are the execution layer's).
    seen: set[bytes] = set()
    for tx in block.transactions:
        if tx.chain_id != genesis.chain_id:
            raise WrongChain(f"transaction {tx.tx_id.hex()[:16]} is for chain {tx.chain_id}")
        if tx.tx_id in seen:
            raise DuplicateTransaction(f"transaction {tx.tx_id.hex()[:16]} appears twice")
        seen.add(tx.tx_id)
    # Coinbase: exact reward split and fees.
    fees = sum(tx.fee for tx in block.transactions)
    if fees > SUPPLY_CAP:
        raise BadCoinbase(f"fees of {fees} Shor exceed the supply")
    expected = expected_coinbase(genesis, parent, block.siblings, header.coinbase, fees)
    if block.coinbase != expected:
        raise BadCoinbase(
            f"coinbase pays {[p.amount for p in block.coinbase.payouts]}, "
            f"the rules give {[p.amount for p in expected.payouts]}"
        )


def validate_block(genesis: Genesis, chain: ChainView, block: Block, now_ms: int) -> BlockMeta:
    """Check every consensus rule of ``block``; return its fork-choice data, or raise
    :class:`InvalidBlock` naming the broken rule."""
    header = block.header
    # The block is for this network.
    if header.chain_id != genesis.chain_id:
        raise WrongChain(
            f"block is for chain {header.chain_id}, this node is on {genesis.chain_id}"
        )
    # The parent is known.
    parent = chain.header(header.parent_hash)
    if parent is None:
        raise UnknownParent(f"parent {header.parent_hash.hex()} is unknown")
    # Height follows the parent.
    if header.height != parent.height + 1:
        raise BadHeight(f"height {header.height} after a parent at {parent.height}")
    # The network's MQ parameters.
    if header.nbits != genesis.nbits:
        raise BadNbits(f"nbits 0x{header.nbits:04x}; this network uses 0x{genesis.nbits:04x}")
    # Timestamp: after the median of recent ancestors, not too far in the future.
    _check_timestamp(genesis, chain, header, now_ms)
    # Difficulty and proof-of-work (target rule, signature, nonce, MQ, coinbase key).
    check_header_pow(header, expected_target(genesis, parent), "header")
    validate_body(genesis, chain, parent, block, now_ms)
    return BlockMeta(
        block_hash=header.block_hash,
        parent_hash=header.parent_hash,
        height=header.height,
        work=block_work(header),
        siblings=tuple((s.block_hash, block_work(s)) for s in block.siblings),
    )


def check_orphan(genesis: Genesis, block: Block) -> None:
    """The checks a block whose parent is unknown can pass before it is kept as an orphan: this
    chain and ``nbits``, and a valid proof-of-work against its own claimed target. (The target
    rule needs the parent; it is checked, with everything else, when the parent arrives.)"""
    header = block.header
    if header.chain_id != genesis.chain_id:
        raise WrongChain(
            f"block is for chain {header.chain_id}, this node is on {genesis.chain_id}"
        )
    if header.nbits != genesis.nbits:
        raise BadNbits(f"nbits 0x{header.nbits:04x}; this network uses 0x{genesis.nbits:04x}")
    check_header_pow(header, header.target, "orphan header")


def genesis_meta(genesis: Genesis) -> BlockMeta:
    """Fork-choice data of the genesis block."""
    header = genesis.header
    return BlockMeta(header.block_hash, header.parent_hash, 0, block_work(header), ())
