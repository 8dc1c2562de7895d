"""Shared fixtures: session-wide key pairs (see :mod:`tests.keys`) and ``net``, a test's network
of real ``qoin`` processes (see :mod:`tests.framework`, whose :func:`~tests.framework.wait_until`
is the tests' one bounded wait).

The tests' temporary directories (``tmp_path``) are on a memory file system when the machine has
one to spare (:func:`memory_temproot`): the nodes' stores commit with fsync, and on a shared
virtual disk a commit can take tens of milliseconds. The files and their semantics are the same
(a process killed with SIGKILL loses nothing it wrote, as on a disk); only power-loss durability,
which no test checks, is not there. pytest keeps the last three runs' directories, as in ``/tmp``.
``--basetemp`` or ``PYTEST_DEBUG_TEMPROOT`` choose another place; ``QOIN_TEST_DISK_TMP=1`` keeps
them on disk.

The tests start some 450 ``qoin`` processes, and each imports the whole command line. Where
``PYTHONDONTWRITEBYTECODE`` is set (some CI images set it), none of them could keep the bytecode it
compiled, and each spent more than half a second of CPU compiling the same sources again: the tests'
processes (and pytest's workers) keep it instead in a cache of their own, out of the source tree
(:func:`keep_bytecode`; ``PYTHONPYCACHEPREFIX``, when set, is left alone)."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
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


def keep_bytecode(environ: MutableMapping[str, str] = os.environ) -> None:
    """Let the processes the tests start (they inherit ``environ``) keep their compiled bytecode,
    in ``$XDG_CACHE_HOME/qoin-tests/pycache`` (``~/.cache/...``), where
    ``PYTHONDONTWRITEBYTECODE`` forbids it and ``PYTHONPYCACHEPREFIX`` names no place of its own
    (the source tree stays free of ``__pycache__`` either way)."""
    if not environ.get("PYTHONDONTWRITEBYTECODE") or environ.get("PYTHONPYCACHEPREFIX"):
        return
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qoin-tests"
    try:
        (cache / "pycache").mkdir(parents=True, exist_ok=True)
    except OSError:  # no cache to be had: the processes compile as before
        return
    environ["PYTHONPYCACHEPREFIX"] = str(cache / "pycache")
    del environ["PYTHONDONTWRITEBYTECODE"]


def pytest_configure(config: pytest.Config) -> None:
    """Keep the processes' bytecode, and put the tests' temporary directories on a memory file
    system (see the module docstring; pytest reads ``PYTEST_DEBUG_TEMPROOT`` when it first makes
    them, after this hook). pytest-xdist starts its workers after this hook: they inherit both."""
    keep_bytecode()
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
