"""``qoin devnet``: the project's main job, a local network that can be watched.

The multi-node network (consensus and execution clients over p2p) is built issue by issue. Until it
exists, this command runs the most complete thing that does, and says so: it makes two hybrid key
pairs, signs a transfer between them, round-trips it through the canonical encoding, verifies it, and
prints the issuance schedule of the main network.
"""

from __future__ import annotations

import time

import typer

from qoin.chain.issuance import MAIN_SCHEDULE, supply_info
from qoin.chain.transaction import Transaction, sign_transfer, verify_transaction_signature
from qoin.crypto.hybrid import generate_keypair


def devnet() -> None:
    """Run the local network (today: the foundation walkthrough; see the README)."""
    typer.echo("qoin devnet: the multi-node network is not built yet; running the foundation")
    typer.echo("walkthrough (keys, signed transfer, canonical encoding, issuance).\n")
    started = time.perf_counter()
    alice, bob = generate_keypair(), generate_keypair()
    typer.echo(f"alice  {alice.address}  ({alice.suite.name})")
    typer.echo(f"bob    {bob.address}")
    tx = sign_transfer(alice, chain_id=1337, nonce=0, recipient=bob.address, amount=1_000, fee=1)
    decoded = Transaction.decode(tx.encode())
    verify_transaction_signature(decoded)
    typer.echo(
        f"transfer {decoded.tx_id.hex()[:16]}… alice -> bob 1000 Shor: "
        f"{len(tx.encode())} bytes, signature verified"
    )
    for height in (1, MAIN_SCHEDULE.blocks_per_era + 1, MAIN_SCHEDULE.last_height):
        info = supply_info(MAIN_SCHEDULE, height)
        typer.echo(
            f"height {height:>11,}: era {info.era}, subsidy {info.subsidy:>9,} Shor, "
            f"supply {info.supply:,} Shor"
        )
    typer.echo(f"\ndone in {time.perf_counter() - started:.2f} s")


def register(app: typer.Typer) -> None:
    """Add ``devnet`` to the ``qoin`` command."""
    app.command("devnet")(devnet)
