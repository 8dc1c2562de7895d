"""``qoin devnet``: the project's main job, a local network that mines and can be watched.

The multi-node network (consensus and execution clients over p2p) is built issue by issue. Until it
exists this command runs the most complete thing that does, and says so: one dev node (real blocks,
full validation, GHOST fork choice, crash-safe storage in a fresh data directory) mining with the
multi-process PQC-PoW miner on every core, printing a line per new head with attempts per second.
With ``--blocks K`` it stops after K mined blocks and can print a JSON summary; Ctrl-C stops it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from qoin.chain import genesis as genesis_mod
from qoin.chain.chain import Chain
from qoin.cli.common import stop_on_signals
from qoin.cli.node import dev_keypair
from qoin.node.mining import MinedBlock, MiningLoop


def devnet(
    blocks: Annotated[int, typer.Option(help="Stop after this many blocks (0: until Ctrl-C).")] = 0,
    block_time_ms: Annotated[int, typer.Option(help="Target block time.", min=100)] = 2_000,
    workers: Annotated[
        int | None, typer.Option(help="Miner processes (default: one per core).", min=1)
    ] = None,
    datadir: Annotated[
        Path | None, typer.Option(help="Keep the chain here (default: a fresh temporary dir).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary at the end.")
    ] = False,
) -> None:
    """Run the local network (today: one mining dev node; see the README)."""
    obj = genesis_mod.builtin_json("devnet")
    obj["timestamp_ms"] = int(time.time() * 1000)
    obj["block_time_ms"] = block_time_ms
    genesis = genesis_mod.from_json(obj)
    with tempfile.TemporaryDirectory(prefix="qoin-devnet-") as tmp:
        home = datadir or Path(tmp)
        chain = Chain.open(home, genesis)
        loop = MiningLoop(chain, dev_keypair(), workers)
        typer.echo(
            "qoin devnet: one mining dev node (the multi-node devnet comes with the p2p issue); "
            f"{loop.miner.workers} miner processes; Ctrl-C stops",
            err=True,
        )
        side_blocks = reorgs = 0
        started = time.monotonic()

        def report(mined: MinedBlock) -> None:
            nonlocal side_blocks, reorgs
            header = mined.block.header
            side_blocks += 0 if mined.result.head_changed else 1
            reorgs += 1 if mined.result.reorg_depth else 0
            typer.echo(
                f"{'new head' if mined.result.head_changed else 'side block'} "
                f"height={header.height} hash={header.block_hash.hex()[:16]} "
                f"siblings={len(mined.block.siblings)} attempts/s={mined.attempts_per_second:,.0f}"
            )

        mined = 0
        try:
            with stop_on_signals(loop.stop) as received:
                mined = loop.run(report, lambda message: typer.echo(message, err=True), blocks)
            if received:
                typer.echo("stopping (signal)", err=True)
        finally:
            loop.miner.stop()
            head = chain.head_header
            summary = {
                "height": head.height,
                "head": head.block_hash.hex(),
                "blocks_mined": mined,
                "side_blocks": side_blocks,
                "reorgs": reorgs,
                "seconds": round(time.monotonic() - started, 2),
                "attempts": loop.miner.attempts,
            }
            chain.close()
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"stopped at height={summary['height']} after {summary['seconds']} s", err=True)


def register(app: typer.Typer) -> None:
    """Add ``devnet`` to the ``qoin`` command."""
    app.command("devnet")(devnet)
