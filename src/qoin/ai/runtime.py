"""The AI runtime: a directory a provider prepares once (``qoin ai runtime install``) holding a
Python venv with PyTorch and numpy and Qoin's AI job program, the package ``qoin_ai_job`` copied
from :mod:`qoin.ai.job` (docs/ai.md).

A runtime is named by its *ref* ``qoin-ai@ID``, ID the first 32 hex digits of the SHA-256 of the
canonical JSON of what decides its results: the torch build, the Python version, the CPU
capability torch's kernels use (they differ by instruction set) and the digest of the program's
files. Two providers whose runtimes have the same ref give bit-identical results for the same job;
a different ref means "not the same runtime".

The venv is made from a Python under ``/usr`` when there is one (the sandbox mounts the provider's
``/usr`` read-only and the runtime at ``/runtime``; a venv's ``bin/python`` links to the Python it
was made from). PyTorch is installed by ``pip`` from the machine's configured index; nothing here
imports it: the runtime's own Python is asked what it has.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qoin.errors import QoinError
from qoin.process import Child, Output

NAME = "qoin-ai"
TORCH = "2.13.0"
NUMPY = "2.4.6"
REQUIREMENTS = (f"torch=={TORCH}", f"numpy=={NUMPY}")
PACKAGE = "qoin_ai_job"
INFO_FILE = "qoin-runtime.json"
LOCK_FILE = ".qoin-install.lock"
INFO_LIMIT = 64 * 1024
PROGRAM_DIR = Path(__file__).parent / "job"
VENV_TIMEOUT_S = 300.0
PIP_TIMEOUT_S = 3600.0
PROBE_TIMEOUT_S = 120.0
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3")
PROBE = (
    "import json, platform, torch\n"
    "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,"
    " 'cpu_capability': torch.backends.cpu.get_cpu_capability()}))\n"
)


class AiRuntimeError(QoinError):
    """A runtime is missing, broken or stale, or could not be installed (the message says what
    to do)."""


@dataclass(frozen=True)
class RuntimeInfo:
    """An installed runtime."""

    name: str
    id: str
    torch: str
    python: str
    cpu_capability: str
    program_digest: str
    path: Path

    @property
    def ref(self) -> str:
        """``qoin-ai@ID``, what a job spec names."""
        return f"{self.name}@{self.id}"

    @property
    def python_path(self) -> Path:
        """The runtime's Python (``/runtime/bin/python`` inside a job)."""
        return self.path / "bin" / "python"

    def record(self) -> dict[str, Any]:
        return {
            "cpu_capability": self.cpu_capability,
            "id": self.id,
            "name": self.name,
            "program_digest": self.program_digest,
            "python": self.python,
            "torch": self.torch,
            "version": 1,
        }


def runtime_id(name: str, torch: str, python: str, cpu_capability: str, program_digest: str) -> str:
    """The first 32 hex digits of the SHA-256 of the canonical JSON of what decides results."""
    described = {
        "cpu_capability": cpu_capability,
        "name": name,
        "program_digest": program_digest,
        "python": python,
        "torch": torch,
    }
    text = json.dumps(described, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def program_files(folder: Path = PROGRAM_DIR) -> dict[str, bytes]:
    """The program's files (``*.py``) by name."""
    try:
        return {path.name: path.read_bytes() for path in sorted(folder.glob("*.py"))}
    except OSError as exc:
        raise AiRuntimeError(f"cannot read the AI job program in {folder}: {exc}") from exc


def program_digest(files: dict[str, bytes]) -> str:
    """Hex SHA-256 over the program's files, sorted by name (each name and length framed)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        digest.update(len(name).to_bytes(4, "big") + name.encode())
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def default_dir() -> Path:
    """``$QOIN_AI_RUNTIME`` if set, else ``$QOIN_HOME/ai-runtime`` (``~/.qoin/ai-runtime``)."""
    chosen = os.environ.get("QOIN_AI_RUNTIME")
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("QOIN_HOME", Path.home() / ".qoin")) / "ai-runtime"


def _site_packages(target: Path) -> Path:
    found = sorted((target / "lib").glob("python3.*/site-packages"))
    if len(found) != 1:
        raise AiRuntimeError(f"{target} is not a runtime (no single lib/python3.*/site-packages)")
    return found[0]


def _again(path: Path) -> str:
    return f"run `qoin ai runtime install --dir {path}` again"


def load(path: Path) -> RuntimeInfo:
    """The runtime at ``path``, after checking its record, its id and that its program is this
    Qoin's (:class:`AiRuntimeError` if not: missing, damaged or stale)."""
    path = Path(path).absolute()
    record_path = path / INFO_FILE
    try:
        with open(record_path, "rb") as file:
            raw = file.read(INFO_LIMIT + 1)
    except FileNotFoundError as exc:
        raise AiRuntimeError(f"no AI runtime at {path}: run `qoin ai runtime install`") from exc
    except OSError as exc:
        raise AiRuntimeError(f"cannot read {record_path}: {exc.strerror}") from exc
    try:
        record = json.loads(raw[:INFO_LIMIT])
        fields = {
            key: record[key]
            for key in ("name", "id", "torch", "python", "cpu_capability", "program_digest")
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise AiRuntimeError(f"{record_path} is damaged: {_again(path)}") from exc
    if len(raw) > INFO_LIMIT or not all(isinstance(value, str) for value in fields.values()):
        raise AiRuntimeError(f"{record_path} is damaged: {_again(path)}")
    info = RuntimeInfo(**fields, path=path)
    expected = runtime_id(
        info.name, info.torch, info.python, info.cpu_capability, info.program_digest
    )
    if info.name != NAME or info.id != expected:
        raise AiRuntimeError(f"{record_path} does not add up (its id): {_again(path)}")
    if not info.python_path.exists():
        raise AiRuntimeError(f"{path} has no bin/python: {_again(path)}")
    installed = program_digest(program_files(_site_packages(path) / PACKAGE))
    if installed != info.program_digest:
        raise AiRuntimeError(f"the AI job program in {path} was changed: {_again(path)}")
    if installed != program_digest(program_files()):
        raise AiRuntimeError(
            f"the AI runtime at {path} holds another version of the job program than this "
            f"Qoin's (stale): {_again(path)}"
        )
    return info


def current_ref(path: Path | None = None) -> str:
    """The ref of the runtime at ``path`` (default :func:`default_dir`), checked by :func:`load`."""
    return load(path if path is not None else default_dir()).ref


def base_python() -> str:
    """The Python to make the venv from: ``$QOIN_AI_PYTHON``, else this interpreter's base if it
    lives under ``/usr``, else a ``python3`` under ``/usr`` (the sandbox has only ``/usr``), else
    this interpreter's base."""
    chosen = os.environ.get("QOIN_AI_PYTHON")
    if chosen:
        return chosen
    own = str(Path(getattr(sys, "_base_executable", sys.executable)).resolve())
    if own.startswith("/usr/"):
        return own
    for candidate in PYTHON_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return own


def _run(name: str, argv: list[str], timeout: float, on_line: Callable[[str], None] | None) -> None:
    """Run ``argv``, its output lines to ``on_line``; :class:`AiRuntimeError` if it fails."""
    output = Output(
        keep=False, on_line=(lambda line: on_line(line.text.rstrip("\r\n"))) if on_line else None
    )
    try:
        child = Child.spawn(name, argv, output)
    except OSError as exc:
        raise AiRuntimeError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    code = child.finish(time.monotonic() + timeout)
    if code != 0:
        raise AiRuntimeError(f"{name} failed (status {code}):\n{child.tail()}")


def _probe(python: Path) -> dict[str, str] | None:
    """What the runtime's Python has (None if it has no torch)."""
    try:
        done = subprocess.run(  # noqa: S603 (our own command)
            [str(python), "-c", PROBE],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        found = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    if not isinstance(found, dict) or not all(isinstance(value, str) for value in found.values()):
        return None
    return found


def _copy_program(
    target: Path, files: dict[str, bytes], on_line: Callable[[str], None] | None
) -> None:
    package = _site_packages(target) / PACKAGE
    if package.exists():
        shutil.rmtree(package)
    package.mkdir()
    for name, content in files.items():
        (package / name).write_bytes(content)
    # compiled now: in a job the runtime is read-only
    _run(
        "compileall",
        [str(target / "bin" / "python"), "-m", "compileall", "-q", str(package)],
        PROBE_TIMEOUT_S,
        on_line,
    )


def install(target: Path, *, on_line: Callable[[str], None] | None = None) -> RuntimeInfo:
    """Prepare (or check) the runtime at ``target``: a venv, PyTorch and numpy pip-installed
    into it, the job program copied in, ``qoin-runtime.json`` written. Idempotent: a runtime
    that :func:`load` accepts is only checked. One install at a time per directory (a lock file
    in it); ``qoin-runtime.json`` is removed before anything changes and written last, so an
    install that fails half-way leaves no runtime that :func:`load` accepts."""
    target = Path(target).absolute()
    try:
        target.mkdir(parents=True, exist_ok=True)
        lock = open(target / LOCK_FILE, "a")  # noqa: SIM115 (held for the whole install)
    except OSError as exc:
        raise AiRuntimeError(f"cannot write the runtime at {target}: {exc.strerror}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install(target, on_line)


def _install(target: Path, on_line: Callable[[str], None] | None) -> RuntimeInfo:
    say = on_line or (lambda _line: None)
    try:
        info = load(target)
    except AiRuntimeError:
        info = None
    if info is not None and info.torch.split("+")[0] == TORCH:
        say(f"the AI runtime at {target} is up to date ({info.ref})")
        return info
    files = program_files()
    (target / INFO_FILE).unlink(missing_ok=True)  # not a runtime until it is whole again
    python = target / "bin" / "python"
    if not python.exists():
        base = base_python()
        if not base.startswith("/usr/"):
            say(f"warning: {base} is not under /usr: sandboxed jobs cannot run this runtime")
        say(f"making a venv at {target} with {base}")
        target.parent.mkdir(parents=True, exist_ok=True)
        _run("venv", [base, "-m", "venv", str(target)], VENV_TIMEOUT_S, on_line)
    found = _probe(python)
    if found is None or found.get("torch", "").split("+")[0] != TORCH:
        say(f"installing {' '.join(REQUIREMENTS)}")
        pip = [str(python), "-m", "pip", "install", "--progress-bar", "off", *REQUIREMENTS]
        _run("pip", pip, PIP_TIMEOUT_S, on_line)
        found = _probe(python)
        if found is None:
            raise AiRuntimeError(f"torch does not import in {target} after pip installed it")
    _copy_program(target, files, on_line)
    digest = program_digest(files)
    try:
        torch, version, capability = found["torch"], found["python"], found["cpu_capability"]
    except KeyError as exc:
        raise AiRuntimeError(f"the runtime's Python at {python} did not say {exc}") from exc
    ident = runtime_id(NAME, torch, version, capability, digest)
    info = RuntimeInfo(NAME, ident, torch, version, capability, digest, target)
    text = json.dumps(info.record(), sort_keys=True, indent=1) + "\n"
    temporary = target / f".{INFO_FILE}.tmp"
    temporary.write_text(text)
    os.replace(temporary, target / INFO_FILE)
    say(f"the AI runtime at {target} is ready: {info.ref}")
    return load(target)
