"""Verifying many hybrid signatures at once on all cores.

The signature libraries release the GIL, so plain threads scale. Work is handed out in a few large
chunks (one per worker) rather than one future per signature: per-item scheduling overhead is a
sizeable fraction of a 100 µs verify and would cap the speed-up well below the core count.
"""

from __future__ import annotations

import itertools
import os
import sys
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


VERIFIER_SWITCH_INTERVAL_S = 50e-6
"""The interpreter's thread switch interval for processes that verify while they compute."""


def favour_verifier_threads() -> None:
    """Make the whole process hand the GIL over every 50 µs instead of CPython's default 5 ms.

    A verifier thread needs the GIL for a few microseconds between the libraries' GIL-free calls.
    While another thread runs Python code (block import applies transactions and updates the state
    tree while the signatures are checked), a verifier waits up to a full switch interval for each
    of those moments: with 5 ms, two verifier threads next to one busy Python thread manage about
    200 verifies/s instead of the ~7,000/s one free core allows (measured; docs/benchmarks.md).
    Call it once at start-up of a process that imports blocks (execution client, dev node, import
    benchmark); it is process-wide, so a library never sets it on its own.
    """
    sys.setswitchinterval(VERIFIER_SWITCH_INTERVAL_S)


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


BATCH_SIZE = 8
"""Items a thread takes at a time in :func:`start_verifying`: about a millisecond of work, so all
threads run out of work within a millisecond of each other, with little bookkeeping per item."""


def start_verifying(
    check: Callable[[Sequence[T]], list[bool]],
    items: Sequence[T],
    executor: ThreadPoolExecutor,
    workers: int | None = None,
) -> Callable[[], list[bool]]:
    """Start ``check`` over ``items`` on ``workers - 1`` threads of ``executor`` (at least one);
    return a function that waits for the verdicts, in order.

    The caller does other work meanwhile (block import applies transactions while the signatures
    are checked; the libraries release the GIL while they verify), then joins in when it waits:
    the threads and the waiting caller take small batches from a shared cursor, so nobody idles
    while work is left and no thread ends with a long tail. The caller counts as the last worker:
    one more thread would only add GIL hand-offs while the caller runs Python code.
    """
    batches = [items[i : i + BATCH_SIZE] for i in range(0, len(items), BATCH_SIZE)]
    verdicts: list[list[bool] | None] = [None] * len(batches)
    cursor = itertools.count()  # next() on a count is atomic under the GIL

    def drain() -> None:
        for index in cursor:
            if index >= len(batches):
                return
            verdicts[index] = check(batches[index])

    count = min(max(1, (workers or default_workers()) - 1), len(batches))
    futures = [executor.submit(drain) for _ in range(count)]

    def wait() -> list[bool]:
        drain()
        for future in futures:
            future.result()  # re-raises a worker's exception
        done: list[bool] = []
        for batch in verdicts:
            if batch is None:  # unreachable: every batch is taken once, and checked or raised
                raise RuntimeError("a verification batch was never checked")
            done.extend(batch)
        return done

    return wait
