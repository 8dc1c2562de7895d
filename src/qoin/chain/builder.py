"""Building blocks outside a node, for tests and benchmarks (Qoin's ``blocktools``).

:func:`next_block` is the one way to make the child of a parent there: the exact coinbase (the parent
height's reward split with the referenced siblings, this block's fees to the miner), the difficulty
rule's target, a timestamp on schedule, optionally the state and receipts roots its execution gives,
and a proof-of-work sealed with the miner's key. :func:`next_on_head` does it on a chain's head,
referencing the siblings a node's producer would. On a network whose initial target is the maximum
(the test and benchmark genesis files), ASERT keeps the target there for blocks stamped on schedule,
so one attempt wins and sealing costs one hybrid signature.

Nodes build their templates with :func:`qoin.chain.producer.build_template` and seal them with the
miner; both paths assemble the block with :func:`qoin.chain.producer.assemble_block`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from qoin.chain.block import Block, Header
from qoin.chain.chain import Chain
from qoin.chain.genesis import Genesis
from qoin.chain.producer import assemble_block, next_timestamp, sibling_candidates
from qoin.chain.transaction import AnyTransaction
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.pow.proof import mine_in_process

SEAL_ATTEMPTS = 10
"""Attempts to seal a block before giving up (one wins at the maximum target)."""


class SealFailed(QoinError):
    """No attempt sealed the block: its target is not the maximum (stamp it on schedule, or use a
    genesis whose initial target is the maximum)."""


class RootsSource(Protocol):
    """An execution state that has executed the parent: it fills in a block's roots
    (:meth:`qoin.execution.state.ExecutionState.fill_roots`)."""

    def fill_roots(self, template: Block) -> Block:
        """``template`` with the state and receipts roots its execution gives."""


def on_schedule(genesis: Genesis, height: int) -> int:
    """The timestamp that keeps ASERT at the anchor target for a block at ``height``."""
    return genesis.timestamp_ms + height * genesis.block_time_ms


def seal(block: Block, miner: HybridKeyPair, attempts: int = SEAL_ATTEMPTS) -> Block:
    """``block`` with a winning proof-of-work by ``miner``; :class:`SealFailed` if none of
    ``attempts`` wins."""
    header = mine_in_process(miner, block.header, attempts)
    if header is None:
        raise SealFailed(
            f"no attempt of {attempts} sealed block {block.header.height} "
            f"at target {block.header.target:#x}"
        )
    return replace(block, header=header)


def next_block(
    genesis: Genesis,
    parent: Header,
    miner: HybridKeyPair,
    transactions: Sequence[AnyTransaction] = (),
    *,
    siblings: Sequence[Header] = (),
    timestamp_ms: int | None = None,
    execution: RootsSource | None = None,
    changes: Mapping[str, Any] | None = None,
    sealed: bool = True,
) -> Block:
    """The child of ``parent`` carrying ``transactions`` and referencing ``siblings``, mined by
    ``miner``, stamped ``timestamp_ms`` (default: on schedule).

    With ``execution``, the state and receipts roots are the ones its execution gives (otherwise
    zero). ``changes`` replaces header fields before sealing (for deliberately invalid blocks).
    With ``sealed=False`` the proof-of-work fields stay placeholders (for an execution client
    alone, which does not check them).
    """
    height = parent.height + 1
    stamp = on_schedule(genesis, height) if timestamp_ms is None else timestamp_ms
    block = assemble_block(genesis, parent, miner.public, stamp, siblings, transactions)
    if execution is not None:
        block = execution.fill_roots(block)
    if changes:
        block = replace(block, header=replace(block.header, **changes))
    return seal(block, miner) if sealed else block


def next_on_head(
    chain: Chain,
    miner: HybridKeyPair,
    transactions: Sequence[AnyTransaction] = (),
    *,
    execution: RootsSource | None = None,
    changes: Mapping[str, Any] | None = None,
    sealed: bool = True,
) -> Block:
    """:func:`next_block` on ``chain``'s head (not imported), referencing the stored members of
    the parent's generation as a node's producer does, stamped on schedule (after the median of
    recent ancestors)."""
    parent = chain.head_header
    stamp = next_timestamp(chain, parent, on_schedule(chain.genesis, parent.height + 1))
    return next_block(
        chain.genesis,
        parent,
        miner,
        transactions,
        siblings=sibling_candidates(chain, parent),
        timestamp_ms=stamp,
        execution=execution,
        changes=changes,
        sealed=sealed,
    )
