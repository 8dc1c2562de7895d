"""AI test helpers: the ``ai_runtime`` session fixture (a runtime to run the AI job program with)
and :func:`run_program` (``python -m qoin_ai_job ...`` in a runtime, as a real process).

The runtime is ``$QOIN_AI_RUNTIME`` if set, else ``.ai-runtime`` at the repository's root,
installed (or brought up to date with this tree's job program) there on first use; an exclusive
lock (in the temporary directory) keeps parallel test workers from installing at once. Use it from
a test module with ``ai_runtime = aiutil.ai_runtime`` at the module's top (a fixture is found by
its name).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qoin.ai import runtime
from qoin.ai.runtime import AiRuntimeError, RuntimeInfo

REPO_RUNTIME = Path(__file__).parents[1] / ".ai-runtime"
PROGRAM_TIMEOUT_S = 300.0
"""The longest one run of the program may take in a test."""


def runtime_dir() -> Path:
    chosen = os.environ.get("QOIN_AI_RUNTIME")
    return Path(chosen) if chosen else REPO_RUNTIME


def ensure_runtime(path: Path) -> RuntimeInfo:
    """The runtime at ``path``, installed or updated first if it is missing or stale."""
    try:
        return runtime.load(path)
    except AiRuntimeError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    named = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"qoin-ai-runtime-{named}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return runtime.load(path)
        except AiRuntimeError:
            return runtime.install(path)


@pytest.fixture(scope="session")
def ai_runtime() -> Iterator[RuntimeInfo]:
    """A runtime this tree's job program runs in (see the module docstring)."""
    yield ensure_runtime(runtime_dir())


@dataclass(frozen=True)
class ProgramRun:
    """One finished run of the job program."""

    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        """The stdout lines as JSON objects."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def event(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    @property
    def error(self) -> str:
        """The error line's message of a run that failed on bad input."""
        (found,) = self.event("error")
        message = found["error"]
        assert isinstance(message, str)
        return message


def run_program(
    info: RuntimeInfo, args: Sequence[str], cwd: Path, timeout: float = PROGRAM_TIMEOUT_S
) -> ProgramRun:
    """``python -m qoin_ai_job ARGS`` with the runtime's Python, in ``cwd``."""
    done = subprocess.run(
        [str(info.python_path), "-m", "qoin_ai_job", *args],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "TMPDIR": str(cwd)},
    )
    return ProgramRun(done.returncode, done.stdout.decode(), done.stderr.decode())
