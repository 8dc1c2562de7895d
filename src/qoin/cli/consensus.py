"""``qoin consensus``: run the consensus client against one or more execution clients.

It keeps blocks and fork choice only (no account state), judges every block with its execution
clients (engine API, account state sampling, stateless re-execution when they disagree), mines on
payloads they build with ``--mine``, and serves ``consensus_submitBlock`` / ``consensus_status`` on
127.0.0.1.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from qoin.chain import genesis as genesis_mod
from qoin.chain.store import StoreError
from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail
from qoin.cli.node import (
    BlocksOption,
    BootnodeOption,
    CoinbaseOption,
    ConsensusRpcPortOption,
    GenesisOption,
    KeystoreDirOption,
    MineOption,
    P2PHostOption,
    P2PPortOption,
    PasswordFileOption,
    RemoteExecutionOption,
    SamplesOption,
    ServeExecutionOption,
    WorkersOption,
    dev_genesis,
    dev_keypair,
    mining_keypair,
    qoin_home,
    report_mined,
)
from qoin.consensus.engine import DEFAULT_TIMEOUT_S, EngineClient
from qoin.consensus.network import NodeAccess
from qoin.consensus.node import ConsensusNode, EngineLink
from qoin.consensus.remote import RemotePool
from qoin.consensus.sampling import DEFAULT_SAMPLES
from qoin.crypto.batch import favour_verifier_threads
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.node.mining import MiningControl, MiningLoop
from qoin.p2p.addresses import PeerAddress, PeerAddressError, parse_bootnodes
from qoin.p2p.engine import EngineServer
from qoin.p2p.identity import NODE_KEY_FILE, load_or_create_node_key
from qoin.p2p.service import P2PService
from qoin.process import stop_on_signals
from qoin.rpc.jwt import JwtError, load_secret
from qoin.rpc.serve import BackgroundServer, ServeError

PAUSE_SIGNAL = signal.SIGUSR1
"""Stops mining; the node keeps running (see :func:`mine_until_stopped`)."""


def engine_clients(
    urls: list[str], secrets: list[Path], timeout: float, remote: int = 0
) -> list[EngineClient]:
    """One client per ``--execution`` URL; one ``--jwt-secret`` for all, or one per URL. None at
    all only with remote execution nodes (``remote``)."""
    if not urls:
        if remote:
            return []
        fail(
            "give at least one --execution URL (an execution client's engine API), or use "
            "other operators' execution nodes with --remote-execution N",
            EXIT_USAGE,
        )
    if len(secrets) not in (1, len(urls)):
        fail("give one --jwt-secret for all execution clients, or one per --execution", EXIT_USAGE)
    try:
        keys = [load_secret(path) for path in secrets]
    except JwtError as exc:
        fail(str(exc), EXIT_USAGE)
    return [
        EngineClient(url, keys[0] if len(keys) == 1 else keys[i], timeout)
        for i, url in enumerate(urls)
    ]


def consensus(
    execution: Annotated[
        list[str] | None,
        typer.Option(
            "--execution",
            help="Engine API URL of an execution client (repeatable; optional with "
            "--remote-execution).",
        ),
    ] = None,
    jwt_secret: Annotated[
        list[Path] | None,
        typer.Option("--jwt-secret", help="Engine JWT secret file: one for all, or one per URL."),
    ] = None,
    datadir: Annotated[
        Path | None, typer.Option(help="Data directory (default $QOIN_HOME/consensus).")
    ] = None,
    genesis: GenesisOption = None,
    mine: MineOption = False,
    coinbase: CoinbaseOption = None,
    keystore_dir: KeystoreDirOption = None,
    password_file: PasswordFileOption = None,
    workers: WorkersOption = None,
    blocks: BlocksOption = 0,
    block_interval_ms: Annotated[
        int,
        typer.Option(
            help="Pause this many ms after each mined block (development and test networks).",
            min=0,
            max=3_600_000,
        ),
    ] = 0,
    rpc_port: ConsensusRpcPortOption = 8646,
    samples: SamplesOption = DEFAULT_SAMPLES,
    engine_timeout: Annotated[
        float, typer.Option(help="Seconds an engine call may take.", min=0.1)
    ] = DEFAULT_TIMEOUT_S,
    p2p_port: P2PPortOption = None,
    p2p_host: P2PHostOption = "127.0.0.1",
    bootnode: BootnodeOption = None,
    remote_execution: RemoteExecutionOption = 0,
    serve_execution: ServeExecutionOption = False,
    serve_execution_url: Annotated[
        str | None,
        typer.Option(
            help="Engine API URL of the execution client served with --serve-execution (default: "
            "the first --execution; its secret: the first --jwt-secret)."
        ),
    ] = None,
) -> None:
    """Run the consensus client until Ctrl-C or SIGTERM (or --blocks mined)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per engine call
    home = datadir or qoin_home() / "consensus"
    keypair = miner_keypair(coinbase, keystore_dir, password_file) if mine else None
    if (remote_execution or serve_execution) and p2p_port is None:
        fail(
            "--remote-execution and --serve-execution need the p2p network: give --p2p-port",
            EXIT_USAGE,
        )
    urls, secrets = execution or [], jwt_secret or []
    # what to serve is checked first: a serving operator who gave none wants to hear that
    server = serving_engine(serve_execution, urls, secrets, serve_execution_url, engine_timeout)
    clients = engine_clients(urls, secrets, engine_timeout, remote_execution)
    try:
        bootnodes = parse_bootnodes(bootnode or [])
    except PeerAddressError as exc:
        fail(f"--bootnode: {exc}", EXIT_USAGE)
    favour_verifier_threads()  # it re-executes blocks statelessly when clients disagree
    chosen, node = open_node(home, genesis, clients, samples, remote_execution)
    node.mining = mining_control(node, keypair, coinbase, workers, block_interval_ms)
    failure = ""
    try:
        if p2p_port is not None:
            node.p2p = start_p2p(node, home, p2p_host, p2p_port, bootnodes, server)
            start_remote(node, remote_execution, engine_timeout)
        with BackgroundServer(node.rpc_server().app, port=rpc_port) as rpc:
            head = node.chain.head_header
            local = ", ".join(c.url for c in node.judge.active) or "none"
            typer.echo(
                f"qoin consensus: network {chosen.network} datadir {home}; head "
                f"height={head.height} hash={head.block_hash.hex()}; RPC {rpc.url}; execution "
                f"clients {local}; remote execution nodes wanted {remote_execution}",
                err=True,
            )
            received = mine_until_stopped(node, blocks if mine else None)
            if received:
                typer.echo("stopping", err=True)
    except ServeError as exc:
        failure = str(exc)
    except QoinError as exc:  # e.g. a miner process died, or the disk failed under the store
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        if node.remote is not None:
            node.remote.close()
        if node.p2p is not None:
            node.p2p.stop()  # closes the engine server too
        elif server is not None:
            server.close()
        head = node.chain.head_header
        node.close()
        typer.echo(f"stopped at height={head.height} hash={head.block_hash.hex()}", err=True)
    if failure:
        fail(failure, EXIT_FAILURE)


def mining_control(
    node: ConsensusNode,
    keypair: HybridKeyPair | None,
    coinbase: str | None,
    workers: int | None,
    block_interval_ms: int = 0,
) -> MiningControl:
    """The node's miner: with ``--mine``'s key; without ``--mine``, the published devnet key
    when no ``--coinbase`` is given (``consensus_setMining`` may start it), else none."""

    def echo(message: str) -> None:
        typer.echo(message, err=True)

    def key() -> HybridKeyPair:
        nonlocal keypair
        if keypair is None:
            keypair = dev_keypair()
        return keypair

    def make_loop() -> MiningLoop:
        return MiningLoop(node.chain, key(), workers, EngineLink(node, echo), node.lock,
                          block_interval_ms)  # fmt: skip

    able = keypair is not None or not coinbase
    return MiningControl(
        make_loop if able else None,
        report_mined,
        echo,
        "start the node with --mine to mine with the --coinbase key",
    )


def mine_until_stopped(node: ConsensusNode, blocks: int | None) -> list[int]:
    """Mine (unless ``blocks`` is None: then only when ``consensus_setMining`` says so) until
    SIGINT or SIGTERM, or until ``blocks`` are mined (0: no limit); the signals received. SIGUSR1
    stops mining only: the node then follows the network until SIGINT or SIGTERM (``qoin devnet``
    lets its nodes agree on a head this way). :class:`QoinError` if the miner failed."""
    control = node.mining
    done = threading.Event()

    def pause() -> None:
        if control is not None and control.stop():
            typer.echo(
                "mining stopped (SIGUSR1); following the network until Ctrl-C or SIGTERM", err=True
            )

    with stop_on_signals(done.set) as received, stop_on_signals(pause, (PAUSE_SIGNAL,)):
        if control is not None:
            if blocks is not None:
                control.start(blocks)
            while not done.is_set() and not control.ended.is_set():
                done.wait(0.25)
        else:
            done.wait()
    if control is not None:
        control.close()  # no consensus_setMining still in flight may start it again
        if control.error is not None:
            raise control.error
    return received


def open_node(
    home: Path, genesis: Path | None, clients: list[EngineClient], samples: int, remote: int = 0
) -> tuple[genesis_mod.Genesis, ConsensusNode]:
    """The consensus node of ``home``, its execution clients told the head (a clear exit if the
    data directory cannot be used or no client is usable). With ``remote`` execution nodes wanted
    it may start with no local client: it judges no block until remote ones are found."""
    try:
        chosen = dev_genesis(home, genesis)
        node = ConsensusNode(home, chosen, clients, samples, remote)
    except (genesis_mod.GenesisError, StoreError, QoinError) as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot use data directory {home}: {exc}", EXIT_USAGE)
    if clients and all(client.url in node.dropped for client in clients) and not remote:
        node.close()
        fail(f"no usable execution client: all are listed in {node.dropped.path}", EXIT_USAGE)
    node.follow_head()
    return chosen, node


def miner_keypair(
    coinbase: str | None, keystore_dir: Path | None, password_file: Path | None
) -> HybridKeyPair:
    """The key mining signs with (PoW attempts are signatures by the key the coinbase pays):
    ``--coinbase``'s keystore, else the published devnet key."""
    if coinbase:
        return mining_keypair(coinbase, keystore_dir or qoin_home() / "keystore", password_file)
    return dev_keypair()


def serving_engine(
    serve: bool, urls: list[str], secrets: list[Path], url: str | None, timeout: float
) -> EngineServer | None:
    """What ``--serve-execution`` serves (None without it): the execution client of
    ``--serve-execution-url`` (with the first secret) or of the first ``--execution``, through an
    engine client of its own (a peer's slow call never quarantines the judge's)."""
    if not serve:
        if url is not None:
            fail("--serve-execution-url is used only with --serve-execution", EXIT_USAGE)
        return None
    if url is None and not urls:
        fail("--serve-execution serves an execution client: give --execution or "
             "--serve-execution-url", EXIT_USAGE)  # fmt: skip
    if not secrets:
        fail("--serve-execution needs the execution client's --jwt-secret", EXIT_USAGE)
    try:
        secret = load_secret(secrets[0])
    except JwtError as exc:
        fail(str(exc), EXIT_USAGE)
    return EngineServer(EngineClient(url or urls[0], secret, timeout))


def start_remote(node: ConsensusNode, wanted: int, timeout: float) -> None:
    """Keep ``wanted`` remote execution nodes in use (none: nothing to do)."""
    if wanted and node.p2p is not None:
        node.remote = RemotePool(node, node.p2p, wanted, timeout)
        node.remote.start()


def start_p2p(
    node: ConsensusNode,
    home: Path,
    host: str,
    port: int,
    bootnodes: tuple[PeerAddress, ...],
    engine_server: EngineServer | None = None,
) -> P2PService:
    """Start the node's p2p service with its node key (created on first start), serving its
    execution client to peers with ``engine_server``."""
    identity = load_or_create_node_key(home / NODE_KEY_FILE)
    service = P2PService(
        NodeAccess(node),
        identity,
        host=host,
        port=port,
        bootnodes=bootnodes,
        datadir=home,
        engine_server=engine_server,
    )
    service.start()
    typer.echo(f"p2p: node {service.enode}", err=True)
    return service


def register(app: typer.Typer) -> None:
    """Add ``consensus`` to the ``qoin`` command."""
    app.command("consensus")(consensus)
