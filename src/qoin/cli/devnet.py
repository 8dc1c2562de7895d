"""``qoin devnet``: the project's main job, a local network that mines and can be watched.

The multi-node network (consensus and execution clients over p2p) is built issue by issue. Until it
exists this command runs the most complete thing that does, and says so: one miner with a fresh hybrid
key mines a chain of headers in memory with the multi-process PQC-PoW miner on every core, checks
every sealed header (proof-of-work, ASERT target, timestamp rules) and prints a line per new head
with the attempts per second. Ctrl-C stops it within about one attempt.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Annotated

import typer

from qoin.chain.block import Header
from qoin.crypto.hashing import HASH_SIZE
from qoin.crypto.hybrid import HybridKeyPair, HybridSignature, generate_keypair
from qoin.pow.difficulty import Anchor, DifficultyParams, asert_target, check_timestamp
from qoin.pow.miner import Miner, Template
from qoin.pow.proof import (
    DEFAULT_NBITS,
    max_target,
    placeholder_proof,
    verify_header_pow,
)

DEVNET_CHAIN_ID = 1337
ATTEMPTS_PER_CORE_GUESS = 250
"""Starting difficulty assumes about this many attempts per second per core; ASERT corrects it."""


def _header(
    keypair: HybridKeyPair, parent: Header | None, timestamp_ms: int, target: int
) -> Header:
    return Header(
        chain_id=DEVNET_CHAIN_ID,
        height=0 if parent is None else parent.height + 1,
        parent_hash=bytes(HASH_SIZE) if parent is None else parent.block_hash,
        timestamp_ms=timestamp_ms,
        nbits=DEFAULT_NBITS,
        target=target,
        transactions_root=bytes(HASH_SIZE),
        siblings_root=bytes(HASH_SIZE),
        state_root=bytes(HASH_SIZE),
        receipts_root=bytes(HASH_SIZE),
        coinbase=keypair.address,
        miner=keypair.public,
        pow_r=bytes(32),
        pow_nonce=bytes(HASH_SIZE),
        pow_proof=placeholder_proof(keypair.suite),
    )


def devnet(
    blocks: Annotated[int, typer.Option(help="Stop after this many blocks (0: until Ctrl-C).")] = 0,
    block_time_ms: Annotated[int, typer.Option(help="Target block time.", min=100)] = 3_000,
    workers: Annotated[
        int | None, typer.Option(help="Miner processes (default: one per core).", min=1)
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary at the end.")
    ] = False,
) -> None:
    """Mine a local chain and watch it (today: one miner, headers only; see the README)."""
    keypair = generate_keypair()
    miner = Miner(keypair, workers)
    params = DifficultyParams(
        block_time_ms=block_time_ms,
        halflife_ms=20 * block_time_ms,
        max_target=max_target(DEFAULT_NBITS),
        max_future_drift_ms=max(15_000, 2 * block_time_ms),
    )
    expected = ATTEMPTS_PER_CORE_GUESS * miner.workers * block_time_ms // 1000
    genesis = _header(keypair, None, int(time.time() * 1000), (1 << 64) // max(1, expected))
    anchor = Anchor(0, genesis.timestamp_ms, genesis.target)
    chain = [genesis]
    typer.echo(
        "qoin devnet: single miner, in-memory header chain (the multi-node devnet comes with "
        "the p2p issue)",
        err=True,
    )
    typer.echo(f"miner {keypair.address} on {miner.workers} processes; Ctrl-C stops", err=True)
    started = time.monotonic()
    try:
        with miner:
            while blocks == 0 or len(chain) <= blocks:
                parent = chain[-1]
                now = int(time.time() * 1000)
                ancestors = [h.timestamp_ms for h in chain[-11:]]
                timestamp = max(now, max(ancestors) + 1)
                target = asert_target(params, anchor, parent.height, parent.timestamp_ms)
                template = _header(keypair, parent, timestamp, target)
                miner.set_template(
                    Template(template.height, template.pow_prefix, DEFAULT_NBITS, target)
                )
                solution = None
                while solution is None or solution.template_id != template.height:
                    # a solution for an older template (two workers won at once) is dropped
                    solution = miner.next_solution(timeout=0.5)
                sealed = replace(
                    template,
                    pow_r=solution.r,
                    pow_nonce=solution.nonce,
                    pow_proof=HybridSignature.decode(solution.proof),
                )
                verify_header_pow(sealed, target)
                check_timestamp(params, sealed.timestamp_ms, ancestors, int(time.time() * 1000))
                chain.append(sealed)
                spacing = (sealed.timestamp_ms - parent.timestamp_ms) / 1000
                typer.echo(
                    f"new head height={sealed.height} hash={sealed.block_hash.hex()[:16]} "
                    f"spacing={spacing:.2f}s difficulty={(1 << 64) / (target + 1):,.0f} "
                    f"attempts/s={miner.attempts_per_second():,.0f}"
                )
    except KeyboardInterrupt:
        typer.echo("stopping (Ctrl-C)", err=True)
    elapsed = time.monotonic() - started
    summary = {
        "height": chain[-1].height,
        "head": chain[-1].block_hash.hex(),
        "blocks": len(chain) - 1,
        "seconds": round(elapsed, 2),
        "attempts": miner.attempts,
        "mean_block_time_s": round(elapsed / max(1, len(chain) - 1), 3),
    }
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"stopped at height={summary['height']} after {summary['seconds']} s", err=True)


def register(app: typer.Typer) -> None:
    """Add ``devnet`` to the ``qoin`` command."""
    app.command("devnet")(devnet)
