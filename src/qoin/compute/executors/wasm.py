"""The ``wasm`` executor: a WebAssembly module (WASI preview 1) run by wasmtime with fuel
(docs/spec/compute.md §4.3).

``spec.command[0]`` is the module's path inside the job (one of its inputs, e.g.
``/inputs/prog.wasm``); the whole command is its ``argv``, ``spec.env`` (over the executors'
base environment) its environment. The module sees, as WASI preopened directories, in this order
(file descriptors 3, 4, 5, ...): ``/outputs`` and ``/work`` (writable; ``/work`` is the job's
work directory on the provider, bounded to ``spec.resources.memory`` bytes), then the directory
of each input (read-only, sorted by path; an input directly in ``/work`` is copied there
instead). Nothing else of the provider's file system exists for it, and WASI preview 1 has no
way to open a socket: a module has no network whatever ``spec.network`` says.

Limits:

* **fuel**: wasmtime counts the operators a module executes; a job gets
  :data:`FUEL_PER_SECOND` fuel per second of its timeout (about a second of one modern core's
  time per 10^9), ends with ``fuel`` when it runs out, and the fuel it used is reported exactly
  (:attr:`RunResult.fuel`);
* **time**: an epoch deadline interrupts the module at ``spec.timeout`` seconds of running;
  the worker process is killed if it is still there :data:`GRACE_S` seconds later (module
  compilation included);
* **memory**: the store refuses to grow a linear memory past ``spec.resources.memory`` bytes; a
  module that then fails (traps or exits non-zero) with its memory at the limit ends with
  ``memory``. The worker process itself is in a control group with that much memory plus
  :data:`RUNTIME_MEMORY` for the runtime, when the machine has cgroups;
* ``/outputs`` and ``/work`` are watched as for the sandbox, files bounded by ``RLIMIT_FSIZE``
  (a write past it fails with ``EFBIG`` for the module); stdout + stderr against the log limit.

The module runs in a worker process (``python -m qoin.compute.executors.wasm``), so a crash or a
runaway of the runtime cannot take the provider down; the worker writes the module's stdout and
stderr to its own, which the provider reads as they come, and its report (exit, trap, fuel, the
memory's size, times) as JSON on a pipe.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qoin.compute.executors import cgroups
from qoin.compute.executors.base import (
    READER_JOIN_S,
    CheckOnce,
    DiskWatch,
    HostLimits,
    JobDirs,
    LogMeter,
    OnOutput,
    RunResult,
    StopReason,
    exit_detail,
    failed,
    final_reason,
    job_env,
    refusal,
    supervise,
)
from qoin.compute.executors.common import (
    ChildFds,
    child_setup,
    exit_status,
    job_rlimits,
    read_pipe,
)
from qoin.compute.jobspec import Executor, JobSpec

FUEL_PER_SECOND = 1_000_000_000
"""Fuel per second of a job's timeout."""
GRACE_S = 30.0
"""Seconds past the timeout the worker may take (starting, compiling, reporting) before it is
killed."""
RUNTIME_MEMORY = 256 << 20
"""Bytes of the worker's memory allowed for the runtime itself, on top of the module's."""
WORKER_PIDS = 64
"""Threads of the worker (the runtime's own and its compiler's)."""
MAX_TABLES = 8
"""Tables a module may have (a module made by a usual toolchain has one)."""
MAX_TABLE_ELEMENTS = 1 << 20
"""Elements a table may grow to (8 bytes each: 8 MiB). With one linear memory of at most
``spec.resources.memory`` bytes, a module's own memory is bounded whether or not the machine has
cgroups (without a limit a module could declare many memories, or grow a table, far past it)."""
PAGE = 65536
"""Bytes of a WebAssembly memory page."""
MAX_REPORT = 64 * 1024
MAX_CONFIG = 4 << 20
TRAP_EXIT = 134
"""The exit status reported for a module that trapped (as wasmtime's own command line does:
128 + SIGABRT)."""
KILL_WAIT_S = 5.0
STOP_WAIT_S = 2.0
"""How long an interrupted module may take to end before its worker is killed."""
WORKER = Path(__file__).with_name("wasm_worker.py")
"""The worker, run as a script (it imports only the standard library and wasmtime)."""
PROBE_WAT = '(module (func (export "_start")))'


@dataclass
class _Worker:
    """A running worker and what the provider holds of it."""

    proc: subprocess.Popen[bytes]
    report_fd: int
    control_fd: int
    readers: list[threading.Thread]
    spawned_at: float

    def stop(self, group: cgroups.JobCgroup | None) -> None:
        """Interrupt the module (a byte on the worker's stdin); kill the worker if it has not
        ended within :data:`STOP_WAIT_S`."""
        with contextlib.suppress(OSError):
            os.write(self.control_fd, b"x")
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            if group is not None:
                group.kill()

    def wait(self, group: cgroups.JobCgroup | None) -> int:
        """Its exit status, once it and its output readers are done."""
        try:
            code = self.proc.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.control_fd)
        if group is not None:
            group.kill()
        for reader in self.readers:
            reader.join(READER_JOIN_S)
        return exit_status(code)


@dataclass(frozen=True)
class Preopen:
    """A directory the module sees."""

    host: str
    guest: str
    writable: bool


class WasmExecutor:
    """Runs WASI modules with wasmtime (see the module docstring)."""

    kind = Executor.WASM

    def __init__(self, limits: HostLimits | None = None, *, use_cgroups: bool = True) -> None:
        self.limits = limits or HostLimits()
        self.use_cgroups = use_cgroups
        self._checked = CheckOnce(self._check)

    def problem(self) -> str | None:
        """Why wasm jobs cannot run here (checked once: wasmtime installed and a trivial module
        run in a worker)."""
        return self._checked()

    def _check(self) -> str | None:
        if importlib.util.find_spec("wasmtime") is None:
            return "wasmtime is not installed (pip install wasmtime)"
        import wasmtime  # noqa: PLC0415 (only where wasm jobs run)

        with tempfile.TemporaryDirectory(prefix="qoin-wasm-probe-") as tmp:
            root = Path(tmp)
            (root / "work").mkdir()
            (root / "outputs").mkdir()
            (root / "probe.wasm").write_bytes(wasmtime.wat2wasm(PROBE_WAT))
            dirs = JobDirs(
                root, ((root / "probe.wasm", "/probe.wasm"),), root / "work", root / "outputs"
            )
            spec = JobSpec(Executor.WASM, ("/probe.wasm",), timeout=30)
            said: list[bytes] = []
            result = self._execute(
                spec, dirs, lambda _stream, chunk: said.append(chunk), threading.Event()
            )
        if result.reason is not StopReason.EXITED or result.exit_code != 0:
            output = b"".join(said).decode("utf-8", "replace")[-300:]
            return f"the wasm runtime does not run here ({result.detail}) {output}".strip()
        return None

    def run(
        self, spec: JobSpec, dirs: JobDirs, on_output: OnOutput, cancel: threading.Event
    ) -> RunResult:
        """Run the module of ``spec`` (never raises for what the module does)."""
        return refusal(self, spec, dirs) or self._execute(spec, dirs, on_output, cancel)

    def _execute(
        self, spec: JobSpec, dirs: JobDirs, on_output: OnOutput, cancel: threading.Event
    ) -> RunResult:
        began = time.monotonic()
        inputs = {inside: host for host, inside in dirs.inputs}
        module = inputs.get(spec.command[0])
        if module is None:
            return failed(
                f"the module {spec.command[0]!r} is not one of the job's inputs "
                f"({', '.join(sorted(inputs)) or 'none'}): the first argument of a wasm job "
                "names its module"
            )
        stage = Path(tempfile.mkdtemp(prefix="wasm-", dir=dirs.root))
        group: cgroups.JobCgroup | None = None
        try:
            config = {
                "module": str(module),
                "argv": list(spec.command),
                "env": sorted(job_env(spec).items()),
                "preopens": [
                    [item.host, item.guest, item.writable] for item in _preopens(dirs, stage)
                ],
                "fuel": FUEL_PER_SECOND * spec.timeout,
                "memory": spec.resources.memory,
                "tables": MAX_TABLES,
                "table_elements": MAX_TABLE_ELEMENTS,
                "timeout": spec.timeout,
            }
            config_path = stage / "config.json"
            config_path.write_text(json.dumps(config))
            if self.use_cgroups:
                limits = cgroups.CgroupLimits(
                    spec.resources.memory + RUNTIME_MEMORY, WORKER_PIDS, spec.resources.cpus
                )
                group = cgroups.JobCgroup.create(limits, prefix="qoin-wasm")
            meter = LogMeter(on_output, spec.outputs.max_log_bytes)
            disk = DiskWatch(
                dirs.outputs,
                spec.outputs.max_bytes,
                spec.outputs.max_files,
                dirs.work,
                spec.resources.memory,
            )
            try:
                worker = self._spawn(spec, config_path, group, meter)
            except OSError as exc:
                return failed(f"the wasm worker could not be started: {exc}")
            deadline = worker.spawned_at + spec.timeout + GRACE_S
            proc = worker.proc
            stopped = supervise(
                lambda: proc.poll() is not None, deadline, spec.timeout, cancel, meter, disk
            )
            if stopped is not None:
                worker.stop(group)
            code = worker.wait(group)
            ended = time.monotonic()
            report = _read_report(worker.report_fd)
            outcome = _Outcome(report, code, stopped, group, ended)
            return outcome.result(spec, meter, disk, began)
        finally:
            if group is not None:
                group.close()
            shutil.rmtree(stage, ignore_errors=True)

    def _spawn(
        self,
        spec: JobSpec,
        config: Path,
        group: cgroups.JobCgroup | None,
        meter: LogMeter,
    ) -> _Worker:
        with ChildFds() as fds:
            report_read, report_write = fds.pipe()
            control_read, control_write = fds.pipe(child_reads=True)
            join_fds = fds.give(group.procs_fds()) if group is not None else []
            rlimits = job_rlimits(spec, self.limits, cpu_slack=int(GRACE_S))
            argv = [sys.executable, "-I", str(WORKER), str(config), str(report_write)]
            spawned = fds.spawn(
                argv,
                meter,
                setup=child_setup(join_fds, rlimits),
                env={"PATH": os.environ.get("PATH", "")},
                stdin=control_read,
                pass_fds=[report_write],
            )
        return _Worker(
            spawned.proc, report_read, control_write, spawned.readers, spawned.spawned_at
        )


def _preopens(dirs: JobDirs, stage: Path) -> list[Preopen]:
    """The module's directories: ``/outputs``, ``/work``, then each input's directory (its
    files hard-linked, or copied, into a directory of ``stage``)."""
    found = [Preopen(str(dirs.outputs), "/outputs", True), Preopen(str(dirs.work), "/work", True)]
    by_dir: dict[str, list[tuple[Path, str]]] = {}
    for host, inside in dirs.inputs:
        by_dir.setdefault(posixpath.dirname(inside), []).append((host, posixpath.basename(inside)))
    for index, guest in enumerate(sorted(by_dir)):
        if guest == "/work":
            for host, name in by_dir[guest]:
                shutil.copyfile(host, dirs.work / name)
            continue
        place = stage / f"inputs-{index}"
        place.mkdir()
        for host, name in by_dir[guest]:
            try:
                os.link(host, place / name)
            except OSError:
                shutil.copyfile(host, place / name)
        found.append(Preopen(str(place), guest, False))
    return found


def _read_report(fd: int) -> dict[str, Any]:
    """The worker's reports merged (empty if it wrote none); closes ``fd``."""
    said = read_pipe(fd, MAX_REPORT)
    merged: dict[str, Any] = {}
    for line in (said or b"").splitlines():
        with contextlib.suppress(ValueError):
            found = json.loads(line)
            if isinstance(found, dict):
                merged.update(found)
    return merged


@dataclass(frozen=True)
class _Outcome:
    """A finished worker: its report, exit status, why it was stopped."""

    report: dict[str, Any]
    code: int
    stopped: tuple[StopReason, str] | None
    group: cgroups.JobCgroup | None
    ended: float

    def result(self, spec: JobSpec, meter: LogMeter, disk: DiskWatch, began: float) -> RunResult:
        """Classify it (see the module docstring)."""
        report = self.report
        started = _number(report.get("started"), self.ended)
        start_seconds = max(started - began, 0.0)
        why = self._why(spec, meter, disk)
        over = disk.settle()  # also if it failed: the module may have run (a runtime crash)
        if isinstance(why, str):
            return failed(why, start_seconds)
        if over is not None and why[0] is not StopReason.OUTPUT:  # never more than the limits
            why = StopReason.OUTPUT, None, over
        measured = self.group.cpu_seconds() if self.group is not None else None
        fuel = report.get("fuel")
        return RunResult(
            *why,
            cpu_seconds=_number(report.get("cpu"), measured or 0.0),
            wall_seconds=max(_number(report.get("ended"), self.ended) - started, 0.0),
            start_seconds=start_seconds,
            fuel=fuel if isinstance(fuel, int) else None,
            log_bytes=meter.total,
        )

    def _why(
        self, spec: JobSpec, meter: LogMeter, disk: DiskWatch
    ) -> tuple[StopReason, int | None, str] | str:
        """(reason, exit code, detail), or why the module could not run."""
        if self.stopped is not None:
            return self.stopped[0], None, self.stopped[1]
        if self.group is not None and self.group.oom_kills() > 0:
            memory = spec.resources.memory
            return (
                StopReason.MEMORY,
                None,
                f"memory limit of {memory} bytes reached (the runtime was killed)",
            )
        if self.report.get("status") not in ("exit", "trap"):
            ended = f"the worker ended without a report ({exit_detail(self.code)})"
            return f"the module could not be run: {self.report.get('message', ended)}"
        return self._ended_itself(spec, meter, disk)

    def _ended_itself(
        self, spec: JobSpec, meter: LogMeter, disk: DiskWatch
    ) -> tuple[StopReason, int | None, str]:
        report, memory = self.report, spec.resources.memory
        trap = str(report.get("trap", "")) if report.get("status") == "trap" else ""
        if trap == "OUT_OF_FUEL":
            budget = FUEL_PER_SECOND * spec.timeout
            return (
                StopReason.FUEL,
                None,
                f"ran out of its fuel ({budget}: {FUEL_PER_SECOND} per second of its timeout)",
            )
        if trap == "INTERRUPT":
            return StopReason.TIMEOUT, None, f"ran past its timeout of {spec.timeout} s"
        code = int(report.get("code", 0)) if report.get("status") == "exit" else TRAP_EXIT
        if code != 0 and int(report.get("memory_bytes", 0)) + max(memory // 16, 1 << 20) > memory:
            ending = _ending(report, code)
            return (
                StopReason.MEMORY,
                None,
                f"memory limit of {memory} bytes reached (the module {ending} with its memory at the limit)",
            )
        reason, detail = final_reason(None, code, meter, disk)
        if reason is not StopReason.EXITED:
            return reason, None, detail
        return StopReason.EXITED, code, f"the module {_ending(report, code)}"


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) else default


def _ending(report: dict[str, Any], code: int) -> str:
    """``exited with status N`` or ``trapped: MESSAGE``."""
    if report.get("status") == "trap":
        message = str(report.get("message", "")).strip().splitlines()
        return f"trapped: {message[-1].strip() if message else report.get('trap', '')}"
    return f"exited with status {code}"
