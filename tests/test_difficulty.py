"""ASERT difficulty and timestamp rules, including a hashrate-shock simulation."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoin.pow.difficulty import (
    Anchor,
    DifficultyParams,
    TimestampTooFarInFuture,
    TimestampTooOld,
    asert_target,
    check_timestamp,
    expected_attempts,
    median_time_past,
)

LOG = logging.getLogger(__name__)
OUTPUT_BITS = 64
BLOCK_TIME_MS = 10_000
PARAMS = DifficultyParams(
    block_time_ms=BLOCK_TIME_MS,
    halflife_ms=120 * BLOCK_TIME_MS,
    max_target=(1 << OUTPUT_BITS) - 1,
    max_future_drift_ms=15_000,
)
ANCHOR = Anchor(height=0, timestamp_ms=1_700_000_000_000, target=(1 << OUTPUT_BITS) // 1000)


def test_on_schedule_keeps_anchor_target() -> None:
    for height in (0, 1, 100, 10_000):
        ts = ANCHOR.timestamp_ms + height * BLOCK_TIME_MS
        assert asert_target(PARAMS, ANCHOR, height, ts) == ANCHOR.target


def test_one_halflife_behind_doubles_target() -> None:
    ts = ANCHOR.timestamp_ms + 100 * BLOCK_TIME_MS + PARAMS.halflife_ms
    assert asert_target(PARAMS, ANCHOR, 100, ts) == 2 * ANCHOR.target
    ts = ANCHOR.timestamp_ms + 100 * BLOCK_TIME_MS - PARAMS.halflife_ms
    assert asert_target(PARAMS, ANCHOR, 100, ts) == ANCHOR.target // 2


@given(
    st.integers(min_value=0, max_value=10**7),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.integers(min_value=0, max_value=10**6),
)
def test_target_is_monotonic_and_clamped(height: int, drift_ms: int, extra_ms: int) -> None:
    ts = ANCHOR.timestamp_ms + height * BLOCK_TIME_MS + drift_ms
    earlier = asert_target(PARAMS, ANCHOR, height, ts)
    later = asert_target(PARAMS, ANCHOR, height, ts + extra_ms)
    assert 1 <= earlier <= later <= PARAMS.max_target


def simulate(
    rng: random.Random, hashrates: list[tuple[int, float]]
) -> list[tuple[float, list[int]]]:
    """Mine phases of (blocks, attempts/s); return each phase's hashrate and block intervals."""
    height, timestamp = ANCHOR.height, ANCHOR.timestamp_ms
    phases = []
    for blocks, rate in hashrates:
        intervals = []
        for _ in range(blocks):
            target = asert_target(PARAMS, ANCHOR, height, timestamp)
            mean_s = expected_attempts(target, OUTPUT_BITS) / rate
            interval = max(1, round(rng.expovariate(1.0 / mean_s) * 1000))
            timestamp += interval
            height += 1
            intervals.append(interval)
        phases.append((rate, intervals))
    return phases


def test_block_time_returns_to_target_after_hashrate_shocks() -> None:
    seed = random.randrange(2**32)
    LOG.warning("difficulty simulation seed: %d", seed)
    rng = random.Random(seed)
    # The anchor target is tuned for 100 attempts/s; then the hashrate jumps x10 and drops /10.
    phases = simulate(rng, [(1500, 100.0), (1500, 1000.0), (1500, 100.0)])
    for rate, intervals in phases:
        # ASERT converges within a few half-lives (120 blocks each); judge the settled tail.
        tail = intervals[-400:]
        mean = sum(tail) / len(tail)
        assert 0.8 * BLOCK_TIME_MS <= mean <= 1.25 * BLOCK_TIME_MS, (seed, rate, mean)
    # Right after the jump blocks are much faster than target, proving the shock was real.
    fast_start = phases[1][1][:50]
    assert sum(fast_start) / len(fast_start) < 0.5 * BLOCK_TIME_MS, seed


def test_median_time_past() -> None:
    assert median_time_past([5]) == 5
    assert median_time_past([1, 2, 3, 100]) == 2
    assert median_time_past(list(range(100))) == 94  # last 11: 89..99


def test_timestamp_rules() -> None:
    ancestors = [1_000 + 10 * i for i in range(20)]
    median = median_time_past(ancestors)
    now = 2_000
    check_timestamp(PARAMS, median + 1, ancestors, now)
    check_timestamp(PARAMS, now + PARAMS.max_future_drift_ms, ancestors, now)
    with pytest.raises(TimestampTooOld):
        check_timestamp(PARAMS, median, ancestors, now)
    with pytest.raises(TimestampTooFarInFuture, match="system clock"):
        check_timestamp(PARAMS, now + PARAMS.max_future_drift_ms + 1, ancestors, now)


def test_far_off_schedule_clamps_without_huge_numbers() -> None:
    tiny = DifficultyParams(
        block_time_ms=1, halflife_ms=1, max_target=PARAMS.max_target, max_future_drift_ms=0
    )
    assert asert_target(tiny, ANCHOR, 0, ANCHOR.timestamp_ms + 10**15) == PARAMS.max_target
    assert asert_target(tiny, ANCHOR, 10**15, ANCHOR.timestamp_ms) == 1
