"""Building the next block on the head: the template a miner seals.

The template carries every field but the PoW ones: the timestamp (the local clock, but after the
median of recent ancestors), the ASERT target, up to ``MAX_SIBLINGS`` referenced siblings (stored
blocks of the parent's generation, heaviest first), the exact coinbase and the body roots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from qoin.chain.block import (
    MAX_SIBLINGS,
    ZERO_HASH,
    Block,
    Header,
    siblings_root,
    transactions_root,
)
from qoin.chain.chain import Chain
from qoin.chain.genesis import Genesis
from qoin.chain.transaction import AnyTransaction
from qoin.chain.validation import block_work, expected_coinbase, expected_target
from qoin.crypto.hybrid import HybridPublicKey, HybridSignature
from qoin.pow.difficulty import MEDIAN_TIME_SPAN, median_time_past
from qoin.pow.proof import placeholder_proof


def sibling_candidates(chain: Chain, parent: Header) -> tuple[Header, ...]:
    """Stored blocks of the parent's generation other than the parent, to reference (uncles)."""
    if parent.height == 0:
        return ()
    others = [
        header
        for child in chain.forks.children.get(parent.parent_hash, ())
        if child != parent.block_hash and (header := chain.store.header(child)) is not None
    ]
    best = sorted(others, key=lambda h: (-block_work(h), h.block_hash))[:MAX_SIBLINGS]
    return tuple(sorted(best, key=lambda h: h.block_hash))


def assemble_block(
    genesis: Genesis,
    parent: Header,
    miner: HybridPublicKey,
    timestamp_ms: int,
    siblings: Sequence[Header] = (),
    transactions: Sequence[AnyTransaction] = (),
    state_root: bytes = ZERO_HASH,
    receipts_root: bytes = ZERO_HASH,
) -> Block:
    """An unsealed child of ``parent`` mined by ``miner``: the exact coinbase (the parent height's
    reward split with ``siblings``, this block's fees to ``miner``), the difficulty rule's target,
    the body roots, and placeholder PoW fields."""
    txs, referenced = tuple(transactions), tuple(siblings)
    coinbase = expected_coinbase(
        genesis, parent, referenced, miner.address, sum(tx.max_fee for tx in txs)
    )
    header = Header(
        chain_id=genesis.chain_id,
        height=parent.height + 1,
        parent_hash=parent.block_hash,
        timestamp_ms=timestamp_ms,
        nbits=genesis.nbits,
        target=expected_target(genesis, parent),
        transactions_root=transactions_root(coinbase, txs),
        siblings_root=siblings_root(referenced),
        state_root=state_root,
        receipts_root=receipts_root,
        coinbase=miner.address,
        miner=miner,
        pow_r=bytes(32),
        pow_nonce=ZERO_HASH,
        pow_proof=placeholder_proof(miner.suite),
    )
    return Block(header, referenced, coinbase, txs)


def next_timestamp(chain: Chain, parent: Header, now_ms: int) -> int:
    """The timestamp of a child of ``parent``: ``now_ms``, but after the median of recent
    ancestors."""
    recent = chain.store.ancestor_timestamps(parent.block_hash, MEDIAN_TIME_SPAN)
    return max(now_ms, median_time_past(recent) + 1)


def build_template(
    chain: Chain,
    miner: HybridPublicKey,
    now_ms: int,
    transactions: Sequence[AnyTransaction] = (),
    state_root: bytes = ZERO_HASH,
    receipts_root: bytes = ZERO_HASH,
) -> Block:
    """An unsealed block on the current head, mined by ``miner``, referencing the stored members
    of the parent's generation (:func:`sibling_candidates`)."""
    parent = chain.head_header
    return assemble_block(
        chain.genesis,
        parent,
        miner,
        next_timestamp(chain, parent, now_ms),
        sibling_candidates(chain, parent),
        transactions,
        state_root,
        receipts_root,
    )


def seal_block(block: Block, r: bytes, nonce: bytes, proof: HybridSignature) -> Block:
    """The template with a winning attempt's PoW fields."""
    header = replace(block.header, pow_r=r, pow_nonce=nonce, pow_proof=proof)
    return replace(block, header=header)
