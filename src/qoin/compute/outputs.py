"""A job's result: its manifest, the result root replicas commit to and reveal, and the archive
the outputs travel in (docs/spec/compute.md §4.5).

Manifest
    Why the job ended and its exit code, its stdout (part of the result; stderr is not: progress
    noise), and every regular file under ``/outputs`` (symbolic links, devices, pipes and names
    that are not UTF-8 are not results and are listed nowhere), sorted by the UTF-8 bytes of
    their paths. A job stopped for its output limit (``output-limit``) has no files in its
    result. Canonical encoding (:mod:`qoin.encoding.codec`)::

        version  u8        = 1
        reason   varbytes  the StopReason's value (UTF-8, <= 32)
        exit     u8 0, or u8 1 then varint (< 2^32)
        stdout   varint size, digest (32)
        files    varint n (<= 2^20), n x (varbytes path (UTF-8, <= 1024), varint size, digest (32))

    A path is relative, its parts non-empty and neither ``.`` nor ``..``, without NUL; paths
    strictly increase (no duplicates), and no file's path is a directory of another's.
Digests and the root
    A file's digest is ``tagged_hash("QOIN/compute/file/v1", content)`` (hashed as it streams);
    the **result root** is ``tagged_hash("QOIN/compute/result/v1", manifest encoding)``: what a
    provider commits to and reveals on chain, so equal roots mean equal results.
Archive
    ``b"QOINOUT1" || varint len(manifest) || manifest || stdout || each file's bytes`` in the
    manifest's order, sizes from the manifest. :func:`unpack` checks the manifest against the
    root the chain holds before it writes anything, then every file's size and digest as it
    streams, refuses traversal, links on the way and anything over the limits, and ends with
    :class:`OutputsError` on any mismatch (removing what it wrote).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from qoin.compute.executors.base import RunResult, StopReason
from qoin.compute.executors.tree import MAX_TREE_PATH, OPEN_FILE, make_accessible, open_dir
from qoin.compute.jobspec import MAX_LOG_BYTES, MAX_OUTPUT_BYTES, MAX_OUTPUT_FILES, OutputLimits
from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.encoding.codec import DecodeError, Reader, Writer, encode_varint
from qoin.errors import QoinError

VERSION = 1
TAG_RESULT = b"QOIN/compute/result/v1"
TAG_FILE = b"QOIN/compute/file/v1"
MAGIC = b"QOINOUT1"
MAX_REASON = 32
MAX_PATH = MAX_TREE_PATH
"""Bytes of a file's path under ``/outputs`` (1024; the executors stop a job that makes a longer
one)."""
MAX_EXIT = (1 << 32) - 1
MAX_MANIFEST = MAX_OUTPUT_FILES * (MAX_PATH + HASH_SIZE + 16) + 256
"""The largest manifest encoding (every bound at its most)."""
CHUNK = 1 << 20
STDOUT = "stdout"
"""The path the stdout entry carries (it is not encoded)."""
UNLIMITED = OutputLimits(MAX_OUTPUT_BYTES, MAX_OUTPUT_FILES, MAX_LOG_BYTES)
"""The spec's own bounds: what any job may leave."""


class OutputsError(QoinError):
    """Outputs that break a rule or do not match their manifest or root (the message says which)."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a result."""

    path: str
    """Its path under ``/outputs`` (``"stdout"`` for the stdout entry)."""
    size: int
    digest: bytes
    """``tagged_hash("QOIN/compute/file/v1", content)``."""


@dataclass(frozen=True)
class Manifest:
    """A job's result (see the module docstring); built only if it keeps every rule
    (:class:`OutputsError` otherwise)."""

    reason: StopReason
    exit_code: int | None
    stdout: FileEntry
    files: tuple[FileEntry, ...] = ()

    def __post_init__(self) -> None:
        problem = _manifest_problem(self)
        if problem is not None:
            raise OutputsError(f"result manifest: {problem}")

    def encode(self) -> bytes:
        """The canonical encoding."""
        writer = Writer().u8(VERSION).var_bytes(self.reason.value.encode(), MAX_REASON)
        if self.exit_code is None:
            writer.u8(0)
        else:
            writer.u8(1).varint(self.exit_code)
        writer.varint(self.stdout.size).fixed(self.stdout.digest, HASH_SIZE)
        writer.varint(len(self.files))
        for entry in self.files:
            writer.var_bytes(entry.path.encode(), MAX_PATH).varint(entry.size)
            writer.fixed(entry.digest, HASH_SIZE)
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Inverse of :meth:`encode`; :class:`OutputsError` for bytes that are not the canonical
        encoding of a manifest that keeps the rules."""
        if len(data) > MAX_MANIFEST:
            raise OutputsError(f"a result manifest is at most {MAX_MANIFEST} bytes")
        try:
            reader = Reader(data)
            version = reader.u8()
            if version != VERSION:
                raise OutputsError(f"result manifest version {version}, expected {VERSION}")
            raw_reason = reader.var_bytes(MAX_REASON).decode()
            try:
                reason = StopReason(raw_reason)
            except ValueError:
                raise OutputsError(f"unknown stop reason {raw_reason[:40]!r}") from None
            flag = reader.u8()
            if flag > 1:
                raise OutputsError(f"the exit code flag is 0 or 1, got {flag}")
            exit_code = reader.varint() if flag else None
            stdout = FileEntry(STDOUT, reader.varint(), reader.fixed(HASH_SIZE))
            files = tuple(
                FileEntry(
                    reader.var_bytes(MAX_PATH).decode(), reader.varint(), reader.fixed(HASH_SIZE)
                )
                for _ in range(reader.count(MAX_OUTPUT_FILES))
            )
            reader.finish()
        except (DecodeError, UnicodeDecodeError) as exc:
            raise OutputsError(f"result manifest: {exc}") from None
        return cls(reason, exit_code, stdout, files)

    @property
    def root(self) -> bytes:
        """The result root (:func:`result_root`)."""
        return result_root(self)

    @property
    def total_size(self) -> int:
        """Bytes of the files (stdout not counted)."""
        return sum(entry.size for entry in self.files)


def result_root(manifest: Manifest) -> bytes:
    """``tagged_hash("QOIN/compute/result/v1", manifest.encode())``: 32 bytes, committed and
    revealed."""
    return tagged_hash(TAG_RESULT, manifest.encode())


def _manifest_problem(manifest: Manifest) -> str | None:
    problem: str | None = None
    if manifest.exit_code is not None and not 0 <= manifest.exit_code <= MAX_EXIT:
        problem = f"exit code {manifest.exit_code} is not 0 to {MAX_EXIT}"
    elif manifest.stdout.path != STDOUT:
        problem = f"the stdout entry's path is {STDOUT!r}"
    elif len(manifest.files) > MAX_OUTPUT_FILES:
        problem = f"at most {MAX_OUTPUT_FILES} files"
    for entry in (manifest.stdout, *manifest.files):
        if problem is None and (entry.size < 0 or len(entry.digest) != HASH_SIZE):
            problem = f"{entry.path[:80]!r}: a size is >= 0 and a digest {HASH_SIZE} bytes"
    return problem or _paths_problem(manifest.files)


def _paths_problem(files: tuple[FileEntry, ...]) -> str | None:
    """Paths that break a rule, in the wrong order, twice, or under another file."""
    previous = b""
    for index, entry in enumerate(files):
        problem = path_problem(entry.path)
        if problem is not None:
            return problem
        raw = entry.path.encode()
        if index and raw <= previous:
            return f"paths must strictly increase (UTF-8 bytes): {entry.path[:80]!r} after {previous[:80]!r}"
        previous = raw
    paths = {entry.path for entry in files}
    for entry in files:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in paths:
                return f"{entry.path[:80]!r} lies under a file, {'/'.join(parts[:depth])[:80]!r}"
    return None


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a result file's path, or None."""
    try:
        raw = path.encode()
    except UnicodeEncodeError:
        return f"path {path[:80]!r} is not UTF-8"
    if not raw or len(raw) > MAX_PATH:
        return f"a path is 1 to {MAX_PATH} bytes"
    if "\x00" in path:
        return f"path {path[:80]!r} holds a NUL"
    if path.startswith("/"):
        return f"path {path[:80]!r} is absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return f"path {path[:80]!r} has an empty, '.' or '..' part"
    return None


# -- digests --------------------------------------------------------------------------------------


def _hasher() -> hashlib._Hash:
    hasher = hashlib.sha3_256()
    hasher.update(bytes((len(TAG_FILE),)) + TAG_FILE)
    return hasher


def file_digest(data: bytes) -> bytes:
    """The digest of a file's content (``tagged_hash("QOIN/compute/file/v1", data)``)."""
    return tagged_hash(TAG_FILE, data)


def _stream_digest(source: IO[bytes], limit: int, what: str, over: str) -> FileEntry:
    """Size and digest of what ``source`` holds; :class:`OutputsError` saying ``over`` past
    ``limit`` bytes."""
    hasher = _hasher()
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise OutputsError(over)
        hasher.update(chunk)
    return FileEntry(what, size, hasher.digest())


# -- scanning -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """A regular file the walk found."""

    path: str
    """Its path under the outputs directory."""
    host: bytes
    """Its path on the provider."""
    identity: tuple[int, int]
    """(device, inode) as the walk saw it: what is opened must be the same file."""


def _walk(root: Path, max_files: int) -> list[_Found]:
    """Every regular file under ``root`` whose path can be a result's (UTF-8, at most
    :data:`MAX_PATH` bytes): no link followed, nothing opened but directories, no directory
    entered whose path is already too long to hold a result; the owner's permissions given back
    to what the job made unreadable (:func:`~qoin.compute.executors.tree.make_accessible`).
    :class:`OutputsError` past ``max_files`` files, or for a directory that cannot be read."""
    found: list[_Found] = []
    stack: list[tuple[bytes, bytes, tuple[int, int] | None]] = [(os.fsencode(root), b"", None)]
    while stack:
        top, relative, identity = stack.pop()
        try:
            fd = open_dir(top)
        except PermissionError:
            shown = relative.decode("utf-8", "replace")[:200] or "."
            raise OutputsError(f"/outputs/{shown} cannot be read by the provider") from None
        if fd is None:
            raise OutputsError(f"/outputs/{relative.decode('utf-8', 'replace')[:200]} vanished")
        try:
            info = os.fstat(fd)
            if identity is not None and (info.st_dev, info.st_ino) != identity:
                raise OutputsError(f"/outputs/{relative.decode('utf-8', 'replace')[:200]} changed")
            with os.scandir(fd) as scanner:
                for entry in scanner:
                    name = os.fsencode(entry.name)
                    path = relative + b"/" + name if relative else name
                    try:
                        path.decode()
                    except UnicodeDecodeError:
                        continue  # not UTF-8: no result, listed nowhere
                    info = entry.stat(follow_symlinks=False)
                    place = (info.st_dev, info.st_ino)
                    if stat.S_ISDIR(info.st_mode) and len(path) < MAX_PATH - 1:
                        stack.append((top + b"/" + name, path, place))
                    elif stat.S_ISREG(info.st_mode) and len(path) <= MAX_PATH:
                        found.append(_Found(path.decode(), top + b"/" + name, place))
                        if len(found) > max_files:
                            raise OutputsError(
                                f"/outputs holds more than {max_files} files: over the limit of {max_files}"
                            )
        finally:
            os.close(fd)
    found.sort(key=lambda item: item.path.encode())
    return found


def scan(outputs: Path, stdout: Path, result: RunResult, limits: OutputLimits) -> Manifest:
    """The manifest of a finished job: ``result``'s reason and exit code, the stdout saved in
    ``stdout`` (a missing file is an empty stdout) and every regular file under ``outputs``
    (none for a job stopped at its output limit); :class:`OutputsError` if they are over
    ``limits`` (the executor stops a job before) or cannot be read. Call it once every process
    of the job has ended (as :meth:`JobExecutor.run` returns): it never follows a link, opens
    nothing but regular files (never blocking on a FIFO) and checks that what it opens is what
    it listed."""
    try:
        with stdout.open("rb") as file:
            over = f"stdout is over the log limit of {limits.max_log_bytes} bytes"
            out = _stream_digest(file, limits.max_log_bytes, STDOUT, over)
    except FileNotFoundError:
        out = FileEntry(STDOUT, 0, file_digest(b""))
    files: list[FileEntry] = []
    if result.reason is not StopReason.OUTPUT:
        total = 0
        over = f"/outputs holds more than the output limit of {limits.max_bytes} bytes"
        for item in _walk(outputs, limits.max_files):
            with _open_regular(item.host, item.identity) as file:
                entry = _stream_digest(file, limits.max_bytes - total, item.path, over)
            total += entry.size
            files.append(entry)
    return Manifest(result.reason, result.exit_code, out, tuple(files))


@contextlib.contextmanager
def _open_regular(host: bytes | str, identity: tuple[int, int] | None = None) -> Iterator[BinaryIO]:
    """Open a regular file without following a link at its last step and without blocking
    (:data:`~qoin.compute.executors.tree.OPEN_FILE`), giving its owner read permission back
    once if it was taken away; :class:`OutputsError` unless it is a regular file (and, given
    ``identity``, the one listed)."""
    try:
        fd = os.open(host, OPEN_FILE)
    except PermissionError:
        if not make_accessible(host, directory=False):
            raise OutputsError(f"{os.fsdecode(host)} cannot be read by the provider") from None
        fd = os.open(host, OPEN_FILE)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputsError(f"{os.fsdecode(host)} is no longer a regular file")
        if identity is not None and (info.st_dev, info.st_ino) != identity:
            raise OutputsError(f"{os.fsdecode(host)} changed after it was listed")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as file:
            fd = -1
            yield file
    finally:
        if fd >= 0:
            os.close(fd)


# -- the archive ----------------------------------------------------------------------------------


def pack(manifest: Manifest, outputs: Path, stdout: Path, dest: Path) -> None:
    """Write the archive of ``manifest`` to ``dest``: the manifest, then stdout and every file,
    each checked against its digest as it is copied (:class:`OutputsError` if one changed since
    :func:`scan`; ``dest`` is then removed)."""
    encoded = manifest.encode()
    try:
        with dest.open("wb") as out:
            out.write(MAGIC + encode_varint(len(encoded)) + encoded)
            if manifest.stdout.size:
                with stdout.open("rb") as file:
                    _copy_checked(file, out, manifest.stdout)
            for entry in manifest.files:
                with _open_regular(str(outputs / entry.path)) as file:
                    _copy_checked(file, out, entry)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def _copy_checked(source: IO[bytes], out: IO[bytes], entry: FileEntry) -> None:
    hasher = _hasher()
    left = entry.size
    while left > 0:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        hasher.update(chunk)
        out.write(chunk)
    if left or source.read(1) or hasher.digest() != entry.digest:
        raise OutputsError(f"{entry.path} changed after it was scanned")


def unpack(
    archive: Path | bytes,
    out_dir: Path,
    expected_root: bytes,
    *,
    limits: OutputLimits = UNLIMITED,
    stdout: Path | None = None,
) -> Manifest:
    """Check an archive against ``expected_root`` and write its files under ``out_dir`` (and
    its stdout to ``stdout`` if given); its manifest. :class:`OutputsError` for an archive that
    is damaged, does not match the root, breaks a rule of paths, or is over ``limits``; what was
    written (files and the directories made for them) is removed then. Memory stays bounded
    whatever the archive claims: the manifest is at most what ``limits.max_files`` files can
    take, the contents stream through in chunks of :data:`CHUNK` bytes, and nothing is written
    past the sizes the manifest (checked against the root) gives."""
    source: BinaryIO = io.BytesIO(archive) if isinstance(archive, bytes) else archive.open("rb")
    written: list[Path] = []
    made: list[Path] = []
    try:
        with source:
            manifest = _read_manifest(source, expected_root, limits)
            _make_dirs(out_dir, made)
            target = _place(stdout) if stdout is not None else None
            _unpack_entry(source, manifest.stdout, target, written)
            for entry in manifest.files:
                place = _safe_place(out_dir, entry.path, made)
                _unpack_entry(source, entry, place, written)
            if source.read(1):
                raise OutputsError("the archive has bytes after its last file")
    except BaseException:
        for path in reversed(written):
            with contextlib.suppress(OSError):
                path.unlink()
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return manifest


def manifest_bound(max_files: int) -> int:
    """Bytes of the largest manifest encoding with at most ``max_files`` files."""
    return min(max_files, MAX_OUTPUT_FILES) * (MAX_PATH + HASH_SIZE + 16) + 256


def _read_manifest(source: BinaryIO, expected_root: bytes, limits: OutputLimits) -> Manifest:
    if source.read(len(MAGIC)) != MAGIC:
        raise OutputsError("not a result archive (its magic bytes are wrong)")
    size = _read_varint(source)
    bound = manifest_bound(limits.max_files)
    if size > bound:
        raise OutputsError(
            f"the archive's manifest takes {size} bytes, over the {bound} that "
            f"{limits.max_files} files can take"
        )
    encoded = bytearray()
    while len(encoded) < size and (chunk := source.read(min(CHUNK, size - len(encoded)))):
        encoded += chunk
    if len(encoded) < size:
        raise OutputsError("the archive ends inside its manifest")
    if tagged_hash(TAG_RESULT, bytes(encoded)) != expected_root:
        raise OutputsError("the archive's manifest does not match the result root")
    manifest = Manifest.decode(bytes(encoded))
    if len(manifest.files) > limits.max_files:
        raise OutputsError(f"{len(manifest.files)} files, over the limit of {limits.max_files}")
    if manifest.total_size > limits.max_bytes:
        raise OutputsError(
            f"{manifest.total_size} bytes of files, over the limit of {limits.max_bytes}"
        )
    if manifest.stdout.size > limits.max_log_bytes:
        raise OutputsError(
            f"{manifest.stdout.size} bytes of stdout, over the limit of {limits.max_log_bytes}"
        )
    return manifest


def _read_varint(source: BinaryIO) -> int:
    raw = b""
    while len(raw) < 10:
        byte = source.read(1)
        if not byte:
            raise OutputsError("the archive ends inside its manifest's length")
        raw += byte
        if not byte[0] & 0x80:
            break
    try:
        return Reader(raw).varint()
    except DecodeError as exc:
        raise OutputsError(f"the manifest's length: {exc}") from None


def _make_dirs(path: Path, made: list[Path]) -> None:
    """``path`` (the caller's choice: it may be a link to a directory) and its missing parents
    made, those recorded in ``made``."""
    missing = []
    here = path
    while not here.exists() and not here.is_symlink():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for item in reversed(missing):
        item.mkdir()
        made.append(item)
    if not path.is_dir():
        raise OutputsError(f"{path} is not a directory")


def _place(path: Path) -> Path:
    """``path`` to write a file at, refusing a directory or a link there."""
    if path.is_symlink() or path.is_dir():
        raise OutputsError(f"{path} is a directory or a link: not overwritten")
    return path


def _safe_place(out_dir: Path, relative: str, made: list[Path]) -> Path:
    """Where a result file goes under ``out_dir``: its directories made (recorded in
    ``made``), none of them (nor the file) a link or a non-directory (:class:`OutputsError`
    otherwise)."""
    here = out_dir
    parts = relative.split("/")
    for part in parts[:-1]:
        here = here / part
        try:
            info = here.lstat()
        except FileNotFoundError:
            here.mkdir()
            made.append(here)
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise OutputsError(f"{here} is in the way of {relative} (a link or a file)")
    return _place(here / parts[-1])


def _unpack_entry(
    source: BinaryIO, entry: FileEntry, place: Path | None, written: list[Path]
) -> None:
    """Copy ``entry.size`` bytes of ``source`` to ``place`` (via a fresh temporary file beside
    it, made with ``O_EXCL`` so it can never be an existing file or a link, renamed over
    ``place`` once its digest checks), checking the digest; None: check only."""
    hasher = _hasher()
    out: BinaryIO | None = None
    temp: Path | None = None
    if place is not None:
        fd, name = tempfile.mkstemp(prefix=".qoin-part-", dir=place.parent)
        temp = Path(name)
        written.append(temp)
        out = os.fdopen(fd, "wb")
    try:
        left = entry.size
        while left > 0:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise OutputsError(f"the archive ends inside {entry.path}")
            left -= len(chunk)
            hasher.update(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    if hasher.digest() != entry.digest:
        raise OutputsError(f"{entry.path} does not match its digest")
    if temp is not None and place is not None:
        temp.chmod(0o644)
        os.replace(temp, place)
        written[-1] = place
