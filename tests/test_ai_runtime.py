"""The AI runtime: a real install into a temporary directory (pip, from the machine's configured
index), then load, the ref, idempotence and staleness when a program file changes."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from qoin.ai import runtime
from qoin.ai.runtime import AiRuntimeError, RuntimeInfo
from tests import aiutil

pytestmark = pytest.mark.slow

ai_runtime = aiutil.ai_runtime


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[RuntimeInfo, list[str]]:
    lines: list[str] = []
    target = tmp_path_factory.mktemp("runtime") / "rt"
    return runtime.install(target, on_line=lines.append), lines


def test_install_makes_a_runtime(installed: tuple[RuntimeInfo, list[str]]) -> None:
    info, lines = installed
    assert info.name == "qoin-ai" and info.torch.startswith(runtime.TORCH)
    assert info.ref == f"qoin-ai@{info.id}" and len(info.id) == 32
    assert info.program_digest == runtime.program_digest(runtime.program_files())
    assert info.id == runtime.runtime_id(
        info.name, info.torch, info.python, info.cpu_capability, info.program_digest
    )
    assert any("installing torch==" in line for line in lines)
    assert any(line.startswith(("Collecting", "Processing", "Successfully")) for line in lines)
    assert lines[-1] == f"the AI runtime at {info.path} is ready: {info.ref}"
    assert runtime.load(info.path) == info
    assert runtime.current_ref(info.path) == info.ref
    record = json.loads((info.path / runtime.INFO_FILE).read_text())
    assert record == {**info.record(), "version": 1}
    # its python runs the program, and sees the same torch, python and CPU capability
    said = subprocess.run(
        [str(info.python_path), "-c", runtime.PROBE], capture_output=True, check=True, timeout=120
    )
    found = json.loads(said.stdout)
    assert (found["torch"], found["python"], found["cpu_capability"]) == (
        info.torch,
        info.python,
        info.cpu_capability,
    )


def test_same_build_same_ref(
    installed: tuple[RuntimeInfo, list[str]], ai_runtime: RuntimeInfo
) -> None:
    """Two runtimes of the same torch, Python, CPU capability and program have the same ref."""
    info, _ = installed
    same = (info.torch, info.python, info.cpu_capability, info.program_digest)
    other = (
        ai_runtime.torch,
        ai_runtime.python,
        ai_runtime.cpu_capability,
        ai_runtime.program_digest,
    )
    assert (info.ref == ai_runtime.ref) == (same == other)
    assert runtime.runtime_id("qoin-ai", "2.13.0+cpu", "3.11.2", "AVX2", info.program_digest) != (
        runtime.runtime_id("qoin-ai", "2.13.0+cpu", "3.11.2", "AVX512", info.program_digest)
    )


def test_install_again_only_checks(installed: tuple[RuntimeInfo, list[str]]) -> None:
    info, _ = installed
    record = info.path / runtime.INFO_FILE
    before = record.stat().st_mtime_ns
    lines: list[str] = []
    assert runtime.install(info.path, on_line=lines.append) == info
    assert lines == [f"the AI runtime at {info.path} is up to date ({info.ref})"]
    assert record.stat().st_mtime_ns == before


def test_a_changed_program_is_stale_until_installed_again(
    installed: tuple[RuntimeInfo, list[str]],
) -> None:
    info, _ = installed
    package = runtime._site_packages(info.path) / runtime.PACKAGE
    changed = package / "models.py"
    original = changed.read_bytes()
    changed.write_bytes(original + b"\n# changed\n")
    with pytest.raises(AiRuntimeError, match="was changed"):
        runtime.load(info.path)
    # a record that agrees with the changed program: another version than this Qoin's
    files = runtime.program_files(package)
    digest = runtime.program_digest(files)
    ident = runtime.runtime_id(info.name, info.torch, info.python, info.cpu_capability, digest)
    record = {**info.record(), "program_digest": digest, "id": ident}
    (info.path / runtime.INFO_FILE).write_text(json.dumps(record))
    with pytest.raises(AiRuntimeError, match="stale"):
        runtime.load(info.path)
    lines: list[str] = []
    again = runtime.install(info.path, on_line=lines.append)
    assert again == info and changed.read_bytes() == original
    assert not any("installing torch" in line for line in lines)  # torch was there already
    assert runtime.load(info.path) == info


def test_an_install_that_fails_half_way_leaves_no_runtime(
    installed: tuple[RuntimeInfo, list[str]],
) -> None:
    """The record goes before anything changes: a runtime being reinstalled (here for another
    torch) whose install fails is refused by load, not offered with the old record."""
    info, _ = installed
    record_path = info.path / runtime.INFO_FILE
    good = record_path.read_text()
    older = "2.12.0+cpu"
    ident = runtime.runtime_id(
        info.name, older, info.python, info.cpu_capability, info.program_digest
    )
    record_path.write_text(json.dumps({**info.record(), "torch": older, "id": ident}))
    assert runtime.load(info.path).torch == older  # a whole runtime of another torch
    second = info.path / "lib" / "python3.99" / "site-packages"
    second.mkdir(parents=True)  # the program cannot be copied: the install fails half-way
    try:
        with pytest.raises(AiRuntimeError, match="no single"):
            runtime.install(info.path)
        with pytest.raises(AiRuntimeError, match="no AI runtime"):
            runtime.load(info.path)
    finally:
        shutil.rmtree(info.path / "lib" / "python3.99")
        record_path.write_text(good)
    assert runtime.load(info.path) == info


def test_one_install_at_a_time(installed: tuple[RuntimeInfo, list[str]]) -> None:
    """A second install of the same directory waits for the first (its lock) and then only
    checks."""
    info, _ = installed
    lines: list[str] = []
    with open(info.path / runtime.LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # an install under way
        waiting = threading.Thread(target=lambda: runtime.install(info.path, on_line=lines.append))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and lines == []
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    assert lines == [f"the AI runtime at {info.path} is up to date ({info.ref})"]


def test_missing_and_damaged_runtimes(
    installed: tuple[RuntimeInfo, list[str]], tmp_path: Path
) -> None:
    with pytest.raises(AiRuntimeError, match="no AI runtime"):
        runtime.load(tmp_path / "nothing")
    info, _ = installed
    record_path = info.path / runtime.INFO_FILE
    good = record_path.read_text()
    try:
        record_path.write_text("{not json")
        with pytest.raises(AiRuntimeError, match="damaged"):
            runtime.load(info.path)
        record_path.write_text(json.dumps({**info.record(), "cpu_capability": "AVX2"}))
        with pytest.raises(AiRuntimeError, match="does not add up"):
            runtime.load(info.path)
    finally:
        record_path.write_text(good)
    assert runtime.load(info.path) == info


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QOIN_AI_RUNTIME", str(tmp_path / "rt"))
    assert runtime.default_dir() == tmp_path / "rt"
    monkeypatch.delenv("QOIN_AI_RUNTIME")
    monkeypatch.setenv("QOIN_HOME", str(tmp_path / "home"))
    assert runtime.default_dir() == tmp_path / "home" / "ai-runtime"
