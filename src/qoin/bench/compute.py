"""``qoin bench compute``: what running a job costs over running its command directly, measured in
one run (figures in docs/benchmarks.md).

The same commands are run directly on this machine (``subprocess``, the baseline) and as jobs, in
the same run:

* **trivial**: ``true``;
* **cpu**: ``sh -c 'head -c N /dev/zero | sha256sum'``, N calibrated at the start of the run so
  that it takes ``cpu_seconds`` CPU-seconds directly (a fixed amount of work: the same N in the
  sandbox and on the market);
* **output**: ``sh -c 'head -c S /dev/zero > /outputs/out'``, S = ``output_mib`` MiB (directly,
  into a directory of the scratch area).

Measured here (no network):

1. **Start overhead** of each executor (:func:`measure_start`): ``repeat`` trivial jobs through
   :func:`qoin.compute.executors.executor_for` ``(kind).run`` (sandbox: ``true``; wasm: a module
   whose ``_start`` returns; docker: ``true`` in an image of Debian's ``busybox-static`` imported
   into the engine, no registry, when one answers), each right after running ``true`` directly:
   the median and p90 of the per-pair difference of wall times, against :data:`START_GOAL_S`
   (reported, never failing the command). Each executor runs one job first (not counted): its
   availability check, which for the sandbox also measures bubblewrap's launch.
2. **Executor-only overhead** (:func:`measure_executor`): each workload directly, directly on one
   core (the thread that spawns it pinned with ``sched_setaffinity``: the job asks for one CPU, and
   ``head`` and ``sha256sum`` overlap on two cores when nothing stops them), and in the sandbox,
   interleaved; the job's wall time from the ``run`` call to its return, then hashing its outputs
   as a provider does (:func:`qoin.compute.outputs.scan` and ``pack``). Every job must
   exit 0 with the direct run's stdout (the cpu job's digest) and files (the output's size).

The whole market, on a live network, and the replicated and cheater figures:
:mod:`qoin.bench.compute_live`; :func:`run` does both. Every job asks for 1 CPU and
:data:`JOB_MEMORY` of memory; the directly run commands are not limited but for the one-core
baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx

from qoin.bench.timing import BenchmarkCheckFailed, machine_info, peak_rss_bytes
from qoin.compute import outputs
from qoin.compute.executors import JobDirs, RunResult, StopReason, executor_for
from qoin.compute.executors.docker import socket_path
from qoin.compute.jobspec import Executor, Input, JobSpec, OutputLimits, Resources
from qoin.crypto.hashing import tagged_hash

MIB: Final = 1 << 20
DEFAULT_CPU_SECONDS: Final = 10.0
"""CPU-seconds of the cpu job, run directly (the issue's figure)."""
DEFAULT_OUTPUT_MIB: Final = 100
"""MiB the output job writes (the issue's figure)."""
DEFAULT_REPEAT: Final = 20
"""Trivial jobs per executor for the start overhead."""
START_GOAL_S: Final = 0.05
"""Goal for the start overhead (median of the differences)."""
JOB_MEMORY: Final = 256 << 20
"""Memory every job asks for."""
CALIBRATION_BYTES: Final = 64 * MIB
"""Bytes hashed directly to size the cpu job (the fastest of two runs counts)."""
HEAVY_ROUNDS: Final = 1
"""Direct and executor runs of the cpu job (each takes ``cpu_seconds``)."""
OUTPUT_ROUNDS: Final = 3
"""Direct and executor runs of the output job (at most ``repeat``)."""
WASM_TRIVIAL: Final = '(module (func (export "_start")))'
WASM_PATH: Final = "/inputs/trivial.wasm"
IMAGE_REPO: Final = "qoin-bench-busybox"
"""The docker image the benchmark imports (a tag per root file system's hash)."""
BUSYBOX: Final = Path("/bin/busybox")
IMAGE_DIRS: Final = ("etc", "work", "outputs", "inputs", "tmp", "proc", "dev", "sys")
DOCKER_TIMEOUT_S: Final = 120.0
DIRECT_ENV: Final = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
"""The environment of the directly run commands."""
KINDS: Final = (Executor.SANDBOX, Executor.WASM, Executor.DOCKER)


def kind_name(kind: Executor) -> str:
    """``sandbox``, ``wasm`` or ``docker``."""
    return kind.name.lower()


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank ``fraction`` percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    """Seconds in milliseconds, rounded to the microsecond."""
    return round(seconds * 1e3, 3)


def children_cpu() -> float:
    """User + system CPU-seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- workloads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A command run directly and as a job."""

    name: str
    """``trivial``, ``cpu`` or ``output``."""
    script: str
    """Shell text with ``{outputs}`` where the outputs directory goes (empty: ``true``)."""
    output_bytes: int = 0
    """Bytes it writes to ``{outputs}/out``."""

    def argv(self, outputs_dir: str) -> tuple[str, ...]:
        """Its argv with the outputs directory ``outputs_dir``."""
        if not self.script:
            return ("true",)
        return ("sh", "-c", self.script.format(outputs=outputs_dir))

    def spec(self, timeout: int) -> JobSpec:
        """Its sandbox job spec (1 CPU, :data:`JOB_MEMORY`, outputs bounded just above it)."""
        return JobSpec(
            command=self.argv("/outputs"),
            resources=Resources(cpus=1, memory=JOB_MEMORY),
            timeout=timeout,
            outputs=OutputLimits(
                max_bytes=self.output_bytes + MIB, max_files=16, max_log_bytes=MIB
            ),
        )


def cpu_workload(hash_bytes: int) -> Workload:
    """The cpu job: ``hash_bytes`` zero bytes through ``sha256sum``."""
    return Workload("cpu", f"head -c {hash_bytes} /dev/zero | sha256sum")


def output_workload(size: int) -> Workload:
    """The output job: ``size`` zero bytes written to ``/outputs/out``."""
    return Workload("output", "head -c " + str(size) + " /dev/zero > {outputs}/out", size)


TRIVIAL: Final = Workload("trivial", "")


def job_timeout(cpu_seconds: float) -> int:
    """The timeout every job asks for: far above what the cpu job takes on a busy machine."""
    return 30 + math.ceil(6 * cpu_seconds)


@dataclass(frozen=True)
class Direct:
    """One direct run."""

    seconds: float
    cpu_seconds: float
    stdout: bytes


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Within the block, this thread (and what it spawns) runs on one core only."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def run_direct(argv: tuple[str, ...], cwd: Path, *, pinned: bool = False) -> Direct:
    """Run ``argv`` directly (stdout read through a pipe, as a job's is), on one core if
    ``pinned``; it must exit 0."""
    cpu = children_cpu()
    started = time.perf_counter()
    with one_core() if pinned else contextlib.nullcontext():
        done = subprocess.run(  # noqa: S603 (the benchmark's own commands)
            argv,
            cwd=cwd,
            env=DIRECT_ENV,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchmarkCheckFailed(
            f"{' '.join(argv)[:80]} run directly exited {done.returncode}: {done.stderr[-300:]!r}"
        )
    return Direct(seconds, children_cpu() - cpu, done.stdout)


def calibrate(cpu_seconds: float, scratch: Path) -> tuple[int, float]:
    """Bytes the cpu job hashes so that it takes about ``cpu_seconds`` CPU-seconds directly (a
    whole number of MiB, at least one), and the hashing rate measured (bytes per CPU-second)."""
    probe = cpu_workload(CALIBRATION_BYTES)
    rate = 0.0
    for _ in range(2):
        done = run_direct(probe.argv(str(scratch)), scratch)
        rate = max(rate, CALIBRATION_BYTES / max(done.cpu_seconds, 1e-3))
    return max(MIB, round(rate * cpu_seconds / MIB) * MIB), rate


# -- jobs in a scratch directory ------------------------------------------------------------------


@dataclass
class Scratch:
    """Fresh job directories under ``root`` (one per job, removed after it)."""

    root: Path
    count: int = 0

    def dirs(self, inputs: tuple[tuple[Path, str], ...] = ()) -> JobDirs:
        """A new job's directories."""
        self.count += 1
        root = self.root / f"job-{self.count}"
        for sub in ("work", "outputs"):
            (root / sub).mkdir(parents=True)
        return JobDirs(root, inputs, root / "work", root / "outputs")

    def direct_dir(self) -> Path:
        """A fresh directory for a direct run's outputs."""
        self.count += 1
        path = self.root / f"direct-{self.count}"
        path.mkdir()
        return path


@dataclass(frozen=True)
class JobRun:
    """One job run through an executor."""

    seconds: float
    """From the ``run`` call to its return."""
    result: RunResult
    stdout: Path
    """Where its stdout was saved."""


def run_job(kind: Executor, spec: JobSpec, dirs: JobDirs) -> JobRun:
    """Run ``spec`` with the ``kind`` executor, its stdout saved beside its directories."""
    stdout = dirs.root / "stdout"
    with stdout.open("wb") as sink:

        def on_output(stream: str, chunk: bytes) -> None:
            if stream == "stdout":
                sink.write(chunk)

        started = time.perf_counter()
        result = executor_for(kind).run(spec, dirs, on_output, threading.Event())
        seconds = time.perf_counter() - started
    if result.reason is not StopReason.EXITED or result.exit_code != 0:
        raise BenchmarkCheckFailed(
            f"a {kind_name(kind)} job {' '.join(spec.command)[:60]} ended {result.reason} "
            f"(exit {result.exit_code}): {result.detail}"
        )
    return JobRun(seconds, result, stdout)


def hash_outputs(job: JobRun, spec: JobSpec, dirs: JobDirs) -> tuple[float, outputs.Manifest]:
    """Seconds to scan and pack the job's outputs as a provider does, and the manifest."""
    started = time.perf_counter()
    manifest = outputs.scan(dirs.outputs, job.stdout, job.result, spec.outputs)
    outputs.pack(manifest, dirs.outputs, job.stdout, dirs.root / "archive")
    return time.perf_counter() - started, manifest


# -- 1. start overhead ----------------------------------------------------------------------------


def busybox_rootfs_tar(dirs: tuple[str, ...] = IMAGE_DIRS, passwd: bytes = b"") -> bytes:
    """A root file system of Debian's ``busybox-static`` as a tar (deterministic bytes, for
    ``docker import``: an image with no registry): ``/bin/busybox``, a link per applet, the
    directories ``dirs`` and, if given, ``/etc/passwd``. :class:`BenchmarkCheckFailed` without
    busybox (the docker tests build their image with it too)."""
    if not BUSYBOX.is_file():
        raise BenchmarkCheckFailed(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    listed = subprocess.run(  # noqa: S603 (the machine's busybox)
        [str(BUSYBOX), "--list"], capture_output=True, text=True, timeout=30, check=True
    )
    applets = sorted({name for name in listed.stdout.split() if name and "/" not in name})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(info: tarfile.TarInfo, data: bytes | None = None) -> None:
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for name in ("bin", *dirs):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            add(entry)
        body = BUSYBOX.read_bytes()
        binary = tarfile.TarInfo("bin/busybox")
        binary.size, binary.mode = len(body), 0o755
        add(binary, body)
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
                add(link)
        if passwd:
            entry = tarfile.TarInfo("etc/passwd")
            entry.size, entry.mode = len(passwd), 0o644
            add(entry, passwd)
    return out.getvalue()


def docker_image() -> str:
    """The benchmark's image on the machine's Docker Engine (imported, with no registry, unless
    its tag is there already): ``qoin-bench-busybox@sha256:<id>``. :class:`BenchmarkCheckFailed`
    saying why when it cannot be had."""
    tar = busybox_rootfs_tar()
    tag = hashlib.sha256(tar).hexdigest()[:16]
    transport = httpx.HTTPTransport(uds=socket_path())
    try:
        with httpx.Client(
            transport=transport, base_url="http://docker", timeout=DOCKER_TIMEOUT_S
        ) as client:
            found = client.get(f"/images/{quote(f'{IMAGE_REPO}:{tag}', safe='')}/json")
            if found.status_code != 200:
                answer = client.post(
                    "/images/create",
                    params={"fromSrc": "-", "repo": IMAGE_REPO, "tag": tag},
                    content=tar,
                    headers={"Content-Type": "application/x-tar"},
                )
                if answer.status_code != 200 or '"error"' in answer.text:
                    raise BenchmarkCheckFailed(
                        f"importing the image failed: {answer.status_code} {answer.text[:200]}"
                    )
                found = client.get(f"/images/{quote(f'{IMAGE_REPO}:{tag}', safe='')}/json")
            if found.status_code != 200:
                raise BenchmarkCheckFailed(f"the imported image is not there: {found.text[:200]}")
            return f"{IMAGE_REPO}@{found.json()['Id']}"
    except httpx.HTTPError as exc:
        raise BenchmarkCheckFailed(f"the Docker Engine failed: {exc}") from None


def trivial_job(kind: Executor, scratch: Scratch, image: str) -> tuple[JobSpec, JobDirs]:
    """A trivial job of ``kind`` (see the module docstring) and fresh directories for it."""
    resources = Resources(cpus=1, memory=JOB_MEMORY)
    limits = OutputLimits(max_bytes=MIB, max_files=16, max_log_bytes=MIB)
    if kind is Executor.WASM:
        import wasmtime  # noqa: PLC0415 (present: the executor is available)

        module = scratch.root / "trivial.wasm"
        if not module.exists():
            module.write_bytes(wasmtime.wat2wasm(WASM_TRIVIAL))
        cid = tagged_hash(b"QOIN/bench/compute/wasm/v1", module.read_bytes())
        spec = JobSpec(
            Executor.WASM,
            (WASM_PATH,),
            inputs=(Input(cid, WASM_PATH),),
            resources=resources,
            timeout=60,
            outputs=limits,
        )
        return spec, scratch.dirs(((module, WASM_PATH),))
    spec = JobSpec(
        kind,
        ("true",),
        image=image if kind is Executor.DOCKER else "",
        resources=resources,
        timeout=60,
        outputs=limits,
    )
    return spec, scratch.dirs()


def executor_problem(kind: Executor) -> str | None:
    """Why ``kind`` cannot run here (its availability check, which runs a job or two)."""
    return executor_for(kind).problem()


def measure_start(
    kind: Executor, repeat: int, scratch: Scratch, say: Callable[[str], None]
) -> dict[str, Any]:
    """Start overhead of ``kind`` (module docstring, 1.); ``{"available": false, "reason"}``
    when it cannot run here."""
    problem = executor_problem(kind)
    image = ""
    if problem is None and kind is Executor.DOCKER:
        try:
            image = docker_image()
        except BenchmarkCheckFailed as exc:
            problem = str(exc)
    if problem is not None:
        say(f"{kind_name(kind)}: unavailable ({problem})")
        return {"available": False, "reason": problem}
    say(f"{kind_name(kind)}: {repeat} trivial jobs, each after running true directly")
    spec, dirs = trivial_job(kind, scratch, image)
    run_job(kind, spec, dirs)  # the first run (caches, the image's first use) is not counted
    shutil.rmtree(dirs.root)
    direct: list[float] = []
    job: list[float] = []
    started: list[float] = []
    for _ in range(repeat):
        direct.append(run_direct(("true",), scratch.root).seconds)
        spec, dirs = trivial_job(kind, scratch, image)
        done = run_job(kind, spec, dirs)
        shutil.rmtree(dirs.root)
        job.append(done.seconds)
        started.append(done.result.start_seconds)
    differences = [j - d for j, d in zip(job, direct, strict=True)]
    median = statistics.median(differences)
    figures: dict[str, Any] = {
        "available": True,
        "repeat": repeat,
        "direct_ms_median": ms(statistics.median(direct)),
        "job_ms_median": ms(statistics.median(job)),
        "job_ms_p90": ms(percentile(job, 0.9)),
        "overhead_ms_median": ms(median),
        "overhead_ms_p90": ms(percentile(differences, 0.9)),
        "reported_start_ms_median": ms(statistics.median(started)),
        "goal_ms": ms(START_GOAL_S),
        "goal_met": median < START_GOAL_S,
    }
    if kind is Executor.DOCKER:
        figures["image"] = image
    return figures


# -- 2. executor-only overhead --------------------------------------------------------------------


def _check_same(
    workload: Workload, job: JobRun, manifest: outputs.Manifest, direct: Direct
) -> None:
    if job.stdout.read_bytes() != direct.stdout:
        raise BenchmarkCheckFailed(f"the {workload.name} job's stdout is not the direct run's")
    sizes = {entry.path: entry.size for entry in manifest.files}
    wanted = {"out": workload.output_bytes} if workload.output_bytes else {}
    if sizes != wanted:
        raise BenchmarkCheckFailed(f"the {workload.name} job left {sizes}, not {wanted}")


def measure_executor(
    workload: Workload, rounds: int, timeout: int, scratch: Scratch
) -> dict[str, Any]:
    """``rounds`` direct runs of ``workload`` and as many sandbox jobs, interleaved (module
    docstring, 2.): medians."""
    direct: list[Direct] = []
    pinned: list[float] = []
    jobs: list[JobRun] = []
    hashes: list[float] = []
    spec = workload.spec(timeout)
    for _ in range(rounds):
        out = scratch.direct_dir()
        done = run_direct(workload.argv(str(out)), out)
        shutil.rmtree(out)
        direct.append(done)
        out = scratch.direct_dir()
        pinned.append(run_direct(workload.argv(str(out)), out, pinned=True).seconds)
        shutil.rmtree(out)
        dirs = scratch.dirs()
        job = run_job(Executor.SANDBOX, spec, dirs)
        hashed, manifest = hash_outputs(job, spec, dirs)
        _check_same(workload, job, manifest, done)
        shutil.rmtree(dirs.root)
        jobs.append(job)
        hashes.append(hashed)
    direct_s = statistics.median(d.seconds for d in direct)
    one_core_s = statistics.median(pinned)
    job_s = statistics.median(j.seconds for j in jobs)
    hash_s = statistics.median(hashes)
    return {
        "command": " ".join(workload.argv("/outputs")),
        "rounds": rounds,
        "direct_s": direct_s,
        "direct_one_core_s": one_core_s,
        "direct_cpu_s": statistics.median(d.cpu_seconds for d in direct),
        "job_s": job_s,
        "job_cpu_s": statistics.median(j.result.cpu_seconds for j in jobs),
        "start_s": statistics.median(j.result.start_seconds for j in jobs),
        "run_s": statistics.median(j.result.wall_seconds for j in jobs),
        "hash_s": hash_s,
        "overhead_s": job_s + hash_s - direct_s,
        "overhead_without_hash_s": job_s - direct_s,
        "overhead_vs_one_core_s": job_s + hash_s - one_core_s,
        "ratio": (job_s + hash_s) / direct_s,
    }


# -- the machine ----------------------------------------------------------------------------------


def busy_cpu_seconds() -> float | None:
    """CPU-seconds every core of the machine spent busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(value) for value in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # guest time is counted in user already
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and of its waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + children_cpu()


@dataclass(frozen=True)
class MachineClock:
    """The machine's busy time and this process's CPU time at a moment, to tell how much CPU
    other processes took meanwhile."""

    at: float
    busy: float | None
    own: float

    @classmethod
    def now(cls) -> MachineClock:
        return cls(time.monotonic(), busy_cpu_seconds(), own_cpu_seconds())

    def since(self, start: MachineClock) -> dict[str, Any]:
        """Seconds between, and the CPU-seconds of the machine, of the benchmark (its processes,
        once stopped) and of everything else."""
        busy = None if self.busy is None or start.busy is None else self.busy - start.busy
        own = self.own - start.own
        return {
            "seconds": self.at - start.at,
            "machine_busy_cpu_s": busy,
            "benchmark_cpu_s": own,
            "other_cpu_s": None if busy is None else max(busy - own, 0.0),
            "loadavg_at_end": list(os.getloadavg()),
        }


# -- the whole benchmark --------------------------------------------------------------------------


def measure(
    cpu_seconds: float = DEFAULT_CPU_SECONDS,
    output_mib: int = DEFAULT_OUTPUT_MIB,
    repeat: int = DEFAULT_REPEAT,
    kinds: tuple[Executor, ...] = KINDS,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The part without a network (module docstring) as one JSON-ready dict; ``workloads`` in it
    are the three commands (for :mod:`qoin.bench.compute_live`)."""
    if cpu_seconds <= 0 or output_mib < 1 or repeat < 1:
        raise BenchmarkCheckFailed("cpu_seconds is above 0, output_mib and repeat at least 1")
    say = progress or (lambda _message: None)
    with tempfile.TemporaryDirectory(prefix="qoin-bench-compute-", dir=workdir) as tmp:
        scratch = Scratch(Path(tmp))
        say(f"sizing the cpu job to {cpu_seconds:g} CPU-seconds (sha256sum of zeros, directly)")
        hash_bytes, rate = calibrate(cpu_seconds, scratch.root)
        workloads = (TRIVIAL, cpu_workload(hash_bytes), output_workload(output_mib * MIB))
        timeout = job_timeout(cpu_seconds)
        start = {kind_name(kind): measure_start(kind, repeat, scratch, say) for kind in kinds}
        if not start.get("sandbox", {}).get("available", False):
            raise BenchmarkCheckFailed(
                f"the sandbox executor cannot run here: {start.get('sandbox', {}).get('reason')}"
            )
        executor: dict[str, Any] = {}
        rounds = {"trivial": repeat, "cpu": HEAVY_ROUNDS, "output": min(repeat, OUTPUT_ROUNDS)}
        for workload in workloads:
            say(
                f"executor only: the {workload.name} job directly and in the sandbox "
                f"({rounds[workload.name]} round(s))"
            )
            executor[workload.name] = measure_executor(
                workload, rounds[workload.name], timeout, scratch
            )
    return {
        "benchmark": "compute",
        "machine": machine_info(),
        "parameters": {
            "cpu_seconds": cpu_seconds,
            "output_mib": output_mib,
            "repeat": repeat,
            "cpu_job_bytes": hash_bytes,
            "sha256sum_mb_per_cpu_s": rate / 1e6,
            "job_timeout_s": timeout,
            "job_cpus": 1,
            "job_memory": JOB_MEMORY,
        },
        "start_overhead": start,
        "executor_only": executor,
        "workloads": {
            w.name: {"script": w.script, "output_bytes": w.output_bytes} for w in workloads
        },
    }


def workloads_of(report: dict[str, Any]) -> tuple[Workload, ...]:
    """The three workloads a :func:`measure` report ran."""
    return tuple(
        Workload(name, item["script"], item["output_bytes"])
        for name, item in report["workloads"].items()
    )


def run(
    cpu_seconds: float = DEFAULT_CPU_SECONDS,
    output_mib: int = DEFAULT_OUTPUT_MIB,
    repeat: int = DEFAULT_REPEAT,
    kinds: tuple[Executor, ...] = KINDS,
    market: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark: :func:`measure`, then (with ``market``) the live network's figures
    (:func:`qoin.bench.compute_live.measure_live`) for the same workloads."""
    from qoin.bench import compute_live  # noqa: PLC0415 (the network part's imports)

    began = MachineClock.now()
    report = measure(cpu_seconds, output_mib, repeat, kinds, progress=progress)
    if market:
        direct = {
            name: (item["direct_s"], item["direct_one_core_s"])
            for name, item in report["executor_only"].items()
        }
        live = compute_live.measure_live(
            workloads_of(report),
            direct,
            report["parameters"]["job_timeout_s"],
            progress=progress,
        )
        report.update(live)
    report["machine_during_run"] = MachineClock.now().since(began)
    report["peak_rss_bytes"] = peak_rss_bytes()
    return report


def _start_line(name: str, figures: dict[str, Any]) -> str:
    if not figures.get("available"):
        return f"{name} start: unavailable ({figures.get('reason')})"
    return (
        f"{name} start overhead: median {figures['overhead_ms_median']:.1f} ms, p90 "
        f"{figures['overhead_ms_p90']:.1f} ms over {figures['repeat']} trivial jobs (direct true "
        f"{figures['direct_ms_median']:.1f} ms); goal < {figures['goal_ms']:.0f} ms: "
        f"{'met' if figures['goal_met'] else 'not met'}"
    )


def machine_lines(report: Mapping[str, Any]) -> list[str]:
    """The line on the machine while the benchmark ran (``machine_during_run``), if measured."""
    during = report.get("machine_during_run")
    if during is None:
        return []
    other = during["other_cpu_s"]
    return [
        f"{during['seconds']:.0f} s in all; other processes used "
        f"{'?' if other is None else f'{other:.0f}'} CPU-s meanwhile"
    ]


def table(report: dict[str, Any]) -> str:
    """The report as a few human-readable lines."""
    from qoin.bench import compute_live  # noqa: PLC0415

    params = report["parameters"]
    lines = [
        f"cpu job: {params['cpu_job_bytes'] / MIB:,.0f} MiB through sha256sum "
        f"({params['cpu_seconds']:g} CPU-s directly); output job: {params['output_mib']} MiB",
        *(_start_line(name, figures) for name, figures in report["start_overhead"].items()),
    ]
    for name, figures in report["executor_only"].items():
        lines.append(
            f"executor only, {name}: directly {figures['direct_s']:.3f} s (one core "
            f"{figures['direct_one_core_s']:.3f} s), sandbox "
            f"{figures['job_s']:.3f} s + hashing {figures['hash_s']:.3f} s: overhead "
            f"{figures['overhead_s']:.3f} s (x{figures['ratio']:.2f})"
        )
    lines += compute_live.table(report)
    lines += machine_lines(report)
    with contextlib.suppress(KeyError):
        lines.append(f"peak RSS {report['peak_rss_bytes'] / MIB:.0f} MiB")
    return "\n".join(lines)
