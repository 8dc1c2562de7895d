"""Verifying many hybrid signatures at once on all cores.

The signature libraries release the GIL, so plain threads scale. Work is handed out in a few large
chunks (one per worker) rather than one future per signature: per-item scheduling overhead is a
sizeable fraction of a 100 µs verify and would cap the speed-up well below the core count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from qoin.crypto.hybrid import HybridPublicKey, HybridSignature, is_valid

VerifyItem = tuple[HybridPublicKey, bytes, HybridSignature]
"""(public key, message, signature)."""
T = TypeVar("T")


def default_workers() -> int:
    """Number of threads to verify with: the cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _verify_chunk(items: Sequence[VerifyItem]) -> list[bool]:
    return [is_valid(public, message, signature) for public, message, signature in items]


def verify_many(
    items: Sequence[VerifyItem],
    workers: int | None = None,
    executor: ThreadPoolExecutor | None = None,
) -> list[bool]:
    """Verify every item; return one verdict per item, in order.

    ``executor`` lets a caller keep one pool alive across blocks; otherwise a pool is made for the
    call. With one worker, or few items, everything runs on the calling thread.
    """
    count = workers or default_workers()
    if count <= 1 or len(items) < 2:
        return _verify_chunk(items)
    size = -(-len(items) // count)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    if executor is not None:
        results = list(executor.map(_verify_chunk, chunks))
    else:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="verify") as pool:
            results = list(pool.map(_verify_chunk, chunks))
    return [verdict for chunk in results for verdict in chunk]


CHUNKS_PER_WORKER = 4
"""Chunks queued per worker by :func:`start_in_chunks`: small enough that no worker is left with a
long tail while the others idle, large enough that scheduling stays cheap."""


def start_in_chunks(
    check: Callable[[Sequence[T]], list[bool]],
    items: Sequence[T],
    executor: ThreadPoolExecutor,
    workers: int | None = None,
) -> Callable[[], list[bool]]:
    """Queue ``check`` over chunks of ``items`` on ``executor``; return a function that waits for
    the verdicts, in order.

    The caller can do other work meanwhile (block import applies transactions while the
    signatures are checked on the other cores; the libraries release the GIL while they verify).
    When it then waits, it runs any chunk no worker has started yet itself instead of idling.
    """
    count = (workers or default_workers()) * CHUNKS_PER_WORKER
    size = max(1, -(-len(items) // count))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    futures = [executor.submit(check, chunk) for chunk in chunks]

    def wait() -> list[bool]:
        verdicts: list[bool] = []
        for future, chunk in zip(futures, chunks, strict=True):
            verdicts.extend(check(chunk) if future.cancel() else future.result())
        return verdicts

    return wait
