"""Block validation: every consensus rule a consensus client checks, with a typed reason each.

The rules, in the order they are checked, are listed in ``docs/spec/chain.md``. Account state is not
needed here (the consensus client has none): transaction signatures, nonces and balances are the
execution layer's verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class BlockGasLimitExceeded(InvalidBlock):
    """The transactions' gas limits together exceed the network's block gas limit."""


class DuplicateTransaction(InvalidBlock):
    """The same transaction appears twice."""


class BadCoinbase(InvalidBlock):
    """The coinbase does not pay exactly what the reward and fee rules give."""


class Ancestry(Protocol):
    """What the median-time-past rule reads: the timestamps of a header's ancestors."""

    def ancestor_timestamps(self, block_hash: bytes, count: int) -> Sequence[int]:
        """Timestamps of the block and up to ``count - 1`` of its ancestors, oldest first."""


class ChainView(Ancestry, Protocol):
    """What block validation needs to know about blocks already accepted."""

    def header(self, block_hash: bytes) -> Header | None:
        """The header of a known block, or None."""


def ancestor_timestamps(
    header_of: Callable[[bytes], Header | None], block_hash: bytes, count: int
) -> list[int]:
    """Timestamps of ``block_hash`` and up to ``count - 1`` of its ancestors that ``header_of``
    knows, oldest first (fewer near genesis or where a header is unknown)."""
    stamps: list[int] = []
    current = header_of(block_hash)
    while current is not None and len(stamps) < count:
        stamps.append(current.timestamp_ms)
        current = None if current.height == 0 else header_of(current.parent_hash)
    stamps.reverse()
    return stamps


class HeaderAncestry:
    """An :class:`Ancestry` over stored headers (``header_of``) and headers not stored yet, such
    as a headers-first reply being checked before its bodies are downloaded."""

    def __init__(
        self, header_of: Callable[[bytes], Header | None], pending: Sequence[Header] = ()
    ) -> None:
        self._header_of = header_of
        self._pending = {header.block_hash: header for header in pending}

    def header(self, block_hash: bytes) -> Header | None:
        """A pending header, else a stored one, or None."""
        return self._pending.get(block_hash) or self._header_of(block_hash)

    def ancestor_timestamps(self, block_hash: bytes, count: int) -> list[int]:
        """Timestamps of the block and up to ``count - 1`` of its ancestors, oldest first."""
        return ancestor_timestamps(self.header, block_hash, count)


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


def _check_chain_id(genesis: Genesis, header: Header, what: str) -> None:
    """Rule 1: the header is for this network."""
    if header.chain_id != genesis.chain_id:
        raise WrongChain(
            f"{what} is for chain {header.chain_id}, this node is on {genesis.chain_id}"
        )


def validate_header(
    genesis: Genesis,
    parent: Header | None,
    header: Header,
    ancestry: Ancestry,
    now_ms: int,
    what: str = "block",
) -> None:
    """Check every header rule (``docs/spec/chain.md`` §3, rules 1 to 6, in that order) of
    ``header`` as a child of ``parent``; raise :class:`InvalidBlock` naming the broken rule, with
    ``what`` (e.g. ``"sibling 1a2b…"``) leading its message.

    ``ancestry`` gives the timestamps of ``parent`` and its ancestors (the median-time-past rule);
    ``now_ms`` is the local clock (the future-drift rule). Every header is checked here: blocks,
    the siblings they reference (against the parent's parent), orphans and headers-first sync.

    With ``parent`` None (an orphan: its parent is not known yet) only the rules that need no
    parent are checked: this chain, ``nbits``, and the proof-of-work against the header's own
    claimed target; the rest are checked when the parent arrives.
    """
    # The header is for this network.
    _check_chain_id(genesis, header, what)
    if parent is not None:
        # It is a child of the parent it names.
        if header.parent_hash != parent.block_hash:
            raise UnknownParent(
                f"{what} names parent {header.parent_hash.hex()[:16]}, "
                f"not {parent.block_hash.hex()[:16]}"
            )
        # Height follows the parent.
        if header.height != parent.height + 1:
            raise BadHeight(f"{what}: height {header.height} after a parent at {parent.height}")
    # The network's MQ parameters.
    if header.nbits != genesis.nbits:
        raise BadNbits(
            f"{what}: nbits 0x{header.nbits:04x}; this network uses 0x{genesis.nbits:04x}"
        )
    if parent is None:
        # An orphan's target rule needs its parent: its work must at least be real.
        check_header_pow(header, header.target, f"orphan {what}")
        return
    # Timestamp: after the median of recent ancestors, not too far in the future.
    stamps = ancestry.ancestor_timestamps(header.parent_hash, MEDIAN_TIME_SPAN)
    try:
        check_timestamp(genesis.difficulty, header.timestamp_ms, stamps, now_ms)
    except TimestampError as exc:
        raise BadTimestamp(f"{what}: {exc}") from exc
    # Difficulty and proof-of-work (target rule, signature, nonce, MQ, coinbase key).
    check_header_pow(header, expected_target(genesis, parent), what)


def validate_siblings(
    genesis: Genesis, chain: ChainView, parent: Header, siblings: Sequence[Header], now_ms: int
) -> None:
    """Sibling rules: same generation as the parent, not the parent, strictly ascending hashes
    (so no sibling twice), then every header rule as a child of the parent's parent."""
    if not siblings:
        return
    if parent.height == 0:
        raise InvalidSibling("children of genesis cannot reference siblings (genesis has none)")
    grandparent = chain.header(parent.parent_hash)
    if grandparent is None:
        raise UnknownParent("the parent's parent is unknown; cannot check siblings")
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
        validate_header(genesis, grandparent, sibling, chain, now_ms, where)


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
    # Gas: the transactions' gas limits fit the block's.
    reserved = sum(tx.gas_limit for tx in block.transactions)
    if reserved > genesis.block_gas_limit:
        raise BlockGasLimitExceeded(
            f"the transactions reserve {reserved} gas; a block holds at most "
            f"{genesis.block_gas_limit}"
        )
    # Coinbase: exact reward split; the fee payout at most what the transactions can pay (the
    # execution layer checks it equals the fees they were charged).
    payouts = block.coinbase.payouts
    fees = payouts[-1].amount if payouts else 0
    most = sum(tx.max_fee for tx in block.transactions)
    if fees > min(most, SUPPLY_CAP):
        raise BadCoinbase(
            f"the fee payout of {fees} Shor exceeds the {most} Shor the transactions can pay"
        )
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
    parent = chain.header(header.parent_hash)
    if parent is None:
        # A block for another network is refused as such, not kept as an orphan.
        _check_chain_id(genesis, header, "block")
        raise UnknownParent(f"parent {header.parent_hash.hex()} is unknown")
    validate_header(genesis, parent, header, chain, now_ms)
    validate_body(genesis, chain, parent, block, now_ms)
    return BlockMeta(
        block_hash=header.block_hash,
        parent_hash=header.parent_hash,
        height=header.height,
        work=block_work(header),
        siblings=tuple((s.block_hash, block_work(s)) for s in block.siblings),
    )


def genesis_meta(genesis: Genesis) -> BlockMeta:
    """Fork-choice data of the genesis block."""
    header = genesis.header
    return BlockMeta(header.block_hash, header.parent_hash, 0, block_work(header), ())
