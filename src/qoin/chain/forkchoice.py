"""Fork choice: GHOST over generations (docs/spec/chain.md §5).

This is GHOST, the *Greedy Heaviest-Observed Sub-Tree* rule of Sompolinsky and Zohar (2013); the
whitepaper calls it the "quantum entanglement protocol". Blocks form a tree rooted at genesis. A
*generation* is the set of blocks with the same parent. A block at height ``h + 1`` whose parent is
``P`` may reference *siblings*: other children of ``P``'s parent ``G`` (so they are at height ``h``,
in ``P``'s generation, and never ``P`` itself). Their work counts in fork choice, like Ethereum's
uncles; their transactions do not execute.

Definitions::

    U(A)      = subtree(A) union { S : S is referenced as a sibling by some block in subtree(A) }
    weight(A) = Σ work(x) for x in U(A)        (every hash counted once)

    head      = start at genesis; repeatedly step to the child of greatest weight, ties broken by
                the lower block hash (bytes comparison); stop at a leaf

The store keeps ``weight`` incrementally. When block ``B`` with parent ``P`` and grandparent ``G``
arrives:

1. ``weight[B] = work(B) + Σ work(S)`` over ``B``'s distinct referenced siblings ``S``.
2. Unless ``B``'s work already reached ``P`` (because an earlier block referenced ``B`` as a
   sibling), add ``work(B)`` to ``P`` and every ancestor of ``P``.
3. For each referenced sibling ``S``: unless another child of ``P`` already referenced ``S``, add
   ``work(S)`` to ``P`` only (``S`` is not in ``subtree(P)``). Then, unless ``S``'s work already
   reached ``G`` (as a block or as a reference), add ``work(S)`` to ``G`` and every ancestor of
   ``G``. ``S`` is, or will be, a child of ``G``, so from ``G`` upwards it counts exactly once
   whether it arrives as a block before or after being referenced.

The fork choice does not validate siblings (the block validator checks that each referenced header
is a valid member of the parent's generation, that it carries the proof of work it claims, that
references are unique and at most ``MAX_SIBLINGS``). It only refuses inputs that would make the
weights above ill-defined: a reference to ``P``, to ``B`` itself or to a block known to be in
another generation, and one hash seen with two different works.

Known limitation: adding a block walks all of its ancestors, so it costs ``O(depth)``, and so do
:func:`get_head` (``O(depth * branching)``), :func:`is_ancestor`, :func:`common_ancestor` and
:func:`reorg_path`. The usual fix is to finalize (prune) the tree below a depth at which reorgs are
no longer considered, so that walks stop at the pruned root; it is not implemented here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from qoin.crypto.hashing import HASH_SIZE
from qoin.errors import QoinError


class ForkChoiceError(QoinError):
    """A block cannot be added to, or a query cannot be answered by, the fork-choice store."""


class InvalidBlockMeta(ForkChoiceError):
    """A :class:`BlockMeta` is malformed (hash size, negative height, non-positive work)."""


class ParentNotInStore(ForkChoiceError):
    """The block's parent is not in the store (the node keeps such blocks in the orphan pool)."""


class UnknownBlock(ForkChoiceError):
    """A query names a block that is not in the store."""


class InvalidHeight(ForkChoiceError):
    """The block's height is not its parent's height plus one."""


class InvalidSiblingReference(ForkChoiceError):
    """A sibling reference cannot be a member of the parent's generation."""


class ConflictingWork(ForkChoiceError):
    """The same block hash was given two different works."""


@dataclass(frozen=True)
class BlockMeta:
    """What fork choice needs to know about one block."""

    block_hash: bytes
    """Hash of the block header (32 bytes)."""
    parent_hash: bytes
    """Hash of the parent header (32 bytes)."""
    height: int
    """Distance from genesis."""
    work: int
    """Expected number of attempts to find the block, from its target; > 0."""
    siblings: tuple[tuple[bytes, int], ...] = ()
    """``(hash, work)`` of each referenced sibling header."""

    def __post_init__(self) -> None:
        # Hashes are fixed size.
        for name, value in (("block_hash", self.block_hash), ("parent_hash", self.parent_hash)):
            if len(value) != HASH_SIZE:
                raise InvalidBlockMeta(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")
        # Heights count up from genesis.
        if self.height < 0:
            raise InvalidBlockMeta(f"height must be >= 0, got {self.height}")
        # Every block, and every referenced sibling, represents some work.
        if self.work <= 0:
            raise InvalidBlockMeta(f"work must be > 0, got {self.work}")
        for sibling_hash, sibling_work in self.siblings:
            if len(sibling_hash) != HASH_SIZE:
                raise InvalidBlockMeta(
                    f"sibling hash must be {HASH_SIZE} bytes, got {len(sibling_hash)}"
                )
            if sibling_work <= 0:
                raise InvalidBlockMeta(f"sibling {sibling_hash.hex()} work must be > 0")


@dataclass
class Store:
    """
    The block tree and its GHOST weights. Build one with :func:`new_store`; change it only
    through :func:`on_block`.
    """

    genesis: bytes
    """Hash of the root of the tree."""
    blocks: dict[bytes, BlockMeta] = field(default_factory=dict)
    """Every block in the tree, by hash."""
    children: dict[bytes, list[bytes]] = field(default_factory=dict)
    """Children of each block, in arrival order (every block has an entry)."""
    weights: dict[bytes, int] = field(default_factory=dict)
    """``weight(A)`` of every block ``A`` in the tree (see the module docstring)."""
    works: dict[bytes, int] = field(default_factory=dict)
    """Work of every hash seen, as a block or as a referenced sibling."""
    seen_children: dict[bytes, bytes] = field(default_factory=dict)
    """
    ``child -> parent`` for every hash whose work has been added to its parent and all the
    parent's ancestors, whether it arrived as a block or was referenced as a sibling.
    """
    referenced_under: dict[bytes, set[bytes]] = field(default_factory=dict)
    """For each block ``P``, the siblings referenced by ``P``'s children (counted in ``P`` once)."""


def new_store(genesis: BlockMeta) -> Store:
    """A store holding only ``genesis``, which is then the head."""
    # Genesis has no parent in the tree, so it has no generation to reference.
    if genesis.siblings:
        raise InvalidSiblingReference("genesis cannot reference siblings")
    store = Store(genesis=genesis.block_hash)
    store.blocks[genesis.block_hash] = genesis
    store.children[genesis.block_hash] = []
    store.weights[genesis.block_hash] = genesis.work
    store.works[genesis.block_hash] = genesis.work
    return store


def _meta(store: Store, block_hash: bytes) -> BlockMeta:
    """The block ``block_hash``, or :class:`UnknownBlock`."""
    meta = store.blocks.get(block_hash)
    if meta is None:
        raise UnknownBlock(f"block {block_hash.hex()} is not in the fork-choice store")
    return meta


def _parent(store: Store, block_hash: bytes) -> bytes | None:
    """Parent of ``block_hash`` in the tree; ``None`` for genesis."""
    if block_hash == store.genesis:
        return None
    return store.blocks[block_hash].parent_hash


def _add_to_chain(store: Store, start: bytes | None, work: int) -> None:
    """Add ``work`` to the weight of ``start`` and of every ancestor of ``start``."""
    node = start
    while node is not None:
        store.weights[node] += work
        node = _parent(store, node)


def _check_work(store: Store, block_hash: bytes, work: int) -> None:
    """Refuse a second, different work for a hash already seen."""
    # A header hash commits to its target, hence to its work: one hash, one work.
    known = store.works.get(block_hash)
    if known is not None and known != work:
        raise ConflictingWork(f"block {block_hash.hex()} has work {known}, now given as {work}")


def _distinct_siblings(meta: BlockMeta) -> dict[bytes, int]:
    """``meta``'s referenced siblings, each hash once (in order), with its work."""
    siblings: dict[bytes, int] = {}
    for sibling_hash, work in meta.siblings:
        # A hash listed twice is one sibling, with one work.
        if siblings.setdefault(sibling_hash, work) != work:
            raise ConflictingWork(f"sibling {sibling_hash.hex()} is listed with two works")
    return siblings


def _check_block(store: Store, meta: BlockMeta) -> dict[bytes, int]:
    """
    Check that ``meta`` can be added to the tree without making a weight ill-defined; return its
    distinct siblings. Changes nothing.
    """
    # The parent must be in the tree: blocks arrive in topological order.
    parent = store.blocks.get(meta.parent_hash)
    if parent is None:
        raise ParentNotInStore(
            f"parent {meta.parent_hash.hex()} of {meta.block_hash.hex()} is unknown"
        )
    # A block is exactly one above its parent.
    if meta.height != parent.height + 1:
        raise InvalidHeight(
            f"block {meta.block_hash.hex()} has height {meta.height}, "
            f"its parent has height {parent.height}"
        )
    _check_work(store, meta.block_hash, meta.work)
    # A hash referenced as a child of some block must arrive as a child of that block.
    referenced_parent = store.seen_children.get(meta.block_hash)
    if referenced_parent is not None and referenced_parent != meta.parent_hash:
        raise InvalidSiblingReference(
            f"block {meta.block_hash.hex()} was referenced as a child of "
            f"{referenced_parent.hex()}, but its parent is {meta.parent_hash.hex()}"
        )
    siblings = _distinct_siblings(meta)
    grandparent = _parent(store, meta.parent_hash)
    for sibling_hash, work in siblings.items():
        # A child of genesis has no generation above it to reference.
        if grandparent is None:
            raise InvalidSiblingReference(
                f"block {meta.block_hash.hex()} is a child of genesis and cannot reference siblings"
            )
        # A sibling is another member of the parent's generation: neither the parent nor the block.
        if sibling_hash in (meta.parent_hash, meta.block_hash):
            raise InvalidSiblingReference(
                f"block {meta.block_hash.hex()} references its parent or itself as a sibling"
            )
        # A sibling is a child of the grandparent (as a block, or as referenced before).
        sibling_parent = store.seen_children.get(sibling_hash)
        if sibling_hash == store.genesis or (
            sibling_parent is not None and sibling_parent != grandparent
        ):
            raise InvalidSiblingReference(
                f"sibling {sibling_hash.hex()} of {meta.block_hash.hex()} is not a child of "
                f"{grandparent.hex()}"
            )
        _check_work(store, sibling_hash, work)
    return siblings


def on_block(store: Store, meta: BlockMeta) -> None:
    """
    Add a block to the tree and update the weights.

    A block already in the store is ignored. Raises :class:`ParentNotInStore` if its parent is not in
    the store, :class:`InvalidHeight` if it is not one above its parent, and
    :class:`InvalidSiblingReference` or :class:`ConflictingWork` for inputs that cannot come from a
    validated block; on error the store is unchanged.
    """
    # Adding a block twice is a no-op: its hash commits to everything fork choice reads.
    if meta.block_hash in store.blocks:
        return
    siblings = _check_block(store, meta)
    block, parent = meta.block_hash, meta.parent_hash
    grandparent = _parent(store, parent)

    store.blocks[block] = meta
    store.children[block] = []
    store.children[parent].append(block)
    store.works[block] = meta.work

    # Rule 1: the block's own weight is its work plus its distinct siblings' work.
    store.weights[block] = meta.work + sum(siblings.values())

    # Rule 2: the block's work reaches its parent and above once, unless an earlier reference did.
    if block not in store.seen_children:
        store.seen_children[block] = parent
        _add_to_chain(store, parent, meta.work)

    referenced = store.referenced_under.setdefault(parent, set())
    for sibling, work in siblings.items():
        store.works[sibling] = work
        # Rule 3a: a sibling is outside the parent's subtree; it counts in the parent once.
        if sibling not in referenced:
            referenced.add(sibling)
            store.weights[parent] += work
        # Rule 3b: the sibling is a child of the grandparent; from there up it counts once.
        if sibling not in store.seen_children and grandparent is not None:
            store.seen_children[sibling] = grandparent
            _add_to_chain(store, grandparent, work)


def build_store(genesis: BlockMeta, metas: Iterable[BlockMeta]) -> Store:
    """A store holding ``genesis`` and ``metas`` (parents before children), built in one pass.

    Equivalent to :func:`new_store` followed by :func:`on_block` for each block, but linear in the
    number of blocks instead of ``O(depth)`` per block: the tree is linked first, then every weight
    is computed bottom-up from the definition::

        weight(A) = Σ over X in subtree(A) of (work(X) + work of X's unstored generation members
                    referenced somewhere)           # stored blocks and never-stored siblings
                    + work of A's own references    # siblings of A's parent
                    + work of the distinct references of A's children   # siblings of A
    """
    store = new_store(genesis)
    for meta in metas:
        if meta.block_hash in store.blocks:
            continue
        siblings = _check_block(store, meta)
        block, parent = meta.block_hash, meta.parent_hash
        store.blocks[block] = meta
        store.children[block] = []
        store.children[parent].append(block)
        store.works[block] = meta.work
        store.seen_children[block] = parent
        grandparent = _parent(store, parent)
        referenced = store.referenced_under.setdefault(parent, set())
        for sibling, work in siblings.items():
            store.works[sibling] = work
            referenced.add(sibling)
            if grandparent is not None:
                store.seen_children.setdefault(sibling, grandparent)
    # Never-stored siblings count once, at the block whose child they are (their generation).
    unstored: dict[bytes, int] = {}
    for sibling, generation in store.seen_children.items():
        if sibling not in store.blocks:
            unstored[generation] = unstored.get(generation, 0) + store.works[sibling]
    subtree: dict[bytes, int] = {}
    for block in sorted(store.blocks, key=lambda h: -store.blocks[h].height):
        meta = store.blocks[block]
        subtree[block] = (
            meta.work
            + unstored.get(block, 0)
            + sum(subtree[child] for child in store.children[block])
        )
        own = sum(_distinct_siblings(meta).values())
        under = sum(store.works[s] for s in store.referenced_under.get(block, ()))
        store.weights[block] = subtree[block] + own + under
    return store


def get_weight(store: Store, block_hash: bytes) -> int:
    """``weight(block_hash)``: the work of its subtree and of the siblings that subtree references."""
    _meta(store, block_hash)
    return store.weights[block_hash]


def best_child(store: Store, block_hash: bytes) -> bytes | None:
    """The child of ``block_hash`` that GHOST steps to, or ``None`` at a leaf."""
    children = store.children[_meta(store, block_hash).block_hash]
    if not children:
        return None
    # Greatest weight first; among equal weights the lower hash.
    return min(children, key=lambda child: (-store.weights[child], child))


def get_head(store: Store) -> bytes:
    """The GHOST head: from genesis, step to the heaviest child (lower hash on ties) until a leaf."""
    head = store.genesis
    while (child := best_child(store, head)) is not None:
        head = child
    return head


def ancestors(store: Store, block_hash: bytes, count: int) -> list[bytes]:
    """Up to ``count`` proper ancestors of ``block_hash``, nearest first (fewer near genesis)."""
    found: list[bytes] = []
    node = _parent(store, _meta(store, block_hash).block_hash)
    while node is not None and len(found) < count:
        found.append(node)
        node = _parent(store, node)
    return found


def _ancestor_at_height(store: Store, block_hash: bytes, height: int) -> bytes:
    """The ancestor-or-self of ``block_hash`` at ``height`` (which is at most its height)."""
    node = block_hash
    while store.blocks[node].height > height:
        node = store.blocks[node].parent_hash
    return node


def is_ancestor(store: Store, ancestor: bytes, descendant: bytes) -> bool:
    """Whether ``ancestor`` is ``descendant`` or one of its ancestors."""
    low, high = _meta(store, ancestor), _meta(store, descendant)
    if low.height > high.height:
        return False
    return _ancestor_at_height(store, descendant, low.height) == ancestor


BlockLink = Callable[[bytes], tuple[int, bytes]]
"""``(height, parent hash)`` of a known block; raises (its store's error) for an unknown one. The
narrow view of a block tree that :func:`path_between` walks, whatever store holds the tree."""


def path_between(
    link: BlockLink, old_head: bytes, new_head: bytes
) -> tuple[list[bytes], list[bytes]]:
    """
    How to move from ``old_head`` to ``new_head`` in the tree ``link`` reads:
    ``(disconnect, connect)``.

    ``disconnect`` lists the blocks from ``old_head`` back to (excluding) the common ancestor,
    newest first; ``connect`` lists the blocks from (excluding) the common ancestor to
    ``new_head``, oldest first. The reorg depth is ``len(disconnect)``. The one common-ancestor
    walk: fork choice (:func:`reorg_path`) and the execution database use it over their stores.
    """
    disconnect: list[bytes] = []
    connect: list[bytes] = []
    (old_height, old_parent), (new_height, new_parent) = link(old_head), link(new_head)
    # Down to the same height, then both sides together until they meet.
    while old_height > new_height:
        disconnect.append(old_head)
        old_head, (old_height, old_parent) = old_parent, link(old_parent)
    while new_height > old_height:
        connect.append(new_head)
        new_head, (new_height, new_parent) = new_parent, link(new_parent)
    while old_head != new_head:
        disconnect.append(old_head)
        connect.append(new_head)
        old_head, (old_height, old_parent) = old_parent, link(old_parent)
        new_head, (new_height, new_parent) = new_parent, link(new_parent)
    connect.reverse()
    return disconnect, connect


def _link(store: Store) -> BlockLink:
    """The fork-choice store as a :data:`BlockLink` (:class:`UnknownBlock` for an unknown hash)."""

    def link(block_hash: bytes) -> tuple[int, bytes]:
        meta = _meta(store, block_hash)
        return meta.height, meta.parent_hash

    return link


def reorg_path(store: Store, old_head: bytes, new_head: bytes) -> tuple[list[bytes], list[bytes]]:
    """:func:`path_between` over the fork-choice store: ``(disconnect, connect)`` from
    ``old_head`` to ``new_head``."""
    return path_between(_link(store), old_head, new_head)


def common_ancestor(store: Store, a: bytes, b: bytes) -> bytes:
    """The deepest block that is an ancestor-or-self of both ``a`` and ``b``."""
    disconnect, _ = reorg_path(store, a, b)
    return store.blocks[disconnect[-1]].parent_hash if disconnect else a
