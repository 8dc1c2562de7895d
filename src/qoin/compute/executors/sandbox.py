"""The ``sandbox`` executor (the default): the job's command in a bubblewrap sandbox on the
provider's own read-only system (docs/spec/compute.md §4.2).

The sandbox:

* every namespace unshared (user, mount, pid, ipc, uts, cgroup and, unless ``spec.network``,
  network: a network namespace with only a loopback of its own), nested user namespaces
  disabled, ``--die-with-parent`` and ``--new-session`` (no terminal to inject into);
* the system read-only: ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or directories;
  of ``/etc`` only what programs need to start (the loader's cache, ``nsswitch.conf``,
  ``localtime``, Debian's ``alternatives``; with the network the resolver files and
  certificates) and a ``passwd``/``group`` of two lines; nothing of the provider's home, data
  directory or keystore (``/root``, ``/home``, ``/tmp``, ``/var``, ``/run`` are not there);
  the root itself read-only;
* writable: ``/work`` (a tmpfs of at most ``spec.resources.memory`` bytes, counted against the
  job's memory, also its working directory), ``/outputs`` (the job's outputs directory on the
  provider) and ``/dev/shm`` (a tmpfs, counted against memory too); the inputs read-only at their
  paths; ``/proc`` of its own pid namespace and a minimal ``/dev``;
* the runtime the spec names (``spec.runtime``, e.g. a venv with PyTorch), read-only at
  ``/runtime`` (:attr:`JobDirs.runtime`); with ``spec.resources.gpus > 0``, the device nodes
  of the GPUs assigned to the job (:attr:`JobDirs.gpus`: ``/dev/nvidia<i>`` of each) and the
  driver's shared control nodes (``nvidiactl``, ``nvidia-uvm``, ``nvidia-uvm-tools``,
  ``nvidia-modeset``, those present), :func:`nvidia_devices`, bound into ``/dev``
  (``--dev-bind``: a GPU job needs them read-write; the driver's libraries come from the
  read-only system as for any program), and ``CUDA_VISIBLE_DEVICES`` set to ``0..n-1``
  (:func:`gpu_env`): CUDA numbers only the GPUs whose device node it can open, so the job
  sees its ``n`` GPUs, and only them, as devices 0 to n-1 whichever GPUs of the provider
  they are;
* a non-root user inside (uid/gid 65534) with no capabilities; when the provider runs as root,
  bubblewrap itself runs as that unprivileged user too (so a process that escaped every
  namespace would still be ``nobody``, and ``RLIMIT_NPROC``, which the kernel never enforces
  for root, works);
* a seccomp filter (:mod:`qoin.compute.executors.seccomp`).

Limits: a control group (:mod:`qoin.compute.executors.cgroups`) bounds memory (no swap),
processes and threads (:attr:`HostLimits.max_processes`) and CPU (a quota of
``spec.resources.cpus`` CPUs), measures CPU time and is how the job is killed whole; without
cgroups, rlimits do (``RLIMIT_AS``, ``RLIMIT_NPROC``). Always: ``RLIMIT_FSIZE`` (no file over
``max(outputs.max_bytes, memory) + 1`` bytes), ``RLIMIT_NOFILE``, ``RLIMIT_CPU``
(``cpus * timeout``), no core files; ``/outputs`` walked every 100 ms against
``outputs.max_bytes``/``max_files``; stdout + stderr against ``outputs.max_log_bytes``; the wall
timeout. A job that breaks one ends with its :class:`StopReason`: an out-of-memory kill in the
group is ``memory``, a fork refused at the process limit ``processes``.

Start overhead: the set-up before the spawn (control group, file descriptors) is measured per
run; bubblewrap's own launch (namespaces, mounts, filter) cannot be seen from outside, so it is
measured once, by the quickest of three trivial jobs ``true`` that
:meth:`SandboxExecutor.problem` runs to check the sandbox works, and counted as start rather
than run time for every job.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qoin.compute.executors import cgroups, seccomp
from qoin.compute.executors.base import (
    JOB_PATH,
    JOB_UID,
    READER_JOIN_S,
    CheckOnce,
    DiskWatch,
    ExecutorError,
    HostLimits,
    JobDirs,
    LogMeter,
    OnOutput,
    Probe,
    RunResult,
    StopReason,
    drop_copies,
    exit_detail,
    failed,
    final_reason,
    job_env,
    readable_inputs,
    refusal,
    supervise,
)
from qoin.compute.executors.common import (
    ChildFds,
    cgroup_probes,
    child_setup,
    exit_status,
    job_rlimits,
    read_pipe,
)
from qoin.compute.jobspec import RUNTIME_DIR, Executor, JobSpec

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Mounted read-only (a symbolic link is recreated as one)."""
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "localtime", "alternatives")
"""Of ``/etc``, what programs need to start."""
ETC_NETWORK = ("resolv.conf", "hosts", "host.conf", "gai.conf", "ssl", "ca-certificates", "pki")
"""Of ``/etc``, what a job with the network needs as well."""
PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"nobody:x:{JOB_UID}:{JOB_UID}:nobody:/work:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nnogroup:x:{JOB_UID}:\n"
HOSTNAME = "qoin-job"
SHM = "/dev/shm"  # noqa: S108 (the sandbox's own, a tmpfs counted against the job's memory)
SANDBOX_PIDS = 2
"""Processes of bubblewrap's own in the job's control group (its monitor and the pid 1)."""
KILL_WAIT_S = 5.0
"""How long a killed sandbox may take to end before its monitor is killed too."""
KILL_PAUSE_S = 0.005
PROBE_TIMEOUT = 30
PROBES = 3
"""Trivial jobs run to check the sandbox and measure its launch (the quickest counts)."""
STATUS_LIMIT = 64 * 1024
DEV = Path("/dev")
NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
"""The NVIDIA driver's control nodes under ``/dev`` that every GPU job needs (not a GPU each)."""
NVIDIA_GPU = "nvidia"
"""``/dev/nvidia<i>``: GPU number ``i`` (the driver's minor number, not always ``nvidia-smi``'s
index)."""
STAGE = Path("/run/qoin-sandbox")
"""Where, when the provider is root, the job's directories appear to bubblewrap (see
:func:`_stage`): a root-owned empty directory with a private tmpfs on it in the sandbox's own
mount namespace only."""
CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True)


_LIBC = _load_libc()  # loaded here: nothing is loaded between fork and exec


@dataclass
class _Launch:
    """One spawned sandbox and what the provider holds of it."""

    proc: subprocess.Popen[bytes]
    status_fd: int
    readers: list[threading.Thread]
    spawned_at: float


class SandboxExecutor:
    """Runs jobs with bubblewrap (see the module docstring)."""

    kind = Executor.SANDBOX

    def __init__(
        self,
        limits: HostLimits | None = None,
        *,
        bwrap: str = "bwrap",
        use_cgroups: bool = True,
        dev: Path = DEV,
    ) -> None:
        self.limits = limits or HostLimits()
        self.bwrap = bwrap
        self.use_cgroups = use_cgroups
        self.dev = dev
        """Where the NVIDIA device nodes are (``/dev``; a test gives stand-ins)."""
        self._checked = CheckOnce(self._check)
        self.launch_seconds = 0.0
        """bubblewrap's launch time, measured by :meth:`problem`'s trivial jobs."""
        self._filter = b""

    # -- availability -----------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the sandbox cannot run here (checked once: bubblewrap installed, a seccomp filter
        for this architecture, and a trivial job ``true`` that runs and exits 0)."""
        return self._checked()

    def _check(self) -> str | None:
        if not sys.platform.startswith("linux"):
            return "the sandbox needs Linux (bubblewrap, namespaces, cgroups)"
        found = shutil.which(self.bwrap)
        if found is None:
            return "bubblewrap is not installed (apt-get install bubblewrap)"
        self.bwrap = found
        try:
            self._filter = seccomp.program()
        except seccomp.SeccompError as exc:
            return str(exc)
        launches = []
        for _ in range(PROBES):
            result, total, said = self._probe()
            if result.reason is not StopReason.EXITED or result.exit_code != 0:
                return f"bubblewrap cannot make a sandbox here ({result.detail}): {said}"
            launches.append(total)
        self.launch_seconds = min(launches)
        return None

    def _probe(self) -> tuple[RunResult, float, str]:
        """Run ``true`` in a sandbox: its result, its time from spawn to end, its output."""
        with tempfile.TemporaryDirectory(prefix="qoin-sandbox-probe-") as tmp:
            root = Path(tmp)
            dirs = JobDirs(root, (), root / "work", root / "outputs")
            dirs.work.mkdir()
            dirs.outputs.mkdir()
            spec = JobSpec(command=("true",), timeout=PROBE_TIMEOUT)
            said: list[bytes] = []
            result, total = self._execute(
                spec, dirs, lambda _stream, chunk: said.append(chunk), threading.Event()
            )
        return result, total, b"".join(said).decode("utf-8", "replace").strip()[-300:]

    # -- running ----------------------------------------------------------------------------------

    def run(
        self, spec: JobSpec, dirs: JobDirs, on_output: OnOutput, cancel: threading.Event
    ) -> RunResult:
        """Run ``spec`` in a sandbox (never raises for what the job does)."""
        refused = refusal(self, spec, dirs)
        if refused is not None:
            return refused
        result, total = self._execute(spec, dirs, on_output, cancel)
        if result.reason is StopReason.FAILED:
            return result
        launch = min(self.launch_seconds, total)
        return RunResult(
            result.reason,
            result.exit_code,
            result.detail,
            result.cpu_seconds,
            max(total - launch, 0.0),
            result.start_seconds + launch,
            log_bytes=result.log_bytes,
        )

    def _execute(
        self, spec: JobSpec, dirs: JobDirs, on_output: OnOutput, cancel: threading.Event
    ) -> tuple[RunResult, float]:
        """Run ``spec``; its result (start: the set-up before the spawn; wall: spawn to end)
        and the time from the spawn to the end."""
        began = time.monotonic()
        as_user = _prepare_dirs(dirs)
        if as_user:
            try:
                dirs = readable_inputs(dirs)
            except OSError as exc:
                raise ExecutorError(f"cannot copy an input for uid {JOB_UID}: {exc}") from exc
        try:
            return self._contained(spec, dirs, on_output, cancel, began, as_user)
        finally:
            drop_copies(dirs)

    def _contained(
        self,
        spec: JobSpec,
        dirs: JobDirs,
        on_output: OnOutput,
        cancel: threading.Event,
        began: float,
        as_user: bool,
    ) -> tuple[RunResult, float]:
        group = self._cgroup(spec)
        enforced = group.enforced if group is not None else frozenset()
        meter = LogMeter(on_output, spec.outputs.max_log_bytes)
        disk = DiskWatch(dirs.outputs, spec.outputs.max_bytes, spec.outputs.max_files)
        try:
            try:
                launch = self._spawn(spec, dirs, group, as_user, meter)
            except OSError as exc:
                return failed(f"the sandbox could not be started: {exc}"), 0.0
            set_up = launch.spawned_at - began
            deadline = launch.spawned_at + self.launch_seconds + spec.timeout
            probes = self._probes(spec, group, enforced)
            pid = launch.proc.pid
            stopped = supervise(
                lambda: _exited(pid), deadline, spec.timeout, cancel, meter, disk, probes
            )
            if stopped is not None:
                _kill(launch.proc, group)
            code, rusage_cpu = _reap(launch.proc)
            ended = time.monotonic()
            if group is not None:
                group.kill()
            for reader in launch.readers:
                reader.join(READER_JOIN_S)
            measured = group.cpu_seconds() if group is not None else None
            cpu = measured if measured is not None else rusage_cpu
            started = _job_started(launch.status_fd)
            total = ended - launch.spawned_at
            reason, detail = final_reason(stopped, code, meter, disk, probes)
            if reason is StopReason.EXITED and not started:
                # bubblewrap reports the job's exit only if it outlives it; a bubblewrap killed
                # at a limit (the memory cgroup's OOM killer may pick it) has a reason above.
                said = meter.stderr_tail.decode("utf-8", "replace").strip()
                detail = f"the sandbox could not start the job ({exit_detail(code)}): {said}"
                return failed(detail, set_up), total
            exit_code = code if reason is StopReason.EXITED else None
            result = RunResult(reason, exit_code, detail, cpu, total, set_up, log_bytes=meter.total)
            return result, total
        finally:
            if group is not None:
                group.close()

    def _cgroup(self, spec: JobSpec) -> cgroups.JobCgroup | None:
        if not self.use_cgroups:
            return None
        limits = cgroups.CgroupLimits(
            memory=spec.resources.memory,
            pids=self.limits.max_processes + SANDBOX_PIDS,
            cpus=spec.resources.cpus,
        )
        return cgroups.JobCgroup.create(limits)

    def _probes(
        self, spec: JobSpec, group: cgroups.JobCgroup | None, enforced: frozenset[str]
    ) -> tuple[Probe, ...]:
        return cgroup_probes(group, spec.resources.memory, self.limits.max_processes, enforced)

    def _spawn(
        self,
        spec: JobSpec,
        dirs: JobDirs,
        group: cgroups.JobCgroup | None,
        as_user: bool,
        meter: LogMeter,
    ) -> _Launch:
        with ChildFds() as fds:
            args, passed = self._args(spec, dirs, fds.given, as_user)
            status_read, status_write = fds.pipe()
            passed.append(status_write)
            args[1:1] = ["--json-status-fd", str(status_write)]
            join_fds = fds.give(group.procs_fds()) if group is not None else []
            # when the provider is root: the job's directories where the job's user can reach
            # them (_stage), then become that user
            then = functools.partial(_as_job_user, _staged(dirs)) if as_user else None
            setup = child_setup(join_fds, self._rlimits(spec, group), then)
            # the job's own environment is set inside (--setenv)
            spawned = fds.spawn(args, meter, setup=setup, env={"PATH": JOB_PATH}, pass_fds=passed)
        return _Launch(spawned.proc, status_read, spawned.readers, spawned.spawned_at)

    def _args(
        self, spec: JobSpec, dirs: JobDirs, opened: list[int], staged: bool
    ) -> tuple[list[str], list[int]]:
        """bubblewrap's arguments and the descriptors they name (appended to ``opened``);
        ``staged``: the job's directories are seen at their :func:`_staged` places."""
        passed: list[int] = []
        places = dict(_staged(dirs).binds) if staged else {}

        def source(path: Path) -> str:
            return str(places.get(str(path), path))

        def data(text: bytes) -> str:
            read, write = os.pipe()
            opened.append(read)
            passed.append(read)
            try:
                os.write(write, text)
            finally:
                os.close(write)
            return str(read)

        memory = str(spec.resources.memory)
        args = [self.bwrap, "--unshare-all", "--unshare-user"]
        if spec.network:
            args.append("--share-net")
        args += ["--disable-userns", "--die-with-parent", "--new-session"]
        args += ["--uid", str(JOB_UID), "--gid", str(JOB_UID), "--hostname", HOSTNAME]
        args += ["--cap-drop", "ALL"]
        for top in SYSTEM_DIRS:
            path = Path(top)
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), top]
            elif path.is_dir():
                args += ["--ro-bind", top, top]
        for name in ETC + (ETC_NETWORK if spec.network else ()):
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        args += ["--ro-bind-data", data(PASSWD.encode()), "/etc/passwd"]
        args += ["--ro-bind-data", data(GROUP.encode()), "/etc/group"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        if spec.resources.gpus > 0:
            args += gpu_args(nvidia_devices(job_gpus(spec, dirs, self.dev), self.dev))
        args += ["--size", memory, "--tmpfs", SHM, "--remount-ro", "/dev"]
        if dirs.runtime is not None:
            args += ["--ro-bind", source(dirs.runtime), RUNTIME_DIR]
        args += ["--size", memory, "--tmpfs", "/work"]
        args += ["--bind", source(dirs.outputs), "/outputs"]
        for host, inside in sorted(dirs.inputs, key=lambda item: (item[1].count("/"), item[1])):
            args += ["--ro-bind", source(host), inside]
        args += ["--remount-ro", "/", "--chdir", "/work", "--clearenv"]
        for name, value in {**gpu_env(spec.resources.gpus), **job_env(spec)}.items():
            args += ["--setenv", name, value]
        args += ["--seccomp", data(self._filter)]
        args += ["--", *spec.command]
        return args, passed

    def _rlimits(self, spec: JobSpec, group: cgroups.JobCgroup | None) -> list[tuple[int, int]]:
        enforced = group.enforced if group is not None else frozenset()
        limits = job_rlimits(spec, self.limits, cpu_slack=1)
        if "memory" not in enforced:
            limits.append((resource.RLIMIT_AS, spec.resources.memory))
        if "pids" not in enforced:
            limits.append((resource.RLIMIT_NPROC, self.limits.max_processes + SANDBOX_PIDS))
        return limits


def nvidia_gpus(dev: Path = DEV) -> tuple[int, ...]:
    """The numbers of the GPU device nodes under ``dev`` (``nvidia<i>``), sorted; empty on a
    machine without the driver."""
    found: set[int] = set()
    try:
        for path in dev.glob(NVIDIA_GPU + "*"):
            number = path.name.removeprefix(NVIDIA_GPU)
            if number.isdigit() and len(number) <= 6 and not path.is_dir():
                found.add(int(number))
    except OSError:
        return ()
    return tuple(sorted(found))


def job_gpus(spec: JobSpec, dirs: JobDirs, dev: Path = DEV) -> tuple[int, ...]:
    """The GPUs a job gets: those assigned to it (:attr:`JobDirs.gpus`, as many as it asks
    for), or, when none were assigned (a run on one's own machine), the first of the machine's.
    :class:`ExecutorError` if they are not as many as ``spec.resources.gpus``."""
    wanted = spec.resources.gpus
    given = dirs.gpus if dirs.gpus is not None else nvidia_gpus(dev)[:wanted]
    if len(given) != wanted or len(set(given)) != wanted:
        raise ExecutorError(
            f"the job asks for {wanted} GPU(s) and {len(set(given))} distinct ones were assigned "
            f"to it ({', '.join(map(str, given)) or 'none'})"
        )
    return tuple(given)


def nvidia_devices(gpus: Sequence[int], dev: Path = DEV) -> tuple[str, ...]:
    """The device nodes under ``dev`` a job with GPUs ``gpus`` (their numbers) gets: the shared
    control nodes present (:data:`NVIDIA_SHARED`), then ``nvidia<i>`` of each GPU, in order.
    :class:`ExecutorError` if a GPU's node is missing (the driver is not loaded, or the GPU went
    away). ``nvidia-caps/`` (MIG partitions) is never bound: whole GPUs only."""
    shared = [str(dev / name) for name in NVIDIA_SHARED if (dev / name).exists()]
    nodes = [dev / f"{NVIDIA_GPU}{number}" for number in sorted(set(gpus))]
    missing = [str(node) for node in nodes if not node.exists()]
    if missing:
        raise ExecutorError(
            f"the GPU device node(s) {', '.join(missing)} are missing on this provider (is the "
            "NVIDIA driver loaded?)"
        )
    if nodes and not shared:
        raise ExecutorError(f"{dev / NVIDIA_SHARED[0]} is missing: the NVIDIA driver is not loaded")
    return (*shared, *map(str, nodes))


def gpu_env(count: int) -> dict[str, str]:
    """The environment of a job with ``count`` GPUs (none without): ``CUDA_VISIBLE_DEVICES`` and
    ``NVIDIA_VISIBLE_DEVICES`` both ``0,...,count-1``, the numbers CUDA gives the GPUs it can
    open (only the bound ones: :func:`nvidia_devices`), and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so
    that they are numbered in PCI bus order (not fastest first). The same on every
    provider whichever GPUs the job was given (replicas see the same environment); the spec's
    own variables come after and win."""
    if count <= 0:
        return {}
    visible = ",".join(str(index) for index in range(count))
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": visible,
        "NVIDIA_VISIBLE_DEVICES": visible,
    }


def gpu_args(devices: tuple[str, ...]) -> list[str]:
    """bubblewrap's arguments binding each device node at its name under the job's ``/dev``
    (read-write: ``--dev-bind``; placed after ``--dev /dev``, before it is remounted
    read-only)."""
    args: list[str] = []
    for device in devices:
        args += ["--dev-bind", device, f"/dev/{Path(device).name}"]
    return args


def runtime_problem(path: Path) -> str | None:
    """Why a runtime directory would not work in the sandbox, or None: each program of its
    ``bin/`` (a venv's ``python`` is a link to the interpreter it was made with) must lie in
    the runtime itself or in the read-only system the sandbox mounts (:data:`SYSTEM_DIRS`), since
    nothing else of the provider's files is there (e.g. not ``/root/.pyenv``)."""
    seen = tuple(Path(top).resolve() for top in SYSTEM_DIRS if Path(top).exists())
    places = (path.resolve(), *seen)
    try:
        programs = sorted((path / "bin").iterdir())
    except OSError as exc:
        return f"runtime {path}: cannot list its bin/: {exc.strerror}"
    for program in programs:
        target = program.resolve()
        if not any(target.is_relative_to(place) for place in places):
            return (
                f"runtime {path}: bin/{program.name} is {target}, which a sandboxed job cannot "
                f"see (only {', '.join(SYSTEM_DIRS[:3])}, /lib* and /runtime are there): make "
                "the runtime again with a Python under /usr (e.g. /usr/bin/python3)"
            )
    return None


@dataclass(frozen=True)
class _Staged:
    """The job's directories as bubblewrap sees them when it runs as the job's user."""

    binds: tuple[tuple[str, str], ...]
    """(host path, its place under :data:`STAGE`)."""
    dirs: frozenset[str]
    """The host paths of :attr:`binds` that are directories."""


def _staged(dirs: JobDirs) -> _Staged:
    """Where the job's outputs directory, input files and runtime appear under :data:`STAGE`."""
    binds = [(str(dirs.outputs), f"{STAGE}/outputs")]
    binds += [(str(host), f"{STAGE}/input-{index}") for index, (host, _) in enumerate(dirs.inputs)]
    folders = {str(dirs.outputs)}
    if dirs.runtime is not None:
        binds.append((str(dirs.runtime), f"{STAGE}/runtime"))
        folders.add(str(dirs.runtime))
    return _Staged(tuple(binds), frozenset(folders))


def _stage_dir() -> None:
    """Make :data:`STAGE` (root-owned, mode 0755, a real directory) or refuse."""
    with contextlib.suppress(FileExistsError):
        STAGE.mkdir(mode=0o755, parents=True)
    info = STAGE.lstat()
    if not STAGE.is_dir() or STAGE.is_symlink() or info.st_uid != 0 or info.st_mode & 0o022:
        raise ExecutorError(f"{STAGE} must be a directory owned by root, writable only by root")


def _prepare_dirs(dirs: JobDirs) -> bool:
    """Make ``/outputs`` writable for the job's user (the inputs are made readable for it by
    :func:`readable_inputs`); True if bubblewrap is to run as that user (the provider runs as
    root)."""
    if os.geteuid() != 0:
        return False
    try:
        _stage_dir()
        os.chown(dirs.outputs, JOB_UID, JOB_UID)
    except OSError as exc:
        raise ExecutorError(f"cannot hand the job's directories to uid {JOB_UID}: {exc}") from exc
    return True


def _as_job_user(staged: _Staged) -> None:
    """In the child, as root, before exec (and before its lifeline, which a change of user
    clears): put the job's directories where the job's user can reach them (:func:`_stage`) and
    become that user."""
    _stage(staged)
    os.setgroups([])
    os.setresgid(JOB_UID, JOB_UID, JOB_UID)
    os.setresuid(JOB_UID, JOB_UID, JOB_UID)


def _stage(staged: _Staged) -> None:
    """In the child, as root: a mount namespace of its own (private: nothing propagates back),
    a small tmpfs on :data:`STAGE`, and the job's outputs directory and input files bound onto
    it, so that bubblewrap, running as the job's user, can reach them whatever the permissions
    of the directories above them (the provider's data directory is usually private)."""
    if _LIBC is None:
        raise OSError("no C library to call")
    _call(_LIBC.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare")
    _call(_LIBC.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "mount")
    stage = str(STAGE).encode()
    flags = ctypes.c_ulong(MS_NOSUID | MS_NODEV)
    _call(_LIBC.mount(b"tmpfs", stage, b"tmpfs", flags, b"mode=0755,size=65536"), "mount")
    for host, place in staged.binds:
        if host in staged.dirs:
            os.mkdir(place, 0o755)
        else:
            os.close(os.open(place, os.O_CREAT | os.O_WRONLY, 0o444))
        _call(
            _LIBC.mount(host.encode(), place.encode(), None, ctypes.c_ulong(MS_BIND), None), "mount"
        )


def _call(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it."""
    try:
        found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return found is not None


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for the sandbox to end (SIGKILL after :data:`KILL_WAIT_S`); its exit status and the
    CPU time of it and every process it waited for (read before it is reaped)."""
    deadline = time.monotonic() + KILL_WAIT_S
    while not _exited(proc.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            break
        time.sleep(KILL_PAUSE_S)
    cpu = _zombie_cpu(proc.pid) if _exited(proc.pid) else 0.0
    return exit_status(proc.wait()), cpu


def _zombie_cpu(pid: int) -> float:
    """User + system time of an exited, not yet reaped process and of the children it waited
    for (``/proc/PID/stat`` fields 14 to 17)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read(4096).decode("ascii", "replace")
    except OSError:
        return 0.0
    fields = raw.rpartition(")")[2].split()
    try:
        ticks = sum(int(value) for value in fields[11:15])
    except (ValueError, IndexError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")


def _kill(proc: subprocess.Popen[bytes], group: cgroups.JobCgroup | None) -> None:
    """Kill a sandbox: every process of its control group but bubblewrap's monitor, which then
    reaps its pid 1 and exits; without a group, the monitor itself (its pid 1 follows, and with
    it every process of the job's pid namespace)."""
    if group is not None and group.kill(spare=proc.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _job_started(status_fd: int) -> bool:
    """Whether bubblewrap reported the job's exit status on ``--json-status-fd`` (it does only
    for a command it executed); closes the descriptor."""
    said = read_pipe(status_fd, STATUS_LIMIT)
    if said is None:
        return False
    decoder = json.JSONDecoder()
    text = said.decode("utf-8", "replace")
    index = 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        try:
            document, index = decoder.raw_decode(text, index)
        except ValueError:
            return False
        if isinstance(document, dict) and "exit-code" in document:
            return True
    return False
