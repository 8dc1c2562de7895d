"""``qoin execution``: run the execution client; ``qoin balance`` and ``qoin tx send`` talk to one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from qoin.chain import genesis as genesis_mod
from qoin.chain.transaction import sign_transfer
from qoin.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ask_node,
    fail,
    print_json,
    read_password,
)
from qoin.crypto import keystore
from qoin.crypto.address import Address, AddressError
from qoin.crypto.batch import favour_verifier_threads
from qoin.execution.client import ExecutionClient
from qoin.execution.dishonest import MODES, DishonestClient
from qoin.execution.journal import JOURNAL_FILE, TransactionJournal
from qoin.execution.state import ExecutionState, ExecutionStateError
from qoin.process import stop_on_signals
from qoin.rpc.jwt import JwtError, create_secret
from qoin.rpc.serve import BackgroundServer, ServeError

DEFAULT_RPC = "http://127.0.0.1:8645/"
JOURNAL_REWRITE_S = 60.0
"""How often the journal of local transactions is rewritten to hold only the pending ones."""
RpcUrl = Annotated[str, typer.Option("--rpc", help="The execution client's user RPC URL.")]


def execution(
    datadir: Annotated[Path, typer.Option(help="Execution data directory.")],
    genesis: Annotated[
        Path | None, typer.Option(help="Genesis file (default: DATADIR/genesis.json, else devnet).")
    ] = None,
    rpc_port: Annotated[int, typer.Option(help="User JSON-RPC port (127.0.0.1).")] = 8645,
    engine_port: Annotated[int, typer.Option(help="Engine API port (127.0.0.1).")] = 8651,
    jwt_secret: Annotated[
        Path | None, typer.Option(help="Engine JWT secret file (created if missing).")
    ] = None,
    dishonest: Annotated[
        str | None,
        typer.Option(hidden=True, help="TEST ONLY: lie to the consensus client in this way."),
    ] = None,
) -> None:
    """Run the execution client until Ctrl-C or SIGTERM."""
    if dishonest is not None and dishonest not in MODES:
        fail(f"unknown --dishonest mode {dishonest!r}; one of {', '.join(MODES)}", EXIT_USAGE)
    saved = datadir / "genesis.json"
    try:
        chosen = (
            genesis_mod.load_file(genesis or saved)
            if (genesis or saved.exists())
            else genesis_mod.builtin("devnet")
        )
        secret = create_secret(jwt_secret or datadir / "jwt.hex")
        state = ExecutionState.open(datadir, chosen)
        favour_verifier_threads()
    except (genesis_mod.GenesisError, JwtError, ExecutionStateError, OSError) as exc:
        fail(str(exc), EXIT_USAGE)
    journal = TransactionJournal(datadir / JOURNAL_FILE)
    client = (
        ExecutionClient(state, journal)
        if dishonest is None
        else DishonestClient(state, journal, mode=dishonest)
    )
    try:
        readded, dropped, ignored = client.restore_local_transactions()
    except OSError as exc:
        state.close()
        fail(f"cannot restore the local transactions of {journal.path}: {exc}", EXIT_USAGE)
    if readded or dropped or ignored:
        torn = f"; {ignored} bytes of a torn record ignored" if ignored else ""
        typer.echo(
            f"qoin execution: local transactions journal: {readded} re-added, {dropped} dropped "
            f"(included or no longer valid){torn}",
            err=True,
        )
    done = threading.Event()
    try:
        with (
            client.serve_user(rpc_port) as user,
            BackgroundServer(client.engine_server(secret).app, port=engine_port) as engine,
            stop_on_signals(done.set),
        ):
            lying = f" (TEST ONLY: dishonest, {dishonest})" if dishonest else ""
            typer.echo(
                f"qoin execution: network {chosen.network}, head height={state.head_height()}, "
                f"user RPC {user.url}, engine API {engine.url}{lying}",
                err=True,
            )
            while not done.wait(JOURNAL_REWRITE_S):
                _save_journal(client)
            if isinstance(client, DishonestClient):
                client.close()  # let hanging calls end so that the servers can stop
    except ServeError as exc:
        fail(str(exc), EXIT_USAGE)
    finally:
        _save_journal(client)  # the servers are stopped: no local transaction comes any more
        journal.close()
        state.close()
    typer.echo("stopped", err=True)


def _save_journal(client: ExecutionClient) -> None:
    try:
        client.save_journal()
    except OSError as exc:  # the previous journal stays; the next rewrite tries again
        typer.echo(f"qoin execution: cannot rewrite the journal: {exc}", err=True)


def balance(
    address: Annotated[str, typer.Argument(help="Account address (qoin1…).")],
    rpc: RpcUrl = DEFAULT_RPC,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the whole account as JSON.")
    ] = False,
) -> None:
    """Show an account's balance (Shor)."""
    try:
        Address.from_text(address)
    except AddressError as exc:
        fail(str(exc), EXIT_USAGE)
    account = ask_node(rpc, "qoin_getAccount", address)
    if json_out:
        print_json(account)
    else:
        typer.echo(f"{account['balance']}")


tx_app = typer.Typer(help="Build, sign and send transactions.", no_args_is_help=True)


@tx_app.command("send")
def tx_send(
    key: Annotated[Path, typer.Option(help="Sender keystore.")],
    to: Annotated[str, typer.Option(help="Recipient address.")],
    amount: Annotated[int, typer.Option(help="Shor to send.", min=0)],
    fee: Annotated[
        int | None, typer.Option(help="Fee in Shor (default: estimated).", min=0)
    ] = None,
    rpc: RpcUrl = DEFAULT_RPC,
    password_file: Annotated[Path | None, typer.Option(help="Keystore password file.")] = None,
) -> None:
    """Sign a transfer with a keystore and submit it; print its hash."""
    try:
        recipient = Address.from_text(to)
        store = keystore.load(key)
    except (AddressError, keystore.KeystoreError) as exc:
        fail(str(exc), EXIT_USAGE)
    chain_id = ask_node(rpc, "qoin_chainId")
    account = ask_node(rpc, "qoin_getAccount", str(store.address))
    paid = fee if fee is not None else ask_node(rpc, "qoin_estimateFee")["fee"]
    try:
        keypair = keystore.decrypt_keypair(store, read_password(password_file, confirm=False))
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    tx = sign_transfer(
        keypair,
        chain_id=chain_id,
        nonce=account["nextNonce"],
        recipient=recipient,
        amount=amount,
        fee=paid,
        reveal_keys=not account["publicKeysRevealed"],
    )
    typer.echo(ask_node(rpc, "qoin_sendRawTransaction", tx.encode().hex()))


def register(app: typer.Typer) -> None:
    """Add ``execution``, ``balance`` and ``tx`` to the ``qoin`` command."""
    app.command("execution")(execution)
    app.command("balance")(balance)
    app.add_typer(tx_app, name="tx")
