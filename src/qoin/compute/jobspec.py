"""The canonical job spec and its hash (docs/spec/compute.md §2).

A job spec says everything a provider needs to run a job and everything that decides its result:
the executor, the image or command, the runtime it runs from, the inputs (storage-market content ids and where they appear,
with their file keys wrapped under the job key), the resources, the timeout, whether the network is
on, how deterministic the client says the job is, the verification level and the output limits.
Its canonical encoding (:mod:`qoin.encoding.codec`: bounded sizes, minimal varints, no trailing
bytes) is hashed into the **job hash** a bid carries, so a provider, a replica and a mediator all
run exactly what the client paid for.

Input keys: the client draws one random 32-byte *job key* per job; each encrypted input's file key
is sealed under it (:func:`wrap_input_key`, ChaCha20-Poly1305, the AAD binding the content id and
the path), so the spec and its hash are the same for every provider. The job key itself reaches
each provider and the mediator wrapped to their ML-KEM-768 keys, off chain, with the spec.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.encoding.codec import DecodeError, NonCanonicalInteger, OversizeField, Reader, Writer
from qoin.errors import QoinError

VERSION = 1
"""The encoding's version byte."""
TAG_JOB = b"QOIN/compute/job/v1"
"""Domain tag of the job hash."""
TAG_INPUT_KEY = b"QOIN/compute/input-key/v1"
"""Domain tag of the AAD of a wrapped input key."""
MAX_SPEC_SIZE = 256 * 1024
"""Largest encoded spec, in bytes."""
MAX_IMAGE = 512
MAX_ARGS = 256
MAX_ARG = 4096
MAX_ENV = 64
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 4096
MAX_INPUTS = 64
MAX_PATH = 1024
MAX_WRAPPED_KEY = 128
MAX_CPUS = 1024
MAX_MEMORY = 1 << 50
MAX_GPUS = 64
MAX_GPU_MODEL = 64
MAX_TIMEOUT = 30 * 86_400
MAX_OUTPUT_BYTES = 1 << 50
MAX_OUTPUT_FILES = 1 << 20
MAX_LOG_BYTES = 1 << 30
JOB_KEY_SIZE = 32
NONCE_SIZE = 12
OUTPUTS_DIR = "/outputs"
"""Where a job writes its outputs (never an input path)."""
RUNTIME_DIR = "/runtime"
"""Where a sandbox job sees the runtime its spec names, read-only (never an input path)."""
MAX_RUNTIME = 128
"""Longest runtime ref, in bytes."""

E = TypeVar("E", bound=IntEnum)

_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RUNTIME = re.compile(r"[a-z0-9][a-z0-9._-]*@[0-9a-f]{32}")


class JobSpecError(QoinError):
    """A job spec that breaks a rule (the message says which)."""


class Executor(IntEnum):
    """Where a job runs (its bit in an ask's ``executors`` set is ``1 << value``)."""

    SANDBOX = 0
    """bubblewrap on the provider's read-only system (the default)."""
    WASM = 1
    """wasmtime + WASI with fuel."""
    DOCKER = 2
    """A Docker Engine, the image pinned by digest."""

    @property
    def bit(self) -> int:
        """Its bit in an ask's executor set."""
        return 1 << self.value


class Determinism(IntEnum):
    """What the client says about the job's results."""

    EXACT = 0
    """The same inputs give the same bytes anywhere."""
    SAME_HARDWARE = 1
    """The same bytes on the same hardware (GPU model) only."""
    NONE = 2
    """Results may differ from run to run."""


class Verification(IntEnum):
    """How the result is checked (docs/spec/compute.md §3)."""

    NONE = 0
    """One provider, no dispute window, no mediator."""
    SPOT = 1
    """One provider; the client may dispute within the dispute window."""
    REPLICATED = 2
    """Two providers; differing results go to the mediator."""

    @property
    def replicas(self) -> int:
        """Providers that run the job: 2 for REPLICATED, else 1."""
        return 2 if self is Verification.REPLICATED else 1


@dataclass(frozen=True)
class Input:
    """One input: a storage-market file and where the job sees it."""

    cid: bytes
    """Its content id (32 bytes)."""
    path: str
    """Absolute path in the job's filesystem (e.g. ``/inputs/x``)."""
    key: bytes = b""
    """Its file key sealed under the job key (:func:`wrap_input_key`); empty if not encrypted."""


@dataclass(frozen=True)
class Resources:
    """What a job reserves on each provider."""

    cpus: int = 1
    """Whole CPUs."""
    memory: int = 1 << 30
    """Bytes of memory."""
    gpus: int = 0
    """GPUs."""
    gpu_model: str = ""
    """The GPU model asked for (empty: any; must be empty without GPUs)."""


@dataclass(frozen=True)
class OutputLimits:
    """Bounds on what a job leaves behind."""

    max_bytes: int = 1 << 30
    """Bytes under ``/outputs``."""
    max_files: int = 10_000
    """Files under ``/outputs``."""
    max_log_bytes: int = 16 << 20
    """Bytes of stdout and stderr together."""


@dataclass(frozen=True)
class JobSpec:
    """A job (the encoding of docs/spec/compute.md §2). Built only if it keeps every rule:
    :class:`JobSpecError` otherwise."""

    executor: Executor = Executor.SANDBOX
    """Where it runs."""
    command: tuple[str, ...] = ()
    """The argv (sandbox, wasm: required; docker: empty for the image's entry point)."""
    image: str = ""
    """Docker: ``name@sha256:<64 hex>``; empty for the other executors."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables (name, value), distinct names."""
    inputs: tuple[Input, ...] = ()
    """Files from the storage market."""
    resources: Resources = field(default_factory=Resources)
    """What it reserves."""
    timeout: int = 600
    """Seconds it may run."""
    network: bool = False
    """Whether it may reach the network (off by default)."""
    determinism: Determinism = Determinism.EXACT
    """The client's claim about its results."""
    verification: Verification = Verification.NONE
    """How its result is checked."""
    outputs: OutputLimits = field(default_factory=OutputLimits)
    """Output limits."""
    runtime: str = ""
    """Empty, or the ref ``name@<32 hex>`` of a runtime the provider prepared (sandbox only),
    mounted read-only at :data:`RUNTIME_DIR` (e.g. ``qoin-ai@…``: the command is then
    ``/runtime/bin/python -m qoin_ai_job …``)."""

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise JobSpecError(f"job spec: {problem}")
        if len(self.encode()) > MAX_SPEC_SIZE:
            raise JobSpecError(f"job spec: its encoding exceeds {MAX_SPEC_SIZE} bytes")

    def problem(self) -> str | None:
        """Which rule the spec breaks, or None."""
        checks = (
            _executor_problem,
            _runtime_problem,
            _env_problem,
            _inputs_problem,
            _numbers_problem,
        )
        for check in checks:
            problem = check(self)
            if problem is not None:
                return problem
        return None

    def encode(self) -> bytes:
        """The canonical encoding."""
        writer = Writer().u8(VERSION).u8(int(self.executor))
        writer.var_bytes(self.image.encode(), MAX_IMAGE)
        writer.varint(len(self.command))
        for arg in self.command:
            writer.var_bytes(arg.encode(), MAX_ARG)
        writer.var_bytes(self.runtime.encode(), MAX_RUNTIME)
        writer.varint(len(self.env))
        for name, value in self.env:
            writer.var_bytes(name.encode(), MAX_ENV_NAME).var_bytes(value.encode(), MAX_ENV_VALUE)
        writer.varint(len(self.inputs))
        for item in self.inputs:
            writer.fixed(item.cid, HASH_SIZE).var_bytes(item.path.encode(), MAX_PATH)
            writer.var_bytes(item.key, MAX_WRAPPED_KEY)
        res = self.resources
        writer.varint(res.cpus).varint(res.memory).varint(res.gpus)
        writer.var_bytes(res.gpu_model.encode(), MAX_GPU_MODEL)
        writer.varint(self.timeout).u8(int(self.network))
        writer.u8(int(self.determinism)).u8(int(self.verification))
        out = self.outputs
        return writer.varint(out.max_bytes).varint(out.max_files).varint(out.max_log_bytes).bytes()

    @classmethod
    def decode(cls, data: bytes) -> JobSpec:
        """Inverse of :meth:`encode`: :class:`~qoin.encoding.codec.DecodeError` for bytes that
        are not a canonical encoding, :class:`JobSpecError` for a spec that breaks a rule."""
        if len(data) > MAX_SPEC_SIZE:
            raise OversizeField(f"a job spec is at most {MAX_SPEC_SIZE} bytes, got {len(data)}")
        reader = Reader(data)
        version = reader.u8()
        if version != VERSION:
            raise NonCanonicalInteger(f"job spec version {version}, expected {VERSION}")
        executor = _enum(Executor, reader.u8(), "executor")
        image = _text(reader, MAX_IMAGE)
        command = tuple(_text(reader, MAX_ARG) for _ in range(reader.count(MAX_ARGS)))
        runtime = _text(reader, MAX_RUNTIME)
        env = tuple(
            (_text(reader, MAX_ENV_NAME), _text(reader, MAX_ENV_VALUE))
            for _ in range(reader.count(MAX_ENV))
        )
        inputs = tuple(
            Input(
                reader.fixed(HASH_SIZE), _text(reader, MAX_PATH), reader.var_bytes(MAX_WRAPPED_KEY)
            )
            for _ in range(reader.count(MAX_INPUTS))
        )
        resources = Resources(
            reader.varint(), reader.varint(), reader.varint(), _text(reader, MAX_GPU_MODEL)
        )
        timeout = reader.varint()
        network = reader.u8()
        if network > 1:
            raise NonCanonicalInteger(f"the network flag is 0 or 1, got {network}")
        determinism = _enum(Determinism, reader.u8(), "determinism")
        verification = _enum(Verification, reader.u8(), "verification")
        outputs = OutputLimits(reader.varint(), reader.varint(), reader.varint())
        reader.finish()
        return cls(
            executor,
            command,
            image,
            env,
            inputs,
            resources,
            timeout,
            network == 1,
            determinism,
            verification,
            outputs,
            runtime,
        )

    @property
    def job_hash(self) -> bytes:
        """``tagged_hash("QOIN/compute/job/v1", encoding)``: what a bid names."""
        return job_hash(self.encode())

    @property
    def replicas(self) -> int:
        """Providers that run it."""
        return self.verification.replicas


def job_hash(encoded: bytes) -> bytes:
    """The job hash of an encoded spec."""
    return tagged_hash(TAG_JOB, encoded)


def _enum(kind: type[E], raw: int, what: str) -> E:
    try:
        return kind(raw)
    except ValueError:
        raise NonCanonicalInteger(f"unknown {what} {raw}") from None


def _text(reader: Reader, bound: int) -> str:
    raw = reader.var_bytes(bound)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DecodeError("a job spec string is not UTF-8") from None


def _bounded_text(value: str, bound: int, what: str) -> str | None:
    if "\x00" in value:
        return f"{what} holds a NUL byte"
    if len(value.encode()) > bound:
        return f"{what} is longer than {bound} bytes"
    return None


def _command_problem(spec: JobSpec) -> str | None:
    if len(spec.command) > MAX_ARGS:
        return f"a command has at most {MAX_ARGS} arguments"
    for arg in spec.command:
        problem = _bounded_text(arg, MAX_ARG, "a command argument")
        if problem is not None:
            return problem
    if spec.executor is not Executor.DOCKER and (not spec.command or not spec.command[0]):
        return f"a {spec.executor.name.lower()} job needs a command (its first argument non-empty)"
    return None


def _executor_problem(spec: JobSpec) -> str | None:
    problem = _bounded_text(spec.image, MAX_IMAGE, "the image")
    if problem is None and spec.executor is Executor.DOCKER and not _DIGEST.match(spec.image):
        problem = "a docker job names its image by digest: name@sha256:<64 hex digits>"
    if problem is None and spec.executor is not Executor.DOCKER and spec.image:
        problem = f"only docker jobs have an image ({spec.executor.name.lower()} runs a command)"
    return problem or _command_problem(spec)


def _runtime_problem(spec: JobSpec) -> str | None:
    if not spec.runtime:
        return None
    if len(spec.runtime.encode()) > MAX_RUNTIME or not _RUNTIME.fullmatch(spec.runtime):
        return (
            f"runtime {spec.runtime[:80]!r} is not a runtime ref "
            f"[a-z0-9][a-z0-9._-]*@<32 hex digits> of at most {MAX_RUNTIME} bytes"
        )
    if spec.executor is not Executor.SANDBOX:
        return f"only sandbox jobs name a runtime ({spec.executor.name.lower()} jobs cannot)"
    return None


def _env_problem(spec: JobSpec) -> str | None:
    if len(spec.env) > MAX_ENV:
        return f"at most {MAX_ENV} environment variables"
    names = [name for name, _ in spec.env]
    if len(set(names)) != len(names):
        return "an environment variable is named twice"
    for name, value in spec.env:
        if len(name.encode()) > MAX_ENV_NAME or not _ENV_NAME.match(name):
            return f"environment variable name {name[:40]!r} is not [A-Za-z_][A-Za-z0-9_]*"
        problem = _bounded_text(value, MAX_ENV_VALUE, f"the value of {name}")
        if problem is not None:
            return problem
    return None


def _input_problem(item: Input) -> str | None:
    if len(item.cid) != HASH_SIZE:
        return f"an input's content id is {HASH_SIZE} bytes"
    if len(item.key) > MAX_WRAPPED_KEY:
        return f"an input's wrapped key is at most {MAX_WRAPPED_KEY} bytes"
    path = item.path
    problem = _bounded_text(path, MAX_PATH, "an input path")
    if problem is None and (
        not path.startswith("/") or path == "/" or posixpath.normpath(path) != path
    ):
        problem = f"input path {path[:80]!r} is not a normalised absolute path"
    for place in (OUTPUTS_DIR, RUNTIME_DIR):
        if problem is None and (path == place or path.startswith(place + "/")):
            problem = f"input path {path[:80]!r} lies in {place}"
    return problem


def _inputs_problem(spec: JobSpec) -> str | None:
    if len(spec.inputs) > MAX_INPUTS:
        return f"at most {MAX_INPUTS} inputs"
    paths = [item.path for item in spec.inputs]
    if len(set(paths)) != len(paths):
        return "two inputs have the same path"
    for item in spec.inputs:
        problem = _input_problem(item)
        if problem is not None:
            return problem
    return None


def _numbers_problem(spec: JobSpec) -> str | None:
    res, out = spec.resources, spec.outputs
    problem = _bounded_text(res.gpu_model, MAX_GPU_MODEL, "the GPU model")
    checks = (
        (problem is None, problem or ""),
        (1 <= res.cpus <= MAX_CPUS, f"cpus is 1 to {MAX_CPUS}"),
        (1 <= res.memory <= MAX_MEMORY, f"memory is 1 to {MAX_MEMORY} bytes"),
        (0 <= res.gpus <= MAX_GPUS, f"gpus is 0 to {MAX_GPUS}"),
        (res.gpus > 0 or not res.gpu_model, "a GPU model needs gpus > 0"),
        (1 <= spec.timeout <= MAX_TIMEOUT, f"timeout is 1 to {MAX_TIMEOUT} seconds"),
        (
            spec.verification is not Verification.REPLICATED
            or spec.determinism is not Determinism.NONE,
            "a job whose results may differ from run to run (determinism none) cannot be "
            "verified by replication: use verification none or spot",
        ),
        (0 <= out.max_bytes <= MAX_OUTPUT_BYTES, f"max output bytes is 0 to {MAX_OUTPUT_BYTES}"),
        (0 <= out.max_files <= MAX_OUTPUT_FILES, f"max output files is 0 to {MAX_OUTPUT_FILES}"),
        (0 <= out.max_log_bytes <= MAX_LOG_BYTES, f"max log bytes is 0 to {MAX_LOG_BYTES}"),
    )
    for ok, reason in checks:
        if not ok:
            return reason
    return None


# -- input keys -----------------------------------------------------------------------------------


def _input_aad(cid: bytes, path: str) -> bytes:
    return tagged_hash(TAG_INPUT_KEY, cid, path.encode())


def wrap_input_key(job_key: bytes, cid: bytes, path: str, file_key: bytes) -> bytes:
    """Seal an input's file key under the job key: ``nonce (12) || ChaCha20-Poly1305(file_key)``
    with AAD ``tagged_hash("QOIN/compute/input-key/v1", cid || path)``."""
    if len(job_key) != JOB_KEY_SIZE:
        raise JobSpecError(f"a job key is {JOB_KEY_SIZE} bytes")
    nonce = os.urandom(NONCE_SIZE)
    sealed = nonce + ChaCha20Poly1305(job_key).encrypt(nonce, file_key, _input_aad(cid, path))
    if len(sealed) > MAX_WRAPPED_KEY:
        raise JobSpecError(f"a wrapped input key is at most {MAX_WRAPPED_KEY} bytes")
    return sealed


def unwrap_input_key(job_key: bytes, item: Input) -> bytes:
    """The file key of an input sealed by :func:`wrap_input_key`; :class:`JobSpecError` if the
    job key is not the one it was sealed under (or the input was changed)."""
    if len(job_key) != JOB_KEY_SIZE or len(item.key) < NONCE_SIZE:
        raise JobSpecError(f"input {item.path}: no wrapped key, or a job key of the wrong size")
    nonce, sealed = item.key[:NONCE_SIZE], item.key[NONCE_SIZE:]
    try:
        return ChaCha20Poly1305(job_key).decrypt(nonce, sealed, _input_aad(item.cid, item.path))
    except InvalidTag:
        raise JobSpecError(f"input {item.path}: its key does not open with this job key") from None
