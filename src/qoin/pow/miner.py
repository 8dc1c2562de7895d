"""A multi-process PQC-PoW miner.

One worker process per core makes attempts (a hybrid signature, a hash and an MQ evaluation each) on
the current *template*: a header's PoW prefix with its ``nbits`` and target. The owner of the chain
calls :meth:`Miner.set_template` whenever the head changes; every worker picks the new template up
before its next attempt (within one attempt, a few milliseconds) and drops the old one. A worker that
finds a solution reports it and waits for the next template. :meth:`Miner.stop` ends all workers
within about one attempt; the miner is also a context manager.

Workers receive the miner's secret keys over a local pipe at start-up: proof-of-work needs the key
that is paid, which is the point of the design (see :mod:`qoin.pow.proof`). Each worker's first
step is a lifeline (:func:`qoin.process.lifeline`): it is killed when the process that started it
dies, however that process ends, so no worker mines on for a dead node.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event
from types import TracebackType
from typing import Any

from qoin.crypto.batch import default_workers
from qoin.crypto.hybrid import HybridKeyPair, HybridPublicKey
from qoin.errors import QoinError
from qoin.pow.proof import make_attempt, mq_system, prefix_hash
from qoin.process import lifeline, on_lasting_thread

R_SIZE = 32
_POLL_IDLE_S = 0.05


class MinerError(QoinError):
    """The miner's worker processes are not running."""


@dataclass(frozen=True)
class Template:
    """What to mine on: a header's PoW prefix and its difficulty."""

    template_id: int
    """Chosen by the caller; solutions carry it back."""
    prefix: bytes
    """``Header.pow_prefix`` of the block being mined."""
    nbits: int
    """MQ parameters of the header."""
    target: int
    """The header's target."""


@dataclass(frozen=True)
class Solution:
    """A winning attempt for a template."""

    template_id: int
    """The template it solves."""
    r: bytes
    """The random R."""
    nonce: bytes
    """Hash of the proof."""
    proof: bytes
    """Encoded hybrid signature."""
    output: int
    """The MQ output (<= target)."""


def _latest(conn: Connection, current: Template | None) -> Template | None:
    """Drain the template pipe and keep only the newest template."""
    latest = current
    while conn.poll():
        latest = conn.recv()
    return latest


def _work(
    index: int,
    parent: int,
    public: bytes,
    secret: bytes,
    templates: Connection,
    results: mp.Queue[Solution],
    stop: Event,
    counters: SynchronizedArray[Any],
) -> None:
    """Worker process body: attempt on the newest template until told to stop (or killed when
    ``parent``, the process that started it, dies)."""
    lifeline(parent, signal.SIGKILL)  # nothing to clean up here
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    keypair = HybridKeyPair.from_secret(HybridPublicKey.decode(public), secret)
    template: Template | None = None
    solved: int | None = None
    while not stop.is_set():
        fresh = _latest(templates, template)
        if fresh is not template:
            template, solved = fresh, None
        if template is None or solved == template.template_id:
            templates.poll(_POLL_IDLE_S)
            continue
        digest = prefix_hash(template.prefix)
        attempt = make_attempt(
            keypair, mq_system(template.nbits, digest), digest, os.urandom(R_SIZE)
        )
        counters[index] += 1
        if attempt.output <= template.target:
            results.put(
                Solution(
                    template.template_id,
                    attempt.r,
                    attempt.nonce,
                    attempt.proof.encode(),
                    attempt.output,
                )
            )
            solved = template.template_id


class Miner:
    """Mines templates on ``workers`` processes with one key pair."""

    def __init__(self, keypair: HybridKeyPair, workers: int | None = None) -> None:
        self.keypair = keypair
        self.workers = workers or default_workers()
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._results: mp.Queue[Solution] = self._ctx.Queue()
        self._counters = self._ctx.Array("Q", self.workers, lock=False)
        self._pipes: list[Connection] = []
        self._processes: list[mp.process.BaseProcess] = []
        self._rate_mark = (time.monotonic(), 0)

    def start(self) -> Miner:
        """Start the worker processes (they idle until the first template). They are forked from
        a thread that lives as long as this process (see :func:`qoin.process.on_lasting_thread`)."""
        if self._stop.is_set():
            raise MinerError("a stopped miner cannot be restarted; make a new one")
        self._rate_mark = (time.monotonic(), 0)
        on_lasting_thread(self._start_workers)
        return self

    def _start_workers(self) -> None:
        public, secret = self.keypair.public.encode(), self.keypair.encode_secret()
        parent = os.getpid()
        for index in range(self.workers):
            receiver, sender = self._ctx.Pipe(duplex=False)
            process = self._ctx.Process(
                target=_work,
                args=(index, parent, public, secret, receiver, self._results, self._stop,
                      self._counters),
                name=f"qoin-miner-{index}",
                daemon=True,
            )  # fmt: skip
            process.start()
            receiver.close()
            self._pipes.append(sender)
            self._processes.append(process)

    def set_template(self, template: Template) -> None:
        """Switch every worker to ``template`` (the head changed, or a new block was built)."""
        try:
            for pipe in self._pipes:
                pipe.send(template)
        except OSError:
            self.check_alive()
            raise

    def next_solution(self, timeout: float) -> Solution | None:
        """The next solution found, or ``None`` after ``timeout`` seconds."""
        if self._stop.is_set():
            raise MinerError("the miner is stopped")
        try:
            return self._results.get(timeout=timeout)
        except queue.Empty:
            self.check_alive()
            return None

    def check_alive(self) -> None:
        """Raise :class:`MinerError` if a worker process has died."""
        dead = [p for p in self._processes if not p.is_alive()]
        if dead and not self._stop.is_set():
            codes = ", ".join(f"{p.name} exit {p.exitcode}" for p in dead)
            raise MinerError(f"miner worker(s) died: {codes}")

    @property
    def attempts(self) -> int:
        """Attempts made by all workers since start."""
        return sum(self._counters)

    def attempts_per_second(self) -> float:
        """Attempts per second since the previous call (or since start)."""
        now, total = time.monotonic(), self.attempts
        then, before = self._rate_mark
        self._rate_mark = (now, total)
        return (total - before) / (now - then) if now > then else 0.0

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every worker; waits up to ``timeout`` seconds, then terminates stragglers."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(1.0)
        for pipe in self._pipes:
            pipe.close()
        with contextlib.suppress(Exception):
            self._results.cancel_join_thread()
            self._results.close()
        self._processes.clear()
        self._pipes.clear()

    def __enter__(self) -> Miner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
