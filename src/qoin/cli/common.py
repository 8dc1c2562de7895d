"""Helpers shared by the ``qoin`` sub-commands: errors as messages, passwords, JSON output."""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from qoin.crypto import keystore
from qoin.crypto.hybrid import HybridKeyPair
from qoin.files import FileReadError, read_bounded
from qoin.rpc.client import RpcCallError, call

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


def ask_node(url: str, method: str, *params: Any) -> Any:
    """One JSON-RPC call to a node; an unreachable node or a refusal exits 1 with one line."""
    try:
        return call(url, method, *params)
    except RpcCallError as exc:
        if exc.code is None:  # no JSON-RPC answer at all
            fail(f"cannot reach the execution client at {url}: {exc}", EXIT_FAILURE)
        fail(str(exc), EXIT_FAILURE)


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


def unlock_keystore(path: Path, password_file: Path | None) -> HybridKeyPair:
    """The key pair of the keystore at ``path``, its password read by :func:`read_password`; an
    unreadable keystore exits 2, a wrong password 1."""
    try:
        store = keystore.load(path)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        return keystore.decrypt_keypair(store, read_password(password_file, confirm=False))
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_FAILURE)
