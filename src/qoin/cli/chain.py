"""``qoin chain``: import, export and inspect a node's block store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from qoin.chain import genesis as genesis_mod
from qoin.chain.blockfile import read_blocks, write_blocks
from qoin.chain.chain import Chain
from qoin.chain.forkchoice import get_weight
from qoin.chain.store import StoreError
from qoin.chain.validation import InvalidBlock
from qoin.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, print_json
from qoin.encoding.codec import DecodeError
from qoin.files import write_atomically

chain_app = typer.Typer(help="Import, export and inspect the block store.", no_args_is_help=True)

Datadir = Annotated[Path, typer.Option(help="Data directory of the node.")]
GenesisFile = Annotated[
    Path | None, typer.Option("--genesis", help="Genesis file (default: DATADIR/genesis.json).")
]


def save_genesis_file(datadir: Path, data: bytes) -> None:
    """Write ``DATADIR/genesis.json`` atomically (a crash leaves the old file or the whole new one,
    never a truncated one that would make the datadir unusable without ``--genesis``)."""
    write_atomically(datadir / "genesis.json", data)


def open_chain(datadir: Path, genesis_file: Path | None) -> Chain:
    """Open a datadir's chain; the genesis comes from ``--genesis`` or ``DATADIR/genesis.json``."""
    path = genesis_file or datadir / "genesis.json"
    try:
        genesis = genesis_mod.load_file(path)
        if genesis_file is not None and not (datadir / "genesis.json").exists():
            save_genesis_file(datadir, genesis_file.read_bytes())
        return Chain.open(datadir, genesis)
    except (genesis_mod.GenesisError, StoreError, OSError) as exc:
        fail(str(exc), EXIT_USAGE)


@chain_app.command("import")
def chain_import(
    blocks_file: Annotated[Path, typer.Argument(help="Block file to import.")],
    datadir: Datadir,
    genesis: GenesisFile = None,
) -> None:
    """Import blocks; print `ACK <hash>` once each block is durably stored."""
    chain = open_chain(datadir, genesis)
    imported = 0
    try:
        with blocks_file.open("rb") as handle:
            for block in read_blocks(handle):
                result = chain.import_block(block)
                for block_hash in result.connected:
                    sys.stdout.write(f"ACK {block_hash.hex()} head={result.head.hex()}\n")
                    imported += 1
                sys.stdout.flush()
    except OSError as exc:
        fail(f"cannot read {blocks_file}: {exc.strerror}", EXIT_USAGE)
    except DecodeError as exc:
        fail(f"{blocks_file}: {exc}", EXIT_USAGE)
    except InvalidBlock as exc:
        fail(f"invalid block: {type(exc).__name__}: {exc}", EXIT_FAILURE)
    finally:
        chain.close()
    typer.echo(f"imported {imported} blocks", err=True)


@chain_app.command("export")
def chain_export(
    out: Annotated[Path, typer.Argument(help="Block file to write.")],
    datadir: Datadir,
    genesis: GenesisFile = None,
) -> None:
    """Write the canonical chain (without genesis) to a block file."""
    chain = open_chain(datadir, genesis)
    try:
        height = chain.head_header.height
        with out.open("wb") as handle:
            count = write_blocks(
                handle,
                (
                    block
                    for h in range(1, height + 1)
                    if (block_hash := chain.store.canonical_hash(h)) is not None
                    and (block := chain.store.get_block(block_hash)) is not None
                ),
            )
    finally:
        chain.close()
    typer.echo(f"exported {count} blocks", err=True)


@chain_app.command("status")
def chain_status(
    datadir: Datadir,
    genesis: GenesisFile = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Head, height, total work and block counts of a datadir."""
    chain = open_chain(datadir, genesis)
    try:
        head = chain.head_header
        info = {
            "network": chain.genesis.network,
            "genesis": chain.genesis.genesis_hash.hex(),
            "head": head.block_hash.hex(),
            "height": head.height,
            "blocks": chain.store.block_count(),
            "genesis_weight": get_weight(chain.forks, chain.genesis.genesis_hash),
        }
    finally:
        chain.close()
    if json_out:
        print_json(info)
    else:
        typer.echo("\n".join(f"{k}: {v}" for k, v in info.items()))
