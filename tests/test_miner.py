"""The multi-process miner: real worker processes, real templates, bounded waits everywhere."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from qoin.chain.block import Header
from qoin.crypto.hashing import HASH_SIZE
from qoin.crypto.hybrid import HybridKeyPair, HybridSignature
from qoin.pow.miner import Miner, MinerError, Solution, Template
from qoin.pow.proof import (
    DEFAULT_NBITS,
    PowError,
    max_target,
    unsealed_header,
    verify_header_pow,
)
from tests.framework import wait_until
from tests.keys import keypair_for

EASY = max_target(DEFAULT_NBITS) >> 3  # about 8 attempts per win: a real search, still quick
IMPOSSIBLE = 0  # wins with probability 2^-64 per attempt: never, in a test
WORKERS = 2
SOLVE_TIMEOUT_S = 30.0  # generous: includes spawning workers on a loaded machine


def header_for(keypair: HybridKeyPair, target: int, tag: int = 0) -> Header:
    """An unsealed header paying ``keypair``; ``tag`` makes the PoW prefix distinct."""
    return unsealed_header(
        keypair.public,
        target=target,
        chain_id=1337,
        height=1 + tag,
        parent_hash=bytes([0x11 + tag]) * HASH_SIZE,
        timestamp_ms=1_700_000_000_000 + tag,
    )


def template_of(template_id: int, header: Header) -> Template:
    return Template(template_id, header.pow_prefix, header.nbits, header.target)


def sealed_with(header: Header, solution: Solution) -> Header:
    return replace(
        header,
        pow_r=solution.r,
        pow_nonce=solution.nonce,
        pow_proof=HybridSignature.decode(solution.proof),
    )


@pytest.fixture
def miner() -> Iterator[Miner]:
    with Miner(keypair_for(), workers=WORKERS) as running:
        yield running


def test_solution_verifies(miner: Miner) -> None:
    header = header_for(keypair_for(), EASY)
    miner.set_template(template_of(7, header))
    solution = miner.next_solution(timeout=SOLVE_TIMEOUT_S)
    assert solution is not None
    assert solution.template_id == 7
    assert solution.output <= header.target
    verify_header_pow(sealed_with(header, solution), header.target)


def test_template_restart(miner: Miner) -> None:
    keypair = keypair_for()
    hard, easy = header_for(keypair, IMPOSSIBLE, tag=1), header_for(keypair, EASY, tag=2)
    miner.set_template(template_of(1, hard))
    wait_until(lambda: all(count > 0 for count in miner._counters))  # every worker is on A
    assert miner.next_solution(timeout=0.01) is None  # and A yields nothing
    miner.set_template(template_of(2, easy))
    solution = miner.next_solution(timeout=SOLVE_TIMEOUT_S)
    assert solution is not None
    assert solution.template_id == 2
    verify_header_pow(sealed_with(easy, solution), easy.target)
    # The solution is bound to B's prefix: it does not seal A.
    with pytest.raises(PowError):
        verify_header_pow(sealed_with(hard, solution), hard.target)


def test_attempt_rate(miner: Miner) -> None:
    miner.set_template(template_of(3, header_for(keypair_for(), IMPOSSIBLE, tag=3)))
    seen = [miner.attempts]

    def grown() -> bool:
        seen.append(miner.attempts)
        return seen[-1] >= seen[0] + 4 * WORKERS

    wait_until(grown)
    assert all(a <= b for a, b in itertools.pairwise(seen))
    assert miner.attempts_per_second() > 0
    # The rate since the previous call: positive again once more attempts are made.
    mark = miner.attempts
    wait_until(lambda: miner.attempts > mark)
    assert miner.attempts_per_second() > 0
    assert miner.next_solution(timeout=0.01) is None


def test_stop_while_busy() -> None:
    miner = Miner(keypair_for(), workers=WORKERS).start()
    try:
        processes = list(miner._processes)
        assert len(processes) == WORKERS
        miner.set_template(template_of(4, header_for(keypair_for(), IMPOSSIBLE, tag=4)))
        wait_until(lambda: all(count > 0 for count in miner._counters))  # all busy
    finally:
        began = time.monotonic()
        miner.stop()
        elapsed = time.monotonic() - began
    assert elapsed < 5.0
    assert not any(p.is_alive() for p in processes)
    assert all(p.exitcode == 0 for p in processes)  # they left their loop, not terminated
    assert not set(processes) & set(mp.active_children())
    miner.stop()  # a second stop is harmless
    miner.check_alive()  # and a stopped miner is not reported as dead


def test_stop_without_template() -> None:
    miner = Miner(keypair_for(), workers=WORKERS).start()
    processes = list(miner._processes)
    began = time.monotonic()
    miner.stop()
    assert time.monotonic() - began < 5.0
    assert not any(p.is_alive() for p in processes)
    miner.stop()


def test_stop_never_started() -> None:
    miner = Miner(keypair_for(), workers=WORKERS)
    miner.stop()
    miner.stop()


def test_context_manager_stops() -> None:
    with Miner(keypair_for(), workers=WORKERS) as miner:
        processes = list(miner._processes)
        assert all(p.is_alive() for p in processes)
    assert not any(p.is_alive() for p in processes)


def test_dead_worker_reported(miner: Miner) -> None:
    victim = miner._processes[0]
    assert victim.pid is not None
    miner.check_alive()
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: not victim.is_alive())
    with pytest.raises(MinerError, match="qoin-miner-0"):
        miner.check_alive()
    with pytest.raises(MinerError):
        miner.next_solution(timeout=0.5)
    # Sending a template reaches the dead worker's closed pipe: also reported.
    with pytest.raises(MinerError):
        miner.set_template(template_of(5, header_for(keypair_for(), IMPOSSIBLE, tag=5)))
