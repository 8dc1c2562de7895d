"""The life of one job on a compute provider (docs/spec/compute.md §5).

A job is one replica of a deal. Its directory ``DATADIR/jobs/deal-<id>/`` holds the spec
(``spec.bin``), the job key as it was sealed to the provider (``jobkey.sealed``), its status
(``status.json``, rewritten atomically at every step), its saved log (``log.data``, the bytes of
stdout and stderr in the order they came, ``log.index``, where the stream changes, and
``stdout``), the manifest of its result (``manifest.json``) and its packed outputs archive
(``result.archive``); ``run/`` holds what the job sees (``inputs/``, ``work/``, ``outputs/``).

Steps, each on the job's own thread, each persisted before the next, so that a restarted daemon
takes the job up where the chain and the directory say it stands:

1. **staging** the inputs from the storage market (each file key unwrapped with the job key), then
   **running** the executor (its output saved and handed to WebSocket followers as it comes);
2. **hashing**: the outputs are scanned into the manifest, its root computed and the archive
   packed; a run that failed (a limit, a crash, a bad exit) is still a result;
3. **committed**: the commitment (root, a fresh salt, both fsynced with the archive first: a
   provider killed after committing reveals with the same salt) is sent before the run deadline;
   a run still going at the run deadline is stopped (it could only commit late, or never);
4. **revealed**: once the reveal phase starts (every replica committed, or the run deadline), the
   root, salt and usage (CPU-seconds, rounded up, capped at what the deal reserves);
5. **stored**: the archive is stored with the storage market, encrypted under
   :func:`qoin.compute.keys.output_master` (retried with a backoff; while no two storage
   providers have room, nothing is sent and the status says so). From the reveal on, the archive
   is also served as it is (``GET /jobs/{deal}/outputs``), so delivery never waits on storage;
6. **settled** when the deal settles; the directory is deleted a grace period later.

Staging that fails (an input that cannot be fetched or decrypted) or an executor that cannot start
the job (a provider-side fault) end the job **failed**: nothing is committed, and the status says
why.

The status is changed by the job's thread and by the daemon's event loop (settlement, the reveal
phase, aborts): :meth:`Job.change` applies changes one after the other, each on the status the one
before left, and writes each before the next (files and directories fsynced). Offers waiting for
their deal are kept by :class:`Offers`, bounded, each with its first job key.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import math
import os
import random
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Final

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

from qoin.ai import runtime as ai_runtime
from qoin.ai.job import tensorfile
from qoin.ai.runtime import AiRuntimeError
from qoin.compute import jobspec, keys, market, outputs
from qoin.compute.executors import ExecutorError, JobDirs, RunResult, executor_for
from qoin.compute.jobspec import JobSpec
from qoin.compute.market import ComputeMarketView, Phase, ReplicaState
from qoin.compute.params import ComputeParams
from qoin.crypto.hashing import HASH_SIZE
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.files import FileReadError, read_bounded, write_atomically
from qoin.storage import client as storage_client
from qoin.storage import crypt, merkle, retrieve
from qoin.storage.market import MarketView
from qoin.wallet import CallReverted, Wallet, WalletError

SPEC_FILE: Final = "spec.bin"
KEY_FILE: Final = "jobkey.sealed"
STATUS_FILE: Final = "status.json"
OFFER_FILE: Final = "offer.json"
MANIFEST_FILE: Final = "manifest.json"
ARCHIVE_FILE: Final = "result.archive"
LOG_DATA: Final = "log.data"
LOG_INDEX: Final = "log.index"
STDOUT_FILE: Final = "stdout"
RUN_DIR: Final = "run"
MAX_STATUS_FILE: Final = 64 * 1024
MAX_DETAIL: Final = 4096
"""Characters of a status's detail kept, at most (executor and node messages can be long)."""
MAX_OFFER_FILE: Final = 4096
MAX_OFFERS: Final = 1024
"""Accepted offers kept at once (each until its bid forms a deal or ends), at most."""
MAX_OFFER_BYTES: Final = 64 << 20
"""Bytes of kept offers' specs, at most."""
MAX_OFFERS_PER_CLIENT: Final = 32
"""Accepted offers of one client kept at once, at most."""
MAX_MANIFEST_FILE: Final = 256 << 20
"""Bytes of a saved manifest, at most (10,000 files of long names by default; 2^20 at most)."""
MAX_INPUT_BYTES: Final = retrieve.MAX_STORED_SIZE
"""Bytes stored for one input, at most."""
TX_TIMEOUT_S: Final = 60.0
"""Seconds a commit, reveal or verdict may take to be mined before it is tried again."""
CHAIN_CHECK_S: Final = 5.0
"""While a job waits for a phase, it reads its deal from the chain this often (the events
usually come first)."""
STORE_BACKOFF_S: Final = (2.0, 5.0, 10.0, 30.0, 60.0)
"""Waits between attempts to store the outputs that failed (the last repeats)."""
STORE_NO_ROOM_S: Final = (2.0, 5.0, 10.0)
"""Waits between looks for storage providers with room for the outputs (the last repeats; a look
reads the book and sends nothing)."""
OUTPUT_SHARDS: Final = storage_client.MIN_SHARDS
"""Shards of a stored outputs archive: the fewest the storage market takes (n = 2, each on its own
provider; k = 1: either one rebuilds it)."""
OUTPUT_NEEDED: Final = 1
STOP_JOIN_S: Final = 10.0
COMMIT_GAS: Final = 300_000
"""Gas limit of a commit at least: the last one starts the reveal phase, and two replicas' commits
estimated in the same block would each be priced as the cheap first one (unused gas is
refunded)."""
SETTLING_GAS: Final = 1_000_000
"""Gas limit of a reveal or a verdict at least: the last reveal may settle the deal or start a
mediation, a verdict settles it."""
MISBEHAVIOURS: Final = (
    "random-output",
    "copy-reveal",
    "withhold",
    "fewer-epochs",
    "random-weights",
)
"""TEST ONLY ways a provider can cheat (``--misbehave``, for the replicated tests):
``random-output`` commits and reveals a random root; ``copy-reveal`` commits a random root, then
tries to reveal the other replica's revealed root; ``withhold`` commits and never reveals;
``fewer-epochs`` runs the job with every ``--epochs N`` of its command as ``--epochs 1`` (a lazy
trainer, :func:`fewer_epochs`) and commits and reveals that result as if honest;
``random-weights`` runs the job, then replaces the arrays of every model file it left
(``*.qm`` under ``/outputs``) with random values (:func:`random_weights`) before they are hashed,
and commits and reveals that result as if honest."""
EPOCHS: Final = "--epochs"
MODEL_SUFFIX: Final = ".qm"
GPU_WAIT_S: Final = 0.5
"""While a run waits for GPUs held by other runs, it looks again this often (and at once when
one is given back)."""


class JobError(QoinError):
    """A job that cannot go on; :attr:`reason` is the short reason its status shows."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Stopped(Exception):
    """The daemon is stopping: leave the job where it stands (a restart takes it up)."""


class JobState(StrEnum):
    """Where a job stands (``GET /jobs/{deal}``'s ``state``)."""

    STAGING = "staging"
    RUNNING = "running"
    COMMITTED = "committed"
    REVEALED = "revealed"
    STORED = "stored"
    FAILED = "failed"
    SETTLED = "settled"


TIMINGS: Final = ("stage", "pull", "start", "run", "hash", "upload")
"""The timings a status reports, in seconds."""


@dataclass(frozen=True)
class JobStatus:
    """A job's status, as saved in ``status.json``."""

    deal: int
    replica: int
    client: str
    """The deal's client (bech32m)."""
    mediator: str = ""
    """The deal's mediator (bech32m; empty: none)."""
    state: JobState = JobState.STAGING
    reason: str = ""
    """Why the run ended (a :class:`~qoin.compute.executors.StopReason`), or why the job
    failed (``staging-failed``, ``executor-failed``, ``too-late``, ...)."""
    detail: str = ""
    """What happened, for a person."""
    exit_code: int | None = None
    usage_cpu: int = 0
    usage_gpu: int = 0
    cpu_seconds: float = 0.0
    """CPU time the run used (what ``usage_cpu`` bills, rounded up and capped)."""
    fuel: int | None = None
    log_bytes: int = 0
    stage: float = 0.0
    pull: float = 0.0
    start: float = 0.0
    run: float = 0.0
    hash: float = 0.0
    upload: float = 0.0
    root: str = ""
    """The committed root (hex), once hashed; shown only once revealed on chain."""
    salt: str = ""
    """The commitment's salt (hex)."""
    revealed: bool = False
    cid: str = ""
    """The outputs archive's content id in the storage market (hex), once stored."""
    size: int = 0
    """The archive's size."""
    finished: bool = False
    """The run is over: the saved log is complete."""
    settled_height: int = -1
    """The height the deal settled at (-1: open)."""
    run_deadline: int = 0
    """The deal's run deadline (0: not known yet): a job still staging or running at this height
    can no longer commit and is stopped."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": str(self.state)}

    @classmethod
    def from_json(cls, obj: Any) -> JobStatus:
        """Parse a saved status; :class:`JobError` if it is not one."""
        names = {f.name for f in fields(cls)}
        if not isinstance(obj, dict) or not {"deal", "replica", "client"} <= set(obj):
            raise JobError("bad-status", "a job status is an object with deal, replica, client")
        try:
            values = {k: v for k, v in obj.items() if k in names}
            values["state"] = JobState(values.get("state", "staging"))
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise JobError("bad-status", f"a job status does not parse: {exc}") from None

    def public(self) -> dict[str, Any]:
        """What ``GET /jobs/{deal}`` answers."""
        return {
            "deal": self.deal,
            "replica": self.replica,
            "state": str(self.state),
            "reason": self.reason,
            "detail": self.detail,
            "exit_code": self.exit_code,
            "usage_cpu": self.usage_cpu,
            "usage_gpu": self.usage_gpu,
            "cpu_seconds": round(self.cpu_seconds, 6),
            "fuel": self.fuel,
            "log_bytes": self.log_bytes,
            "timings": {name: round(getattr(self, name), 6) for name in TIMINGS},
            "root": self.root if self.revealed else None,
            "cid": self.cid or None,
        }


def read_status(directory: Path) -> JobStatus:
    """The status saved in ``directory``; :class:`JobError` if missing or damaged."""
    try:
        raw = read_bounded(directory / STATUS_FILE, MAX_STATUS_FILE, "job status")
        return JobStatus.from_json(json.loads(raw))
    except (FileReadError, ValueError, RecursionError) as exc:
        raise JobError("bad-status", f"{directory / STATUS_FILE}: {exc}") from None


def sync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename or a new file in it) survive a crash."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_file(path: Path) -> None:
    """Flush ``path``'s content to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_status(directory: Path, status: JobStatus) -> None:
    """Replace the saved status, durably (the file fsynced, then its directory: the salt of a
    commitment must be on the disk before the commitment is sent)."""
    write_atomically(directory / STATUS_FILE, json.dumps(status.to_json()).encode(), mode=0o600)
    sync_dir(directory)


# -- the saved log --------------------------------------------------------------------------------

STREAMS: Final = ("stdout", "stderr")
FRAME_BYTES: Final = 48 * 1024
"""Bytes of log data in one WebSocket frame, at most."""
MAX_STREAM_CHANGES: Final = 1 << 16
"""Changes from one stream to the other a saved log records, at most (a bound on its index)."""


@dataclass(frozen=True)
class LogPiece:
    """Bytes of one stream at an offset of the saved log."""

    stream: str
    offset: int
    data: bytes


class JobLog:
    """The saved output of a run: ``log.data`` (both streams' bytes in arrival order, at most
    ``limit`` bytes), ``log.index`` (8-byte offset + 1-byte stream at each change of stream, at
    most :data:`MAX_STREAM_CHANGES`: past them only the stream of the last change is added to the
    log it streams) and ``stdout`` (stdout alone, at most ``limit`` bytes: a part of the
    result). Thread-safe: the executor writes, followers read."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._codes: list[int] = []
        self._size = 0
        self._stdout_size = 0
        self._files: dict[str, BinaryIO] = {}
        self._load()

    @property
    def stdout_path(self) -> Path:
        return self.directory / STDOUT_FILE

    @property
    def size(self) -> int:
        """Bytes saved."""
        return self._size

    def _load(self) -> None:
        data, index = self.directory / LOG_DATA, self.directory / LOG_INDEX
        self._size = data.stat().st_size if data.exists() else 0
        self._stdout_size = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
        raw = b""
        if index.exists():
            with index.open("rb") as handle:
                raw = handle.read(9 * MAX_STREAM_CHANGES)
        whole = len(raw) - len(raw) % 9
        self._starts = [int.from_bytes(raw[i : i + 8], "big") for i in range(0, whole, 9)]
        self._codes = [raw[i + 8] % 2 for i in range(0, whole, 9)]

    def _file(self, name: str) -> BinaryIO:
        handle = self._files.get(name)
        if handle is None:
            handle = (self.directory / name).open("ab")
            self._files[name] = handle
        return handle

    def close(self) -> None:
        """Close the files written (the run is over)."""
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()

    def reset(self) -> None:
        """Forget what was saved (a job run again)."""
        self.close()
        with self._lock:
            for name in (LOG_DATA, LOG_INDEX, STDOUT_FILE):
                path = self.directory / name
                path.unlink(missing_ok=True)
                path.touch(mode=0o600)
            self._starts, self._codes, self._size, self._stdout_size = [], [], 0, 0

    def write(self, stream: str, chunk: bytes) -> None:
        """Save ``chunk`` of ``stream`` (what fits under the limit)."""
        code = 1 if stream == "stderr" else 0
        with self._lock:
            if code == 0 and self._stdout_size < self.limit:
                kept = chunk[: self.limit - self._stdout_size]
                out = self._file(STDOUT_FILE)
                out.write(kept)
                out.flush()
                self._stdout_size += len(kept)
            room = self.limit - self._size
            if room <= 0 or not chunk:
                return
            if not self._codes or self._codes[-1] != code:
                if len(self._codes) >= MAX_STREAM_CHANGES:
                    return
                self._starts.append(self._size)
                self._codes.append(code)
                index = self._file(LOG_INDEX)
                index.write(self._size.to_bytes(8, "big") + bytes((code,)))
                index.flush()
            data = self._file(LOG_DATA)
            data.write(chunk[:room])
            data.flush()
            self._size += len(chunk[:room])

    def read(self, offset: int, max_bytes: int = 4 * FRAME_BYTES) -> list[LogPiece]:
        """What was saved from ``offset`` on (at most ``max_bytes``), cut where the stream
        changes and into pieces of at most :data:`FRAME_BYTES`."""
        offset = max(0, offset)
        with self._lock:
            size = self._size
            if offset >= size or not self._starts:
                return []
            first = bisect.bisect_right(self._starts, offset) - 1
            last = bisect.bisect_right(self._starts, min(size, offset + max_bytes)) + 1
            starts, codes = self._starts[first:last], self._codes[first:last]
        end = min(size, offset + max_bytes)
        with (self.directory / LOG_DATA).open("rb") as data:
            data.seek(offset)
            raw = data.read(end - offset)
        pieces: list[LogPiece] = []
        position = offset
        while position < offset + len(raw):
            current = bisect.bisect_right(starts, position) - 1
            stream_end = starts[current + 1] if current + 1 < len(starts) else size
            stop = min(stream_end, offset + len(raw), position + FRAME_BYTES)
            pieces.append(
                LogPiece(STREAMS[codes[current]], position, raw[position - offset : stop - offset])
            )
            position = stop
        return pieces


# -- staging and running --------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """A run and its result."""

    result: RunResult
    manifest: outputs.Manifest
    root: bytes
    """The result root (:func:`qoin.compute.outputs.result_root`)."""
    archive: Path
    """The packed outputs."""
    stage_seconds: float
    hash_seconds: float


def stage_inputs(
    spec: JobSpec, job_key: bytes, rpc: str, inputs_dir: Path, cancel: threading.Event
) -> tuple[tuple[Path, str], ...]:
    """Fetch every input of ``spec`` from the storage market (verified, decrypted with its file
    key unwrapped from the spec with ``job_key``) into ``inputs_dir``, read-only; (host file,
    path in the job) of each. :class:`JobError` (``staging-failed``) saying which input failed
    and why."""
    inputs_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, str]] = []
    for index, item in enumerate(spec.inputs):
        if cancel.is_set():
            raise JobError("cancelled", "stopped while staging the inputs")
        try:
            file_key = jobspec.unwrap_input_key(job_key, item) if item.key else None
            data = retrieve.fetch(rpc, item.cid, file_key=file_key, max_size=MAX_INPUT_BYTES)
            host = inputs_dir / str(index)
            host.write_bytes(data)
            host.chmod(0o444)
        except QoinError as exc:
            raise JobError(
                "staging-failed", f"input {item.path} ({item.cid.hex()[:16]}): {exc}"
            ) from None
        except OSError as exc:
            raise JobError(
                "staging-failed", f"input {item.path}: cannot write it here: {exc.strerror}"
            ) from None
        staged.append((host, item.path))
    return tuple(staged)


def fewer_epochs(command: tuple[str, ...]) -> tuple[str, ...]:
    """TEST ONLY (``--misbehave fewer-epochs``): ``command`` with every ``--epochs N`` (and
    ``--epochs=N``) made ``--epochs 1``."""
    lazy = list(command)
    for index, arg in enumerate(lazy):
        if arg == EPOCHS and index + 1 < len(lazy):
            lazy[index + 1] = "1"
        elif arg.startswith(EPOCHS + "="):
            lazy[index] = EPOCHS + "=1"
    return tuple(lazy)


def random_weights(outputs_dir: Path, max_bytes: int) -> list[str]:
    """TEST ONLY (``--misbehave random-weights``): every model file under ``outputs_dir``
    (``*.qm``, a :mod:`qoin.ai.job.tensorfile` of at most ``max_bytes``) written again with the
    same metadata and arrays of the same names and shapes, each ``float32`` one filled with random
    values (a model's parameters; others kept): still a valid model, not the trained one. Files
    that are not tensor files are left as they are. The paths changed (relative, sorted)."""
    changed = []
    noise = random.Random(os.urandom(16))  # a cheater's noise, not a secret
    for path in sorted(outputs_dir.rglob("*" + MODEL_SUFFIX)):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            found = tensorfile.read(path, max_bytes)
            arrays = [
                replace(
                    array,
                    data=struct.pack(
                        f"<{array.count}f", *(noise.gauss(0.0, 0.1) for _ in range(array.count))
                    ),
                )
                if array.dtype == "float32"
                else array
                for array in found.arrays
            ]
            tensorfile.write(path, found.meta, arrays)
        except tensorfile.TensorFileError:
            continue
        changed.append(str(path.relative_to(outputs_dir)))
    return changed


class GpuPool:
    """The GPUs a provider assigns to the runs of its jobs (their device numbers,
    ``/dev/nvidia<i>``, the first ``--gpus`` of the machine's): each GPU to one run at a time, the
    lowest free numbers first. A run takes its GPUs once its inputs are staged (:func:`execute`)
    and gives them back when it ends, however it ends (a failure, a cancel); nothing is kept on
    disk, so a restarted provider starts with every GPU free (no run outlives it) and the jobs it
    takes up take theirs again. The chain never lets the provider's deals reserve more GPUs than
    it offers, so a run waits only while another that no longer reserves them (its deal just
    settled, a mediation's re-run) still holds some. Thread-safe."""

    def __init__(self, gpus: Sequence[int] = ()) -> None:
        self.gpus = tuple(sorted(set(gpus)))
        self._free = set(self.gpus)
        self._cond = threading.Condition()

    def free(self) -> tuple[int, ...]:
        """The GPUs no run holds now."""
        with self._cond:
            return tuple(sorted(self._free))

    def take(
        self,
        count: int,
        cancel: threading.Event,
        on_wait: Callable[[str], None] = lambda _text: None,
    ) -> tuple[int, ...]:
        """``count`` GPUs for one run (lowest numbers first), waiting while fewer are free
        (``on_wait`` told once why). :class:`JobError`: ``executor-failed`` if this provider
        has fewer GPUs than that at all, ``cancelled`` if ``cancel`` is set while it waits."""
        if count <= 0:
            return ()
        if count > len(self.gpus):
            raise JobError(
                "executor-failed",
                f"the job asks for {count} GPU(s); this provider assigns {len(self.gpus)} to jobs",
            )
        said = False
        while True:
            with self._cond:
                if len(self._free) >= count:
                    taken = tuple(sorted(self._free)[:count])
                    self._free.difference_update(taken)
                    return taken
                free = len(self._free)
                if said:
                    self._cond.wait(GPU_WAIT_S)
            if cancel.is_set():
                raise JobError("cancelled", f"stopped while waiting for {count} GPU(s)")
            if not said:
                said = True
                on_wait(
                    f"waiting for {count} GPU(s): {free} of {len(self.gpus)} free, the others "
                    "held by other runs"
                )

    def give_back(self, gpus: Sequence[int]) -> None:
        """A run ended: its GPUs are free again."""
        with self._cond:
            self._free.update(gpu for gpu in gpus if gpu in self.gpus)
            self._cond.notify_all()

    @contextlib.contextmanager
    def assigned(
        self,
        count: int,
        cancel: threading.Event,
        on_wait: Callable[[str], None] = lambda _text: None,
    ) -> Iterator[tuple[int, ...]]:
        """:meth:`take` ``count`` GPUs for the ``with`` block, given back when it ends."""
        taken = self.take(count, cancel, on_wait)
        try:
            yield taken
        finally:
            self.give_back(taken)


def runtime_dir(spec: JobSpec, runtimes: Mapping[str, Path]) -> Path | None:
    """The directory of the runtime ``spec`` names (None if it names none), loaded again
    (:func:`qoin.ai.runtime.load`: a runtime installed again or changed since the provider
    started is not the one the spec names); :class:`JobError` (``executor-failed``) if this
    provider lacks it or its directory no longer holds it."""
    if not spec.runtime:
        return None
    found = runtimes.get(spec.runtime)
    if found is None:
        raise JobError("executor-failed", runtime_refusal(spec.runtime, runtimes))
    try:
        now = ai_runtime.load(found).ref
    except AiRuntimeError as exc:
        raise JobError("executor-failed", f"runtime {spec.runtime}: {exc}") from None
    if now != spec.runtime:
        raise JobError(
            "executor-failed",
            f"runtime {spec.runtime} is no longer at {found}, which holds {now} now (installed "
            "again since this provider started: restart it to offer that one)",
        )
    return found


def runtime_refusal(ref: str, offered: Mapping[str, object]) -> str:
    """Why a job naming runtime ``ref`` cannot run here."""
    has = ", ".join(sorted(offered)) or "none"
    return f"runtime {ref} not offered here (this provider has: {has})"


def execute(
    spec: JobSpec,
    job_key: bytes,
    directory: Path,
    rpc: str,
    log: JobLog,
    cancel: threading.Event,
    on_staged: Callable[[float], None] = lambda _seconds: None,
    runtimes: Mapping[str, Path] | None = None,
    gpus: GpuPool | None = None,
    on_wait: Callable[[str], None] = lambda _text: None,
    after_run: Callable[[Path], None] | None = None,
) -> Execution:
    """Stage ``spec``'s inputs, run it with its executor (its runtime from ``runtimes``, ref ->
    directory; its GPUs assigned from ``gpus`` for the run, waiting while they are held by other
    runs, ``on_wait`` told why) and hash its outputs, all in ``directory`` (``run/`` is wiped
    first). ``after_run`` (TEST ONLY, a cheater's) is called with the outputs directory between
    the run and the hashing. :class:`JobError` when there is no result: ``staging-failed`` (an
    input), ``executor-failed`` (the executor could not run it here, its runtime is not here, or
    this provider has fewer GPUs than it asks for), ``hashing-failed`` (its outputs could not be
    read back), ``cancelled`` (stopped while waiting for GPUs)."""
    runtime = runtime_dir(spec, runtimes or {})
    run_dir = directory / RUN_DIR
    shutil.rmtree(run_dir, ignore_errors=True)
    for sub in ("inputs", "work", "outputs"):
        (run_dir / sub).mkdir(parents=True)
    log.reset()
    started = time.monotonic()
    staged = stage_inputs(spec, job_key, rpc, run_dir / "inputs", cancel)
    stage_seconds = time.monotonic() - started
    on_staged(stage_seconds)
    executor = executor_for(spec.executor)
    problem = executor.problem()
    if problem is not None:
        raise JobError("executor-failed", f"the {spec.executor.name.lower()} executor: {problem}")
    pool = gpus or GpuPool()
    try:
        with pool.assigned(spec.resources.gpus, cancel, on_wait) as assigned:
            dirs = JobDirs(
                root=run_dir,
                inputs=staged,
                work=run_dir / "work",
                outputs=run_dir / "outputs",
                runtime=runtime,
                gpus=assigned,
            )
            result = executor.run(spec, dirs, log.write, cancel)
    except ExecutorError as exc:
        raise JobError("executor-failed", str(exc)) from None
    finally:
        log.close()
    if after_run is not None:
        after_run(dirs.outputs)
    hashing = time.monotonic()
    archive = directory / ARCHIVE_FILE
    try:
        manifest = outputs.scan(dirs.outputs, log.stdout_path, result, spec.outputs)
        outputs.pack(manifest, dirs.outputs, log.stdout_path, archive)
    except (QoinError, OSError) as exc:
        raise JobError("hashing-failed", f"cannot read the outputs back: {exc}") from None
    return Execution(
        result,
        manifest,
        outputs.result_root(manifest),
        archive,
        stage_seconds,
        time.monotonic() - hashing,
    )


def manifest_json(manifest: outputs.Manifest) -> dict[str, Any]:
    """A manifest as JSON (``GET /jobs/{deal}/result``)."""

    def entry(item: outputs.FileEntry) -> dict[str, Any]:
        return {"path": item.path, "size": item.size, "digest": item.digest.hex()}

    return {
        "reason": str(manifest.reason),
        "exit_code": manifest.exit_code,
        "stdout": entry(manifest.stdout),
        "files": [entry(item) for item in manifest.files],
    }


MANIFEST_FILE_BYTES: Final = outputs.MAX_PATH + HASH_SIZE + 16
"""Most bytes one output file adds to a result manifest (as :data:`~qoin.compute.outputs.
MAX_MANIFEST` counts them)."""
MANIFEST_HEAD_BYTES: Final = 256
"""Most bytes of a result manifest before its files."""


def answer_manifest_problem(spec: JobSpec) -> str | None:
    """Why a job's result manifest could be over what a reveal with an answer carries
    (:data:`~qoin.compute.market.MAX_ANSWER_MANIFEST`: a provider that took the job could not
    reveal and would be fined), or None: ``spec.outputs.max_files`` bounds it."""
    files = spec.outputs.max_files
    if MANIFEST_HEAD_BYTES + files * MANIFEST_FILE_BYTES <= market.MAX_ANSWER_MANIFEST:
        return None
    most = (market.MAX_ANSWER_MANIFEST - MANIFEST_HEAD_BYTES) // MANIFEST_FILE_BYTES
    return (
        f"the bid asks for an answer, whose reveal carries a result manifest of at most "
        f"{market.MAX_ANSWER_MANIFEST} bytes, and the spec lets the job leave {files} output "
        f"files: allow at most {most} (--max-files {most})"
    )


def reveal_answer(archive: Path, max_answer: int) -> tuple[bytes, bytes]:
    """What a reveal of a deal that asks for an answer carries (docs/spec/compute.md §3.12):
    the result manifest's encoding and the stdout, both read from the head of the packed
    outputs archive (the stdout empty when it is over ``max_answer``). :class:`JobError` if the
    manifest is over :data:`~qoin.compute.market.MAX_ANSWER_MANIFEST` bytes (too many output
    files for an answer) or the archive is not what this provider packed."""
    try:
        with archive.open("rb") as source:
            head = source.read(len(outputs.MAGIC) + 10)
            if not head.startswith(outputs.MAGIC):
                raise JobError("disk-failed", f"{archive} is not an outputs archive")
            size, used = 0, 0
            for shift, byte in enumerate(head[len(outputs.MAGIC) :]):
                size |= (byte & 0x7F) << (7 * shift)
                used = shift + 1
                if not byte & 0x80:
                    break
            if size > market.MAX_ANSWER_MANIFEST:
                raise JobError(
                    "answer-too-large",
                    f"the result manifest is {size} bytes; a reveal with an answer carries at most "
                    f"{market.MAX_ANSWER_MANIFEST} (too many output files)",
                )
            source.seek(len(outputs.MAGIC) + used)
            encoded = source.read(size)
            manifest = outputs.Manifest.decode(encoded)
            stdout = b""
            if manifest.stdout.size <= max_answer:
                stdout = source.read(manifest.stdout.size)
    except (OSError, outputs.OutputsError) as exc:
        raise JobError("disk-failed", f"cannot read the answer from {archive}: {exc}") from None
    return encoded, stdout


def send(wallet: Wallet, call: market.MarketCall, least_gas: int) -> dict[str, Any]:
    """Send ``call`` with a gas limit of at least ``least_gas`` and wait for its receipt;
    :class:`~qoin.wallet.CallReverted` with the actor's reason if it would fail now or failed."""
    estimate = wallet.estimate(market.COMPUTE_MARKET, call.method, call.args, call.value)
    return wallet.transact(
        market.COMPUTE_MARKET,
        call.method,
        call.args,
        value=call.value,
        gas=max(estimate, least_gas),
        timeout=TX_TIMEOUT_S,
    )


def usage_of(result: RunResult, spec: JobSpec) -> tuple[int, int]:
    """(CPU-seconds, GPU-seconds) a reveal reports: the CPU time rounded up, the GPUs held for
    the run's wall time rounded up; each capped at what the deal reserves."""
    res = spec.resources
    cpu = min(math.ceil(max(0.0, result.cpu_seconds)), res.cpus * spec.timeout)
    gpu = min(res.gpus * math.ceil(max(0.0, result.wall_seconds)), res.gpus * spec.timeout)
    return cpu, gpu


def output_periods(params: ComputeParams, period: int, max_duration: int, timeout: int) -> int:
    """Storage periods an outputs archive is kept: the reveal phase, the dispute window and a
    whole mediation (twice, for the client's download after a verdict), rounded up."""
    blocks = params.reveal_blocks + params.dispute_blocks + 2 * params.mediation_budget(timeout)
    return max(1, min(max_duration, -(-blocks // period) + 1))


# -- one job --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobContext:
    """What every job of a provider works with."""

    keypair: HybridKeyPair
    rpc: str
    """The node's user RPC."""
    params: ComputeParams
    wallet: Wallet
    view: ComputeMarketView
    kem: MLKEM768PrivateKey
    log: Callable[[str], None]
    height: Callable[[], int]
    """The height of the last head seen."""
    misbehave: str | None = None
    """TEST ONLY (:data:`MISBEHAVIOURS`)."""
    runtimes: Mapping[str, Path] = field(default_factory=dict)
    """The runtimes offered: ref -> directory."""
    gpus: GpuPool = field(default_factory=GpuPool)
    """The GPUs assigned to runs (every job's and mediation's)."""


class Job:
    """One replica of a deal on this provider (see the module docstring). Events from the chain
    reach it through :meth:`on_reveal_phase`, :meth:`on_revealed`, :meth:`on_settled` and
    :meth:`abort`; the API reads :attr:`status` and :attr:`log`."""

    def __init__(
        self, ctx: JobContext, directory: Path, status: JobStatus, spec: JobSpec, sealed: bytes
    ) -> None:
        self.ctx = ctx
        self.directory = directory
        self.spec = spec
        self.job_key = keys.open_job_key(ctx.kem, sealed, spec.job_hash)
        self.log = JobLog(directory, spec.outputs.max_log_bytes)
        self._status = status
        self._lock = threading.Lock()
        """Guards :attr:`_status` (held briefly: the API reads it)."""
        self._save_lock = threading.Lock()
        """Serialises changes with their writes, so the file never goes back to an older status."""
        self.cancel = threading.Event()
        """Set to stop the executor."""
        self._wake = threading.Event()
        self._stopping = False
        self._aborted: str | None = None
        self._abort_reason = "cancelled"
        self._reveal_phase = False
        self._own_revealed = False
        self._other_root: bytes | None = None
        self._thread: threading.Thread | None = None

    @property
    def deal(self) -> int:
        return self._status.deal

    @property
    def status(self) -> JobStatus:
        with self._lock:
            return self._status

    def update(self, **changes: Any) -> JobStatus:
        """Change and save the status (a disk error is logged: the chain still says where the
        job stands)."""
        return self.change(lambda status: replace(status, **changes))

    def change(
        self, step: Callable[[JobStatus], JobStatus], must_persist: bool = False
    ) -> JobStatus:
        """Apply ``step`` to the current status and save the result; changes from several threads
        apply one after the other, each on the status the one before left. ``must_persist``: a
        status that cannot be saved is a :class:`JobError` (``disk-failed``), and the status in
        memory stays as it was."""
        with self._save_lock:
            with self._lock:
                before = self._status
                status = step(before)
                if len(status.detail) > MAX_DETAIL:  # the file stays readable (MAX_STATUS_FILE)
                    status = replace(status, detail=status.detail[: MAX_DETAIL - 3] + "...")
                self._status = status
            try:
                write_status(self.directory, status)
            except OSError as exc:
                if must_persist:
                    with self._lock:
                        self._status = before
                    raise JobError(
                        "disk-failed", f"cannot save the job's status: {exc.strerror}"
                    ) from None
                self.ctx.log(f"deal {status.deal}: cannot save its status: {exc.strerror}")
        return status

    def say(self, text: str) -> None:
        self.ctx.log(f"deal {self.deal}: {text}")

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        """Take the job up where its status stands, on its own thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"job {self.deal}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """The daemon stops: stop the run (a restart runs it again) and wait a little."""
        self.signal_stop()
        self.join(STOP_JOIN_S)

    def signal_stop(self) -> None:
        """Tell the job's thread to stop (the executor kills the run)."""
        self._stopping = True
        self.cancel.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def abort(self, why: str, reason: str = "cancelled") -> None:
        """The deal no longer wants this replica's work (settled, or its run deadline passed
        without a commitment): stop whatever it does; the job fails with ``reason``."""
        self._abort_reason = reason
        self._aborted = why
        self.cancel.set()
        self._wake.set()

    def on_reveal_phase(self) -> None:
        self._reveal_phase = True
        self._wake.set()

    def on_revealed(self, replica: int, root: bytes) -> None:
        """A replica revealed ``root``: this one (its reveal is mined), or another (what
        ``copy-reveal`` copies)."""
        if replica == self._status.replica:
            self._own_revealed = True
        else:
            self._other_root = root
        self._wake.set()

    def on_settled(self, height: int, outcome: str) -> None:
        """The deal settled: a job still storing its revealed outputs goes on (a client of a
        ``none`` deal, settled at the reveal, fetches them after); any other work stops."""
        storing = False

        def settle(status: JobStatus) -> JobStatus:
            nonlocal storing
            if status.settled_height >= 0:
                return status
            storing = status.state is JobState.REVEALED or (
                self._own_revealed and status.state is not JobState.STORED
            )
            return replace(
                status,
                state=status.state if storing else JobState.SETTLED,
                settled_height=height,
                detail=f"{status.detail}; deal settled ({outcome})".lstrip("; "),
            )

        if self.status.settled_height >= 0:
            return
        self.change(settle)
        if not storing:
            self.abort(f"the deal settled ({outcome})")

    def on_head(self, height: int) -> None:
        """Stop a run that can no longer be committed (its deal's run deadline has come): it
        would only commit late, or not at all, and hold the machine for nothing."""
        status = self.status
        if (
            0 < status.run_deadline <= height
            and status.state in (JobState.STAGING, JobState.RUNNING)
            and not status.root
            and self._aborted is None
            and self.alive
        ):
            self.say(
                f"the run deadline (height {status.run_deadline}) has come before a result: "
                "stopping the run; nothing will be committed"
            )
            self.abort(
                f"the run deadline (height {status.run_deadline}) passed during the run",
                "too-late",
            )

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the steps --------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._advance()
        except _Stopped:
            return
        except JobError as exc:
            if self.status.settled_height >= 0:
                if self.status.state is not JobState.SETTLED:
                    self.update(state=JobState.SETTLED)
                return
            self.update(state=JobState.FAILED, reason=exc.reason, detail=str(exc), finished=True)
            self.say(f"failed ({exc.reason}): {exc}")
            if exc.reason in ("too-late", "cancelled") and self._aborted is not None:
                self.say("nothing was committed for this replica")
        except QoinError as exc:  # the node, the disk: the job waits for a restart
            self.update(detail=f"stopped by an error: {exc}")
            self.say(f"stopped by an error: {exc}")

    def _check(self) -> None:
        if self._stopping:
            raise _Stopped
        if self._aborted is not None:
            raise JobError(self._abort_reason, self._aborted)

    def _advance(self) -> None:
        status = self.status
        if status.state in (JobState.FAILED, JobState.SETTLED, JobState.STORED):
            return
        if status.state in (JobState.STAGING, JobState.RUNNING) and not status.root:
            self._run()
        if self.status.state in (JobState.STAGING, JobState.RUNNING):
            self._commit()
        if self.status.state is JobState.COMMITTED:
            self._wait_for_reveal_phase()
            self._reveal()
        if self.status.state is JobState.REVEALED:
            self._store()

    def _run(self) -> None:
        self._check()
        self.update(state=JobState.STAGING, detail="staging the inputs", finished=False)
        self.say(f"staging {len(self.spec.inputs)} input(s)")

        def staged(seconds: float) -> None:
            self._check()
            deadline = self.status.run_deadline
            if 0 < deadline <= self.ctx.height():
                raise JobError(
                    "too-late",
                    f"staging took {seconds:.1f} s: the run deadline (height {deadline}) has "
                    "come, a result could no longer be committed; not running it",
                )
            self.update(state=JobState.RUNNING, stage=seconds, detail="running")
            self.say(
                f"inputs staged in {seconds:.1f} s; running ({self.spec.executor.name.lower()}, "
                f"timeout {self.spec.timeout} s, commit due before height {deadline or '?'})"
            )

        spec = self.spec
        if self.ctx.misbehave == "fewer-epochs":
            spec = replace(spec, command=fewer_epochs(spec.command))
            if spec != self.spec:
                self.say("TEST ONLY (fewer-epochs): running the job with --epochs 1")
        after_run = self._random_weights if self.ctx.misbehave == "random-weights" else None
        try:
            done = execute(
                spec,
                self.job_key,
                self.directory,
                self.ctx.rpc,
                self.log,
                self.cancel,
                staged,
                self.ctx.runtimes,
                gpus=self.ctx.gpus,
                on_wait=self._waiting,
                after_run=after_run,
            )
        except JobError as exc:
            self._check()
            if exc.reason == "cancelled":
                raise JobError(self._abort_reason, self._aborted or str(exc)) from None
            raise
        self._check()
        result = done.result
        if str(result.reason) == "cancelled":
            raise JobError("cancelled", "the run was stopped")
        usage_cpu, usage_gpu = usage_of(result, self.spec)
        root = done.root
        misbehave = self.ctx.misbehave
        if misbehave in ("random-output", "copy-reveal"):
            root = os.urandom(32)
            self.say(f"TEST ONLY ({misbehave}): committing a random root")
        write_atomically(
            self.directory / MANIFEST_FILE, json.dumps(manifest_json(done.manifest)).encode()
        )
        try:
            sync_file(done.archive)  # revealed outputs must be stored as they were committed
        except OSError as exc:
            raise JobError("disk-failed", f"cannot flush the outputs archive: {exc}") from None
        salt = market.new_salt().hex()
        # The root and salt reach the disk (fsynced) before the commitment is sent: a provider
        # killed after committing reveals with the same salt once restarted.
        self.change(
            lambda status: replace(
                status,
                reason=str(result.reason),
                detail=result.detail,
                exit_code=result.exit_code,
                usage_cpu=usage_cpu,
                usage_gpu=usage_gpu,
                cpu_seconds=result.cpu_seconds,
                fuel=result.fuel,
                log_bytes=self.log.size,
                pull=result.pull_seconds,
                start=result.start_seconds,
                run=result.wall_seconds,
                hash=done.hash_seconds,
                root=root.hex(),
                salt=salt,
                finished=True,
            ),
            must_persist=True,
        )
        self.say(
            f"ran: {result.reason} (exit {result.exit_code}), {result.cpu_seconds:.2f} CPU-s; "
            f"result root {done.root.hex()[:16]}"
        )

    def _waiting(self, text: str) -> None:
        self.update(detail=text)
        self.say(text)

    def _random_weights(self, outputs_dir: Path) -> None:
        """TEST ONLY (``random-weights``): the model files left by the run made random."""
        changed = random_weights(outputs_dir, self.spec.outputs.max_bytes)
        self.say(f"TEST ONLY (random-weights): random weights in {', '.join(changed) or 'none'}")

    def _deal(self) -> market.DealInfo:
        found = self.ctx.view.get_deal(self.deal)
        if found is None:
            raise JobError("cancelled", "the deal is over (settled) on chain")
        return found

    def _replica_state(self, found: market.DealInfo) -> ReplicaState:
        return found.replicas[self.status.replica].state

    def _commit(self) -> None:
        status = self.status
        root, salt = bytes.fromhex(status.root), bytes.fromhex(status.salt)
        sealed = market.commitment(self.deal, self.ctx.keypair.address, root, salt)
        while True:
            self._check()
            found = self._deal()
            if self._replica_state(found) is not ReplicaState.ASSIGNED:
                break
            if found.phase is not Phase.RUN or self.ctx.height() >= found.deadline:
                raise JobError(
                    "too-late",
                    f"the run deadline (height {found.deadline}) passed before the result was "
                    "committed",
                )
            try:
                send(self.ctx.wallet, market.commit(self.deal, sealed), COMMIT_GAS)
                break
            except CallReverted as exc:
                if self._replica_state(self._deal()) is not ReplicaState.ASSIGNED:
                    break
                raise JobError("commit-refused", f"the commit was refused: {exc.reason}") from None
            except WalletError as exc:
                self.say(f"commit not mined yet ({exc}); trying again")
        self.update(state=JobState.COMMITTED, detail="committed; waiting for the reveal phase")
        self.say(f"committed (root {status.root[:16]})")

    def _wait(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` (checked on every wake-up and every :data:`CHAIN_CHECK_S`)."""
        while not done():
            self._check()
            self._wake.wait(CHAIN_CHECK_S)
            self._wake.clear()

    def _wait_for_reveal_phase(self) -> None:
        def reveal_phase() -> bool:
            if self._reveal_phase:
                return True
            self._check()
            found = self._deal()
            return found.phase is not Phase.RUN  # the reveal phase, or moved on without us

        self._wait(reveal_phase)

    def _reveal(self) -> None:
        status = self.status
        root, salt = bytes.fromhex(status.root), bytes.fromhex(status.salt)
        misbehave = self.ctx.misbehave
        if misbehave == "withhold":
            self.update(detail="TEST ONLY (withhold): committed, never revealing")
            self.say("TEST ONLY (withhold): not revealing")
            self._wait(lambda: False)
        if misbehave == "copy-reveal":
            self._copy_reveal(salt)
        while True:
            self._check()
            if self._own_revealed:  # its ResultRevealed came (a none deal settles with it)
                break
            found = self._deal()
            state = self._replica_state(found)
            if state is ReplicaState.REVEALED:
                break
            if found.phase is not Phase.REVEAL:
                raise JobError(
                    "too-late", f"the deal is in its {found.phase.name.lower()} phase, unrevealed"
                )
            answer = None
            if found.max_answer:  # a contract's deal: the manifest and stdout go with the root
                answer = reveal_answer(self.directory / ARCHIVE_FILE, found.max_answer)
            try:
                send(
                    self.ctx.wallet,
                    market.reveal(
                        self.deal, root, salt, status.usage_cpu, status.usage_gpu, answer
                    ),
                    SETTLING_GAS,
                )
                break
            except CallReverted as exc:
                if self._own_revealed or (
                    self._replica_state(self._deal()) is ReplicaState.REVEALED
                ):
                    break
                raise JobError("reveal-refused", f"the reveal was refused: {exc.reason}") from None
            except WalletError as exc:
                self.say(f"reveal not mined yet ({exc}); trying again")
        self.update(state=JobState.REVEALED, revealed=True, detail="revealed; storing the outputs")
        self.say(
            f"revealed root {status.root[:16]} (usage {status.usage_cpu} CPU-s, "
            f"{status.usage_gpu} GPU-s)"
        )

    def _copy_reveal(self, salt: bytes) -> None:
        """TEST ONLY: wait for the other replica's reveal and try to reveal its root."""

        def other_revealed() -> bool:
            if self._other_root is not None:
                return True
            found = self._deal()
            for replica in found.replicas:
                if replica.index != self.status.replica and replica.root is not None:
                    self._other_root = replica.root
                    return True
            return found.phase is not Phase.REVEAL

        self._wait(other_revealed)
        copied = self._other_root
        if copied is not None:
            status = self.status
            try:
                send(
                    self.ctx.wallet,
                    market.reveal(self.deal, copied, salt, status.usage_cpu, status.usage_gpu),
                    SETTLING_GAS,
                )
            except WalletError as exc:
                self.say(f"TEST ONLY (copy-reveal): revealing the copied root failed: {exc}")
        self.update(detail="TEST ONLY (copy-reveal): tried to reveal the other replica's root")
        self._wait(lambda: False)

    def _store(self) -> None:
        """Store the revealed outputs archive in the storage market (on :data:`OUTPUT_SHARDS`
        storage providers), retried with a backoff: while fewer storage providers have room,
        nothing is sent and the status says so (the client and the mediator fetch the archive
        from this provider meanwhile, ``GET /jobs/{deal}/outputs``). Given up once the deal has
        been settled as long as the stored copy would have been kept."""
        archive = self.directory / ARCHIVE_FILE
        size = archive.stat().st_size
        if size > storage_client.MAX_PUT_SIZE:
            self.update(
                detail=f"revealed; the outputs archive ({size} bytes) is larger than the "
                f"{storage_client.MAX_PUT_SIZE} bytes the storage market takes: not stored "
                "(served from this provider only)"
            )
            return
        master = keys.output_master(self.job_key, self.deal, self.status.replica)
        attempt = 0
        said = ""
        while True:
            self._check()
            started = time.monotonic()
            try:
                with MarketView(self.ctx.rpc) as view:
                    storage_params = view.params()
                    periods = output_periods(
                        self.ctx.params,
                        storage_params.period,
                        storage_params.max_duration,
                        self.spec.timeout,
                    )
                    self._give_up_storing(periods * storage_params.period)
                    shard = merkle.shard_size_for(
                        crypt.encrypted_size(size), OUTPUT_NEEDED, storage_params.leaf_size
                    )
                    room = len(storage_client.matching_offers(view.asks(), shard, None))
                    if room < OUTPUT_SHARDS:
                        raise _NoRoom(room, shard)
                    stored = storage_client.put(
                        self.ctx.wallet,
                        view,
                        archive.read_bytes(),
                        storage_client.PutOptions(
                            n=OUTPUT_SHARDS, k=OUTPUT_NEEDED, duration=periods
                        ),
                        master=master,
                    )
            except JobError:
                raise
            except (QoinError, OSError) as exc:
                no_room = isinstance(exc, _NoRoom)
                waits = STORE_NO_ROOM_S if no_room else STORE_BACKOFF_S
                wait = waits[min(attempt, len(waits) - 1)]
                attempt += 1
                why = str(exc) if no_room else f"storing them failed ({exc})"
                self.update(
                    detail=f"revealed; the outputs are not in the storage market yet: {why}; "
                    f"trying again in {wait:g} s (they are served from this provider meanwhile)"
                )
                if why != said:
                    self.say(f"outputs not stored: {why}; trying again with a backoff")
                    said = why
                self._wake.wait(wait)
                self._wake.clear()
                continue
            upload = time.monotonic() - started
            self.change(functools.partial(_stored, cid=stored.cid.hex(), size=size, upload=upload))
            self.say(f"outputs stored: {stored.cid.hex()} ({size} bytes, {periods} periods)")
            return

    def _give_up_storing(self, kept_blocks: int) -> None:
        """:class:`JobError` once the deal settled ``kept_blocks`` (how long the stored copy
        would have been kept) ago: nobody will fetch the copy any more."""
        settled = self.status.settled_height
        if settled >= 0 and self.ctx.height() >= settled + kept_blocks:
            self.update(
                state=JobState.SETTLED,
                detail=f"revealed; the outputs were never stored in the storage market (no room "
                f"within {kept_blocks} blocks of the settlement); they were served from this "
                "provider",
            )
            raise JobError("not-stored", "gave up storing the outputs")


class _NoRoom(QoinError):
    """Fewer storage providers have room for the outputs archive than it needs."""

    def __init__(self, room: int, shard: int) -> None:
        super().__init__(
            f"no storage provider has room yet ({room} storage provider(s) can take a "
            f"{shard}-byte shard; the storage market keeps a file on {OUTPUT_SHARDS} distinct "
            "providers at least)"
        )


def _stored(status: JobStatus, cid: str, size: int, upload: float) -> JobStatus:
    """A revealed job's status once its outputs are stored (settled if its deal has)."""
    settled = status.settled_height >= 0
    return replace(
        status,
        state=JobState.SETTLED if settled else JobState.STORED,
        cid=cid,
        size=size,
        upload=upload,
        detail="revealed; outputs stored" + ("; deal settled" if settled else ""),
    )


# -- every job of a provider -----------------------------------------------------------------------


def _offer_dir(jobs_dir: Path, bid: int) -> Path:
    return jobs_dir / f"bid-{bid}"


def _deal_dir(jobs_dir: Path, deal: int) -> Path:
    return jobs_dir / f"deal-{deal}"


def _number(name: str, prefix: str) -> int | None:
    text = name.removeprefix(prefix)
    if name.startswith(prefix) and text.isdigit() and len(text) <= 20:
        return int(text)
    return None


def read_spec(directory: Path) -> tuple[JobSpec, bytes]:
    """The spec and sealed job key kept in ``directory``; :class:`JobError` if damaged."""
    try:
        raw = read_bounded(directory / SPEC_FILE, jobspec.MAX_SPEC_SIZE, "job spec")
        sealed = read_bounded(directory / KEY_FILE, keys.SEALED_JOB_KEY_SIZE, "sealed job key")
        return JobSpec.decode(raw), sealed
    except (FileReadError, QoinError) as exc:
        raise JobError("bad-spec", f"{directory}: {exc}") from None


def keep_job(directory: Path, spec: bytes, sealed: bytes, extra: dict[str, Any]) -> None:
    """Save a spec, its sealed job key and ``extra`` (``offer.json``) in ``directory``, durably
    (an acceptance is signed only once they would survive a crash)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(directory / SPEC_FILE, spec, mode=0o600)
    write_atomically(directory / KEY_FILE, sealed, mode=0o600)
    write_atomically(directory / OFFER_FILE, json.dumps(extra).encode(), mode=0o600)
    sync_dir(directory)
    sync_dir(directory.parent)


def same_job_key(kem: MLKEM768PrivateKey, directory: Path, job_key: bytes) -> bool:
    """Whether the sealed job key kept in ``directory`` opens to ``job_key``."""
    try:
        spec, sealed = read_spec(directory)
        return keys.open_job_key(kem, sealed, spec.job_hash) == job_key
    except QoinError:
        return False


class OfferRefused(JobError):
    """An offer that is not kept: :attr:`status` is the HTTP status to answer (409)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__("offer-refused", message)
        self.status = status


@dataclass(frozen=True)
class PendingOffer:
    """An accepted offer waiting for its bid to form a deal (or to end)."""

    bid: int
    client: str
    """The bid's client (bech32m)."""
    deadline: int
    """The bid's deadline: by then the bid has formed its deal or ended."""
    size: int
    """Bytes of its spec."""


class Offers:
    """The accepted offers (``DATADIR/jobs/bid-<id>/``), bounded: at most :data:`MAX_OFFERS`, of
    :data:`MAX_OFFER_BYTES` bytes of specs, :data:`MAX_OFFERS_PER_CLIENT` per client; each leaves
    when its bid forms a deal or ends (its deadline at the latest). An offer kept for a bid is
    not replaced by one with another job key unless the bid's client vouches for it (whoever
    knows a spec could otherwise swap the key the outputs are stored under). Thread-safe."""

    def __init__(self, jobs_dir: Path) -> None:
        self.dir = jobs_dir
        self._lock = threading.Lock()
        self._index: dict[int, PendingOffer] = {}
        for path in jobs_dir.iterdir():
            bid = _number(path.name, "bid-")
            if bid is not None:
                self._index[bid] = self._read(bid, path)

    @staticmethod
    def _read(bid: int, path: Path) -> PendingOffer:
        """A kept offer's record (a damaged or old one: deadline 0, settled at the next head)."""
        try:
            raw = json.loads(read_bounded(path / OFFER_FILE, MAX_OFFER_FILE, "offer"))
            client, deadline = raw.get("client", ""), raw.get("deadline", 0)
            size = (path / SPEC_FILE).stat().st_size
        except (FileReadError, ValueError, AttributeError, OSError):
            return PendingOffer(bid, "", 0, 0)
        if not isinstance(client, str) or not isinstance(deadline, int):
            return PendingOffer(bid, "", 0, size)
        return PendingOffer(bid, client, deadline, size)

    def path(self, bid: int) -> Path:
        return _offer_dir(self.dir, bid)

    def __contains__(self, bid: object) -> bool:
        with self._lock:
            return bid in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def bids(self) -> list[int]:
        with self._lock:
            return sorted(self._index)

    def keep(
        self,
        offer: PendingOffer,
        spec: bytes,
        sealed: bytes,
        job_key: bytes,
        kem: MLKEM768PrivateKey,
        extra: dict[str, Any],
        vouched: bool = False,
    ) -> bool:
        """Keep an accepted offer's spec and sealed key until its bid forms a deal or ends; False
        if the same job key was kept already (nothing written). :class:`OfferRefused` if another
        job key is kept for the bid and ``vouched`` is False (the bid's client did not sign this
        one), or a bound would be broken."""
        with self._lock:
            if offer.bid in self._index:
                if same_job_key(kem, self.path(offer.bid), job_key):
                    return False
                if not vouched:
                    raise OfferRefused(
                        f"bid {offer.bid} already has an accepted offer here with another job "
                        "key; to replace it, sign this one as the bid's client (X-Qoin-Auth, "
                        "qoin.compute.keys.key_auth_header)"
                    )
            else:
                self._check_room(offer)
            keep_job(
                self.path(offer.bid),
                spec,
                sealed,
                {**extra, "client": offer.client, "deadline": offer.deadline},
            )
            self._index[offer.bid] = offer
        return True

    def _check_room(self, offer: PendingOffer) -> None:
        held = list(self._index.values())
        mine = sum(1 for item in held if item.client == offer.client)
        size = sum(item.size for item in held)
        if len(held) >= MAX_OFFERS:
            raise OfferRefused(f"too many pending offers here ({len(held)}): try later")
        if size + offer.size > MAX_OFFER_BYTES:
            raise OfferRefused(f"pending offers hold {size} bytes of specs here: try later")
        if mine >= MAX_OFFERS_PER_CLIENT:
            raise OfferRefused(
                f"client {offer.client} has {mine} pending offers here, the most one client may "
                "have: form deals or cancel bids first"
            )

    def take(self, bid: int, target: Path) -> bool:
        """Move a kept offer's directory to ``target`` (its deal formed with this provider);
        False if none is kept."""
        with self._lock:
            source = self.path(bid)
            self._index.pop(bid, None)
            if not source.exists():
                return False
            try:
                source.rename(target)
                sync_dir(self.dir)
            except OSError as exc:
                raise JobError("disk-failed", f"cannot take up offer {bid}: {exc}") from None
            return True

    def drop(self, bid: int) -> bool:
        """Forget a kept offer and delete its files; whether one was kept."""
        with self._lock:
            known = self._index.pop(bid, None) is not None
            path = self.path(bid)
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
                known = True
        return known

    def due(self, height: int) -> list[int]:
        """Bids whose deadline has come (their deal formed or they ended): settle each against the
        chain."""
        with self._lock:
            return sorted(b for b, offer in self._index.items() if offer.deadline <= height)

    def set_deadline(self, bid: int, deadline: int) -> None:
        """Correct the deadline of a kept offer (read from its bid on chain)."""
        with self._lock:
            offer = self._index.get(bid)
            if offer is not None:
                self._index[bid] = replace(offer, deadline=deadline)


class JobBook:
    """The provider's offers (``DATADIR/jobs/bid-<id>/``, :class:`Offers`) and jobs
    (``deal-<id>/``)."""

    def __init__(self, datadir: Path, ctx: JobContext) -> None:
        self.ctx = ctx
        self.dir = datadir / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.offers = Offers(self.dir)
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    # -- jobs -------------------------------------------------------------------------------

    def adopt(
        self, deal: int, replica: int, client: str, mediator: str, run_deadline: int = 0
    ) -> Job:
        """The deal of a kept offer formed: its directory becomes the job's. :class:`JobError`
        if no offer was kept for it."""
        target = _deal_dir(self.dir, deal)
        if not target.exists() and not self.offers.take(deal, target):
            raise JobError("no-spec", "no spec was kept for it (no offer accepted here)")
        if (target / STATUS_FILE).exists():  # taken up before (a restart): keep where it stands
            return self._open(target, read_status(target))
        status = JobStatus(deal, replica, client, mediator, run_deadline=run_deadline)
        write_status(target, status)
        return self._open(target, status)

    def _open(self, directory: Path, status: JobStatus) -> Job:
        spec, sealed = read_spec(directory)
        job = Job(self.ctx, directory, status, spec, sealed)
        with self._lock:
            self._jobs[status.deal] = job
        return job

    def load(self) -> list[Job]:
        """The jobs in the data directory (not started)."""
        loaded = []
        for path in sorted(self.dir.iterdir()):
            deal = _number(path.name, "deal-")
            if deal is None or deal in self._jobs:
                continue
            try:
                loaded.append(self._open(path, read_status(path)))
            except QoinError as exc:
                self.ctx.log(f"cannot take up {path.name}: {exc}")
        return loaded

    def get(self, deal: int) -> Job | None:
        with self._lock:
            return self._jobs.get(deal)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def running(self) -> int:
        """Jobs staging or running now."""
        return sum(
            1 for job in self.all() if job.status.state in (JobState.STAGING, JobState.RUNNING)
        )

    def remove(self, deal: int) -> None:
        """Forget a job and delete its directory."""
        with self._lock:
            job = self._jobs.pop(deal, None)
        if job is not None:
            job.stop()
            shutil.rmtree(job.directory, ignore_errors=True)

    def stop_all(self) -> None:
        """Stop every job: all are told at once, then waited for (:data:`STOP_JOIN_S` in all)."""
        jobs = self.all()
        for job in jobs:
            job.signal_stop()
        deadline = time.monotonic() + STOP_JOIN_S
        for job in jobs:
            job.join(max(0.0, deadline - time.monotonic()))
