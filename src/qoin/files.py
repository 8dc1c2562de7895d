"""Reading files whose size is bounded before anything is allocated."""

from __future__ import annotations

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
