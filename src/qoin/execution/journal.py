"""The journal of local transactions: what users submitted to this node survives its restart or crash.

Every transaction admitted through the user RPC (``qoin_sendRawTransaction``) is appended to
``transactions.journal`` in the execution data directory, and the append is on disk (``fsync``)
before the RPC answers. On start the journal is replayed into the mempool (what was included or is
no longer valid is dropped); it is rewritten (a temporary file renamed over it) to hold only the
local transactions still pending, on start, periodically, when an append would pass its bound, and
on a clean stop.

File format::

    magic    8 bytes   "QOINTXJ1"
    records  until the end of the file, each:
      length u32 big-endian   1 … MAX_TX_SIZE
      tx     length bytes     the transaction's canonical encoding
      crc    u32 big-endian   CRC-32 of tx

Reading stops at the first record that is incomplete, out of bounds, fails its CRC or does not
decode (a torn last append, after a crash or a full disk): what precedes it counts, the rest is
ignored and dropped by the next rewrite. The file is read up to :data:`MAX_JOURNAL_BYTES`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from qoin.chain.transaction import AnyTransaction, decode_transaction
from qoin.errors import QoinError
from qoin.execution.mempool import MAX_TX_SIZE, MempoolError, Refusal

JOURNAL_FILE = "transactions.journal"
MAGIC = b"QOINTXJ1"
MAX_JOURNAL_BYTES = 32 * 1024 * 1024
"""The journal never grows past this: an append that would is preceded by a rewrite, and refused
(:class:`JournalFull`) if the pending local transactions alone fill it."""
_LENGTH = 4
_CRC = 4


class JournalError(MempoolError):
    """A local transaction could not be recorded, so it was not admitted (a disk error, say)."""

    refusal = Refusal.STATEFUL


class JournalFull(JournalError):
    """The pending local transactions already fill the journal's bound."""


@dataclass(frozen=True)
class JournalContents:
    """What a journal file holds."""

    transactions: tuple[AnyTransaction, ...]
    """The readable records, in file order (duplicates possible)."""
    ignored_bytes: int
    """Bytes after the last readable record (a torn append), ignored."""


def record(tx: AnyTransaction) -> bytes:
    """One journal record of ``tx``."""
    encoded = tx.encode()
    return (
        len(encoded).to_bytes(_LENGTH, "big") + encoded + zlib.crc32(encoded).to_bytes(_CRC, "big")
    )


def parse(data: bytes) -> JournalContents:
    """The records of a journal file's bytes (see the module docstring); an empty or foreign
    file holds none (all its bytes ignored)."""
    if not data.startswith(MAGIC):
        return JournalContents((), len(data))
    transactions: list[AnyTransaction] = []
    position = len(MAGIC)
    while position + _LENGTH <= len(data):
        length = int.from_bytes(data[position : position + _LENGTH], "big")
        end = position + _LENGTH + length
        if not 0 < length <= MAX_TX_SIZE or end + _CRC > len(data):
            break
        encoded = data[position + _LENGTH : end]
        if zlib.crc32(encoded) != int.from_bytes(data[end : end + _CRC], "big"):
            break
        try:
            transactions.append(decode_transaction(encoded))
        except (QoinError, ValueError):  # a decoding error of any kind
            break
        position = end + _CRC
    return JournalContents(tuple(transactions), len(data) - position)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TransactionJournal:
    """The journal file of one execution data directory (the directory's lock makes it ours
    alone). Not thread-safe: the execution client calls it under its lock."""

    def __init__(self, path: Path, max_bytes: int = MAX_JOURNAL_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd = -1
        self._size = 0
        self._dirty = True
        """Whether the file may not be exactly our records (not opened yet, a failed append):
        the next append rewrites it first."""

    @property
    def size(self) -> int:
        """Bytes in the file as last written (0 before the first write)."""
        return self._size

    def load(self) -> JournalContents:
        """The file's records (none if there is no file); reads at most ``max_bytes``."""
        try:
            with self.path.open("rb") as handle:
                data = handle.read(self.max_bytes)
        except FileNotFoundError:
            return JournalContents((), 0)
        return parse(data)

    def fits(self, tx: AnyTransaction) -> bool:
        """Whether ``tx`` can be appended without a rewrite first."""
        return not self._dirty and self._size + len(tx.encode()) + _LENGTH + _CRC <= self.max_bytes

    def append(self, tx: AnyTransaction) -> None:
        """Append ``tx`` and fsync; :class:`JournalFull` if it does not :meth:`fit`,
        :class:`JournalError` if the disk fails (what was written of the record is cut off again
        if the disk allows, and the file is rewritten before the next append)."""
        if not self.fits(tx):
            raise JournalFull(
                f"the journal of local transactions is full ({self.max_bytes} bytes pending)"
                if not self._dirty
                else "the journal of local transactions must be rewritten first"
            )
        data = record(tx)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError as exc:
            self._dirty = True
            with suppress(OSError):  # the refused record must not come back on replay
                os.ftruncate(self._fd, self._size)
            raise JournalError(f"cannot record the transaction in {self.path}: {exc}") from None
        self._size += len(data)

    def rewrite(self, transactions: Iterable[AnyTransaction]) -> None:
        """Replace the file by one holding ``transactions`` (at most ``max_bytes``: the rest is
        left out), atomically: a temporary file, fsynced, renamed over it. ``OSError`` if the
        disk fails (the old file then stays as it was)."""
        data = bytearray(MAGIC)
        for tx in transactions:
            entry = record(tx)
            if len(data) + len(entry) > self.max_bytes:
                break
            data += entry
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
        except OSError:
            temporary.unlink(missing_ok=True)  # a partial copy must not hold a full disk's space
            raise
        # The old file is unlinked now: whatever fails below, no append may go on into it.
        self.close()
        _fsync_directory(self.path.parent)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)
        self._dirty = False

    def close(self) -> None:
        """Close the file (a later :meth:`rewrite` opens it again)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._dirty = True
