"""The AI job program (``python -m qoin_ai_job``) run directly with a runtime's Python, as a real
process: training reaches good accuracy, runs are bit-identical, fine-tuning continues, the
character model learns and generates deterministically, inference predicts, bad input is refused
with exit status 2 and a JSON error line."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from threading import Event
from typing import Any

import numpy as np
import pytest

from qoin.ai import datasets
from qoin.ai.job import tensorfile
from qoin.ai.job.tensorfile import Array
from qoin.ai.runtime import RuntimeInfo
from qoin.compute.executors import executor_for
from qoin.compute.executors.base import JobDirs, StopReason
from qoin.compute.jobspec import Executor, Input, JobSpec, Resources
from qoin.compute.market import MAX_ANSWER
from tests import aiutil
from tests.aiutil import ProgramRun, run_program

pytestmark = pytest.mark.slow  # some twenty runs of the program, each importing torch

ai_runtime = aiutil.ai_runtime

TRAIN = ["--lr", "0.003", "--batch", "32", "--seed", "7", "--threads", "1"]
TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "a stitch in time saves nine. "
    "all that glitters is not gold.\n"
) * 30


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ai-program")
    datasets.prepare("sklearn:digits", root / "digits.qd", seed=1)
    (root / "text.txt").write_text(TEXT)
    datasets.prepare(str(root / "text.txt"), root / "text.qd", test_fraction=0.1)
    return root


def train(info: RuntimeInfo, work: Path, out: str, *extra: str) -> ProgramRun:
    run = run_program(info, ["train", *extra, "--out", out], work)
    assert run.code == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def digits_run(ai_runtime: RuntimeInfo, work: Path) -> ProgramRun:
    return train(
        ai_runtime, work, "cnn1", "--arch", "cnn", "--data", "digits.qd", "--epochs", "6", *TRAIN
    )


@pytest.fixture(scope="module")
def text_run(ai_runtime: RuntimeInfo, work: Path) -> ProgramRun:
    args = ["--arch", "charlm", "--data", "text.qd", "--epochs", "5", "--lr", "0.003"]
    return train(ai_runtime, work, "lm1", *args, "--batch", "16", "--seed", "3", "--threads", "1")


def model_meta(path: Path) -> dict[str, Any]:
    return tensorfile.read(path, 1 << 30).meta


def test_digits_reach_ninety_percent(digits_run: ProgramRun, work: Path) -> None:
    (start,) = digits_run.event("start")
    assert start == {
        "arch": "cnn",
        "epochs": 6,
        "event": "start",
        "params": start["params"],
        "test": 359,
        "train": 1438,
    }
    epochs = digits_run.event("epoch")
    assert [event["epoch"] for event in epochs] == [1, 2, 3, 4, 5, 6]
    assert all(event["epochs"] == 6 and event["accuracy"] is not None for event in epochs)
    (done,) = digits_run.event("done")
    assert done["accuracy"] >= 0.9
    assert done["model"] == "model.qm"
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    meta = model_meta(work / "cnn1" / "model.qm")
    assert (
        meta["format"] == "qoin-model"
        and meta["arch"] == "cnn"
        and meta["task"] == "classification"
    )
    assert meta["classes"] == [str(digit) for digit in range(10)] and meta["shape"] == [1, 8, 8]
    assert meta["trained"] == {"base": False, "batch": 32, "epochs": 6, "lr": 0.003, "seed": 7}
    metrics = json.loads((work / "cnn1" / "metrics.json").read_text())
    assert metrics["accuracy"] == done["accuracy"] and len(metrics["history"]) == 6
    # no timing on stdout; it is on stderr
    assert "trained in" in digits_run.stderr and "trained in" not in digits_run.stdout


def test_runs_are_bit_identical(
    ai_runtime: RuntimeInfo, digits_run: ProgramRun, work: Path
) -> None:
    again = train(
        ai_runtime, work, "cnn2", "--arch", "cnn", "--data", "digits.qd", "--epochs", "6", *TRAIN
    )
    assert again.stdout == digits_run.stdout
    for name in ("model.qm", "metrics.json"):
        assert (work / "cnn2" / name).read_bytes() == (work / "cnn1" / name).read_bytes()


def test_the_callers_environment_does_not_change_the_bits(
    ai_runtime: RuntimeInfo, work: Path
) -> None:
    """MKL's code path and the math libraries' threads are set by the program, whatever the
    environment says: MKL's ``COMPATIBLE`` path, the same bits on every x86 processor (``AUTO``
    picks a path per processor, so two providers of one runtime ref would disagree; on this
    machine ``AUTO`` and ``COMPATIBLE`` give other bits)."""
    args = ["train", "--arch", "mlp", "--hidden", "16", "--data", "digits.qd", "--epochs", "1"]
    runs = []
    for name, extra in (
        ("env-plain", {}),
        ("env-auto", {"MKL_CBWR": "AUTO", "OMP_NUM_THREADS": "3"}),
        ("env-compatible", {"MKL_CBWR": "COMPATIBLE"}),
    ):
        done = subprocess.run(
            [str(ai_runtime.python_path), "-m", "qoin_ai_job", *args, *TRAIN, "--out", name],
            cwd=work,
            capture_output=True,
            timeout=aiutil.PROGRAM_TIMEOUT_S,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(work), **extra},
        )
        assert done.returncode == 0, done.stderr.decode()
        runs.append((done.stdout, (work / name / "model.qm").read_bytes()))
    assert runs[0] == runs[1] == runs[2]


def test_a_model_config_larger_than_its_file_is_refused_unbuilt(
    ai_runtime: RuntimeInfo, work: Path
) -> None:
    """A model file is untrusted data: a config of petabytes of parameters with none in the file
    is refused (exit 2) before anything is allocated."""
    meta = {
        "arch": "mlp",
        "classes": [str(i) for i in range(10)],
        "config": {"classes": 10, "hidden": [65536], "inputs": 1 << 24},
        "format": "qoin-model",
        "shape": [1, 8, 8],
        "task": "classification",
        "trained": {},
        "version": 1,
    }
    tensorfile.write(work / "huge.qm", meta, [])
    tensorfile.write(
        work / "huge-input.qi",
        {"format": "qoin-input", "task": "classification", "version": 1},
        [Array("x", "float32", (1, 1, 8, 8), bytes(256))],
    )
    infer = ["infer", "--model", "huge.qm", "--input", "huge-input.qi", "--threads", "1"]
    assert "not the parameters" in error_of(ai_runtime, work, [*infer, "--out", "bad"])


def test_mlp_with_hidden_sizes(ai_runtime: RuntimeInfo, work: Path) -> None:
    args = ["--arch", "mlp", "--hidden", "32", "--data", "digits.qd", "--epochs", "4", *TRAIN]
    run = train(ai_runtime, work, "mlp", *args)
    (done,) = run.event("done")
    assert done["accuracy"] >= 0.85
    meta = model_meta(work / "mlp" / "model.qm")
    assert meta["config"] == {"classes": 10, "hidden": [32], "inputs": 64}
    (start,) = run.event("start")
    assert start["params"] == 64 * 32 + 32 + 32 * 10 + 10


def test_finetune_continues(ai_runtime: RuntimeInfo, digits_run: ProgramRun, work: Path) -> None:
    args = ["--arch", "cnn", "--data", "digits.qd", "--base", "cnn1/model.qm", "--epochs", "2"]
    run = train(ai_runtime, work, "cnn-ft", *args, *TRAIN)
    (base_done,) = digits_run.event("done")
    first_loss = digits_run.event("epoch")[0]["loss"]
    epochs = run.event("epoch")
    assert [event["epochs"] for event in epochs] == [2, 2]
    # continues from the base: nowhere near the first epoch's loss of a fresh model
    assert epochs[0]["loss"] < base_done["loss"] * 1.5 < first_loss
    assert run.event("done")[0]["accuracy"] >= 0.9
    meta = model_meta(work / "cnn-ft" / "model.qm")
    assert meta["trained"]["epochs"] == 8 and meta["trained"]["base"] is True


def test_charlm_learns_and_generates(
    ai_runtime: RuntimeInfo, text_run: ProgramRun, work: Path
) -> None:
    epochs = text_run.event("epoch")
    assert len(epochs) == 5 and all(event["accuracy"] is None for event in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"] * 0.8
    assert epochs[-1]["testLoss"] < epochs[0]["testLoss"]
    meta = model_meta(work / "lm1" / "model.qm")
    assert meta["task"] == "text" and meta["vocab"] == "".join(sorted(set(TEXT)))
    assert meta["config"] == {
        "context": 64,
        "d_model": 64,
        "heads": 2,
        "layers": 2,
        "vocab": len(meta["vocab"]),
    }
    (work / "prompt.qi").write_bytes(datasets.prepare_input("the quick", meta))
    runs = []
    for out in ("gen1", "gen2"):
        args = ["infer", "--model", "lm1/model.qm", "--input", "prompt.qi", "--tokens", "40"]
        run = run_program(ai_runtime, [*args, "--seed", "5", "--threads", "1", "--out", out], work)
        assert run.code == 0, run.stdout + run.stderr
        runs.append(run)
    assert runs[0].stdout == runs[1].stdout
    (generated,) = runs[0].event("generated")
    assert len(generated["text"]) == 40 and set(generated["text"]) <= set(TEXT)
    saved = json.loads((work / "gen1" / "predictions.json").read_text())
    assert saved == generated


def test_charlm_finetune_on_other_text(
    ai_runtime: RuntimeInfo, text_run: ProgramRun, work: Path
) -> None:
    (work / "other.txt").write_text("the lazy dog sleeps. the fox runs. é\n" * 20)
    datasets.prepare(str(work / "other.txt"), work / "other.qd")
    args = ["--arch", "charlm", "--data", "other.qd", "--base", "lm1/model.qm", "--epochs", "1"]
    run = train(
        ai_runtime,
        work,
        "lm-ft",
        *args,
        "--lr",
        "0.001",
        "--batch",
        "8",
        "--seed",
        "1",
        "--threads",
        "1",
    )
    assert "not in the model's vocabulary" in run.stderr  # the é
    assert model_meta(work / "lm-ft" / "model.qm")["trained"]["epochs"] == 6


def test_infer_predicts(ai_runtime: RuntimeInfo, digits_run: ProgramRun, work: Path) -> None:
    data = tensorfile.read(work / "digits.qd", 1 << 30)
    x, y = data.get("x"), data.get("y")
    assert x is not None and y is not None
    rows = 20
    size = 64 * 4
    meta = {"format": "qoin-input", "task": "classification", "version": 1}
    sample = Array("x", "float32", (rows, 1, 8, 8), x.data[-rows * size :])
    tensorfile.write(work / "rows.qi", meta, [sample])
    args = [
        "infer",
        "--model",
        "cnn1/model.qm",
        "--input",
        "rows.qi",
        "--threads",
        "1",
        "--out",
        "pred",
    ]
    run = run_program(ai_runtime, args, work)
    assert run.code == 0, run.stdout + run.stderr
    (found,) = run.event("predictions")
    truth = np.frombuffer(y.data, dtype="<i8")[-rows:].tolist()
    assert len(found["predictions"]) == rows
    assert sum(p == t for p, t in zip(found["predictions"], truth, strict=True)) >= 17
    assert found["labels"] == [str(p) for p in found["predictions"]]
    for row in found["probabilities"]:
        assert len(row) == 10 and math.isclose(sum(row), 1.0, abs_tol=1e-4)
    assert json.loads((work / "pred" / "predictions.json").read_text()) == found


def test_infer_answers_labels_in_a_contracts_bound(
    ai_runtime: RuntimeInfo, digits_run: ProgramRun, text_run: ProgramRun, work: Path
) -> None:
    """``--answer label``: stdout is only the labels, one a line, as many whole lines as fit in
    256 bytes (a contract's answer), or the generated text cut to 256 bytes; predictions.json
    keeps the whole object either way."""
    data = tensorfile.read(work / "digits.qd", 1 << 30)
    x = data.get("x")
    assert x is not None
    rows, size = 200, 64 * 4
    meta = {"format": "qoin-input", "task": "classification", "version": 1}
    tensorfile.write(
        work / "many.qi", meta, [Array("x", "float32", (rows, 1, 8, 8), x.data[-rows * size :])]
    )
    args = ["infer", "--model", "cnn1/model.qm", "--input", "many.qi", "--threads", "1"]
    run = run_program(ai_runtime, [*args, "--answer", "label", "--out", "many"], work)
    assert run.code == 0, run.stdout + run.stderr
    saved = json.loads((work / "many" / "predictions.json").read_text())
    assert len(saved["labels"]) == rows
    assert run.stdout == "".join(f"{label}\n" for label in saved["labels"][:128])  # 2 bytes each
    (work / "fox.qi").write_bytes(
        datasets.prepare_input("the quick", model_meta(work / "lm1" / "model.qm"))
    )
    prompt = ["--input", "fox.qi", "--tokens", "300", "--seed", "5", "--threads", "1"]
    args = ["infer", "--model", "lm1/model.qm", *prompt, "--answer", "label", "--out", "long"]
    run = run_program(ai_runtime, args, work)
    assert run.code == 0, run.stdout + run.stderr
    text = json.loads((work / "long" / "predictions.json").read_text())["text"]
    assert len(text) == 300 and run.stdout == text.encode()[:MAX_ANSWER].decode()


def error_of(info: RuntimeInfo, work: Path, args: list[str]) -> str:
    run = run_program(info, args, work)
    assert run.code == 2, run.stdout + run.stderr
    assert len(run.events) == 1, run.stdout
    return run.error


def test_bad_inputs_are_refused(
    ai_runtime: RuntimeInfo, digits_run: ProgramRun, text_run: ProgramRun, work: Path
) -> None:
    whole = (work / "digits.qd").read_bytes()
    (work / "cut.qd").write_bytes(whole[: len(whole) - 100])
    (work / "garbage.qd").write_bytes(b"this is not a dataset at all\n" * 10)
    datasets_csv = work / "features.csv"
    datasets_csv.write_text("".join(f"{i % 5},{i % 3},{i % 2}\n" for i in range(40)))
    datasets.prepare(str(datasets_csv), work / "features.qd")

    def training(data: str, arch: str = "cnn", *extra: str) -> str:
        args = ["train", "--arch", arch, "--data", data, "--epochs", "1", *TRAIN, *extra]
        return error_of(ai_runtime, work, [*args, "--out", "bad"])

    assert "truncated" in training("cut.qd")
    assert "not a Qoin tensor file" in training("garbage.qd")
    assert "no such file" in training("missing.qd").lower()
    assert "text dataset" in training("digits.qd", "charlm")
    assert "classification dataset" in training("text.qd", "cnn")
    assert "[channels, height, width]" in training("features.qd", "cnn")
    assert "not a qoin-dataset" in training("lm1/model.qm", "charlm")
    assert "--base is a charlm model" in training("digits.qd", "cnn", "--base", "lm1/model.qm")
    assert "other classes or sample shape" in training(
        "features.qd", "cnn", "--base", "cnn1/model.qm"
    )
    assert "--epochs" in error_of(
        ai_runtime, work, ["train", "--arch", "cnn", "--data", "digits.qd"]
    )
    # a model for the wrong task, an input for the wrong model
    (work / "prompt2.qi").write_bytes(datasets.prepare_input("hello", {"task": "text"}))
    infer = ["infer", "--threads", "1", "--out", "bad"]
    message = error_of(
        ai_runtime, work, [*infer, "--model", "cnn1/model.qm", "--input", "prompt2.qi"]
    )
    assert "not the model's" in message
    message = error_of(ai_runtime, work, [*infer, "--model", "digits.qd", "--input", "prompt2.qi"])
    assert "not a qoin-model" in message
    tensorfile.write(
        work / "wide.qi",
        {"format": "qoin-input", "task": "classification", "version": 1},
        [Array("x", "float32", (1, 3), bytes(12))],
    )
    message = error_of(ai_runtime, work, [*infer, "--model", "cnn1/model.qm", "--input", "wide.qi"])
    assert "not rows of shape [1, 8, 8]" in message
    # a model file whose parameters do not fit its config
    model = tensorfile.read(work / "cnn1" / "model.qm", 1 << 30)
    tensorfile.write(work / "cut.qm", model.meta, list(model.arrays[:-1]))
    tensorfile.write(
        work / "one.qi",
        {"format": "qoin-input", "task": "classification", "version": 1},
        [Array("x", "float32", (1, 1, 8, 8), bytes(256))],
    )
    message = error_of(ai_runtime, work, [*infer, "--model", "cut.qm", "--input", "one.qi"])
    assert "not the parameters" in message


def test_sandboxed_training_gives_the_same_model(
    ai_runtime: RuntimeInfo, digits_run: ProgramRun, work: Path, tmp_path: Path
) -> None:
    """The same training as a sandbox job (the runtime at /runtime, the dataset an input): the
    same stdout and the same model bytes as the direct run."""
    executor = executor_for(Executor.SANDBOX)
    problem = executor.problem()
    if problem is not None:
        pytest.skip(problem)
    root = tmp_path / "job"
    for sub in ("work", "outputs"):
        (root / sub).mkdir(parents=True)
    args = ["--arch", "cnn", "--data", "/inputs/digits.qd", "--epochs", "6", *TRAIN]
    spec = JobSpec(
        command=("/runtime/bin/python", "-m", "qoin_ai_job", "train", *args, "--out", "/outputs"),
        inputs=(Input(b"\x01" * 32, "/inputs/digits.qd"),),
        runtime=ai_runtime.ref,
        resources=Resources(cpus=1, memory=1536 << 20),
        timeout=300,
    )
    staged = ((work / "digits.qd", "/inputs/digits.qd"),)
    dirs = JobDirs(root, staged, root / "work", root / "outputs", ai_runtime.path)
    said: list[tuple[str, bytes]] = []
    result = executor.run(spec, dirs, lambda stream, chunk: said.append((stream, chunk)), Event())
    stdout = b"".join(chunk for stream, chunk in said if stream == "stdout").decode()
    assert result.reason is StopReason.EXITED and result.exit_code == 0, (result, said)
    assert stdout == digits_run.stdout
    assert (root / "outputs" / "model.qm").read_bytes() == (work / "cnn1" / "model.qm").read_bytes()
    written = sorted(path.name for path in (root / "outputs").iterdir())
    assert written == ["metrics.json", "model.qm"]
