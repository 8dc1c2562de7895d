"""What the executors share beyond :mod:`.base`: a job's process spawned with its output metered
(:class:`ChildFds`, for the sandbox's bubblewrap and the wasm worker), the rlimits and the
set-up between fork and exec it gets (:func:`job_rlimits`, :func:`child_setup`), a report pipe
read without waiting (:func:`read_pipe`), and the probes of a job's control group
(:func:`cgroup_probes`, for the sandbox and docker).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qoin.compute.executors import cgroups
from qoin.compute.executors.base import HostLimits, LogMeter, Probe, StopReason
from qoin.compute.jobspec import JobSpec
from qoin.process import lifeline, on_lasting_thread

PIPE_CHUNK = 4096
"""Bytes read from a report pipe at a time."""


def max_file_size(spec: JobSpec) -> int:
    """The largest file a job may write (``RLIMIT_FSIZE``, docker's ``fsize``): one byte more
    than its outputs or its memory may hold."""
    return max(spec.outputs.max_bytes, spec.resources.memory) + 1


def job_rlimits(spec: JobSpec, limits: HostLimits, cpu_slack: int) -> list[tuple[int, int]]:
    """The rlimits every job's process gets: :func:`max_file_size`, the host's open files, no
    core files, and ``cpus * timeout + cpu_slack`` seconds of CPU."""
    return [
        (resource.RLIMIT_FSIZE, max_file_size(spec)),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, spec.resources.cpus * spec.timeout + cpu_slack),
    ]


def child_setup(
    join_fds: list[int],
    rlimits: list[tuple[int, int]],
    then: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """What a job's process does between fork and exec: join its control group (``join_fds``:
    :meth:`cgroups.JobCgroup.procs_fds`), set ``rlimits``, run ``then`` (C calls only), and take
    a lifeline last (SIGKILL when this process dies; a change of user clears it)."""
    parent = os.getpid()

    def setup() -> None:
        cgroups.join(join_fds)
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))
        if then is not None:
            then()
        lifeline(parent, signal.SIGKILL)

    return setup


@dataclass
class Spawned:
    """A job's process, just spawned."""

    proc: subprocess.Popen[bytes]
    readers: list[threading.Thread]
    """The threads feeding its stdout and stderr to the meter."""
    spawned_at: float
    """``time.monotonic()`` right after the spawn."""


class ChildFds:
    """The descriptors of a process about to be spawned: :attr:`given` (the child's ends, closed
    here once it has them) and :attr:`kept` (ours once it runs). Use as a context manager: on
    leaving it the given ones are closed, and the kept ones too unless :meth:`spawn` succeeded
    (then they are the caller's)."""

    def __init__(self) -> None:
        self.given: list[int] = []
        self.kept: list[int] = []

    def __enter__(self) -> ChildFds:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.kept:
            os.close(fd)
        self.kept.clear()
        self._close_given()

    def _close_given(self) -> None:
        for fd in self.given:
            os.close(fd)
        self.given.clear()

    def pipe(self, *, child_reads: bool = False) -> tuple[int, int]:
        """A pipe (read end, write end); the child's end is the write end, or the read end if
        ``child_reads``."""
        read, write = os.pipe()
        self.given.append(read if child_reads else write)
        self.kept.append(write if child_reads else read)
        return read, write

    def give(self, fds: list[int]) -> list[int]:
        """``fds``, opened for the child (closed here once it has them)."""
        self.given.extend(fds)
        return fds

    def spawn(
        self,
        argv: Sequence[str],
        meter: LogMeter,
        *,
        setup: Callable[[], None],
        env: dict[str, str],
        stdin: int = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
    ) -> Spawned:
        """Spawn ``argv`` in a session of its own (``setup`` between fork and exec), its stdout
        and stderr fed to ``meter`` as they come."""
        out_read, out_write = self.pipe()
        err_read, err_write = self.pipe()

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(  # noqa: S603 (our own command: bubblewrap, the worker)
                argv,
                stdin=stdin,
                stdout=out_write,
                stderr=err_write,
                pass_fds=pass_fds,
                env=env,
                start_new_session=True,
                preexec_fn=setup,  # noqa: PLW1509 (C calls only, no lock taken)
            )

        proc = on_lasting_thread(start)
        spawned = time.monotonic()
        self.kept.clear()  # the caller's now (and the readers')
        self._close_given()
        readers = [meter.pump(out_read, "stdout"), meter.pump(err_read, "stderr")]
        return Spawned(proc, readers, spawned)


def exit_status(returncode: int) -> int:
    """A process's exit status, 128 + the signal if a signal killed it."""
    return 128 - returncode if returncode < 0 else returncode


def read_pipe(fd: int, limit: int) -> bytes | None:
    """What the pipe ``fd`` holds now (its writer is gone), at most ``limit`` bytes, without
    waiting; None if it cannot be read. Closes ``fd``."""
    chunks: list[bytes] = []
    size = 0
    try:
        os.set_blocking(fd, False)
        while size < limit:
            try:
                chunk = os.read(fd, min(PIPE_CHUNK, limit - size))
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return b"".join(chunks)


def memory_killed(memory: int) -> tuple[StopReason, str]:
    """The reason of a job killed out of memory at its limit of ``memory`` bytes."""
    return StopReason.MEMORY, f"memory limit of {memory} bytes reached (out-of-memory kill)"


def cgroup_probes(
    group: cgroups.JobCgroup | None,
    memory: int,
    processes: int,
    enforced: frozenset[str] | None = None,
) -> tuple[Probe, ...]:
    """Probes of a job's control group: an out-of-memory kill in it is ``memory``, a fork
    refused at its process limit ``processes`` (only for the controllers in ``enforced``; None:
    both). None for no group."""
    if group is None:
        return ()

    def oom() -> tuple[StopReason, str] | None:
        if (enforced is None or "memory" in enforced) and group.oom_kills() > 0:
            return memory_killed(memory)
        return None

    def pids() -> tuple[StopReason, str] | None:
        if (enforced is None or "pids" in enforced) and group.pids_limit_hits() > 0:
            return (
                StopReason.PROCESSES,
                f"process limit of {processes} processes and threads reached",
            )
        return None

    return (oom, pids)
