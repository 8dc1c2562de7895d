"""Shared fixtures: session-wide key pairs (see :mod:`tests.keys`) and ``net``, a test's network
of real ``qoin`` processes (see :mod:`tests.framework`, whose :func:`~tests.framework.wait_until`
is the tests' one bounded wait).

The tests' temporary directories (``tmp_path``) are on a memory file system when the machine has
one to spare (:func:`memory_temproot`): the nodes' stores commit with fsync, and on a shared
virtual disk a commit can take tens of milliseconds. The files and their semantics are the same
(a process killed with SIGKILL loses nothing it wrote, as on a disk); only power-loss durability,
which no test checks, is not there. pytest keeps the last three runs' directories, as in ``/tmp``.
``--basetemp`` or ``PYTEST_DEBUG_TEMPROOT`` choose another place; ``QOIN_TEST_DISK_TMP=1`` keeps
them on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qoin.crypto.hybrid import HybridKeyPair
from qoin.crypto.suites import SUITES, Suite
from tests.framework import Network
from tests.keys import keypair_for

MEMORY_ROOT = Path("/dev/shm")
MEMORY_FREE = 4 << 30
"""Free bytes a memory file system must have for the tests' directories (a whole run's directories
take a few hundred MB; pytest keeps the last three runs')."""


def memory_temproot(root: Path = MEMORY_ROOT, free: int = MEMORY_FREE) -> Path | None:
    """``root`` if it is a writable tmpfs that allows executables, with ``free`` bytes free."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
        fields = {line.split()[1]: line.split()[2] for line in mounts if len(line.split()) > 2}
        stats = os.statvfs(root)
    except OSError:
        return None
    if fields.get(str(root)) != "tmpfs" or stats.f_flag & (os.ST_NOEXEC | os.ST_RDONLY):
        return None
    if stats.f_bavail * stats.f_frsize < free or not os.access(root, os.W_OK | os.X_OK):
        return None
    return root


def pytest_configure(config: pytest.Config) -> None:
    """Put the tests' temporary directories on a memory file system (see the module docstring);
    pytest reads ``PYTEST_DEBUG_TEMPROOT`` when it first makes them, after this hook."""
    chosen = config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT")
    if chosen or os.environ.get("QOIN_TEST_DISK_TMP") == "1":
        return
    root = memory_temproot()
    if root is not None:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules holding ``slow`` tests first (each module's tests stay together, in their
    order, so that a module's fixtures are made once). pytest-xdist's work stealing then balances
    the two workers with the many short tests that come last, instead of one worker finishing a
    minute-long test alone at the end."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_modules)


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    """A network in ``tmp_path`` (genesis and engine secret written once); every process it
    starts is stopped when the test ends, passed or failed. ``QOIN_HOME`` points into
    ``tmp_path`` and ``QOIN_PASSWORD`` is unset for the processes."""
    monkeypatch.setenv("QOIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QOIN_PASSWORD", raising=False)
    made = Network(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture(params=SUITES, ids=lambda s: s.name)
def any_suite(request: pytest.FixtureRequest) -> Suite:
    suite: Suite = request.param
    return suite


@pytest.fixture
def alice() -> HybridKeyPair:
    return keypair_for(index=0)


@pytest.fixture
def bob() -> HybridKeyPair:
    return keypair_for(index=1)
