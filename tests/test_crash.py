"""Crash safety: ``kill -9`` a real ``qoin chain import`` at random points and reopen the store.

A block tree of ~150 real blocks (sibling forks every few heights, a reorg to a longer branch and a
reorg to a shorter but heavier branch, one child written before its parent) is imported by a real
process that is SIGKILLed at random moments, 20+ times. After every kill the store must open
cleanly, hold every block the process acknowledged (``ACK`` lines), hold exactly a prefix of the
import order, and have a head and canonical index that agree with fork choice recomputed from the
stored blocks. The seed is logged so a failure can be replayed (``QOIN_CRASH_SEED``).
"""

from __future__ import annotations

import json
import logging
import random
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qoin.chain import forkchoice
from qoin.chain import genesis as genesis_mod
from qoin.chain.block import Block
from qoin.chain.blockfile import write_blocks
from qoin.chain.chain import Chain, ImportStatus
from qoin.chain.forkchoice import BlockMeta
from qoin.chain.genesis import Genesis
from qoin.chain.validation import block_work, genesis_meta
from qoin.process import ChildFailed
from tests.chainutil import mine_next, on_schedule, test_genesis
from tests.framework import Network, read_to_end, test_seed
from tests.keys import keypair_for

log = logging.getLogger(__name__)

KILLS = 24
ROUND_TIMEOUT_S = 20.0
ACK_RE = re.compile(r"^ACK ([0-9a-f]{64}) head=([0-9a-f]{64})\n$")


@dataclass(frozen=True)
class BlockTree:
    genesis: Genesis
    genesis_file: Path
    blocks_file: Path
    connect_order: list[bytes]
    """Blocks in the order an import of ``blocks_file`` stores them (one transaction each)."""
    heads: list[bytes]
    """``heads[k]``: the fork-choice head once the first ``k`` blocks of ``connect_order`` are stored."""


def _sync(target: Chain, blocks: list[Block], now_ms: int) -> None:
    for block in blocks:
        target.import_block(block, now_ms=now_ms)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlockTree]:
    """Mine the tree once per module with a reference :class:`Chain`, write genesis and block file."""
    root = tmp_path_factory.mktemp("crash-tree")
    genesis = test_genesis()
    now = on_schedule(genesis, 10_000)
    keys = [keypair_for(index=k) for k in range(4)]
    ref = Chain.open(root / "ref", genesis)
    side = Chain.open(root / "side", genesis)  # a copy of ref up to a fork point, to mine branches
    order: list[Block] = []

    def add(block: Block) -> None:
        result = ref.import_block(block, now_ms=now)
        assert result.status is ImportStatus.IMPORTED
        order.append(block)

    def grow(count: int, forks_every: int = 0) -> None:
        for _ in range(count):
            height = ref.head_header.height + 1
            first = mine_next(ref, keys[0])
            if forks_every and height % forks_every == 0:
                # Two children of the same parent: the next block references the loser as a sibling.
                second = mine_next(ref, keys[1])
                add(first)
                add(second)
            else:
                add(first)

    try:
        grow(40, forks_every=10)
        # Reorg to a longer branch: 4 blocks on ref, then 6 competing blocks from the same parent.
        _sync(side, order, now)
        grow(4)
        branch = []
        for _ in range(6):
            block = mine_next(side, keys[2])
            side.import_block(block, now_ms=now)
            branch.append(block)
        old_head = ref.head_header.height
        depths = []
        for block in branch:
            result = ref.import_block(block, now_ms=now)
            order.append(block)
            depths.append(result.reorg_depth)
        assert max(depths) == 4
        assert ref.head == branch[-1].block_hash
        assert ref.head_header.height > old_head

        grow(40, forks_every=7)
        # Reorg to a shorter, heavier branch: 3 blocks on ref against three children of the same
        # parent plus one block that references the two it does not build on (GHOST counts them).
        _sync(side, order, now)
        grow(3)
        generation = [mine_next(side, keys[k]) for k in (1, 2, 3)]
        _sync(side, generation, now)
        tip = mine_next(side, keys[0])
        assert len(tip.siblings) == 2
        old_height = ref.head_header.height
        for block in [*generation, tip]:
            add(block)
        assert ref.head == tip.block_hash
        assert ref.head_header.height == old_height - 1

        grow(50, forks_every=9)
        assert len(order) >= 140
        reference_head = ref.head
    finally:
        side.close()
        ref.close()

    # One child written before its parent: the import keeps it as an orphan until the parent comes.
    swap = next(
        i
        for i in range(len(order) - 5, 0, -1)
        if order[i + 1].header.parent_hash == order[i].block_hash
    )
    file_order = [*order[:swap], order[swap + 1], order[swap], *order[swap + 2 :]]

    # The head after each stored block, by fork choice alone (what the store must agree with).
    connect_order = [block.block_hash for block in order]
    forks = forkchoice.new_store(genesis_meta(genesis))
    heads = [forkchoice.get_head(forks)]
    for block in order:
        header = block.header
        siblings = tuple((s.block_hash, block_work(s)) for s in block.siblings)
        meta = BlockMeta(
            header.block_hash, header.parent_hash, header.height, block_work(header), siblings
        )
        forkchoice.on_block(forks, meta)
        heads.append(forkchoice.get_head(forks))
    assert heads[-1] == reference_head

    genesis_file = root / "genesis.json"
    genesis_file.write_text(json.dumps(genesis_mod.to_json(genesis)))
    blocks_file = root / "blocks.qblk"
    with blocks_file.open("wb") as handle:
        write_blocks(handle, file_order)
    yield BlockTree(
        genesis_mod.load_file(genesis_file), genesis_file, blocks_file, connect_order, heads
    )


@dataclass
class Run:
    acks: list[tuple[bytes, bytes]]
    """(block, head) of every ``ACK`` line the process wrote, in order."""
    returncode: int
    stderr: str
    """What it wrote besides the ACK lines (``imported N blocks`` when it ran to the end)."""


def _kill_plan(rng: random.Random, budget: int) -> tuple[float | None, int | None, float | None]:
    """When to SIGKILL: (seconds after start, after the n-th ACK, seconds after the first ACK)."""
    mode = rng.random()
    if mode < 0.2:
        # During interpreter start-up, store creation or opening, or the first blocks.
        return rng.uniform(0.0, 0.4), None, None
    if mode < 0.6:
        # Right after the n-th acknowledgement of this run.
        return None, rng.randint(1, max(1, min(budget, 15))), None
    # A random moment of the import (~1-3 ms a block), not aligned with any output.
    return None, None, rng.uniform(0.0, 0.03)


def _import(
    net: Network, tree: BlockTree, datadir: Path, rng: random.Random | None, budget: int
) -> Run:
    """Run ``qoin chain import``; with ``rng``, SIGKILL it at a random moment (else run to the end)."""
    child = net.spawn(
        f"import into {datadir.name}",
        ["chain", "import", str(tree.blocks_file), "--datadir", str(datadir),
         "--genesis", str(tree.genesis_file)],
    )  # fmt: skip
    started = time.monotonic()
    deadline = started + ROUND_TIMEOUT_S
    after_start, after_acks, after_first_ack = (
        (None, None, None) if rng is None else _kill_plan(rng, budget)
    )
    kill_at = deadline if after_start is None else started + after_start
    acked = index = 0
    try:
        while after_acks is None or acked < after_acks:
            remaining = kill_at - time.monotonic()
            if remaining <= 0:
                break
            found = child.poll_for(r"^ACK ", remaining, after=index)
            if found is None:
                continue
            index, acked = found[0] + 1, acked + 1
            if acked == 1 and after_first_ack is not None:
                kill_at = time.monotonic() + after_first_ack
    except ChildFailed:
        pass  # the process finished before its kill
    assert time.monotonic() < deadline, "qoin chain import took too long"
    if rng is not None:
        child.proc.kill()  # SIGKILL; nothing happens if the process already exited
    returncode = child.proc.wait(timeout=ROUND_TIMEOUT_S)
    # Lines written before the kill are acknowledgements too.
    lines = [line.text for line in read_to_end(child, ROUND_TIMEOUT_S)]
    acks = []
    for at, line in enumerate(lines):
        match = ACK_RE.match(line)
        # Only ACK lines, and the summary line of a run that reached its end.
        last = at == len(lines) - 1 and line.startswith("imported ")
        assert match or last, f"unexpected output line {line!r}:\n{''.join(lines)}"
        if match:
            acks.append((bytes.fromhex(match[1]), bytes.fromhex(match[2])))
    return Run(acks, returncode, "".join(line for line in lines if not ACK_RE.match(line)))


def _check_store(tree: BlockTree, datadir: Path, acked: list[bytes]) -> int:
    """Open the store after a crash and check it; return how many blocks it holds (genesis excluded)."""
    saved = datadir / "genesis.json"
    if saved.exists():
        assert genesis_mod.load_file(saved) == tree.genesis
    chain = Chain.open(datadir, tree.genesis)
    try:
        store = chain.store
        stored = {meta.block_hash for meta in store.metas()} - {tree.genesis.genesis_hash}
        count = len(stored)
        # Every acknowledged block survived, and the store holds a prefix of the import order.
        assert set(acked) <= stored
        assert stored == set(tree.connect_order[:count])
        for block_hash in acked:
            assert chain.has_block(block_hash)
            assert store.get_block(block_hash) is not None
        # The stored head is a stored block and the fork-choice head recomputed on open.
        head = store.head()
        assert store.has_block(head)
        assert head == chain.head
        assert head == tree.heads[count]
        # The canonical index is exactly the head's ancestry.
        header = chain.head_header
        assert store.canonical_hash(header.height + 1) is None
        while True:
            assert store.canonical_hash(header.height) == header.block_hash
            if header.height == 0:
                break
            parent = store.header(header.parent_hash)
            assert parent is not None
            header = parent
        assert header.block_hash == tree.genesis.genesis_hash
        return count
    finally:
        chain.close()


@pytest.mark.slow
def test_import_survives_kill_9(tree: BlockTree, net: Network) -> None:
    seed = test_seed("QOIN_CRASH_SEED")
    rng = random.Random(seed)
    total = len(tree.connect_order)
    kills = inside_import = 0
    life = 0
    # Each "life" is one datadir: killed and restarted until every block is stored, then one run to
    # the end. A new life starts (from an empty datadir) until there were KILLS kills.
    while kills < KILLS:
        datadir = net.workdir / f"node{life}"
        life += 1
        acked: list[bytes] = []
        stored = 0
        while True:
            final = stored == total or kills >= KILLS
            run = _import(net, tree, datadir, None if final else rng, total - stored)
            where = f"seed {seed}, life {life}, kill {kills}"
            # This run acknowledged the next blocks of the import order, each once, in order.
            hashes = [block_hash for block_hash, _ in run.acks]
            assert hashes == tree.connect_order[stored : stored + len(hashes)], where
            assert all(head in tree.connect_order for _, head in run.acks), where
            acked += hashes
            before = stored
            stored = _check_store(tree, datadir, acked)
            assert stored >= before + len(hashes), where
            if final:
                assert run.returncode == 0, run.stderr
                assert f"imported {len(hashes)} blocks" in run.stderr, where
                break
            assert run.returncode in (-signal.SIGKILL, 0), f"{where}: {run.stderr}"
            if run.returncode == -signal.SIGKILL:
                kills += 1
                inside_import += 0 < stored - before < total - before
        assert stored == total
        chain = Chain.open(datadir, tree.genesis)
        try:
            assert chain.head == chain.store.head() == tree.heads[-1]
        finally:
            chain.close()
    log.warning(
        "crash test: %d kills (%d inside the import) over %d lives", kills, inside_import, life
    )
    assert inside_import >= KILLS // 4, f"seed {seed}: too few kills landed inside the import"
