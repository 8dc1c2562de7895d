"""The token bucket (qoin.ratelimit): burst, refill rate, no tokens above the burst, waits in
turn when reserved in advance."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qoin.ratelimit import TokenBucket


def test_a_burst_then_one_per_period() -> None:
    bucket = TokenBucket.full(3, 2.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)  # 0.8 of a token earned
    assert bucket.take(100.5)
    assert bucket.refill(1000.0) == 3  # never above the burst


def test_reserved_tokens_make_callers_wait_in_turn() -> None:
    bucket = TokenBucket.full(1, 10.0, now=0.0)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 0.1
    assert round(bucket.reserve(0.0), 9) == 0.2
    assert bucket.reserve(1.0) == 0.0  # enough earned since


@given(
    burst=st.integers(1, 100),
    per_s=st.floats(0.01, 1000.0),
    steps=st.lists(st.floats(0.0, 10.0), max_size=50),
)
def test_never_more_than_burst_plus_what_was_earned(
    burst: int, per_s: float, steps: list[float]
) -> None:
    bucket = TokenBucket.full(burst, per_s, now=0.0)
    now = 0.0
    taken = 0
    for step in steps:
        now += step
        taken += bucket.take(now)
        taken += bucket.take(now)
    assert taken <= burst + now * per_s + 1e-6
