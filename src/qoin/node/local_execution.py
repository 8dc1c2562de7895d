"""An execution client in the node's own process (``qoin node --dev``), behind the same calls the
engine API makes: payload building, new payloads, head changes.

The chain store and the execution database are separate files; after a crash one may be ahead of the
other, so :func:`catch_up` replays the canonical chain into the execution client at start-up.
"""

from __future__ import annotations

from qoin.chain.block import Block
from qoin.chain.chain import Chain, ImportResult
from qoin.errors import QoinError
from qoin.execution.client import ExecutionClient


class ExecutionLinkError(QoinError):
    """The execution client refused a block the consensus rules accepted."""


class LocalExecution:
    """Adapter from the mining loop to an in-process :class:`ExecutionClient`."""

    def __init__(self, client: ExecutionClient) -> None:
        self.client = client

    def build(self, template: Block) -> Block:
        """Transactions from the mempool, the fee payout and the post-state roots."""
        with self.client.lock:
            return self.client.build_payload(template)

    def imported(self, chain: Chain, result: ImportResult) -> None:
        """Execute the newly stored blocks, then follow the chain's head."""
        for block_hash in result.connected:
            block = chain.store.get_block(block_hash)
            if block is None:
                continue
            verdict = self.client.new_payload(block)
            if verdict["status"] == "INVALID":
                raise ExecutionLinkError(
                    f"execution rejected block {block_hash.hex()}: {verdict['validationError']}"
                )
        if result.head_changed:
            answer = self.client.forkchoice_updated(result.head)
            if answer["payloadStatus"]["status"] != "VALID":
                raise ExecutionLinkError(f"execution could not follow the head: {answer}")


def catch_up(chain: Chain, client: ExecutionClient) -> int:
    """Replay canonical blocks the execution client lacks; return how many were replayed."""
    replayed = 0
    head = chain.head_header.height
    for height in range(1, head + 1):
        block_hash = chain.store.canonical_hash(height)
        block = None if block_hash is None else chain.store.get_block(block_hash)
        if block is None or client.state.block_info(block.block_hash) is not None:
            continue
        verdict = client.new_payload(block)
        if verdict["status"] not in ("VALID", "ACCEPTED"):  # ACCEPTED: executed by the head move
            raise ExecutionLinkError(f"replaying height {height}: {verdict}")
        replayed += 1
    answer = client.forkchoice_updated(chain.head)
    if answer["payloadStatus"]["status"] != "VALID":
        raise ExecutionLinkError(f"execution could not follow the chain's head: {answer}")
    return replayed
