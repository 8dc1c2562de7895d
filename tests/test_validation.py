"""One header check: every caller of ``validate_header`` refuses the same forged header for the
same typed reason (block import, sibling references, the orphan pool, headers-first sync)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from qoin.chain.block import Block, Header
from qoin.chain.builder import next_block, on_schedule
from qoin.chain.chain import Chain, ImportStatus
from qoin.chain.validation import (
    BadHeight,
    BadNbits,
    BadProofOfWork,
    BadTimestamp,
    HeaderAncestry,
    InvalidBlock,
    WrongChain,
    ancestor_timestamps,
    validate_block,
)
from qoin.p2p.sync import check_headers
from qoin.pow.proof import max_target
from tests.chainutil import mine_next, test_genesis
from tests.keys import keypair_for

GENESIS = test_genesis()
NOW = on_schedule(GENESIS, 1_000)
HEIGHT = 12
"""Blocks below the forged header: more than the median-time-past window."""


@dataclass(frozen=True)
class Forgery:
    """A change that breaks one header rule, and the error every caller must raise for it."""

    name: str
    changes: dict[str, Any]
    error: type[InvalidBlock]
    needs_parent: bool
    """Whether the rule needs the parent (the orphan pool defers it until the parent arrives)."""
    after_sealing: bool = False
    """Whether the change is made after sealing (it breaks the proof itself)."""


FORGERIES = [
    Forgery("chain id", {"chain_id": 1}, WrongChain, needs_parent=False),
    Forgery("nbits", {"nbits": (96 << 8) | 64}, BadNbits, needs_parent=False),
    Forgery("proof", {"pow_r": b"\x07" * 32}, BadProofOfWork, False, after_sealing=True),
    Forgery("median time past", {"timestamp_ms": GENESIS.timestamp_ms}, BadTimestamp, True),
    Forgery("future drift", {"timestamp_ms": NOW + 60_000}, BadTimestamp, needs_parent=True),
    Forgery("target", {"target": max_target(GENESIS.nbits) - 1}, BadProofOfWork, True),
]


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    made = Chain.open(tmp_path / "chain", GENESIS)
    for _ in range(HEIGHT):
        made.import_block(mine_next(made), now_ms=NOW)
    yield made
    made.close()


def forge(parent: Header, forgery: Forgery) -> Block:
    """A child of ``parent`` that breaks exactly the rule ``forgery`` names."""
    miner = keypair_for(index=4)
    if not forgery.after_sealing:
        return next_block(GENESIS, parent, miner, changes=forgery.changes)
    block = next_block(GENESIS, parent, miner)
    return replace(block, header=replace(block.header, **forgery.changes))


def refused_as(error: type[InvalidBlock], attempt: Any) -> str:
    """Run ``attempt``; it must raise exactly ``error`` (not a subclass or a parent class)."""
    with pytest.raises(InvalidBlock) as raised:
        attempt()
    assert type(raised.value) is error, raised.value
    return str(raised.value)


@pytest.mark.parametrize("forgery", FORGERIES, ids=[f.name for f in FORGERIES])
def test_every_caller_refuses_a_forged_header_for_the_same_reason(
    chain: Chain, tmp_path: Path, forgery: Forgery
) -> None:
    head = chain.head_header
    forged = forge(head, forgery)

    # Block validation.
    refused_as(forgery.error, lambda: validate_block(GENESIS, chain.store, forged, NOW))
    refused_as(forgery.error, lambda: chain.import_block(forged, now_ms=NOW))

    # Headers-first sync.
    refused_as(
        forgery.error,
        lambda: check_headers(GENESIS, [forged.header], head, chain.store.header, NOW),
    )

    # A sibling reference: a block on another child of the head names the forged header.
    other = mine_next(chain, keypair_for(index=5))
    assert chain.import_block(other, now_ms=NOW).status is ImportStatus.IMPORTED
    referencing = next_block(GENESIS, other.header, keypair_for(index=6), siblings=(forged.header,))
    message = refused_as(
        forgery.error, lambda: validate_block(GENESIS, chain.store, referencing, NOW)
    )
    assert message.startswith("sibling ")

    # The orphan pool: rules that need no parent are checked before the block takes room; the
    # rest when its parent arrives, with the same reason.
    orphans = Chain.open(tmp_path / "orphans", GENESIS)
    try:
        if not forgery.needs_parent:
            refused_as(forgery.error, lambda: orphans.import_block(forged, now_ms=NOW))
            assert len(orphans.orphans) == 0
            return
        assert orphans.import_block(forged, now_ms=NOW).status is ImportStatus.ORPHAN
        ancestry = [
            chain.store.get_block(chain.store.canonical_hash(h) or b"")
            for h in range(1, HEIGHT + 1)
        ]
        rejected: list[tuple[bytes, str]] = []
        for block in ancestry:
            assert block is not None
            rejected += orphans.import_block(block, now_ms=NOW).rejected_orphans
        assert rejected == [(forged.block_hash, rejected[0][1])]
        assert rejected[0][1].startswith(f"{forgery.error.__name__}: ")
        assert not orphans.has_block(forged.block_hash)
    finally:
        orphans.close()


def test_a_header_below_its_claimed_height_is_refused_by_block_and_sync(chain: Chain) -> None:
    head = chain.head_header
    forged = forge(head, Forgery("height", {"height": head.height + 2}, BadHeight, True))
    refused_as(BadHeight, lambda: validate_block(GENESIS, chain.store, forged, NOW))
    refused_as(
        BadHeight, lambda: check_headers(GENESIS, [forged.header], head, chain.store.header, NOW)
    )


def test_header_ancestry_reads_pending_headers_before_stored_ones(chain: Chain) -> None:
    head = chain.head_header
    stored = chain.store.ancestor_timestamps(head.block_hash, 11)
    assert stored == ancestor_timestamps(chain.store.header, head.block_hash, 11)
    assert len(stored) == 11 and stored == sorted(stored)
    # Two headers not stored yet, on top of the head.
    first = next_block(GENESIS, head, keypair_for(index=4))
    second = next_block(GENESIS, first.header, keypair_for(index=4))
    ancestry = HeaderAncestry(chain.store.header, [first.header, second.header])
    assert ancestry.ancestor_timestamps(second.block_hash, 11) == [
        *stored[2:],
        first.header.timestamp_ms,
        second.header.timestamp_ms,
    ]
    # Near genesis the walk stops at genesis.
    assert ancestry.ancestor_timestamps(GENESIS.genesis_hash, 11) == [GENESIS.timestamp_ms]
    assert HeaderAncestry(chain.store.header).ancestor_timestamps(bytes(32), 11) == []
