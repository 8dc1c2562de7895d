"""Parallel verification helpers: verdict order, work sharing with the caller, errors."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from qoin.crypto.batch import BATCH_SIZE, start_verifying, verify_many
from qoin.crypto.hybrid import sign
from tests.keys import keypair_for


def every_third(chunk: Sequence[int]) -> list[bool]:
    return [item % 3 == 0 for item in chunk]


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("count", [0, 1, BATCH_SIZE, 1_001])
def test_verdicts_come_back_in_order(workers: int, count: int) -> None:
    with ThreadPoolExecutor(4) as pool:
        wait = start_verifying(every_third, list(range(count)), pool, workers)
        assert wait() == [item % 3 == 0 for item in range(count)]


def test_the_waiting_caller_takes_batches_too() -> None:
    by_caller: list[int] = []
    release = threading.Event()

    def check(chunk: Sequence[int]) -> list[bool]:
        if threading.current_thread() is threading.main_thread():
            by_caller.extend(chunk)
        else:
            release.wait(5)  # the pool thread stalls on its first batch
        return [True] * len(chunk)

    items = list(range(20 * BATCH_SIZE))
    with ThreadPoolExecutor(1) as pool:
        wait = start_verifying(check, items, pool, workers=2)
        timer = threading.Timer(1.0, release.set)
        timer.start()
        try:
            assert wait() == [True] * len(items)
        finally:
            timer.cancel()
            release.set()
    assert len(by_caller) >= 19 * BATCH_SIZE  # all but the stalled thread's batch


def test_an_error_in_a_batch_reaches_the_caller() -> None:
    def check(chunk: Sequence[int]) -> list[bool]:
        if 500 in chunk:
            raise ValueError("batch with 500")
        return [True] * len(chunk)

    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="batch with 500"):
        start_verifying(check, list(range(1_000)), pool, workers=3)()


def test_real_signatures_with_one_forgery() -> None:
    keypair = keypair_for(index=1)
    messages = [bytes([i]) * 32 for i in range(24)]
    items = [(keypair.public, m, sign(keypair, m)) for m in messages]
    items[17] = (keypair.public, b"another message".ljust(32, b"."), items[17][2])
    expected = [index != 17 for index in range(len(items))]
    assert verify_many(items, workers=2) == expected
    with ThreadPoolExecutor(2) as pool:
        assert verify_many(items, executor=pool) == expected
        assert (
            start_verifying(lambda chunk: verify_many(chunk, workers=1), items, pool, workers=2)()
            == expected
        )
