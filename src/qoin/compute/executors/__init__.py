"""The compute market's job executors (docs/spec/compute.md §4): one interface
(:class:`~qoin.compute.executors.base.JobExecutor`), three implementations: ``sandbox``
(bubblewrap, the default), ``wasm`` (wasmtime + WASI with fuel) and ``docker`` (a Docker Engine,
the image pinned by digest)."""

from __future__ import annotations

import threading

from qoin.compute.executors.base import (
    ExecutorError,
    HostLimits,
    JobDirs,
    JobExecutor,
    OnOutput,
    RunResult,
    StopReason,
)
from qoin.compute.jobspec import Executor

__all__ = [
    "ExecutorError",
    "HostLimits",
    "JobDirs",
    "JobExecutor",
    "OnOutput",
    "RunResult",
    "StopReason",
    "available",
    "executor_for",
]

_made: dict[Executor, JobExecutor] = {}
_lock = threading.Lock()


def executor_for(kind: Executor) -> JobExecutor:
    """This process's executor of ``kind`` (made once, with the default host limits; the docker
    one talks to ``$DOCKER_HOST`` or ``/var/run/docker.sock``)."""
    with _lock:
        made = _made.get(kind)
        if made is None:
            made = _make(kind)
            _made[kind] = made
        return made


def _make(kind: Executor) -> JobExecutor:
    if kind is Executor.SANDBOX:
        from qoin.compute.executors.sandbox import SandboxExecutor  # noqa: PLC0415

        return SandboxExecutor()
    if kind is Executor.WASM:
        from qoin.compute.executors.wasm import WasmExecutor  # noqa: PLC0415

        return WasmExecutor()
    from qoin.compute.executors.docker import DockerExecutor  # noqa: PLC0415

    return DockerExecutor()


def available() -> dict[Executor, str | None]:
    """Each executor kind -> None if it can run jobs here, else why not."""
    return {kind: executor_for(kind).problem() for kind in Executor}
