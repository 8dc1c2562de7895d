"""``qoin node``'s two processes: start the execution client, then the consensus client pointed at
its engine API; watch both; stop both in order.

The children run in their own sessions, so a Ctrl-C at the terminal reaches only the supervisor,
which then stops the consensus client first (it finishes its current block and closes its store),
then the execution client. If either child exits on its own, the other is stopped too: the
consensus client's exit status is the node's (0 after ``--blocks``); an execution client that dies
first is a failure.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from qoin.cli.common import stop_on_signals

START_TIMEOUT_S = 600.0
"""How long the execution client may take to start (a large genesis state is built first)."""
STOP_TIMEOUT_S = 30.0
"""How long a child may take to stop after SIGTERM before it is killed."""
POLL_S = 0.2
ENGINE_URL = re.compile(r"engine API (http://\S+)")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SupervisorError(Exception):
    """A child could not be started."""


def spawn_qoin(
    args: Sequence[str],
    stdout: int | None = None,
    stderr: int | None = None,
    stdin: int | None = None,
) -> subprocess.Popen[str]:
    """``qoin ARGS`` with this interpreter, in its own session (so a Ctrl-C at the terminal does
    not reach it; its own children, e.g. miner processes, share its process group)."""
    return subprocess.Popen(  # noqa: S603 (this interpreter running qoin, with our arguments)
        [sys.executable, "-m", "qoin", *args],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _forward(stream: IO[str], urls: queue.Queue[str | None]) -> None:
    """Copy a child's stderr to ours; report the engine URL once it is printed."""
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        found = ENGINE_URL.search(line)
        if found:
            urls.put(found.group(1))
    urls.put(None)


def stop_child(child: subprocess.Popen[str], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            sys.stderr.write(f"process {child.pid} did not stop in {timeout:.0f} s; killing it\n")
            child.kill()
    return child.wait()


def kill_group(child: subprocess.Popen[str]) -> None:
    """SIGKILL whatever is left of the process group of a child started by :func:`spawn_qoin`,
    once the child itself has exited: a grandchild (a miner process) it could not stop, e.g.
    because it was killed. The group id cannot be reused while any member is alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # empty: nothing outlived it
        os.killpg(child.pid, signal.SIGKILL)


def _engine_url(urls: queue.Queue[str | None], stop: threading.Event) -> str | None:
    """The execution client's engine URL once printed; None if it exited, took longer than
    :data:`START_TIMEOUT_S`, or a signal came first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            return urls.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None


def supervise(execution_args: Sequence[str], consensus_args: Sequence[str]) -> int:
    """Run ``qoin <execution_args>`` and ``qoin <consensus_args> --execution URL`` until a signal
    (SIGINT, SIGTERM, or SIGHUP: a closed terminal) or until one of them exits; return the node's
    exit status. Whatever happens here, both children are stopped before it returns."""
    stop = threading.Event()
    children: list[subprocess.Popen[str]] = []
    with stop_on_signals(stop.set, STOP_SIGNALS) as received:
        try:
            return _run(execution_args, consensus_args, stop, received, children)
        finally:
            for child in reversed(children):  # consensus first, then execution
                stop_child(child)


def _run(
    execution_args: Sequence[str],
    consensus_args: Sequence[str],
    stop: threading.Event,
    received: list[int],
    children: list[subprocess.Popen[str]],
) -> int:
    execution = spawn_qoin(execution_args, stderr=subprocess.PIPE)
    children.append(execution)
    if execution.stderr is None:  # never: Popen with stderr=PIPE sets it
        raise SupervisorError("no pipe to the execution client's stderr")
    urls: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_forward, args=(execution.stderr, urls), daemon=True).start()
    url = _engine_url(urls, stop)
    if url is None or stop.is_set():
        stop_child(execution)
        if received:
            return 0
        sys.stderr.write("error: the execution client did not start (see above)\n")
        return 1
    consensus = spawn_qoin([*consensus_args, "--execution", url])
    children.append(consensus)
    while not stop.is_set() and consensus.poll() is None and execution.poll() is None:
        stop.wait(POLL_S)
    if received:
        sys.stderr.write("stopping\n")
    execution_died = execution.poll() is not None and consensus.poll() is None
    consensus_code = stop_child(consensus)
    execution_code = stop_child(execution)
    if execution_died:
        sys.stderr.write(f"error: the execution client exited with status {execution_code}\n")
        return 1
    clean = (0, -signal.SIGTERM)  # a child stopped before it set its handlers dies of SIGTERM
    if received:
        return 0 if consensus_code in clean and execution_code in clean else 1
    return consensus_code if consensus_code >= 0 else 1
