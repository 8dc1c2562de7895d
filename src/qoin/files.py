"""Files: reading with a size bound checked before anything is allocated, and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from qoin.errors import QoinError


class FileReadError(QoinError):
    """A file could not be read, or is larger than anything valid of its kind."""


def read_bounded(path: Path, max_size: int, what: str) -> bytes:
    """The whole content of ``path``, which must be at most ``max_size`` bytes.

    ``what`` names the file in the error message (for example "keystore").
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(max_size + 1)
    except OSError as exc:
        raise FileReadError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > max_size:
        raise FileReadError(f"{what} {path} is larger than {max_size} bytes")
    return data


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the whole new one
    (written to a temporary file beside it with permissions ``mode``, fsynced, then renamed over
    it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
