"""A control group per job (Linux cgroup v1 or v2), used by the sandbox and wasm executors.

The group is made under the provider's own group of each hierarchy (so the provider's own limits
still bound its jobs): with cgroup v1 one directory per mounted hierarchy that has a controller
we use (``memory``, ``pids``, ``cpu``, ``cpuacct``); with cgroup v2 (``/sys/fs/cgroup`` holds
``cgroup.controllers``) one directory, the controllers enabled in the parent's
``cgroup.subtree_control`` when they are not yet (which the kernel refuses while the provider's
group holds processes of its own: run the provider in a delegated group with a leaf of its own,
e.g. systemd's ``Delegate=yes``). A controller that cannot be used leaves its limit to the
executor's rlimits, and :attr:`JobCgroup.enforced` says which are enforced.

A job's first process joins the group between fork and exec (:meth:`JobCgroup.procs_fds`: the
``cgroup.procs`` files are opened by the provider, and the child writes ``0``, itself, to each),
so every process the job ever makes is in it from the start: the group is how a job is measured
(CPU time), limited (memory, processes, CPU quota), watched (out-of-memory kills, fork
failures) and killed whole.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
USED = ("memory", "pids", "cpu", "cpuacct")
"""The v1 controllers a job's group uses."""
CPU_PERIOD_US = 100_000
"""The CPU quota's period."""
KILL_ROUNDS = 200
KILL_PAUSE_S = 0.005
REMOVE_S = 2.0
"""How long the removal of a group may wait for its last processes to be reaped."""
MAX_STATUS_FILE = 64 * 1024
PREFIXES = ("qoin-job-", "qoin-wasm-")
"""The names of job groups start so, then ``PID-`` of the provider that made them."""


@dataclass(frozen=True)
class Hierarchy:
    """Where the provider's own group of one hierarchy is."""

    path: Path
    """The provider's group directory in that hierarchy."""
    controllers: frozenset[str]
    """The controllers (of :data:`USED`) the hierarchy carries; v2: those the provider's group
    can hand to its children."""
    v2: bool = False


def _read(path: Path) -> str:
    with path.open("rb") as file:
        return file.read(MAX_STATUS_FILE).decode("utf-8", "replace")


def _own_paths() -> dict[str, str]:
    """Controller list (``"memory"``, ``"cpu,cpuacct"``, ``""`` for v2) -> the provider's group
    path, from ``/proc/self/cgroup``."""
    own: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    return own


def _v1_mounts() -> list[tuple[Path, str, frozenset[str]]]:
    """(mount point, mount root, controllers) of every mounted cgroup v1 hierarchy."""
    found = []
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != "cgroup":
            continue
        options = set(fields[5].split(",")) | set(tail[2].split(","))
        found.append((Path(fields[4]), fields[3], frozenset(options & set(USED))))
    return found


@functools.cache
def layout() -> tuple[Hierarchy, ...]:
    """The hierarchies a job's group is made in (empty: no usable cgroups)."""
    try:
        own = _own_paths()
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            path = CGROUP_ROOT / own.get("", "/").lstrip("/")
            present = set(_read(path / "cgroup.controllers").split())
            usable = frozenset(present & {"memory", "pids", "cpu"})
            return (Hierarchy(path, usable, v2=True),)
        found: list[Hierarchy] = []
        for mount, root, controllers in _v1_mounts():
            if not controllers:
                continue
            listed = next(
                (path for names, path in own.items() if controllers <= set(names.split(","))),
                None,
            )
            if listed is None:
                continue
            relative = listed[len(root) :] if root != "/" and listed.startswith(root) else listed
            found.append(Hierarchy(mount / relative.lstrip("/"), controllers))
        return tuple(found)
    except OSError:
        return ()


@dataclass(frozen=True)
class CgroupLimits:
    """What a job's group enforces (None: nothing)."""

    memory: int | None = None
    """Bytes of memory (no swap)."""
    pids: int | None = None
    """Processes and threads."""
    cpus: int | None = None
    """A CPU quota of this many CPUs."""


class JobCgroup:
    """A job's control group (see the module docstring). Make one with :meth:`create`; end it
    with :meth:`close` (kills what is left, removes the directories)."""

    def __init__(
        self, dirs: dict[str, Path], v2: bool, enforced: frozenset[str], owned: bool = True
    ) -> None:
        self.dirs = dirs
        """Controller -> the group's directory in that controller's hierarchy (v2: one
        directory for all, under the key ``""`` too)."""
        self.v2 = v2
        self.enforced = enforced
        """The limits in force: a subset of ``{"memory", "pids", "cpu"}``."""
        self.owned = owned
        """Made by us (else only watched: :meth:`close` leaves it alone)."""

    @classmethod
    def create(cls, limits: CgroupLimits, prefix: str = "qoin-job") -> JobCgroup | None:
        """A new group with ``limits`` (None if this machine gives us no cgroups)."""
        hierarchies = layout()
        if not hierarchies:
            return None
        sweep_stale()
        name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        if hierarchies[0].v2:
            return cls._create_v2(hierarchies[0], name, limits)
        return cls._create_v1(hierarchies, name, limits)

    @classmethod
    def _create_v1(
        cls, hierarchies: tuple[Hierarchy, ...], name: str, limits: CgroupLimits
    ) -> JobCgroup | None:
        dirs: dict[str, Path] = {}
        for hierarchy in hierarchies:
            path = hierarchy.path / name
            try:
                path.mkdir()
            except OSError:
                continue
            for controller in hierarchy.controllers:
                dirs[controller] = path
        if not dirs:
            return None
        enforced: set[str] = set()
        if limits.memory is not None and "memory" in dirs:
            memory = dirs["memory"]
            if _write(memory / "memory.limit_in_bytes", str(limits.memory)):
                enforced.add("memory")
                _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory))
        if (
            limits.pids is not None
            and "pids" in dirs
            and _write(dirs["pids"] / "pids.max", str(limits.pids))
        ):
            enforced.add("pids")
        if limits.cpus is not None and "cpu" in dirs:
            cpu = dirs["cpu"]
            quota = limits.cpus * CPU_PERIOD_US
            if _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US)) and _write(
                cpu / "cpu.cfs_quota_us", str(quota)
            ):
                enforced.add("cpu")
        return cls(dirs, False, frozenset(enforced))

    @classmethod
    def _create_v2(cls, hierarchy: Hierarchy, name: str, limits: CgroupLimits) -> JobCgroup | None:
        path = hierarchy.path / name
        try:
            present = set(_read(hierarchy.path / "cgroup.subtree_control").split())
            missing = hierarchy.controllers - present
            if missing:
                _write(
                    hierarchy.path / "cgroup.subtree_control",
                    " ".join(f"+{controller}" for controller in sorted(missing)),
                )
            path.mkdir()
            available = set(_read(path / "cgroup.controllers").split())
        except OSError:
            return None
        enforced: set[str] = set()
        if (
            limits.memory is not None
            and "memory" in available
            and _write(path / "memory.max", str(limits.memory))
        ):
            enforced.add("memory")
            _write(path / "memory.swap.max", "0")
        if (
            limits.pids is not None
            and "pids" in available
            and _write(path / "pids.max", str(limits.pids))
        ):
            enforced.add("pids")
        if (
            limits.cpus is not None
            and "cpu" in available
            and _write(path / "cpu.max", f"{limits.cpus * CPU_PERIOD_US} {CPU_PERIOD_US}")
        ):
            enforced.add("cpu")
        dirs = dict.fromkeys(("", "memory", "pids", "cpu", "cpuacct"), path)
        return cls(dirs, True, frozenset(enforced))

    @classmethod
    def of_process(cls, pid: int, name: str) -> JobCgroup | None:
        """The group a running process is in (e.g. a container's first process), to watch it:
        nothing is limited, made or removed through it. None if it cannot be read or its path
        does not hold ``name`` (the process is not, or no longer, the one meant: a group of
        someone else's, or the root, must never be read as the job's)."""
        try:
            listed = _read(Path(f"/proc/{pid}/cgroup"))
            if name not in listed:
                return None
            if (CGROUP_ROOT / "cgroup.controllers").exists():
                path = next(
                    (
                        line.split(":", 2)[2]
                        for line in listed.splitlines()
                        if line.startswith("0::")
                    ),
                    None,
                )
                if path is None or name not in path:
                    return None
                place = CGROUP_ROOT / path.lstrip("/")
                every = dict.fromkeys(("", "memory", "pids", "cpu", "cpuacct"), place)
                return cls(every, True, frozenset(), owned=False)
            paths = {}
            for line in listed.splitlines():
                parts = line.split(":", 2)
                if len(parts) == 3:
                    paths[frozenset(parts[1].split(","))] = parts[2]
            dirs: dict[str, Path] = {}
            for mount, root, controllers in _v1_mounts():
                found = next(
                    (path for names, path in paths.items() if controllers and controllers <= names),
                    None,
                )
                if found is None or name not in found:
                    continue
                relative = found[len(root) :] if root != "/" and found.startswith(root) else found
                for controller in controllers:
                    dirs[controller] = mount / relative.lstrip("/")
        except OSError:
            return None
        return cls(dirs, False, frozenset(), owned=False) if dirs else None

    # -- joining ----------------------------------------------------------------------------------

    def procs_fds(self) -> list[int]:
        """Open ``cgroup.procs`` of each directory for writing (close-on-exec): a child writes
        ``b"0"`` to each between fork and exec to join the group (:func:`join`). The caller
        closes them once the child is spawned."""
        fds = []
        try:
            for path in sorted(set(self.dirs.values())):
                fds.append(os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    # -- watching ---------------------------------------------------------------------------------

    def oom_kills(self) -> int:
        """Processes the out-of-memory killer killed in the group."""
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        name = "memory.events" if self.v2 else "memory.oom_control"
        fields = _fields(memory / name)
        if "oom_kill" in fields:
            return fields["oom_kill"]
        return fields.get("under_oom", 0)

    def pids_limit_hits(self) -> int:
        """Times a fork or clone failed because the group was at its process limit."""
        pids = self.dirs.get("pids")
        return _fields(pids / "pids.events").get("max", 0) if pids is not None else 0

    def cpu_seconds(self) -> float | None:
        """CPU time used by the group's processes so far (None if not measured)."""
        if self.v2:
            usage = _fields(self.dirs[""] / "cpu.stat").get("usage_usec")
            return usage / 1e6 if usage is not None else None
        cpuacct = self.dirs.get("cpuacct")
        if cpuacct is None:
            return None
        try:
            return int(_read(cpuacct / "cpuacct.usage").strip()) / 1e9
        except (OSError, ValueError):
            return None

    def pids(self) -> set[int]:
        """Every process in the group now."""
        found: set[int] = set()
        for path in set(self.dirs.values()):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(pid) for pid in _read(path / "cgroup.procs").split())
        return found

    # -- ending -----------------------------------------------------------------------------------

    def kill(self, spare: int | None = None) -> bool:
        """SIGKILL every process in the group but ``spare`` until none other is left (bounded);
        True once that is so. (A killed process that is not reaped yet no longer runs.)"""
        if self.v2 and spare is None:
            _write(self.dirs[""] / "cgroup.kill", "1")
        for _ in range(KILL_ROUNDS):
            left = self.pids() - {spare}
            if not left:
                return True
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(KILL_PAUSE_S)
        return not self.pids() - {spare}

    def close(self) -> bool:
        """Kill what is left and remove the group's directories (waiting up to
        :data:`REMOVE_S` for the kernel to let go of them); True if all are removed. A group
        that is only watched is left alone."""
        if not self.owned:
            return True
        self.kill()
        deadline = time.monotonic() + REMOVE_S
        left = sorted(set(self.dirs.values()))
        while left:
            remaining = []
            for path in left:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    remaining.append(path)
            left = remaining
            if not left or time.monotonic() > deadline:
                break
            self.kill()
            time.sleep(KILL_PAUSE_S)
        return not left


@functools.cache
def sweep_stale() -> int:
    """Remove the empty job groups of providers that are gone (a provider killed while a job
    ran cannot remove its group); once per process. The number removed."""
    removed = 0
    for hierarchy in layout():
        try:
            names = [path for path in hierarchy.path.iterdir() if path.name.startswith(PREFIXES)]
        except OSError:
            continue
        for path in names:
            owner = path.name.split("-")[2] if path.name.count("-") >= 3 else ""
            if not owner.isdigit() or Path(f"/proc/{owner}").exists():
                continue
            with contextlib.suppress(OSError):  # not empty, or gone meanwhile: left alone
                path.rmdir()
                removed += 1
    return removed


def join(fds: list[int]) -> None:
    """In a child between fork and exec: move this process into the group whose
    ``cgroup.procs`` files ``fds`` are (see :meth:`JobCgroup.procs_fds`)."""
    for fd in fds:
        os.write(fd, b"0")


def _write(path: Path, value: str) -> bool:
    try:
        with path.open("w") as file:
            file.write(value)
    except OSError:
        return False
    return True


def _fields(path: Path) -> dict[str, int]:
    """``name value`` lines of a cgroup status file."""
    try:
        text = _read(path)
    except OSError:
        return {}
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            fields[name] = int(value.strip())
    return fields
