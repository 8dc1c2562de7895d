"""``qoin node``'s two processes: start the execution client, then the consensus client pointed at
its engine API; watch both; stop both in order.

The children are started with :class:`qoin.process.Child`: in their own sessions, so a Ctrl-C at the
terminal (or its hang-up) reaches only the supervisor, which then stops the consensus client first
(it finishes its current block and closes its store), then the execution client; and with a
lifeline, so that they stop too if the supervisor is killed. Their output is forwarded to the
supervisor's (stdout to stdout, stderr to stderr): a closed output (a ``tee`` or ``head`` that
exited) is the supervisor's to forgive, never theirs. If either child exits on its own, the other
is stopped too: the consensus client's exit status is the node's (0 after ``--blocks``); an
execution client that dies first is a failure. With ``web``, a third child serves the web UI
(``qoin web``, started once both clients print their RPC URLs, stopped first); it is no part of
the node's health: if it exits, the node goes on without it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import termios
import threading
from collections.abc import Callable, Sequence
from typing import Any

from qoin.process import Child, ChildFailed, Output, note, stop_on_signals

START_TIMEOUT_S = 600.0
"""How long the execution client may take to start (a large genesis state is built first)."""
STOP_TIMEOUT_S = 30.0
"""How long a child may take to stop after SIGTERM before it is killed."""
POLL_S = 0.2
ENGINE_URL = r"engine API (http://\S+)"
USER_RPC_URL = r"user RPC (http://[^\s,]+)"
CONSENSUS_RPC_URL = r"; RPC (http://\S+);"
WEB_URL = r"web UI: (http://\S+)"
WebArgs = Callable[[str, str], Sequence[str]]
"""The ``qoin`` arguments of the web UI given the node's user and consensus RPC URLs."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supervise(
    execution_args: Sequence[str], consensus_args: Sequence[str], web: WebArgs | None = None
) -> int:
    """Run ``qoin <execution_args>`` and ``qoin <consensus_args> --execution URL`` (and the web UI
    ``qoin <web(user RPC, consensus RPC)>``) until a signal (SIGINT, SIGTERM, or SIGHUP: a closed
    terminal) or until one of the clients exits; return the node's exit status. Whatever happens
    here, every child is stopped before it returns."""
    stop = threading.Event()
    children: list[Child] = []
    terminal = _terminal_settings()
    with stop_on_signals(stop.set, STOP_SIGNALS) as received:
        try:
            return _run(execution_args, consensus_args, web, stop, received, children)
        finally:
            for child in reversed(children):  # consensus first, then execution
                child.stop(STOP_TIMEOUT_S)
            _restore_terminal(terminal)


def _terminal_settings() -> list[Any] | None:
    """The settings of our terminal, if stdin is one (the consensus client shares it to prompt
    for a password)."""
    try:
        return termios.tcgetattr(sys.stdin.fileno())
    except (termios.error, AttributeError, OSError, ValueError):
        return None


def _restore_terminal(settings: list[Any] | None) -> None:
    """Put back our terminal's settings if a child changed them: a consensus client stopped
    while it prompted for a password dies with the terminal's echo off."""
    if settings is None or _terminal_settings() == settings:
        return
    ignored = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # run in the background, too
    try:
        with contextlib.suppress(termios.error, OSError, ValueError):
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, settings)
    finally:
        signal.signal(signal.SIGTTOU, ignored)


def _run(
    execution_args: Sequence[str],
    consensus_args: Sequence[str],
    web: WebArgs | None,
    stop: threading.Event,
    received: list[int],
    children: list[Child],
) -> int:
    # Their output is ours (forwarded, so that a closed output of ours never reaches them) and
    # not kept: a node runs for long.
    execution = Child.start(
        "the execution client",
        execution_args,
        Output(keep=False, watch=(ENGINE_URL, USER_RPC_URL), forward=True),
    )
    children.append(execution)
    try:
        found = execution.first_match(ENGINE_URL, START_TIMEOUT_S, stop)
    except ChildFailed:  # it exited (its output says why) or took too long
        found = None
    if found is None or stop.is_set():
        execution.stop(STOP_TIMEOUT_S)
        if received:
            return 0
        note("error: the execution client did not start (see above)")
        return 1
    consensus = Child.start(
        "the consensus client",
        [*consensus_args, "--execution", found[0][1]],
        Output(keep=False, watch=(CONSENSUS_RPC_URL,), forward=True),
        stdin=None,  # ours: it may ask for the coinbase key's password
    )
    children.append(consensus)
    if web is not None:
        _start_web(web, execution, consensus, stop, children)
    while not stop.is_set() and consensus.exited() is None and execution.exited() is None:
        stop.wait(POLL_S)
    if received:
        note("stopping")
    execution_died = execution.exited() is not None and consensus.exited() is None
    consensus_code = consensus.stop(STOP_TIMEOUT_S)
    execution_code = execution.stop(STOP_TIMEOUT_S)
    if execution_died:
        note(f"error: the execution client exited with status {execution_code}")
        return 1
    clean = (0, -signal.SIGTERM)  # a child stopped before it set its handlers dies of SIGTERM
    if received:
        return 0 if consensus_code in clean and execution_code in clean else 1
    return consensus_code if consensus_code >= 0 else 1


def _start_web(
    web: WebArgs, execution: Child, consensus: Child, stop: threading.Event, children: list[Child]
) -> None:
    """Start the web UI once both clients print their RPC URLs (the node runs on without it if it
    cannot start)."""
    try:
        user = execution.first_match(USER_RPC_URL, START_TIMEOUT_S, stop)
        rpc = consensus.first_match(CONSENSUS_RPC_URL, START_TIMEOUT_S, stop)
    except ChildFailed:
        return
    if user is None or rpc is None:
        return
    children.append(
        Child.start(
            "the web UI",
            web(user[0][1], rpc[0][1]),
            Output(keep=False, watch=(WEB_URL,), forward=True),
        )
    )
