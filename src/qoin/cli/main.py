"""Entry point of the ``qoin`` command: one sub-command module per concept."""

from __future__ import annotations

import typer

from qoin.cli import consensus, devnet, execution, node, supply
from qoin.cli.bench import bench_app
from qoin.cli.chain import chain_app
from qoin.cli.keys import keys_app
from qoin.process import forgive_closed_output

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
consensus.register(app)


def main() -> None:
    """Run the ``qoin`` command line (an output that closes under it is no error, see
    :func:`qoin.process.forgive_closed_output`)."""
    forgive_closed_output()
    app()
