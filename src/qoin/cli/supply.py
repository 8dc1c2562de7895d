"""``qoin supply``: the block subsidy and total supply at a height.

Usage::

    qoin supply --height H [--block-time-ms MS] [--json]

Plain output is a few readable lines with thousands separators; ``--json`` prints one JSON object
with the keys ``height``, ``era``, ``subsidy``, ``mined``, ``supply``, ``era_budget``,
``blocks_per_era``, ``block_time_ms`` and ``cap`` (``era`` is ``null`` at genesis and
``ERA_COUNT`` after the last era). Out-of-range input prints a message on stderr and exits with
status 2.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from qoin.chain.issuance import (
    ERA_COUNT,
    MAIN_BLOCK_TIME_MS,
    SUPPLY_CAP,
    IssuanceError,
    SupplyInfo,
    schedule_for_block_time,
    supply_info,
)

USAGE_ERROR_EXIT = 2
"""Exit status for bad input, the same as a command-line usage error."""


def supply_json(info: SupplyInfo, block_time_ms: int) -> dict[str, int | None]:
    """Return the JSON object printed by ``qoin supply --json``."""
    return {
        "height": info.height,
        "era": info.era,
        "subsidy": info.subsidy,
        "mined": info.mined,
        "supply": info.supply,
        "era_budget": info.era_budget,
        "blocks_per_era": info.blocks_per_era,
        "block_time_ms": block_time_ms,
        "cap": SUPPLY_CAP,
    }


def describe_era(era: int | None) -> str:
    """Return a human-readable description of an era index from :func:`era_of`."""
    if era is None:
        return "genesis (no era)"
    if era == ERA_COUNT:
        return f"after the last era (all {ERA_COUNT} eras complete)"
    return f"{era} of {ERA_COUNT} (0..{ERA_COUNT - 1})"


def percent_of_cap(supply: int) -> str:
    """Return ``supply`` as a percentage of the cap with six decimals, computed exactly."""
    millionths = supply * 100 * 10**6 // SUPPLY_CAP
    return f"{millionths // 10**6}.{millionths % 10**6:06d}%"


def supply_lines(info: SupplyInfo, block_time_ms: int) -> list[str]:
    """Return the plain-text lines printed by ``qoin supply``."""
    return [
        f"height:          {info.height:,}",
        f"era:             {describe_era(info.era)}",
        f"era budget:      {info.era_budget:,} Shor",
        f"blocks per era:  {info.blocks_per_era:,} (block time {block_time_ms:,} ms)",
        f"block subsidy:   {info.subsidy:,} Shor",
        f"mined:           {info.mined:,} Shor",
        f"supply:          {info.supply:,} Shor ({percent_of_cap(info.supply)} of the cap)",
        f"cap:             {SUPPLY_CAP:,} Shor",
    ]


def supply(
    height: Annotated[int, typer.Option("--height", help="Block height (0 is genesis).")],
    block_time_ms: Annotated[
        int,
        typer.Option("--block-time-ms", help="Target block time in milliseconds."),
    ] = MAIN_BLOCK_TIME_MS,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of text.")
    ] = False,
) -> None:
    """Show the block subsidy, era and total supply at a height."""
    try:
        schedule = schedule_for_block_time(block_time_ms)
        info = supply_info(schedule, height)
    except IssuanceError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=USAGE_ERROR_EXIT) from None
    if as_json:
        typer.echo(json.dumps(supply_json(info, block_time_ms)))
    else:
        typer.echo("\n".join(supply_lines(info, block_time_ms)))


def register(app: typer.Typer) -> None:
    """Add the ``supply`` command to ``app``."""
    app.command("supply")(supply)
