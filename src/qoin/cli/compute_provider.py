"""``qoin compute provider``: run a compute provider (and, with ``--mediator``, a mediator).

::

    qoin compute provider --datadir D --key KEYSTORE --cpus N --memory SIZE --price P
                          [--gpus N --gpu-model M] [--gpu-price P] [--collateral K]
                          [--deposit SHOR] [--executors sandbox,wasm,docker]
                          [--listen HOST:PORT] [--announce HOST:PORT] [--mediators ADDR,...]
                          [--mediator [--fee F] [--stake S]] [--keep-blocks B]
                          [--runtime DIR ...]
                          [--rpc URL] [--password-file F] [--json]

Runs the daemon (:mod:`qoin.compute.provider.daemon`) until Ctrl-C or SIGTERM. Asking for more
CPUs, memory or GPUs than the machine has is refused; executors that cannot run here are left out
(printed). Once the ask is on chain and the API listens it prints one JSON ready line
``{"ready": true, "address": ..., "endpoint": "host:port", "url": ..., "executors": {...},
"mediator": ...}``, then one line per action (JSON objects with ``--json``).

``--collateral K`` is the collateral multiple k (a decimal, e.g. ``1`` or ``2.5``; default the
market's least). Sizes are bytes or a number with a unit (``MiB``, ``GiB``, ``MB``, ...). Exit codes:
0 a clean stop, 1 a failure (the node unreachable, a transaction refused), 2 unusable options.

``--runtime DIR`` (repeatable) offers the runtime prepared in DIR (``qoin ai runtime install``) to
sandbox jobs naming it (mounted read-only at ``/runtime``); one that does not load is an error.
The default runtime directory (``$QOIN_AI_RUNTIME``, else ``$QOIN_HOME/ai-runtime``) is offered
too when it holds a runtime. The ready line lists the refs (``"runtimes"``).

``--gpus N`` offers the first N of the machine's NVIDIA GPUs (by device number); each running
job gets its own (only their ``/dev/nvidia<i>`` nodes are in its sandbox).

``--misbehave random-output|copy-reveal|withhold|fewer-epochs|random-weights`` (hidden) is for
TESTS ONLY: the provider then cheats on purpose (a random root; a random root then a copied reveal;
never revealing; running the job with every ``--epochs N`` as ``--epochs 1``; random values in
every model file the job left) so the replicated tests can check that the mediator catches it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from qoin.cli.common import EXIT_USAGE, fail, unlock_keystore
from qoin.cli.daemon import (
    DatadirOption,
    KeyOption,
    PasswordFile,
    RpcOption,
    run_alone,
    run_daemon,
)
from qoin.cli.execution import DEFAULT_RPC
from qoin.cli.storage_provider import MAX_UINT, listen_on, parse_size
from qoin.compute.jobspec import Executor
from qoin.compute.provider.daemon import (
    DEFAULT_KEEP_BLOCKS,
    ComputeConfig,
    ComputeProvider,
    ConfigError,
)
from qoin.compute.provider.jobs import MISBEHAVIOURS
from qoin.compute.provider.server import Capacity, parse_address
from qoin.crypto.address import Address, AddressError
from qoin.rpc.serve import ServeError
from qoin.storage.params import PPM
from qoin.storage.provider.store import StoreError

_DECIMAL = re.compile(r"\s*(\d{1,9})(?:\.(\d{1,6}))?\s*")


def parse_multiple(text: str) -> int:
    """A collateral multiple (``1``, ``2.5``) in ppm; ``ValueError`` says why not."""
    found = _DECIMAL.fullmatch(text)
    if found is None:
        raise ValueError(f"{text[:40]!r} is not a multiple (e.g. 1, 2.5)")
    return int(found[1]) * PPM + int((found[2] or "").ljust(6, "0"))


def parse_executors(text: str) -> tuple[Executor, ...]:
    """``sandbox,wasm,docker`` (any of them, once each); ``ValueError`` says why not."""
    names = {kind.name.lower(): kind for kind in Executor}
    chosen: list[Executor] = []
    for part in text.split(","):
        name = part.strip().lower()
        if name not in names:
            raise ValueError(f"unknown executor {name[:20]!r}: one of {', '.join(names)}")
        if names[name] not in chosen:
            chosen.append(names[name])
    return tuple(chosen)


def parse_mediators(text: str) -> tuple[Address, ...]:
    """Comma-separated addresses (bech32m or hex), at most 8; ``ValueError`` says why not."""
    if not text.strip():
        return ()
    try:
        found = tuple(parse_address(part) for part in text.split(","))
    except AddressError as exc:
        raise ValueError(str(exc)) from None
    if len(found) > 8 or len(set(found)) != len(found):
        raise ValueError("--mediators names at most 8 distinct mediators")
    return found


def provider_command(
    datadir: DatadirOption,
    key: KeyOption,
    cpus: Annotated[int, typer.Option(help="CPUs offered (at most this machine's).", min=1)],
    memory: Annotated[str, typer.Option(help="Memory offered: bytes, or e.g. 512MiB, 4GiB.")],
    price: Annotated[int, typer.Option(help="Shor per CPU-second.", min=0, max=MAX_UINT)],
    gpus: Annotated[int, typer.Option(help="GPUs offered.", min=0, max=64)] = 0,
    gpu_model: Annotated[str, typer.Option(help="The GPUs' model (as nvidia-smi names it).")] = "",
    gpu_price: Annotated[int, typer.Option(help="Shor per GPU-second.", min=0, max=MAX_UINT)] = 0,
    collateral: Annotated[
        str | None,
        typer.Option(help="Collateral multiple k offered (e.g. 1, 2.5; default the least)."),
    ] = None,
    deposit: Annotated[
        int | None,
        typer.Option(
            help="Collateral to hold, Shor (default: one job of the longest timeout).",
            min=0,
            max=MAX_UINT,
        ),
    ] = None,
    executors: Annotated[
        str, typer.Option(help="Executors offered (those that cannot run here are left out).")
    ] = "sandbox,wasm,docker",
    listen: Annotated[
        str, typer.Option(help="Where the API listens, HOST:PORT (port 0: any free one).")
    ] = "127.0.0.1:0",
    announce: Annotated[
        str | None, typer.Option(help="The endpoint posted on chain (default: the listening one).")
    ] = None,
    mediators: Annotated[
        str | None,
        typer.Option(help="Mediators accepted, comma-separated (default: every active one)."),
    ] = None,
    mediator: Annotated[
        bool, typer.Option("--mediator", help="Also register as a mediator and re-run disputes.")
    ] = False,
    fee: Annotated[
        int, typer.Option(help="The mediator's fee per mediation, Shor.", min=0, max=MAX_UINT)
    ] = 0,
    stake: Annotated[
        int | None,
        typer.Option(help="The mediator's stake, Shor (default the least).", min=1, max=MAX_UINT),
    ] = None,
    keep_blocks: Annotated[
        int, typer.Option(help="Blocks a settled job's files are kept.", min=0)
    ] = DEFAULT_KEEP_BLOCKS,
    runtime: Annotated[
        list[Path] | None,
        typer.Option("--runtime", help="A runtime directory offered to sandbox jobs (repeatable)."),
    ] = None,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_output: Annotated[bool, typer.Option("--json", help="Log lines as JSON objects.")] = False,
    misbehave: Annotated[
        str | None, typer.Option(hidden=True, help="TEST ONLY: cheat in this way.")
    ] = None,
) -> None:
    """Run a compute provider until Ctrl-C or SIGTERM."""
    if misbehave is not None and misbehave not in MISBEHAVIOURS:
        fail(f"unknown --misbehave mode {misbehave!r}; one of {', '.join(MISBEHAVIOURS)}")
    try:
        size = parse_size(memory)
        host, port = listen_on(listen, announce)
        kinds = parse_executors(executors)
        k = None if collateral is None else parse_multiple(collateral)
        accepted = None if mediators is None else parse_mediators(mediators)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    keypair = unlock_keystore(key, password_file)
    config = ComputeConfig(
        datadir=datadir,
        rpc=rpc,
        capacity=Capacity(cpus, size, gpus, gpu_model),
        price_cpu=price,
        price_gpu=gpu_price,
        collateral_ppm=k,
        deposit=deposit,
        executors=kinds,
        host=host,
        port=port,
        announce=announce,
        mediators=accepted,
        mediator=mediator,
        fee=fee,
        stake=stake,
        keep_blocks=keep_blocks,
        misbehave=misbehave,
        json_log=json_output,
        runtimes=tuple(runtime or ()),
    )
    provider = ComputeProvider(config, keypair)

    def ready() -> str:
        found = provider.ready()
        if misbehave:
            found["misbehave"] = f"TEST ONLY: {misbehave}"
        return json.dumps(found)

    run_daemon(provider, ready, "compute provider", (ConfigError, StoreError, ServeError))


def _alone(app: typer.Typer) -> None:
    app.command()(provider_command)


def _main() -> None:
    """``python -m qoin.cli.compute_provider``: the command alone (until it is wired into
    ``qoin compute``)."""
    run_alone(_alone)


if __name__ == "__main__":
    _main()
