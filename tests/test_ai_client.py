"""The AI client (:mod:`qoin.ai.client`, :mod:`qoin.ai.output`, :mod:`qoin.ai.catalog`, ``qoin
ai``) where no market is needed: option checks (exit 2 before any node is asked), the job each
command builds (its spec's fields and command line), the runtime chosen among the providers' refs,
the live loss read from the job program's stdout lines, and the catalog's atomic, locked writes.
The whole flow with real providers: :mod:`tests.test_ai_e2e`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from qoin.ai import catalog, jobs
from qoin.ai.catalog import CatalogError, Entry
from qoin.ai.client import (
    Resources,
    TrainOptions,
    candidate_asks,
    check_arch_fits,
    check_base_fits,
    choose_gpu_model,
    choose_runtime,
    infer_command,
    job_options,
    parse_cid,
    parse_runtimes,
    train_command,
)
from qoin.ai.output import AiClientError, LossWatcher, describe, parse_event, predictions_text
from qoin.cli import ai as cli_ai
from qoin.cli.main import app
from qoin.compute.client import BadOptions, NoMatch
from qoin.compute.jobspec import Determinism, Executor, Verification
from qoin.crypto.address import Address
from tests.keys import keypair_for
from tests.test_compute_client import NOWHERE, address, ask, refused

RUNNER = CliRunner()
DATA = "ab" * 32
BASE = "cd" * 32
REF_A = "qoin-ai@" + "a" * 32
REF_B = "qoin-ai@" + "b" * 32
DIGITS = {
    "format": "qoin-dataset",
    "version": 1,
    "task": "classification",
    "name": "digits",
    "classes": [str(i) for i in range(10)],
    "shape": [1, 8, 8],
    "test": 360,
}


def ai(*args: str, home: Path | None = None) -> Result:
    env: dict[str, str | None] = {"QOIN_PASSWORD": None}
    if home is not None:
        env["QOIN_HOME"] = str(home)
    return RUNNER.invoke(app, ["ai", *args], env=env)


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"arch": "transformer"}, "--model is one of mlp, cnn, charlm"),
        ({"epochs": 0}, "--epochs is 1 to"),
        ({"epochs": 10**6}, "--epochs is 1 to"),
        ({"lr": 0.0}, "--lr is over 0"),
        ({"lr": float("nan")}, "--lr is over 0"),
        ({"lr": 11.0}, "--lr is over 0"),
        ({"batch": 0}, "--batch is 1 to"),
        ({"seed": -1}, "--seed is 0 to"),
    ],
)
def test_out_of_range_options_are_refused(changes: dict[str, object], reason: str) -> None:
    options = replace(TrainOptions("mlp", DATA), **changes)  # type: ignore[arg-type]
    with pytest.raises(BadOptions, match=reason):
        options.check()


def test_cids_are_64_hex_digits() -> None:
    assert parse_cid("0x" + DATA.upper(), "--data") == DATA
    with pytest.raises(BadOptions, match="--data 'xyz' is not a content id"):
        parse_cid("xyz", "--data")


def test_the_arch_must_fit_the_dataset() -> None:
    check_arch_fits("cnn", DIGITS)
    check_arch_fits("mlp", DIGITS)
    with pytest.raises(BadOptions, match="charlm learns a text dataset"):
        check_arch_fits("charlm", DIGITS)
    with pytest.raises(BadOptions, match="cnn learns images"):
        check_arch_fits("cnn", {**DIGITS, "shape": [64]})
    with pytest.raises(BadOptions, match="mlp learns a classification dataset"):
        check_arch_fits("mlp", {"format": "qoin-dataset", "task": "text"})
    with pytest.raises(BadOptions, match="not a dataset"):
        check_arch_fits("mlp", {"format": "qoin-model", "task": "classification"})
    model = {"format": "qoin-model", "arch": "mlp", "task": "classification",
             "classes": DIGITS["classes"], "shape": [1, 8, 8]}  # fmt: skip
    assert check_base_fits(model, DIGITS) == "mlp"
    with pytest.raises(BadOptions, match="samples shaped"):
        check_base_fits({**model, "shape": [64]}, DIGITS)
    with pytest.raises(BadOptions, match="other classes"):
        check_base_fits({**model, "classes": ["a", "b"]}, DIGITS)


def test_bad_options_exit_2_before_any_node_is_asked(tmp_path: Path) -> None:
    key = tmp_path / "missing.json"
    common = ("--key", str(key), "--rpc", NOWHERE)
    refused(ai("train", "--model", "gpt", "--data", DATA, *common), 2, "--model is one of mlp, cnn")
    refused(ai("train", "--model", "mlp", "--data", "nope", *common), 2, "is not a content id")
    refused(ai("train", "--model", "mlp", "--data", DATA, "--epochs", "0", *common), 2, "--epochs")
    refused(ai("train", "--model", "mlp", "--data", DATA, "--lr", "-1", *common), 2, "--lr")
    refused(
        ai("train", "--model", "mlp", "--data", DATA, "--verify", "twice", *common), 2, "--verify"
    )
    refused(
        ai("train", "--model", "mlp", "--data", DATA, "--memory", "lots", *common), 2, "--memory"
    )
    refused(
        ai("finetune", "--base", "x", "--data", DATA, *common), 2, "--base 'x' is not a content"
    )
    refused(ai("infer", "--model", BASE, "--input", "x", "--tokens", "0", *common), 2, "--tokens")
    refused(ai("prepare", "sklearn:digits", "--test-fraction", "1", *common), 2, "--test-fraction")
    # Good options, a keystore that is not there: still exit 2, still no node asked.
    refused(ai("train", "--model", "mlp", "--data", DATA, *common), 2, str(key))


# -- the job ---------------------------------------------------------------------------------------


def test_a_training_job_runs_the_job_program_in_the_runtime() -> None:
    options = TrainOptions("cnn", DATA, epochs=3, lr=0.05, batch=32, seed=7)
    resources = Resources(cpus=2, memory=1 << 30, timeout=300, verification=Verification.REPLICATED)
    command = train_command(options, resources)
    assert command == (
        "/runtime/bin/python", "-m", "qoin_ai_job", "train", "--arch", "cnn",
        "--data", "/inputs/data", "--epochs", "3", "--lr", "0.05", "--batch", "32",
        "--seed", "7", "--threads", "2", "--device", "cpu", "--out", "/outputs",
    )  # fmt: skip
    spec = job_options(command, {"/inputs/data": DATA}, resources, REF_A).spec()
    assert spec.executor is Executor.SANDBOX and spec.runtime == REF_A
    assert spec.command == command and not spec.network
    assert spec.determinism is Determinism.EXACT and spec.verification is Verification.REPLICATED
    assert spec.replicas == 2
    assert [(i.cid.hex(), i.path) for i in spec.inputs] == [(DATA, "/inputs/data")]
    assert (spec.resources.cpus, spec.resources.memory, spec.resources.gpus) == (2, 1 << 30, 0)
    assert spec.timeout == 300
    # The runtime is part of what the job hash binds.
    other = job_options(command, {"/inputs/data": DATA}, resources, REF_B).spec()
    assert other.job_hash != spec.job_hash


def test_fine_tuning_adds_the_base_and_a_gpu_job_asks_for_same_hardware() -> None:
    options = TrainOptions("mlp", DATA, base=BASE)
    resources = Resources(gpu=True)
    command = train_command(options, resources)
    assert command[command.index("--base") + 1] == "/inputs/base"
    assert command[command.index("--device") + 1] == "cuda"
    inputs = {"/inputs/data": DATA, "/inputs/base": BASE}
    spec = job_options(command, inputs, resources, REF_A, "NVIDIA H100").spec()
    assert spec.determinism is Determinism.SAME_HARDWARE
    assert (spec.resources.gpus, spec.resources.gpu_model) == (1, "NVIDIA H100")
    assert {i.path for i in spec.inputs} == {"/inputs/data", "/inputs/base"}
    infer = infer_command(50, 3, Resources())
    assert infer == (
        "/runtime/bin/python", "-m", "qoin_ai_job", "infer", "--model", "/inputs/model",
        "--input", "/inputs/input", "--tokens", "50", "--seed", "3", "--threads", "1",
        "--device", "cpu", "--out", "/outputs",
    )  # fmt: skip
    with pytest.raises(BadOptions, match="runtime"):
        job_options(command, inputs, resources, "not a ref")


# -- the runtime -----------------------------------------------------------------------------------


def test_the_runtime_most_candidates_offer_is_chosen() -> None:
    endpoints = {address(n): f"127.0.0.1:{n}" for n in range(5)}
    offers: dict[Address, tuple[str, ...] | str] = {
        address(0): (REF_A,),
        address(1): (REF_B, REF_A),
        address(2): (REF_B,),
        address(3): (REF_B,),
        address(4): "its /info could not be read (refused)",
    }
    assert choose_runtime(offers, endpoints, 1) == REF_B
    assert choose_runtime(offers, endpoints, 2) == REF_B
    assert choose_runtime(offers, endpoints, 2, REF_A) == REF_A
    tied = {address(0): (REF_B,), address(1): (REF_A,)}
    assert choose_runtime(tied, endpoints, 1) == REF_A  # ties: the smallest ref
    with pytest.raises(NoMatch) as caught:
        choose_runtime(tied, endpoints, 2)
    reasons = {r.provider: r.reason for r in caught.value.refusals}
    assert reasons == {address(1): f"offers {REF_A}, not {REF_B}"} or reasons == {
        address(0): f"offers {REF_B}, not {REF_A}"
    }
    with pytest.raises(NoMatch, match="offering an AI runtime needed") as none:
        choose_runtime({address(0): (), address(4): "down"}, endpoints, 1)
    assert {r.reason for r in none.value.refusals} == {
        "offers no AI runtime (qoin ai runtime install; qoin compute provider)",
        "down",
    }


def test_runtimes_are_read_from_info_and_asks_filtered() -> None:
    answer = {
        "runtimes": [
            {"ref": REF_A, "torch": "2.13.0+cpu", "cpuCapability": "AVX2"},
            {"ref": "UPPER@" + "a" * 32},
            {"ref": 5},
            "junk",
        ]
    }
    assert parse_runtimes(answer) == (REF_A,)
    assert parse_runtimes({"address": "x"}) == () and parse_runtimes([]) == ()
    asks = [
        ask(0),
        ask(1, active=False),
        ask(2, executors=Executor.WASM.bit),
        ask(3, gpus=1, gpu_model="H100"),
        ask(4, gpus=2, gpu_model="A100"),
        ask(5, gpus=1, gpu_model="H100"),
    ]
    assert [a.provider for a in candidate_asks(asks, (), False)] == [
        address(n) for n in (0, 3, 4, 5)
    ]
    gpus = candidate_asks(asks, (), True)
    assert [a.provider for a in gpus] == [address(n) for n in (3, 4, 5)]
    assert [a.provider for a in candidate_asks(asks, (address(4),), False)] == [address(4)]
    offers: dict[Address, tuple[str, ...] | str] = {
        address(3): (REF_A,), address(4): (REF_A,), address(5): (REF_A,)
    }  # fmt: skip
    assert choose_gpu_model(gpus, REF_A, offers) == "H100"
    assert choose_gpu_model(gpus, REF_B, offers) == ""


# -- the live loss ---------------------------------------------------------------------------------


class Seen:
    """A watcher that keeps what reaches it."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.phases: list[tuple[str, str]] = []

    def phase(self, phase: str, message: str) -> None:
        self.phases.append((phase, message))

    def output(self, stream: str, data: bytes) -> None:
        self.lines.append((stream, data))


def _event(**fields: object) -> bytes:
    return json.dumps(fields, sort_keys=True).encode() + b"\n"


def test_the_live_loss_is_shown_per_epoch() -> None:
    epoch = {"event": "epoch", "epoch": 3, "epochs": 10, "loss": 0.21341234,
             "testLoss": 0.25, "accuracy": 0.941}  # fmt: skip
    assert describe(epoch) == "epoch 3/10  loss 0.2134  test loss 0.25  accuracy 0.941"
    text = {**epoch, "accuracy": None}
    assert describe(text) == "epoch 3/10  loss 0.2134  test loss 0.25"
    seen = Seen()
    watcher = LossWatcher(seen)
    stream = (
        _event(event="start", arch="mlp", params=4810, train=1437, test=360, epochs=10)
        + _event(**epoch)
        + b"a plain line\n"
        + _event(event="done", loss=0.1, testLoss=0.2, accuracy=0.95, model="model.qm")
        + _event(event="error", error="bad input")
    )
    for at in range(0, len(stream), 7):  # pieces that cut lines anywhere
        watcher.output("stdout", stream[at : at + 7])
    watcher.output("stdout", b"no newline")
    watcher.flush()
    watcher.output("stderr", b"took 1.2 s\n")
    watcher.phase("run", "running")
    assert seen.lines == [
        ("stdout", b"training mlp: 4810 parameters, 1437 training and 360 test samples, "
                   b"10 epoch(s)\n"),
        ("stdout", b"epoch 3/10  loss 0.2134  test loss 0.25  accuracy 0.941\n"),
        ("stdout", b"a plain line\n"),
        ("stdout", b"error: bad input\n"),
        ("stdout", b"no newline\n"),
        ("stderr", b"took 1.2 s\n"),
    ]  # fmt: skip
    assert watcher.history == [epoch] and watcher.errors == ["bad input"]
    assert seen.phases == [("run", "running")]
    assert parse_event(b"[1, 2]") is None and parse_event(b"{") is None
    assert parse_event(b'{"event": "x"}') == {"event": "x"}


def test_predictions_are_shown_as_labels_or_text() -> None:
    answer = {"event": "predictions", "predictions": [3, 1], "labels": ["3", "1"]}
    assert predictions_text(answer) == ["0: 3", "1: 1"]
    assert predictions_text({"event": "generated", "text": "hello"}) == ["hello"]
    many = {"event": "predictions", "predictions": list(range(60)), "labels": []}
    assert predictions_text(many)[-1] == "... and 10 more"


# -- the catalog -----------------------------------------------------------------------------------


def _entry(n: int, kind: catalog.Kind = "dataset") -> Entry:
    return Entry(kind, f"{n:064x}", f"set-{n}", "classification", 1_700_000_000 + n, 100 * n,
                 {"samples": n, "classes": ["a", "b"]})  # fmt: skip


def _record_many(path: Path, first: int, count: int) -> None:
    for n in range(first, first + count):
        catalog.record(path, _entry(n))


def test_the_catalog_is_written_atomically_and_under_a_lock(tmp_path: Path) -> None:
    path = catalog.catalog_path(tmp_path)
    assert catalog.load(path) == []
    catalog.record(path, _entry(1))
    catalog.record(path, _entry(2, "model"))
    catalog.record(path, replace(_entry(1), name="renamed"))  # same kind and CID: replaced
    entries = catalog.load(path)
    assert [(e.kind, e.name) for e in entries] == [("model", "set-2"), ("dataset", "renamed")]
    assert entries[1].details == {"samples": 1, "classes": ["a", "b"]}
    assert catalog.find(entries, f"{2:064x}", "model") == entries[0]
    assert catalog.find(entries, f"{2:064x}", "dataset") is None
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # Writers in other processes at once: every entry lands, no temporary file is left.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_record_many, args=(path, 100 + 20 * i, 20)) for i in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(catalog.load(path)) == 2 + 80
    assert sorted(os.listdir(path.parent)) == [".catalog.json.lock", "catalog.json"]


def test_a_damaged_catalog_is_reported_not_replaced(tmp_path: Path) -> None:
    path = catalog.catalog_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CatalogError, match="is not JSON"):
        catalog.load(path)
    with pytest.raises(CatalogError):
        catalog.record(path, _entry(1))
    assert path.read_text() == "{not json"
    path.write_text(json.dumps({"entries": [{"kind": "dataset", "cid": "xyz"}]}))
    with pytest.raises(CatalogError, match="no valid kind and cid"):
        catalog.load(path)
    refused(ai("datasets", home=tmp_path), 1, "no valid kind and cid")


def test_the_catalog_commands_list_datasets_and_models(tmp_path: Path) -> None:
    empty = ai("datasets", home=tmp_path)
    assert empty.exit_code == 0 and "no datasets" in empty.stdout
    path = catalog.catalog_path(tmp_path)
    catalog.record(path, _entry(1))
    model = Entry("model", BASE, "mlp-7", "classification", 1, 5000,
                  {"arch": "mlp", "epochs": 4, "dataset": DATA, "base": None,
                   "metrics": {"loss": 0.1, "testLoss": 0.2, "accuracy": 0.95}})  # fmt: skip
    catalog.record(path, model)
    datasets = ai("datasets", "--json", home=tmp_path)
    assert datasets.exit_code == 0, datasets.output
    assert [e["cid"] for e in json.loads(datasets.stdout)] == [f"{1:064x}"]
    models = ai("models", home=tmp_path)
    assert models.exit_code == 0, models.output
    assert f"{BASE}  mlp-7: mlp, 4 epoch(s) on {DATA}; loss 0.1, test loss 0.2, accuracy 0.95" in (
        models.stdout
    )


# -- after the job is paid for ---------------------------------------------------------------------


def test_a_model_that_cannot_be_stored_is_reported_with_its_file(tmp_path: Path) -> None:
    """The job is paid for when the model is stored: a storage failure (here no node answers)
    says where the model is saved and how to store it by hand."""
    model = tmp_path / "model-7" / "outputs" / "model.qm"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"a model")
    ctx = jobs.Context(NOWHERE, keypair_for(), tmp_path)
    with pytest.raises(AiClientError) as failed:
        jobs.store_model(ctx, model, 10)
    assert f"saved at {model}" in str(failed.value)
    assert f"qoin storage put {model} --key" in str(failed.value)


def test_a_stored_file_the_catalog_refuses_is_reported_with_its_cid(tmp_path: Path) -> None:
    path = catalog.catalog_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    entry = replace(_entry(3), details={"file": "/somewhere/model.qm"})
    with pytest.raises(AiClientError, match=f"stored as {3:064x}, saved at /somewhere/model.qm"):
        jobs.record_stored(path, entry)


@pytest.mark.parametrize(("job", "code"), [(2, 1), (1, 1), (124, 124), (122, 122)])
def test_a_failed_paid_job_never_exits_2(job: int, code: int) -> None:
    """2 says nothing was paid: a job whose program refused its input (its status 2) exits 1."""
    with pytest.raises(typer.Exit) as ended:
        cli_ai._fail_with(jobs.JobFailed("job exited with status 2: bad input", job), NOWHERE)
    assert ended.value.exit_code == code
