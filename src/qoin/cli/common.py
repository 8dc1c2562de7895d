"""Helpers shared by the ``qoin`` sub-commands: errors as messages, passwords, JSON output."""

from __future__ import annotations

import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import typer

from qoin.files import FileReadError, read_bounded

EXIT_FAILURE = 1
"""The command ran but its answer is "no" (bad password, invalid signature, ...)."""
EXIT_USAGE = 2
"""The command was given input it cannot use."""

PASSWORD_ENV = "QOIN_PASSWORD"  # noqa: S105 (a variable name, not a password)
MAX_PASSWORD_FILE_SIZE = 4096


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``message`` to stderr and exit with ``code`` (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout."""
    typer.echo(json.dumps(obj, indent=2, sort_keys=False))


def read_password(password_file: Path | None, *, confirm: bool) -> str:
    """The keystore password: from ``--password-file``, ``$QOIN_PASSWORD``, or a prompt."""
    if password_file is not None:
        raw = read_input_file(password_file, "password file", MAX_PASSWORD_FILE_SIZE)
        try:
            password = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            fail(f"password file {password_file} is not UTF-8", EXIT_USAGE)
    elif PASSWORD_ENV in os.environ:
        password = os.environ[PASSWORD_ENV]
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != password:
            fail("passwords do not match", EXIT_USAGE)
    else:
        fail(
            f"no password: use --password-file, set {PASSWORD_ENV}, or run in a terminal",
            EXIT_USAGE,
        )
    if confirm and not password:
        fail("refusing to encrypt a keystore with an empty password", EXIT_USAGE)
    return password


def read_input_file(path: Path, what: str, max_size: int) -> bytes:
    """Read a whole input file, bounded in size, or exit with a clear message."""
    try:
        return read_bounded(path, max_size, what)
    except FileReadError as exc:
        fail(str(exc), EXIT_USAGE)


@contextmanager
def stop_on_signals(
    stop: Callable[[], None], signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
) -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM call ``stop`` (a long-running loop then finishes at its
    next poll) instead of raising at an arbitrary point, which could fall between a durable commit
    and the in-memory update that follows it. Yields the list of signals received. Handlers are set
    explicitly: a shell may start background jobs with SIGINT ignored."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
