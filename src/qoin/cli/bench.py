"""``qoin bench``: benchmarks that print JSON (figures are recorded in docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json
from qoin.crypto.suites import SUITES, UnknownSuite, suite_by_name

bench_app = typer.Typer(help="Benchmarks; each prints one JSON document.", no_args_is_help=True)

Seconds = Annotated[float, typer.Option(help="Measuring time per figure, in seconds.", min=0.05)]
TableOrJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a small table.")]


@bench_app.command("crypto")
def bench_crypto(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (the only format).")] = True,
    seconds: Seconds = 1.5,
    suite: Annotated[list[str] | None, typer.Option(help="Only these suites (repeatable).")] = None,
) -> None:
    """Hybrid sign/verify rates through Qoin vs the raw libraries, and multi-core verify."""
    from qoin.bench import crypto  # noqa: PLC0415 (keeps `qoin --help` fast)

    try:
        chosen = tuple(suite_by_name(name) for name in suite) if suite else SUITES
    except UnknownSuite as exc:
        fail(str(exc), EXIT_USAGE)
    print_json(crypto.run(seconds, chosen))


@bench_app.command("pow")
def bench_pow(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (the only format).")] = True,
    seconds: Seconds = 2.0,
    workers: Annotated[
        int | None, typer.Option(help="Miner processes (default: one per core).", min=1)
    ] = None,
) -> None:
    """Header PoW verification, MQ evaluators, mining attempts vs raw signing."""
    from qoin.bench import pow as pow_bench  # noqa: PLC0415

    print_json(pow_bench.run(seconds, workers))


@bench_app.command("import")
def bench_import(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (the only format).")] = True,
    senders: Annotated[int, typer.Option(help="Funded senders.", min=1)] = 500,
    blocks: Annotated[int, typer.Option(help="Measured blocks.", min=1)] = 4,
    txs_per_block: Annotated[int, typer.Option(help="Transfers per block.", min=1)] = 1_000,
) -> None:
    """Execution import rate of blocks of transfers vs verifying their signatures only."""
    from qoin.bench import importing  # noqa: PLC0415

    print_json(importing.run(senders, blocks, txs_per_block))


@bench_app.command("sampling")
def bench_sampling(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (the only format).")] = True,
    senders: Annotated[int, typer.Option(help="Funded senders.", min=1)] = 500,
    blocks: Annotated[int, typer.Option(help="Measured blocks.", min=1)] = 4,
    txs_per_block: Annotated[int, typer.Option(help="Transfers per block.", min=1)] = 1_000,
    samples: Annotated[
        int | None,
        typer.Option(help="Accounts sampled per block (default: the consensus client's).", min=1),
    ] = None,
) -> None:
    """Consensus-side validation time per block: sampling every touched key (trace summary,
    proofs, re-executed steps) vs stateless re-execution."""
    from qoin.bench import sampling  # noqa: PLC0415
    from qoin.consensus.sampling import DEFAULT_SAMPLES, MAX_SAMPLES  # noqa: PLC0415

    chosen = DEFAULT_SAMPLES if samples is None else samples
    if chosen > MAX_SAMPLES:
        fail(f"--samples must be at most {MAX_SAMPLES}", EXIT_USAGE)
    print_json(sampling.run(senders, blocks, txs_per_block, chosen))


@bench_app.command("sync")
def bench_sync(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (the only format).")] = True,
    blocks: Annotated[int, typer.Option(help="Blocks of transfers in the chain.", min=1)] = 40,
    txs_per_block: Annotated[
        int, typer.Option("--txs", "--txs-per-block", help="Transfers per block.", min=1)
    ] = 250,
    senders: Annotated[int, typer.Option(help="Funded senders.", min=1)] = 500,
    rounds: Annotated[int, typer.Option(help="Local imports and syncs measured.", min=1)] = 3,
) -> None:
    """A fresh node syncs a prepared chain from a peer over loopback vs importing it locally."""
    from qoin.bench import sync  # noqa: PLC0415
    from qoin.errors import QoinError  # noqa: PLC0415

    try:
        print_json(sync.run(blocks, txs_per_block, senders, rounds))
    except QoinError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)


@bench_app.command("shared-execution")
def bench_shared_execution(
    json_out: TableOrJson = False,
    blocks: Annotated[
        int, typer.Option(help="Blocks of transfers in the chain.", min=1, max=200)
    ] = 12,
    txs_per_block: Annotated[
        int, typer.Option("--txs", "--txs-per-block", help="Transfers per block.", min=1, max=4_000)
    ] = 200,
    senders: Annotated[int, typer.Option(help="Funded senders.", min=1, max=4_000)] = 200,
) -> None:
    """The same chain judged by a consensus client with its own execution client vs with 3 remote
    execution nodes over p2p: CPU seconds per block of the judging side and of the serving
    nodes, engine bytes per block."""
    from qoin.bench import shared_execution  # noqa: PLC0415

    _report(
        lambda: shared_execution.run(blocks, txs_per_block, senders),
        shared_execution.table,
        json_out,
    )


def _to_stderr(message: str) -> None:
    typer.echo(message, err=True)


def _report(
    measure: Callable[[], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    json_out: bool,
) -> None:
    """Run a benchmark and print its report, as JSON or as its ``table``; a failure it reports
    (:class:`~qoin.errors.QoinError`) becomes a one-line error and exit status 1."""
    from qoin.errors import QoinError  # noqa: PLC0415

    try:
        report = measure()
    except QoinError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)
    if json_out:
        print_json(report)
    else:
        typer.echo(table(report))


@bench_app.command("contracts")
def bench_contracts(
    json_out: TableOrJson = False,
    senders: Annotated[int, typer.Option(help="Funded senders.", min=1, max=4_000)] = 500,
    blocks: Annotated[int, typer.Option(help="Measured blocks per workload.", min=1, max=100)] = 3,
    txs_per_block: Annotated[
        int, typer.Option(help="Transactions per block.", min=1, max=4_000)
    ] = 300,
    sampling_txs_per_block: Annotated[
        int, typer.Option(help="Transactions per mixed block sampled.", min=1, max=4_000)
    ] = 1_000,
) -> None:
    """Import rates of blocks of contract and actor calls vs transfers, WebAssembly gas/s, and
    sampling vs stateless re-execution of blocks of calls."""
    from qoin.bench import contracts  # noqa: PLC0415

    _report(
        lambda: contracts.run(
            senders,
            blocks,
            txs_per_block,
            progress=None if json_out else _to_stderr,
            sampling_txs_per_block=sampling_txs_per_block,
        ),
        contracts.table,
        json_out,
    )


@bench_app.command("storage")
def bench_storage(
    json_out: TableOrJson = False,
    size_mib: Annotated[
        int, typer.Option(help="MiB of the file set up (figures per GiB).", min=1, max=4_096)
    ] = 1_024,
    n: Annotated[int, typer.Option("--n", help="Shards of the file set up.", min=2, max=16)] = 4,
    k: Annotated[int, typer.Option("--k", help="Shards that rebuild it.", min=1, max=15)] = 2,
    proofs: Annotated[int, typer.Option(help="Proofs built and verified.", min=1)] = 200,
    shards_per_provider: Annotated[
        int, typer.Option(help="Shards a provider proves per period (chain bytes).", min=1)
    ] = 100,
    rounds: Annotated[
        int, typer.Option(help="Rounds of the set-ups and retrievals (the best counts).", min=1)
    ] = 2,
    retrieval_mib: Annotated[
        int, typer.Option(help="MiB of the file stored and retrieved.", min=1, max=1_024)
    ] = 64,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair/--no-repair", help="Measure a repair after a provider's SIGKILL (~1 min)."
        ),
    ] = True,
) -> None:
    """Storage market: set-up s/GiB on 1 and 2 cores vs raw SHA3-256, proof time and bytes on
    chain, retrieval MB/s over loopback vs the local disk, and the time from a provider's
    SIGKILL to the repaired shard's first accepted proof (a live node and 3 provider daemons on
    127.0.0.1; progress on stderr)."""
    from qoin.bench import storage  # noqa: PLC0415

    if k >= n:
        fail(f"--k must be below --n ({n}), got {k}", EXIT_USAGE)
    _report(
        lambda: storage.run(
            size=size_mib * storage.MIB,
            n=n,
            k=k,
            proofs=proofs,
            shards_per_provider=shards_per_provider,
            rounds=rounds,
            retrieval_size=retrieval_mib * storage.MIB,
            repair=repair,
            progress=_to_stderr,
        ),
        storage.table,
        json_out,
    )


@bench_app.command("compute")
def bench_compute(
    json_out: TableOrJson = False,
    cpu_seconds: Annotated[
        float, typer.Option(help="CPU-seconds of the cpu job, run directly.", min=0.01, max=600)
    ] = 10.0,
    output_mib: Annotated[
        int, typer.Option(help="MiB the output job writes.", min=1, max=1_024)
    ] = 100,
    repeat: Annotated[
        int, typer.Option(help="Trivial jobs per executor (start overhead).", min=1, max=1_000)
    ] = 20,
    executors: Annotated[
        str, typer.Option(help="Executors whose start overhead is measured (comma-separated).")
    ] = "sandbox,wasm,docker",
    market: Annotated[
        bool,
        typer.Option(
            "--market/--no-market", help="Also run the jobs through a live market (minutes)."
        ),
    ] = True,
) -> None:
    """Compute market: executor start overhead (sandbox, wasm, docker), a trivial, a CPU and a
    large-output job directly vs in the sandbox vs through the whole market on a live network
    (split into match, staging, start, run, hashing, settlement, outputs), the CPU cost of
    replicated, and blocks from a cheater's reveal to its fine (progress on stderr)."""
    from qoin.bench import compute  # noqa: PLC0415
    from qoin.compute.jobspec import Executor  # noqa: PLC0415

    names = [name.strip() for name in executors.split(",") if name.strip()]
    known = {kind.name.lower(): kind for kind in Executor}
    unknown = [name for name in names if name not in known]
    if unknown or "sandbox" not in names:
        fail(
            f"--executors names some of {', '.join(known)}, sandbox included; got {executors!r}",
            EXIT_USAGE,
        )
    _report(
        lambda: compute.run(
            cpu_seconds=cpu_seconds,
            output_mib=output_mib,
            repeat=repeat,
            kinds=tuple(known[name] for name in dict.fromkeys(names)),
            market=market,
            progress=_to_stderr,
        ),
        compute.table,
        json_out,
    )


@bench_app.command("ai")
def bench_ai(
    json_out: TableOrJson = False,
    seconds: Annotated[
        float,
        typer.Option(help="Wall seconds of the direct training (epochs calibrated).", min=0.1),
    ] = 60.0,
    arch: Annotated[str, typer.Option(help="The model: mlp, cnn or charlm.")] = "mlp",
    runtime: Annotated[
        Path | None,
        typer.Option(help="The AI runtime (default $QOIN_AI_RUNTIME or QOIN_HOME/ai-runtime)."),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Where the scratch directory goes (default: /tmp).")
    ] = None,
) -> None:
    """AI jobs: a training run directly vs the whole `qoin ai train` flow on a live network
    (split into match, staging, sandbox start with PyTorch's import, run, settlement, outputs,
    model store), with verification none and replicated; samples/s, final loss and accuracy, and
    whether every model is byte for byte the same (progress on stderr)."""
    from qoin.bench import ai  # noqa: PLC0415

    chosen = arch.strip().lower()
    if chosen not in ("mlp", "cnn", "charlm"):
        fail(f"--arch is one of mlp, cnn, charlm; got {arch!r}", EXIT_USAGE)
    if seconds > 3_600:
        fail(f"--seconds is at most 3600, got {seconds:g}", EXIT_USAGE)
    _report(
        lambda: ai.run(seconds, chosen, runtime, workdir, progress=_to_stderr), ai.table, json_out
    )
