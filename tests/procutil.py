"""Blocks for process tests: :class:`Producer` builds them on its own chain and execution state.
The processes themselves are started, called, waited for and stopped by :mod:`tests.framework`.
"""

from __future__ import annotations

from pathlib import Path

from qoin.chain.block import Block
from qoin.chain.builder import next_on_head
from qoin.chain.chain import Chain
from qoin.chain.transaction import AnyTransaction
from qoin.execution.state import ExecutionState, PayloadStatus
from tests.framework import MINER, genesis


class Producer:
    """Builds valid (or deliberately invalid) sealed blocks on its own copy of the chain."""

    def __init__(self, workdir: Path) -> None:
        self.chain = Chain.open(workdir / "producer-chain", genesis())
        self.state = ExecutionState.open(workdir / "producer-execution", genesis())

    def block(self, txs: tuple[AnyTransaction, ...] = (), honest_roots: bool = True) -> Block:
        """The next block with ``txs``; with ``honest_roots=False`` its state and receipts roots
        are zero (for a block whose execution fails)."""
        execution = self.state if honest_roots else None
        return next_on_head(self.chain, MINER, txs, execution=execution)

    def accept(self, block: Block) -> None:
        """Make ``block`` the producer's head too."""
        self.chain.import_block(block)
        assert self.state.new_payload(block).status is PayloadStatus.VALID
        self.state.forkchoice_updated(block.block_hash)

    def close(self) -> None:
        self.state.close()
        self.chain.close()
