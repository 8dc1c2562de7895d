"""``qoin node``: run a node — an execution client and a consensus client as two processes joined by
the engine API (:mod:`qoin.node.supervisor` starts, watches and stops them). Today ``--dev``: a
development chain (the devnet genesis, or ``--genesis``); ``--mine`` to mine; ``--p2p-port`` and
``--bootnode`` to join other nodes over p2p. A restart continues from the head.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from qoin.chain import genesis as genesis_mod
from qoin.cli.chain import save_genesis_file
from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, read_password
from qoin.consensus.sampling import DEFAULT_SAMPLES, MAX_SAMPLES
from qoin.crypto import keystore
from qoin.crypto.address import Address, AddressError
from qoin.crypto.hybrid import HybridKeyPair
from qoin.node.mining import MinedBlock
from qoin.node.supervisor import supervise
from qoin.rpc.jwt import JwtError, create_secret

JWT_FILE = "jwt.hex"
DEV_KEY_PASSWORD = "devnet"  # noqa: S105 (the published password of the published devnet key)


# Options shared by `qoin node` and `qoin consensus` (the node passes them on to its consensus
# client).
MineOption = Annotated[bool, typer.Option("--mine", help="Mine blocks.")]
CoinbaseOption = Annotated[
    str | None, typer.Option(help="Mine to this address (its keystore must be available).")
]
KeystoreDirOption = Annotated[
    Path | None, typer.Option(help="Where to find the coinbase keystore.")
]
PasswordFileOption = Annotated[Path | None, typer.Option(help="Keystore password file.")]
GenesisOption = Annotated[Path | None, typer.Option(help="Genesis file (default: devnet).")]
WorkersOption = Annotated[int | None, typer.Option(help="Miner processes.", min=1)]
BlocksOption = Annotated[int, typer.Option(help="Stop after mining this many blocks.", min=0)]
ConsensusRpcPortOption = Annotated[
    int, typer.Option(help="Consensus JSON-RPC port on 127.0.0.1 (0: any free port).")
]
SamplesOption = Annotated[
    int, typer.Option(help="Accounts sampled per block.", min=1, max=MAX_SAMPLES)
]
P2PPortOption = Annotated[
    int | None,
    typer.Option(help="Join the p2p network on this TCP port (0: any free port; default: off)."),
]
P2PHostOption = Annotated[str, typer.Option(help="Address the p2p port listens on.")]
BootnodeOption = Annotated[
    list[str] | None,
    typer.Option("--bootnode", help="Peer to dial first, qoin1…@host:port (repeatable)."),
]

RemoteExecutionOption = Annotated[
    int,
    typer.Option(
        help="Also judge blocks with this many other operators' execution nodes over p2p "
        "(needs --p2p-port).",
        min=0,
        max=32,
    ),
]
ServeExecutionOption = Annotated[
    bool,
    typer.Option(
        "--serve-execution",
        help="Serve the execution client to p2p peers (signed answers; needs --p2p-port).",
    ),
]


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


def coinbase_keystore(coinbase: str, keystore_dir: Path) -> Path:
    """The keystore file of ``coinbase``, checked to exist (a clear error otherwise)."""
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
    return path


def mining_keypair(coinbase: str, keystore_dir: Path, password_file: Path | None) -> HybridKeyPair:
    """The key of ``coinbase``: PoW attempts are signatures by the key the coinbase pays."""
    path = coinbase_keystore(coinbase, keystore_dir)
    try:
        return keystore.decrypt_keypair(
            keystore.load(path), read_password(password_file, confirm=False)
        )
    except keystore.WrongPassword as exc:
        fail(str(exc), EXIT_FAILURE)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)


def report_mined(mined: MinedBlock) -> None:
    """One line per mined block on stdout (``new head height=N hash=H ...``)."""
    header = mined.block.header
    reorg = f" reorg={mined.result.reorg_depth}" if mined.result.reorg_depth else ""
    where = "new head" if mined.result.head_changed else "side block"
    typer.echo(
        f"{where} height={header.height} hash={header.block_hash.hex()} "
        f"siblings={len(mined.block.siblings)} attempts/s={mined.attempts_per_second:,.0f}{reorg}",
    )


def node(
    dev: Annotated[
        bool, typer.Option("--dev", help="Run a single-node development chain.")
    ] = False,
    mine: MineOption = False,
    datadir: Annotated[
        Path | None, typer.Option(help="Data directory (default $QOIN_HOME/dev).")
    ] = None,
    coinbase: CoinbaseOption = None,
    keystore_dir: KeystoreDirOption = None,
    password_file: PasswordFileOption = None,
    genesis: GenesisOption = None,
    workers: WorkersOption = None,
    blocks: BlocksOption = 0,
    rpc_port: Annotated[
        int, typer.Option(help="User JSON-RPC port on 127.0.0.1 (0: any free port).")
    ] = 8645,
    consensus_rpc_port: ConsensusRpcPortOption = 8646,
    samples: SamplesOption = DEFAULT_SAMPLES,
    p2p_port: P2PPortOption = None,
    p2p_host: P2PHostOption = "127.0.0.1",
    bootnode: BootnodeOption = None,
    remote_execution: RemoteExecutionOption = 0,
    serve_execution: ServeExecutionOption = False,
    ui_port: Annotated[
        int, typer.Option(help="Web UI port on 127.0.0.1 (0: any free port).", min=0, max=65535)
    ] = 0,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not serve the web UI.")] = False,
) -> None:
    """Run a node: an execution client and a consensus client, two processes joined by the engine
    API, and the web UI (today with --dev: a development chain; --mine to mine; --p2p-port to join
    peers)."""
    if not dev:
        fail("only development networks exist so far: try `qoin node --dev --mine`")
    if (remote_execution or serve_execution) and p2p_port is None:
        fail(
            "--remote-execution and --serve-execution need the p2p network: give --p2p-port",
            EXIT_USAGE,
        )
    home = datadir or qoin_home() / "dev"
    # The key first: a bad --coinbase fails before the datadir is created or opened.
    if coinbase:
        coinbase_keystore(coinbase, keystore_dir or qoin_home() / "keystore")
    try:
        chosen = dev_genesis(home, genesis)
        create_secret(home / JWT_FILE)
    except (genesis_mod.GenesisError, JwtError) as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot use data directory {home}: {exc}", EXIT_USAGE)
    typer.echo(
        f"qoin node --dev: network {chosen.network} genesis {chosen.genesis_hash.hex()[:16]} "
        f"datadir {home}; starting the execution and consensus clients",
        err=True,
    )
    common = ["--genesis", str(home / "genesis.json"), "--jwt-secret", str(home / JWT_FILE)]
    execution_args = ["execution", "--datadir", str(home / "execution"), "--rpc-port"]
    execution_args += [str(rpc_port), "--engine-port", "0", *common]
    consensus_args = ["consensus", "--datadir", str(home), "--rpc-port", str(consensus_rpc_port)]
    consensus_args += [*common, "--samples", str(samples)]
    if mine:
        consensus_args += ["--mine", "--blocks", str(blocks)]
        consensus_args += ["--workers", str(workers)] if workers else []
    for flag, value in (
        ("--coinbase", coinbase),
        ("--keystore-dir", keystore_dir),
        ("--password-file", password_file),
        ("--p2p-port", p2p_port),
    ):
        consensus_args += [flag, str(value)] if value is not None else []
    if p2p_port is not None:
        consensus_args += ["--p2p-host", p2p_host]
        consensus_args += ["--remote-execution", str(remote_execution)] if remote_execution else []
        consensus_args += ["--serve-execution"] if serve_execution else []
        consensus_args += [arg for entry in bootnode or () for arg in ("--bootnode", entry)]
    web = None
    if not no_ui:
        from qoin.web.server import web_args  # noqa: PLC0415 (only a node with a UI needs it)

        wallets = keystore_dir or qoin_home() / "keystore"

        def web(user_rpc: str, consensus_rpc: str) -> list[str]:
            return web_args(user_rpc, consensus_rpc, ui_port, wallets, home / "web")

    code = supervise(execution_args, consensus_args, web)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``node`` to the ``qoin`` command."""
    app.command("node")(node)
