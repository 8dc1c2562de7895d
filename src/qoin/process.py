"""The one process helper: start a real ``qoin`` child process (tied to this process's life), read
its output lines with the time each arrived, wait for a ready line, stop it with a bounded grace.
Used by the node supervisor, the devnet, the benchmarks and the tests.

A child's stdout and stderr are one pipe, read by a thread of its own as soon as lines come, so a
line's arrival time (``time.perf_counter()`` of this process) is when the child wrote it, to within
the pipe's latency.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from qoin.errors import QoinError

START_TIMEOUT_S = 60.0
"""How long a child may take to print what is waited for by default."""
STOP_TIMEOUT_S = 30.0
"""How long a child may take to stop after SIGTERM before it is killed."""
RPC_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1
OUTPUT_TAIL = 4_000
"""Characters of a child's output quoted when it fails."""


class ChildFailed(QoinError):
    """A child exited, or did not print what was expected in time."""


@dataclass(frozen=True)
class Line:
    """One output line of a child and when it was read."""

    at: float
    """``time.perf_counter()`` when the line was read."""
    text: str


@dataclass
class Child:
    """A running ``python -m qoin ARGS`` (see the module docstring)."""

    name: str
    proc: subprocess.Popen[str]
    started_at: float
    """``time.perf_counter()`` just before the process was spawned."""
    incoming: queue.Queue[Line | None] = field(default_factory=queue.Queue)
    seen: list[Line] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, args: Sequence[str]) -> Child:
        """Spawn ``qoin ARGS`` in a session of its own (a terminal's Ctrl-C reaches only us)."""
        started = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603 (this interpreter running qoin, with our arguments)
            [sys.executable, "-m", "qoin", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads of ours run in the child yet)
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        child = cls(name, proc, started)
        assert proc.stdout is not None  # stdout=PIPE
        threading.Thread(target=_pump, args=(proc.stdout, child.incoming), daemon=True).start()
        return child

    def wait_for(
        self, pattern: str, timeout: float = START_TIMEOUT_S, after: int = 0
    ) -> tuple[int, re.Match[str], float]:
        """The first line from index ``after`` on (seen or coming) matching ``pattern``: its
        index, the match and its arrival time. :class:`ChildFailed` if the child exits or
        ``timeout`` passes first."""
        found = self.poll_for(pattern, timeout, after)
        if found is None:
            raise ChildFailed(f"{self.name}: no line matching {pattern!r} in {timeout} s")
        return found

    def poll_for(
        self, pattern: str, timeout: float, after: int = 0
    ) -> tuple[int, re.Match[str], float] | None:
        """Like :meth:`wait_for`, but None when ``timeout`` passes (the child exiting still
        raises)."""
        regex = re.compile(pattern)
        index = after
        deadline = time.monotonic() + timeout
        while True:
            while index < len(self.seen):
                line = self.seen[index]
                if match := regex.search(line.text):
                    return index, match, line.at
                index += 1
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line_or_end = self.incoming.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if line_or_end is None:
                raise ChildFailed(f"{self.name} exited ({self.proc.wait()}):\n{self.tail()}")
            self.seen.append(line_or_end)

    def tail(self) -> str:
        """The end of the output read so far."""
        return "".join(line.text for line in self.seen)[-OUTPUT_TAIL:]

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def _die_with_parent() -> None:
    """In the child before ``exec``: SIGTERM when the benchmark process dies, even if it is killed
    before it could stop its children (Linux; elsewhere nothing)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _pump(stream: IO[str], lines: queue.Queue[Line | None]) -> None:
    for text in stream:
        lines.put(Line(time.perf_counter(), text))
    lines.put(None)


def stop_all(children: list[Child]) -> None:
    """Stop ``children``, the last started first."""
    while children:
        children.pop().stop()


def rpc(url: str, method: str, *params: Any) -> Any:
    """Call a JSON-RPC method of a child on 127.0.0.1; :class:`ChildFailed` on an error answer."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    try:
        answer = httpx.post(url, json=body, timeout=RPC_TIMEOUT_S).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ChildFailed(f"{method} at {url}: {exc}") from exc
    if not isinstance(answer, dict) or "error" in answer or "result" not in answer:
        raise ChildFailed(f"{method} at {url} answered {answer!r}"[:OUTPUT_TAIL])
    return answer["result"]
