"""Rebuilding a shard from k live shards held by other providers (docs/spec/storage.md §4.3, §6).

Each source shard is fetched from its provider's HTTP API (``GET .../nodes`` then byte ranges of
whole chunks), every chunk checked against the level-c nodes and the nodes against the root the
deal commits (:func:`qoin.storage.merkle.verify_chunk_nodes`, :func:`~qoin.storage.merkle.
verify_chunk`): a provider that serves wrong bytes is simply skipped. The missing shard is then
:func:`qoin.storage.erasure.rebuild` of any k (k = 1: a copy of one replica), and must hash to its
committed root before it is stored. Every answer is bounded in size and every fetch in time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Final

import httpx

from qoin.crypto.address import Address
from qoin.crypto.hashing import HASH_SIZE
from qoin.errors import QoinError
from qoin.storage import erasure
from qoin.storage.market import DealInfo, MarketView
from qoin.storage.merkle import (
    CHUNK_SIZE,
    chunk_bounds,
    chunk_count,
    shard_root,
    verify_chunk,
    verify_chunk_nodes,
)
from qoin.storage.provider.store import ShardStore

MAX_REBUILD_BYTES: Final = 1 << 30
"""Bytes of source shards a rebuild holds in memory at most (k x shard size)."""
FETCH_RANGE: Final = 16 * CHUNK_SIZE
"""Bytes asked per range request (whole chunks)."""
FETCH_TIMEOUT_S: Final = 30.0
"""Seconds one HTTP request may take, answer included."""


class RepairError(QoinError):
    """A shard could not be fetched or rebuilt; the message says why."""


def endpoint_url(endpoint: str) -> str:
    """The base URL of a provider's ``host:port`` endpoint."""
    return endpoint if endpoint.startswith(("http://", "https://")) else f"http://{endpoint}"


def _get(
    client: httpx.Client, url: str, limit: int, headers: dict[str, str] | None = None
) -> bytes:
    """The body of ``GET url`` (at most ``limit`` bytes, within :data:`FETCH_TIMEOUT_S`)."""
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    body = bytearray()
    try:
        with client.stream("GET", url, headers=headers, timeout=FETCH_TIMEOUT_S) as response:
            if response.status_code not in (200, 206):
                raise RepairError(f"{url}: HTTP {response.status_code}")
            for piece in response.iter_bytes():
                body += piece
                if len(body) > limit:
                    raise RepairError(f"{url}: more than the {limit} bytes expected")
                if time.monotonic() > deadline:
                    raise RepairError(f"{url}: no complete answer in {FETCH_TIMEOUT_S:g} s")
    except httpx.HTTPError as exc:
        raise RepairError(f"{url}: {exc}") from None
    return bytes(body)


def fetch_shard(
    client: httpx.Client,
    endpoint: str,
    deal: int,
    index: int,
    root: bytes,
    shard_size: int,
    leaf_size: int,
) -> bytes:
    """Shard ``index`` of ``deal`` from the provider at ``endpoint``, every chunk checked against
    ``root``; :class:`RepairError` if it cannot be had or does not verify."""
    leaf_count = shard_size // leaf_size
    base = f"{endpoint_url(endpoint)}/v1/shards/{deal}/{index}"
    chunks = chunk_count(leaf_count, leaf_size)
    nodes = _get(client, f"{base}/nodes", chunks * HASH_SIZE)
    if not verify_chunk_nodes(root, nodes, leaf_count, leaf_size):
        raise RepairError(f"{base}/nodes: the nodes do not give the committed root")
    data = bytearray()
    chunk = 0
    while chunk < chunks:
        start = chunk_bounds(chunk, leaf_count, leaf_size)[0]
        last = chunk
        while (
            last + 1 < chunks
            and chunk_bounds(last + 1, leaf_count, leaf_size)[1] - start <= FETCH_RANGE
        ):
            last += 1
        end = chunk_bounds(last, leaf_count, leaf_size)[1]
        body = _get(client, base, end - start, {"range": f"bytes={start}-{end - 1}"})
        if len(body) != end - start:
            raise RepairError(f"{base}: got {len(body)} bytes of range {start}-{end - 1}")
        for number in range(chunk, last + 1):
            lo, hi = chunk_bounds(number, leaf_count, leaf_size)
            if not verify_chunk(
                nodes, number, body[lo - start : hi - start], leaf_count, leaf_size
            ):
                raise RepairError(f"{base}: chunk {number} does not verify")
        data += body
        chunk = last + 1
    return bytes(data)


def sources(deal: DealInfo, index: int, me: Address) -> list[tuple[int, Address]]:
    """Where shard ``index`` of ``deal`` can be had from, best first: (shard, provider) pairs.
    The provider that left the shard itself (it serves it until released), then every other
    shard's holder and leaver; never ``me``."""
    found: list[tuple[int, Address]] = []
    target = deal.shards[index]
    if target.leaver is not None and target.leaver != me:
        found.append((index, target.leaver))
    for other in deal.shards:
        if other.index == index:
            continue
        for holder in (other.provider, other.leaver):
            if holder is not None and holder != me:
                found.append((other.index, holder))
    return found


def rebuild_shard(
    view: MarketView,
    deal: DealInfo,
    index: int,
    leaf_size: int,
    me: Address,
    log: Callable[[str], None],
) -> tuple[bytes, list[int]]:
    """Shard ``index`` of ``deal``, from :func:`sources`: fetched whole from its leaver, or
    rebuilt from k other shards; the bytes (checked against the committed root) and the shards
    they came from. :class:`RepairError` if it cannot be had."""
    n, k, size = len(deal.shards), deal.k, deal.shard_size
    if k * size > MAX_REBUILD_BYTES:
        raise RepairError(
            f"deal {deal.deal_id}: rebuilding needs {k} x {size} bytes in memory, more than "
            f"{MAX_REBUILD_BYTES}"
        )
    found: dict[int, bytes] = {}
    with httpx.Client() as client:
        for shard, holder in sources(deal, index, me):
            if shard in found or len(found) >= k:
                continue
            ask = view.get_ask(holder)
            if ask is None or not ask.endpoint:
                continue
            root = deal.shards[shard].root
            try:
                data = fetch_shard(client, ask.endpoint, deal.deal_id, shard, root, size, leaf_size)
            except RepairError as exc:
                log(f"repair of deal {deal.deal_id} shard {index}: skipped a source: {exc}")
                continue
            if shard == index:
                return data, [index]
            found[shard] = data
    if len(found) < k:
        raise RepairError(
            f"deal {deal.deal_id} shard {index}: only {len(found)} of the {k} shards needed could "
            "be fetched"
        )
    try:
        data = erasure.rebuild(found, n, k, index)
    except erasure.ErasureError as exc:
        raise RepairError(f"deal {deal.deal_id} shard {index}: {exc}") from None
    root = shard_root(data, leaf_size)
    if root != deal.shards[index].root:
        raise RepairError(
            f"deal {deal.deal_id} shard {index}: the rebuilt shard hashes to {root.hex()[:16]}..., "
            "not its committed root"
        )
    return data, sorted(found)


class Rebuilder:
    """Rebuilds the shards a provider must hold but does not (taken ones, lost ones) on a worker
    thread of its own, one at a time; a shard that cannot be rebuilt yet stays wanted and is tried
    again at :meth:`retry` (the daemon calls it once per period)."""

    def __init__(
        self,
        store: ShardStore,
        view: MarketView,
        leaf_size: int,
        me: Address,
        log: Callable[[str], None],
    ) -> None:
        self.store, self.view, self.leaf_size, self.me, self.log = store, view, leaf_size, me, log
        self._lock = threading.Lock()
        self._wanted: set[tuple[int, int]] = set()
        self._queued: set[tuple[int, int]] = set()
        self._jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="provider rebuilds", daemon=True)
        self._thread.start()

    def want(self, deal: int, shard: int) -> None:
        """Rebuild ``(deal, shard)`` (now, and again at each :meth:`retry` until it is stored)."""
        with self._lock:
            self._wanted.add((deal, shard))
        self._queue((deal, shard))

    def forget(self, deal: int, shard: int | None = None) -> None:
        """Stop wanting one shard of ``deal``, or all of them."""
        with self._lock:
            self._wanted = {
                key
                for key in self._wanted
                if key[0] != deal or (shard is not None and key[1] != shard)
            }

    def wanted(self) -> set[tuple[int, int]]:
        """The shards still wanted."""
        with self._lock:
            return set(self._wanted)

    def retry(self) -> None:
        """Queue every shard still wanted (those not queued already)."""
        for key in self.wanted():
            self._queue(key)

    def close(self, timeout: float = FETCH_TIMEOUT_S) -> None:
        """Stop the worker once its current rebuild is done (waiting at most ``timeout``)."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _queue(self, key: tuple[int, int]) -> None:
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self._jobs.put(key)

    def _work(self) -> None:
        while True:
            key = self._jobs.get()
            if key is None:
                return
            try:
                self._rebuild(*key)
            except QoinError as exc:
                self.log(f"cannot rebuild deal {key[0]} shard {key[1]} yet: {exc}")
            finally:
                with self._lock:
                    self._queued.discard(key)

    def _rebuild(self, deal_id: int, shard: int) -> None:
        row = self.store.get(deal_id, shard)
        if row is not None and row.servable:
            self.forget(deal_id, shard)
            return
        deal = self.view.get_deal(deal_id)
        if deal is None or shard >= len(deal.shards) or deal.shards[shard].provider != self.me:
            self.forget(deal_id, shard)
            return
        started = time.monotonic()
        data, sources = rebuild_shard(self.view, deal, shard, self.leaf_size, self.me, self.log)
        self.store.put(deal_id, shard, deal.shards[shard].root, data, self.leaf_size)
        self.forget(deal_id, shard)
        self.log(
            f"rebuilt deal {deal_id} shard {shard} from shards {sources} ({len(data)} bytes in "
            f"{time.monotonic() - started:.1f} s); root checked"
        )
