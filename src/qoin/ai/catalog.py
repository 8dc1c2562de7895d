"""The catalog of a user's AI datasets and models (``$QOIN_HOME/ai/catalog.json``): what ``qoin ai
prepare``, ``train`` and ``finetune`` stored in the storage market, so that ``qoin ai datasets``
and ``qoin ai models`` can list them and ``train``/``infer`` can check a CID before any money
moves.

Nothing secret is kept here: the files are encrypted to the user's keystore and their keys are
derived from it when needed (:mod:`qoin.storage.crypt`). The file is replaced atomically
(:func:`qoin.files.write_atomically`) under an exclusive lock, so two commands that finish at
once both land; a damaged catalog is reported, never silently replaced.
"""

from __future__ import annotations

import fcntl
import json
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from qoin.errors import QoinError
from qoin.files import write_atomically

CATALOG_DIR: Final = "ai"
CATALOG_FILE: Final = "catalog.json"
MAX_CATALOG: Final = 16 << 20
"""The largest catalog file read (bytes)."""
MAX_ENTRIES: Final = 10_000
"""Entries kept; the oldest go first beyond this."""
VERSION: Final = 1

Kind = Literal["dataset", "model"]
KINDS: Final = ("dataset", "model")
_CID: Final = re.compile(r"[0-9a-f]{64}")


class CatalogError(QoinError):
    """The catalog cannot be read or written."""


@dataclass(frozen=True)
class Entry:
    """A dataset or model the user stored."""

    kind: Kind
    cid: str
    """Its content id (64 hex digits)."""
    name: str
    task: str
    """``classification`` or ``text``."""
    created: int
    """When it was recorded (unix seconds)."""
    size: int
    """Bytes of the file (before encryption)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Datasets: samples, test, classes, shape, source. Models: arch, epochs, metrics, dataset
    (its dataset's CID), base (the model it was fine-tuned from, or None), deal, file (the local
    copy), meta (the model file's header)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cid": self.cid,
            "name": self.name,
            "task": self.task,
            "created": self.created,
            "size": self.size,
            **dict(self.details),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Entry:
        """An entry from the catalog file; :class:`CatalogError` if it is not one."""
        if not isinstance(obj, dict):
            raise CatalogError("an entry is not an object")
        kind, cid, name, task = obj.get("kind"), obj.get("cid"), obj.get("name"), obj.get("task")
        created, size = obj.get("created"), obj.get("size")
        if kind not in KINDS or not isinstance(cid, str) or not _CID.fullmatch(cid):
            raise CatalogError(f"an entry has no valid kind and cid: {str(obj)[:120]}")
        if not isinstance(name, str) or not isinstance(task, str):
            raise CatalogError(f"entry {cid} has no name or task")
        if not isinstance(created, int) or not isinstance(size, int):
            raise CatalogError(f"entry {cid} has no created time or size")
        base = {"kind", "cid", "name", "task", "created", "size"}
        details = {k: v for k, v in obj.items() if k not in base}
        return cls(kind, cid, name, task, created, size, details)


def catalog_path(home: Path) -> Path:
    """The catalog of the qoin home ``home``."""
    return home / CATALOG_DIR / CATALOG_FILE


def _parse(raw: bytes, path: Path) -> list[Entry]:
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise CatalogError(f"{path} is not JSON ({exc}): move it away to start a new one") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("entries"), list):
        raise CatalogError(f"{path} is not a qoin AI catalog: move it away to start a new one")
    try:
        return [Entry.from_json(item) for item in obj["entries"]]
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from None


def load(path: Path) -> list[Entry]:
    """The entries of the catalog at ``path`` (none if there is no file yet)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CATALOG + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_CATALOG:
        raise CatalogError(f"{path} is over {MAX_CATALOG} bytes")
    return _parse(raw, path)


def encode(entries: list[Entry]) -> bytes:
    """The catalog file's bytes."""
    document = {"version": VERSION, "entries": [e.to_json() for e in entries]}
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.with_name(f".{path.name}.lock").open("a")
    except OSError as exc:
        raise CatalogError(f"cannot write {path}: {exc.strerror}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record(path: Path, entry: Entry) -> None:
    """Add ``entry`` to the catalog at ``path`` (replacing one with its kind and CID), written
    atomically under a lock."""
    with _locked(path):
        entries = [e for e in load(path) if (e.kind, e.cid) != (entry.kind, entry.cid)]
        entries.append(entry)
        try:
            write_atomically(path, encode(entries[-MAX_ENTRIES:]), mode=0o600)
        except OSError as exc:
            raise CatalogError(f"cannot write {path}: {exc.strerror}") from None


def find(entries: list[Entry], cid: str, kind: Kind | None = None) -> Entry | None:
    """The newest entry of ``cid`` (of ``kind``)."""
    for entry in reversed(entries):
        if entry.cid == cid.lower() and (kind is None or entry.kind == kind):
            return entry
    return None


def now() -> int:
    """Unix seconds (an entry's ``created``)."""
    return int(time.time())
