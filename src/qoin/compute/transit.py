"""A job's data as a provider's per-job endpoints send it (docs/spec/compute.md §5.3): encrypted
end to end for whoever holds the job key (the deal's client, its mediator), under keys derived
from it (:mod:`qoin.compute.keys`), so that the wire carries ciphertext only.

Outputs archive (``GET /jobs/{deal}/outputs``)
    The storage market's chunked format (:mod:`qoin.storage.crypt`: ``"QOINENC1" || salt (16) ||
    chunk size (4, BE)``, then 64 KiB chunks, each ChaCha20-Poly1305 with nonce ``4 zero bytes ||
    index (8, BE)`` and AAD ``header || last-chunk flag``) under the master key
    :func:`~qoin.compute.keys.outputs_transit_master`, a fresh random salt (so a fresh file key)
    for each answer. :func:`seal_archive` streams it from the file, :class:`ArchiveOpener`
    decrypts it as it comes (a chunk is known to be the last only when the stream ends), so
    neither side holds more than a chunk of it; :func:`qoin.storage.crypt.decrypt` opens a whole
    one.
Log stream (``WS /jobs/{deal}/logs?from=N&nonce=C``)
    The client's nonce ``C`` (16 bytes, hex) is fresh for each connection; the provider's first
    message is ``"QOINLOG1" || its own fresh nonce (16)``; the connection's key is
    :func:`~qoin.compute.keys.log_key` of both. Every later message i (binary, counted from 0) is
    ``ChaCha20-Poly1305(key, nonce = 4 zero bytes || i (8, BE), frame, aad = "QOINLOG1")`` of the
    frame ``kind (1: 0 stdout, 1 stderr, 2 end) || offset (8, BE) || body``: for stdout and
    stderr the body is the bytes saved at that offset of the log (at most
    :data:`MAX_LOG_DATA`), for the end the body is the JSON ``{"state", "reason", "exit_code",
    "detail"}`` (at most :data:`MAX_END_BODY` bytes) and the offset the log's size. The counter
    in the nonce refuses a frame dropped, repeated or reordered within a connection, the client's
    nonce a connection replayed; a message that does not authenticate ends the stream
    (:class:`TransitError`). A connection that ends before its end frame is resumed with ``from``
    the next byte wanted, as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from qoin.compute import keys
from qoin.errors import QoinError
from qoin.storage import crypt

LOG_MAGIC: Final = b"QOINLOG1"
HELLO_SIZE: Final = len(LOG_MAGIC) + keys.LOG_NONCE_SIZE
"""Bytes of a log connection's first message."""
FRAME_HEAD: Final = 9
"""Bytes of a log frame before its body: kind (1) and offset (8)."""
MAX_LOG_DATA: Final = 64 * 1024
"""Bytes of log data in one frame, at most."""
MAX_END_BODY: Final = 16 * 1024
"""Bytes of an end frame's JSON, at most."""
MAX_LOG_MESSAGE: Final = FRAME_HEAD + max(MAX_LOG_DATA, MAX_END_BODY) + crypt.TAG_SIZE
"""Bytes of a sealed log message, at most."""
KINDS: Final = ("stdout", "stderr", "end")
MAX_OFFSET: Final = 2**64 - 1
ARCHIVE_READ: Final = 16 * crypt.CHUNK
"""Plaintext bytes of an archive sealed per piece sent (1 MiB)."""


class TransitError(QoinError):
    """Bytes from a provider's per-job endpoint that do not open with the job key: damaged or
    changed in transit, sealed under another job key (a record of another job), or not this
    protocol (a provider running an older qoin)."""


def _nonce(index: int) -> bytes:
    return bytes(4) + index.to_bytes(8, "big")


# -- log stream ------------------------------------------------------------------------------------


def client_nonce() -> bytes:
    """A fresh nonce for one log connection."""
    return os.urandom(keys.LOG_NONCE_SIZE)


def parse_client_nonce(text: str) -> bytes:
    """The client nonce of a ``nonce`` query parameter (32 hex digits); :class:`TransitError`
    if it is not one."""
    if len(text) != 2 * keys.LOG_NONCE_SIZE:
        raise TransitError(f"nonce must be {2 * keys.LOG_NONCE_SIZE} hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise TransitError(f"nonce must be {2 * keys.LOG_NONCE_SIZE} hex digits") from None


def hello(provider_nonce: bytes) -> bytes:
    """A log connection's first message."""
    if len(provider_nonce) != keys.LOG_NONCE_SIZE:
        raise TransitError(f"a provider nonce is {keys.LOG_NONCE_SIZE} bytes")
    return LOG_MAGIC + provider_nonce


def parse_hello(message: str | bytes) -> bytes:
    """The provider nonce of a log connection's first message; :class:`TransitError` if it is
    not one."""
    if isinstance(message, str):
        raise TransitError(
            "the provider sent its log in clear (an older qoin?): this client takes it only "
            "encrypted under the job key"
        )
    if len(message) != HELLO_SIZE or not message.startswith(LOG_MAGIC):
        raise TransitError("the provider's log stream does not start with a QOINLOG1 greeting")
    return bytes(message[len(LOG_MAGIC) :])


@dataclass(frozen=True)
class LogFrame:
    """One opened log frame: ``kind`` ``stdout`` or ``stderr`` with ``data`` at ``offset`` of
    the saved log, or ``end`` with ``end`` (the job's state, reason, exit code and detail)."""

    kind: str
    offset: int
    data: bytes = b""
    end: dict[str, Any] | None = None


class LogSealer:
    """Seals one connection's frames, in order (the provider's side)."""

    def __init__(self, key: bytes) -> None:
        self._cipher = ChaCha20Poly1305(key)
        self._count = 0

    def _seal(self, kind: int, offset: int, body: bytes) -> bytes:
        if not 0 <= offset <= MAX_OFFSET:
            raise TransitError(f"log offset {offset} is out of range")
        plain = bytes((kind,)) + offset.to_bytes(8, "big") + body
        sealed = self._cipher.encrypt(_nonce(self._count), plain, LOG_MAGIC)
        self._count += 1
        return sealed

    def data(self, stream: str, offset: int, data: bytes) -> bytes:
        """A frame of ``data`` of ``stream`` at ``offset``."""
        if stream not in KINDS[:2] or len(data) > MAX_LOG_DATA:
            raise TransitError(f"a log frame is stdout or stderr of at most {MAX_LOG_DATA} bytes")
        return self._seal(KINDS.index(stream), offset, data)

    def end(self, size: int, state: dict[str, Any]) -> bytes:
        """The last frame: the job's ``state`` (JSON; its detail cut to fit), the log ``size``."""
        body = json.dumps(state).encode()
        while len(body) > MAX_END_BODY and state.get("detail"):
            detail = str(state["detail"])
            state = {**state, "detail": detail[: len(detail) // 2]}
            body = json.dumps(state).encode()
        if len(body) > MAX_END_BODY:
            raise TransitError(f"an end frame is at most {MAX_END_BODY} bytes")
        return self._seal(2, size, body)


class LogOpener:
    """Opens one connection's frames, in order (the client's side): :class:`TransitError` for a
    message that is not the next one sealed under the connection's key."""

    def __init__(self, key: bytes) -> None:
        self._cipher = ChaCha20Poly1305(key)
        self._count = 0

    def open(self, message: str | bytes) -> LogFrame:
        if isinstance(message, str):
            raise TransitError("the provider sent a log frame in clear: refused")
        if not FRAME_HEAD + crypt.TAG_SIZE <= len(message) <= MAX_LOG_MESSAGE:
            raise TransitError(
                f"a log frame of {len(message)} bytes: a sealed frame is "
                f"{FRAME_HEAD + crypt.TAG_SIZE} to {MAX_LOG_MESSAGE}"
            )
        try:
            plain = self._cipher.decrypt(_nonce(self._count), bytes(message), LOG_MAGIC)
        except InvalidTag:
            raise TransitError(
                f"log frame {self._count} of this connection does not authenticate under the "
                "job key: changed, dropped or reordered in transit (or another job's key)"
            ) from None
        self._count += 1
        kind, offset, body = plain[0], int.from_bytes(plain[1:9], "big"), plain[FRAME_HEAD:]
        if kind > 2:
            raise TransitError(f"a log frame of unknown kind {kind}")
        if kind < 2:
            if len(body) > MAX_LOG_DATA:
                raise TransitError(f"a log frame carries more than {MAX_LOG_DATA} bytes")
            return LogFrame(KINDS[kind], offset, body)
        if len(body) > MAX_END_BODY:
            raise TransitError(f"an end frame is at most {MAX_END_BODY} bytes")
        try:
            state = json.loads(body)
        except (ValueError, RecursionError):
            raise TransitError("the end frame is not JSON") from None
        if not isinstance(state, dict):
            raise TransitError("the end frame is not a JSON object")
        return LogFrame("end", offset, end=state)


# -- outputs archive ------------------------------------------------------------------------------


def sealed_archive_size(size: int) -> int:
    """Bytes on the wire of a ``size``-byte archive."""
    return crypt.encrypted_size(size)


def seal_archive(
    handle: BinaryIO, size: int, master: bytes, salt: bytes | None = None
) -> Iterator[bytes]:
    """The ``size`` bytes read from ``handle`` sealed under ``master`` (a fresh salt unless one
    is given), in pieces of at most :data:`ARCHIVE_READ` plaintext bytes: exactly
    :func:`sealed_archive_size` bytes, the storage market's format. :class:`TransitError` if
    ``handle`` ends before ``size`` bytes (the file changed while sent)."""
    salt = os.urandom(crypt.SALT_SIZE) if salt is None else salt
    cipher = ChaCha20Poly1305(crypt.file_key(master, salt))
    header = crypt.MAGIC + salt + crypt.CHUNK.to_bytes(4, "big")
    yield header
    count = max(1, -(-size // crypt.CHUNK))
    index = 0
    left = size
    while index < count:
        want = min(left, ARCHIVE_READ)
        plain = handle.read(want) if want else b""
        if len(plain) != want:
            raise TransitError(f"the archive ended {left - len(plain)} bytes early")
        left -= want
        view = memoryview(plain)
        parts = []
        for start in range(0, max(1, want), crypt.CHUNK):
            last = index == count - 1
            parts.append(
                cipher.encrypt(
                    _nonce(index), view[start : start + crypt.CHUNK], header + bytes((last,))
                )
            )
            index += 1
        yield b"".join(parts)


class ArchiveOpener:
    """Decrypts a sealed archive as its bytes come (:meth:`feed`), the last chunk at
    :meth:`finish`; :class:`TransitError` for a header or a chunk that does not open under
    ``master``, or a stream cut short."""

    def __init__(self, master: bytes) -> None:
        self._master = master
        self._header = b""
        self._cipher: ChaCha20Poly1305 | None = None
        self._buffer = bytearray()
        self._index = 0

    def _open(self, sealed: bytes | memoryview, last: bool) -> bytes:
        if self._cipher is None:
            raise TransitError("the archive has no header")
        try:
            return self._cipher.decrypt(_nonce(self._index), sealed, self._header + bytes((last,)))
        except InvalidTag:
            first = " (or it is sealed under another job key)" if self._index == 0 else ""
            raise TransitError(
                f"chunk {self._index} of the outputs archive does not authenticate: changed, "
                f"cut or reordered in transit{first}"
            ) from None
        finally:
            self._index += 1

    def feed(self, data: bytes) -> bytes:
        """The plaintext that ``data`` completes (all but the last chunk)."""
        self._buffer += data
        if self._cipher is None:
            if len(self._buffer) < crypt.HEADER_SIZE:
                return b""
            header = bytes(self._buffer[: crypt.HEADER_SIZE])
            if not header.startswith(crypt.MAGIC):
                raise TransitError(
                    "the provider did not send the outputs encrypted (no QOINENC1 header): "
                    "an older qoin? This client takes them only encrypted under the job key"
                )
            chunk = int.from_bytes(header[-4:], "big")
            if chunk != crypt.CHUNK:
                raise TransitError(f"the archive's chunk size is {chunk}, not {crypt.CHUNK}")
            self._header = header
            self._cipher = ChaCha20Poly1305(crypt.file_key(self._master, crypt.salt_of(header)))
            del self._buffer[: crypt.HEADER_SIZE]
        sealed = crypt.CHUNK + crypt.TAG_SIZE
        whole = (len(self._buffer) - 1) // sealed if self._buffer else 0
        if whole <= 0:
            return b""
        view = memoryview(self._buffer)
        try:
            parts = [
                self._open(view[i * sealed : (i + 1) * sealed], last=False) for i in range(whole)
            ]
        finally:
            view.release()
        del self._buffer[: whole * sealed]
        return b"".join(parts)

    def finish(self) -> bytes:
        """The last chunk's plaintext, once the stream has ended."""
        if self._cipher is None:
            raise TransitError("the outputs archive was cut before its header")
        if len(self._buffer) < crypt.TAG_SIZE:
            raise TransitError("the outputs archive was cut (its last chunk has no tag)")
        plain = self._open(bytes(self._buffer), last=True)
        self._buffer.clear()
        return plain
