"""The mining loop of a node: keep the miner on a template of the current head, import what it finds.

Every time the head changes the loop builds a new template and hands it to the multi-process miner,
which drops the old one before its next attempt. Solutions are sealed, validated and imported like any
block from the network. A solution for an older template whose parent is still stored (two workers
winning at once, or a win just after a head change) is imported too: it is a valid block of the same
generation and may be referenced as a sibling by the next block.
"""

from __future__ import annotations

import threading
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
