"""GHOST fork choice over generations: weights, head, reorg paths, and brute-force properties."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.chain.forkchoice import (
    BlockMeta,
    ConflictingWork,
    InvalidBlockMeta,
    InvalidHeight,
    InvalidSiblingReference,
    ParentNotInStore,
    Store,
    UnknownBlock,
    ancestors,
    best_child,
    build_store,
    common_ancestor,
    get_head,
    get_weight,
    is_ancestor,
    new_store,
    on_block,
    path_between,
    reorg_path,
)
from qoin.chain.orphans import OrphanPool, connect
from qoin.errors import QoinError


def H(n: int) -> bytes:
    """A 32-byte hash whose byte order is the order of ``n`` (so ties are easy to reason about)."""
    return n.to_bytes(32, "big")


GENESIS = H(0)


def genesis_store(work: int = 1) -> Store:
    return new_store(BlockMeta(GENESIS, bytes(32), 0, work))


def add(
    store: Store,
    block: bytes,
    parent: bytes,
    work: int = 1,
    siblings: Sequence[tuple[bytes, int]] = (),
) -> BlockMeta:
    """Add ``block`` under ``parent`` (height derived from the parent) and return its meta."""
    meta = BlockMeta(block, parent, store.blocks[parent].height + 1, work, tuple(siblings))
    on_block(store, meta)
    return meta


def chain(store: Store, parent: bytes, hashes: Iterable[bytes]) -> None:
    for block in hashes:
        add(store, block, parent)
        parent = block


def longest_chain_head(store: Store) -> bytes:
    """The rule GHOST replaces: the highest block (lower hash on ties)."""
    return min(store.blocks, key=lambda h: (-store.blocks[h].height, h))


# --- the classic case ------------------------------------------------------------------------


def test_ghost_and_longest_chain_disagree() -> None:
    # G <- A1 <- A2 <- A3 (longest) versus G <- B1 <- {B2a, B2b, B2c} (heaviest), equal work.
    store = genesis_store()
    a1, a2, a3 = H(1), H(2), H(3)
    b1, b2a, b2b, b2c = H(10), H(13), H(12), H(11)
    chain(store, GENESIS, [a1, a2, a3])
    add(store, b1, GENESIS)
    for b2 in (b2a, b2b, b2c):
        add(store, b2, b1)

    assert get_weight(store, a1) == 3
    assert get_weight(store, b1) == 4
    assert get_weight(store, GENESIS) == 8
    assert longest_chain_head(store) == a3
    # GHOST: B1's subtree is heavier; its children tie, so the lowest hash wins.
    assert get_head(store) == b2c
    assert best_child(store, GENESIS) == b1
    assert best_child(store, b2c) is None


# --- sibling references ----------------------------------------------------------------------


def test_sibling_reference_tips_the_choice() -> None:
    y, x, z = H(1), H(2), H(3)  # three members of genesis's generation; Y has the lowest hash
    y1, x1 = H(11), H(12)

    plain = genesis_store()
    for block in (y, x, z):
        add(plain, block, GENESIS)
    add(plain, y1, y)
    add(plain, x1, x)
    # Equal subtrees: the lower hash (Y) wins.
    assert get_weight(plain, x) == get_weight(plain, y) == 2
    assert get_head(plain) == y1

    tipped = genesis_store()
    for block in (y, x, z):
        add(tipped, block, GENESIS)
    add(tipped, y1, y)
    add(tipped, x1, x, siblings=[(z, 1)])
    # X1 references Z (a child of genesis, X's generation): Z's work counts under X.
    assert get_weight(tipped, x1) == 2
    assert get_weight(tipped, x) == 3
    assert get_weight(tipped, y) == 2
    assert get_weight(tipped, z) == 1
    # Z is in genesis's subtree already: it counts there once.
    assert get_weight(tipped, GENESIS) == 6
    assert get_head(tipped) == x1


def test_sibling_referenced_twice_under_one_parent_counts_once() -> None:
    store = genesis_store()
    x, z = H(1), H(2)
    add(store, x, GENESIS, work=2)
    add(store, H(11), x, work=3, siblings=[(z, 5)])
    add(store, H(12), x, work=4, siblings=[(z, 5)])
    assert get_weight(store, H(11)) == 3 + 5
    assert get_weight(store, H(12)) == 4 + 5
    assert get_weight(store, x) == 2 + 3 + 4 + 5
    assert get_weight(store, GENESIS) == 1 + 2 + 3 + 4 + 5


def test_sibling_referenced_under_two_parents_counts_once_above() -> None:
    store = genesis_store()
    x, w, z = H(1), H(2), H(3)
    add(store, x, GENESIS)
    add(store, w, GENESIS)
    add(store, H(11), x, siblings=[(z, 5), (w, 1)])
    add(store, H(21), w, siblings=[(z, 5), (x, 1)])
    # Each parent counts Z (and the other parent, referenced as a sibling) once.
    # U(X) = {X, X1} + {Z, W}: W is outside X's subtree, so it counts through the reference.
    assert get_weight(store, x) == 1 + 1 + 5 + 1
    assert get_weight(store, w) == get_weight(store, x)
    # Genesis: itself, X, W, X1, W1 and Z once.
    assert get_weight(store, GENESIS) == 1 + 1 + 1 + 1 + 1 + 5


def test_duplicate_sibling_in_one_block_counts_once() -> None:
    store = genesis_store()
    x, z = H(1), H(2)
    add(store, x, GENESIS)
    add(store, H(11), x, siblings=[(z, 5), (z, 5)])
    assert get_weight(store, H(11)) == 6
    assert get_weight(store, x) == 7
    assert get_weight(store, GENESIS) == 8


@pytest.mark.parametrize("sibling_first", [False, True])
def test_sibling_arriving_as_block_is_not_double_counted(sibling_first: bool) -> None:
    store = genesis_store()
    x, z, x1, z1 = H(1), H(2), H(11), H(21)
    add(store, x, GENESIS, work=2)
    if sibling_first:
        add(store, z, GENESIS, work=5)
    add(store, x1, x, work=3, siblings=[(z, 5)])
    if not sibling_first:
        assert z not in store.blocks
        assert get_weight(store, GENESIS) == 1 + 2 + 3 + 5
        add(store, z, GENESIS, work=5)
    assert get_weight(store, z) == 5
    assert get_weight(store, x1) == 3 + 5
    assert get_weight(store, x) == 2 + 3 + 5
    assert get_weight(store, GENESIS) == 1 + 2 + 3 + 5
    # Z's own descendants count under Z and above, and not under X.
    add(store, z1, z, work=7)
    assert get_weight(store, z) == 12
    assert get_weight(store, x) == 10
    assert get_weight(store, GENESIS) == 18
    assert get_head(store) == z1


# --- ties ------------------------------------------------------------------------------------


def test_ties_go_to_the_lower_hash() -> None:
    store = genesis_store()
    for n in (5, 3, 4):
        add(store, H(n), GENESIS)
    assert get_head(store) == H(3)
    # Deeper: two equal subtrees, then the lower-hash one's children tie again.
    add(store, H(31), H(3))
    add(store, H(41), H(4))
    add(store, H(52), H(5), work=2)
    # H(5)'s subtree now weighs 3, H(3) and H(4) weigh 2.
    assert get_head(store) == H(52)
    add(store, H(33), H(3))
    add(store, H(32), H(3))
    # H(3) weighs 4 and its three leaves tie.
    assert get_head(store) == H(31)


# --- deep reorg ------------------------------------------------------------------------------


def test_deep_reorg() -> None:
    store = genesis_store()
    a = [H(1000 + i) for i in range(1, 51)]  # heights 1..50
    chain(store, GENESIS, a)
    assert get_head(store) == a[-1]
    fork = a[4]  # height 5
    b = [H(2000 + i) for i in range(6, 66)]  # heights 6..65 (60 blocks), higher hashes than A
    parent = fork
    for count, block in enumerate(b, start=1):
        add(store, block, parent)
        parent = block
        # A6..A50 weighs 45; B takes over only when strictly heavier (ties go to A's lower hash).
        assert get_head(store) == (b[count - 1] if count > 45 else a[-1])
    assert get_head(store) == b[-1]
    assert get_weight(store, a[5]) == 45
    assert get_weight(store, b[0]) == 60
    assert get_weight(store, fork) == 1 + 45 + 60

    disconnect, connect_ = reorg_path(store, a[-1], b[-1])
    assert disconnect == list(reversed(a[5:]))
    assert connect_ == b
    assert len(disconnect) == 45
    assert common_ancestor(store, a[-1], b[-1]) == fork
    # Going back is the mirror image.
    assert reorg_path(store, b[-1], a[-1]) == (list(reversed(b)), a[5:])


def test_ancestry_helpers() -> None:
    store = genesis_store()
    chain(store, GENESIS, [H(1), H(2), H(3)])
    add(store, H(12), H(1))
    assert is_ancestor(store, GENESIS, H(3))
    assert is_ancestor(store, H(3), H(3))
    assert is_ancestor(store, H(1), H(12))
    assert not is_ancestor(store, H(2), H(12))
    assert not is_ancestor(store, H(3), H(1))
    assert common_ancestor(store, H(3), H(12)) == H(1)
    assert common_ancestor(store, H(2), H(3)) == H(2)
    assert common_ancestor(store, GENESIS, H(12)) == GENESIS
    assert ancestors(store, H(3), 2) == [H(2), H(1)]
    assert ancestors(store, H(3), 10) == [H(2), H(1), GENESIS]
    assert ancestors(store, GENESIS, 3) == []
    # A descendant of the old head: nothing to disconnect.
    assert reorg_path(store, H(1), H(3)) == ([], [H(2), H(3)])
    assert reorg_path(store, H(3), H(3)) == ([], [])
    with pytest.raises(UnknownBlock):
        common_ancestor(store, H(3), H(99))


# --- errors ----------------------------------------------------------------------------------


def snapshot(store: Store) -> tuple[object, ...]:
    return (
        dict(store.blocks),
        {k: list(v) for k, v in store.children.items()},
        dict(store.weights),
        dict(store.works),
        dict(store.seen_children),
        {k: set(v) for k, v in store.referenced_under.items()},
    )


def test_unknown_parent_and_bad_height() -> None:
    store = genesis_store()
    before = snapshot(store)
    with pytest.raises(ParentNotInStore):
        on_block(store, BlockMeta(H(2), H(1), 2, 1))
    with pytest.raises(InvalidHeight):
        on_block(store, BlockMeta(H(1), GENESIS, 2, 1))
    assert snapshot(store) == before
    assert issubclass(ParentNotInStore, QoinError)
    with pytest.raises(UnknownBlock):
        get_weight(store, H(1))


def test_adding_twice_is_a_no_op() -> None:
    store = genesis_store()
    x, z = H(1), H(2)
    add(store, x, GENESIS)
    meta = add(store, H(11), x, siblings=[(z, 3)])
    before = snapshot(store)
    on_block(store, meta)
    on_block(store, store.blocks[GENESIS])
    assert snapshot(store) == before


def test_malformed_meta() -> None:
    with pytest.raises(InvalidBlockMeta):
        BlockMeta(b"short", GENESIS, 1, 1)
    with pytest.raises(InvalidBlockMeta):
        BlockMeta(H(1), GENESIS, 1, 0)
    with pytest.raises(InvalidBlockMeta):
        BlockMeta(H(1), GENESIS, -1, 1)
    with pytest.raises(InvalidBlockMeta):
        BlockMeta(H(1), GENESIS, 1, 1, ((H(2), 0),))
    with pytest.raises(InvalidBlockMeta):
        BlockMeta(H(1), GENESIS, 1, 1, ((b"x", 1),))
    with pytest.raises(InvalidSiblingReference):
        new_store(BlockMeta(GENESIS, bytes(32), 0, 1, ((H(1), 1),)))


def test_impossible_sibling_references_are_refused() -> None:
    store = genesis_store()
    x, y, x1 = H(1), H(2), H(11)
    add(store, x, GENESIS)
    add(store, y, GENESIS)
    add(store, H(21), y)
    before = snapshot(store)
    cases = [
        # A child of genesis has no generation above it.
        BlockMeta(H(3), GENESIS, 1, 1, ((H(4), 1),)),
        # The parent is not a sibling.
        BlockMeta(x1, x, 2, 1, ((x, 1),)),
        # Nor is the block itself.
        BlockMeta(x1, x, 2, 1, ((x1, 1),)),
        # Nor genesis.
        BlockMeta(x1, x, 2, 1, ((GENESIS, 1),)),
        # Nor a block of another generation (Y's child is a cousin).
        BlockMeta(x1, x, 2, 1, ((H(21), 1),)),
    ]
    for meta in cases:
        with pytest.raises(InvalidSiblingReference):
            on_block(store, meta)
    assert snapshot(store) == before

    # A hash referenced as a child of genesis cannot later arrive under another parent.
    add(store, x1, x, siblings=[(H(5), 1)])
    with pytest.raises(InvalidSiblingReference):
        add(store, H(5), y)
    add(store, H(5), GENESIS)


def test_conflicting_work_is_refused() -> None:
    store = genesis_store()
    x, z = H(1), H(2)
    add(store, x, GENESIS)
    add(store, z, GENESIS, work=4)
    before = snapshot(store)
    with pytest.raises(ConflictingWork):
        add(store, H(11), x, siblings=[(z, 5)])
    with pytest.raises(ConflictingWork):
        add(store, H(11), x, siblings=[(H(3), 5), (H(3), 6)])
    assert snapshot(store) == before
    add(store, H(11), x, siblings=[(H(3), 5)])
    with pytest.raises(ConflictingWork):
        add(store, H(3), GENESIS, work=6)


# --- properties against the definition -------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A block tree (index 0 is genesis) plus sibling headers that never arrive as blocks."""

    metas: tuple[BlockMeta, ...]
    works: dict[bytes, int]
    """Work of every hash: blocks and never-arriving sibling headers."""


@st.composite
def trees(draw: st.DrawFn, max_blocks: int = 24) -> Tree:
    count = draw(st.integers(min_value=1, max_value=max_blocks))  # including genesis
    parents = [-1] + [draw(st.integers(min_value=0, max_value=i - 1)) for i in range(1, count)]
    # Headers that exist (valid members of a generation) but never arrive as blocks.
    phantoms = [draw(st.integers(min_value=0, max_value=2)) for _ in range(count)]
    phantom_parents = [p for p in range(count) for _ in range(phantoms[p])]
    total = count + len(phantom_parents)
    # Random hash order, so that tie breaks vary.
    ranks = draw(st.permutations(range(1, total + 1)))
    hashes = [H(r) for r in ranks]
    works = [draw(st.integers(min_value=1, max_value=10)) for _ in range(total)]
    parent_of = parents + phantom_parents  # phantom i (index count + k) is a child of its parent
    heights = [0] * count
    for i in range(1, count):
        heights[i] = heights[parents[i]] + 1

    metas: list[BlockMeta] = []
    for i in range(count):
        siblings: list[int] = []
        if i > 0 and parents[i] > 0:
            p, g = parents[i], parents[parents[i]]
            # Other children of the grandparent, arrived or not, never the parent itself.
            candidates = [j for j in range(1, total) if parent_of[j] == g and j != p]
            if candidates:
                siblings = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=4))
        metas.append(
            BlockMeta(
                hashes[i],
                hashes[parents[i]] if i > 0 else bytes(32),
                heights[i],
                works[i],
                tuple((hashes[j], works[j]) for j in siblings),
            )
        )
    return Tree(tuple(metas), dict(zip(hashes, works, strict=True)))


def brute_weights(tree: Tree, present: Iterable[BlockMeta]) -> dict[bytes, int]:
    """weight(A) = work of subtree(A) union {siblings referenced in subtree(A)}, each hash once."""
    metas = {m.block_hash: m for m in present}
    children: dict[bytes, list[bytes]] = {h: [] for h in metas}
    for m in metas.values():
        if m.parent_hash in children:
            children[m.parent_hash].append(m.block_hash)

    def universe(a: bytes) -> set[bytes]:
        found = {a} | {s for s, _ in metas[a].siblings}
        for child in children[a]:
            found |= universe(child)
        return found

    return {a: sum(tree.works[x] for x in universe(a)) for a in metas}


def brute_head(present: Iterable[BlockMeta], weights: dict[bytes, int], genesis: bytes) -> bytes:
    metas = list(present)
    head = genesis
    while kids := [m.block_hash for m in metas if m.parent_hash == head and m.block_hash != head]:
        head = max(kids, key=lambda h: (weights[h], [-b for b in h]))
    return head


@st.composite
def trees_in_topological_order(draw: st.DrawFn) -> tuple[Tree, list[BlockMeta]]:
    tree = draw(trees())
    inserted = {tree.metas[0].block_hash}
    pending = list(tree.metas[1:])
    order: list[BlockMeta] = []
    while pending:
        ready = [m for m in pending if m.parent_hash in inserted]
        pick = ready[draw(st.integers(min_value=0, max_value=len(ready) - 1))]
        pending.remove(pick)
        inserted.add(pick.block_hash)
        order.append(pick)
    return tree, order


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_in_topological_order())
def test_incremental_weights_and_head_match_the_definition(
    case: tuple[Tree, list[BlockMeta]],
) -> None:
    tree, order = case
    genesis = tree.metas[0]
    store = new_store(genesis)
    present = [genesis]
    for meta in order:
        on_block(store, meta)
        present.append(meta)
        expected = brute_weights(tree, present)
        assert store.weights == expected
        assert get_head(store) == brute_head(present, expected, genesis.block_hash)


def brute_path(
    metas: dict[bytes, BlockMeta], old: bytes, new: bytes
) -> tuple[list[bytes], list[bytes]]:
    """``(disconnect, connect)`` from the definition: each head's ancestry minus the other's."""

    def lineage(block: bytes) -> list[bytes]:  # the block, then its ancestors
        found = [block]
        while metas[found[-1]].height > 0:
            found.append(metas[found[-1]].parent_hash)
        return found

    old_line, new_line = lineage(old), lineage(new)
    return [b for b in old_line if b not in new_line], [b for b in new_line if b not in old_line][
        ::-1
    ]


@settings(max_examples=100, deadline=None)
@given(trees(), st.data())
def test_the_one_reorg_walk_matches_the_definition_over_any_store(
    tree: Tree, data: st.DataObject
) -> None:
    metas = {meta.block_hash: meta for meta in tree.metas}
    store = build_store(tree.metas[0], tree.metas[1:])
    old, new = (data.draw(st.sampled_from(list(metas))) for _ in range(2))
    expected = brute_path(metas, old, new)
    # Over the fork-choice store, and over any other store through its (height, parent) link.
    assert reorg_path(store, old, new) == expected
    assert path_between(lambda h: (metas[h].height, metas[h].parent_hash), old, new) == expected
    fork = metas[expected[0][-1]].parent_hash if expected[0] else old
    assert common_ancestor(store, old, new) == fork
    assert is_ancestor(store, fork, old) and is_ancestor(store, fork, new)


def feed(store: Store, pool: OrphanPool[BlockMeta], meta: BlockMeta) -> None:
    """What a node does: orphan a block whose parent is unknown; connect orphans after a block."""
    if meta.block_hash in store.blocks:
        return
    if meta.parent_hash not in store.blocks:
        pool.add(meta.block_hash, meta.parent_hash, meta, 1)
        return
    on_block(store, meta)
    for orphan in connect(pool, meta.block_hash):
        on_block(store, orphan)


@st.composite
def trees_in_two_orders(draw: st.DrawFn) -> tuple[Tree, list[BlockMeta], list[BlockMeta]]:
    tree = draw(trees())
    blocks = list(tree.metas[1:])
    first = draw(st.permutations(blocks))
    # The second order also delivers some blocks twice.
    repeats = draw(st.lists(st.sampled_from(blocks), max_size=5)) if blocks else []
    second = draw(st.permutations(blocks + repeats))
    return tree, list(first), list(second)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_in_two_orders())
def test_arrival_order_does_not_matter(
    case: tuple[Tree, list[BlockMeta], list[BlockMeta]],
) -> None:
    tree, first, second = case
    genesis = tree.metas[0]
    results = []
    for order in (first, second):
        store = new_store(genesis)
        pool: OrphanPool[BlockMeta] = OrphanPool()
        for meta in order:
            feed(store, pool, meta)
        assert len(pool) == 0
        assert len(store.blocks) == len(tree.metas)
        results.append((get_head(store), store.weights))
    assert results[0] == results[1]
    expected = brute_weights(tree, tree.metas)
    assert results[0][1] == expected
    assert results[0][0] == brute_head(tree.metas, expected, genesis.block_hash)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_in_topological_order(), st.data())
def test_bulk_build_equals_incremental(
    case: tuple[Tree, list[BlockMeta]], data: st.DataObject
) -> None:
    """The one-pass rebuild used on restart gives the incremental store, and stays consistent
    when more blocks arrive after it."""
    tree, order = case
    genesis = tree.metas[0]
    cut = data.draw(st.integers(min_value=0, max_value=len(order)))
    built = build_store(genesis, order[:cut])
    incremental = new_store(genesis)
    for meta in order[:cut]:
        on_block(incremental, meta)
    assert built.weights == incremental.weights
    assert built.seen_children == incremental.seen_children
    assert built.referenced_under == {
        k: v for k, v in incremental.referenced_under.items() if v
    } | {k: v for k, v in built.referenced_under.items() if not v}
    for meta in order[cut:]:
        on_block(built, meta)
    present = [genesis, *order]
    expected = brute_weights(tree, present)
    assert built.weights == expected
    assert get_head(built) == brute_head(present, expected, genesis.block_hash)
