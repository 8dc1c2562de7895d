"""Which side blocks are worth executing now (qoin.consensus.branches), on real fork-choice stores
and real blocks; the end-to-end behaviour with real processes is in test_consensus_recovery.py."""

from __future__ import annotations

import copy
from dataclasses import replace

from qoin.chain import forkchoice
from qoin.chain.block import Block, Header
from qoin.chain.builder import next_block
from qoin.chain.validation import block_work, genesis_meta
from qoin.consensus.branches import (
    COMPETITIVE_MARGIN_BLOCKS,
    NEAR_HEAD_DEPTH,
    PendingBlocks,
    competitive,
    pending_branch,
    side_branch,
    weight_bound,
    worth_executing,
)
from tests.chainutil import test_genesis
from tests.keys import keypair_for

GENESIS = test_genesis()
WORK = 10


def h(name: str) -> bytes:
    return name.encode().ljust(32, b".")


def store_with(branches: dict[str, int]) -> forkchoice.Store:
    """Genesis, a main chain ``m1..mN`` and side chains ``<name>1..`` forking at given heights:
    ``{"m": N, "s@3": K}`` is K blocks on top of m3. Every block has work WORK."""
    store = forkchoice.new_store(forkchoice.BlockMeta(h("g"), h("none"), 0, WORK))
    for spec, count in branches.items():
        name, _, at = spec.partition("@")
        parent = h("g") if not at or at == "0" else h(f"m{at}")
        start = int(at or 0)
        for index in range(1, count + 1):
            block = h(f"{name}{start + index}") if name != "m" else h(f"m{index}")
            forkchoice.on_block(store, forkchoice.BlockMeta(block, parent, start + index, WORK))
            parent = block
    return store


def test_weights_at_the_fork_point() -> None:
    store = store_with({"m": 12, "s@3": 4})
    head = forkchoice.get_head(store)
    assert head == h("m12")
    branch = side_branch(store, head, h("s7"), WORK)  # a fifth side block on s7
    assert branch.fork_height == 3
    assert branch.head_weight == 9 * WORK  # m4..m12
    assert branch.side_weight == 5 * WORK  # s4..s7 and the new one
    sibling = side_branch(store, head, h("m5"), WORK)  # a sibling of m6
    assert (sibling.fork_height, sibling.side_weight, sibling.head_weight) == (5, WORK, 7 * WORK)


def test_a_long_light_branch_far_below_the_head_waits() -> None:
    store = store_with({"m": 20, "s@0": 9})
    head = forkchoice.get_head(store)
    branch = side_branch(store, head, h("s9"), WORK)
    assert not competitive(branch, WORK)
    assert not worth_executing(branch, 20, 10, WORK)


def test_a_branch_within_the_margin_is_competitive() -> None:
    main = 20
    needed = main - COMPETITIVE_MARGIN_BLOCKS  # side blocks (the new one included) to compete
    store = store_with({"m": main, "s@0": needed - 2})
    head = forkchoice.get_head(store)
    short = side_branch(store, head, h(f"s{needed - 2}"), WORK)
    assert not worth_executing(short, main, needed - 1, WORK)
    enough = side_branch(store, head, h(f"s{needed - 2}"), 2 * WORK)  # one more waits on it
    assert competitive(enough, WORK)
    assert worth_executing(enough, main, needed - 1, WORK)


def test_a_fork_near_the_head_is_judged_at_once() -> None:
    store = store_with({"m": NEAR_HEAD_DEPTH + 3, "s@3": 2})
    head = forkchoice.get_head(store)
    near = side_branch(store, head, h("s5"), WORK)
    assert not competitive(near, WORK)
    assert worth_executing(near, NEAR_HEAD_DEPTH + 3, 6, WORK)  # fork 8 below the head, 3 above
    deep = store_with({"m": NEAR_HEAD_DEPTH + 4, "s@3": 2})
    far = side_branch(deep, forkchoice.get_head(deep), h("s5"), WORK)
    assert not worth_executing(far, NEAR_HEAD_DEPTH + 4, 6, WORK)  # fork 9 below the head
    long = store_with({"m": 4, "s@0": NEAR_HEAD_DEPTH})
    tall = side_branch(long, forkchoice.get_head(long), h(f"s{NEAR_HEAD_DEPTH}"), WORK)
    assert competitive(tall, WORK)  # heavier than the head: always judged
    assert worth_executing(tall, 4, NEAR_HEAD_DEPTH + 1, WORK)


def chain_of(count: int, index: int = 0) -> list[Block]:
    """``count`` unsealed blocks in a row on genesis (the pool does not check proof-of-work)."""
    miner = keypair_for(index=index)
    parent = GENESIS.header
    blocks = []
    for _ in range(count):
        block = next_block(GENESIS, parent, miner, sealed=False)
        blocks.append(block)
        parent = block.header
    return blocks


def test_pending_blocks_keep_branches_in_order_and_bounded() -> None:
    pool = PendingBlocks(max_count=5)
    blocks = chain_of(4)
    for block in reversed(blocks):  # out of order, as a peer walking back sends them
        assert pool.add(block)
    assert not pool.add(blocks[0])
    assert len(pool) == 4 and blocks[2].block_hash in pool
    assert pool.lowest(blocks[3].block_hash) == blocks[0]
    assert pool.work([blocks[1].block_hash], blocks[0].header) == sum(
        block_work(b.header) for b in blocks[1:]
    )
    assert [b.block_hash for b in pool.subtree(blocks[0].block_hash)] == [
        b.block_hash for b in blocks
    ]
    other = chain_of(2, index=1)
    for block in other:
        pool.add(block)  # the sixth block evicts the oldest added (blocks[3])
    assert len(pool) == 5 and blocks[3].block_hash not in pool
    taken = pool.take(blocks[0].block_hash)
    assert taken == blocks[:3] and len(pool) == 2
    assert pool.lowest(other[1].block_hash) == other[0]


def test_pending_blocks_are_bounded_in_bytes() -> None:
    blocks = chain_of(3)
    size = len(blocks[0].encode())
    pool = PendingBlocks(max_count=100, max_bytes=2 * size + size // 2)
    for block in blocks:
        assert pool.add(block)
    assert len(pool) == 2 and blocks[0].block_hash not in pool
    tiny = PendingBlocks(max_bytes=size - 1)
    assert not tiny.add(blocks[0]) and len(tiny) == 0


def test_a_branch_heavy_with_siblings_is_judged_before_fork_choice_would_pick_it() -> None:
    """GHOST counts the siblings a block references: a pending branch of three blocks, two of
    them referencing four siblings each, weighs eleven blocks once stored. Fork choice would pick
    it over a ten-block main branch, so it must be competitive while pending (its work alone,
    three blocks, is not even within the margin). A sibling counts with its parent's work, not
    with what its header claims: a pending block's siblings are not checked yet."""
    miner, others = keypair_for(index=0), [keypair_for(index=i) for i in range(1, 5)]

    def siblings_under(parent: Block | None) -> list[Header]:
        header = GENESIS.header if parent is None else parent.header
        made = [next_block(GENESIS, header, other, sealed=False).header for other in others]
        return sorted(made, key=lambda sibling: sibling.block_hash)

    first = next_block(GENESIS, GENESIS.header, miner, sealed=False)
    second = next_block(GENESIS, first.header, miner, siblings=siblings_under(None), sealed=False)
    third = next_block(GENESIS, second.header, miner, siblings=siblings_under(first), sealed=False)
    branch = [first, second, third]
    work = block_work(first.header)
    store = forkchoice.new_store(genesis_meta(GENESIS))
    parent = GENESIS.genesis_hash
    for height in range(1, 11):  # the main branch: ten blocks of the same work
        forkchoice.on_block(store, forkchoice.BlockMeta(h(f"m{height}"), parent, height, work))
        parent = h(f"m{height}")
    head = forkchoice.get_head(store)
    pool = PendingBlocks()
    for block in branch:
        pool.add(block)
    assert weight_bound(second, first.header) == 5 * work
    assert pool.work([first.block_hash], GENESIS.header) == 11 * work
    pending = side_branch(store, head, GENESIS.genesis_hash, 11 * work)
    assert competitive(pending, work)
    alone = side_branch(store, head, GENESIS.genesis_hash, 3 * work)  # the blocks' work alone
    assert not competitive(alone, work)
    # Fork choice, with the branch stored, does pick it.
    for block in branch:
        meta = forkchoice.BlockMeta(
            block.block_hash,
            block.header.parent_hash,
            block.header.height,
            block_work(block.header),
            tuple((s.block_hash, block_work(s)) for s in block.siblings),
        )
        forkchoice.on_block(store, meta)
    assert forkchoice.get_head(store) == third.block_hash
    # A sibling claiming a far harder target (unchecked while pending) counts the parent's work.
    boastful = replace(siblings_under(None)[0], target=0)
    claim = next_block(GENESIS, first.header, miner, siblings=[boastful], sealed=False)
    assert block_work(boastful) > 1000 * work
    assert weight_bound(claim, first.header) == 2 * work


def test_continuations_past_the_fork_point_weigh_on_the_same_branch() -> None:
    """Fork choice adds up a block's subtrees: two kept continuations of a stored side block,
    each too light alone to compete with the head's branch, outweigh it together, so they are
    weighed (and judged) together. Continuations of a block on the head's chain (the fork point)
    are branches of their own: each is weighed alone, so that many light branches off one old
    block are not executed for being many."""
    side = chain_of(1, index=3)[0]  # a stored side block on genesis
    work = block_work(side.header)

    def continuation(index: int) -> list[Block]:
        miner, parent, blocks = keypair_for(index=index), side.header, []
        for _ in range(5):
            blocks.append(next_block(GENESIS, parent, miner, sealed=False))
            parent = blocks[-1].header
        return blocks

    ours, theirs = continuation(1), continuation(2)
    store = forkchoice.new_store(genesis_meta(GENESIS))
    parent = GENESIS.genesis_hash
    for height in range(1, 11):  # the head's branch: ten blocks
        forkchoice.on_block(store, forkchoice.BlockMeta(h(f"m{height}"), parent, height, work))
        parent = h(f"m{height}")
    forkchoice.on_block(store, forkchoice.BlockMeta(side.block_hash, GENESIS.genesis_hash, 1, work))
    head = forkchoice.get_head(store)
    pool = PendingBlocks()
    for block in ours + theirs:
        pool.add(block)
    alone = side_branch(store, head, side.block_hash, pool.work([ours[0].block_hash], side.header))
    assert not competitive(alone, work)  # 1 + 5 (+ 2 of margin) against 10
    branch, firsts = pending_branch(store, head, pool, side.header, ours[0].block_hash)
    assert firsts == [ours[0].block_hash, theirs[0].block_hash]
    assert branch.side_weight == 11 * work and competitive(branch, work)
    # With both stored, fork choice does leave the head's branch.
    together = copy.deepcopy(store)
    for block in [b for first in firsts for b in pool.subtree(first)]:
        meta = forkchoice.BlockMeta(
            block.block_hash, block.header.parent_hash, block.header.height, work
        )
        forkchoice.on_block(together, meta)
    assert forkchoice.get_head(together) != head
    # On genesis, the fork point: each continuation alone.
    forked = PendingBlocks()
    apart = chain_of(6, index=1), chain_of(6, index=2)
    for block in apart[0] + apart[1]:
        forked.add(block)
    first = apart[0][0].block_hash
    branch, firsts = pending_branch(store, head, forked, GENESIS.header, first)
    assert firsts == [first] and branch.side_weight == 6 * work
    assert not competitive(branch, work)
