"""Property: a real block tree imported in any order gives every store the same head."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.chain.block import Block
from qoin.chain.chain import Chain
from tests.chainutil import mine_next, on_schedule, test_genesis
from tests.keys import keypair_for

NOW = on_schedule(test_genesis(), 100_000)


@pytest.fixture(scope="module")
def tree() -> tuple[list[Block], bytes]:
    """~30 real blocks with forks (so siblings get referenced) and the head they lead to."""
    with tempfile.TemporaryDirectory() as tmp:
        chain = Chain.open(Path(tmp), test_genesis())
        blocks: list[Block] = []
        for height in range(1, 16):
            miners = [keypair_for(index=0)]
            if height % 3 == 0:
                miners.append(keypair_for(index=1))  # two children of one parent: a generation
            made = [mine_next(chain, miner) for miner in miners]
            for block in made:
                chain.import_block(block, now_ms=NOW)
            blocks.extend(made)
        # a side branch of three blocks from height 5
        side = Chain.open(Path(tmp) / "side", test_genesis())
        for block in blocks:
            if (
                block.header.height <= 5
                and chain.store.canonical_hash(block.header.height) == block.block_hash
            ):
                side.import_block(block, now_ms=NOW)
        for _ in range(3):
            block = mine_next(side, keypair_for(index=2))
            side.import_block(block, now_ms=NOW)
            blocks.append(block)
        side.close()
        for block in blocks:  # the side branch joins the main store too
            chain.import_block(block, now_ms=NOW)
        assert any(block.siblings for block in blocks)
        final = chain.head
        chain.close()
        return blocks, final


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_order_same_head(tree: tuple[list[Block], bytes], data: st.DataObject) -> None:
    blocks, expected = tree
    heads = []
    for _ in range(2):
        order = data.draw(st.permutations(blocks))
        with tempfile.TemporaryDirectory() as tmp:
            chain = Chain.open(Path(tmp), test_genesis())
            for block in order:
                chain.import_block(block, now_ms=NOW)
            assert len(chain.orphans) == 0
            heads.append(chain.head)
            chain.close()
    assert heads[0] == heads[1] == expected
