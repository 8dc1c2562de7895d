"""The AI client's flows (``qoin ai prepare``, ``train``, ``finetune``, ``infer``; docs/ai.md):
every check first (options, the dataset or model a CID names, the runtime the providers offer),
then the markets: files stored encrypted to the user (:func:`qoin.storage.client.put`, the path
``qoin storage put`` takes), the job run through the compute client
(:func:`qoin.compute.client.prepare`, :func:`~qoin.compute.client.submit`,
:func:`~qoin.compute.client.follow`), its verified outputs read back, the model stored and
recorded in the catalog.

``infer --contract`` (:func:`infer_for_contract`) has a contract request the inference instead
(docs/spec/compute.md §3.12): the contract bids with the user's deposit and names the user as its
agent (:func:`qoin.compute.client.contract.submit_for_contract`), the job's stdout is the answer
(the labels, or the text, in at most 256 bytes), and once the deal settles the market calls the
contract back; the answer it stored is read back with its ``answer(deal)`` view.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from qoin.ai import catalog
from qoin.ai.catalog import Entry
from qoin.ai.client import (
    ANSWER_OUTPUTS,
    BASE_PATH,
    DATA_PATH,
    INPUT_PATH,
    MAX_DATASET,
    MAX_MODEL,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_PATH,
    OUTPUT_LIMITS,
    PREDICTIONS_FILE,
    Resources,
    TrainOptions,
    candidate_asks,
    check_arch_fits,
    check_base_fits,
    choose_gpu_model,
    choose_runtime,
    infer_command,
    job_options,
    offered_runtimes,
    train_command,
)
from qoin.ai.output import (
    AiClientError,
    LossWatcher,
    file_meta,
    model_meta,
    program_error,
    read_json,
    stdout_events,
)
from qoin.compute import client as compute
from qoin.compute.client import (
    OUTPUTS_DIR,
    STDOUT_FILE,
    BadOptions,
    JobOptions,
    MarketOptions,
    RunOutcome,
    Submitted,
    Watcher,
)
from qoin.compute.client.contract import submit_for_contract
from qoin.compute.jobspec import Verification
from qoin.compute.market import ComputeMarketView
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.execution.abi import AbiError, decode_value
from qoin.rpc import client as rpc
from qoin.storage import client as storage
from qoin.storage import crypt, retrieve
from qoin.storage.client import NO_PROGRESS, Progress, PutOptions, PutResult
from qoin.storage.market import MarketView
from qoin.wallet import CallReverted, Wallet, WalletError

DEFAULT_DURATION: Final = storage.DEFAULT_DURATION
"""Storage periods a dataset or a model is kept for (``--duration``)."""
INPUT_DURATION: Final = 24
"""Storage periods an inference input is kept for: the job reads it once, when it stages."""


class JobFailed(QoinError):
    """The job did not give a usable result; ``code`` is ``run``'s exit status for it."""

    def __init__(self, message: str, code: int, outcome: RunOutcome | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome


@dataclass(frozen=True)
class Context:
    """Who runs a command and where it reports."""

    rpc: str
    keypair: HybridKeyPair
    home: Path
    """The qoin home (the catalog, the job records)."""
    watcher: Watcher = compute.NO_WATCHER
    progress: Progress = NO_PROGRESS

    @property
    def catalog(self) -> Path:
        return catalog.catalog_path(self.home)

    @property
    def jobs(self) -> Path:
        return compute.jobs_dir(self.home)

    def say(self, phase: str, message: str) -> None:
        self.watcher.phase(phase, message)


# -- storage ---------------------------------------------------------------------------------------


def store(ctx: Context, data: bytes, duration: int, what: str) -> PutResult:
    """``data`` stored in the storage market encrypted to the user, as ``qoin storage put`` does
    (every shard uploaded, else :class:`AiClientError` naming the CID)."""
    ctx.say("store", f"storing the {what} ({len(data)} bytes) for {duration} periods")
    options = PutOptions(duration=duration, encrypt=True)
    with MarketView(ctx.rpc) as view, Wallet(ctx.rpc, ctx.keypair) as wallet:
        storage.check_options(options, view.params())
        result = storage.put(wallet, view, data, options, ctx.progress)
    if result.failed:
        reasons = "; ".join(f"shard {i}: {why}" for i, why in result.failed)
        raise AiClientError(
            f"the {what} was stored as {result.cid.hex()} (deal {result.deal}) but not every "
            f"shard was uploaded ({reasons}); see qoin storage status {result.cid.hex()}"
        )
    ctx.say("store", f"{what} stored as {result.cid.hex()} (deal {result.deal})")
    return result


def fetch(ctx: Context, cid: str, max_size: int) -> bytes:
    """The file ``cid`` stored by the user, fetched, verified and decrypted."""
    master = crypt.master_key(ctx.keypair)
    return retrieve.fetch(ctx.rpc, bytes.fromhex(cid), master, max_size=max_size)


def _stored_meta(ctx: Context, cid: str, kind: catalog.Kind, option: str) -> dict[str, Any]:
    """The header of the dataset or model ``cid``: from the catalog, else its stored file."""
    found = catalog.find(catalog.load(ctx.catalog), cid, kind)
    if found is not None and isinstance(found.details.get("meta"), dict):
        return dict(found.details["meta"])
    ctx.say("check", f"{cid} is no {kind} in the catalog: fetching it to see what it is")
    try:
        data = fetch(ctx, cid, MAX_DATASET if kind == "dataset" else MAX_MODEL)
    except QoinError as exc:
        raise BadOptions(
            f"{option} {cid} is not a {kind} in the catalog ({ctx.catalog}) and cannot be "
            f"fetched: {exc}"
        ) from None
    return file_meta(data, f"{option} {cid}")


# -- running a job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """An AI job checked against the market: its runtime, and the GPU model when on a GPU."""

    runtime: str
    gpu_model: str


def plan(
    ctx: Context,
    resources: Resources,
    market: MarketOptions,
    runtime: str = "",
) -> Planned:
    """The runtime the job names (``runtime``, else the one most candidate providers offer) and
    the GPU model, learned from the providers' ``/info``; :class:`~qoin.compute.client.NoMatch`
    when too few offer it."""
    replicas = 2 if resources.verification is Verification.REPLICATED else 1
    with ComputeMarketView(ctx.rpc) as view:
        asks = candidate_asks(view.asks(), market.providers, resources.gpu)
    offers = offered_runtimes(asks)
    chosen = choose_runtime(offers, {a.provider: a.endpoint for a in asks}, replicas, runtime)
    gpu_model = choose_gpu_model(asks, chosen, offers) if resources.gpu else ""
    holders = sum(1 for a in offers.values() if not isinstance(a, str) and chosen in a)
    ctx.say("match", f"runtime {chosen}: offered by {holders} of {len(asks)} candidate(s)")
    return Planned(chosen, gpu_model)


def check_market(ctx: Context, options: JobOptions, market: MarketOptions) -> None:
    """:class:`BadOptions` unless the network's compute market can take the job."""
    with ComputeMarketView(ctx.rpc) as view:
        compute.check_options(options.spec(), market, view.params())


def run_job(
    ctx: Context,
    options: JobOptions,
    market: MarketOptions,
    out: Path | None,
    default_out: Callable[[int], Path],
    watcher: LossWatcher,
    contract: Address | None = None,
) -> tuple[Submitted, RunOutcome]:
    """The job through the compute client: match, submit (requested by ``contract`` with the
    user as its agent, when given), follow to its settlement, outputs in ``out`` (else
    ``default_out(deal)``). :class:`JobFailed` when it gives no usable result."""
    with (
        ComputeMarketView(ctx.rpc) as view,
        MarketView(ctx.rpc) as stored,
        Wallet(ctx.rpc, ctx.keypair) as wallet,
    ):
        ctx.say("match", f"reading the book for a job of {len(options.inputs)} input(s)")
        prepared = compute.prepare(view, options, market, ctx.keypair, stored)
        ctx.say(
            "match",
            f"{len(prepared.ranking.candidates)} provider(s) can take it, "
            f"{len(prepared.ranking.refused)} refused",
        )
        if contract is None:
            submitted = compute.submit(wallet, view, prepared, ctx.jobs, watcher)
        else:
            ctx.say("match", f"asking {contract} to request the job (you are its agent)")
            submitted = submit_for_contract(
                wallet, view, prepared, contract, ctx.jobs, watcher=watcher
            )
        for index, candidate in enumerate(submitted.providers):
            ctx.say("match", f"replica {index}: {candidate.provider} ({candidate.ask.endpoint})")
        ctx.say("match", f"deal {submitted.deal} formed: {submitted.escrow} Shor held")
        target = out or default_out(submitted.deal)
        outcome = compute.follow(wallet, submitted, target, ctx.jobs, watcher, ctx.progress)
        watcher.flush()
    if outcome.exit_code != 0 or outcome.outputs is None:
        said = ""
        if outcome.outputs is not None:
            said = program_error(stdout_events(outcome.outputs.out / STDOUT_FILE))
        said = said or (watcher.errors[-1] if watcher.errors else "")
        message = outcome.message + (f": {said}" if said else "")
        raise JobFailed(message, outcome.exit_code or compute.EXIT_NO_OUTPUTS, outcome)
    return submitted, outcome


def verification_json(outcome: RunOutcome, mode: Verification) -> dict[str, Any]:
    """How the result was checked: the mode, the deal's outcome, the mediator's verdict."""
    story = outcome.story
    verdict = story.verdict
    return {
        "mode": mode.name.lower(),
        "outcome": None if story.settled is None else compute.OUTCOMES[story.settled[0]],
        "verdict": None if verdict is None else compute.VERDICTS[verdict[0]],
        "roots": {str(r): root.hex() for r, (root, _, _) in sorted(story.revealed.items())},
        "fined": {str(r): reason for r, (_, reason) in sorted(story.fined.items())},
    }


# -- train and fine-tune ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """A model trained, saved locally and stored."""

    deal: int
    cid: str
    file: Path
    out: Path
    meta: dict[str, Any]
    metrics: dict[str, Any]
    outcome: RunOutcome
    verification: Verification
    stored: PutResult
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        trained = self.meta.get("trained")
        epochs = trained.get("epochs") if isinstance(trained, dict) else None
        cost = self.outcome.cost.to_json() if self.outcome.cost is not None else {}
        return {
            "deal": self.deal,
            "model": self.cid,
            "arch": self.meta.get("arch"),
            "loss": self.metrics.get("loss"),
            "testLoss": self.metrics.get("testLoss"),
            "accuracy": self.metrics.get("accuracy"),
            "epochs": epochs,
            "history": self.history,
            "cost": {**cost, "storage": self.stored.escrow, "storageDeal": self.stored.deal},
            "verification": verification_json(self.outcome, self.verification),
            "providers": [str(p) for p in self.outcome.story.providers],
            "out": str(self.out),
            "file": str(self.file),
        }


def check_train(
    ctx: Context, options: TrainOptions
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The dataset's header and the base model's (fine-tuning), checked against the options."""
    options.check()
    data = _stored_meta(ctx, options.data, "dataset", "--data")
    check_arch_fits(options.arch, data)
    base = None
    if options.base is not None:
        base = _stored_meta(ctx, options.base, "model", "--base")
        arch = check_base_fits(base, data)
        if arch != options.arch:
            raise BadOptions(f"--base is a model of arch {arch}, not {options.arch}")
    return data, base


def base_arch(ctx: Context, base: str) -> str:
    """The arch of the model ``base`` (its catalog entry, else its file)."""
    meta = _stored_meta(ctx, base, "model", "--base")
    arch = meta.get("arch")
    if not isinstance(arch, str):
        raise BadOptions(f"--base {base} names no arch")
    return arch


def train_job(
    ctx: Context, options: TrainOptions, resources: Resources, planned: Planned
) -> JobOptions:
    """The compute job of a training (or fine-tuning)."""
    inputs = {DATA_PATH: options.data}
    if options.base is not None:
        inputs[BASE_PATH] = options.base
    command = train_command(options, resources)
    return job_options(command, inputs, resources, planned.runtime, planned.gpu_model)


def train(
    ctx: Context,
    options: TrainOptions,
    resources: Resources,
    job: JobOptions,
    market: MarketOptions,
    out: Path | None,
    default_out: Callable[[int], Path],
    duration: int,
    name: str | None,
) -> Trained:
    """Run the training job, read its verified model and metrics, store the model and record
    it. :class:`JobFailed` when the job gives no model."""
    watcher = LossWatcher(ctx.watcher)
    submitted, outcome = run_job(ctx, job, market, out, default_out, watcher)
    saved = outcome.outputs
    if saved is None:  # run_job raises first
        raise JobFailed(outcome.message, compute.EXIT_NO_OUTPUTS, outcome)
    folder = saved.out / OUTPUTS_DIR
    model = folder / MODEL_FILE
    meta = model_meta(model)
    metrics = read_json(folder / METRICS_FILE, METRICS_FILE)
    history = metrics.get("history")
    if not isinstance(history, list):
        history = [e for e in stdout_events(saved.out / STDOUT_FILE) if e["event"] == "epoch"]
    data, stored = store_model(ctx, model, duration)
    cid = stored.cid.hex()
    trained = meta.get("trained")
    epochs = trained.get("epochs") if isinstance(trained, dict) else None
    record_stored(
        ctx.catalog,
        Entry(
            "model", cid, name or f"{options.arch}-{submitted.deal}", str(meta.get("task", "")),
            catalog.now(), len(data),
            {
                "arch": meta.get("arch"), "epochs": epochs, "metrics": _final(metrics),
                "dataset": options.data, "base": options.base, "deal": submitted.deal,
                "storageDeal": stored.deal, "file": str(model.resolve()), "meta": meta,
            },
        ),
    )  # fmt: skip
    return Trained(
        submitted.deal, cid, model, saved.out, meta, metrics, outcome,
        resources.verification, stored, history,
    )  # fmt: skip


def store_model(ctx: Context, model: Path, duration: int) -> tuple[bytes, PutResult]:
    """The trained model's bytes, stored encrypted to the user. The job is paid for by now: a
    failure says where the model is saved and how to store it by hand."""
    where = model.absolute()
    try:
        data = model.read_bytes()
        return data, store(ctx, data, duration, "model")
    except OSError as exc:
        raise AiClientError(f"cannot read the model at {where}: {exc.strerror}") from None
    except QoinError as exc:
        raise AiClientError(
            f"{exc}\nthe job is paid for and its model is saved at {where}: store it with "
            f"`qoin storage put {where} --key KEYSTORE` (then `qoin ai infer --model CID`)"
        ) from None


def record_stored(path: Path, entry: Entry) -> None:
    """``entry`` recorded in the catalog at ``path``; a catalog that cannot take it is reported
    with the CID (the file is stored and paid for: the CID is all the user needs)."""
    try:
        catalog.record(path, entry)
    except catalog.CatalogError as exc:
        file = entry.details.get("file")
        saved = f", saved at {file}" if file else ""
        raise AiClientError(
            f"the {entry.kind} is stored as {entry.cid}{saved}, but the catalog did not take it: "
            f"{exc}"
        ) from None


def _final(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("loss", "testLoss", "accuracy")}


# -- infer -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inferred:
    """What a model said about an input."""

    deal: int
    model: str
    input: str
    answer: dict[str, Any]
    out: Path
    outcome: RunOutcome
    verification: Verification

    def to_json(self) -> dict[str, Any]:
        cost = self.outcome.cost.to_json() if self.outcome.cost is not None else {}
        return {
            **self.answer,
            "deal": self.deal,
            "model": self.model,
            "input": self.input,
            "cost": cost,
            "verification": verification_json(self.outcome, self.verification),
            "out": str(self.out),
        }


def model_of(ctx: Context, cid: str) -> dict[str, Any]:
    """The header of the model ``cid`` (catalog, else its stored file), checked."""
    meta = _stored_meta(ctx, cid, "model", "--model")
    if meta.get("format") != "qoin-model":
        raise BadOptions(f"--model {cid} is not a model (its format is {meta.get('format')!r})")
    return meta


def prepare_input(source: str, meta: dict[str, Any]) -> bytes:
    """The inference input file for ``source`` shaped as the model ``meta`` expects."""
    from qoin.ai import datasets  # noqa: PLC0415 (numpy, loaded when used)

    try:
        return datasets.prepare_input(source, meta)
    except datasets.DatasetError as exc:
        raise BadOptions(f"--input {source[:120]}: {exc}") from None
    except OSError as exc:
        raise BadOptions(f"--input {source[:120]}: {exc.strerror or exc}") from None


def infer_job(
    model: str,
    input_cid: str,
    tokens: int | None,
    seed: int,
    resources: Resources,
    planned: Planned,
    answer: bool = False,
) -> JobOptions:
    """The compute job of an inference; with ``answer``, one a contract requests: its stdout the
    answer only, its outputs few enough for a reveal that carries an answer."""
    command = infer_command(tokens, seed, resources, answer)
    inputs = {MODEL_PATH: model, INPUT_PATH: input_cid}
    outputs = ANSWER_OUTPUTS if answer else OUTPUT_LIMITS
    return job_options(command, inputs, resources, planned.runtime, planned.gpu_model, outputs)


@dataclass(frozen=True)
class InferRun:
    """An inference as planned: the model, the input file, the job's settings and the market's,
    where its outputs go (``out``, else ``default_out(deal)``) and the input's storage periods."""

    model: str
    data: bytes
    tokens: int | None
    seed: int
    resources: Resources
    planned: Planned
    market: MarketOptions
    out: Path | None
    default_out: Callable[[int], Path]
    duration: int


def infer(ctx: Context, run: InferRun) -> Inferred:
    """Store the input, run the inference job, read its verified predictions."""
    inferred, _ = _infer(ctx, run)
    return inferred


def _infer(
    ctx: Context, run: InferRun, contract: Address | None = None
) -> tuple[Inferred, Submitted]:
    """:func:`infer`, or with ``contract`` the run :func:`infer_for_contract` has it request (the
    job's stdout, the answer, shown on stderr); the deal as submitted with it."""
    stored = store(ctx, run.data, run.duration, "input")
    answered = contract is not None
    resources = run.resources
    job = infer_job(
        run.model, stored.cid.hex(), run.tokens, run.seed, resources, run.planned, answer=answered
    )
    watcher = LossWatcher(_JobOutputAside(ctx.watcher) if answered else ctx.watcher)
    submitted, outcome = run_job(ctx, job, run.market, run.out, run.default_out, watcher, contract)
    saved = outcome.outputs
    if saved is None:
        raise JobFailed(outcome.message, compute.EXIT_NO_OUTPUTS, outcome)
    answer = read_json(saved.out / OUTPUTS_DIR / PREDICTIONS_FILE, PREDICTIONS_FILE)
    inferred = Inferred(
        submitted.deal, run.model, stored.cid.hex(), answer, saved.out, outcome,
        resources.verification,
    )  # fmt: skip
    return inferred, submitted


# -- infer, requested by a contract ----------------------------------------------------------------

CALLBACK_WAIT_S: Final = 60.0
"""How long the callback is waited for after the settlement, at least (it is due one block
later)."""
CALLBACK_WAIT_BLOCKS: Final = 20
"""... or this many blocks, when they take longer."""
CALLBACK_POLL_S: Final = 0.25
CALLBACK_STATUSES: Final = ("success", "reverted", "out-of-gas", "failed")
"""``CallbackDone``'s status, by value."""


@dataclass(frozen=True)
class Callback:
    """The market's call of the contract once the deal settled (``CallbackDone``)."""

    height: int
    method: str
    status: int
    gas_used: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        named = CALLBACK_STATUSES[self.status] if 0 <= self.status < 4 else str(self.status)
        return {
            "event": "CallbackDone",
            "height": self.height,
            "method": self.method,
            "status": named,
            "gasUsed": self.gas_used,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Answered:
    """An inference a contract requested: the verified run, the callback, and the answer the
    contract stored (``answer(deal)``; None with ``answer_error`` when it reverts)."""

    contract: Address
    inferred: Inferred
    callback: Callback
    answer: bytes | None
    answer_error: str

    def to_json(self) -> dict[str, Any]:
        stored = None
        if self.answer is not None:
            stored = self.answer.decode(errors="replace")
        return {
            **self.inferred.to_json(),
            "contract": str(self.contract),
            "answer": stored,
            "answerHex": None if self.answer is None else self.answer.hex(),
            "answerError": self.answer_error or None,
            "callback": self.callback.to_json(),
        }


@dataclass(frozen=True)
class _JobOutputAside:
    """A watcher that shows the job's live stdout (the answer, not a JSON line) on stderr, so
    that the command's stdout is its summary."""

    inner: Watcher

    def phase(self, phase: str, message: str) -> None:
        self.inner.phase(phase, message)

    def output(self, stream: str, data: bytes) -> None:
        self.inner.output("stderr", data)


def check_contract(ctx: Context, contract: Address) -> None:
    """:class:`BadOptions` unless ``contract`` holds a contract (before any money moves)."""
    try:
        code = rpc.call(ctx.rpc, "qoin_getCode", str(contract), "latest")
    except rpc.RpcCallError as exc:
        raise AiClientError(f"cannot ask {ctx.rpc} for {contract}'s code: {exc}") from None
    if not code:
        raise BadOptions(
            f"--contract {contract} holds no contract: deploy one that requests jobs as "
            f"examples/contracts/ai_oracle does (qoin contract deploy "
            f"examples/contracts/ai_oracle.wasm)"
        )


def infer_for_contract(ctx: Context, contract: Address, run: InferRun) -> Answered:
    """Store the input, have ``contract`` request the inference (its ``request``, the user its
    agent paying the deposit), follow the job to its settlement, wait for the market's callback
    and read the answer the contract stored back (``answer(deal)``). :class:`JobFailed` when the
    job gives no usable result; :class:`AiClientError` when no callback comes in time."""
    inferred, submitted = _infer(ctx, run, contract)
    settled = inferred.outcome.story.settled_height or submitted.formed_height
    with Wallet(ctx.rpc, ctx.keypair) as wallet:
        ctx.say("callback", f"waiting for the market to call {contract} back")
        callback = wait_callback(wallet, submitted.deal, settled, submitted.params.block_ms)
        ctx.say(
            "callback",
            f"{callback.method} at height {callback.height}: "
            f"{callback.to_json()['status']}{f' ({callback.reason})' if callback.reason else ''}",
        )
        stored_answer, error = read_answer(wallet, contract, submitted.deal)
    return Answered(contract, inferred, callback, stored_answer, error)


def wait_callback(wallet: Wallet, deal: int, since: int, block_ms: int) -> Callback:
    """The ``CallbackDone`` of ``deal`` (at or after height ``since``), waited for;
    :class:`AiClientError` when none comes in time."""
    wait = max(CALLBACK_WAIT_S, CALLBACK_WAIT_BLOCKS * block_ms / 1000)
    deadline = time.monotonic() + wait
    for _ in range(int(wait / CALLBACK_POLL_S) + 2):
        found = compute.deal_logs(wallet.client, deal, since, compute.head(wallet.client))
        for event in found:
            if event.name == "CallbackDone" and len(event.data) >= 5:
                _, method, status, gas, reason = event.data[:5]
                if isinstance(status, int) and isinstance(gas, int):
                    return Callback(event.height, str(method), status, gas, str(reason))
        if time.monotonic() >= deadline:
            break
        time.sleep(CALLBACK_POLL_S)
    raise AiClientError(
        f"deal {deal} settled at height {since} but no callback of its contract was seen in "
        f"{wait:.0f} s; see qoin compute status {deal}"
    )


def read_answer(wallet: Wallet, contract: Address, deal: int) -> tuple[bytes | None, str]:
    """The answer ``contract`` stored for ``deal`` (its ``answer(deal)`` view), or None and the
    reason it gave."""
    try:
        value = decode_value(wallet.query(contract, "answer", [deal]))
    except CallReverted as exc:
        return None, exc.reason
    except AbiError as exc:
        return None, f"{contract}.answer returned no ABI value: {exc}"
    except WalletError as exc:
        return None, f"{contract}.answer could not be called: {exc}"
    if not isinstance(value, bytes):
        return None, f"{contract}.answer returned {type(value).__name__}, not bytes"
    return value, ""


# -- prepare ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A dataset prepared and stored."""

    cid: str
    meta: dict[str, Any]
    samples: int
    test: int
    size: int
    stored: PutResult

    def to_json(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "name": self.meta.get("name"),
            "task": self.meta.get("task"),
            "samples": self.samples,
            "test": self.test,
            "classes": self.meta.get("classes"),
            "shape": self.meta.get("shape"),
            "bytes": self.size,
            "deal": self.stored.deal,
            "cost": self.stored.escrow,
        }


def prepare_file(
    source: str, name: str | None, test_fraction: float, seed: int, folder: Path
) -> tuple[Path, dict[str, Any], int, int]:
    """:func:`qoin.ai.datasets.prepare` into ``folder``: (path, meta, samples, test)."""
    from qoin.ai import datasets  # noqa: PLC0415 (numpy, loaded when used)

    if not 0 < test_fraction < 1:
        raise BadOptions(f"--test-fraction is between 0 and 1, not {test_fraction!r}")
    try:
        info = datasets.prepare(
            source, folder / "dataset.qtf", name=name, test_fraction=test_fraction, seed=seed
        )
    except datasets.DatasetError as exc:
        raise BadOptions(str(exc)) from None
    except OSError as exc:
        raise BadOptions(f"{source[:120]}: {exc.strerror or exc}") from None
    return info.path, dict(info.meta), info.samples, info.test


def prepare(
    ctx: Context,
    source: str,
    name: str | None,
    test_fraction: float,
    seed: int,
    duration: int,
) -> Prepared:
    """Prepare ``source`` into a dataset file, store it encrypted to the user, record it."""
    with tempfile.TemporaryDirectory(prefix="qoin-ai-") as tmp:
        path, meta, samples, test = prepare_file(source, name, test_fraction, seed, Path(tmp))
        data = path.read_bytes()
    ctx.say("prepare", f"{source}: {samples} samples ({test} held out), {len(data)} bytes")
    stored = store(ctx, data, duration, "dataset")
    cid = stored.cid.hex()
    record_stored(
        ctx.catalog,
        Entry(
            "dataset", cid, str(meta.get("name", "")), str(meta.get("task", "")), catalog.now(),
            len(data),
            {
                "samples": samples, "test": test, "classes": meta.get("classes"),
                "shape": meta.get("shape"), "source": source, "storageDeal": stored.deal,
                "meta": meta,
            },
        ),
    )  # fmt: skip
    return Prepared(cid, meta, samples, test, len(data), stored)
