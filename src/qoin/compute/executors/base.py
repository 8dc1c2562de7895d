"""What every job executor shares (docs/spec/compute.md §4): why a run ended
(:class:`StopReason`), the job's directories (:class:`JobDirs`), what a run reports
(:class:`RunResult`), the executor interface (:class:`JobExecutor`), what every ``run`` does
first (:func:`refusal`, with :class:`CheckOnce` for a ``problem`` checked once), and the pieces
the three executors build their supervision from: a log meter that forwards stdout/stderr as it
comes and stops at the log limit (:class:`LogMeter`), a watch on the size of ``/outputs`` (and
of a host ``/work``) (:class:`DiskWatch`), and the supervision loop itself (:func:`supervise`).
Spawning a job's process and probing its control group: :mod:`.common`.

An executor never raises for anything the job does: a job that breaks a limit, crashes or runs
too long ends with a :class:`StopReason` and a detail a user can act on. :class:`ExecutorError`
is for faults on the provider's side (missing directories, a spec for another executor).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from qoin.compute.executors.tree import prune, tree_usage
from qoin.compute.jobspec import Executor, JobSpec
from qoin.errors import QoinError

TICK_S = 0.02
"""How often the supervision loop looks at a running job."""
DISK_EVERY_S = 0.1
"""The least time between two walks of ``/outputs`` (longer when a walk takes long)."""
READ_CHUNK = 64 * 1024
"""Bytes read from a job's stdout or stderr at a time."""
READER_JOIN_S = 5.0
"""How long the output readers may take to finish once a job's processes are gone."""
WORK_ENTRY_BYTES = 4096
"""Bytes each entry of a host ``/work`` (wasm) counts for against its bound: an inode and a
block on the provider's disk, as a tmpfs charges memory for each (so a job cannot fill the
disk with empty files)."""
DETAIL_TAIL = 1024
"""Bytes of the end of stderr kept for the detail of a job that could not start."""
INPUT_COPIES = ".qoin-input-copies"
"""The directory of ``JobDirs.root`` that holds copies of inputs (:func:`readable_inputs`)."""
JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` inside a job, unless its spec sets one."""
JOB_UID = 65534
"""The user (and group) a job runs as (``nobody``): in the sandbox, inside and (when the
provider is root) outside; in a docker container."""


class ExecutorError(QoinError):
    """A fault on the provider's side (not the job's): missing job directories, a spec meant for
    another executor."""


class StopReason(StrEnum):
    """Why a run ended; shown to the client verbatim."""

    EXITED = "exited"
    """The job exited by itself (any exit code)."""
    TIMEOUT = "timeout"
    """It ran past ``spec.timeout`` seconds (wall clock)."""
    MEMORY = "memory"
    """It broke its memory limit (``spec.resources.memory``)."""
    PROCESSES = "processes"
    """It reached the process/thread limit."""
    OUTPUT = "output-limit"
    """``/outputs`` over ``spec.outputs.max_bytes`` or ``max_files`` (or a disk limit)."""
    LOG = "log-limit"
    """stdout + stderr over ``spec.outputs.max_log_bytes``."""
    FUEL = "fuel"
    """wasm: its fuel ran out."""
    CANCELLED = "cancelled"
    """The provider stopped it."""
    FAILED = "failed"
    """The executor could not start it (the reason in the detail)."""


@dataclass(frozen=True)
class JobDirs:
    """Where a job's files live on the provider."""

    root: Path
    """The job's private directory (provider-owned)."""
    inputs: tuple[tuple[Path, str], ...]
    """(host file, absolute path inside the job, e.g. ``/inputs/x``)."""
    work: Path
    """``/work``: writable scratch and the working directory (wasm: this directory; sandbox and
    docker: a size-bounded tmpfs in memory, so this directory stays empty)."""
    outputs: Path
    """``/outputs``: writable; the only thing kept."""
    runtime: Path | None = None
    """The directory of the runtime ``spec.runtime`` names, seen read-only at ``/runtime``
    (sandbox only); None when the spec names none."""
    gpus: tuple[int, ...] | None = None
    """The GPUs assigned to the job (their device numbers, ``/dev/nvidia<i>``): the sandbox
    binds only those (a provider assigns each running job its own, :class:`qoin.compute.provider.
    jobs.GpuPool`); None: none assigned (a run on one's own machine: the first
    ``spec.resources.gpus`` of the machine's)."""


@dataclass(frozen=True)
class RunResult:
    """What a run reports."""

    reason: StopReason
    exit_code: int | None
    """The job's exit status (128 + the signal if a signal killed it); None unless it exited
    or was killed."""
    detail: str
    """A human reason, e.g. ``memory limit of 268435456 bytes reached``."""
    cpu_seconds: float
    """CPU time the job used (user + system)."""
    wall_seconds: float
    """Run time, from the job's first instruction to its end."""
    start_seconds: float
    """The executor's start overhead (sandbox, container or module set-up)."""
    pull_seconds: float = 0.0
    """docker: time to pull the image (not counted in the timeout)."""
    fuel: int | None = None
    """wasm: the fuel the module consumed (exact)."""
    log_bytes: int = 0
    """Bytes of stdout and stderr passed to ``on_output``."""


OnOutput = Callable[[str, bytes], None]
"""Called with ``("stdout" | "stderr", chunk)`` as a job's output arrives."""


class JobExecutor(Protocol):
    """One way to run a job (sandbox, wasm, docker)."""

    kind: Executor

    def problem(self) -> str | None:
        """Why it cannot run jobs on this machine (None: it can)."""
        ...

    def run(
        self, spec: JobSpec, dirs: JobDirs, on_output: OnOutput, cancel: threading.Event
    ) -> RunResult:
        """Run ``spec`` in ``dirs`` until it ends, breaks a limit, times out or ``cancel`` is
        set; stdout and stderr go only to ``on_output``."""
        ...


@dataclass(frozen=True)
class HostLimits:
    """Limits of the provider's, not the spec's (the same for every job it runs)."""

    max_processes: int = 1024
    """Processes and threads a job may have at once."""
    max_open_files: int = 1024
    """Files a job's process may have open at once."""


class CheckOnce:
    """An executor's :meth:`JobExecutor.problem` for a check made once (at the first ask, by
    one thread) and remembered."""

    def __init__(self, check: Callable[[], str | None]) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._checked = False
        self._problem: str | None = None

    def __call__(self) -> str | None:
        with self._lock:
            if not self._checked:
                self._problem = self._check()
                self._checked = True
            return self._problem


def refusal(executor: JobExecutor, spec: JobSpec, dirs: JobDirs) -> RunResult | None:
    """What :meth:`JobExecutor.run` answers before running anything: :class:`ExecutorError`
    unless ``spec`` is for ``executor`` and ``dirs`` are there (:func:`check_dirs`); a failed
    result if ``executor`` cannot run here; None if it may run the job."""
    check_dirs(spec, dirs, executor.kind)
    problem = executor.problem()
    return None if problem is None else failed(problem)


def failed(detail: str, start_seconds: float = 0.0, pull_seconds: float = 0.0) -> RunResult:
    """The result of a job that could not be started."""
    return RunResult(
        StopReason.FAILED, None, detail, 0.0, 0.0, start_seconds, pull_seconds=pull_seconds
    )


def check_dirs(spec: JobSpec, dirs: JobDirs, kind: Executor) -> None:
    """:class:`ExecutorError` unless ``spec`` is for ``kind`` and every directory and input of
    ``dirs`` is there."""
    if spec.executor is not kind:
        raise ExecutorError(
            f"a {spec.executor.name.lower()} job given to the {kind.name.lower()} executor"
        )
    for what, path in (("root", dirs.root), ("work", dirs.work), ("outputs", dirs.outputs)):
        if not path.is_dir():
            raise ExecutorError(f"the job's {what} directory {path} is missing")
    if spec.runtime and dirs.runtime is None:
        raise ExecutorError(f"the job names runtime {spec.runtime} but no runtime was given")
    if dirs.runtime is not None:
        if not spec.runtime:
            raise ExecutorError("a runtime directory given for a job that names no runtime")
        if not dirs.runtime.is_dir():
            raise ExecutorError(f"the runtime directory {dirs.runtime} is missing")
    wanted = {item.path for item in spec.inputs}
    given = {inside for _, inside in dirs.inputs}
    if wanted != given:
        raise ExecutorError(
            f"the staged inputs {sorted(given)} are not the spec's {sorted(wanted)}"
        )
    for host, inside in dirs.inputs:
        if not host.is_file():
            raise ExecutorError(f"input {inside}: the staged file {host} is missing")


def readable_inputs(dirs: JobDirs) -> JobDirs:
    """``dirs`` with each input that other users cannot read (the job runs as another user,
    uid 65534) replaced by a read-only copy in a private directory of ``dirs.root`` (mode 0700:
    the job reaches the copy only through its own mounts). A file the executor is given is
    never changed, its mode neither: a private file of the user's (``qoin compute local``) must
    not become readable by everyone. :func:`drop_copies` removes the copies."""
    if all(host.stat().st_mode & 0o004 for host, _ in dirs.inputs):
        return dirs
    place = dirs.root / INPUT_COPIES
    with contextlib.suppress(FileExistsError):
        place.mkdir(mode=0o700)
    if place.is_symlink() or not place.is_dir():
        raise ExecutorError(f"{place} is not a directory")
    place.chmod(0o700)
    inputs = []
    for index, (host, inside) in enumerate(dirs.inputs):
        given = host
        if not host.stat().st_mode & 0o004:
            given = place / str(index)
            shutil.copyfile(host, given)
            given.chmod(0o444)
        inputs.append((given, inside))
    return replace(dirs, inputs=tuple(inputs))


def drop_copies(dirs: JobDirs) -> None:
    """Remove the copies :func:`readable_inputs` made (if any)."""
    shutil.rmtree(dirs.root / INPUT_COPIES, ignore_errors=True)


def job_env(spec: JobSpec) -> dict[str, str]:
    """The environment a job sees: a fixed base (``PATH``, ``HOME=/work``, ``TMPDIR=/work``,
    ``LANG=C.UTF-8``) under the spec's own variables (the same on every provider)."""
    env = {"PATH": JOB_PATH, "HOME": "/work", "TMPDIR": "/work", "LANG": "C.UTF-8"}
    env.update(dict(spec.env))
    return env


def exit_detail(code: int) -> str:
    """``exited with status N`` or ``killed by SIGX`` for an exit status (128 + signal)."""
    if code > 128:
        with contextlib.suppress(ValueError):
            name = signal.Signals(code - 128).name
            extra = " (a file reached the size limit)" if name == "SIGXFSZ" else ""
            return f"killed by {name} (status {code}){extra}"
    return f"exited with status {code}"


class LogMeter:
    """Forwards a job's stdout and stderr to ``on_output`` as it comes, counting bytes; once the
    total would pass ``limit`` it forwards only up to the limit and marks itself
    :attr:`over`. Thread-safe (one reader thread per stream)."""

    def __init__(self, on_output: OnOutput, limit: int) -> None:
        self._on_output = on_output
        self.limit = limit
        """Bytes of stdout and stderr together the job may write."""
        self._lock = threading.Lock()
        self.total = 0
        """Bytes forwarded."""
        self.over = threading.Event()
        """Set once the job wrote more than the limit."""
        self.stderr_tail = b""
        """The last :data:`DETAIL_TAIL` bytes of stderr (for a detail)."""
        self.failure: BaseException | None = None
        """An exception ``on_output`` raised (the job is then stopped as cancelled)."""

    def feed(self, stream: str, chunk: bytes) -> None:
        """Forward ``chunk`` (or the part of it within the limit)."""
        with self._lock:
            room = self.limit - self.total
            if len(chunk) > room:
                chunk = chunk[: max(room, 0)]
                self.over.set()
            self.total += len(chunk)
            if stream == "stderr":
                self.stderr_tail = (self.stderr_tail + chunk)[-DETAIL_TAIL:]
            if chunk and self.failure is None:
                try:
                    self._on_output(stream, chunk)
                except Exception as exc:  # the provider's callback: stop the job, say why
                    self.failure = exc

    def pump(self, fd: int, stream: str) -> threading.Thread:
        """Start a thread that feeds what ``fd`` carries until its end, then closes it."""

        def read() -> None:
            try:
                while True:
                    try:
                        chunk = os.read(fd, READ_CHUNK)
                    except OSError:
                        return
                    if not chunk:
                        return
                    if not self.over.is_set():
                        self.feed(stream, chunk)
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)

        thread = threading.Thread(target=read, name=f"job {stream}", daemon=True)
        thread.start()
        return thread


class DiskWatch:
    """Watches ``/outputs`` against the spec's output limits, and optionally a host ``/work``
    against a byte bound (each entry counting :data:`WORK_ENTRY_BYTES`). :meth:`over` walks the
    trees (at most every :data:`DISK_EVERY_S`, or ten times the last walk's duration) and names
    what is over, or a rule broken (:func:`~qoin.compute.executors.tree.tree_usage`: a path
    longer than :data:`~qoin.compute.executors.tree.MAX_TREE_PATH` bytes, a directory the
    provider cannot read); :meth:`settle` gives the final word once the job has ended."""

    def __init__(
        self,
        outputs: Path,
        max_bytes: int,
        max_files: int,
        work: Path | None = None,
        work_bytes: int = 0,
    ) -> None:
        self.outputs = outputs
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.work = work
        self.work_bytes = work_bytes
        self._next = 0.0
        self._truncated = False
        self._settled: tuple[str | None] | None = None

    def over(self, force: bool = False) -> str | None:
        """A detail if ``/outputs`` (or ``/work``) is over its limit or breaks a rule, else
        None; without ``force`` the walk is skipped when the last one was too recent."""
        now = time.monotonic()
        if not force and now < self._next:
            return None
        used = tree_usage(self.outputs, self.max_bytes, self.max_files)
        self._truncated = used.truncated
        detail: str | None = None
        if used.problem is not None:
            detail = f"/outputs {used.problem}"
        elif used.size > self.max_bytes:
            detail = f"/outputs passed the output limit of {self.max_bytes} bytes"
        elif used.entries > self.max_files:
            detail = f"/outputs passed the limit of {self.max_files} files"
        elif self.work is not None:
            scratch = tree_usage(self.work, self.work_bytes, None, entry_bytes=WORK_ENTRY_BYTES)
            self._truncated = scratch.truncated
            if scratch.problem is not None:
                detail = f"/work {scratch.problem}"
            elif scratch.size > self.work_bytes:
                detail = (
                    f"/work passed its limit of {self.work_bytes} bytes "
                    f"(each entry counting {WORK_ENTRY_BYTES})"
                )
        spent = time.monotonic() - now
        self._next = time.monotonic() + max(DISK_EVERY_S, 10 * spent)
        return detail

    def settle(self) -> str | None:
        """Once every process of the job has ended: the trees walked a last time (the detail
        of what is over, as :meth:`over`), and, if that walk stopped early, every path longer
        than :data:`~qoin.compute.executors.tree.MAX_TREE_PATH` bytes removed (it can be no
        result, and nothing downstream has to meet a tree deeper than ``PATH_MAX``). Walks
        once; later calls give the same answer."""
        if self._settled is None:
            detail = self.over(force=True)
            if self._truncated or detail is not None:
                for tree in (self.outputs, self.work):
                    if tree is not None:
                        prune(tree)
            self._settled = (detail,)
        return self._settled[0]


Probe = Callable[[], tuple[StopReason, str] | None]
"""A check run at every tick: a reason to stop the job now, or None."""


def supervise(
    done: Callable[[], bool],
    deadline: float,
    timeout: int,
    cancel: threading.Event,
    meter: LogMeter,
    disk: DiskWatch,
    probes: tuple[Probe, ...] = (),
) -> tuple[StopReason, str] | None:
    """Watch a running job until ``done()`` or a reason to stop it: ``cancel`` set, the wall
    ``deadline`` (a ``time.monotonic()``) passed, the log limit passed, ``/outputs`` over its
    limits, or a probe's reason. The reason and its detail, or None if the job ended first."""
    while not done():
        reason = _stop_reason(deadline, timeout, cancel, meter, disk, probes)
        if reason is not None:
            return reason
        cancel.wait(TICK_S)
    return None


def _stop_reason(
    deadline: float,
    timeout: int,
    cancel: threading.Event,
    meter: LogMeter,
    disk: DiskWatch,
    probes: tuple[Probe, ...],
) -> tuple[StopReason, str] | None:
    found = _cancelled(cancel, meter) or _limit_broken(meter, probes)
    if found is None and time.monotonic() >= deadline:
        found = StopReason.TIMEOUT, f"ran past its timeout of {timeout} s"
    if found is None:
        over = disk.over()
        found = (StopReason.OUTPUT, over) if over is not None else None
    return found


def _cancelled(cancel: threading.Event, meter: LogMeter) -> tuple[StopReason, str] | None:
    if cancel.is_set():
        return StopReason.CANCELLED, "stopped by the provider"
    if meter.failure is not None:
        return StopReason.CANCELLED, f"stopped: forwarding its output failed ({meter.failure!r})"
    return None


def _limit_broken(meter: LogMeter, probes: tuple[Probe, ...]) -> tuple[StopReason, str] | None:
    """A probe's reason, or the log limit passed."""
    for probe in probes:
        found = probe()
        if found is not None:
            return found
    if meter.over.is_set():
        return StopReason.LOG, f"stdout and stderr passed the log limit of {meter.limit} bytes"
    return None


def final_reason(
    stopped: tuple[StopReason, str] | None,
    code: int | None,
    meter: LogMeter,
    disk: DiskWatch,
    probes: tuple[Probe, ...] = (),
) -> tuple[StopReason, str]:
    """The reason a job that has ended ended: ``output-limit`` if ``/outputs`` is over its
    limits now that it has ended (walked once more: a result never holds more than its limits,
    whatever stopped the job); else the reason it was stopped for; else a limit it broke on its
    way out (a probe's, the log limit); else it exited with ``code``."""
    found = stopped or _limit_broken(meter, probes)
    over = disk.settle()
    if over is not None and (found is None or found[0] is not StopReason.OUTPUT):
        found = (StopReason.OUTPUT, over)
    if found is None:
        found = (
            StopReason.EXITED,
            exit_detail(code) if code is not None else "ended without an exit status",
        )
    return found
