"""Helpers to build real, valid chains quickly in tests.

The test network's initial target is the maximum, and blocks are stamped exactly on schedule, so ASERT
keeps the target at the maximum and every mining attempt wins: one hybrid signature per block.
"""

from __future__ import annotations

from dataclasses import replace

from qoin.chain.block import Block
from qoin.chain.chain import Chain
from qoin.chain.genesis import Allocation, Genesis
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.producer import build_template
from qoin.crypto.hybrid import HybridKeyPair
from qoin.pow.proof import DEFAULT_NBITS, max_target, mine_in_process
from tests.conftest import keypair_for

GENESIS_TIME_MS = 1_700_000_000_000
BLOCK_TIME_MS = 1_000


def test_genesis(block_time_ms: int = BLOCK_TIME_MS) -> Genesis:
    return Genesis(
        network="test",
        chain_id=4242,
        timestamp_ms=GENESIS_TIME_MS,
        block_time_ms=block_time_ms,
        asert_halflife_ms=50 * block_time_ms,
        max_future_drift_ms=15_000,
        nbits=DEFAULT_NBITS,
        initial_target=max_target(DEFAULT_NBITS),
        allocation=(Allocation(keypair_for(index=9).address, GENESIS_ALLOCATION),),
    )


test_genesis.__test__ = False  # type: ignore[attr-defined]


def on_schedule(genesis: Genesis, height: int) -> int:
    """The timestamp that keeps ASERT at the anchor target for a block at ``height``."""
    return genesis.timestamp_ms + height * genesis.block_time_ms


def mine_next(chain: Chain, keypair: HybridKeyPair | None = None, **overrides: object) -> Block:
    """Mine a valid block on the chain's current head (not imported)."""
    miner = keypair or keypair_for()
    height = chain.head_header.height + 1
    template = build_template(chain, miner.public, on_schedule(chain.genesis, height))
    if overrides:
        template = replace(template, header=replace(template.header, **overrides))
    header = mine_in_process(miner, template.header, 10)
    assert header is not None
    return replace(template, header=header)


def mine_template(block: Block, keypair: HybridKeyPair | None = None) -> Block:
    """Seal an (edited) template: one attempt wins at the test network's maximum target."""
    header = mine_in_process(keypair or keypair_for(), block.header, 10)
    assert header is not None
    return replace(block, header=header)
