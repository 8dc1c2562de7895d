"""The storage provider daemon (docs/spec/storage.md §6): it posts its ask, serves its HTTP API,
follows the chain and acts on what happens.

* **Start**: the shard store is opened and checked; the HTTP server listens; the ask is posted (or
  updated) with the endpoint, the ML-KEM-768 encapsulation key (generated once, kept in
  ``DATADIR/kem.key``) and the public key, with a deposit that brings the ask's collateral up to
  what its capacity needs at its collateral rate (only what is missing is sent).
* **Following** (:class:`qoin.rpc.follow.Follower`): by WebSocket subscriptions to ``newHeads``
  and the actor's logs (no polling for blocks); when the node goes away the daemon says so and
  reconnects with a growing backoff, then reads the actor's logs it missed (``qoin_getLogs``).
* **Each head**: inside a period's proof window, every held shard due in that period and not yet
  proved gets its proof (the period's beacon, the challenged leaves, their paths) and the proofs go
  out batched in ``prove`` transactions; receipts are checked on later heads. At each new period
  the stored shards are reconciled with the chain (shards of ended deals deleted, shards handed to
  another provider deleted once it proves them, lost ones fetched again).
* **Events**: ``DealFormed`` naming the provider: the upload is expected; ``ShardRelisted``: a
  shard it can hold (capacity, collateral, price, no other shard of that deal) is taken, then
  rebuilt from k live shards of the other providers on a worker thread and checked against its
  committed root (:mod:`qoin.storage.provider.repair`); ``ShardLeft``/``ShardFailed`` of its own:
  the shard is served but no longer proved until another provider proves it; ``DealSettled``: its
  shards of the deal are deleted.

Every action is one line on stdout, starting with the height of the head it happened at.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

from qoin.crypto.hybrid import HybridKeyPair
from qoin.files import FileReadError, read_bounded, write_atomically
from qoin.rpc.client import RpcCallError
from qoin.rpc.follow import (
    CATCH_UP_BLOCKS,
    Follower,
    SeenLogs,
    catch_up_start,
    read_logs,
)
from qoin.rpc.serve import BackgroundServer
from qoin.storage import market
from qoin.storage.market import STORAGE_MARKET, MarketView, ShardState
from qoin.storage.params import StorageParams
from qoin.storage.provider import prover, repair
from qoin.storage.provider.server import Offer, ProviderApi, ProviderContext
from qoin.storage.provider.store import MAX_SHARD_SIZE, ShardStore, StoreError
from qoin.storage.provider.store import ShardState as Local
from qoin.wallet import CallReverted, Wallet, WalletError

KEM_FILE: Final = "kem.key"
"""The ML-KEM-768 key's 64-byte seed in the data directory (created once, mode 0600)."""
KEM_SEED_SIZE: Final = 64
ROUNDING_MARGIN: Final = 1024
"""Shor deposited beyond the capacity's collateral: each shard's collateral is rounded up."""
ASK_TIMEOUT_S: Final = 120.0
LOG_FILTER: Final = {"address": str(STORAGE_MARKET)}
"""The logs the daemon follows: all of the actor's."""

__all__ = [
    "ASK_TIMEOUT_S",
    "CATCH_UP_BLOCKS",
    "KEM_FILE",
    "KEM_SEED_SIZE",
    "LOG_FILTER",
    "ROUNDING_MARGIN",
    "Provider",
    "ProviderConfig",
    "kem_key",
    "kem_private_key",
    "print_line",
]
"""The module's public names."""


def print_line(text: str) -> None:
    """Write one line on stdout at once."""
    print(text, flush=True)


@dataclass(frozen=True)
class ProviderConfig:
    """How a provider runs (the ``qoin storage provider`` options)."""

    datadir: Path
    """Shards, index and KEM key."""
    rpc: str
    """The node's user RPC URL."""
    offer: Offer
    """Capacity, prices and collateral rate of the ask."""
    host: str = "127.0.0.1"
    """Where the HTTP API listens."""
    port: int = 0
    """Its port (0: one the system picks)."""
    announce: str | None = None
    """The endpoint posted on chain (default: the listening ``host:port``)."""
    dishonest: str | None = None
    """TEST ONLY: how to lie in proofs (:data:`qoin.storage.provider.prover.DISHONEST_MODES`)."""


def kem_key(datadir: Path) -> bytes:
    """The provider's ML-KEM-768 encapsulation key (1,184 bytes), from the seed in
    ``DATADIR/kem.key``, created at the first call."""
    return kem_private_key(datadir).public_key().public_bytes_raw()


def kem_private_key(datadir: Path) -> MLKEM768PrivateKey:
    """The provider's ML-KEM-768 decapsulation key, from the seed in ``DATADIR/kem.key``,
    created at the first call (the compute provider opens job keys sealed to it)."""
    path = datadir / KEM_FILE
    if path.exists():
        try:
            seed = read_bounded(path, KEM_SEED_SIZE, "KEM key")
        except FileReadError as exc:
            raise StoreError(str(exc)) from None
        if len(seed) != KEM_SEED_SIZE:
            raise StoreError(f"KEM key {path} is not {KEM_SEED_SIZE} bytes")
        key = MLKEM768PrivateKey.from_seed_bytes(seed)
    else:
        key = MLKEM768PrivateKey.generate()
        try:
            write_atomically(path, key.private_bytes_raw(), mode=0o600)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    return key


class Provider:
    """One provider: :meth:`start`, then :meth:`run` until a stop is asked, then :meth:`close`."""

    def __init__(
        self,
        config: ProviderConfig,
        keypair: HybridKeyPair,
        out: Callable[[str], None] = print_line,
    ) -> None:
        self.config = config
        self.keypair = keypair
        self.address = keypair.address
        self._out = out
        self.height = 0
        """The height of the last head seen."""
        self.accepting = True
        """False once the ask was cancelled (exit): no bid accepted, no shard taken."""
        self.endpoint = ""
        """The endpoint posted on chain."""
        self.store: ShardStore | None = None
        self.wallet: Wallet | None = None
        self.server: BackgroundServer | None = None
        self.view = MarketView(config.rpc, timeout=repair.FETCH_TIMEOUT_S)
        self.params = StorageParams()
        self._prover: prover.Prover | None = None
        self._period = -1
        self._seen_logs = SeenLogs()
        self._rebuilder: repair.Rebuilder | None = None

    # -- output ---------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        """One line, prefixed with the height of the last head seen."""
        self._out(f"height {self.height}: {text}")

    def ready_line(self) -> str:
        """What the daemon prints once it is up."""
        url = self.server.url.rstrip("/") if self.server is not None else "?"
        return f"storage provider {self.address} listening on {url} (ask posted)"

    # -- start and stop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, start the server and the rebuild worker, post the ask. Raises a
        :class:`~qoin.errors.QoinError` saying what failed (everything opened is closed)."""
        config = self.config
        try:
            self.wallet = Wallet(config.rpc, self.keypair)
            self.params = self.view.params()
            self.height = self._head_height()
            self.store = ShardStore.open(config.datadir, log=self.log)
            kem = kem_key(config.datadir)
            context = ProviderContext(
                keypair=self.keypair,
                chain_id=self.wallet.chain_id,
                leaf_size=self.params.leaf_size,
                store=self.store,
                market=self.view,
                offer=config.offer,
                log=self.log,
                accepting=lambda: self.accepting,
            )
            self.server = BackgroundServer(
                ProviderApi(context).app(), config.host, config.port
            ).start()
            self.endpoint = config.announce or f"{self.server.host}:{self.server.port}"
            self._post_ask(kem)
        except BaseException:
            self.close()
            raise
        self._rebuilder = repair.Rebuilder(
            self.store, self.view, self.params.leaf_size, self.address, self.log
        )
        self._prover = prover.Prover(
            self.store,
            self.view,
            self.wallet,
            self.params,
            self.rebuilder.want,
            self.log,
            self.config.dishonest,
        )

    def close(self) -> None:
        """Stop the worker and the server; close the wallet and the store."""
        if self._rebuilder is not None:
            self._rebuilder.close()
            self._rebuilder = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.wallet is not None:
            self.wallet.close()
            self.wallet = None
        self.view.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    def _head_height(self) -> int:
        try:
            return int(self._wallet().client.call("qoin_blockNumber"))
        except RpcCallError as exc:
            raise WalletError(f"cannot read the head: {exc}") from None

    def _post_ask(self, kem: bytes) -> None:
        wallet, offer = self._wallet(), self.config.offer
        existing = self.view.get_ask(self.address)
        needed = market.shard_collateral(offer.collateral, offer.capacity) + ROUNDING_MARGIN
        held = 0 if existing is None else existing.free_collateral + existing.locked_collateral
        deposit = max(0, needed - held)
        wallet.transact(
            STORAGE_MARKET,
            "ask",
            [
                offer.capacity,
                offer.price,
                offer.collateral,
                offer.retrieval_price,
                self.endpoint,
                kem,
                self.keypair.public.encode(),
            ],
            value=deposit,
            timeout=ASK_TIMEOUT_S,
        )
        self.log(
            f"ask posted: {offer.capacity} bytes at {offer.price} Shor per GiB per period, "
            f"collateral {offer.collateral} Shor per GiB, endpoint {self.endpoint}; "
            f"deposited {deposit} Shor"
        )

    @property
    def prover(self) -> prover.Prover:
        """The prover (and tracker of the transactions in flight)."""
        if self._prover is None:
            raise StoreError("the provider is not started")
        return self._prover

    @property
    def rebuilder(self) -> repair.Rebuilder:
        """The rebuild worker."""
        if self._rebuilder is None:
            raise StoreError("the provider is not started")
        return self._rebuilder

    def _wallet(self) -> Wallet:
        if self.wallet is None:
            raise WalletError("the provider is not started")
        return self.wallet

    def _store(self) -> ShardStore:
        if self.store is None:
            raise StoreError("the provider is not started")
        return self.store

    # -- following the chain ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Follow the chain until ``stop`` is set, reconnecting whenever the node goes away."""
        Follower(
            self.config.rpc,
            LOG_FILTER,
            on_head=self._on_head,
            on_log=self._on_log,
            catch_up=self._catch_up,
            log=self.log,
            name="provider",
        ).run(stop)

    def _catch_up(self) -> None:
        """Read the actor's logs missed while not connected (from a period before the last head
        seen), then act on the current head."""
        head = self._head_height()
        start = catch_up_start(self.height, head, self.params.period)
        read_logs(self._wallet().client, LOG_FILTER, start, head, self._on_log)
        self._on_head(head)

    # -- heads ----------------------------------------------------------------------------------

    def _on_head(self, height: int) -> None:
        self.height = height
        period = self.params.period_of(height)
        if period != self._period:
            self._period = period
            self._reconcile()
        self.prover.on_head(height)

    def _reconcile(self) -> None:
        """Bring the stored shards in line with the chain (see the module docstring)."""
        store = self._store()
        for row in store.shards():
            deal = self.view.get_deal(row.deal)
            if deal is None or row.shard >= len(deal.shards):
                store.delete(row.deal, row.shard)
                self.log(f"deal {row.deal} is over: deleted shard {row.shard}")
                continue
            info = deal.shards[row.shard]
            if info.provider == self.address:
                if row.state is Local.LOST:
                    self.rebuilder.want(row.deal, row.shard)
                elif row.state is Local.RELEASED:
                    store.set_state(row.deal, row.shard, Local.HELD)
            elif info.provider is not None and info.state is ShardState.ACTIVE:
                if info.leaver != self.address:
                    store.delete(row.deal, row.shard)
                    self.log(
                        f"released deal {row.deal} shard {row.shard}: {info.provider} proves it now"
                    )
            elif row.state is Local.HELD:
                store.set_state(row.deal, row.shard, Local.RELEASED)
        self.rebuilder.retry()

    # -- events ---------------------------------------------------------------------------------

    def _on_log(self, entry: dict[str, Any]) -> None:
        if not self._seen_logs.fresh(entry):
            return
        decoded = market.decode_event(entry)
        if decoded is None:
            return
        name, data = decoded
        topics = entry.get("topics")
        ours = (
            isinstance(topics, list)
            and len(topics) > 1
            and str(topics[1]).lower() == self.address.raw.hex()
        )
        if not isinstance(data, tuple):
            return
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, data, ours)

    def _deal_formed(self, data: tuple[Any, ...], ours: bool) -> None:
        deal, _cid, providers, first, end = data[:5]
        if isinstance(providers, tuple) and self.address in providers:
            shard = providers.index(self.address)
            self.log(
                f"deal {deal} formed: shard {shard} is ours for periods {first} to {end - 1}; "
                "waiting for its upload"
            )

    def _proof_accepted(self, data: tuple[Any, ...], ours: bool) -> None:
        deal, shard, period, paid = data[:4]
        store = self._store()
        if ours:
            if store.get(deal, shard) is not None:
                store.set_proved(deal, shard, period)
            self.log(f"paid {paid} Shor for deal {deal} shard {shard} period {period}")
            return
        row = store.get(deal, shard)
        if row is not None and row.state is not Local.HELD:
            store.delete(deal, shard)
            self.log(f"released deal {deal} shard {shard}: another provider proves it now")

    def _proof_missed(self, data: tuple[Any, ...], ours: bool) -> None:
        if ours:
            deal, shard, period, misses, slashed = data[:5]
            self.log(
                f"missed deal {deal} shard {shard} period {period} (misses {misses}, "
                f"{slashed} Shor slashed)"
            )

    def _proof_invalid(self, data: tuple[Any, ...], ours: bool) -> None:
        if ours:
            deal, shard, period = data[:3]
            self.log(f"proof of deal {deal} shard {shard} period {period} found invalid")

    def _shard_failed(self, data: tuple[Any, ...], ours: bool) -> None:
        if ours:
            deal, shard, slashed = data[:3]
            self.log(f"failed deal {deal} shard {shard}: {slashed} Shor slashed")
            self._release(deal, shard)

    def _shard_left(self, data: tuple[Any, ...], ours: bool) -> None:
        if ours:
            deal, shard = data[:2]
            self.log(f"left deal {deal} shard {shard}: serving it until another provider proves it")
            self._release(deal, shard)

    def _release(self, deal: int, shard: int) -> None:
        store = self._store()
        row = store.get(deal, shard)
        if row is not None and row.state is Local.HELD:
            store.set_state(deal, shard, Local.RELEASED)
        self.rebuilder.forget(deal, shard)

    def _ask_cancelled(self, data: tuple[Any, ...], ours: bool) -> None:
        if ours:
            self.accepting = False
            self.log("ask cancelled: no new bids or shards")

    def _deal_settled(self, data: tuple[Any, ...], ours: bool) -> None:
        deal = data[0]
        store = self._store()
        for row in store.shards():
            if row.deal == deal:
                store.delete(row.deal, row.shard)
                self.log(f"deal {deal} settled: deleted shard {row.shard}")
        self.rebuilder.forget(deal)

    def _deal_cancelled(self, data: tuple[Any, ...], ours: bool) -> None:
        deal = data[0]
        if any(row.deal == deal for row in self._store().shards()):
            self.log(f"deal {deal} cancelled by its client: its shards go when it settles")

    def _shard_taken(self, data: tuple[Any, ...], ours: bool) -> None:
        if ours:
            deal, shard, first_due = data[:3]
            self.log(f"took deal {deal} shard {shard}: first proof due in period {first_due}")
            self.rebuilder.want(deal, shard)

    def _shard_relisted(self, data: tuple[Any, ...], ours: bool) -> None:
        deal_id, shard, shard_size, price = data[:4]
        reason = self._cannot_take(deal_id, shard, shard_size, price)
        if reason is not None:
            self.log(f"not taking deal {deal_id} shard {shard}: {reason}")
            return
        try:
            tx_id = self._wallet().send(STORAGE_MARKET, "take", [deal_id, shard])
        except CallReverted as exc:
            self.log(f"cannot take deal {deal_id} shard {shard}: {exc.reason}")
            return
        self.prover.track(tx_id, f"take deal {deal_id} shard {shard}")
        self.log(f"taking deal {deal_id} shard {shard} (tx {tx_id[:16]})")

    def _cannot_take(self, deal_id: int, shard: int, shard_size: int, price: int) -> str | None:
        """Why this provider should not take a re-listed shard, or None."""
        if not self.accepting:
            return "leaving"
        ask = self.view.get_ask(self.address)
        deal = self.view.get_deal(deal_id)
        if ask is None or not ask.active or deal is None or shard >= len(deal.shards):
            return "no active ask, or the deal is over"
        problems = (
            (
                shard_size > MAX_SHARD_SIZE or shard_size * deal.k > repair.MAX_REBUILD_BYTES,
                "too large to rebuild here",
            ),
            (ask.used + shard_size > ask.capacity, f"no room ({ask.capacity - ask.used} left)"),
            (
                ask.free_collateral < market.shard_collateral(ask.collateral, shard_size),
                "not enough free collateral",
            ),
            (
                price < market.shard_price(ask.price, shard_size),
                f"its price {price} is below this provider's",
            ),
            (deal.shards[shard].state is not ShardState.RELISTED, "taken already"),
            (
                any(self.address in (other.provider, other.leaver) for other in deal.shards)
                or any(row.deal == deal_id for row in self._store().shards()),
                "this provider holds (or held) a shard of that deal",
            ),
        )
        return next((reason for problem, reason in problems if problem), None)


_HANDLERS: dict[str, Callable[[Provider, tuple[Any, ...], bool], None]] = {
    "DealFormed": Provider._deal_formed,
    "ProofAccepted": Provider._proof_accepted,
    "ProofMissed": Provider._proof_missed,
    "ProofInvalid": Provider._proof_invalid,
    "ShardFailed": Provider._shard_failed,
    "ShardLeft": Provider._shard_left,
    "ShardTaken": Provider._shard_taken,
    "ShardRelisted": Provider._shard_relisted,
    "AskCancelled": Provider._ask_cancelled,
    "DealSettled": Provider._deal_settled,
    "DealCancelled": Provider._deal_cancelled,
}
"""What the daemon does on each of the actor's events (data decoded; whether topic 1 names it)."""
