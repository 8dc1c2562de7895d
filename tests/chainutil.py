"""Helpers to build real, valid chains quickly in tests (over :mod:`qoin.chain.builder`).

The test network's initial target is the maximum, and blocks are stamped exactly on schedule, so ASERT
keeps the target at the maximum and every mining attempt wins: one hybrid signature per block.
"""

from __future__ import annotations

from qoin.chain.block import Block
from qoin.chain.builder import next_on_head, on_schedule, seal
from qoin.chain.chain import Chain
from qoin.chain.genesis import Allocation, Genesis
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.crypto.hybrid import HybridKeyPair
from qoin.pow.proof import DEFAULT_NBITS, max_target
from tests.keys import keypair_for

__all__ = ["mine_next", "mine_template", "on_schedule", "test_genesis"]

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


def mine_next(chain: Chain, keypair: HybridKeyPair | None = None, **overrides: object) -> Block:
    """Mine a valid block on the chain's current head (not imported); ``overrides`` replace header
    fields before sealing."""
    return next_on_head(chain, keypair or keypair_for(), changes=overrides)


def mine_template(block: Block, keypair: HybridKeyPair | None = None) -> Block:
    """Seal an (edited) template: one attempt wins at the test network's maximum target."""
    return seal(block, keypair or keypair_for())
