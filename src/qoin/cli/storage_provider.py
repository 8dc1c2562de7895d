"""``qoin storage provider``: run a storage provider, or make one leave the market.

Commands::

    qoin storage provider --datadir D --key KEYSTORE --capacity SIZE --price P --collateral C
                          [--retrieval-price R] [--endpoint HOST:PORT] [--announce HOST:PORT]
                          [--rpc URL] [--password-file F]
        Run the provider daemon (:mod:`qoin.storage.provider.daemon`) until Ctrl-C or SIGTERM:
        post the ask (capacity SIZE, P Shor per GiB per period, collateral C Shor per GiB held),
        serve the HTTP API on ``--endpoint`` (default 127.0.0.1 on a free port), prove, take and
        rebuild re-listed shards. Once the ask is on chain and the server listens it prints
        ``storage provider ADDRESS listening on URL (ask posted)``; then one line per action.
    qoin storage provider exit --datadir D --key KEYSTORE [--rpc URL] [--password-file F]
                               [--timeout S]
        Cancel the ask, leave every shard held, and wait until each is proved by another provider
        (or its deal ends), printing progress and the collateral that came back.

Sizes are bytes, or a number with a unit: ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024),
``kB``, ``MB``, ``GB``, ``TB`` (powers of 1000). The keystore's password comes from
``--password-file``, else ``$QOIN_PASSWORD``, else a prompt. Exit codes: 0 success (a clean
stop), 1 a failure (the node unreachable, a transaction refused), 2 unusable input.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, unlock_keystore
from qoin.cli.daemon import (
    DatadirOption,
    KeyOption,
    PasswordFile,
    RpcOption,
    run_alone,
    run_daemon,
)
from qoin.cli.execution import DEFAULT_RPC
from qoin.process import stop_on_signals
from qoin.rpc.serve import ServeError
from qoin.storage.provider.daemon import Provider, ProviderConfig, print_line
from qoin.storage.provider.handoff import HandoffError, leave_all
from qoin.storage.provider.prover import DISHONEST_MODES
from qoin.storage.provider.server import Offer
from qoin.storage.provider.store import StoreError

T = TypeVar("T")

MAX_UINT = 2**64 - 1
UNITS = {
    "": 1,
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
"""Size units (case-insensitive)."""
_SIZE = re.compile(r"\s*(\d{1,20})\s*([A-Za-z]{0,3})\s*")
_ENDPOINT = re.compile(r"([A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5})")


def parse_size(text: str) -> int:
    """A size: bytes, or a number and a unit (:data:`UNITS`); ``ValueError`` says why not."""
    found = _SIZE.fullmatch(text)
    if found is None or found[2].lower() not in UNITS:
        raise ValueError(f"{text[:40]!r} is not a size (bytes, or e.g. 512MiB, 10GiB, 2TB)")
    size = int(found[1]) * UNITS[found[2].lower()]
    if size > MAX_UINT:
        raise ValueError(f"{text[:40]!r} is larger than {MAX_UINT} bytes")
    return size


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); ``ValueError`` says why not."""
    found = _ENDPOINT.fullmatch(text)
    if found is None or int(found[2]) > 65_535:
        raise ValueError(f"{text[:80]!r} is not HOST:PORT (a port of 0 to 65535)")
    return found[1].strip("[]"), int(found[2])


def listen_on(listen: str, announce: str | None) -> tuple[str, int]:
    """(host, port) of the ``HOST:PORT`` a daemon listens on (:func:`parse_endpoint`), and
    ``announce`` (the endpoint posted on chain, if given) checked too; ``ValueError`` says why
    not."""
    found = parse_endpoint(listen)
    if announce is not None:
        parse_endpoint(announce)
    return found


def _need(value: T | None, option: str) -> T:
    """An option the daemon needs (the ``exit`` sub-command does not)."""
    if value is None:
        fail(f"missing option {option} (see --help)", EXIT_USAGE)
    return value


provider_app = typer.Typer(
    help="Run a storage provider (no sub-command), or make it leave the market (exit).",
    invoke_without_command=True,
)


@provider_app.callback()
def run(
    ctx: typer.Context,
    datadir: Annotated[
        Path | None, typer.Option("--datadir", help="Provider data directory.")
    ] = None,
    key: Annotated[Path | None, typer.Option("--key", help="The provider's keystore.")] = None,
    capacity: Annotated[
        str | None, typer.Option(help="Space offered: bytes, or e.g. 512MiB, 10GiB.")
    ] = None,
    price: Annotated[
        int | None, typer.Option(help="Shor per GiB per period.", min=0, max=MAX_UINT)
    ] = None,
    collateral: Annotated[
        int | None, typer.Option(help="Shor of collateral per GiB held.", min=0, max=MAX_UINT)
    ] = None,
    retrieval_price: Annotated[
        int, typer.Option(help="Shor per GiB served (advertised).", min=0, max=MAX_UINT)
    ] = 0,
    endpoint: Annotated[
        str, typer.Option(help="Where the HTTP API listens, HOST:PORT (port 0: any free one).")
    ] = "127.0.0.1:0",
    announce: Annotated[
        str | None,
        typer.Option(help="The endpoint posted on chain, HOST:PORT (default: the listening one)."),
    ] = None,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    dishonest: Annotated[
        str | None,
        typer.Option(hidden=True, help="TEST ONLY: lie in proofs in this way."),
    ] = None,
) -> None:
    """Run the storage provider until Ctrl-C or SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    datadir, key = _need(datadir, "--datadir"), _need(key, "--key")
    capacity, price = _need(capacity, "--capacity"), _need(price, "--price")
    collateral = _need(collateral, "--collateral")
    if dishonest is not None and dishonest not in DISHONEST_MODES:
        fail(f"unknown --dishonest mode {dishonest!r}; one of {', '.join(DISHONEST_MODES)}")
    try:
        size = parse_size(capacity)
        host, port = listen_on(endpoint, announce)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    keypair = unlock_keystore(key, password_file)
    config = ProviderConfig(
        datadir=datadir,
        rpc=rpc,
        offer=Offer(size, price, collateral, retrieval_price),
        host=host,
        port=port,
        announce=announce,
        dishonest=dishonest,
    )
    provider = Provider(config, keypair)
    lying = f" (TEST ONLY: dishonest, {dishonest})" if dishonest else ""
    run_daemon(
        provider,
        lambda: provider.ready_line() + lying,
        "storage provider",
        (StoreError, ServeError),
    )


@provider_app.command("exit")
def exit_market(
    datadir: DatadirOption,
    key: KeyOption,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Stop waiting after this many seconds (default: until done).", min=1),
    ] = None,
) -> None:
    """Cancel the ask, leave every shard, and wait until other providers prove them."""
    keypair = unlock_keystore(key, password_file)
    stop = threading.Event()
    with stop_on_signals(stop.set):
        try:
            result = leave_all(rpc, keypair, datadir, print_line, stop, timeout)
        except (HandoffError, StoreError) as exc:
            fail(str(exc), EXIT_FAILURE)
    if not result.finished:
        raise typer.Exit(EXIT_FAILURE)


def register(storage_app: typer.Typer) -> None:
    """Add the ``provider`` group to the ``qoin storage`` group."""
    storage_app.add_typer(provider_app, name="provider")


def _alone(app: typer.Typer) -> None:
    storage_app = typer.Typer()
    register(storage_app)
    app.add_typer(storage_app, name="storage")


def _main() -> None:
    """``python -m qoin.cli.storage_provider``: the ``provider`` group alone (until it is wired
    into ``qoin storage``)."""
    run_alone(_alone)


if __name__ == "__main__":
    _main()
