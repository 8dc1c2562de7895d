"""``local`` (docs/spec/compute.md §6.3): the spec run N times on this machine by its executor;
do the result roots agree, and if not, what differs?
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qoin.compute.client.base import BadOptions, ComputeClientError
from qoin.compute.client.options import JobOptions
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.storage import crypt, retrieve


@dataclass(frozen=True)
class LocalRun:
    """One local run of a spec."""

    root: bytes
    reason: str
    exit_code: int | None
    detail: str
    wall_seconds: float
    files: dict[str, tuple[int, bytes]]
    """path -> (size, digest)."""
    stdout: tuple[int, bytes]
    """(size, digest) of its stdout."""

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root.hex(),
            "reason": self.reason,
            "exitCode": self.exit_code,
            "detail": self.detail or None,
            "wallSeconds": round(self.wall_seconds, 3),
            "files": len(self.files),
        }


@dataclass(frozen=True)
class LocalResult:
    """``local``: the spec run twice; whether the roots agree and, if not, what differs."""

    runs: tuple[LocalRun, ...]
    differences: tuple[str, ...]

    @property
    def deterministic(self) -> bool:
        return len({run.root for run in self.runs}) == 1

    def to_json(self) -> dict[str, Any]:
        return {
            "deterministic": self.deterministic,
            "roots": [run.root.hex() for run in self.runs],
            "runs": [run.to_json() for run in self.runs],
            "differences": list(self.differences),
        }


def differences(a: LocalRun, b: LocalRun) -> list[str]:
    """What differs between two runs' results, in words."""
    found = []
    if (a.reason, a.exit_code) != (b.reason, b.exit_code):
        found.append(f"how it ended: {a.reason} {a.exit_code} vs {b.reason} {b.exit_code}")
    if a.stdout != b.stdout:
        found.append("stdout")
    for path in sorted(set(a.files) | set(b.files)):
        if path not in a.files or path not in b.files:
            found.append(f"/outputs/{path} (only in run {1 if path in a.files else 2})")
        elif a.files[path] != b.files[path]:
            found.append(f"/outputs/{path}")
    return found


def stage_local_inputs(
    options: JobOptions, directory: Path, rpc: str | None, keypair: HybridKeyPair | None
) -> list[tuple[Path, str]]:
    """The inputs of a local run as (host file, job path): local files as they are, stored ones
    fetched (and decrypted with ``keypair``) into ``directory``."""
    staged = []
    for index, ref in enumerate(options.inputs):
        if ref.file is not None:
            if not ref.file.is_file():
                raise BadOptions(f"input {ref.file} is not a file")
            staged.append((ref.file.resolve(), ref.path))
            continue
        if ref.cid is None or rpc is None:
            raise BadOptions(f"input {ref.path} names no file")
        master = None if keypair is None else crypt.master_key(keypair)
        try:
            data = retrieve.fetch(rpc, ref.cid, master)
        except QoinError as exc:
            raise ComputeClientError(f"input {ref.cid.hex()}: {exc}") from None
        target = directory / f"input-{index}"
        target.write_bytes(data)
        staged.append((target, ref.path))
    return staged


def run_local(
    options: JobOptions,
    inputs: Sequence[tuple[Path, str]],
    directory: Path,
    on_output: Callable[[int, str, bytes], None] | None = None,
    runs: int = 2,
) -> LocalResult:
    """Run the spec ``runs`` times on this machine with its executor (sandbox by default), each
    in a fresh directory under ``directory``, and compare the result roots."""
    from qoin.compute import executors, outputs  # noqa: PLC0415 (loaded when used)

    spec = options.spec()
    executor = executors.executor_for(spec.executor)
    problem = executor.problem()
    if problem is not None:
        raise ComputeClientError(
            f"the {spec.executor.name.lower()} executor cannot run here: {problem}"
        )
    done = []
    for number in range(runs):
        root = directory / f"run-{number + 1}"
        private, work, outs = root / "job", root / "work", root / "outputs"
        for made in (private, work, outs):
            made.mkdir(parents=True)
        stdout_path = root / "stdout"

        with stdout_path.open("wb") as stdout:

            def save(stream: str, data: bytes, n: int = number, sink: Any = stdout) -> None:
                if stream == "stdout":
                    sink.write(data)
                if on_output is not None:
                    on_output(n, stream, data)

            result = executor.run(
                spec,
                executors.JobDirs(private, tuple(inputs), work, outs),
                save,
                threading.Event(),
            )
        manifest = outputs.scan(outs, stdout_path, result, spec.outputs)
        done.append(
            LocalRun(
                root=outputs.result_root(manifest),
                reason=str(manifest.reason),
                exit_code=manifest.exit_code,
                detail=result.detail,
                wall_seconds=result.wall_seconds,
                files={e.path: (e.size, e.digest) for e in manifest.files},
                stdout=(manifest.stdout.size, manifest.stdout.digest),
            )
        )
    found: list[str] = []
    for other in done[1:]:
        found.extend(d for d in differences(done[0], other) if d not in found)
    return LocalResult(tuple(done), tuple(found))
