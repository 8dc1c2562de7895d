"""``qoin storage``: store files with the market's providers, retrieve them, run a provider.

Commands (docs/spec/storage.md §6)::

    qoin storage put FILE --key KEYSTORE [--shards N] [--needed K] [--duration PERIODS]
                          [--max-price P] [--deadline BLOCKS] [--no-encrypt] [--dry-run]
        Store FILE: encrypt it (by default, under the keystore's master key), cut it into N shards
        of which any K rebuild it, bid, gather the providers' signed acceptances, form the deal
        and upload every shard, with progress bars; print the content id and the deal id.
        ``--dry-run`` lists the asks that would take the shards and the cost, and sends nothing.
    qoin storage get CID --out FILE [--key KEYSTORE]
        Fetch the shards from every holder at once, verify every chunk against the content id,
        stop after K whole shards, decrypt, and write FILE only when it is whole.
    qoin storage ls (--key KEYSTORE | --address ADDRESS) [--from HEIGHT]
        The account's deals (open and settled) and open bids.
    qoin storage status CID
        The deal shard by shard: provider, state (matching, uploading, active, missed m of M,
        repairing, failed), the next proof window and check in blocks, what each was paid.
    qoin storage cancel CID --key KEYSTORE
        Cancel the open deal (the periods after the current one are refunded) or the open bid.
    qoin storage provider ...
        Run a provider (:mod:`qoin.cli.storage_provider`).

Every command takes ``--rpc URL`` (the execution client's user RPC) and ``--json`` (one JSON
document on stdout; progress bars still go to stderr unless ``--quiet``). The keystore's password
comes from ``--password-file``, else ``$QOIN_PASSWORD``, else a prompt. Exit codes: 0 success,
1 a failure (no matching asks, a refused transaction, a provider that failed an upload, content
that cannot be retrieved), 2 unusable input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

from qoin import wallet
from qoin.cli import storage_provider
from qoin.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    fail,
    print_json,
    read_input_file,
    unlock_keystore,
)
from qoin.cli.execution import DEFAULT_RPC
from qoin.crypto import keystore
from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.storage import client, crypt, retrieve
from qoin.storage.client import (
    BadOptions,
    ContentStatus,
    Estimate,
    Listing,
    NotFound,
    Progress,
    ProgressTask,
    PutOptions,
    PutResult,
    StorageClientError,
)
from qoin.storage.market import MarketView
from qoin.wallet import Wallet, WalletError

MAX_UINT: Final = 2**64 - 1

storage_app = typer.Typer(
    help="The storage market: store files with providers, retrieve them, run a provider.",
    no_args_is_help=True,
)
storage_provider.register(storage_app)

RpcOption = Annotated[str, typer.Option("--rpc", help="The execution client's user RPC URL.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
PasswordFile = Annotated[Path | None, typer.Option(help="Keystore password file.")]
CidArgument = Annotated[str, typer.Argument(help="The content id (64 hex digits).")]


# -- progress bars ---------------------------------------------------------------------------------


class _Bar:
    """One rich progress bar as a :class:`~qoin.storage.client.ProgressTask`."""

    def __init__(self, bars: RichProgress, task: TaskID, description: str) -> None:
        self._bars = bars
        self._task = task
        self._description = description

    def advance(self, amount: int) -> None:
        """``amount`` more bytes done."""
        self._bars.advance(self._task, amount)

    def reset(self) -> None:
        """Start over (a retried upload)."""
        self._bars.reset(self._task, description=f"{self._description} (retrying)")

    def done(self, note: str = "") -> None:
        """Finished; ``note`` says how, when it did not succeed."""
        if note:
            self._bars.update(self._task, description=f"{self._description} ({note})")
        else:
            total = self._bars.tasks[self._task].total
            self._bars.update(self._task, completed=total)
        self._bars.stop_task(self._task)


class _Bars:
    """Rich progress bars on stderr as a :class:`~qoin.storage.client.Progress`."""

    def __init__(self, bars: RichProgress) -> None:
        self._bars = bars

    def task(self, description: str, total: int) -> ProgressTask:
        """A new bar of ``total`` bytes."""
        return _Bar(self._bars, self._bars.add_task(description, total=total), description)


@contextmanager
def progress_bars(quiet: bool) -> Iterator[Progress]:
    """Bars on stderr for the duration of the block (none when ``quiet``)."""
    if quiet:
        yield client.NO_PROGRESS
        return
    bars = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with bars:
        yield _Bars(bars)


# -- helpers ---------------------------------------------------------------------------------------


def _cid(text: str) -> bytes:
    try:
        return client.parse_cid(text)
    except StorageClientError as exc:
        fail(str(exc), EXIT_USAGE)


def _keystore_address(key: Path) -> Address:
    try:
        return keystore.load(key).address
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)


def _failed(exc: QoinError, rpc: str) -> NoReturn:
    """Exit 1 with a message for a client error (a node that cannot be reached says where);
    exit 2 for options no deal can have."""
    if isinstance(exc, BadOptions):
        fail(str(exc), EXIT_USAGE)
    if isinstance(exc, WalletError) and not isinstance(exc, StorageClientError):
        fail(f"the execution client at {rpc} did not answer as expected: {exc}")
    fail(str(exc))


def _blocks(height: int, target: int) -> str:
    """``target`` as a height and how far it is from ``height``."""
    if target == height:
        return f"{target} (now)"
    gap = abs(target - height)
    blocks = f"{gap} block{'s' if gap > 1 else ''}"
    return f"{target} (in {blocks})" if target > height else f"{target} ({blocks} ago)"


# -- put -------------------------------------------------------------------------------------------


def _print_estimate(found: Estimate) -> None:
    chosen = found.plan
    encrypted = "encrypted, " if found.encrypted else ""
    typer.echo(
        f"{found.size} bytes ({encrypted}{found.stored_size} stored) as {chosen.n} shards of "
        f"{chosen.shard_size} bytes, any {found.k} rebuild it, for {chosen.duration} periods"
    )
    typer.echo("would store with:")
    for index, offer in enumerate(chosen.chosen):
        typer.echo(
            f"  shard {index}: {offer.provider} at {offer.ask.endpoint}: {offer.price} Shor per "
            f"period ({offer.ask.price} per GiB), {offer.collateral} Shor collateral"
        )
    for offer in chosen.spares:
        typer.echo(f"  spare: {offer.provider} at {offer.ask.endpoint}: {offer.price} per period")
    typer.echo(f"cost: {chosen.cost} Shor over the term")
    typer.echo(
        f"deposit: {chosen.deposit} Shor at {chosen.max_price} Shor per GiB per period "
        f"({chosen.deposit - chosen.cost} of it comes back when the deal forms); "
        f"balance {found.balance}"
    )
    if found.balance < chosen.deposit:
        typer.echo("the account cannot pay the deposit", err=True)


def _print_put(path: Path, result: PutResult) -> None:
    typer.echo(f"stored {path} ({result.prepared.plain_size} bytes)")
    typer.echo(f"content id: {result.cid.hex()}")
    typer.echo(f"deal: {result.deal}, periods {result.first} to {result.end - 1}")
    for index, (provider, endpoint) in enumerate(
        zip(result.providers, result.endpoints, strict=True)
    ):
        typer.echo(f"  shard {index}: {provider} at {endpoint}")
    typer.echo(
        f"cost: {result.escrow} Shor held for the providers "
        f"({result.deposit - result.escrow} of the deposit refunded)"
    )


@storage_app.command("put")
def put(
    file: Annotated[Path, typer.Argument(help="The file to store.")],
    key: Annotated[Path, typer.Option("--key", help="The client's keystore (pays, encrypts).")],
    shards: Annotated[
        int, typer.Option("--shards", "-n", help="Shards, each on its own provider.")
    ] = client.DEFAULT_SHARDS,
    needed: Annotated[
        int,
        typer.Option("--needed", "-k", help="Shards that rebuild the file (1: replication)."),
    ] = client.DEFAULT_NEEDED,
    duration: Annotated[
        int, typer.Option(help="Periods the deal lasts.", min=1, max=MAX_UINT)
    ] = client.DEFAULT_DURATION,
    max_price: Annotated[
        int | None,
        typer.Option(help="Shor per GiB per period at most (default: the asks chosen).", min=0),
    ] = None,
    deadline: Annotated[
        int, typer.Option(help="Blocks the bid stays open.", min=1, max=MAX_UINT)
    ] = client.DEFAULT_DEADLINE_BLOCKS,
    no_encrypt: Annotated[
        bool, typer.Option("--no-encrypt", help="Store the bytes in clear (public content).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the matching asks and the cost; send nothing.")
    ] = False,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Store a file with the market's providers; print its content id and deal id."""
    options = PutOptions(
        n=shards,
        k=needed,
        duration=duration,
        max_price=max_price,
        deadline_blocks=deadline,
        encrypt=not no_encrypt,
    )
    try:
        client.check_code(shards, needed)
    except StorageClientError as exc:
        fail(str(exc), EXIT_USAGE)
    if dry_run:
        try:
            size = file.stat().st_size
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}", EXIT_USAGE)
        address = _keystore_address(key)
        try:
            with MarketView(rpc) as view:
                balance = wallet.balance(view.client, address)
                found = client.estimate(view, size, options, balance)
        except QoinError as exc:
            _failed(exc, rpc)
        if json_out:
            print_json(found.to_json())
        else:
            _print_estimate(found)
        return
    data = read_input_file(file, "file to store", client.MAX_PUT_SIZE)
    _keystore_address(key)  # an unusable keystore, then options the network refuses: first
    try:
        with MarketView(rpc) as view:
            client.check_options(options, view.params())
    except QoinError as exc:
        _failed(exc, rpc)
    keypair = unlock_keystore(key, password_file)
    try:
        with MarketView(rpc) as view, progress_bars(quiet) as bars:
            result = client.put(Wallet(rpc, keypair), view, data, options, bars)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(result.to_json())
    else:
        _print_put(file, result)
    if result.failed:
        for index, reason in result.failed:
            typer.echo(f"error: shard {index} was not uploaded: {reason}", err=True)
        typer.echo(
            "the deal stands: a shard that is never proved fails after the market's max_misses "
            "missed periods and is re-listed and rebuilt from the others (qoin storage status); "
            "qoin storage cancel refunds the periods not yet begun",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)


# -- get -------------------------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    """Exit 2 unless ``out`` can be written as a file (checked before anything is fetched)."""
    if out.is_dir():
        fail(f"{out} is a directory: name the file to write (--out)", EXIT_USAGE)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        fail(f"{parent} is not a directory: cannot write {out}", EXIT_USAGE)


@storage_app.command("get")
def get(
    cid: CidArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the file.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", help="The keystore that stored it (needed when encrypted)."),
    ] = None,
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Retrieve a file: every chunk verified against the content id, written only when whole."""
    content_id = _cid(cid)
    _check_out(out)
    try:
        with MarketView(rpc) as view:
            content = retrieve.locate(view, content_id)
    except QoinError as exc:
        _failed(exc, rpc)
    master = None
    if content.encrypted:
        if key is None:
            fail(f"{cid} is encrypted: give the keystore that stored it (--key)", EXIT_USAGE)
        master = crypt.master_key(unlock_keystore(key, password_file))
    try:
        with progress_bars(quiet) as bars:
            got = retrieve.save(content, out, master, bars)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(
            {
                "cid": content_id.hex(),
                "deal": content.deal,
                "out": str(out),
                "size": len(got.data),
                "encrypted": content.encrypted,
                "from": [
                    {"shard": s.index, "provider": str(s.provider), "endpoint": s.endpoint}
                    for s in got.used
                ],
                "dropped": [
                    {"shard": s.index, "endpoint": s.endpoint, "reason": why}
                    for s, why in got.dropped
                ],
            }
        )
        return
    sources = ", ".join(f"shard {s.index} from {s.endpoint}" for s in got.used)
    typer.echo(f"wrote {out} ({len(got.data)} bytes, verified against {cid}; {sources})")
    for source, why in got.dropped:
        typer.echo(f"dropped shard {source.index} from {source.endpoint}: {why}", err=True)


# -- ls, status, cancel ----------------------------------------------------------------------------


def _print_listing(listing: Listing) -> None:
    typer.echo(f"{listing.client} at height {listing.height}")
    if not listing.deals and not listing.bids:
        typer.echo("no deals or bids")
    for entry in listing.deals:
        state = "open" if entry.info is not None else "settled"
        size = "" if entry.info is None else f", {entry.info.size} bytes"
        typer.echo(
            f"deal {entry.deal}: {entry.cid.hex()} ({state}{size}, "
            f"{len(entry.providers)} shards, periods {entry.first} to {entry.end - 1})"
        )
    for bid in listing.bids:
        typer.echo(
            f"bid {bid.bid_id}: {bid.cid.hex()} (matching, {bid.size} bytes, {bid.n} shards, "
            f"open until height {bid.deadline})"
        )


@storage_app.command("ls")
def ls(
    key: Annotated[
        Path | None, typer.Option("--key", help="The client's keystore (no password needed).")
    ] = None,
    address: Annotated[str | None, typer.Option(help="The client's address instead.")] = None,
    start: Annotated[
        int, typer.Option("--from", help="Look for deals formed since this height.", min=0)
    ] = 0,
    rpc: RpcOption = DEFAULT_RPC,
    json_out: JsonOut = False,
) -> None:
    """List an account's deals and open bids."""
    if (key is None) == (address is None):
        fail("give --key or --address", EXIT_USAGE)
    if address is not None:
        try:
            owner = client.parse_address(address)
        except StorageClientError as exc:
            fail(str(exc), EXIT_USAGE)
    else:
        owner = _keystore_address(key) if key is not None else fail("give --key", EXIT_USAGE)
    try:
        with MarketView(rpc) as view:
            listing = client.client_deals(view.client, view, owner, start)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(listing.to_json())
    else:
        _print_listing(listing)


def _print_status(status: ContentStatus) -> None:
    height = status.height
    typer.echo(f"{status.cid.hex()} at height {height}")
    if status.kind == "bid":
        typer.echo(
            f"bid {status.id}: matching, {status.size} bytes in {status.n} shards, deposit "
            f"{status.escrow} Shor, open until {_blocks(height, status.deadline)}"
        )
    elif status.kind != "deal":
        typer.echo(f"bid {status.id}: {status.kind} (last refund {status.escrow} Shor)")
        return
    else:
        typer.echo(
            f"deal {status.id}: {status.size} bytes in {status.n} shards of "
            f"{status.shard_size}, any {status.k} rebuild it; periods {status.first} to "
            f"{status.end - 1}; {status.escrow} Shor held"
        )
        if status.next_check is not None:
            typer.echo(f"next check: {_blocks(height, status.next_check)}")
    for shard in status.shards:
        where = "no provider" if shard.provider is None else f"{shard.provider}"
        if shard.endpoint is not None:
            where += f" at {shard.endpoint}"
        due = ""
        if shard.window is not None:
            due = f", next proof in blocks {shard.window[0]}-{shard.window[1]}"
            if shard.window[0] > height:
                due += f" (opens in {shard.window[0] - height})"
        paid = "" if shard.paid is None else f", paid {shard.paid} Shor"
        typer.echo(f"  shard {shard.index}: {shard.state}: {where}{due}{paid}")


@storage_app.command("status")
def status(
    cid: CidArgument,
    start: Annotated[
        int, typer.Option("--from", help="Look for bids placed since this height.", min=0)
    ] = 0,
    rpc: RpcOption = DEFAULT_RPC,
    json_out: JsonOut = False,
) -> None:
    """Show a content id's deal shard by shard (or its bid, or what became of it)."""
    content_id = _cid(cid)
    try:
        with MarketView(rpc) as view:
            found = client.content_status(view.client, view, content_id, start)
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(found.to_json())
    else:
        _print_status(found)


@storage_app.command("cancel")
def cancel(
    cid: CidArgument,
    key: Annotated[Path, typer.Option("--key", help="The client's keystore.")],
    rpc: RpcOption = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Cancel a content id's deal (periods not yet begun are refunded) or its open bid."""
    content_id = _cid(cid)
    keypair = unlock_keystore(key, password_file)
    try:
        with MarketView(rpc) as view:
            done = client.cancel(Wallet(rpc, keypair), view, content_id)
    except NotFound as exc:
        fail(str(exc))
    except QoinError as exc:
        _failed(exc, rpc)
    if json_out:
        print_json(done.to_json())
    else:
        typer.echo(f"cancelled {done.kind} {done.id}: {done.refund} Shor refunded")


def register(app: typer.Typer) -> None:
    """Add ``qoin storage`` to the command line."""
    app.add_typer(storage_app, name="storage")
