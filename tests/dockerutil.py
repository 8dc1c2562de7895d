"""A real Docker Engine for the docker executor's tests, and a test image made without a registry.

The engine: the machine's own (``$DOCKER_HOST`` or ``/var/run/docker.sock``) when it answers,
else a ``dockerd`` started for the test session with everything of its own under a temporary
directory (data root, exec root, pid file, socket; no bridge, no iptables rules), stopped when
the session ends; each pytest-xdist worker starts its own. ``QOIN_TEST_OWN_DOCKERD=1`` starts one
even when the machine has an engine.

The image: a root file system of Debian's ``busybox-static`` (``/bin/busybox`` and a link per
applet, the directories a job needs), tarred with fixed times and owners, and imported
(``POST /images/create?fromSrc=-``): no registry. Its id, the digest of its configuration, pins
it in the spec (``qoin-test-busybox@sha256:<id>``). Importing the same tar twice gives another id
(the import time is in the configuration), so the tag names the tar's hash and a worker that finds
the tag uses the image already there (a lock file keeps two workers from importing at once).

Whatever cannot be done (no ``dockerd``, no ``busybox``, a daemon that does not start) ends in
:class:`NoEngine` with the reason, which the fixture turns into a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from qoin.bench.compute import busybox_rootfs_tar
from qoin.bench.timing import BenchmarkCheckFailed
from qoin.compute.executors.docker import socket_path
from qoin.process import Child, Output

BUSYBOX = Path("/bin/busybox")
REPO = "qoin-test-busybox"
LOCK = Path(tempfile.gettempdir()) / "qoin-test-docker.lock"
START_S = 60.0
STOP_S = 20.0
DIRS = ("etc", "work", "outputs", "inputs", "tmp", "proc", "dev", "sys", "root")


class NoEngine(Exception):
    """No Docker Engine can be used (the message says why)."""


@dataclass(frozen=True)
class Engine:
    """An engine the tests can use, and the test image on it."""

    socket: str
    image: str
    """``qoin-test-busybox@sha256:<its id>``."""
    own: bool
    """Started for these tests."""


def _client(sock: str, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=sock), base_url="http://docker", timeout=timeout
    )


def _answers(sock: str) -> bool:
    if not Path(sock).exists():
        return False
    try:
        with _client(sock, 3.0) as client:
            return client.get("/_ping").status_code == 200
    except httpx.HTTPError:
        return False


def rootfs_tar() -> bytes:
    """The test image's root file system (deterministic bytes)."""
    passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/work:/bin/false\n"
    try:
        return busybox_rootfs_tar(DIRS, passwd)
    except BenchmarkCheckFailed as exc:
        raise NoEngine(str(exc)) from None


def import_image(sock: str) -> str:
    """The test image on the engine at ``sock`` (imported unless its tag is there): ``name@id``."""
    tar = rootfs_tar()
    tag = hashlib.sha256(tar).hexdigest()[:16]
    with LOCK.open("a") as lock, _client(sock, 120.0) as client:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = client.get(f"/images/{REPO}:{tag}/json")
        if found.status_code != 200:
            answer = client.post(
                "/images/create",
                params={"fromSrc": "-", "repo": REPO, "tag": tag},
                content=tar,
                headers={"Content-Type": "application/x-tar"},
            )
            if answer.status_code != 200 or '"error"' in answer.text:
                raise NoEngine(f"docker import failed: {answer.status_code} {answer.text[:300]}")
            found = client.get(f"/images/{REPO}:{tag}/json")
        if found.status_code != 200:
            raise NoEngine(f"the imported image is not there: {found.text[:300]}")
        image_id = str(found.json()["Id"])
    return f"{REPO}@{image_id}"


@contextlib.contextmanager
def engine(workdir: Path) -> Iterator[Engine]:
    """A usable engine with the test image (see the module docstring); :class:`NoEngine`
    otherwise. An engine started here is stopped on the way out."""
    sock = socket_path()
    if os.environ.get("QOIN_TEST_OWN_DOCKERD") != "1" and _answers(sock):
        yield Engine(sock, import_image(sock), own=False)
        return
    with _own_dockerd(workdir) as own_sock:
        yield Engine(own_sock, import_image(own_sock), own=True)


@contextlib.contextmanager
def _own_dockerd(workdir: Path) -> Iterator[str]:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise NoEngine(
            "no Docker Engine answers and dockerd is not installed (apt-get install docker.io)"
        )
    if os.geteuid() != 0:
        raise NoEngine("no Docker Engine answers and starting dockerd needs root")
    # A short path: a unix socket's path is at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="qoin-dockerd-"))
    sock = str(root / "docker.sock")
    args = [
        dockerd,
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'docker.pid'}",
        f"--host=unix://{sock}",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
    ]
    child = Child.spawn("dockerd", args, Output(keep=False, log=workdir / "dockerd.log"))
    try:
        deadline = time.monotonic() + START_S
        while not _answers(sock):
            if child.exited() is not None:
                raise NoEngine(f"dockerd exited ({child.exited()}):{child.last_output()}")
            if time.monotonic() > deadline:
                raise NoEngine(
                    f"dockerd did not answer within {START_S:.0f} s{child.last_output()}"
                )
            time.sleep(0.2)
        yield sock
    finally:
        child.stop(STOP_S)
        shutil.rmtree(root, ignore_errors=True)
