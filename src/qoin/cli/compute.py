"""``qoin compute``: run jobs on the compute market's providers, follow them, fetch their outputs.

Commands (docs/spec/compute.md §6)::

    qoin compute run [--executor E] [--image IMG] [--input CID:/path ...] [--env NAME=VALUE ...]
                     [--cpus N] [--memory SIZE] [--gpus N] [--gpu-model M] [--timeout T]
                     [--network] [--runtime REF] [--max-price P] [--max-gpu-price P] [--verify none|spot|replicated]
                     [--determinism exact|same-hardware|none] [--min-collateral K] [--max-fee F]
                     [--provider ADDR ...] [--deadline BLOCKS] [--out DIR] [--dry-run]
                     --key KEYSTORE -- CMD...
        Rank the providers (price, free capacity, reputation), bid, gather their acceptances,
        form the deal, and follow it: each phase (match, stage, run, commit, verify, settle) on
        stderr, the job's stdout and stderr live as the provider streams them, the outputs
        verified and saved in --out (default ./job-<deal>/), the cost. ``--dry-run`` shows the
        ranking and the plans and sends nothing.
    qoin compute status JOB [--key KEYSTORE]   the deal on chain, its events, each provider's state
    qoin compute logs JOB [-f] --key KEYSTORE  the job's stdout/stderr (-f: until it ends)
    qoin compute get JOB --out DIR --key KEYSTORE   the outputs, verified against the revealed root
    qoin compute dispute JOB --key KEYSTORE    send the result to the mediator (check phase)
    qoin compute asks                          the book: asks with reputation, mediators
    qoin compute local [spec options] -- CMD   run the spec twice here: deterministic?
    qoin compute provider ...                  run a provider (:mod:`qoin.cli.compute_provider`)

JOB is the deal id ``run`` prints. Every command takes ``--rpc URL`` and ``--json`` (one JSON
document on stdout; with ``run --json`` the job's live output goes to stderr). The keystore's
password comes from ``--password-file``, else ``$QOIN_PASSWORD``, else a prompt.

Exit codes: ``run`` exits with the job's own exit status when it exited (128 + n when signal n
killed it), else 124 (timeout), 125 (a limit: memory, processes, output, log, fuel), 126 (the
executor could not start it, or it was cancelled), 120 (no deal: no provider matched or accepted;
every provider is listed with its reason), 121 (no result: the deal settled undelivered and the
deposit came back), 122 (a result was revealed but its outputs could not be fetched or verified),
123 (the mediator judged the job non-deterministic). ``local`` exits 0 when both runs give the same
result root, 1 when they do not. Every command: 1 a failure (the node unreachable, a refused
transaction), 2 unusable input (checked before any node is asked).
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer

from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json, unlock_keystore
from qoin.cli.compute_provider import provider_command
from qoin.cli.execution import DEFAULT_RPC
from qoin.cli.node import qoin_home
from qoin.cli.storage import progress_bars
from qoin.cli.storage_provider import parse_size
from qoin.compute import client
from qoin.compute.client import (
    BadOptions,
    ComputeClientError,
    DealStatus,
    JobOptions,
    MarketOptions,
    NoMatch,
    Prepared,
    RunOutcome,
    Submitted,
)
from qoin.compute.jobspec import Determinism, Executor, OutputLimits, Verification
from qoin.compute.market import ComputeMarketView
from qoin.crypto import keystore
from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.storage.market import MarketView
from qoin.wallet import Wallet, WalletError

compute_app = typer.Typer(
    help="The compute market: run jobs on providers, follow them, get their outputs.",
    no_args_is_help=True,
)
compute_app.command("provider")(provider_command)

RpcOption = Annotated[str, typer.Option("--rpc", help="The execution client's user RPC URL.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No phase lines, no progress bars.")]
PasswordFile = Annotated[Path | None, typer.Option(help="Keystore password file.")]
JobArgument = Annotated[str, typer.Argument(help="The job: its deal id.")]
KeyOption = Annotated[Path, typer.Option("--key", help="The client's keystore.")]
FromOption = Annotated[
    int, typer.Option("--from", help="Look for the deal's events since this height.", min=0)
]
Command = Annotated[
    list[str] | None, typer.Argument(help="The command and its arguments, after --.")
]

_DURATION: Final = re.compile(r"\s*(\d{1,9})\s*(s|m|h|d|)\s*")
_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

# The job spec's options, shared by ``run`` and ``local``.
ExecutorOption = Annotated[
    str, typer.Option("--executor", help="sandbox (default), wasm or docker.")
]
ImageOption = Annotated[
    str, typer.Option("--image", help="docker: the image, pinned: name@sha256:<64 hex>.")
]
InputOption = Annotated[
    list[str] | None,
    typer.Option("--input", help="CID:/path: a file stored with qoin storage put (repeatable)."),
]
EnvOption = Annotated[
    list[str] | None, typer.Option("--env", help="NAME=VALUE in the job (repeatable).")
]
CpusOption = Annotated[int, typer.Option("--cpus", help="Whole CPUs.", min=1, max=1024)]
MemoryOption = Annotated[str, typer.Option("--memory", help="Memory, e.g. 512MiB, 2GiB.")]
GpusOption = Annotated[int, typer.Option("--gpus", help="GPUs.", min=0, max=64)]
GpuModelOption = Annotated[str, typer.Option("--gpu-model", help="The GPU model (default any).")]
TimeoutOption = Annotated[
    str, typer.Option("--timeout", help="Seconds the job may run (or 90s, 5m, 2h).")
]
NetworkOption = Annotated[
    bool, typer.Option("--network", help="Let the job reach the network (off by default).")
]
VerifyOption = Annotated[
    str, typer.Option("--verify", help="none (default), spot or replicated (two providers).")
]
DeterminismOption = Annotated[
    str,
    typer.Option("--determinism", help="exact (default), same-hardware or none (the results')."),
]
MaxOutputOption = Annotated[
    str, typer.Option("--max-output", help="Bytes the job may leave in /outputs.")
]
MaxFilesOption = Annotated[
    int, typer.Option("--max-files", help="Files the job may leave in /outputs.", min=0)
]
MaxLogOption = Annotated[str, typer.Option("--max-log", help="Bytes of stdout and stderr.")]
RuntimeOption = Annotated[
    str,
    typer.Option(
        "--runtime", help="sandbox: a runtime ref name@id the provider mounts at /runtime."
    ),
]


def parse_duration(text: str) -> int:
    """Seconds: a number, or with s, m, h or d."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise BadOptions(f"--timeout {text[:40]!r} is not a duration (seconds, or 90s, 5m, 2h)")
    return int(found[1]) * _SECONDS[found[2]]


def _size(text: str, option: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise BadOptions(f"{option}: {exc}") from None


def _choice(text: str, kind: type[Executor | Determinism | Verification], option: str) -> Any:
    names = {member.name.lower().replace("_", "-"): member for member in kind}
    found = names.get(text.strip().lower())
    if found is None:
        raise BadOptions(f"{option} is one of {', '.join(names)}, not {text[:40]!r}")
    return found


def job_options(
    command: list[str] | None,
    executor: str,
    image: str,
    inputs: list[str] | None,
    env: list[str] | None,
    cpus: int,
    memory: str,
    gpus: int,
    gpu_model: str,
    timeout: str,
    network: bool,
    verify: str,
    determinism: str,
    max_output: str,
    max_files: int,
    max_log: str,
    *,
    local: bool = False,
    runtime: str = "",
) -> JobOptions:
    """The job's options, checked (:class:`BadOptions` saying what is wrong)."""
    options = JobOptions(
        command=tuple(command or ()),
        executor=_choice(executor, Executor, "--executor"),
        image=image,
        env=tuple(client.parse_env(item) for item in env or ()),
        inputs=tuple(client.parse_input(item, local=local) for item in inputs or ()),
        cpus=cpus,
        memory=_size(memory, "--memory"),
        gpus=gpus,
        gpu_model=gpu_model,
        timeout=parse_duration(timeout),
        network=network,
        determinism=_choice(determinism, Determinism, "--determinism"),
        verification=_choice(verify, Verification, "--verify"),
        outputs=OutputLimits(
            _size(max_output, "--max-output"), max_files, _size(max_log, "--max-log")
        ),
        runtime=runtime.strip(),
    )
    options.spec()  # every rule of the spec, before anything is asked
    return options


def _failed(exc: QoinError, rpc: str) -> NoReturn:
    """Exit 2 for unusable input, 120 for no deal, else 1 with the message."""
    if isinstance(exc, BadOptions):
        fail(str(exc), EXIT_USAGE)
    if isinstance(exc, NoMatch):
        fail(str(exc), client.EXIT_NO_MATCH)
    if isinstance(exc, WalletError) and not isinstance(exc, ComputeClientError):
        fail(f"the execution client at {rpc} did not answer as expected: {exc}")
    fail(str(exc))


def _keystore_address(key: Path) -> Address:
    try:
        return keystore.load(key).address
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)


def _deal(text: str) -> int:
    try:
        return client.parse_deal(text)
    except BadOptions as exc:
        fail(str(exc), EXIT_USAGE)


def fresh_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... if it is taken (the default ``--out``)."""
    candidate, number = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def jobs_dir() -> Path:
    """Where job records are kept (``$QOIN_HOME/compute/jobs``)."""
    return client.jobs_dir(qoin_home())


# -- what run shows --------------------------------------------------------------------------------


class Terminal:
    """Phase lines on stderr, the job's output live (stdout to stdout, or to stderr when stdout
    carries the JSON answer); one writer at a time."""

    def __init__(self, *, json_out: bool, quiet: bool) -> None:
        self.json_out = json_out
        self.quiet = quiet
        self._lock = threading.Lock()
        self._at = ""

    def phase(self, phase: str, message: str) -> None:
        """``[phase] message`` on stderr."""
        if self.quiet:
            return
        with self._lock:
            sys.stdout.flush()
            sys.stderr.buffer.write(f"[{phase}] {message}\n".encode())
            sys.stderr.flush()

    def output(self, stream: str, data: bytes) -> None:
        """A piece of the job's output, as it comes."""
        sink = sys.stderr if stream == "stderr" or self.json_out else sys.stdout
        with self._lock:
            sink.buffer.write(data)
            sink.flush()


def _print_refusals(prepared: Prepared) -> None:
    for refusal in prepared.ranking.refused:
        typer.echo(f"  refused {refusal.provider} ({refusal.endpoint}): {refusal.reason}")


def _print_dry_run(prepared: Prepared) -> None:
    spec = prepared.spec
    typer.echo(
        f"job {spec.job_hash.hex()}: {spec.replicas} replica(s), {spec.resources.cpus} CPU(s), "
        f"{spec.resources.memory} bytes, timeout {spec.timeout} s, verification "
        f"{spec.verification.name.lower()}"
    )
    for rank, candidate in enumerate(prepared.ranking.candidates, 1):
        ask = candidate.ask
        typer.echo(
            f"  {rank}. {candidate.provider} ({ask.endpoint}): {ask.price_cpu} Shor per "
            f"CPU-second, at most {candidate.cost} Shor; {ask.free_cpus} CPUs free; settled "
            f"{ask.settled}, fined {ask.fined}, not delivered {ask.not_delivered}"
        )
    _print_refusals(prepared)
    for plan in prepared.plans:
        if plan.mediator is not None:
            typer.echo(
                f"  mediator {plan.mediator.mediator} (fee {plan.mediator.fee}) with "
                f"{len(plan.providers)} provider(s)"
            )
    typer.echo(
        f"deposit: {prepared.deposit} Shor (bid at {prepared.max_price_cpu} Shor per CPU-second, "
        f"mediation reserve {prepared.max_fee}); what the deal does not hold comes back"
    )


def _print_submitted(submitted: Submitted, term: Terminal) -> None:
    for index, candidate in enumerate(submitted.providers):
        term.phase(
            "match",
            f"replica {index}: {candidate.provider} ({candidate.ask.endpoint}) at "
            f"{candidate.ask.price_cpu} Shor per CPU-second",
        )
    if submitted.mediator is not None:
        term.phase(
            "match", f"mediator {submitted.mediator.mediator} (fee {submitted.mediator.fee})"
        )
    term.phase(
        "match",
        f"deal {submitted.deal} formed at height {submitted.formed_height}: {submitted.escrow} "
        f"Shor held",
    )
    if submitted.mediator_error:
        term.phase("match", f"warning: {submitted.mediator_error}")


def _print_outcome(outcome: RunOutcome) -> None:
    cost = outcome.cost
    if outcome.outputs is not None:
        files = ", ".join(outcome.outputs.files[:10]) or "none"
        more = (
            f" and {len(outcome.outputs.files) - 10} more"
            if len(outcome.outputs.files) > 10
            else ""
        )
        typer.echo(f"outputs: {outcome.outputs.out} (files: {files}{more})", err=True)
    if cost is not None:
        typer.echo(
            f"cost: {cost.paid} Shor paid to the provider(s), mediation fee {cost.mediation_fee}, "
            f"fines received {cost.fines_received}, transaction fees {cost.tx_fees}; "
            f"{cost.refunded} of the {cost.deposit} Shor deposit refunded; total {cost.total} Shor",
            err=True,
        )
    prefix = "" if outcome.exit_code in (0,) or outcome.outputs is not None else "error: "
    typer.echo(f"{prefix}{outcome.message}", err=True)


# -- run -------------------------------------------------------------------------------------------


@compute_app.command(
    "run", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False}
)
def run(
    key: KeyOption,
    command: Command = None,
    executor: ExecutorOption = "sandbox",
    image: ImageOption = "",
    inputs: InputOption = None,
    env: EnvOption = None,
    cpus: CpusOption = 1,
    memory: MemoryOption = "1GiB",
    gpus: GpusOption = 0,
    gpu_model: GpuModelOption = "",
    timeout: TimeoutOption = "600",
    network: NetworkOption = False,
    verify: VerifyOption = "none",
    determinism: DeterminismOption = "exact",
    max_output: MaxOutputOption = "1GiB",
    max_files: MaxFilesOption = 10_000,
    max_log: MaxLogOption = "16MiB",
    runtime: RuntimeOption = "",
    max_price: Annotated[
        int | None, typer.Option(help="Shor per CPU-second at most (default: any).", min=0)
    ] = None,
    max_gpu_price: Annotated[
        int | None, typer.Option(help="Shor per GPU-second at most (default: any).", min=0)
    ] = None,
    min_collateral: Annotated[
        float,
        typer.Option(help="The least collateral multiple k a provider must lock.", min=0, max=100),
    ] = 0.0,
    max_fee: Annotated[
        int | None, typer.Option(help="The most a mediator may charge (default: any).", min=0)
    ] = None,
    provider: Annotated[
        list[str] | None, typer.Option("--provider", help="Only this provider (repeatable).")
    ] = None,
    deadline: Annotated[
        int, typer.Option(help="Blocks the bid stays open.", min=1, max=2**24)
    ] = client.DEFAULT_DEADLINE_BLOCKS,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to save the outputs (./job-<deal>).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the ranking and the plans; send nothing.")
    ] = False,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Run a job on the market's providers: live output, outputs saved, exit status the job's."""
    try:
        options = job_options(
            command, executor, image, inputs, env, cpus, memory, gpus, gpu_model, timeout,
            network, verify, determinism, max_output, max_files, max_log, runtime=runtime,
        )  # fmt: skip
        market_options = MarketOptions(
            max_price=max_price,
            max_gpu_price=max_gpu_price,
            min_collateral_ppm=round(min_collateral * 1_000_000),
            max_fee=max_fee,
            deadline_blocks=deadline,
            providers=tuple(client.parse_address(p) for p in provider or ()),
        )
        if out is not None:
            client.check_out_dir(out)
    except BadOptions as exc:
        fail(str(exc), EXIT_USAGE)
    _keystore_address(key)
    try:
        with ComputeMarketView(rpc) as view:
            client.check_options(options.spec(), market_options, view.params())
    except QoinError as exc:
        _failed(exc, rpc)
    keypair = unlock_keystore(key, password_file)
    term = Terminal(json_out=json_out, quiet=quiet)
    try:
        with (
            ComputeMarketView(rpc) as view,
            MarketView(rpc) as storage,
            Wallet(rpc, keypair) as wallet,
        ):
            term.phase("match", f"reading the book for job of {len(options.inputs)} input(s)")
            try:
                prepared = client.prepare(view, options, market_options, keypair, storage)
            except NoMatch as exc:
                if json_out:
                    print_json({"error": str(exc), "refused": [r.to_json() for r in exc.refusals]})
                raise
            if dry_run:
                if json_out:
                    print_json(prepared.to_json())
                else:
                    _print_dry_run(prepared)
                return
            term.phase(
                "match",
                f"{len(prepared.ranking.candidates)} provider(s) can take it, "
                f"{len(prepared.ranking.refused)} refused",
            )
            submitted = client.submit(wallet, view, prepared, jobs_dir(), term)
            _print_submitted(submitted, term)
            target = out or fresh_dir(Path(f"job-{submitted.deal}"))
            with progress_bars(quiet) as bars:
                outcome = client.follow(wallet, submitted, target, jobs_dir(), term, bars)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        answer = outcome.to_json()
        answer["providers"] = [str(c.provider) for c in submitted.providers]
        answer["mediator"] = (
            None if submitted.mediator is None else str(submitted.mediator.mediator)
        )
        print_json(answer)
    else:
        _print_outcome(outcome)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


# -- status, logs, get, dispute, asks --------------------------------------------------------------


def _print_status(status: DealStatus) -> None:
    info = status.info
    story = status.story
    if status.kind == "bid" and status.bid is not None:
        bid = status.bid
        typer.echo(
            f"bid {bid.bid_id}: matching, deposit {bid.deposit} Shor, open until height "
            f"{bid.deadline} (now {status.height})"
        )
        return
    if info is not None:
        typer.echo(
            f"deal {status.deal}: {info.phase.name.lower()} phase until height {info.deadline} "
            f"(now {status.height}); {info.verification.name.lower()}, {info.escrow} Shor held"
            + (", disputed" if info.disputed else "")
        )
    elif story.settled is not None:
        settled = story.settled
        typer.echo(
            f"deal {status.deal}: settled ({client.OUTCOMES[settled[0]]}) at height "
            f"{story.settled_height}: {settled[1]} Shor paid, {settled[2]} refunded, "
            f"{settled[3]} slashed"
        )
    else:
        typer.echo(f"bid {status.deal}: closed (cancelled or expired, no deal)")
    if story.verdict is not None:
        kind, root, fee = story.verdict
        typer.echo(f"verdict: {client.VERDICTS[kind]} (root {root.hex()}, fee {fee})")
    for phase, missing in story.timed_out:
        typer.echo(f"phase {phase} timed out with {missing} replica(s) missing")
    for replica in status.replicas:
        where = replica.endpoint or "no endpoint"
        line = f"  replica {replica.index}: {replica.provider} ({where}): {replica.chain_state}"
        if replica.root is not None:
            line += f", root {replica.root.hex()[:16]}..."
        job = replica.job
        if job is not None:
            line += f"; provider says {job.state}"
            if job.reason:
                line += f" ({job.reason}{', exit code ' + str(job.exit_code) if job.exit_code is not None else ''})"
            if job.detail:
                line += f": {job.detail}"
        elif replica.error:
            line += f"; provider: {replica.error}"
        typer.echo(line)


@compute_app.command("status")
def status(
    job: JobArgument,
    key: Annotated[
        Path | None, typer.Option("--key", help="The client's keystore (to ask the providers).")
    ] = None,
    start: FromOption = 0,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Show a job: its deal's phase and events on chain, each provider's state and reasons."""
    deal_id = _deal(job)
    keypair = None if key is None else unlock_keystore(key, password_file)
    try:
        with ComputeMarketView(rpc) as view:
            found = client.deal_status(view, deal_id, keypair, start)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(found.to_json())
    else:
        _print_status(found)


@compute_app.command("logs")
def logs(
    job: JobArgument,
    key: KeyOption,
    follow_live: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep following until the job ends.")
    ] = False,
    replica: Annotated[int, typer.Option(help="Which replica's output.", min=0, max=1)] = 0,
    start: FromOption = 0,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Print a job's stdout and stderr as its provider saved them (-f: live, to the end)."""
    deal_id = _deal(job)
    keypair = unlock_keystore(key, password_file)
    term = Terminal(json_out=json_out, quiet=True)
    try:
        with ComputeMarketView(rpc) as view:
            end = client.stream_logs(
                view, keypair, deal_id, jobs_dir(), term.output, follow_live, replica, start
            )
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(
            {
                "deal": deal_id,
                "replica": replica,
                "end": None
                if end is None
                else {"reason": end.reason, "exitCode": end.exit_code, "detail": end.detail},
            }
        )
    elif end is not None:
        code = "" if end.exit_code is None else f", exit code {end.exit_code}"
        detail = f": {end.detail}" if end.detail else ""
        typer.echo(f"[end] {end.reason}{code}{detail}", err=True)


def _say_waiting(message: str) -> None:
    typer.echo(f"[outputs] {message}", err=True)


@compute_app.command("get")
def get(
    job: JobArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="The directory to write (new).")],
    key: KeyOption,
    replica: Annotated[
        int | None, typer.Option(help="This replica's outputs (default: the result's).", min=0)
    ] = None,
    start: FromOption = 0,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Fetch a job's outputs (from its provider, else the storage market), verified against the
    revealed root."""
    deal_id = _deal(job)
    try:
        client.check_out_dir(out)
    except BadOptions as exc:
        fail(str(exc), EXIT_USAGE)
    keypair = unlock_keystore(key, password_file)
    try:
        with progress_bars(quiet) as bars:
            saved = client.get(
                rpc, keypair, deal_id, out, jobs_dir(), replica, bars, start,
                on_wait=None if quiet else _say_waiting,
            )  # fmt: skip
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(saved.to_json())
        return
    typer.echo(
        f"wrote {out}: {len(saved.files)} file(s) and stdout of replica {saved.replica}, verified "
        f"against root {saved.root.hex()} ({saved.reason}"
        + (f", exit code {saved.exit_code})" if saved.exit_code is not None else ")")
    )


@compute_app.command("dispute")
def dispute(
    job: JobArgument,
    key: KeyOption,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Dispute a job's result in its dispute window: the mediator re-runs it. If the result was
    correct, you pay the mediator's fee; if it was wrong, the provider is fined."""
    deal_id = _deal(job)
    keypair = unlock_keystore(key, password_file)
    try:
        with ComputeMarketView(rpc) as view, Wallet(rpc, keypair) as wallet:
            done = client.dispute(wallet, view, deal_id)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(done.to_json())
        return
    until = "" if done.deadline is None else f" until height {done.deadline}"
    typer.echo(
        f"disputed deal {deal_id}: mediator {done.mediator} re-runs the job{until}. If the result "
        f"was correct you pay its fee of {done.fee} Shor; if it was wrong the provider is fined "
        f"and you get your escrow back with a share of the fine."
    )


@compute_app.command("asks")
def asks(rpc: RpcOption = DEFAULT_RPC, json_out: JsonOut = False) -> None:
    """The book: every active ask with its reputation, every active mediator."""
    try:
        with ComputeMarketView(rpc) as view:
            found = client.book(view)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(found)
        return
    typer.echo(f"at height {found['height']}: {len(found['asks'])} ask(s)")
    for ask in found["asks"]:
        typer.echo(
            f"  {ask['provider']} ({ask['endpoint']}): {', '.join(ask['executors'])}; "
            f"{ask['freeCpus']}/{ask['cpus']} CPUs, {ask['freeMemory']}/{ask['memory']} bytes, "
            f"{ask['freeGpus']}/{ask['gpus']} GPUs free; {ask['priceCpu']} Shor per CPU-second, "
            f"k = {ask['collateralPpm'] / 1_000_000:g}, {ask['freeCollateral']} Shor free "
            f"collateral; settled {ask['settled']}, fined {ask['fined']}, not delivered "
            f"{ask['notDelivered']}"
        )
    typer.echo(f"{len(found['mediators'])} mediator(s)")
    for mediator in found["mediators"]:
        typer.echo(
            f"  {mediator['mediator']} ({mediator['endpoint']}): fee {mediator['fee']}, stake "
            f"{mediator['stake']}, {mediator['verdicts']} verdicts, {mediator['missed']} missed"
        )


# -- local -----------------------------------------------------------------------------------------


@compute_app.command("local", context_settings={"allow_interspersed_args": False})
def local(
    command: Command = None,
    executor: ExecutorOption = "sandbox",
    image: ImageOption = "",
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", help="FILE:/path (a local file) or CID:/path (repeatable)."),
    ] = None,
    env: EnvOption = None,
    cpus: CpusOption = 1,
    memory: MemoryOption = "1GiB",
    timeout: TimeoutOption = "600",
    network: NetworkOption = False,
    determinism: DeterminismOption = "exact",
    max_output: MaxOutputOption = "1GiB",
    max_files: MaxFilesOption = 10_000,
    max_log: MaxLogOption = "16MiB",
    runs: Annotated[int, typer.Option(help="How many runs to compare.", min=2, max=10)] = 2,
    key: Annotated[
        Path | None, typer.Option("--key", help="Keystore that stored encrypted CID inputs.")
    ] = None,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Run a job's spec twice on this machine and say whether its results are deterministic
    (a check before paying for --verify replicated): exit 0 if the result roots agree, 1 if not."""
    try:
        options = job_options(
            command, executor, image, inputs, env, cpus, memory, 0, "", timeout, network,
            "none", determinism, max_output, max_files, max_log, local=True,
        )  # fmt: skip
    except BadOptions as exc:
        fail(str(exc), EXIT_USAGE)
    keypair = None if key is None else unlock_keystore(key, password_file)
    term = Terminal(json_out=json_out, quiet=quiet)

    def shown(number: int, stream: str, data: bytes) -> None:
        if number == 0 and not quiet:
            term.output(stream, data)

    try:
        with tempfile.TemporaryDirectory(prefix="qoin-local-") as tmp:
            staged = client.stage_local_inputs(options, Path(tmp), rpc, keypair)
            result = client.run_local(options, staged, Path(tmp), shown, runs)
    except QoinError as exc:
        _failed(exc, rpc)
    except OSError as exc:
        fail(f"cannot run the job here: {exc}")
    if json_out:
        print_json(result.to_json())
    else:
        for number, each in enumerate(result.runs, 1):
            code = "" if each.exit_code is None else f" {each.exit_code}"
            typer.echo(
                f"run {number}: root {each.root.hex()} ({each.reason}{code}, "
                f"{each.wall_seconds:.2f} s)",
                err=True,
            )
        if result.deterministic:
            typer.echo("deterministic: every run gave the same result root", err=True)
        else:
            typer.echo(
                "NOT deterministic: the runs differ in " + ", ".join(result.differences), err=True
            )
    if not result.deterministic:
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add ``qoin compute`` to the command line."""
    app.add_typer(compute_app, name="compute")
