"""The built-in actors: Python code at fixed addresses, called like contracts.

Each actor lives at ``actor_address(name) = tagged_hash("QOIN/actor/v1", name)``
(:func:`qoin.execution.account.actor_address`) and is part of the protocol: every node runs the
same actors, so adding or changing one is a network upgrade. The actors today:

``names`` (:mod:`qoin.actors.names`)
    Human-readable names that resolve to a 32-byte value, bought for a term with a burnt fee.
``storage-market`` (:mod:`qoin.actors.storage_market`)
    Asks, bids and deals for file storage, paid per storage proof (docs/spec/storage.md).
``compute-market`` (:mod:`qoin.actors.compute_market`)
    Asks, mediators, bids and deals for jobs, commit-reveal of results, disputes and mediation
    (docs/spec/compute.md).

The name ``cron`` is reserved: cron calls come from ``actor_address("cron")``
(:data:`qoin.execution.cron.CRON_ADDRESS`), which has no methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from qoin.actors.compute_market import compute_market_actor
from qoin.actors.names import names_actor
from qoin.actors.storage_market import storage_market_actor
from qoin.crypto.address import Address
from qoin.execution.account import COMPUTE_MARKET_ADDRESS, STORAGE_MARKET_ADDRESS, actor_address
from qoin.execution.cron import CRON_ADDRESS
from qoin.execution.vm import Actor

ACTOR_NAMES = ("names", "storage-market", "compute-market")
"""The names of the built-in actors (each lives at ``actor_address(name)``)."""
NAMES_ADDRESS = actor_address("names")
"""Where the ``names`` actor lives."""

__all__ = [
    "ACTOR_NAMES",
    "COMPUTE_MARKET_ADDRESS",
    "CRON_ADDRESS",
    "NAMES_ADDRESS",
    "STORAGE_MARKET_ADDRESS",
    "builtin_actors",
]


@cache
def builtin_actors() -> Mapping[Address, Actor]:
    """Every built-in actor by address (built once; the mapping cannot be changed)."""
    actors: dict[Address, Actor] = {}
    for actor in (names_actor(), storage_market_actor(), compute_market_actor()):
        actors[actor_address(actor.name)] = actor
    return MappingProxyType(actors)
