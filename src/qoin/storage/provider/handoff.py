"""A provider's exit (``qoin storage provider exit``): cancel the ask, leave every shard it holds,
and wait until each is proved by another provider (which sends the leaver's locked collateral
back) or its deal ends.

The running daemon, if any, sees the ``AskCancelled`` and ``ShardLeft`` events: it stops taking
and proving, keeps serving the left shards so that their new holders can rebuild them, and deletes
each once another provider proves it. The wait follows the chain by a ``newHeads`` subscription.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.execution.abi import Value
from qoin.rpc.client import RpcCallError, RpcTimeout, subscribe
from qoin.storage.market import STORAGE_MARKET, MarketView
from qoin.storage.provider.store import read_index
from qoin.wallet import CallReverted, Wallet, WalletError

SEND_ATTEMPTS: Final = 3
"""Tries per transaction (a running daemon signing with the same key may take a nonce first)."""
CHECK_EVERY_S: Final = 1.0
"""The chain is asked about the left shards at most this often (on new heads)."""


class HandoffError(QoinError):
    """The exit could not be carried out; the message says why."""


@dataclass(frozen=True)
class HandoffResult:
    """What an exit achieved."""

    left: tuple[tuple[int, int], ...]
    """The shards (deal, shard) waited for."""
    returned: int
    """Shor of collateral that came back (free and locked)."""
    finished: bool
    """Whether every left shard was re-proved or its deal ended."""


def _transact(wallet: Wallet, method: str, args: list[Value]) -> None:
    for attempt in range(SEND_ATTEMPTS):
        try:
            wallet.transact(STORAGE_MARKET, method, args)
            return
        except CallReverted:
            raise
        except WalletError:
            if attempt == SEND_ATTEMPTS - 1:
                raise


def _collateral(view: MarketView, provider: HybridKeyPair) -> tuple[int, int]:
    ask = view.get_ask(provider.address)
    return (0, 0) if ask is None else (ask.free_collateral, ask.locked_collateral)


def leave_all(
    rpc: str,
    keypair: HybridKeyPair,
    datadir: Path,
    out: Callable[[str], None],
    stop: threading.Event,
    timeout: float | None = None,
) -> HandoffResult:
    """Cancel the ask, leave every shard the store in ``datadir`` holds for ``keypair`` on chain,
    and wait (until ``stop`` is set, or ``timeout`` seconds) for each to be re-proved."""
    me = keypair.address
    view = MarketView(rpc)
    try:
        with Wallet(rpc, keypair) as wallet:
            free, locked = _collateral(view, keypair)
            ask = view.get_ask(me)
            if ask is not None and ask.active:
                _transact(wallet, "cancel_ask", [])
                out(f"ask cancelled: {free} Shor of free collateral sent back")
            waiting: set[tuple[int, int]] = set()
            for row in read_index(datadir):
                deal = view.get_deal(row.deal)
                if deal is None or row.shard >= len(deal.shards):
                    continue
                info = deal.shards[row.shard]
                if info.provider == me:
                    _transact(wallet, "leave", [row.deal, row.shard])
                    out(f"left deal {row.deal} shard {row.shard}")
                    waiting.add(row.key)
                elif info.leaver == me:
                    waiting.add(row.key)
            left = tuple(sorted(waiting))
            finished = _wait(rpc, view, keypair, waiting, out, stop, timeout)
            after = _collateral(view, keypair)
            returned = free + locked - sum(after)
            if finished:
                out(f"all shards handed off; {returned} Shor of collateral came back")
            return HandoffResult(left, returned, finished)
    except CallReverted as exc:
        raise HandoffError(f"{exc}") from None
    except (WalletError, RpcCallError) as exc:
        raise HandoffError(str(exc)) from None
    finally:
        view.close()


def _settled(view: MarketView, keypair: HybridKeyPair, key: tuple[int, int], period: int) -> bool:
    """Whether a left shard no longer waits: re-proved (its leaver cleared) or its deal over."""
    deal = view.get_deal(key[0])
    if deal is None or key[1] >= len(deal.shards):
        return True
    return deal.shards[key[1]].leaver != keypair.address or period >= deal.end


def _wait(
    rpc: str,
    view: MarketView,
    keypair: HybridKeyPair,
    waiting: set[tuple[int, int]],
    out: Callable[[str], None],
    stop: threading.Event,
    timeout: float | None,
) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    params = view.params()
    shown = -1
    last_check = 0.0
    height = -1
    while waiting and not stop.is_set():
        if deadline is not None and time.monotonic() > deadline:
            out(f"gave up waiting after {timeout:g} s; {len(waiting)} shard(s) not re-proved yet")
            return False
        try:
            with subscribe(rpc, "newHeads") as heads:
                while waiting and not stop.is_set():
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    try:
                        head = heads.next(timeout=1.0)
                    except RpcTimeout:
                        continue
                    if isinstance(head, dict) and isinstance(head.get("height"), int):
                        height = head["height"]
                    if time.monotonic() - last_check < CHECK_EVERY_S:
                        continue
                    last_check = time.monotonic()
                    for key in sorted(waiting):
                        if _settled(view, keypair, key, params.period_of(max(height, 0))):
                            waiting.discard(key)
                            out(f"deal {key[0]} shard {key[1]} handed off")
                    if waiting and len(waiting) != shown:
                        shown = len(waiting)
                        locked = _collateral(view, keypair)[1]
                        names = ", ".join(f"{deal}/{shard}" for deal, shard in sorted(waiting))
                        out(
                            f"waiting for {shown} shard(s) to be proved by other providers: "
                            f"{names} (locked collateral {locked} Shor)"
                        )
        except RpcCallError as exc:
            out(f"lost the node ({exc}); reconnecting")
            stop.wait(1.0)
    return not waiting
