"""``qoin ai``: prepare datasets, train, fine-tune and run models on the compute market (docs/ai.md).

Commands::

    qoin ai runtime install [--dir D]      prepare a provider's AI runtime (PyTorch, the job program)
    qoin ai runtime show [--dir D]         the runtime there and its ref
    qoin ai prepare SOURCE [--name N] [--test-fraction F] [--seed S] --key K
        A CSV, a folder of images, a text file or sklearn:digits into a dataset file, stored in
        the storage market encrypted to the user and recorded in the catalog; prints its CID.
    qoin ai datasets / qoin ai models      the catalog ($QOIN_HOME/ai/catalog.json)
    qoin ai train --model ARCH --data CID [--epochs N] [--lr X] [--batch B] [--seed S] [--gpu]
                  [--verify none|spot|replicated] [--cpus N] [--memory SIZE] [--timeout T]
                  [--max-price P] [--provider ADDR]... [--runtime REF] [--out DIR] --key K
        Train on the compute market: the loss live per epoch, the model and its metrics saved in
        --out (default ./model-<deal>), the model stored encrypted to the user; prints its CID.
    qoin ai finetune --base MODEL_CID --data CID ...   train on from a stored model
    qoin ai infer --model CID --input FILE [--tokens N] ...   predictions, or generated text
    qoin ai infer ... --contract ADDR      requested by a contract (examples/contracts/ai_oracle):
        it bids with your deposit, you its agent; prints the deal, the answer the contract
        stored (its answer(deal) once the market called it back) and the callback

Every command takes ``--json`` (one JSON document on stdout; live lines go to stderr) and the
market ones ``--rpc``, ``--key``, ``--password-file``. Exit codes: those of ``qoin compute run``
when the job fails (its error line shown; 120 no provider, 121 no result, ...; a job that exits
2, the program refusing its input, exits 1), 1 a failure, 2 unusable input (checked before any
money moves, and only then).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from qoin.ai import catalog, jobs, runtime
from qoin.ai.client import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MEMORY,
    DEFAULT_TIMEOUT,
    DEFAULT_TOKENS,
    Resources,
    TrainOptions,
    check_seed,
    check_tokens,
    parse_cid,
)
from qoin.ai.output import predictions_text
from qoin.ai.runtime import RuntimeInfo
from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json, unlock_keystore
from qoin.cli.compute import (
    JsonOut,
    PasswordFile,
    Quiet,
    RpcOption,
    Terminal,
    TimeoutOption,
    VerifyOption,
    _choice,
    _failed,
    _keystore_address,
    _size,
    fresh_dir,
    parse_duration,
)
from qoin.cli.execution import DEFAULT_RPC
from qoin.cli.node import qoin_home
from qoin.cli.storage import progress_bars
from qoin.compute import client as compute
from qoin.compute.client import BadOptions, MarketOptions, NoMatch
from qoin.compute.jobspec import Verification
from qoin.crypto.address import Address
from qoin.errors import QoinError

ai_app = typer.Typer(
    help="AI jobs: prepare datasets, train and run models on the compute market.",
    no_args_is_help=True,
)
runtime_app = typer.Typer(help="A provider's AI runtime (PyTorch and the job program).")
ai_app.add_typer(runtime_app, name="runtime")

KeyOption = Annotated[Path, typer.Option("--key", help="Your keystore (pays, encrypts).")]
DurationOption = Annotated[
    int,
    typer.Option(
        "--duration", help="Storage periods the stored file is kept for.", min=1, max=2**32
    ),
]
EpochsOption = Annotated[int, typer.Option("--epochs", help="Epochs to train.")]
LrOption = Annotated[float, typer.Option("--lr", help="Learning rate.")]
BatchOption = Annotated[int, typer.Option("--batch", help="Batch size.")]
SeedOption = Annotated[int, typer.Option("--seed", help="The seed (same seed, same model).")]
GpuOption = Annotated[bool, typer.Option("--gpu", help="On one GPU (same-hardware determinism).")]
CpusOption = Annotated[int, typer.Option("--cpus", help="Whole CPUs (the job's threads).", min=1)]
MemoryOption = Annotated[str, typer.Option("--memory", help="Memory, e.g. 2GiB.")]
MaxPriceOption = Annotated[
    int | None, typer.Option("--max-price", help="Shor per CPU-second at most.", min=0)
]
MaxFeeOption = Annotated[
    int | None, typer.Option("--max-fee", help="The most a mediator may charge.", min=0)
]
ProviderOption = Annotated[
    list[str] | None, typer.Option("--provider", help="Only this provider (repeatable).")
]
RuntimeOption = Annotated[
    str, typer.Option("--runtime", help="The runtime ref (default: the one most providers offer).")
]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Where to save the outputs.")]
NameOption = Annotated[str | None, typer.Option("--name", help="A name for the catalog.")]


def _fail_with(exc: QoinError, rpc: str, json_out: bool = False) -> NoReturn:
    """Exit 2 for unusable input, 120 for no provider, the job's code for a failed job, else 1."""
    if isinstance(exc, NoMatch):
        if json_out:
            print_json({"error": str(exc), "refused": [r.to_json() for r in exc.refusals]})
        for refusal in exc.refusals:
            typer.echo(
                f"  refused {refusal.provider} ({refusal.endpoint}): {refusal.reason}", err=True
            )
    if isinstance(exc, jobs.JobFailed):
        if json_out:
            answer: dict[str, Any] = {"error": str(exc), "exitCode": exc.code}
            if exc.outcome is not None:
                answer.update(deal=exc.outcome.deal, outcome=exc.outcome.to_json())
            print_json(answer)
        # the job ran and was paid for: never 2, which says nothing was (its own status 2, the
        # program refusing its input, is in --json's exitCode)
        fail(str(exc), EXIT_FAILURE if exc.code == EXIT_USAGE else exc.code)
    _failed(exc, rpc)


def _resources(cpus: int, memory: str, timeout: str, gpu: bool, verify: str) -> Resources:
    return Resources(
        cpus,
        _size(memory, "--memory"),
        parse_duration(timeout),
        gpu,
        _choice(verify, Verification, "--verify"),
    )


def _market(
    max_price: int | None, max_fee: int | None, provider: list[str] | None
) -> MarketOptions:
    return MarketOptions(
        max_price=max_price,
        max_fee=max_fee,
        providers=tuple(compute.parse_address(p) for p in provider or ()),
    )


def _context(
    rpc: str, key: Path, password_file: Path | None, json_out: bool, quiet: bool
) -> tuple[jobs.Context, Terminal]:
    _keystore_address(key)
    keypair = unlock_keystore(key, password_file)
    term = Terminal(json_out=json_out, quiet=quiet)
    return jobs.Context(rpc, keypair, qoin_home(), term), term


def _default_out(prefix: str) -> Callable[[int], Path]:
    return lambda deal: fresh_dir(Path(f"{prefix}-{deal}"))


# -- runtime ---------------------------------------------------------------------------------------


def _runtime_json(info: RuntimeInfo) -> dict[str, Any]:
    return {
        "ref": info.ref,
        "name": info.name,
        "id": info.id,
        "torch": info.torch,
        "python": info.python,
        "cpuCapability": info.cpu_capability,
        "programDigest": info.program_digest,
        "path": str(info.path),
    }


def _show_runtime(info: RuntimeInfo, json_out: bool) -> None:
    if json_out:
        print_json(_runtime_json(info))
        return
    typer.echo(f"runtime {info.ref} at {info.path}")
    typer.echo(
        f"  torch {info.torch}, Python {info.python}, CPU capability {info.cpu_capability}, "
        f"program {info.program_digest[:16]}..."
    )


DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="The runtime's directory (default $QOIN_AI_RUNTIME or QOIN_HOME)."),
]


@runtime_app.command("install")
def runtime_install(
    directory: DirOption = None, json_out: JsonOut = False, quiet: Quiet = False
) -> None:
    """Prepare the AI runtime (a venv with PyTorch and the job program) a provider offers."""
    target = directory or runtime.default_dir()

    def shown(line: str) -> None:
        if not quiet:
            sys.stderr.write(line.rstrip("\n") + "\n")
            sys.stderr.flush()

    try:
        info = runtime.install(target, on_line=shown)
    except QoinError as exc:
        fail(str(exc))
    _show_runtime(info, json_out)


@runtime_app.command("show")
def runtime_show(directory: DirOption = None, json_out: JsonOut = False) -> None:
    """Show the AI runtime in a directory and its ref (what providers list in /info)."""
    target = directory or runtime.default_dir()
    try:
        info = runtime.load(target)
    except QoinError as exc:
        fail(str(exc))
    _show_runtime(info, json_out)


# -- prepare, datasets, models ---------------------------------------------------------------------


@ai_app.command("prepare")
def prepare(
    source: Annotated[
        str, typer.Argument(help="A CSV, a folder of images, a text file or sklearn:digits.")
    ],
    key: KeyOption,
    name: NameOption = None,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="The share of samples held out.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="The shuffle's seed.")] = 0,
    duration: DurationOption = jobs.DEFAULT_DURATION,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Prepare a dataset, store it encrypted to you, record it in the catalog; print its CID."""
    try:
        check_seed(seed)
        if not 0 < test_fraction < 1:
            raise BadOptions(f"--test-fraction is between 0 and 1, not {test_fraction!r}")
    except BadOptions as exc:
        fail(str(exc), EXIT_USAGE)
    ctx, _ = _context(rpc, key, password_file, json_out, quiet)
    try:
        with progress_bars(quiet) as bars:
            ctx = jobs.Context(ctx.rpc, ctx.keypair, ctx.home, ctx.watcher, bars)
            done = jobs.prepare(ctx, source, name, test_fraction, seed, duration)
    except QoinError as exc:
        _fail_with(exc, rpc, json_out)
    if json_out:
        print_json(done.to_json())
        return
    classes = done.meta.get("classes")
    what = f", {len(classes)} classes" if isinstance(classes, list) else ""
    typer.echo(
        f"dataset {done.meta.get('name')} ({done.meta.get('task')}): {done.samples} samples, "
        f"{done.test} held out{what}; {done.size} bytes"
    )
    typer.echo(done.cid)


_METRICS = (("loss", "loss"), ("test loss", "testLoss"), ("accuracy", "accuracy"))


def _listing(kind: catalog.Kind, json_out: bool) -> None:
    path = catalog.catalog_path(qoin_home())
    try:
        entries = [e for e in catalog.load(path) if e.kind == kind]
    except catalog.CatalogError as exc:
        fail(str(exc))
    if json_out:
        print_json([e.to_json() for e in entries])
        return
    if not entries:
        typer.echo(f"no {kind}s in {path}")
    for entry in entries:
        d = entry.details
        if kind == "dataset":
            classes = d.get("classes")
            what = f", {len(classes)} classes" if isinstance(classes, list) else ""
            typer.echo(
                f"{entry.cid}  {entry.name} ({entry.task}): {d.get('samples')} samples, "
                f"{d.get('test')} held out{what}, {entry.size} bytes"
            )
        else:
            found = d.get("metrics")
            metrics: dict[str, Any] = found if isinstance(found, dict) else {}
            shown = ", ".join(
                f"{label} {metrics[k]:.4g}"
                for label, k in _METRICS
                if isinstance(metrics.get(k), int | float)
            )
            base = f", from {d.get('base')}" if d.get("base") else ""
            typer.echo(
                f"{entry.cid}  {entry.name}: {d.get('arch')}, {d.get('epochs')} epoch(s) on "
                f"{d.get('dataset')}{base}; {shown}"
            )


@ai_app.command("datasets")
def datasets(json_out: JsonOut = False) -> None:
    """The datasets you prepared (the catalog)."""
    _listing("dataset", json_out)


@ai_app.command("models")
def models(json_out: JsonOut = False) -> None:
    """The models you trained (the catalog)."""
    _listing("model", json_out)


# -- train, finetune -------------------------------------------------------------------------------


def _train(
    options: TrainOptions,
    resources: Resources,
    market: MarketOptions,
    runtime: str,
    out: Path | None,
    duration: int,
    name: str | None,
    ctx: jobs.Context,
    json_out: bool,
    quiet: bool,
) -> None:
    try:
        jobs.check_train(ctx, options)
        planned = jobs.plan(ctx, resources, market, runtime)
        job = jobs.train_job(ctx, options, resources, planned)
        jobs.check_market(ctx, job, market)
        with progress_bars(quiet) as bars:
            ctx = jobs.Context(ctx.rpc, ctx.keypair, ctx.home, ctx.watcher, bars)
            trained = jobs.train(
                ctx, options, resources, job, market, out, _default_out("model"), duration, name
            )
    except QoinError as exc:
        _fail_with(exc, ctx.rpc, json_out)
    if json_out:
        print_json(trained.to_json())
        return
    answer = trained.to_json()
    shown = ", ".join(
        f"{label} {answer[k]:.4g}"
        for label, k in _METRICS
        if isinstance(answer.get(k), int | float)
    )
    cost = trained.outcome.cost
    typer.echo(
        f"model: {trained.file} ({answer['arch']}, {answer['epochs']} epoch(s)); {shown}", err=True
    )
    if cost is not None:
        typer.echo(
            f"cost: {cost.total} Shor for the job, {trained.stored.escrow} Shor to store the model",
            err=True,
        )
    typer.echo(trained.cid)


def _train_command(
    arch: str | None,
    base: str | None,
    data: str,
    key: Path,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
    gpu: bool,
    verify: str,
    cpus: int,
    memory: str,
    timeout: str,
    max_price: int | None,
    max_fee: int | None,
    provider: list[str] | None,
    runtime: str,
    out: Path | None,
    name: str | None,
    duration: int,
    rpc: str,
    password_file: Path | None,
    json_out: bool,
    quiet: bool,
) -> None:
    """``train`` (``arch`` given) or ``finetune`` (``base`` given, its architecture read once the
    key is unlocked): every option checked, then :func:`_train`."""
    try:
        base_cid = None if base is None else parse_cid(base, "--base")
        # finetune: the numbers checked before the key (with a stand-in architecture)
        options = _options(arch or "mlp", data, base_cid, epochs, lr, batch, seed)
        resources = _resources(cpus, memory, timeout, gpu, verify)
        market = _market(max_price, max_fee, provider)
        if out is not None:
            compute.check_out_dir(out)
    except BadOptions as exc:
        fail(str(exc), EXIT_USAGE)
    ctx, _ = _context(rpc, key, password_file, json_out, quiet)
    if base_cid is not None:
        try:
            options = _options(
                jobs.base_arch(ctx, base_cid), data, base_cid, epochs, lr, batch, seed
            )
        except QoinError as exc:
            _fail_with(exc, rpc, json_out)
    _train(options, resources, market, runtime.strip(), out, duration, name, ctx, json_out, quiet)


def _options(
    arch: str, data: str, base: str | None, epochs: int, lr: float, batch: int, seed: int
) -> TrainOptions:
    options = TrainOptions(
        arch=arch.strip().lower(),
        data=parse_cid(data, "--data"),
        base=None if base is None else parse_cid(base, "--base"),
        epochs=epochs,
        lr=lr,
        batch=batch,
        seed=seed,
    )
    options.check()
    return options


@ai_app.command("train")
def train(
    model: Annotated[str, typer.Option("--model", help="The architecture: mlp, cnn or charlm.")],
    data: Annotated[str, typer.Option("--data", help="The dataset's CID (qoin ai prepare).")],
    key: KeyOption,
    epochs: EpochsOption = DEFAULT_EPOCHS,
    lr: LrOption = DEFAULT_LR,
    batch: BatchOption = DEFAULT_BATCH,
    seed: SeedOption = 0,
    gpu: GpuOption = False,
    verify: VerifyOption = "none",
    cpus: CpusOption = 1,
    memory: MemoryOption = DEFAULT_MEMORY,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    max_price: MaxPriceOption = None,
    max_fee: MaxFeeOption = None,
    provider: ProviderOption = None,
    runtime: RuntimeOption = "",
    out: OutOption = None,
    name: NameOption = None,
    duration: DurationOption = jobs.DEFAULT_DURATION,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Train a model on the compute market; print the stored model's CID."""
    _train_command(
        model, None, data, key, epochs, lr, batch, seed, gpu, verify, cpus, memory, timeout,
        max_price, max_fee, provider, runtime, out, name, duration, rpc, password_file, json_out,
        quiet,
    )  # fmt: skip


@ai_app.command("finetune")
def finetune(
    base: Annotated[str, typer.Option("--base", help="The model's CID (qoin ai train).")],
    data: Annotated[str, typer.Option("--data", help="The dataset's CID (qoin ai prepare).")],
    key: KeyOption,
    epochs: EpochsOption = DEFAULT_EPOCHS,
    lr: LrOption = DEFAULT_LR,
    batch: BatchOption = DEFAULT_BATCH,
    seed: SeedOption = 0,
    gpu: GpuOption = False,
    verify: VerifyOption = "none",
    cpus: CpusOption = 1,
    memory: MemoryOption = DEFAULT_MEMORY,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    max_price: MaxPriceOption = None,
    max_fee: MaxFeeOption = None,
    provider: ProviderOption = None,
    runtime: RuntimeOption = "",
    out: OutOption = None,
    name: NameOption = None,
    duration: DurationOption = jobs.DEFAULT_DURATION,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a stored model: train on from its weights (the same architecture)."""
    _train_command(
        None, base, data, key, epochs, lr, batch, seed, gpu, verify, cpus, memory, timeout,
        max_price, max_fee, provider, runtime, out, name, duration, rpc, password_file, json_out,
        quiet,
    )  # fmt: skip


# -- infer -----------------------------------------------------------------------------------------


@ai_app.command("infer")
def infer(
    model: Annotated[str, typer.Option("--model", help="The model's CID.")],
    input_source: Annotated[
        str,
        typer.Option(
            "--input", help="A CSV of samples, an image, or a text file holding the prompt."
        ),
    ],
    key: KeyOption,
    tokens: Annotated[
        int | None, typer.Option("--tokens", help="Characters to generate (charlm).")
    ] = None,
    seed: SeedOption = 0,
    gpu: GpuOption = False,
    verify: VerifyOption = "none",
    cpus: CpusOption = 1,
    memory: MemoryOption = DEFAULT_MEMORY,
    timeout: TimeoutOption = "10m",
    max_price: MaxPriceOption = None,
    max_fee: MaxFeeOption = None,
    provider: ProviderOption = None,
    runtime: RuntimeOption = "",
    out: OutOption = None,
    contract: Annotated[
        str | None,
        typer.Option(
            "--contract",
            help="Have this contract request the inference (its request method, as "
            "examples/contracts/ai_oracle; you are its agent and pay the deposit): prints the "
            "answer it stores.",
        ),
    ] = None,
    duration: Annotated[
        int,
        typer.Option("--duration", help="Storage periods the input is kept for.", min=1),
    ] = jobs.INPUT_DURATION,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Run a stored model on an input: the predicted classes, or the generated text."""
    try:
        cid = parse_cid(model, "--model")
        check_seed(seed)
        if tokens is not None:
            check_tokens(tokens)
        resources = _resources(cpus, memory, timeout, gpu, verify)
        market = _market(max_price, max_fee, provider)
        requester = None if contract is None else compute.parse_address(contract.strip())
        if out is not None:
            compute.check_out_dir(out)
    except BadOptions as exc:
        fail(str(exc), EXIT_USAGE)
    ctx, _ = _context(rpc, key, password_file, json_out, quiet)
    try:
        if requester is not None:
            jobs.check_contract(ctx, requester)
        run = _infer_plan(
            ctx, cid, input_source, tokens, seed, resources, market, runtime, out, duration,
            answer=requester is not None,
        )  # fmt: skip
    except QoinError as exc:
        _fail_with(exc, rpc, json_out)
    if requester is not None:
        _infer_for_contract(ctx, requester, run, json_out, quiet)
        return
    try:
        with progress_bars(quiet) as bars:
            ctx = jobs.Context(ctx.rpc, ctx.keypair, ctx.home, ctx.watcher, bars)
            done = jobs.infer(ctx, run)
    except QoinError as exc:
        _fail_with(exc, rpc, json_out)
    if json_out:
        print_json(done.to_json())
        return
    for line in predictions_text(done.answer):
        typer.echo(line)


def _infer_plan(
    ctx: jobs.Context,
    cid: str,
    input_source: str,
    tokens: int | None,
    seed: int,
    resources: Resources,
    market: MarketOptions,
    runtime: str,
    out: Path | None,
    duration: int,
    answer: bool = False,
) -> jobs.InferRun:
    """The checks before an inference's money moves: the model, the input shaped for it, the
    runtime, the market's rules for its job. The inference as planned."""
    meta = jobs.model_of(ctx, cid)
    if meta.get("task") == "text" and tokens is None:
        tokens = DEFAULT_TOKENS
    data = jobs.prepare_input(input_source, meta)
    planned = jobs.plan(ctx, resources, market, runtime.strip())
    probe = jobs.infer_job(cid, cid, tokens, seed, resources, planned, answer=answer)
    jobs.check_market(ctx, probe, market)
    return jobs.InferRun(
        cid, data, tokens, seed, resources, planned, market, out, _default_out("infer"), duration
    )


def _infer_for_contract(
    ctx: jobs.Context, contract: Address, run: jobs.InferRun, json_out: bool, quiet: bool
) -> None:
    """``qoin ai infer --contract``, its checks done: :func:`jobs.infer_for_contract`."""
    try:
        with progress_bars(quiet) as bars:
            ctx = jobs.Context(ctx.rpc, ctx.keypair, ctx.home, ctx.watcher, bars)
            done = jobs.infer_for_contract(ctx, contract, run)
    except QoinError as exc:
        _fail_with(exc, ctx.rpc, json_out)
    if json_out:
        print_json(done.to_json())
    else:
        callback = done.callback.to_json()
        typer.echo(f"deal: {done.inferred.deal}")
        typer.echo(f"contract: {contract}")
        if done.answer is not None:
            lines = done.answer.decode(errors="replace").rstrip("\n").split("\n")
            if len(lines) == 1:
                typer.echo(f"answer: {lines[0]}")
            else:
                typer.echo("answer:")
                for line in lines:
                    typer.echo(f"  {line}")
        else:
            typer.echo(f"answer: none ({done.answer_error})")
        reason = f" ({callback['reason']})" if callback["reason"] else ""
        typer.echo(
            f"callback: {callback['method']} at height {callback['height']}: "
            f"{callback['status']}{reason}, {callback['gasUsed']} gas"
        )
    if done.answer is None:
        fail(f"{contract} holds no answer for deal {done.inferred.deal}: {done.answer_error}")


def register(app: typer.Typer) -> None:
    """Add ``qoin ai`` to the command line."""
    app.add_typer(ai_app, name="ai")
