"""Difficulty adjustment (ASERT) and timestamp rules.

**ASERT** (absolutely scheduled exponentially rising targets, as Bitcoin Cash's aserti3-2d): the
target of a block depends only on its parent's height and timestamp relative to a fixed *anchor*
(Qoin uses the genesis block)::

    exponent = floor(((t_parent - t_anchor) - T * (h_parent - h_anchor)) * 2^16 / tau)
    target   = anchor_target * 2^(exponent / 2^16)

where ``T`` is the target block time and ``tau`` the half-life: each ``tau`` the chain runs behind (or
ahead of) schedule doubles (or halves) the target. ``2^(f / 2^16)`` for the fractional part ``f`` is
the same integer cubic approximation as aserti3-2d, so the rule is exact integer arithmetic; the result
is clamped to ``[1, max_target]``. All timestamps are in milliseconds; divisions are floor divisions.

**Timestamps**: a block's timestamp must be strictly greater than the median of its last
``MEDIAN_TIME_SPAN`` ancestors' timestamps (so it cannot be pushed back to lower the difficulty), and at
most ``max_future_drift_ms`` ahead of the validating node's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qoin.errors import QoinError

RADIX_BITS = 16
RADIX = 1 << RADIX_BITS
MEDIAN_TIME_SPAN = 11
"""Number of ancestors whose median timestamp a new block must exceed."""


class TimestampError(QoinError):
    """A block timestamp breaks the median-time-past or future-drift rule."""


class TimestampTooOld(TimestampError):
    """The timestamp is not after the median of the recent ancestors."""


class TimestampTooFarInFuture(TimestampError):
    """The timestamp is further ahead of the local clock than the network allows."""


@dataclass(frozen=True)
class DifficultyParams:
    """A network's difficulty and timestamp parameters."""

    block_time_ms: int
    """Target spacing between blocks."""
    halflife_ms: int
    """ASERT half-life ``tau``: how fast the target responds to being off schedule."""
    max_target: int
    """Easiest allowed target (``2^m - 1`` lets every attempt win)."""
    max_future_drift_ms: int
    """How far ahead of a node's clock a block timestamp may be."""


@dataclass(frozen=True)
class Anchor:
    """The block ASERT measures the schedule from (the genesis block)."""

    height: int
    """Anchor height."""
    timestamp_ms: int
    """Anchor timestamp."""
    target: int
    """Anchor target: the target of the anchor's children when exactly on schedule."""


def pow2_fixed(exponent: int) -> tuple[int, int]:
    """``2^(exponent / 2^16)`` as ``(shifts, factor)`` with ``factor / 2^16`` in ``[1, 2)``.

    The fractional power uses aserti3-2d's cubic approximation, exact in integers.
    """
    shifts = exponent >> RADIX_BITS
    frac = exponent & (RADIX - 1)
    factor = RADIX + (
        (195_766_423_245_049 * frac + 971_821_376 * frac**2 + 5_127 * frac**3 + (1 << 47)) >> 48
    )
    return shifts, factor


def asert_target(
    params: DifficultyParams, anchor: Anchor, parent_height: int, parent_timestamp_ms: int
) -> int:
    """The target a child of the given parent must carry."""
    time_delta = parent_timestamp_ms - anchor.timestamp_ms
    height_delta = parent_height - anchor.height
    exponent = ((time_delta - params.block_time_ms * height_delta) * RADIX) // params.halflife_ms
    shifts, factor = pow2_fixed(exponent)
    # Far off schedule the result is a clamp bound anyway; decide before shifting huge numbers.
    if shifts > params.max_target.bit_length():
        return params.max_target
    if -shifts >= anchor.target.bit_length() + RADIX_BITS + 1:
        return 1
    target = anchor.target * factor
    target = target << shifts if shifts >= 0 else target >> -shifts
    target >>= RADIX_BITS
    return max(1, min(target, params.max_target))


def median_time_past(ancestor_timestamps_ms: Sequence[int]) -> int:
    """Median of the last :data:`MEDIAN_TIME_SPAN` timestamps (newest last); lower middle if even."""
    window = sorted(ancestor_timestamps_ms[-MEDIAN_TIME_SPAN:])
    if not window:
        raise TimestampError("no ancestors to take a median of")
    return window[(len(window) - 1) // 2]


def check_timestamp(
    params: DifficultyParams,
    timestamp_ms: int,
    ancestor_timestamps_ms: Sequence[int],
    now_ms: int,
) -> None:
    """Raise a :class:`TimestampError` unless the timestamp is after the median time past of its
    ancestors (newest last) and no more than the allowed drift ahead of ``now_ms``."""
    median = median_time_past(ancestor_timestamps_ms)
    if timestamp_ms <= median:
        raise TimestampTooOld(
            f"timestamp {timestamp_ms} is not after the median {median} of the last "
            f"{min(len(ancestor_timestamps_ms), MEDIAN_TIME_SPAN)} ancestors"
        )
    if timestamp_ms > now_ms + params.max_future_drift_ms:
        raise TimestampTooFarInFuture(
            f"timestamp {timestamp_ms} is {timestamp_ms - now_ms} ms ahead of this node's clock "
            f"(at most {params.max_future_drift_ms} ms allowed); check the system clock"
        )


def expected_attempts(target: int, output_bits: int) -> float:
    """Mean number of attempts to find an output ``<= target`` among ``2^output_bits`` values."""
    return (1 << output_bits) / (target + 1)
