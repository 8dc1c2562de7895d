"""What the provider daemons' commands share (``qoin storage provider``, ``qoin compute
provider``): their common options, the run of a daemon from its start to its stop by Ctrl-C or
SIGTERM (:func:`run_daemon`), and the commands run alone with ``python -m``
(:func:`run_alone`). Sizes and endpoints are parsed by :mod:`qoin.cli.storage_provider`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Protocol

import typer

from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail
from qoin.errors import QoinError
from qoin.process import stop_on_signals
from qoin.storage.provider.daemon import print_line

DatadirOption = Annotated[Path, typer.Option("--datadir", help="Provider data directory.")]
KeyOption = Annotated[Path, typer.Option("--key", help="The provider's keystore.")]
RpcOption = Annotated[str, typer.Option("--rpc", help="The execution client's user RPC URL.")]
PasswordFile = Annotated[Path | None, typer.Option(help="Keystore password file.")]


class Daemon(Protocol):
    """A provider daemon: :meth:`start`, :meth:`run` until a stop is asked, :meth:`close`."""

    def start(self) -> None: ...

    def run(self, stop: threading.Event) -> None: ...

    def close(self) -> None: ...


def run_daemon(
    daemon: Daemon,
    ready: Callable[[], str],
    name: str,
    usage_errors: tuple[type[QoinError], ...],
) -> None:
    """Run ``daemon`` until Ctrl-C or SIGTERM: start it (one of ``usage_errors`` exits 2, any
    other Qoin error 1), print its ready line (``ready()``), run it, close it, and say ``NAME
    stopped`` on stderr."""
    stop = threading.Event()
    with stop_on_signals(stop.set):
        try:
            daemon.start()
        except usage_errors as exc:
            fail(str(exc), EXIT_USAGE)
        except QoinError as exc:
            fail(f"cannot start the provider: {exc}", EXIT_FAILURE)
        try:
            print_line(ready())
            daemon.run(stop)
        finally:
            daemon.close()
    typer.echo(f"{name} stopped", err=True)


def run_alone(build: Callable[[typer.Typer], None]) -> None:
    """``python -m qoin.cli.MODULE``: the commands ``build`` adds to an application of their
    own (until they are wired into ``qoin``)."""
    from qoin.cli.main import THREAD_STACK  # noqa: PLC0415
    from qoin.process import forgive_closed_output  # noqa: PLC0415

    forgive_closed_output()
    threading.stack_size(THREAD_STACK)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    build(app)
    app()
