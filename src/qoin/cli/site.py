"""``qoin site``: publish a folder as a dapp site and list the sites (:mod:`qoin.sites`).

Commands::

    qoin site publish DIR --name NAME --key KEYSTORE [--duration PERIODS] [--shards N]
                          [--needed K] [--max-price P] [--blocks B]
        Pack DIR into one archive (deterministic: the same files give the same content id), store
        it in clear through the storage market (unless an open deal stores it already), and point
        NAME at its content id in the names actor: register it if it is free (for --blocks blocks,
        by default as long as the deal lasts), or set its value if the keystore's account holds
        it. Every node's web UI then serves it at /site/NAME/ and /cid/CID/.
    qoin site ls [--key KEYSTORE]
        The names the keystore's account holds and the content each resolves to (with the deal
        storing it, if any); without --key, every name whose content an open deal stores.

Both take ``--rpc URL`` (the execution client's user RPC) and ``--json``. The password comes
from ``--password-file``, else ``$QOIN_PASSWORD``, else a prompt. Exit codes: 0 success, 1 a
failure (a name another account holds, no matching asks, a refused transaction), 2 unusable input
(a folder that cannot be a site, a malformed name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from qoin import sites
from qoin.actors.names import MAX_TERM, MIN_TERM
from qoin.cli.common import EXIT_USAGE, fail, print_json, unlock_keystore
from qoin.cli.execution import DEFAULT_RPC
from qoin.cli.storage import MAX_UINT, progress_bars
from qoin.crypto import keystore
from qoin.errors import QoinError
from qoin.sites import BadSite, PublishOptions
from qoin.storage import client
from qoin.storage.client import BadOptions
from qoin.storage.market import MarketView
from qoin.wallet import Wallet

site_app = typer.Typer(
    help="Dapp sites: publish a folder through the storage market under a name; list sites.",
    no_args_is_help=True,
)

RpcOption = Annotated[str, typer.Option("--rpc", help="The execution client's user RPC URL.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _failed(exc: QoinError) -> NoReturn:
    fail(str(exc), EXIT_USAGE if isinstance(exc, BadSite | BadOptions) else 1)


@site_app.command("publish")
def publish(
    folder: Annotated[Path, typer.Argument(help="The site's folder (index.html at its root).")],
    name: Annotated[str, typer.Option("--name", help="The name: 3 to 63 of a-z, 0-9 and '-'.")],
    key: Annotated[Path, typer.Option("--key", help="The keystore that pays and holds the name.")],
    duration: Annotated[
        int, typer.Option(help="Periods the storage deal lasts.", min=1, max=MAX_UINT)
    ] = client.DEFAULT_DURATION,
    shards: Annotated[
        int, typer.Option("--shards", "-n", help="Shards, each on its own provider.")
    ] = client.DEFAULT_SHARDS,
    needed: Annotated[
        int, typer.Option("--needed", "-k", help="Shards that rebuild the site (1: replication).")
    ] = client.DEFAULT_NEEDED,
    max_price: Annotated[
        int | None,
        typer.Option(help="Shor per GiB per period at most (default: the asks chosen).", min=0),
    ] = None,
    blocks: Annotated[
        int | None,
        typer.Option(
            help=f"The name's term when it is registered ({MIN_TERM} to {MAX_TERM} blocks; "
            "default: as long as the deal).",
            min=MIN_TERM,
            max=MAX_TERM,
        ),
    ] = None,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: Annotated[Path | None, typer.Option(help="Keystore password file.")] = None,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Publish a folder as a site: store it through the storage market and name it."""
    try:
        sites.checked_name(name)
        client.check_code(shards, needed)
        archive = sites.pack_folder(folder)
    except QoinError as exc:
        _failed(exc)
    try:
        keystore.load(key)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)
    keypair = unlock_keystore(key, password_file)
    options = PublishOptions(
        n=shards, k=needed, duration=duration, max_price=max_price, name_blocks=blocks
    )
    try:
        with (
            Wallet(rpc, keypair) as wallet,
            MarketView(rpc) as view,
            progress_bars(quiet or json_out) as bars,
        ):
            done = sites.publish(wallet, view, archive, name, options, bars)
    except QoinError as exc:
        _failed(exc)
    if json_out:
        print_json(done.to_json())
        return
    stored = f"stored as deal {done.deal}" if done.stored else f"already stored by deal {done.deal}"
    typer.echo(f"published {folder} ({done.files} files, {done.size} bytes): {stored}")
    typer.echo(f"content id: {done.cid.hex()}")
    typer.echo(f"name {done.name}: {done.action}, held until height {done.expiry}")
    typer.echo(f"served by every node's web UI at /site/{done.name}/ and /cid/{done.cid.hex()}/")
    if done.previous is not None and done.previous != done.cid:
        typer.echo(
            f"the previous content {done.previous.hex()} stays stored until its deal ends "
            f"(qoin storage cancel {done.previous.hex()} --key ... ends it sooner)"
        )


@site_app.command("ls")
def ls(
    key: Annotated[
        Path | None,
        typer.Option("--key", help="List the names this keystore's account holds (no password)."),
    ] = None,
    rpc: RpcOption = DEFAULT_RPC,
    json_out: JsonOut = False,
) -> None:
    """List the names a keystore holds, or every name whose content is stored."""
    owner = None
    if key is not None:
        try:
            owner = keystore.load(key).address
        except keystore.KeystoreError as exc:
            fail(str(exc), EXIT_USAGE)
    try:
        with MarketView(rpc) as view:
            height, entries = sites.list_sites(view, owner)
    except QoinError as exc:
        _failed(exc)
    if json_out:
        print_json(
            {
                "height": height,
                "owner": None if owner is None else str(owner),
                "sites": [entry.to_json() for entry in entries],
            }
        )
        return
    if not entries:
        typer.echo("no sites" if owner is None else f"{owner} holds no name")
    for entry in entries:
        record = entry.record
        stored = "not stored" if entry.deal is None else f"deal {entry.deal}"
        typer.echo(
            f"{record.name}: {record.value.hex()} ({stored}; held by {record.owner} until "
            f"height {record.expiry})"
        )


def register(app: typer.Typer) -> None:
    """Add ``site`` to the ``qoin`` command."""
    app.add_typer(site_app, name="site")
