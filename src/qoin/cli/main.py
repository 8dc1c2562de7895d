"""Entry point of the ``qoin`` command: one sub-command module per concept."""

from __future__ import annotations

import threading

import typer

from qoin.cli import (
    ai,
    compute,
    consensus,
    contracts,
    devnet,
    execution,
    node,
    site,
    storage,
    supply,
)
from qoin.cli.bench import bench_app
from qoin.cli.chain import chain_app
from qoin.cli.keys import keys_app
from qoin.process import forgive_closed_output
from qoin.web import server as web_server

app = typer.Typer(
    name="qoin",
    help="Qoin: a post-quantum proof-of-work blockchain node.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")
app.add_typer(chain_app, name="chain")
supply.register(app)
devnet.register(app)
node.register(app)
execution.register(app)
contracts.register(app)
consensus.register(app)
storage.register(app)
compute.register(app)
ai.register(app)
site.register(app)
web_server.register(app)


THREAD_STACK = 16 * 1024 * 1024
"""Native stack of every thread the node starts: contract calls nest 16 frames of WebAssembly,
each with up to 256 KiB of native stack (docs/spec/contracts.md §6); some platforms give threads
only 512 KiB by default."""


def main() -> None:
    """Run the ``qoin`` command line (an output that closes under it is no error, see
    :func:`qoin.process.forgive_closed_output`)."""
    forgive_closed_output()
    threading.stack_size(THREAD_STACK)
    app()
