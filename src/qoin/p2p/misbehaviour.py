"""What a peer can do wrong, and what each misbehaviour costs it (``docs/spec/p2p.md`` §11)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Misbehaviour(StrEnum):
    """What a peer did wrong; :attr:`penalty` is what it costs (see :data:`PENALTIES`)."""

    INVALID_BLOCK = "invalid-block"
    """A block that fails validation (body, transactions, state root, …)."""
    INVALID_HEADER = "invalid-header"
    """A header with bad proof of work or breaking a header rule."""
    MALFORMED_MESSAGE = "malformed-message"
    """A message that does not decode."""
    PROTOCOL_VIOLATION = "protocol-violation"
    """A well-formed message the protocol forbids (wrong order, over a declared limit)."""
    UNSOLICITED = "unsolicited"
    """Data we did not ask for (a response to no request, a block never announced)."""
    TIMEOUT = "timeout"
    """A request not answered in time."""
    INVALID_TRANSACTION = "invalid-transaction"
    """A relayed transaction that can never be valid (an *intrinsic* refusal: bad signature, wrong
    chain id, keys that do not match the sender, oversize); never a stateful refusal."""
    EXECUTION_LIE = "execution-lie"
    """A node serving execution signed an answer that is provably false (its own statement, or a
    fraud report other nodes verified, shows it)."""

    @property
    def penalty(self) -> int:
        """Score points this misbehaviour costs."""
        return PENALTIES[self]


PENALTIES: Final[Mapping[Misbehaviour, int]] = MappingProxyType(
    {
        # An honest node validates a block fully before relaying it, and its proof of work is
        # checked before anything else: an invalid one is an attack or a consensus split, and
        # either way the connection is useless. One strike.
        Misbehaviour.INVALID_BLOCK: 100,
        # Proof of work costs microseconds to check and a header with bad proof of work costs
        # the sender nothing to make; honest nodes never relay one. One strike.
        Misbehaviour.INVALID_HEADER: 100,
        # Frames are authenticated, so garbage comes from the peer's own software: a bug or an
        # attack. Two strikes.
        Misbehaviour.MALFORMED_MESSAGE: 50,
        # Ordering and limit rules can be broken by a racing or buggy but honest implementation.
        Misbehaviour.PROTOCOL_VIOLATION: 20,
        # A response that arrives after we gave up on the request is unsolicited too: races
        # happen, so ten are tolerated.
        Misbehaviour.UNSOLICITED: 10,
        # Slow is not malicious (congested links, a node busy validating), but a peer that never
        # answers wastes a slot: twenty unanswered requests with nothing useful in between.
        Misbehaviour.TIMEOUT: 5,
        # A transaction that can never be valid anywhere (bad signature, wrong chain id, keys that
        # do not match its sender, oversize): an honest node checks all that before relaying, and
        # checking costs us a signature verification per transaction. Three strikes. Stateful
        # refusals (a nonce used meanwhile, a full pool, a fee below ours) cost nothing: they
        # happen to honest relays.
        Misbehaviour.INVALID_TRANSACTION: 40,
        # A signed engine answer that replaying the evidence shows to be false: no honest execution
        # client signs one, whatever its load or version, and a lie about a block is as harmful
        # as relaying an invalid block (it could make us accept one). One strike, like
        # INVALID_BLOCK.
        Misbehaviour.EXECUTION_LIE: 100,
    }
)
"""Penalty per :class:`Misbehaviour`, for the default threshold of 100 (one invalid block or
header bans; three messages relaying transactions that can never be valid ban; slowness takes
many repetitions)."""
