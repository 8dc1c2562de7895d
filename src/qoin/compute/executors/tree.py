"""Walking, repairing and removing a job's directory trees (``/outputs``, and a wasm job's host
``/work``) safely, whatever the job left in them (docs/spec/compute.md §4.1).

A job controls everything under its writable directories: symbolic links to the provider's
files, FIFOs that would block a reader forever, devices, sockets, names that are not UTF-8,
directories it made unreadable (``chmod 0``, or ``0300``: writable but not listable) and trees
far deeper than ``PATH_MAX``. So the provider never follows a link there, never opens anything
but a regular file (and that without blocking), never builds a path longer than
:data:`MAX_TREE_PATH` bytes under a tree's top, and never recurses:

* :func:`tree_usage` measures a tree (bytes of regular files, entries) and names what breaks the
  rules: a path longer than :data:`MAX_TREE_PATH` bytes (no result can list it, and a deep tree
  would hide what lies in it from the walk), or a directory the provider cannot read even after
  giving its owner's permission bits back (:func:`make_accessible`);
* :func:`prune` removes, once the job has ended, whatever lies deeper than that, so that nothing
  downstream (the scan of the outputs, a recursive removal of the job's directory) meets it;
* :func:`remove_tree` removes a tree of any depth without recursion and with two descriptors
  open at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

MAX_TREE_PATH = 1024
"""Bytes of a path under ``/outputs`` (the longest a result's manifest can list) and under a
wasm job's ``/work``; longer paths break the output limit (and are removed once the job ends)."""
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""A directory, never through a link at the last step."""
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""A file, never through a link, never blocking (a FIFO put in its place opens and then fails
the regular-file check), never becoming a terminal."""
OWNER_DIR = 0o700
OWNER_FILE = 0o600
REMOVE_BATCH = 4096
"""Entries of a directory listed at a time while it is removed."""


@dataclass(frozen=True)
class Usage:
    """What a directory tree holds."""

    size: int
    """Bytes of its regular files (their sizes: what a result would hold; a sparse file counts
    whole), plus ``entry_bytes`` per entry when asked."""
    entries: int
    """Entries (files, directories, links and others, the top directory not counted)."""
    truncated: bool = False
    """The walk stopped early because a bound was passed or a rule broken."""
    problem: str | None = None
    """A rule it breaks: ``holds a path longer than ...`` or ``holds a directory the provider
    cannot read ...``."""


def make_accessible(path: bytes | str, directory: bool) -> bool:
    """Give the owner's read (and, for a directory, write and search) permission back to the
    directory or regular file at ``path``, if this process owns it; True if it changed. The
    object is opened with ``O_PATH | O_NOFOLLOW`` and changed through ``/proc/self/fd``, so a
    link put in its place is never followed."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
        if not kind_ok or info.st_uid != os.geteuid():
            return False
        wanted = OWNER_DIR if directory else OWNER_FILE
        if stat.S_IMODE(info.st_mode) & wanted == wanted:
            return False
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(info.st_mode) | wanted)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def open_dir(path: bytes | str) -> int | None:
    """A descriptor of the directory at ``path``, opened without following a link at its last
    step (its owner's permissions given back once if they were taken away and this process
    owns it); None if it vanished or is not a directory (any more); :class:`PermissionError`
    if it cannot be read."""
    for attempt in range(2):
        try:
            return os.open(path, OPEN_DIR)
        except PermissionError:
            if attempt or not make_accessible(path, directory=True):
                raise
        except OSError:
            return None
    return None


def tree_usage(
    root: Path,
    max_size: int | None = None,
    max_entries: int | None = None,
    *,
    max_path: int = MAX_TREE_PATH,
    entry_bytes: int = 0,
) -> Usage:
    """Bytes and entries under ``root`` (links not followed, nothing opened but directories);
    the walk stops as soon as it passes ``max_size`` or ``max_entries``, or meets a path longer
    than ``max_path`` bytes or a directory it cannot read (:attr:`Usage.problem`). Entries that
    vanish under the walk are skipped. ``entry_bytes``: bytes each entry counts for on top of
    its size (a tree on the provider's disk costs an inode per entry)."""
    size = entries = 0
    stack = [(os.fsencode(root), b"")]
    while stack:
        top, relative = stack.pop()
        try:
            fd = open_dir(top)
        except PermissionError:
            shown = relative.decode("utf-8", "replace")[:200] or "."
            problem = f"holds a directory the provider cannot read ({shown!r})"
            return Usage(size, entries, truncated=True, problem=problem)
        if fd is None:
            continue
        try:
            with os.scandir(fd) as scanner:
                for entry in scanner:
                    entries += 1
                    size += entry_bytes
                    name = os.fsencode(entry.name)
                    path = relative + b"/" + name if relative else name
                    if len(path) > max_path:
                        shown = path.decode("utf-8", "replace")[:80]
                        problem = f"holds a path longer than {max_path} bytes ({shown!r}...)"
                        return Usage(size, entries, truncated=True, problem=problem)
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        stack.append((top + b"/" + name, path))
                    elif stat.S_ISREG(info.st_mode):
                        size += info.st_size
                    if (max_size is not None and size > max_size) or (
                        max_entries is not None and entries > max_entries
                    ):
                        return Usage(size, entries, truncated=True)
        finally:
            os.close(fd)
    return Usage(size, entries)


def prune(root: Path, max_path: int = MAX_TREE_PATH) -> int:
    """Remove every entry under ``root`` whose path is longer than ``max_path`` bytes (with
    :func:`remove_tree`); for a tree no process writes to any more. The number removed."""
    removed = 0
    stack = [(os.fsencode(root), b"")]
    while stack:
        top, relative = stack.pop()
        try:
            fd = open_dir(top)
        except PermissionError:
            continue
        if fd is None:
            continue
        try:
            with os.scandir(fd) as scanner:
                listed = [
                    (os.fsencode(entry.name), entry.is_dir(follow_symlinks=False))
                    for entry in scanner
                ]
        finally:
            os.close(fd)
        for name, is_dir in listed:
            path = relative + b"/" + name if relative else name
            if len(path) > max_path:
                with contextlib.suppress(OSError):
                    remove_tree(Path(os.fsdecode(top + b"/" + name)))
                    removed += 1
            elif is_dir:
                stack.append((top + b"/" + name, path))
    return removed


def remove_tree(path: Path) -> None:
    """Remove ``path``, a file, a link or a directory tree of any depth, following no link,
    without recursion and with at most two directories open at a time: each directory's
    subdirectories are first moved up beside it (so the depth of what is left never grows),
    its other entries removed, then the directory itself. Missing: nothing to do."""
    parent = os.open(path.parent, OPEN_DIR)
    try:
        pending = [path.name]
        while pending:
            name = pending.pop()
            try:
                fd = _open_child_dir(parent, name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                os.unlink(name, dir_fd=parent)  # a file, a link, a FIFO...: never opened
                continue
            try:
                pending.extend(_empty(fd, parent))
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)


def _open_child_dir(parent: int, name: str) -> int:
    """Open directory ``name`` of ``parent`` with its owner's permissions (given back if this
    process owns it and they were taken away); ``ENOTDIR``/``ELOOP`` for anything else."""
    try:
        fd = os.open(name, OPEN_DIR, dir_fd=parent)
    except PermissionError:
        if not make_accessible(f"/proc/self/fd/{parent}/{name}", directory=True):
            raise
        fd = os.open(name, OPEN_DIR, dir_fd=parent)
    with contextlib.suppress(OSError):
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & OWNER_DIR != OWNER_DIR:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) | OWNER_DIR)
    return fd


def _empty(fd: int, parent: int) -> list[str]:
    """Remove the non-directories of directory ``fd`` and move its directories into ``parent``
    under fresh names (a batch at a time); those names."""
    moved: list[str] = []
    while True:
        batch: list[tuple[str, bool]] = []
        with os.scandir(fd) as scanner:
            for entry in scanner:
                batch.append((entry.name, entry.is_dir(follow_symlinks=False)))
                if len(batch) >= REMOVE_BATCH:
                    break
        if not batch:
            return moved
        for name, is_dir in batch:
            if is_dir:
                fresh = f".qoin-removing-{uuid.uuid4().hex}"
                os.rename(name, fresh, src_dir_fd=fd, dst_dir_fd=parent)
                moved.append(fresh)
            else:
                os.unlink(name, dir_fd=fd)
