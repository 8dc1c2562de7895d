"""Which side-branch blocks are worth executing now, and the blocks kept undecided until then.

Judging a block off the head costs the execution clients a move to its branch: the state rolls back
to the fork point and the branch is re-executed from there, then rolled forward to the head again.
A peer relaying a long branch that will never be the head must not cost that for every block. So a
side block (its parent is not the head) is executed only when

* its branch is *competitive*: the GHOST weight the branch would have at the fork point (its stored
  part, and at most what the kept blocks on it can add: their work and the work of the siblings
  they reference, :func:`weight_bound`; every kept continuation past the fork point counts,
  :func:`pending_branch`) plus :data:`COMPETITIVE_MARGIN_BLOCKS` of the head block's work reaches
  the weight of the head's branch there; or
* it is *near the head*: the fork point is at most :data:`NEAR_HEAD_DEPTH` blocks below the head and
  the block at most that many above the fork point (a natural fork, cheap to execute).

Other side blocks are kept undecided in :class:`PendingBlocks` — neither stored nor rejected — with
the blocks that arrive on top of them, and the whole branch is judged (parents first) once it
becomes competitive. A branch kept back this way can never have been the head: at the fork point
it is lighter than the head's branch, so GHOST would not have stepped to it (docs/spec/consensus.md
§2).

Everything here is bookkeeping over the fork-choice store; the node (:mod:`qoin.consensus.node`)
does the importing.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from qoin.chain import forkchoice
from qoin.chain.block import Block, Header
from qoin.chain.chain import ExecutionUndecided
from qoin.chain.validation import block_work

NEAR_HEAD_DEPTH = 8
"""A side block whose fork point is at most this many blocks below the head, and which is at most
this many blocks above it, is judged at once (a move costs at most about twice this many block
executions)."""
COMPETITIVE_MARGIN_BLOCKS = 2
"""A branch within this many head blocks' work of the head's branch is competitive: it is judged
before it can overtake, so that the reorg does not wait for a burst of executions."""
MAX_PENDING_BLOCKS = 256
"""The most side blocks kept undecided (the oldest are forgotten first)."""
MAX_PENDING_BYTES = 64 * 1024 * 1024
"""The most bytes of side blocks kept undecided."""


class SideBranchPending(ExecutionUndecided):
    """A side block whose branch is not worth executing yet: kept undecided, judged when its
    branch becomes competitive."""


@dataclass(frozen=True)
class SideBranch:
    """Where a side block's branch stands against the head's, at their fork point."""

    fork_height: int
    """Height of the common ancestor of the block's parent and the head."""
    side_weight: int
    """The GHOST weight the branch's first block after the fork would have at most with the block
    (and the blocks waiting on it) added."""
    head_weight: int
    """The GHOST weight of the head's branch's first block after the fork."""


def weight_bound(block: Block, parent: Header) -> int:
    """The most GHOST weight ``block`` (a child of ``parent``) adds to the branch it is on once
    stored: its own work and that of the siblings it references (fork choice counts a sibling in
    the block's parent, and from its grandparent up, at most once). A valid sibling is a child of
    the parent's parent, so it carries the parent's target: its work is the parent's, whatever
    the sibling header claims (an unchecked claim could make any branch look competitive).
    Counting the block's work alone could leave pending a branch that fork choice would pick."""
    return block_work(block.header) + len(block.siblings) * block_work(parent)


def side_branch(forks: forkchoice.Store, head: bytes, parent_hash: bytes, work: int) -> SideBranch:
    """The branch that blocks adding at most ``work`` (:func:`weight_bound`) on top of the stored
    ``parent_hash`` (not the head) form against ``head``. ``O(depth)``, like the fork-choice walks."""
    # The head's blocks after the fork, newest first; the branch's stored ones, oldest first.
    head_side, stored = forkchoice.reorg_path(forks, head, parent_hash)
    fork_height = forks.blocks[parent_hash].height - len(stored)
    head_weight = forks.weights[head_side[-1] if head_side else head]
    side_weight = work
    if stored:  # the branch has stored blocks already
        side_weight += forks.weights[stored[0]]
    return SideBranch(fork_height, side_weight, head_weight)


def pending_branch(
    forks: forkchoice.Store, head: bytes, pending: PendingBlocks, parent: Header, first: bytes
) -> tuple[SideBranch, list[bytes]]:
    """The branch that the kept blocks on the stored ``parent`` (not the head), from the kept
    ``first``, form against ``head``, and the kept children of ``parent`` it counts. Fork choice
    adds up a block's subtrees: when ``parent`` is past the fork point, every kept continuation of
    it weighs on the same branch (two, each too light alone, may outweigh the head's together);
    when ``parent`` is on the head's chain (it is the fork point), each continuation is a branch
    of its own, and only ``first``'s counts."""
    branch = side_branch(forks, head, parent.block_hash, 0)
    beyond_fork = branch.fork_height < parent.height
    firsts = pending.waiting_on(parent.block_hash) if beyond_fork else [first]
    added = pending.work(firsts, parent)
    return replace(branch, side_weight=branch.side_weight + added), firsts


def competitive(branch: SideBranch, head_work: int) -> bool:
    """Whether the branch is within the margin of the head's branch (or heavier)."""
    return branch.side_weight + COMPETITIVE_MARGIN_BLOCKS * head_work >= branch.head_weight


def worth_executing(branch: SideBranch, head_height: int, height: int, head_work: int) -> bool:
    """Whether a side block at ``height`` is judged now (competitive, or near the head)."""
    near = (
        head_height - branch.fork_height <= NEAR_HEAD_DEPTH
        and height - branch.fork_height <= NEAR_HEAD_DEPTH
    )
    return near or competitive(branch, head_work)


class PendingBlocks:
    """Side blocks kept undecided, and the blocks on top of them, by hash; bounded in count and
    bytes (the oldest are forgotten first: a peer relays them again if its branch grows)."""

    def __init__(
        self, max_count: int = MAX_PENDING_BLOCKS, max_bytes: int = MAX_PENDING_BYTES
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()
        self._sizes: dict[bytes, int] = {}
        self._children: dict[bytes, dict[bytes, None]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def add(self, block: Block) -> bool:
        """Keep ``block`` (forgetting the oldest as needed); False if it is kept already or alone
        exceeds the byte bound."""
        block_hash, size = block.block_hash, len(block.encode())
        if block_hash in self._blocks or size > self.max_bytes:
            return False
        while self._blocks and (
            len(self._blocks) >= self.max_count or self._bytes + size > self.max_bytes
        ):
            self._remove(next(iter(self._blocks)))
        self._blocks[block_hash] = block
        self._sizes[block_hash] = size
        self._children.setdefault(block.header.parent_hash, {})[block_hash] = None
        self._bytes += size
        return True

    def _remove(self, block_hash: bytes) -> Block:
        block = self._blocks.pop(block_hash)
        self._bytes -= self._sizes.pop(block_hash)
        siblings = self._children[block.header.parent_hash]
        del siblings[block_hash]
        if not siblings:
            del self._children[block.header.parent_hash]
        return block

    def waiting_on(self, parent_hash: bytes) -> list[bytes]:
        """The kept blocks whose parent is ``parent_hash``."""
        return list(self._children.get(parent_hash, ()))

    def lowest(self, block_hash: bytes) -> Block:
        """The kept ancestor-or-self of the kept ``block_hash`` whose parent is not kept."""
        block = self._blocks[block_hash]
        for _ in range(len(self._blocks)):  # bounded: each step goes one block down
            parent = self._blocks.get(block.header.parent_hash)
            if parent is None:
                break
            block = parent
        return block

    def subtree(self, block_hash: bytes) -> list[Block]:
        """The kept ``block_hash`` and every kept block above it, parents before children."""
        found = [self._blocks[block_hash]]
        frontier = deque([block_hash])
        while frontier:
            for child in self._children.get(frontier.popleft(), ()):
                found.append(self._blocks[child])
                frontier.append(child)
        return found

    def work(self, firsts: Sequence[bytes], parent: Header) -> int:
        """The most weight the :meth:`subtree` of each kept block in ``firsts`` (all children of
        the stored ``parent``) adds to its branch once stored (:func:`weight_bound`)."""
        headers = {parent.block_hash: parent}
        total = 0
        for first in firsts:
            for block in self.subtree(first):  # parents first
                headers[block.block_hash] = block.header
                total += weight_bound(block, headers[block.header.parent_hash])
        return total

    def take(self, block_hash: bytes) -> list[Block]:
        """Remove and return :meth:`subtree` (parents first)."""
        blocks = self.subtree(block_hash)
        for block in blocks:
            self._remove(block.block_hash)
        return blocks
