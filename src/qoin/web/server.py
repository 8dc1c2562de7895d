"""``qoin web``: serve the web UI (:func:`qoin.web.app.create_app`) on 127.0.0.1 until SIGINT or
SIGTERM, printing ``web UI: http://127.0.0.1:PORT/`` once it accepts connections. ``qoin node``
and each devnet node start it as a supervised child (:func:`web_args`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from qoin.cli.common import EXIT_USAGE, fail
from qoin.process import stop_on_signals
from qoin.rpc.serve import BackgroundServer, HttpLimits, ServeError

READY = r"web UI: (http://\S+)"
"""The line ``qoin web`` prints once it serves (a pattern, for supervisors and tests)."""
WEBSOCKET_MAX_FRAME = 64 * 1024
"""The largest WebSocket message a page may send (pages only listen)."""
LIMITS = HttpLimits(max_connections=64, idle_timeout=60.0)


def web_args(
    rpc: str,
    consensus_rpc: str | None,
    port: int,
    keystore_dir: Path,
    datadir: Path,
) -> list[str]:
    """The ``qoin`` arguments that start the UI for a node."""
    args = ["web", "--rpc", rpc, "--port", str(port), "--keystore-dir", str(keystore_dir)]
    args += ["--datadir", str(datadir)]
    return args + (["--consensus-rpc", consensus_rpc] if consensus_rpc else [])


def web(
    rpc: Annotated[
        str, typer.Option(help="The node's user JSON-RPC URL.")
    ] = "http://127.0.0.1:8645/",
    consensus_rpc: Annotated[
        str | None,
        typer.Option(help="The consensus client's JSON-RPC URL (mining and network pages)."),
    ] = None,
    port: Annotated[
        int, typer.Option(help="Port on 127.0.0.1 (0: any free port).", min=0, max=65535)
    ] = 8680,
    keystore_dir: Annotated[
        Path | None, typer.Option(help="Wallet keystores (default $QOIN_HOME/keystore).")
    ] = None,
    datadir: Annotated[
        Path | None, typer.Option(help="The UI's data directory (default $QOIN_HOME/web).")
    ] = None,
) -> None:
    """Serve the web UI (explorer, wallet, storage, compute, sites, mining) on 127.0.0.1."""
    from qoin.cli.node import qoin_home  # noqa: PLC0415 (the node's CLI imports us)
    from qoin.web.app import create_app  # noqa: PLC0415 (jinja2 and the pages: only here)
    from qoin.web.ui import WebConfig  # noqa: PLC0415

    home = qoin_home()
    config = WebConfig(
        rpc=rpc,
        consensus_rpc=consensus_rpc,
        keystore_dir=keystore_dir or home / "keystore",
        datadir=datadir or home / "web",
    )
    try:
        config.datadir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot use data directory {config.datadir}: {exc.strerror}", EXIT_USAGE)
    app = create_app(config)
    done = threading.Event()
    try:
        with (
            BackgroundServer(
                app, config.host, port, LIMITS, websocket_max_frame=WEBSOCKET_MAX_FRAME
            ) as server,
            stop_on_signals(done.set),
        ):
            typer.echo(f"web UI: {server.url}")
            done.wait()
    except ServeError as exc:
        fail(f"{exc} (another UI there? try --port 0)", EXIT_USAGE)
    finally:
        app.state.ui.close()


def register(app: typer.Typer) -> None:
    """Add ``web`` to the ``qoin`` command."""
    app.command("web")(web)
