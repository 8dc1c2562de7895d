"""``qoin devnet``: the project's main job, a local network of real nodes that mines and can be
watched (:mod:`qoin.node.devnet` starts, watches and stops the processes).

With ``--serve-execution`` every node serves its execution client to its peers; ``--remote-nodes K``
adds K mining consensus clients that have none and use the nodes' (shared execution).

Without ``--blocks`` it runs until Ctrl-C or SIGTERM. With ``--blocks K`` it exits once every node's
head is at least K and, mining stopped, all agree on the head: exit status 0 only if they do.
"""

from __future__ import annotations

import json
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from qoin.chain.genesis import GenesisError
from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail
from qoin.cli.node import dev_keypair
from qoin.node.devnet import MAX_REMOTE_NODES, Devnet, DevnetConfig, Outcome

CLEAN_EXITS = (0, -signal.SIGTERM)
"""A child stopped by SIGTERM exits 0 (or dies of it, if it had not set its handlers yet)."""


def devnet(
    nodes: Annotated[
        int, typer.Option(help="Nodes (each an execution + a consensus client).", min=1)
    ] = 3,
    miners: Annotated[int, typer.Option(help="How many of the nodes mine.", min=1)] = 2,
    blocks: Annotated[
        int,
        typer.Option(
            help="Exit once every node is this high and all agree (0: until Ctrl-C).", min=0
        ),
    ] = 0,
    block_time_ms: Annotated[int, typer.Option(help="Target block time.", min=100)] = 2_000,
    workers: Annotated[int, typer.Option(help="Miner processes per mining node.", min=1)] = 1,
    storage_providers: Annotated[
        int, typer.Option(help="Storage provider daemons to run beside the nodes.", min=0, max=32)
    ] = 0,
    compute_providers: Annotated[
        int, typer.Option(help="Compute provider daemons to run beside the nodes.", min=0, max=32)
    ] = 0,
    mediators: Annotated[
        int | None,
        typer.Option(
            help="Compute mediators, started first (default: 1 with compute providers).",
            min=0,
            max=8,
        ),
    ] = None,
    ai_runtime: Annotated[
        Path | None,
        typer.Option(
            "--ai-runtime",
            help="The AI runtime the compute providers offer (default: the default runtime "
            "directory's, if it holds one).",
        ),
    ] = None,
    serve_execution: Annotated[
        bool,
        typer.Option(
            "--serve-execution",
            help="Every node offers its execution client to its peers (shared execution).",
        ),
    ] = False,
    remote_nodes: Annotated[
        int,
        typer.Option(
            help="Extra mining consensus clients with no execution client of their own, judging "
            "with up to 3 of the nodes' (--remote-execution; implies --serve-execution).",
            min=0,
            max=MAX_REMOTE_NODES,
        ),
    ] = 0,
    datadir: Annotated[
        Path | None,
        typer.Option(help="Keep the network here (default: a fresh temporary directory)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout at the end.")
    ] = False,
) -> None:
    """Run a local network of nodes over p2p on 127.0.0.1: mining, transfers, a live view."""
    if miners > nodes:
        fail(f"--miners {miners} is more than --nodes {nodes}", EXIT_USAGE)
    config = DevnetConfig(
        nodes,
        miners,
        blocks,
        block_time_ms,
        workers,
        storage_providers=storage_providers,
        compute_providers=compute_providers,
        mediators=(1 if compute_providers else 0) if mediators is None else mediators,
        ai_runtime=ai_runtime,
        serve_execution=serve_execution,
        remote_nodes=remote_nodes,
    )
    with tempfile.TemporaryDirectory(prefix="qoin-devnet-", ignore_cleanup_errors=True) as tmp:
        root = datadir or Path(tmp)
        try:
            net = Devnet(root, config, dev_keypair(), _printer(err=json_out), _printer(err=True))
        except (GenesisError, OSError) as exc:
            fail(f"cannot use data directory {root}: {exc}", EXIT_USAGE)
        outcome = net.run()
        summary = net.summary(outcome)
    summary["datadir"] = str(datadir) if datadir else None
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    code, message = verdict(config, outcome, summary)
    typer.echo(f"{'error: ' if code else ''}{message}", err=True)
    if code:
        raise typer.Exit(code)


def _printer(*, err: bool) -> Callable[[str], None]:
    """A line printer on stderr or stdout."""

    def echo(line: str) -> None:
        typer.echo(line, err=err)

    return echo


def verdict(config: DevnetConfig, outcome: Outcome, summary: dict[str, Any]) -> tuple[int, str]:
    """The exit status and the last line to print."""
    heads = f"{len({n['head'] for n in summary['nodes']})} different heads"
    if summary["agree"]:
        heads = f"all nodes at height {summary['height']} head {summary['head'][:16]}"
    tally = (
        f"{summary['side_blocks']} side blocks, {summary['reorgs']} reorgs, "
        f"{summary['transactions_included']} transactions on the chain "
        f"({summary['transactions_sent']} sent this run) in {summary['seconds']} s"
    )
    if outcome.error:
        return EXIT_FAILURE, f"{outcome.error}\n(stopped every node: {heads})"
    if any(code not in CLEAN_EXITS for code in outcome.codes):
        return EXIT_FAILURE, f"a node's process did not stop cleanly ({outcome.codes}); {heads}"
    if config.blocks and not outcome.reached:
        return (
            EXIT_FAILURE,
            f"interrupted before every node reached height {config.blocks}; {heads}",
        )
    if config.blocks and not (outcome.agreed and summary["agree"]):
        return EXIT_FAILURE, (
            f"the nodes did not agree on a head within {config.converge_s:.0f} s after mining "
            f"stopped: {heads}; {tally}"
        )
    return 0, f"stopped: {heads}; {tally}"


def register(app: typer.Typer) -> None:
    """Add ``devnet`` to the ``qoin`` command."""
    app.command("devnet")(devnet)
