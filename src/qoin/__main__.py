"""``python -m qoin`` is the ``qoin`` command."""

from qoin.cli.main import main

main()
