"""The mining loop of a node: keep the miner on a template of the current head, import what it finds.

Every time the head changes the loop builds a new template and hands it to the multi-process miner,
which drops the old one before its next attempt. Solutions are sealed, validated and imported like any
block from the network. A solution for an older template whose parent is still stored (two workers
winning at once, or a win just after a head change) is imported too: it is a valid block of the same
generation and may be referenced as a sibling by the next block.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from qoin.chain.block import Block
from qoin.chain.chain import Chain, ExecutionUndecided, ImportResult, clock_ms
from qoin.chain.producer import build_template, seal_block
from qoin.chain.validation import InvalidBlock
from qoin.crypto.hybrid import HybridKeyPair, HybridSignature
from qoin.errors import QoinError
from qoin.pow.miner import Miner, Solution, Template

KEPT_TEMPLATES = 8
POLL_S = 0.25


@dataclass(frozen=True)
class MinedBlock:
    """A block this node mined and imported."""

    block: Block
    """The sealed block."""
    result: ImportResult
    """What importing it did."""
    attempts_per_second: float
    """The miner's rate since the previous report."""


class ExecutionLink(Protocol):
    """What the mining loop needs from an execution client."""

    def build(self, template: Block) -> Block:
        """Fill a template with transactions and the post-state roots."""

    def imported(self, chain: Chain, result: ImportResult) -> None:
        """Tell the execution client about newly stored blocks and the new head."""


class MiningLoop:
    """Mines on ``chain``'s head with ``keypair`` until :meth:`stop` (or ``max_blocks``)."""

    def __init__(
        self,
        chain: Chain,
        keypair: HybridKeyPair,
        workers: int | None = None,
        execution: ExecutionLink | None = None,
        lock: threading.RLock | None = None,
        block_interval_ms: int = 0,
    ) -> None:
        self.chain = chain
        self.block_interval_ms = block_interval_ms
        """Pause this long after each mined block (0: none): paces a development or test network
        whose target is so easy that blocks would come as fast as one signature."""
        self.lock = lock or threading.RLock()
        """Held while the loop reads or changes the chain (shared with other writers)."""
        self.execution = execution
        self.keypair = keypair
        self.miner = Miner(keypair, workers)
        self._stop = threading.Event()
        self._templates: OrderedDict[int, Block] = OrderedDict()
        self._next_id = 0
        self._template_head: bytes | None = None

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def _refresh_template(self) -> None:
        if self._template_head == self.chain.head:
            return
        self._next_id += 1
        template = build_template(self.chain, self.keypair.public, clock_ms())
        if self.execution is not None:
            template = self.execution.build(template)
        self._templates[self._next_id] = template
        while len(self._templates) > KEPT_TEMPLATES:
            self._templates.popitem(last=False)
        self._template_head = self.chain.head
        header = template.header
        self.miner.set_template(
            Template(self._next_id, header.pow_prefix, header.nbits, header.target)
        )

    def _seal(self, solution: Solution) -> Block | None:
        template = self._templates.get(solution.template_id)
        if template is None:
            return None
        return seal_block(
            template, solution.r, solution.nonce, HybridSignature.decode(solution.proof)
        )

    def run(
        self,
        on_block: Callable[[MinedBlock], None],
        on_reject: Callable[[str], None],
        max_blocks: int = 0,
    ) -> int:
        """Mine until stopped or ``max_blocks`` blocks (0: no limit); return the blocks mined."""
        mined = 0
        with self.miner:
            while not self._stop.is_set() and (max_blocks == 0 or mined < max_blocks):
                try:
                    with self.lock:
                        self._refresh_template()
                except QoinError as exc:  # e.g. no execution client can build a payload now
                    on_reject(f"no template: {type(exc).__name__}: {exc}")
                    self._stop.wait(POLL_S)
                    continue
                solution = self.miner.next_solution(timeout=POLL_S)
                if solution is None:
                    continue
                block = self._seal(solution)
                if block is None:
                    continue
                try:
                    with self.lock:
                        result = self.chain.import_block(block)
                        if self.execution is not None:
                            self.execution.imported(self.chain, result)
                except (InvalidBlock, ExecutionUndecided) as exc:
                    # e.g. the clock moved back past the drift bound, or the execution clients
                    # could not judge the block (or found it invalid: a lying payload builder)
                    on_reject(f"mined block rejected: {type(exc).__name__}: {exc}")
                    self._template_head = None  # build a fresh template (new timestamp)
                    continue
                mined += 1
                on_block(MinedBlock(block, result, self.miner.attempts_per_second()))
                if self.block_interval_ms:
                    # The worker that solved the template idles until the next one is set.
                    self._stop.wait(self.block_interval_ms / 1000)
        return mined


class MiningOff(QoinError):
    """Mining cannot be started (no key to mine with)."""


class MiningControl:
    """Runs a :class:`MiningLoop` on a thread of its own, started and stopped at will (``qoin
    consensus --mine``, SIGUSR1, the ``consensus_setMining`` RPC), and counts what it mined.

    ``make_loop`` builds a fresh loop for each start (None: this node cannot mine, and
    :meth:`start` raises :class:`MiningOff` with ``why``). :attr:`ended` is set when a loop
    ends on its own: ``max_blocks`` mined, or an error (kept in :attr:`error`)."""

    def __init__(
        self,
        make_loop: Callable[[], MiningLoop] | None,
        on_block: Callable[[MinedBlock], None],
        on_reject: Callable[[str], None],
        why: str = "this node has no key to mine with",
    ) -> None:
        self._make_loop = make_loop
        self._on_block = on_block
        self._on_reject = on_reject
        self._why = why
        self._lock = threading.Lock()
        self._loop: MiningLoop | None = None
        self._thread: threading.Thread | None = None
        self._rate = 0.0
        self._mark: tuple[float, int] | None = None
        self.blocks_mined = 0
        """Blocks mined (and imported) since the node started."""
        self.side_blocks = 0
        """Of those, the ones that did not become the head (siblings)."""
        self.ended = threading.Event()
        self.error: QoinError | None = None
        self._limit = 0
        """Stop once :attr:`blocks_mined` reaches this (0: no limit), across restarts."""
        self._closed = False

    @property
    def active(self) -> bool:
        """Whether a loop is mining now."""
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self, max_blocks: int | None = None) -> bool:
        """Start mining (``max_blocks``: stop after that many more, 0: no limit, None: as the
        first start said, counting what was mined since); False if it already runs.
        :class:`MiningOff` if this node cannot mine, is stopping, or a stopped loop has not
        finished its block yet."""
        with self._lock:
            if self._closed:
                raise MiningOff("the node is stopping")
            if self._thread is not None and self._thread.is_alive():
                if self._loop is not None and self._loop.stopped:
                    raise MiningOff("the miner is still stopping: try again in a moment")
                return False
            if self._make_loop is None:
                raise MiningOff(self._why)
            if max_blocks is not None:
                self._limit = self.blocks_mined + max_blocks if max_blocks else 0
            remaining = self._limit - self.blocks_mined if self._limit else 0
            if self._limit and remaining <= 0:
                self.ended.set()
                return False
            loop = self._make_loop()
            self._loop, self._mark = loop, None
            self._thread = threading.Thread(
                target=self._run, args=(loop, remaining), name="mining", daemon=True
            )
            self._thread.start()
            return True

    def _run(self, loop: MiningLoop, max_blocks: int) -> None:
        def mined(block: MinedBlock) -> None:
            self.blocks_mined += 1
            self.side_blocks += 0 if block.result.head_changed else 1
            self._rate = block.attempts_per_second
            self._on_block(block)

        try:
            loop.run(mined, self._on_reject, max_blocks)
        except QoinError as exc:  # e.g. a miner process died
            self.error = exc
            self.ended.set()
            return
        if not loop.stopped:
            self.ended.set()  # max_blocks reached

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop mining and wait (up to ``timeout`` s) for the loop to finish its block; False if
        it was not mining. The thread stays known until it ends: :meth:`start` never runs a
        second loop next to one still finishing."""
        with self._lock:
            loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive() or loop.stopped:
            if thread is not None and thread.is_alive():
                thread.join(timeout)
            return False
        loop.stop()
        thread.join(timeout)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop mining for good (the node is stopping): :meth:`start` refuses from now on, so
        that no ``consensus_setMining`` call still in flight leaves a miner running."""
        with self._lock:
            self._closed = True
        self.stop(timeout)

    def status(self) -> dict[str, object]:
        """What ``consensus_status`` shows under ``mining``."""
        loop = self._loop
        active = self.active
        if active and loop is not None:
            now, attempts = time.monotonic(), loop.miner.attempts
            if self._mark is None:
                self._mark = (now, attempts)
            elif now - self._mark[0] >= 1.0:
                self._rate = (attempts - self._mark[1]) / (now - self._mark[0])
                self._mark = (now, attempts)
        return {
            "active": active,
            "available": self._make_loop is not None,
            "attemptsPerSecond": self._rate if active else 0.0,
            "blocksMined": self.blocks_mined,
            "sideBlocks": self.side_blocks,
            "workers": loop.miner.workers if loop is not None else None,
        }
