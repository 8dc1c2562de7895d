"""The ``docker`` executor: the job's image, pinned by digest, run by a Docker Engine through its
API on a unix socket (docs/spec/compute.md §4.4); no ``docker`` command needed.

The image: ``spec.image`` is ``name@sha256:<64 hex>``. The digest is either the image's id (an
image built or imported locally, no registry) or one of its repository digests (an image pulled
from a registry); the local image is used when it has that id or that repository digest, and
pulled (``POST /images/create``) only when absent: the pull's time is reported apart
(:attr:`RunResult.pull_seconds`) and not counted in the timeout. The container runs the image's
id, so a tag moved meanwhile changes nothing.

The container: no network (``NetworkMode: none``) unless ``spec.network``; memory and swap
limited to ``spec.resources.memory``; ``NanoCpus`` of ``spec.resources.cpus``; ``PidsLimit`` (the
provider's :attr:`HostLimits.max_processes`); every capability dropped; a read-only root;
``no-new-privileges``; user 65534:65534; inputs bound read-only at their paths, ``/outputs``
bound read-write, ``/work`` a tmpfs of at most ``spec.resources.memory`` bytes (the working
directory); ``nofile``, ``fsize`` and ``core`` ulimits as for the sandbox; no log driver (the
output reaches the provider only through the attach stream, so nothing piles up on its disk);
``spec.command`` replaces the image's ``Cmd`` (its entry point stays), ``spec.env`` is added to the
image's environment with ``HOME`` and ``TMPDIR`` set to ``/work``. Every volume the image declares
(``VOLUME``, which the engine would make an anonymous volume on the provider's disk, writable
whatever the read-only root) is a tmpfs of at most ``spec.resources.memory`` bytes instead,
counted against the job's memory (the image's files at that path are not seen); the image's
health check is turned off (it would run commands in the container beside the job's).

Watching: stdout and stderr from the attach stream (demultiplexed: 8-byte frame headers) as they
come; the container's control group, found through its first process, for out-of-memory kills,
forks refused at the process limit and CPU time (the last reading before it exits); ``/outputs``
as for the sandbox; the timeout. The daemon's ``OOMKilled`` also means ``memory``. The container
is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from qoin.compute.executors import cgroups
from qoin.compute.executors.base import (
    JOB_UID,
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
    failed,
    final_reason,
    readable_inputs,
    refusal,
    supervise,
)
from qoin.compute.executors.common import cgroup_probes, max_file_size, memory_killed
from qoin.compute.executors.tree import prune
from qoin.compute.jobspec import Executor, JobSpec

DEFAULT_SOCKET = "/var/run/docker.sock"
JOB_USER = f"{JOB_UID}:{JOB_UID}"
API_TIMEOUT_S = 30.0
"""Seconds a Docker Engine call may take (a pull: :attr:`DockerExecutor.pull_timeout`)."""
PING_TIMEOUT_S = 3.0
INSPECT_EVERY_S = 0.25
"""How often the container's state is asked for while it runs (its attach stream ending says
so sooner)."""
EMPTY_WAIT_S = 10.0
EMPTY_POLL_S = 0.01
MAX_HEADER = 64 * 1024
MAX_FRAME = 1 << 20
MAX_ERROR = 2000
MAX_VOLUMES = 64
"""Volumes an image may declare (each is given a tmpfs)."""
STREAMS = {1: "stdout", 2: "stderr"}
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


class _Refused(Exception):
    """The Docker Engine refused a step (the message says why)."""


def socket_path() -> str:
    """The Docker Engine's socket: ``$DOCKER_HOST`` (``unix://PATH``) or
    :data:`DEFAULT_SOCKET`."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else DEFAULT_SOCKET


class DockerExecutor:
    """Runs jobs in Docker containers (see the module docstring)."""

    kind = Executor.DOCKER

    def __init__(
        self,
        limits: HostLimits | None = None,
        *,
        socket: str | None = None,
        pull_timeout: float = 600.0,
        watch_cgroups: bool = True,
    ) -> None:
        self.limits = limits or HostLimits()
        self.socket = socket or socket_path()
        self.pull_timeout = pull_timeout
        self.watch_cgroups = watch_cgroups

    def _client(self, timeout: float = API_TIMEOUT_S) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=self.socket)
        return httpx.Client(transport=transport, base_url="http://docker", timeout=timeout)

    def problem(self) -> str | None:
        """Why docker jobs cannot run here (asked each time: the engine may come and go)."""
        if os.environ.get("DOCKER_HOST", "unix://").split("://")[0] != "unix":
            return "only a Docker Engine on a unix socket is supported (DOCKER_HOST=unix://...)"
        try:
            with self._client(PING_TIMEOUT_S) as client:
                answer = client.get("/_ping")
        except httpx.HTTPError as exc:
            return f"no Docker Engine answers on {self.socket}: {exc}"
        if answer.status_code != 200:
            return f"the Docker Engine on {self.socket} answers {answer.status_code} to a ping"
        return None

    def run(
        self, spec: JobSpec, dirs: JobDirs, on_output: OnOutput, cancel: threading.Event
    ) -> RunResult:
        """Run ``spec`` in a container (never raises for what the job does)."""
        refused = refusal(self, spec, dirs)
        if refused is not None:
            return refused
        try:
            dirs = _prepare_dirs(dirs)
        except OSError as exc:
            raise ExecutorError(
                f"cannot hand the job's directories to uid {JOB_UID}: {exc}"
            ) from exc
        try:
            return self._contained(spec, dirs, on_output, cancel)
        finally:
            drop_copies(dirs)

    def _contained(
        self, spec: JobSpec, dirs: JobDirs, on_output: OnOutput, cancel: threading.Event
    ) -> RunResult:
        began = time.monotonic()
        try:
            image, pull_seconds = self._image(spec.image)
            volumes = self._volumes(image)
        except (_Refused, httpx.HTTPError) as exc:
            return failed(f"image {spec.image}: {exc}", time.monotonic() - began)
        with self._client() as client:
            created = time.time()
            set_up = time.monotonic()
            name = f"qoin-job-{uuid.uuid4().hex[:16]}"
            try:
                container = _call(
                    client,
                    "POST",
                    "/containers/create",
                    {"name": name},
                    self._body(spec, dirs, image, volumes),
                )["Id"]
            except (_Refused, httpx.HTTPError, KeyError, TypeError) as exc:
                return failed(
                    f"the container could not be made: {exc}",
                    time.monotonic() - set_up,
                    pull_seconds,
                )
            try:
                result = self._run(
                    client,
                    spec,
                    dirs,
                    str(container),
                    on_output,
                    cancel,
                    created,
                    set_up,
                    pull_seconds,
                )
            finally:
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"/containers/{container}", params={"force": "true", "v": "true"})
        if result.reason is StopReason.FAILED:  # the engine failed while the job may have run
            prune(dirs.outputs)
        return result

    def _run(
        self,
        client: httpx.Client,
        spec: JobSpec,
        dirs: JobDirs,
        container: str,
        on_output: OnOutput,
        cancel: threading.Event,
        created: float,
        set_up: float,
        pull_seconds: float,
    ) -> RunResult:
        meter = LogMeter(on_output, spec.outputs.max_log_bytes)
        disk = DiskWatch(dirs.outputs, spec.outputs.max_bytes, spec.outputs.max_files)
        try:
            stream = _attach(self.socket, container)
        except OSError as exc:
            return failed(
                f"the container's output could not be attached: {exc}",
                time.monotonic() - set_up,
                pull_seconds,
            )
        reader = threading.Thread(
            target=_demultiplex, args=(stream, meter), name="job attach", daemon=True
        )
        reader.start()
        try:
            try:
                _call(client, "POST", f"/containers/{container}/start")
            except (_Refused, httpx.HTTPError) as exc:
                return failed(
                    f"the container could not be started: {exc}",
                    time.monotonic() - set_up,
                    pull_seconds,
                )
            started = time.monotonic()
            watch = _Watch(client, container, spec, self.limits, self.watch_cgroups)
            deadline = started + spec.timeout
            stopped = supervise(
                watch.ended, deadline, spec.timeout, cancel, meter, disk, watch.probes()
            )
            if stopped is not None:
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"/containers/{container}/kill", params={"signal": "KILL"})
            with contextlib.suppress(httpx.HTTPError):
                client.post(f"/containers/{container}/wait", timeout=API_TIMEOUT_S)
            ended = time.monotonic()
            watch.wait_empty()
            state = _call(client, "GET", f"/containers/{container}/json").get("State", {})
        except (_Refused, httpx.HTTPError) as exc:
            return failed(
                f"the Docker Engine failed while the job ran: {exc}",
                time.monotonic() - set_up,
                pull_seconds,
            )
        finally:
            with contextlib.suppress(OSError):
                stream.shutdown(socket.SHUT_RDWR)
            reader.join(5.0)
            with contextlib.suppress(OSError):
                stream.close()
        code = state.get("ExitCode")
        code = int(code) if isinstance(code, int) else None
        oom: tuple[Probe, ...] = ()
        if stopped is None and state.get("OOMKilled"):
            stopped = memory_killed(spec.resources.memory)
        else:
            oom = watch.probes()
        reason, detail = final_reason(stopped, code, meter, disk, oom)
        began_at = _timestamp(state.get("StartedAt"))
        finished_at = _timestamp(state.get("FinishedAt"))
        if began_at is not None and finished_at is not None and finished_at >= began_at:
            start_seconds = max(began_at - created, 0.0)
            wall = finished_at - began_at
        else:
            start_seconds, wall = started - set_up, ended - started
        return RunResult(
            reason,
            code if reason is StopReason.EXITED else None,
            detail,
            watch.cpu,
            wall,
            start_seconds,
            pull_seconds=pull_seconds,
            log_bytes=meter.total,
        )

    # -- the image --------------------------------------------------------------------------------

    def _image(self, reference: str) -> tuple[str, float]:
        """The local image ``reference`` pins (pulled if absent): its id and the pull's time."""
        name, _, digest = reference.partition("@")
        with self._client() as client:
            found = _local_image(client, name, digest)
            if found is not None:
                return found, 0.0
            pulled = time.monotonic()
            with client.stream(
                "POST",
                "/images/create",
                params={"fromImage": name, "tag": digest},
                timeout=self.pull_timeout,
            ) as answer:
                if answer.status_code != 200:
                    answer.read()
                    raise _Refused(f"pull refused: {_message(answer)}")
                for line in answer.iter_lines():
                    if '"error"' in line:
                        raise _Refused(f"pull failed: {line[:MAX_ERROR]}")
            seconds = time.monotonic() - pulled
            found = _local_image(client, name, digest)
        if found is None:
            raise _Refused("pulled, but no local image has that digest")
        return found, seconds

    def _volumes(self, image: str) -> list[str]:
        """The paths the image declares as volumes (``VOLUME``), but those the job's own mounts
        cover: each would be an anonymous volume on the provider's disk, writable and bounded by
        nothing, so each gets a tmpfs instead (:meth:`_body`)."""
        with self._client() as client:
            config = _call(client, "GET", f"/images/{quote(image, safe='')}/json").get("Config")
        declared = config.get("Volumes") if isinstance(config, dict) else None
        if not isinstance(declared, dict):
            return []
        if len(declared) > MAX_VOLUMES:
            raise _Refused(f"the image declares {len(declared)} volumes, over {MAX_VOLUMES}")
        return sorted(str(path) for path in declared)

    # -- the container ----------------------------------------------------------------------------

    def _body(
        self, spec: JobSpec, dirs: JobDirs, image: str, volumes: list[str] | None = None
    ) -> dict[str, Any]:
        memory = spec.resources.memory
        file_size = max_file_size(spec)
        env = {"HOME": "/work", "TMPDIR": "/work", **dict(spec.env)}
        mounts: list[dict[str, Any]] = [
            {"Type": "bind", "Source": str(dirs.outputs), "Target": "/outputs", "ReadOnly": False},
            {
                "Type": "tmpfs",
                "Target": "/work",
                "TmpfsOptions": {"SizeBytes": memory, "Mode": 0o1777},
            },
        ]
        mounts += [
            {"Type": "bind", "Source": str(host), "Target": inside, "ReadOnly": True}
            for host, inside in dirs.inputs
        ]
        taken = {str(mount["Target"]).rstrip("/") for mount in mounts}
        mounts += [
            {"Type": "tmpfs", "Target": path, "TmpfsOptions": {"SizeBytes": memory, "Mode": 0o1777}}
            for path in volumes or ()
            if path.rstrip("/") not in taken
        ]
        host_config = {
            "NetworkMode": "default" if spec.network else "none",
            "Memory": memory,
            "MemorySwap": memory,
            "NanoCpus": spec.resources.cpus * 1_000_000_000,
            "PidsLimit": self.limits.max_processes,
            "CapDrop": ["ALL"],
            "ReadonlyRootfs": True,
            "SecurityOpt": ["no-new-privileges"],
            "Mounts": mounts,
            "Ulimits": [
                {
                    "Name": "nofile",
                    "Soft": self.limits.max_open_files,
                    "Hard": self.limits.max_open_files,
                },
                {"Name": "fsize", "Soft": file_size, "Hard": file_size},
                {"Name": "core", "Soft": 0, "Hard": 0},
            ],
            "LogConfig": {"Type": "none", "Config": {}},
            "IpcMode": "private",
            "Privileged": False,
        }
        body: dict[str, Any] = {
            "Image": image,
            "Env": [f"{key}={value}" for key, value in sorted(env.items())],
            "User": JOB_USER,
            "WorkingDir": "/work",
            "Hostname": "qoin-job",
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "OpenStdin": False,
            "NetworkDisabled": not spec.network,
            "Labels": {"qoin.compute.job": "1"},
            "Healthcheck": {"Test": ["NONE"]},
            "HostConfig": host_config,
        }
        if spec.command:
            body["Cmd"] = list(spec.command)
        return body


class _Watch:
    """A running container: whether it ended, its control group's probes, its CPU time."""

    def __init__(
        self,
        client: httpx.Client,
        container: str,
        spec: JobSpec,
        limits: HostLimits,
        watch_cgroups: bool,
    ) -> None:
        self._client = client
        self._container = container
        self._memory = spec.resources.memory
        self._processes = limits.max_processes
        self._next_inspect = 0.0
        self._ended = False
        self.cpu = 0.0
        """CPU time of the container, as last read."""
        self._group: cgroups.JobCgroup | None = None
        if watch_cgroups:
            state = _call(client, "GET", f"/containers/{container}/json").get("State", {})
            pid = state.get("Pid")
            if isinstance(pid, int) and pid > 0:
                self._group = cgroups.JobCgroup.of_process(pid, container)
            if not state.get("Running"):
                self._ended = True

    def ended(self) -> bool:
        """Whether the container has stopped (asked at most every :data:`INSPECT_EVERY_S`)."""
        if self._group is not None:
            used = self._group.cpu_seconds()
            if used is not None:
                self.cpu = max(self.cpu, used)
        if self._ended:
            return True
        now = time.monotonic()
        if now >= self._next_inspect:
            self._next_inspect = now + INSPECT_EVERY_S
            state = _call(self._client, "GET", f"/containers/{self._container}/json").get(
                "State", {}
            )
            self._ended = not state.get("Running", False)
        return self._ended

    def wait_empty(self) -> None:
        """Wait (at most :data:`EMPTY_WAIT_S`) until no process is left in the container's
        group: its first process has ended, the others were killed with it and are going."""
        if self._group is None:
            return
        deadline = time.monotonic() + EMPTY_WAIT_S
        while self._group.pids() and time.monotonic() < deadline:
            time.sleep(EMPTY_POLL_S)
        used = self._group.cpu_seconds()  # final, if the group is still there
        if used is not None:
            self.cpu = max(self.cpu, used)

    def probes(self) -> tuple[Probe, ...]:
        return cgroup_probes(self._group, self._memory, self._processes)


def _prepare_dirs(dirs: JobDirs) -> JobDirs:
    """``/outputs`` writable and the inputs readable by the container's user (uid 65534): the
    directories to give the engine (:func:`readable_inputs`)."""
    if os.geteuid() == 0:
        os.chown(dirs.outputs, JOB_UID, JOB_UID)
    else:
        dirs.outputs.chmod(0o777)
    return readable_inputs(dirs)


def _local_image(client: httpx.Client, name: str, digest: str) -> str | None:
    """The id of the local image with id ``digest`` or repository digest ``name@digest``."""
    by_id = client.get(f"/images/{quote(digest, safe='')}/json")
    if by_id.status_code == 200 and by_id.json().get("Id") == digest:
        return digest
    by_digest = client.get(f"/images/{quote(f'{name}@{digest}', safe='')}/json")
    if by_digest.status_code == 200:
        found = by_digest.json()
        if any(str(item).endswith(f"@{digest}") for item in found.get("RepoDigests") or ()):
            return str(found["Id"])
    return None


def _call(
    client: httpx.Client,
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Docker Engine call; its JSON answer (``{}`` if none); :class:`_Refused` with the
    engine's message on an error status."""
    answer = client.request(method, path, params=params, json=body)
    if answer.status_code >= 400:
        raise _Refused(_message(answer))
    if not answer.content:
        return {}
    found = answer.json()
    return found if isinstance(found, dict) else {}


def _message(answer: httpx.Response) -> str:
    try:
        found = answer.json()
        text = str(found.get("message", found)) if isinstance(found, dict) else str(found)
    except ValueError:
        text = answer.text
    return f"{answer.status_code} {text}"[:MAX_ERROR]


def _attach(path: str, container: str) -> socket.socket:
    """The container's attach stream (stdout and stderr, multiplexed), before it starts."""
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stream.settimeout(API_TIMEOUT_S)
        stream.connect(path)
        request = (
            f"POST /containers/{container}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
        )
        stream.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = stream.recv(4096)
            if not chunk or len(head) > MAX_HEADER:
                raise OSError("the attach request got no answer")
            head += chunk
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] not in (b"101", b"200"):
            raise OSError(f"attach refused: {head[:200].decode('latin-1')}")
        rest = head.split(b"\r\n\r\n", 1)[1]
        stream.settimeout(None)
    except BaseException:
        stream.close()
        raise
    return _Prefixed(stream, rest)


class _Prefixed(socket.socket):
    """A connected socket with bytes already read from it put back in front."""

    def __init__(self, inner: socket.socket, rest: bytes) -> None:
        super().__init__(fileno=inner.detach())
        self._rest = rest

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._rest:
            out, self._rest = self._rest[:size], self._rest[size:]
            return out
        return super().recv(size, flags)


def _demultiplex(stream: socket.socket, meter: LogMeter) -> None:
    """Feed the frames of an attach stream (``[type, 0, 0, 0, size (4, BE)]`` then ``size``
    bytes; type 1 stdout, 2 stderr) to ``meter`` until the stream ends."""
    try:
        while True:
            header = _exactly(stream, 8)
            if header is None:
                return
            size = int.from_bytes(header[4:8], "big")
            name = STREAMS.get(header[0], "stdout")
            while size > 0:
                chunk = stream.recv(min(size, MAX_FRAME))
                if not chunk:
                    return
                size -= len(chunk)
                if not meter.over.is_set():
                    meter.feed(name, chunk)
    except OSError:
        return


def _exactly(stream: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _timestamp(value: object) -> float | None:
    """Seconds since the epoch of a Docker RFC 3339 time (nanoseconds cut to microseconds)."""
    if not isinstance(value, str):
        return None
    found = _TIME.match(value)
    if found is None or value.startswith("0001-"):
        return None
    fraction = (found.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if found.group(3) == "Z" else found.group(3)
    try:
        return datetime.fromisoformat(f"{found.group(1)}.{fraction}{zone}").timestamp()
    except ValueError:
        return None
