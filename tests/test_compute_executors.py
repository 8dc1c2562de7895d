"""The containment suite: the same hostile jobs on each executor (docs/spec/compute.md §4).

Every hostile job must be stopped with the right :class:`StopReason` and a clear detail, leave
nothing behind on the host (no process of the job, no control group, no container), and the
executor must run a normal job right after it (the provider keeps serving). Plus a normal job per
executor: an input hashed into ``/outputs``, stdout streamed through ``on_output`` while the job
runs, the exit code passed through, CPU time measured. The input is a private file (mode 0600):
the job must read it and its mode must stay as it was.

What a job leaves behind is hostile too: the scan, pack and unpack of its result must survive
links to the provider's files, FIFOs, unreadable directories, odd names, a tree far deeper than
``PATH_MAX`` and a daemon left running (``test_hostile_outputs``, ``test_deep_tree``).

Which hostile jobs each executor gets: sandbox and docker all of them (as shell commands; the
docker image is busybox, the sandbox the host's read-only system). wasm the ones a WASI module can
express: writing outside its preopened directories (and into its read-only inputs, also through a
hard link), a runaway loop (``fuel`` or ``timeout``), memory growth (``memory``), a disk filler, a
log flood, ``/outputs`` over its limits when stopped otherwise. Not
applicable to wasm: network egress (WASI preview 1 has no sockets), reading the provider's files
(nothing outside the preopens exists for a module: the escape test covers it), a fork bomb (no
processes in WASI), the seccomp and namespace checks.

The docker tests need a Docker Engine (the machine's, or one started for the session by
:mod:`tests.dockerutil`) and busybox-static; they are skipped with the reason otherwise. Limits
are small (64 MiB of memory, 32 processes, 2 s timeouts) to keep the suite quick.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
import wasmtime

from qoin.ai.runtime import RuntimeInfo
from qoin.compute import outputs
from qoin.compute.executors import (
    ExecutorError,
    HostLimits,
    JobDirs,
    JobExecutor,
    RunResult,
    StopReason,
)
from qoin.compute.executors import cgroups as cgroups_module
from qoin.compute.executors.docker import DockerExecutor
from qoin.compute.executors.sandbox import (
    SandboxExecutor,
    gpu_args,
    gpu_env,
    job_gpus,
    nvidia_devices,
    nvidia_gpus,
    runtime_problem,
)
from qoin.compute.executors.tree import remove_tree, tree_usage
from qoin.compute.executors.wasm import FUEL_PER_SECOND, WasmExecutor
from qoin.compute.jobspec import Executor, Input, JobSpec, OutputLimits, Resources
from tests import dockerutil
from tests.aiutil import ai_runtime  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # real processes, sandboxes and containers

LIMITS = HostLimits(max_processes=32, max_open_files=256)
MEMORY = 64 << 20
OUTPUTS = OutputLimits(max_bytes=8 << 20, max_files=64, max_log_bytes=256 << 10)
INPUT = b"the input file\n"
SECRET = f"SECRET-KEY-{uuid.uuid4().hex}"
QUICK = 20
"""Timeout of a job that should end by itself long before."""
KINDS = ("sandbox", "wasm", "docker")
SHELL = ("sandbox", "docker")


@dataclass
class Target:
    """An executor under test."""

    name: str
    executor: JobExecutor
    image: str = ""
    docker_socket: str = ""

    @property
    def kind(self) -> Executor:
        return self.executor.kind


@dataclass
class Ran:
    """A finished job."""

    result: RunResult
    stdout: bytes
    stderr: bytes
    dirs: JobDirs
    marker: str
    chunks: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).decode("utf-8", "replace")


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Target:
    executor = SandboxExecutor(LIMITS)
    problem = executor.problem()
    if problem is not None:
        pytest.skip(f"the sandbox executor cannot run here: {problem}")
    return Target("sandbox", executor)


@pytest.fixture(scope="module")
def wasm() -> Target:
    executor = WasmExecutor(LIMITS)
    problem = executor.problem()
    if problem is not None:
        pytest.skip(f"the wasm executor cannot run here: {problem}")
    return Target("wasm", executor)


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dockerutil.Engine]:
    try:
        with dockerutil.engine(tmp_path_factory.mktemp("docker")) as engine:
            yield engine
    except dockerutil.NoEngine as exc:
        pytest.skip(f"no Docker Engine for the docker executor's tests: {exc}")


@pytest.fixture(scope="module")
def docker(docker_engine: dockerutil.Engine) -> Target:
    executor = DockerExecutor(LIMITS, socket=docker_engine.socket)
    problem = executor.problem()
    if problem is not None:
        pytest.skip(f"the docker executor cannot run here: {problem}")
    return Target("docker", executor, docker_engine.image, docker_engine.socket)


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest) -> Target:
    found: Target = request.getfixturevalue(request.param)
    return found


@pytest.fixture(params=SHELL)
def shell(request: pytest.FixtureRequest) -> Target:
    found: Target = request.getfixturevalue(request.param)
    return found


# -- running --------------------------------------------------------------------------------------


def run(
    target: Target,
    where: Path,
    command: tuple[str, ...],
    *,
    timeout: int = QUICK,
    wasm: str | None = None,
    on_chunk: Callable[[str, bytes, JobDirs], None] | None = None,
    cancel: threading.Event | None = None,
    limits: OutputLimits = OUTPUTS,
) -> Ran:
    """Run ``command`` (sandbox, docker: a shell command line; wasm: the module ``wasm``, WAT)
    with the input ``/inputs/x``; check that nothing of it is left on the host."""
    where.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(where))
    (root / "work").mkdir()
    (root / "outputs").mkdir()
    (root / "x").write_bytes(INPUT)
    (root / "x").chmod(0o600)  # private: the executor must neither open it up nor need it
    staged = [(root / "x", "/inputs/x")]
    inputs = [Input(b"\x01" * 32, "/inputs/x")]
    marker = f"qoin-test-{uuid.uuid4().hex}"
    if target.kind is Executor.WASM:
        assert wasm is not None
        (root / "prog.wasm").write_bytes(wasmtime.wat2wasm(wasm))
        staged.append((root / "prog.wasm", "/inputs/prog.wasm"))
        inputs.append(Input(b"\x02" * 32, "/inputs/prog.wasm"))
        argv: tuple[str, ...] = ("/inputs/prog.wasm", marker)
    else:
        argv = ("sh", "-c", command[0])
    spec = JobSpec(
        target.kind,
        argv,
        target.image,
        env=(("QOIN_TEST_MARK", marker),),
        inputs=tuple(inputs),
        resources=Resources(cpus=1, memory=MEMORY),
        timeout=timeout,
        outputs=limits,
    )
    dirs = JobDirs(root, tuple(staged), root / "work", root / "outputs")
    chunks: list[tuple[str, bytes]] = []

    def on_output(stream: str, chunk: bytes) -> None:
        chunks.append((stream, chunk))
        if on_chunk is not None:
            on_chunk(stream, chunk, dirs)

    result = target.executor.run(spec, dirs, on_output, cancel or threading.Event())
    stdout = b"".join(chunk for stream, chunk in chunks if stream == "stdout")
    stderr = b"".join(chunk for stream, chunk in chunks if stream == "stderr")
    ran = Ran(result, stdout, stderr, dirs, marker, chunks)
    assert_nothing_left(target, ran)
    assert (root / "x").stat().st_mode & 0o777 == 0o600, "the input's mode changed"
    return ran


def assert_nothing_left(target: Target, ran: Ran) -> None:
    """No process of the job, no control group of this process, no container of the job."""
    marker = ran.marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        assert marker not in environ, f"process {entry} of the job outlived it ({ran.result})"
        parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent.split()[1]) == os.getpid():
            name = next(line for line in status.splitlines() if line.startswith("Name:"))
            assert "dockerd" in name, f"a child of the test outlived its job: {name}"
    ours = f"-{os.getpid()}-"
    for hierarchy in cgroups_module.layout():
        left = [path.name for path in hierarchy.path.iterdir() if ours in path.name]
        assert not left, f"control groups left: {left}"
    if target.kind is Executor.DOCKER:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=target.docker_socket), base_url="http://docker"
        ) as client:
            listed = client.get(
                "/containers/json",
                params={"all": "1", "filters": json.dumps({"label": ["qoin.compute.job"]})},
            ).json()
            for container in listed:
                found = client.get(f"/containers/{container['Id']}/json")
                if found.status_code == 404:  # another test's, removed meanwhile
                    continue
                env = found.json()["Config"]["Env"] or []
                assert f"QOIN_TEST_MARK={ran.marker}" not in env


def still_serves(target: Target, where: Path) -> None:
    """The executor runs a normal job fine."""
    ran = run(target, where, ("echo ok",), wasm=WAT_OK)
    assert ran.result.reason is StopReason.EXITED, ran.result
    assert ran.result.exit_code == 0
    assert ran.stdout == b"ok\n"


def stopped(ran: Ran, *reasons: StopReason) -> None:
    assert ran.result.reason in reasons, (ran.result, ran.output[-2000:])
    assert ran.result.exit_code is None
    assert ran.result.detail


# -- WASI modules (WAT) ---------------------------------------------------------------------------
# Preopened directories: 3 = /outputs, 4 = /work, 5 = /inputs (read-only). Memory: 0..99 scratch
# for iovecs and results, 100.. strings, 1000.. a buffer.

WASI = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_link"
    (func $path_link (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello\\n")
  (data (i32.const 110) "x")
  (data (i32.const 120) "copy")
  (data (i32.const 130) "../escape")
  (data (i32.const 140) "go")
  (data (i32.const 150) "ok\\n")
  (data (i32.const 160) "/etc/passwd")
  (data (i32.const 180) "linked\\n")
  (data (i32.const 190) "hx")
  ;; write LEN bytes at PTR to FD; its errno
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  ;; open PATH (PTR, LEN) under DIR with OFLAGS and RIGHTS; errno, the fd at 12
  (func $open (param $dir i32) (param $ptr i32) (param $len i32) (param $oflags i32)
              (param $rights i64) (result i32)
    (call $path_open (local.get $dir) (i32.const 0) (local.get $ptr) (local.get $len)
      (local.get $oflags) (local.get $rights) (local.get $rights) (i32.const 0) (i32.const 12)))
  %s
)
"""
READ = "(i64.const 2)"
WRITE = "(i64.const 0x40)"
CREATE = "(i32.const 9)"  # O_CREAT | O_TRUNC

WAT_OK = (
    WASI
    % """
  (func (export "_start") (drop (call $write (i32.const 1) (i32.const 150) (i32.const 3))))"""
)

WAT_NORMAL = (
    WASI
    % f"""
  (func (export "_start") (local $in i32) (local $out i32)
    (drop (call $write (i32.const 1) (i32.const 100) (i32.const 6)))
    ;; wait until the test saw "hello" (it then makes /outputs/go): output is streamed
    (loop $wait (br_if $wait (call $open (i32.const 3) (i32.const 140) (i32.const 2) (i32.const 0) {READ})))
    (if (call $open (i32.const 5) (i32.const 110) (i32.const 1) (i32.const 0) {READ})
      (then (call $proc_exit (i32.const 20))))
    (local.set $in (i32.load (i32.const 12)))
    (i32.store (i32.const 16) (i32.const 1000))
    (i32.store (i32.const 20) (i32.const 1000))
    (drop (call $fd_read (local.get $in) (i32.const 16) (i32.const 1) (i32.const 24)))
    (if (call $open (i32.const 3) (i32.const 120) (i32.const 4) {CREATE} {WRITE})
      (then (call $proc_exit (i32.const 21))))
    (local.set $out (i32.load (i32.const 12)))
    (drop (call $write (local.get $out) (i32.const 1000) (i32.load (i32.const 24))))
    (call $proc_exit (i32.const 3)))"""
)

WAT_ESCAPE = (
    WASI
    % f"""
  (func $try (param $dir i32) (param $ptr i32) (param $len i32) (param $oflags i32) (param $rights i64)
    (if (i32.eqz (call $open (local.get $dir) (local.get $ptr) (local.get $len)
                   (local.get $oflags) (local.get $rights)))
      (then (drop (call $write (i32.const 1) (local.get $ptr) (local.get $len)))
            (drop (call $write (i32.const 1) (i32.const 106) (i32.const 1))))))
  (func (export "_start")
    (call $try (i32.const 3) (i32.const 130) (i32.const 9) {CREATE} {WRITE})  ;; /outputs/../escape
    (call $try (i32.const 3) (i32.const 160) (i32.const 11) (i32.const 0) {READ})  ;; /etc/passwd
    (call $try (i32.const 5) (i32.const 120) (i32.const 4) {CREATE} {WRITE})  ;; /inputs/copy
    (call $try (i32.const 5) (i32.const 110) (i32.const 1) {CREATE} {WRITE})  ;; /inputs/x
    ;; a hard link of the read-only input in the writable /outputs, written through
    (if (i32.eqz (call $path_link (i32.const 5) (i32.const 0) (i32.const 110) (i32.const 1)
                   (i32.const 3) (i32.const 190) (i32.const 2)))
      (then (drop (call $write (i32.const 1) (i32.const 180) (i32.const 7)))
            (call $try (i32.const 3) (i32.const 190) (i32.const 2) (i32.const 0) {WRITE})))
    (drop (call $write (i32.const 1) (i32.const 150) (i32.const 3))))"""
)

WAT_LOOP = WASI % '(func (export "_start") (loop $forever (br $forever)))'

WAT_GROW = (
    WASI
    % """
  (func (export "_start")
    (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)"""
)

WAT_FLOOD = (
    WASI
    % """
  (func (export "_start") (loop $flood (drop (call $write (i32.const 1) (i32.const 100) (i32.const 6))) (br $flood)))"""
)

WAT_FILL = (
    WASI
    % f"""
  (func (export "_start") (local $out i32)
    (drop (call $open (i32.const 3) (i32.const 120) (i32.const 4) {CREATE} {WRITE}))
    (local.set $out (i32.load (i32.const 12)))
    (loop $fill (br_if $fill (i32.eqz (call $write (local.get $out) (i32.const 0) (i32.const 65536)))))
    (call $proc_exit (i32.const 7)))"""
)


# -- the normal job -------------------------------------------------------------------------------

NORMAL = (
    "echo hello; while [ ! -e /outputs/go ]; do sleep 0.05; done; "
    "sha256sum /inputs/x > /outputs/h; echo to-stderr >&2; exit 3"
)


def _go_on_hello(stream: str, chunk: bytes, dirs: JobDirs) -> None:
    """When the job's first line arrives (while it runs), let it go on."""
    if stream == "stdout" and b"hello" in chunk:
        (dirs.outputs / "go").touch()


def test_normal_job(target: Target, tmp_path: Path) -> None:
    ran = run(target, tmp_path / "job", (NORMAL,), wasm=WAT_NORMAL, on_chunk=_go_on_hello)
    result = ran.result
    assert result.reason is StopReason.EXITED, (result, ran.output)
    assert result.exit_code == 3
    assert ran.stdout == b"hello\n"
    assert result.log_bytes == len(ran.stdout) + len(ran.stderr)
    assert result.cpu_seconds >= 0
    assert result.start_seconds > 0
    assert result.wall_seconds >= 0
    if target.kind is Executor.WASM:
        assert (ran.dirs.outputs / "copy").read_bytes() == INPUT
        assert result.fuel is not None and 0 < result.fuel < FUEL_PER_SECOND * QUICK
    else:
        assert ran.stderr == b"to-stderr\n"
        digest = hashlib.sha256(INPUT).hexdigest()
        assert (ran.dirs.outputs / "h").read_text() == f"{digest}  /inputs/x\n"
        assert result.fuel is None


def test_wasm_fuel_is_exact(wasm: Target, tmp_path: Path) -> None:
    """The same module uses the same fuel every time."""
    first = run(wasm, tmp_path / "a", (), wasm=WAT_ESCAPE)
    second = run(wasm, tmp_path / "b", (), wasm=WAT_ESCAPE)
    assert first.result.fuel is not None
    assert first.result.fuel == second.result.fuel


# -- hostile jobs ---------------------------------------------------------------------------------


def test_network_egress(shell: Target, tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        if shell.kind is Executor.SANDBOX:
            script = (
                "import socket\n"
                f"for where in (('127.0.0.1', {port}), ('1.1.1.1', 80), ('8.8.8.8', 53)):\n"
                "    try:\n"
                "        socket.create_connection(where, timeout=2)\n"
                "        print('connected', where)\n"
                "    except OSError as exc:\n"
                "        print('refused', where, exc)\n"
            )
            command = f'python3 -c "{script}"'
        else:
            command = "; ".join(
                f"nc -w 2 {host} {to} </dev/null && echo connected {host}"
                for host, to in (("127.0.0.1", port), ("1.1.1.1", 80), ("8.8.8.8", 53))
            )
        ran = run(shell, tmp_path / "job", (command,))
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert ran.result.reason is StopReason.EXITED, ran.result
    assert "connected" not in ran.output
    still_serves(shell, tmp_path / "after")


def test_writes_outside_outputs(target: Target, tmp_path: Path) -> None:
    places = ("/usr/qoin-pwned", "/etc/qoin-pwned", "/qoin-pwned", "/inputs/x", "/inputs/new")
    command = "; ".join(f"echo pwned > {place} && echo wrote {place}" for place in places)
    ran = run(target, tmp_path / "job", (command + "; echo ok",), wasm=WAT_ESCAPE)
    assert ran.result.reason is StopReason.EXITED, ran.result
    assert "wrote" not in ran.output
    assert "escape" not in ran.output and "copy" not in ran.output and "passwd" not in ran.output
    assert "linked" not in ran.output
    assert ran.stdout.endswith(b"ok\n")
    assert (ran.dirs.root / "x").read_bytes() == INPUT
    assert not (ran.dirs.root / "escape").exists()
    assert not Path("/usr/qoin-pwned").exists()
    assert not Path("/etc/qoin-pwned").exists()
    still_serves(target, tmp_path / "after")


def test_provider_files_invisible(
    shell: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the provider's files nor its environment (a variable of the provider's, set
    here, must reach neither the job's environment nor ``/proc/1/environ``)."""
    monkeypatch.setenv("QOIN_PROVIDER_SECRET", SECRET)
    datadir = tmp_path / "datadir"
    (datadir / "keystore").mkdir(parents=True)
    key = datadir / "keystore" / "key.json"
    key.write_text(SECRET)
    real_root = sorted(os.listdir("/root"))[:5]
    probes = [str(key), str(datadir), str(tmp_path), *(f"/root/{name}" for name in real_root)]
    command = "; ".join(
        [f"test -e {path} && echo SEEN-BY-JOB {path}" for path in probes]
        + [f"cat {key}", "ls /root /home /tmp /var/lib /run 2>&1", "env", "cat /proc/1/environ"]
        + ["echo", "echo done"]
    )
    ran = run(shell, tmp_path / "job", (command,))
    assert ran.result.reason is StopReason.EXITED, ran.result
    assert "SEEN-BY-JOB" not in ran.output
    assert SECRET not in ran.output
    assert ran.stdout.endswith(b"done\n")
    still_serves(shell, tmp_path / "after")


def test_fork_bomb(shell: Target, tmp_path: Path) -> None:
    ran = run(shell, tmp_path / "job", ("f() { f | f & }; f; while :; do :; done",))
    stopped(ran, StopReason.PROCESSES)
    assert "process limit of 32" in ran.result.detail
    still_serves(shell, tmp_path / "after")


def test_memory_bomb(target: Target, tmp_path: Path) -> None:
    command = "dd if=/dev/zero of=/dev/null bs=256M count=1; echo survived"
    ran = run(target, tmp_path / "job", (command,), wasm=WAT_GROW)
    stopped(ran, StopReason.MEMORY)
    assert f"memory limit of {MEMORY} bytes" in ran.result.detail
    still_serves(target, tmp_path / "after")


def test_disk_filler(target: Target, tmp_path: Path) -> None:
    command = "dd if=/dev/zero of=/outputs/fill bs=1M count=1000; echo survived"
    ran = run(target, tmp_path / "job", (command,), wasm=WAT_FILL)
    stopped(ran, StopReason.OUTPUT)
    assert f"output limit of {OUTPUTS.max_bytes} bytes" in ran.result.detail
    fill = ran.dirs.outputs / ("copy" if target.kind is Executor.WASM else "fill")
    assert fill.stat().st_size <= max(OUTPUTS.max_bytes, MEMORY) + 1
    still_serves(target, tmp_path / "after")


def test_many_files(shell: Target, tmp_path: Path) -> None:
    command = "i=0; while :; do echo $i > /outputs/f$i || exit 9; i=$((i+1)); done"
    ran = run(shell, tmp_path / "job", (command,))
    stopped(ran, StopReason.OUTPUT)
    assert f"limit of {OUTPUTS.max_files} files" in ran.result.detail
    still_serves(shell, tmp_path / "after")


def test_work_filler_stays_off_disk(shell: Target, tmp_path: Path) -> None:
    """/work is a tmpfs counted against the job's memory: filling it never reaches the disk."""
    ran = run(shell, tmp_path / "job", ("dd if=/dev/zero of=/work/fill bs=1M count=1000",))
    assert ran.result.reason in (StopReason.MEMORY, StopReason.EXITED), ran.result
    assert ran.result.exit_code != 0
    assert not any(ran.dirs.work.iterdir())
    still_serves(shell, tmp_path / "after")


def test_timeout(target: Target, tmp_path: Path) -> None:
    command = "sleep 100 & (setsid sleep 100 &); while :; do :; done"
    ran = run(target, tmp_path / "job", (command,), timeout=2, wasm=WAT_LOOP)
    if target.kind is Executor.WASM:
        stopped(ran, StopReason.TIMEOUT, StopReason.FUEL)
    else:
        stopped(ran, StopReason.TIMEOUT)
        assert ran.result.wall_seconds >= 1.5
    still_serves(target, tmp_path / "after")


def test_log_flood(target: Target, tmp_path: Path) -> None:
    ran = run(target, tmp_path / "job", ("yes",), wasm=WAT_FLOOD)
    stopped(ran, StopReason.LOG)
    assert ran.result.log_bytes == OUTPUTS.max_log_bytes
    assert len(ran.stdout) + len(ran.stderr) == OUTPUTS.max_log_bytes
    still_serves(target, tmp_path / "after")


WAT_HELLO_FOREVER = (
    WASI
    % """
  (func (export "_start") (drop (call $write (i32.const 1) (i32.const 100) (i32.const 6)))
    (loop $forever (br $forever)))"""
)


def test_cancel(target: Target, tmp_path: Path) -> None:
    """The provider stops a running job (its cancel event, set here on its first output)."""
    cancel = threading.Event()

    def on_chunk(stream: str, chunk: bytes, dirs: JobDirs) -> None:
        cancel.set()

    command = "echo hello; while :; do :; done"
    ran = run(
        target,
        tmp_path / "job",
        (command,),
        wasm=WAT_HELLO_FOREVER,
        on_chunk=on_chunk,
        cancel=cancel,
    )
    stopped(ran, StopReason.CANCELLED)
    assert ran.result.detail == "stopped by the provider"
    still_serves(target, tmp_path / "after")


def test_sandbox_confinement(sandbox: Target, tmp_path: Path) -> None:
    """Inside the sandbox: not root, no capabilities, the seccomp filter on, namespace and
    kernel calls refused (EPERM), no network interface but the loopback."""
    script = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def errno(result):\n"
        "    return ctypes.get_errno() if result != 0 else 0\n"
        "print('uid', os.getuid(), os.geteuid())\n"
        "print('unshare', errno(libc.unshare(0x10000000)))\n"
        "print('mount', errno(libc.mount(b'none', b'/work', b'tmpfs', 0, None)))\n"
        "print('ptrace', errno(libc.ptrace(16, 1, 0, 0)))\n"
        "print('keyctl', errno(libc.syscall(250, 0, 0, 0, 0, 0)))\n"
        "print('bpf', errno(libc.syscall(321, 0, 0, 0)))\n"
        "print('ifaces', sorted(name for _, name in __import__('socket').if_nameindex()))\n"
        "status = open('/proc/self/status').read()\n"
        "print([line for line in status.splitlines() if line.startswith(('CapEff', 'Seccomp:'))])\n"
    )
    ran = run(sandbox, tmp_path / "job", (f'python3 -c "{script}"',))
    assert ran.result.reason is StopReason.EXITED, (ran.result, ran.output)
    lines = ran.stdout.decode()
    assert "uid 65534 65534" in lines
    for call in ("unshare", "mount", "ptrace", "keyctl", "bpf"):
        assert f"{call} 1\n" in lines, lines  # EPERM
    assert "ifaces ['lo']" in lines
    assert "CapEff:\\t0000000000000000" in lines and "Seccomp:\\t2" in lines


def test_jobs_that_cannot_start(target: Target, tmp_path: Path) -> None:
    """A command that does not exist, a module that is not an input, an image that cannot be
    found: ``failed`` with the reason; a provider-side fault (missing directories) raises."""
    root = tmp_path / "job"
    (root / "outputs").mkdir(parents=True)
    (root / "work").mkdir()
    if target.kind is Executor.SANDBOX:
        spec = JobSpec(command=("no-such-command-here",), timeout=QUICK)
        expected = "no-such-command-here"
    elif target.kind is Executor.WASM:
        spec = JobSpec(Executor.WASM, ("/inputs/none.wasm",), timeout=QUICK)
        expected = "not one of the job's inputs"
    else:
        missing = "localhost:1/qoin-missing@sha256:" + "0" * 64
        spec = JobSpec(Executor.DOCKER, ("true",), missing, timeout=QUICK)
        expected = "image"
    dirs = JobDirs(root, (), root / "work", root / "outputs")
    result = target.executor.run(spec, dirs, lambda stream, chunk: None, threading.Event())
    assert result.reason is StopReason.FAILED, result
    assert expected in result.detail
    assert result.exit_code is None
    gone = JobDirs(root, (), root / "missing", root / "outputs")
    with pytest.raises(ExecutorError, match="missing"):
        target.executor.run(spec, gone, lambda stream, chunk: None, threading.Event())
    still_serves(target, tmp_path / "after")


LONG_NAME = "L" * 255


def _hostile_outputs(sandbox: bool) -> str:
    """A job that leaves in ``/outputs`` what a provider's reader must survive, then a
    daemon (double fork, a session of its own) that would write there after the job."""
    lines = [
        "cd /outputs",
        "echo kept > kept",
        "ln -s /etc/shadow shadow; ln -s / top; ln -s /proc/1/environ environ",
        "ln /inputs/x hard 2>/dev/null && echo LINKED-INPUT",
        "mkfifo fifo",
        "printf n > \"$(printf 'new\\nline')\"",
        "printf b > \"$(printf 'bad\\377name')\"",
        f"printf l > {LONG_NAME}",
        "echo locked > locked; chmod 000 locked",
        "mkdir -p shut/in && echo in > shut/in/f && chmod 000 shut/in && chmod 300 shut",
        "(setsid sh -c 'sleep 1; echo late > /outputs/late' </dev/null >/dev/null 2>&1 &)",
        "echo done",
    ]
    if sandbox:
        lines.insert(-1, "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\"")
    return "; ".join(lines)


def test_hostile_outputs(shell: Target, tmp_path: Path) -> None:
    """Links to the provider's files, a FIFO (a reader that opened it would block forever), a
    socket, names with a newline, not UTF-8 or 255 bytes long, a file and directories made
    unreadable, a daemon left behind: the run ends with the job (the daemon killed), and the
    scan, the archive and its unpacking take the regular files only, never follow a link and
    never block."""
    ran = run(shell, tmp_path / "job", (_hostile_outputs(shell.kind is Executor.SANDBOX),))
    assert ran.result.reason is StopReason.EXITED, (ran.result, ran.output)
    assert ran.stdout.endswith(b"done\n"), ran.output
    assert "LINKED-INPUT" not in ran.output
    stdout = tmp_path / "stdout"
    stdout.write_bytes(ran.stdout)
    archive = tmp_path / "archive"
    scanned: list[outputs.Manifest] = []

    def read_back() -> None:
        manifest = outputs.scan(ran.dirs.outputs, stdout, ran.result, OUTPUTS)
        outputs.pack(manifest, ran.dirs.outputs, stdout, archive)
        scanned.append(manifest)

    reader = threading.Thread(target=read_back, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "the scan or the pack blocked"
    assert scanned, "the scan or the pack failed"
    paths = [entry.path for entry in scanned[0].files]
    assert paths == sorted(["kept", "new\nline", LONG_NAME, "locked", "shut/in/f"], key=str.encode)
    data = archive.read_bytes()
    assert b"root:" not in data and SECRET.encode() not in data
    unpacked = outputs.unpack(data, tmp_path / "unpacked", scanned[0].root, limits=OUTPUTS)
    assert unpacked == scanned[0]
    assert (tmp_path / "unpacked" / "shut" / "in" / "f").read_bytes() == b"in\n"
    assert not (ran.dirs.outputs / "late").exists()  # the daemon died with the job


def test_deep_tree(sandbox: Target, tmp_path: Path) -> None:
    """A tree far deeper than a result can list (and than a recursive walk or removal can
    take): stopped for its output limit; what lies past the longest path is removed, so the
    job's directory can be removed as usual."""
    script = (
        "import os\n"
        "os.chdir('/outputs')\n"
        "for _ in range(1500):\n"
        "    os.mkdir('d'); os.chdir('d')\n"
        "open('bottom', 'w').write('x' * 4096)\n"
    )
    limits = OutputLimits(OUTPUTS.max_bytes, 10_000, OUTPUTS.max_log_bytes)
    try:
        ran = run(sandbox, tmp_path / "job", (f'python3 -c "{script}"',), limits=limits)
        stopped(ran, StopReason.OUTPUT)
        assert "longer than 1024 bytes" in ran.result.detail
        assert tree_usage(ran.dirs.outputs).problem is None
        manifest = outputs.scan(ran.dirs.outputs, tmp_path / "stdout", ran.result, limits)
        assert manifest.files == ()
        shutil.rmtree(ran.dirs.root)
    finally:
        remove_tree(tmp_path / "job")  # whatever happened: pytest's own removal recurses


WAT_MANY_THEN_HELLO = (
    WASI
    % f"""
  (func (export "_start") (local $i i32)
    (loop $make
      (i32.store8 (i32.const 300) (i32.add (i32.const 48) (i32.div_u (local.get $i) (i32.const 10))))
      (i32.store8 (i32.const 301) (i32.add (i32.const 48) (i32.rem_u (local.get $i) (i32.const 10))))
      (drop (call $open (i32.const 3) (i32.const 300) (i32.const 2) {CREATE} {WRITE}))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $make (i32.lt_u (local.get $i) (i32.const 100))))
    (drop (call $write (i32.const 1) (i32.const 100) (i32.const 6)))
    (loop $forever (br $forever)))"""
)


def test_outputs_over_when_stopped_otherwise(target: Target, tmp_path: Path) -> None:
    """A job stopped for another reason (here cancelled on its first line, before the walk
    of ``/outputs`` came round) with ``/outputs`` over its limits: ``output-limit`` (a result
    never holds more than its limits, so the scan cannot fail)."""
    cancel = threading.Event()
    command = (
        "i=0; while [ $i -lt 100 ]; do : > /outputs/f$i; i=$((i+1)); done; "
        "echo hello; while :; do :; done"
    )
    ran = run(
        target,
        tmp_path / "job",
        (command,),
        wasm=WAT_MANY_THEN_HELLO,
        on_chunk=lambda _stream, _chunk, _dirs: cancel.set(),
        cancel=cancel,
    )
    stopped(ran, StopReason.OUTPUT)
    assert f"limit of {OUTPUTS.max_files} files" in ran.result.detail
    manifest = outputs.scan(ran.dirs.outputs, tmp_path / "stdout", ran.result, OUTPUTS)
    assert manifest.files == ()


def _image_with_volume(engine_socket: str) -> str:
    """The test image with a world-writable ``/big`` declared a ``VOLUME`` (which the engine
    would make an anonymous volume on the provider's disk)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(dockerutil.rootfs_tar())) as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for member in source.getmembers():
            tar.addfile(member, source.extractfile(member) if member.isfile() else None)
        big = tarfile.TarInfo("big")
        big.type, big.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(big)
    body = out.getvalue()
    repo, tag = "qoin-test-volume", hashlib.sha256(body).hexdigest()[:16]
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=engine_socket), base_url="http://docker", timeout=120
    ) as client:
        found = client.get(f"/images/{repo}:{tag}/json")
        if found.status_code != 200:
            answer = client.post(
                "/images/create",
                params={"fromSrc": "-", "repo": repo, "tag": tag, "changes": ["VOLUME /big"]},
                content=body,
                headers={"Content-Type": "application/x-tar"},
            )
            assert answer.status_code == 200 and '"error"' not in answer.text, answer.text
            found = client.get(f"/images/{repo}:{tag}/json")
        return f"{repo}@{found.json()['Id']}"


def test_docker_image_volumes_are_memory(docker: Target, tmp_path: Path) -> None:
    """An image's ``VOLUME`` is a tmpfs counted against the job's memory, not a volume on the
    provider's disk that the job could fill."""
    image = Target("docker", docker.executor, _image_with_volume(docker.docker_socket))
    image.docker_socket = docker.docker_socket
    command = "grep ' /big ' /proc/mounts; dd if=/dev/zero of=/big/fill bs=1M count=200"
    ran = run(image, tmp_path / "job", (command,))
    assert " /big tmpfs " in ran.output, ran.output
    assert ran.result.reason is StopReason.MEMORY or ran.result.exit_code != 0, ran.result


def test_stale_groups_of_gone_providers_are_swept() -> None:
    """A provider killed while a job ran leaves an empty group; the next one removes it."""
    hierarchies = cgroups_module.layout()
    if not hierarchies:
        pytest.skip("no cgroups on this machine")
    gone = next(pid for pid in range(4_194_000, 4_194_304) if not Path(f"/proc/{pid}").exists())
    stale = hierarchies[0].path / f"qoin-job-{gone}-{uuid.uuid4().hex[:12]}"
    stale.mkdir()
    ours = hierarchies[0].path / f"qoin-job-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    ours.mkdir()
    try:
        cgroups_module.sweep_stale.cache_clear()
        assert cgroups_module.sweep_stale() >= 1
        assert not stale.exists()
        assert ours.exists()
    finally:
        for path in (stale, ours):
            if path.exists():
                path.rmdir()


# -- runtimes -------------------------------------------------------------------------------------

TORCH_JOB = """
import torch
print(torch.ones(3).sum())
try:
    open("/runtime/written", "w")
except OSError as exc:
    print("runtime read-only", exc.errno)
"""


def test_a_runtime_is_mounted_read_only_and_torch_runs_in_the_sandbox(
    sandbox: Target,
    ai_runtime: RuntimeInfo,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """PyTorch imports and computes under the sandbox's seccomp filter and limits (1.5 GiB), the
    runtime at ``/runtime``, which the job cannot write to."""
    assert runtime_problem(ai_runtime.path) is None
    root = tmp_path / "job"
    for sub in ("work", "outputs"):
        (root / sub).mkdir(parents=True)
    spec = JobSpec(
        command=("/runtime/bin/python", "-c", TORCH_JOB),
        env=(("OMP_NUM_THREADS", "1"),),  # within LIMITS' 32 threads on any machine
        runtime=ai_runtime.ref,
        resources=Resources(cpus=1, memory=1536 << 20),
        timeout=120,
        outputs=OUTPUTS,
    )
    dirs = JobDirs(root, (), root / "work", root / "outputs", ai_runtime.path)
    said: list[tuple[str, bytes]] = []

    def on_output(stream: str, chunk: bytes) -> None:
        said.append((stream, chunk))

    result = sandbox.executor.run(spec, dirs, on_output, threading.Event())
    stdout = b"".join(chunk for stream, chunk in said if stream == "stdout")
    assert result.reason is StopReason.EXITED and result.exit_code == 0, (result, said)
    assert stdout == b"tensor(3.)\nruntime read-only 30\n", said
    assert not (ai_runtime.path / "written").exists()


def test_runtime_directories_must_match_the_spec(
    sandbox: Target, wasm: Target, tmp_path: Path
) -> None:
    """A spec naming a runtime needs its directory, and a directory is only for such a spec (so
    wasm and docker, whose specs cannot name one, refuse a runtime); a runtime whose python lies
    where a job cannot see it is named as such."""
    root = tmp_path / "job"
    for sub in ("work", "outputs", "rt/bin"):
        (root / sub).mkdir(parents=True)
    named = JobSpec(command=("true",), runtime="qoin-ai@" + "0" * 32, timeout=QUICK)
    bare = JobDirs(root, (), root / "work", root / "outputs")
    with_runtime = JobDirs(root, (), root / "work", root / "outputs", root / "rt")
    nothing = threading.Event()
    with pytest.raises(ExecutorError, match="no runtime was given"):
        sandbox.executor.run(named, bare, lambda *_: None, nothing)
    with pytest.raises(ExecutorError, match="names no runtime"):
        sandbox.executor.run(JobSpec(command=("true",)), with_runtime, lambda *_: None, nothing)
    module = JobSpec(Executor.WASM, ("/inputs/m.wasm",), timeout=QUICK)
    with pytest.raises(ExecutorError, match="names no runtime"):
        wasm.executor.run(module, with_runtime, lambda *_: None, nothing)
    missing = JobDirs(root, (), root / "work", root / "outputs", root / "gone")
    with pytest.raises(ExecutorError, match=r"runtime directory .* is missing"):
        sandbox.executor.run(named, missing, lambda *_: None, nothing)
    (root / "rt" / "bin" / "python").symlink_to("/root/elsewhere/python3")
    problem = runtime_problem(root / "rt")
    assert problem is not None and "a sandboxed job cannot see" in problem


def fake_dev(where: Path) -> Path:
    """A stand-in for ``/dev`` of a machine with four NVIDIA GPUs (empty files: nothing here
    opens them as devices), readable by the job's user."""
    dev = where / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    names = ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm")
    for name in (*names, "nvidia-uvm-tools", "nvidia-caps/nvidia-cap1", "null", "nvidiafoo"):
        (dev / name).touch(mode=0o666)
    for folder in (where, dev):
        folder.chmod(0o755)
    return dev


def test_gpu_jobs_get_only_their_assigned_nvidia_device_nodes(tmp_path: Path) -> None:
    """A GPU job's nodes: the driver's shared control nodes present, then ``nvidia<i>`` of each
    GPU assigned to it, each bound read-write at its name under ``/dev``; never another GPU's nor
    ``nvidia-caps/``. A missing node, or fewer GPUs than the job asks for, is the provider's
    fault (:class:`ExecutorError`); unassigned (a run on one's own machine), the first ones."""
    dev = fake_dev(tmp_path)
    assert nvidia_gpus(dev) == (0, 1, 2, 3) and nvidia_gpus(tmp_path / "none") == ()
    shared = [str(dev / name) for name in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")]
    found = nvidia_devices((3, 1), dev)
    assert found == (*shared, str(dev / "nvidia1"), str(dev / "nvidia3"))
    args = gpu_args(found)
    assert args[:3] == ["--dev-bind", shared[0], "/dev/nvidiactl"]
    assert args[-3:] == ["--dev-bind", str(dev / "nvidia3"), "/dev/nvidia3"]
    assert len(args) == 3 * len(found)
    with pytest.raises(ExecutorError, match=r"nvidia7 are missing"):
        nvidia_devices((1, 7), dev)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "nvidia0").touch()
    with pytest.raises(ExecutorError, match="nvidiactl is missing: the NVIDIA driver is not"):
        nvidia_devices((0,), tmp_path / "bare")
    assert nvidia_devices((), tmp_path / "none") == ()
    two = JobSpec(command=("true",), resources=Resources(gpus=2))
    root = tmp_path / "job"
    dirs = JobDirs(root, (), root / "work", root / "outputs", gpus=(2, 0))
    assert job_gpus(two, dirs, dev) == (2, 0)
    assert job_gpus(two, replace(dirs, gpus=None), dev) == (0, 1)
    for wrong in ((1,), (1, 1), ()):
        with pytest.raises(ExecutorError, match="asks for 2 GPU"):
            job_gpus(two, replace(dirs, gpus=wrong), dev)
    with pytest.raises(ExecutorError, match="asks for 2 GPU"):
        job_gpus(two, replace(dirs, gpus=None), tmp_path / "none")
    assert gpu_env(0) == {}
    assert gpu_env(2) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "NVIDIA_VISIBLE_DEVICES": "0,1",
    }


def test_a_gpu_job_sees_only_its_gpus_in_the_sandbox(sandbox: Target) -> None:
    """A real sandbox given GPUs 1 and 3 of the stand-in ``/dev``: the job's ``/dev`` holds the
    shared nodes and ``nvidia1``, ``nvidia3`` only, and CUDA is told of two GPUs, 0 and 1 (the
    numbers it gives the GPUs it can open), the same whichever GPUs were assigned."""
    with tempfile.TemporaryDirectory(prefix="qoin-fake-dev-") as tmp:
        dev = fake_dev(Path(tmp))
        executor = SandboxExecutor(LIMITS, dev=dev)
        assert executor.problem() is None
        root = Path(tmp) / "job"
        for sub in ("work", "outputs"):
            (root / sub).mkdir(parents=True)
        script = "ls /dev | grep nvidia; echo $CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES"
        spec = JobSpec(
            command=("sh", "-c", script),
            resources=Resources(cpus=1, memory=MEMORY, gpus=2),
            timeout=QUICK,
            outputs=OUTPUTS,
        )
        said: list[bytes] = []
        dirs = JobDirs(root, (), root / "work", root / "outputs", gpus=(1, 3))
        result = executor.run(spec, dirs, lambda _s, chunk: said.append(chunk), threading.Event())
        output = b"".join(said).decode()
        assert result.reason is StopReason.EXITED and result.exit_code == 0, (result, output)
        assert output.split() == [
            "nvidia-uvm", "nvidia-uvm-tools", "nvidia1", "nvidia3", "nvidiactl", "0,1", "0,1",
        ]  # fmt: skip
        with pytest.raises(ExecutorError, match="asks for 2 GPU"):
            executor.run(spec, replace(dirs, gpus=(1,)), lambda *_: None, threading.Event())
