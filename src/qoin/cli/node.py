"""``qoin node``: run a node. Today: ``--dev``, a single-node development chain that can mine.

The consensus/execution split (``qoin consensus``, ``qoin execution``) and p2p arrive with their
issues; until then ``qoin node --dev --mine`` runs the chain (validation, GHOST fork choice, crash-safe
storage) with the multi-process miner, and continues from its head after a restart.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from qoin.chain import genesis as genesis_mod
from qoin.chain.chain import Chain
from qoin.chain.store import StoreError
from qoin.cli.chain import save_genesis_file
from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, read_password, stop_on_signals
from qoin.crypto import keystore
from qoin.crypto.address import Address, AddressError
from qoin.crypto.batch import favour_verifier_threads
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.execution.client import ExecutionClient
from qoin.execution.state import ExecutionState
from qoin.node.local_execution import LocalExecution, catch_up
from qoin.node.mining import MinedBlock, MiningLoop
from qoin.rpc.serve import BackgroundServer

DEV_KEY_PASSWORD = "devnet"  # noqa: S105 (the published password of the published devnet key)


def qoin_home() -> Path:
    """``$QOIN_HOME``, default ``~/.qoin``."""
    return Path(os.environ.get("QOIN_HOME", Path.home() / ".qoin"))


def dev_genesis(datadir: Path, genesis_file: Path | None) -> genesis_mod.Genesis:
    """The dev chain's genesis: ``--genesis``, else the one saved in the datadir, else the built-in
    devnet genesis re-timed to now (a fresh dev chain starts now, so ASERT starts on schedule)."""
    saved = datadir / "genesis.json"
    if genesis_file is not None:
        chosen = genesis_mod.load_file(genesis_file)
        if not saved.exists():  # so that a restart (or `qoin chain status`) finds it
            save_genesis_file(datadir, genesis_file.read_bytes())
        return chosen
    if saved.exists():
        return genesis_mod.load_file(saved)
    obj = genesis_mod.builtin_json("devnet")
    obj["timestamp_ms"] = int(time.time() * 1000)
    save_genesis_file(datadir, (json.dumps(obj, indent=2) + "\n").encode())
    return genesis_mod.from_json(obj)


def dev_keypair() -> HybridKeyPair:
    """The published devnet key (it holds the devnet genesis allocation)."""
    obj = genesis_mod.builtin_json("devnet-key")
    return keystore.decrypt_keypair(keystore.from_json(obj), DEV_KEY_PASSWORD)


def mining_keypair(coinbase: str, keystore_dir: Path, password_file: Path | None) -> HybridKeyPair:
    """The key of ``coinbase``: PoW attempts are signatures by the key the coinbase pays."""
    try:
        address = Address.from_text(coinbase)
    except AddressError as exc:
        fail(str(exc), EXIT_USAGE)
    path = keystore_dir / f"{address}.json"
    if not path.exists():
        fail(
            f"no keystore for {address} in {keystore_dir}: mining needs the coinbase's key, because "
            "every proof-of-work attempt is a signature by that key (docs/spec/pow.md §8); "
            "create one with `qoin keys new` or give --keystore-dir",
            EXIT_USAGE,
        )
    try:
        return keystore.decrypt_keypair(
            keystore.load(path), read_password(password_file, confirm=False)
        )
    except keystore.WrongPassword as exc:
        fail(str(exc), EXIT_FAILURE)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)


def node(
    dev: Annotated[
        bool, typer.Option("--dev", help="Run a single-node development chain.")
    ] = False,
    mine: Annotated[bool, typer.Option("--mine", help="Mine blocks.")] = False,
    datadir: Annotated[
        Path | None, typer.Option(help="Data directory (default $QOIN_HOME/dev).")
    ] = None,
    coinbase: Annotated[
        str | None, typer.Option(help="Mine to this address (its keystore must be available).")
    ] = None,
    keystore_dir: Annotated[
        Path | None, typer.Option(help="Where to find the coinbase keystore.")
    ] = None,
    password_file: Annotated[Path | None, typer.Option(help="Keystore password file.")] = None,
    genesis: Annotated[Path | None, typer.Option(help="Genesis file (default: devnet).")] = None,
    workers: Annotated[int | None, typer.Option(help="Miner processes.", min=1)] = None,
    blocks: Annotated[int, typer.Option(help="Stop after mining this many blocks.", min=0)] = 0,
    rpc_port: Annotated[
        int, typer.Option(help="User JSON-RPC port on 127.0.0.1 (0: any free port).")
    ] = 8645,
) -> None:
    """Run a node (today: --dev, a single-node chain with its execution client; --mine to mine)."""
    if not dev:
        fail("only --dev is available until the p2p network lands; try `qoin node --dev --mine`")
    home = datadir or qoin_home() / "dev"
    # The key first: a bad --coinbase fails before the datadir is created or opened.
    keypair = (
        mining_keypair(coinbase, keystore_dir or qoin_home() / "keystore", password_file)
        if coinbase
        else dev_keypair()
    )
    try:
        chosen = dev_genesis(home, genesis)
        chain = Chain.open(home, chosen)
    except (genesis_mod.GenesisError, StoreError) as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot use data directory {home}: {exc}", EXIT_USAGE)
    head = chain.head_header
    typer.echo(
        f"qoin node --dev: network {chosen.network} genesis {chosen.genesis_hash.hex()[:16]} "
        f"datadir {home}; head height={head.height} hash={head.block_hash.hex()}",
        err=True,
    )
    if not mine:
        typer.echo("not mining (add --mine); nothing else to do without peers yet", err=True)
        chain.close()
        return
    run_mining(chain, keypair, workers, blocks, rpc_port, home)


def run_mining(
    chain: Chain,
    keypair: HybridKeyPair,
    workers: int | None,
    blocks: int,
    rpc_port: int,
    home: Path,
) -> None:
    """Mine with an in-process execution client serving the user RPC, until stopped."""
    try:
        state = ExecutionState.open(home / "execution", chain.genesis)
        favour_verifier_threads()
        client = ExecutionClient(state)
        replayed = catch_up(chain, client)
        server = BackgroundServer(client.user_server().app, port=rpc_port).start()
    except (QoinError, OSError) as exc:
        chain.close()
        fail(f"cannot start the execution client: {exc}", EXIT_USAGE)
    typer.echo(
        f"execution client: user RPC {server.url} (replayed {replayed} blocks at start)", err=True
    )
    loop = MiningLoop(chain, keypair, workers, LocalExecution(client))
    typer.echo(f"mining to {keypair.address} on {loop.miner.workers} processes", err=True)

    def report(mined: MinedBlock) -> None:
        header = mined.block.header
        reorg = f" reorg={mined.result.reorg_depth}" if mined.result.reorg_depth else ""
        where = "new head" if mined.result.head_changed else "side block"
        typer.echo(
            f"{where} height={header.height} hash={header.block_hash.hex()} "
            f"siblings={len(mined.block.siblings)} attempts/s={mined.attempts_per_second:,.0f}{reorg}",
        )

    def reject(message: str) -> None:
        typer.echo(message, err=True)

    try:
        # A signal only asks the loop to stop (at its next poll): raising KeyboardInterrupt could
        # land between a block's durable commit and the in-memory head update, and the head
        # reported below would not be the stored one.
        with stop_on_signals(loop.stop) as received:
            loop.run(report, reject, blocks)
        if received:
            typer.echo("stopping", err=True)
    except QoinError as exc:  # e.g. a miner process died, or the disk failed under the store
        failure = f"{type(exc).__name__}: {exc}"
    else:
        failure = ""
    finally:
        loop.miner.stop()
        server.stop()
        state.close()
        head = chain.head_header
        chain.close()
        typer.echo(f"stopped at height={head.height} hash={head.block_hash.hex()}", err=True)
    if failure:
        fail(failure, EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add ``node`` to the ``qoin`` command."""
    app.command("node")(node)
