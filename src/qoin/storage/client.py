"""The storage client (docs/spec/storage.md): store a file, list, inspect and cancel deals.

``put`` (:func:`put`) reads a file (at most :data:`MAX_PUT_SIZE` bytes), encrypts it under the
keystore's master key (:mod:`qoin.storage.crypt`, unless told not to), cuts it into n shards of
which any k rebuild it (:mod:`qoin.storage.erasure`), commits each shard by its tree root and the
whole by the content id (:mod:`qoin.storage.merkle`), then:

1. picks n distinct active asks, cheapest first, that have room and free collateral for one shard
   and ask at most the client's price (:func:`plan`), plus up to n spares;
2. places the bid (the deposit pays the whole term at the bid's ``max_price``);
3. asks each chosen provider to accept its shard (``POST /v1/accept``), checking every signed
   acceptance itself; a provider that declines, does not answer or signs wrongly is replaced by
   the next spare;
4. forms the deal (the part of the deposit over the term's real cost comes back at once);
5. uploads every shard in parallel (``PUT /v1/shards/{deal}/{i}``, signed by the client), retrying
   a connection error or a provider whose node has not seen the deal yet a few times.

Money is never lost silently: a deal that cannot form gets its bid cancelled (the deposit back at
once), and :class:`DealNotFormed` says so (or, if even the cancel fails, when the bid expires and
refunds itself). Retrieval is :mod:`qoin.storage.retrieve`.

``ls`` (:func:`client_deals`) finds a client's deals and bids from the actor's ``DealFormed`` and
``BidPlaced`` events (topic 1 = client) and reads each one's current state; ``status``
(:func:`content_status`) describes one content id's deal shard by shard, with its deadlines;
``cancel`` (:func:`cancel`) cancels its deal, or its open bid.

Progress is reported through :class:`Progress` (the CLI shows rich bars; :data:`NO_PROGRESS`
shows nothing).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import httpx

from qoin.crypto import hybrid
from qoin.crypto.address import Address, AddressError
from qoin.crypto.hybrid import HybridKeyPair, HybridSignature
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.execution.abi import Value, decode_value
from qoin.execution.events import MAX_LOG_RANGE
from qoin.rpc.client import RpcCallError, RpcClient
from qoin.rpc.follow import logs_between
from qoin.storage import crypt, erasure, market, merkle
from qoin.storage.market import STORAGE_MARKET, AskInfo, BidInfo, DealInfo, MarketView, ShardState
from qoin.storage.params import StorageParams
from qoin.wallet import CallReverted, Wallet, WalletError

MAX_PUT_SIZE: Final = 1 << 30
"""The largest file ``put`` stores (1 GiB), checked before it is read."""
MIN_SHARDS: Final = 2
MAX_SHARDS: Final = 16
"""n, the shards of a file: 2 to 16 (docs/spec/storage.md §2)."""
DEFAULT_SHARDS: Final = 2
DEFAULT_NEEDED: Final = 1
DEFAULT_DURATION: Final = 720
"""Periods a deal lasts by default (30 days at mainnet's one-hour period)."""
DEFAULT_DEADLINE_BLOCKS: Final = 100
"""Blocks the bid stays open by default (at most the network's ``max_bid_blocks``)."""
FLAG_ENCRYPTED: Final = 1
"""Bit 0 of a bid's flags: the stored bytes are encrypted (``get`` decrypts them)."""

HTTP_CONNECT_S: Final = 10.0
"""Seconds to connect to a provider."""
HTTP_ANSWER_S: Final = 30.0
"""Seconds a provider may take to answer an acceptance request (it reads the chain)."""
UPLOAD_IO_S: Final = 120.0
"""Seconds an upload may go without progress either way (the provider hashes and fsyncs the
shard before it answers)."""
UPLOAD_ATTEMPTS: Final = 6
"""Tries of one upload before it is given up (connection errors, a provider whose node lags)."""
UPLOAD_BACKOFF_S: Final = 0.5
"""The wait before the second try; it doubles after each further failure."""
UPLOAD_PIECE: Final = 65_536
"""Bytes per piece of an upload body (the progress bar moves by these)."""
RETRY_STATUSES: Final = frozenset({404, 409, 425, 429, 500, 502, 503, 504})
"""Upload answers worth another try: the provider's node has not seen the deal yet (404), an
upload of the shard is in flight (409), the provider is busy or cannot read its node (5xx)."""
MAX_JSON_ANSWER: Final = 64 * 1024
"""The largest JSON answer read from a provider."""
MAX_LOG_QUERIES: Final = 1_000
"""Log queries of :data:`MAX_LOG_RANGE` blocks one listing makes at most (10 M blocks)."""
PAYMENT_LOG_QUERIES: Final = 20
"""Log queries ``status`` spends at most to add up a deal's payments (else it shows none)."""
SETTLE_GAS: Final = 3_000_000
"""Gas added to ``cancel_deal``'s estimate: the estimate runs on the head, and if the deal's
last check runs before the transaction is mined the cancel settles the deal, which costs more
(up to ~2.8 M gas for 16 shards). Only the gas used is paid."""
RECEIPT_TIMEOUT_S: Final = 120.0
"""Seconds to wait for each transaction's receipt."""

_ENDPOINT = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}")


class StorageClientError(QoinError):
    """A storage client operation that cannot go on; the message says why and what to do."""


class NoMatchingAsks(StorageClientError):
    """Fewer active asks than shards can take them at the price."""


class DealNotFormed(StorageClientError):
    """The bid was placed but no deal formed; the message says where the deposit went."""


class NotFound(StorageClientError):
    """No open deal or bid stores the content id."""


class BadOptions(StorageClientError):
    """Options no deal can have (a code, or a duration the network does not allow): the command's
    input, not the market, must change."""


# -- progress --------------------------------------------------------------------------------------


class ProgressTask(Protocol):
    """One progress bar."""

    def advance(self, amount: int) -> None:
        """``amount`` more units are done."""

    def reset(self) -> None:
        """Start over (a retried upload)."""

    def done(self, note: str = "") -> None:
        """The task ended (``note`` says how, when it did not succeed)."""


class Progress(Protocol):
    """Where the client reports what it is doing."""

    def task(self, description: str, total: int) -> ProgressTask:
        """A new bar of ``total`` units."""


class _NoTask:
    def advance(self, amount: int) -> None:
        """Nothing."""

    def reset(self) -> None:
        """Nothing."""

    def done(self, note: str = "") -> None:
        """Nothing."""


class NoProgress:
    """Reports nothing."""

    def task(self, description: str, total: int) -> ProgressTask:
        """A bar nobody sees."""
        return _NoTask()


NO_PROGRESS: Final = NoProgress()
"""The :class:`Progress` that shows nothing."""


# -- preparing a file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A file made ready to store: its shards, their roots and the content id."""

    plain_size: int
    """Bytes of the file as given."""
    size: int
    """Bytes stored (after encryption): the bid's ``size``."""
    flags: int
    """The bid's flags (:data:`FLAG_ENCRYPTED`)."""
    n: int
    """Shards."""
    k: int
    """Shards needed to rebuild the file."""
    leaf_size: int
    """Bytes per leaf of the shard trees."""
    shard_size: int
    """Bytes per shard."""
    shards: tuple[bytes, ...] = field(repr=False)
    """The n shards."""
    roots: tuple[bytes, ...]
    """Their tree roots."""
    cid: bytes
    """The content id (root over the shard roots)."""

    @property
    def encrypted(self) -> bool:
        """Whether the stored bytes are encrypted."""
        return bool(self.flags & FLAG_ENCRYPTED)


def check_code(n: int, k: int) -> None:
    """:class:`BadOptions` unless 2 <= n <= 16 and 1 <= k < n."""
    if not MIN_SHARDS <= n <= MAX_SHARDS:
        raise BadOptions(f"--shards is {MIN_SHARDS} to {MAX_SHARDS}, got {n}")
    if not 1 <= k < n:
        raise BadOptions(f"--needed is 1 to shards - 1 = {n - 1}, got {k}")


def check_options(options: PutOptions, params: StorageParams) -> None:
    """:class:`BadOptions` unless the network's market can take a deal with ``options``."""
    check_code(options.n, options.k)
    if not 1 <= options.duration <= params.max_duration:
        raise BadOptions(
            f"--duration is 1 to {params.max_duration} periods on this network, got "
            f"{options.duration}"
        )


def prepare(
    data: bytes,
    n: int,
    k: int,
    leaf_size: int,
    master: bytes | None,
    progress: Progress = NO_PROGRESS,
) -> Prepared:
    """Encrypt ``data`` under ``master`` (None: store it in clear), shard it, commit it."""
    check_code(n, k)
    if len(data) > MAX_PUT_SIZE:
        raise BadOptions(f"a file is at most {MAX_PUT_SIZE} bytes, got {len(data)}")
    stored_size = len(data) if master is None else crypt.encrypted_size(len(data))
    shard_size = merkle.shard_size_for(stored_size, k, leaf_size)
    work = (stored_size if master is not None else 0) + stored_size + n * shard_size
    bar = progress.task("encrypting and hashing" if master else "hashing", work)
    stored = data
    if master is not None:
        stored = crypt.encrypt(data, master)
        bar.advance(len(stored))
    shards = erasure.encode(stored, n, k, leaf_size)
    bar.advance(stored_size)
    roots: list[bytes] = []
    for index, shard in enumerate(shards):
        if k == 1 and index > 0:  # replication: every shard is the same bytes
            roots.append(roots[0])
        else:
            roots.append(merkle.ShardTree.from_bytes(shard, leaf_size).root)
        bar.advance(shard_size)
    bar.done()
    return Prepared(
        plain_size=len(data),
        size=len(stored),
        flags=FLAG_ENCRYPTED if master is not None else 0,
        n=n,
        k=k,
        leaf_size=leaf_size,
        shard_size=shard_size,
        shards=tuple(shards),
        roots=tuple(roots),
        cid=merkle.content_id(roots),
    )


# -- choosing asks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """An ask that can hold one shard, and what the shard costs there."""

    ask: AskInfo
    """The provider's ask."""
    price: int
    """Shor per period for this shard."""
    collateral: int
    """Shor of collateral the provider locks for this shard."""

    @property
    def provider(self) -> Address:
        """The provider."""
        return self.ask.provider


def matching_offers(
    asks: Sequence[AskInfo],
    shard_size: int,
    max_price: int | None,
    exclude: Collection[Address] = (),
) -> list[Offer]:
    """The asks that can take a ``shard_size``-byte shard, cheapest first (ties: by address):
    active, with room, with free collateral for it, whose shard price is at most that of
    ``max_price`` Shor per GiB per period (the actor's rule; None: any price), and not in
    ``exclude``."""
    ceiling = None if max_price is None else market.shard_price(max_price, shard_size)
    offers = []
    for ask in asks:
        collateral = market.shard_collateral(ask.collateral, shard_size)
        price = market.shard_price(ask.price, shard_size)
        if (
            ask.active
            and ask.used + shard_size <= ask.capacity
            and ask.free_collateral >= collateral
            and (ceiling is None or price <= ceiling)
            and ask.provider not in exclude
        ):
            offers.append(Offer(ask, price, collateral))
    offers.sort(key=lambda offer: (offer.price, offer.ask.price, offer.provider.raw))
    unique: dict[Address, Offer] = {}
    for offer in offers:
        unique.setdefault(offer.provider, offer)
    return list(unique.values())


@dataclass(frozen=True)
class Plan:
    """The asks a ``put`` will use and what it costs."""

    n: int
    """Shards."""
    shard_size: int
    """Bytes per shard."""
    duration: int
    """Periods."""
    chosen: tuple[Offer, ...]
    """The n cheapest offers: shard i goes to ``chosen[i]`` unless it declines."""
    spares: tuple[Offer, ...]
    """The next ones, tried in order when a chosen provider declines."""
    max_price: int
    """The bid's price limit, Shor per GiB per period."""

    @property
    def cost(self) -> int:
        """Shor the whole term costs at the chosen offers (the deal's escrow)."""
        return self.duration * sum(offer.price for offer in self.chosen)

    @property
    def deposit(self) -> int:
        """Shor the bid carries: the whole term at ``max_price`` (what is over the cost comes
        back when the deal forms)."""
        return self.n * self.duration * market.shard_price(self.max_price, self.shard_size)


def plan(
    asks: Sequence[AskInfo],
    n: int,
    shard_size: int,
    duration: int,
    max_price: int | None = None,
    spares: int | None = None,
) -> Plan:
    """Choose n offers for n shards (cheapest first) and up to ``spares`` (default n) more.
    Without ``max_price`` the bid's limit is the dearest offer chosen or spare.
    :class:`NoMatchingAsks` if fewer than n asks fit."""
    offers = matching_offers(asks, shard_size, max_price)
    if len(offers) < n:
        within = "" if max_price is None else f" at {max_price} Shor per GiB per period or less"
        raise NoMatchingAsks(
            f"{len(offers)} of the {len(asks)} active asks can hold a {shard_size}-byte shard"
            f"{within}; {n} are needed (one provider per shard): lower --shards, raise "
            "--max-price, or wait for more providers"
        )
    extra = n if spares is None else spares
    used = offers[: n + extra]
    limit = max_price if max_price is not None else max(offer.ask.price for offer in used)
    return Plan(n, shard_size, duration, tuple(used[:n]), tuple(used[n:]), limit)


def offer_json(offer: Offer) -> dict[str, Any]:
    """One offer in JSON (the dry run's rows)."""
    return {
        "provider": str(offer.provider),
        "endpoint": offer.ask.endpoint,
        "price": offer.price,
        "pricePerGib": offer.ask.price,
        "collateral": offer.collateral,
    }


@dataclass(frozen=True)
class Estimate:
    """What ``put --dry-run`` shows: the file's stored size and shards, the asks that would take
    them and the money (nothing is hashed, encrypted or sent)."""

    size: int
    """Bytes of the file."""
    stored_size: int
    """Bytes stored (after encryption)."""
    encrypted: bool
    """Whether it would be encrypted."""
    k: int
    """Shards that rebuild it."""
    plan: Plan
    """The offers chosen and spare, and the cost."""
    balance: int
    """Shor the client holds."""

    def to_json(self) -> dict[str, Any]:
        """The estimate in JSON (``put --dry-run --json``)."""
        chosen = self.plan
        return {
            "size": self.size,
            "storedSize": self.stored_size,
            "encrypted": self.encrypted,
            "n": chosen.n,
            "k": self.k,
            "shardSize": chosen.shard_size,
            "duration": chosen.duration,
            "offers": [offer_json(offer) for offer in chosen.chosen],
            "spares": [offer_json(offer) for offer in chosen.spares],
            "maxPrice": chosen.max_price,
            "cost": chosen.cost,
            "deposit": chosen.deposit,
            "balance": self.balance,
            "enough": self.balance >= chosen.deposit,
        }


def estimate(view: MarketView, size: int, options: PutOptions, balance: int) -> Estimate:
    """What storing a ``size``-byte file with ``options`` would cost and where it would go
    (:class:`NoMatchingAsks` if too few asks fit)."""
    if not 0 <= size <= MAX_PUT_SIZE:
        raise BadOptions(f"a file is at most {MAX_PUT_SIZE} bytes, got {size}")
    params = view.params()
    check_options(options, params)
    stored = crypt.encrypted_size(size) if options.encrypt else size
    shard_size = merkle.shard_size_for(stored, options.k, params.leaf_size)
    chosen = plan(view.asks(), options.n, shard_size, options.duration, options.max_price)
    return Estimate(size, stored, options.encrypt, options.k, chosen, balance)


# -- talking to providers --------------------------------------------------------------------------


def endpoint_url(endpoint: str) -> str:
    """The base URL of a provider's ``host:port`` endpoint; :class:`StorageClientError` if it is
    not one."""
    if not _ENDPOINT.fullmatch(endpoint):
        raise StorageClientError(f"provider endpoint {endpoint[:80]!r} is not host:port")
    return f"http://{endpoint}"


def _bounded_json(response: httpx.Response, what: str) -> Any:
    """A provider's JSON answer, read at most :data:`MAX_JSON_ANSWER` bytes."""
    raw = bytearray()
    for piece in response.iter_bytes():
        raw += piece
        if len(raw) > MAX_JSON_ANSWER:
            raise StorageClientError(f"{what}: answer over {MAX_JSON_ANSWER} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise StorageClientError(f"{what}: HTTP {response.status_code}, not JSON") from None


def _reason(answer: Any, status: int) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return f"HTTP {status}: {answer['error'][:300]}"
    return f"HTTP {status}"


@dataclass(frozen=True)
class Acceptance:
    """A provider's signed acceptance of one shard of a bid."""

    offer: Offer
    """The provider's offer."""
    price: int
    """The shard price it signed (Shor per period)."""
    signature: bytes
    """The encoded hybrid signature."""


def request_acceptance(
    http: httpx.Client,
    view: MarketView,
    chain_id: int,
    bid: BidInfo,
    shard: int,
    offer: Offer,
) -> Acceptance:
    """Ask ``offer``'s provider to accept ``shard`` of ``bid`` and check its signature;
    :class:`StorageClientError` saying why not."""
    url = endpoint_url(offer.ask.endpoint) + "/v1/accept"
    what = f"provider {offer.provider} ({offer.ask.endpoint})"
    try:
        with http.stream("POST", url, json={"bid": bid.bid_id, "shard": shard}) as response:
            answer = _bounded_json(response, what)
            status = response.status_code
    except httpx.HTTPError as exc:
        raise StorageClientError(f"{what} did not answer: {exc}") from None
    if status != 200:
        raise StorageClientError(f"{what} declined: {_reason(answer, status)}")
    if not isinstance(answer, dict):
        raise StorageClientError(f"{what} answered no acceptance")
    price, signature = answer.get("price"), answer.get("signature")
    if not isinstance(price, int) or isinstance(price, bool) or not isinstance(signature, str):
        raise StorageClientError(f"{what} answered no price and signature")
    if not 0 <= price <= market.shard_price(bid.max_price, bid.shard_size):
        raise StorageClientError(f"{what} asks {price} Shor per period, over the bid's limit")
    if answer.get("provider") != str(offer.provider):
        raise StorageClientError(f"{what} signed as {str(answer.get('provider'))[:80]}")
    key = view.get_key(offer.provider)
    if key is None:
        raise StorageClientError(f"{what} has no key on chain")
    try:
        raw = bytes.fromhex(signature)
        decoded = HybridSignature.decode(raw)
    except (ValueError, DecodeError):
        raise StorageClientError(f"{what} sent a malformed signature") from None
    message = market.acceptance_message(
        chain_id, bid.bid_id, shard, bid.roots[shard], bid.shard_size, price, offer.provider
    )
    if not hybrid.is_valid(key, message, decoded):
        raise StorageClientError(f"{what} sent a signature that does not sign the acceptance")
    return Acceptance(offer, price, raw)


def _body(shard: bytes, bar: ProgressTask) -> Iterator[bytes]:
    view = memoryview(shard)
    for start in range(0, len(view), UPLOAD_PIECE):
        piece = bytes(view[start : start + UPLOAD_PIECE])
        yield piece
        bar.advance(len(piece))


def upload_shard(
    http: httpx.Client,
    keypair: HybridKeyPair,
    chain_id: int,
    deal_id: int,
    index: int,
    shard: bytes,
    root: bytes,
    endpoint: str,
    bar: ProgressTask | None = None,
    attempts: int = UPLOAD_ATTEMPTS,
    backoff: float = UPLOAD_BACKOFF_S,
) -> None:
    """``PUT`` shard ``index`` of deal ``deal_id`` to the provider at ``endpoint``, signed by the
    deal's client; tried up to ``attempts`` times on connection errors and answers worth a retry
    (:data:`RETRY_STATUSES`). :class:`StorageClientError` with the last reason if it fails."""
    url = f"{endpoint_url(endpoint)}/v1/shards/{deal_id}/{index}"
    bar = bar or _NoTask()
    signature = hybrid.sign(keypair, market.upload_message(chain_id, deal_id, index, root))
    headers = {
        "content-length": str(len(shard)),
        "content-type": "application/octet-stream",
        "x-qoin-public-key": keypair.public.encode().hex(),
        "x-qoin-signature": signature.encode().hex(),
    }
    timeout = httpx.Timeout(UPLOAD_IO_S, connect=HTTP_CONNECT_S)
    reason = "not tried"
    wait = backoff
    for attempt in range(attempts):
        if attempt:
            time.sleep(wait)
            wait *= 2
            bar.reset()
        try:
            with http.stream(
                "PUT", url, content=_body(shard, bar), headers=headers, timeout=timeout
            ) as response:
                answer = _bounded_json(response, f"upload to {endpoint}")
                status = response.status_code
        except (httpx.HTTPError, StorageClientError) as exc:
            reason = str(exc) or type(exc).__name__
            continue
        if status in (200, 201):
            return
        reason = _reason(answer, status)
        if status not in RETRY_STATUSES:
            break
    raise StorageClientError(f"upload of shard {index} to {endpoint} failed: {reason}")


# -- reading the chain -----------------------------------------------------------------------------


def _head(client: RpcClient) -> int:
    try:
        height = client.call("qoin_blockNumber")
    except RpcCallError as exc:
        raise StorageClientError(f"cannot ask the node for its head: {exc}") from None
    if not isinstance(height, int) or isinstance(height, bool) or height < 0:
        raise StorageClientError(f"qoin_blockNumber answered {height!r:.80}")
    return height


def _returned_int(receipt: dict[str, Any], method: str) -> int:
    try:
        value = decode_value(bytes.fromhex(str(receipt.get("returnData") or "")))
    except (ValueError, DecodeError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool):
        raise StorageClientError(f"{method} returned {receipt.get('returnData')!r:.80}, no id")
    return value


def _events(receipt: dict[str, Any], name: str) -> list[tuple[Value, ...]]:
    """The data of the receipt's storage-market events called ``name``."""
    found = []
    for event in receipt.get("events") or []:
        if not isinstance(event, dict):
            continue
        decoded = market.decode_event(event)
        if decoded is not None and decoded[0] == name and isinstance(decoded[1], tuple):
            found.append(decoded[1])
    return found


def _topic(value: bytes | Address | int) -> str:
    if isinstance(value, Address):
        return value.raw.hex()
    if isinstance(value, int):
        return value.to_bytes(32, "big").hex()
    return value.hex()


def actor_logs(
    client: RpcClient,
    event: str,
    topics: Sequence[bytes | Address | int | None],
    start: int,
    end: int,
    max_queries: int = MAX_LOG_QUERIES,
) -> list[tuple[int, tuple[Value, ...]]]:
    """The storage market's ``event`` logs in heights ``[start, end]`` whose topics 1, 2, ... are
    ``topics`` (None: any), oldest first, as (height, decoded data); queried
    :data:`MAX_LOG_RANGE` blocks at a time, at most ``max_queries`` queries (the oldest part of a
    longer range is left out)."""
    wanted: list[Any] = [[market.event_topic(event).hex()]]
    wanted += [None if topic is None else [_topic(topic)] for topic in topics]
    log_filter = {"address": str(STORAGE_MARKET), "topics": wanted}
    found = []
    try:
        for log in logs_between(client, log_filter, start, end, max_queries):
            if log.get("removed"):
                continue
            decoded = market.decode_event(log)
            height = log.get("blockNumber")
            if (
                decoded is not None
                and decoded[0] == event
                and isinstance(decoded[1], tuple)
                and isinstance(height, int)
            ):
                found.append((height, decoded[1]))
    except RpcCallError as exc:
        raise StorageClientError(f"cannot read the market's {event} events: {exc}") from None
    return found


def _uint(value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StorageClientError(f"an event carries {value!r:.80} where a number belongs")
    return value


# -- put -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PutOptions:
    """How ``put`` stores a file."""

    n: int = DEFAULT_SHARDS
    """Shards (distinct providers)."""
    k: int = DEFAULT_NEEDED
    """Shards that rebuild the file."""
    duration: int = DEFAULT_DURATION
    """Periods the deal lasts."""
    max_price: int | None = None
    """Shor per GiB per period at most (None: the dearest ask chosen or spare)."""
    deadline_blocks: int = DEFAULT_DEADLINE_BLOCKS
    """Blocks the bid stays open (at most ``max_bid_blocks``)."""
    encrypt: bool = True
    """Encrypt under the keystore's master key."""


@dataclass(frozen=True)
class PutResult:
    """A stored file."""

    cid: bytes
    """The content id."""
    deal: int
    """The deal id (the bid's id)."""
    prepared: Prepared = field(repr=False)
    """The file's shards and roots."""
    plan: Plan
    """The asks considered and the bid's limit."""
    providers: tuple[Address, ...]
    """Shard i's provider."""
    endpoints: tuple[str, ...]
    """Shard i's provider's endpoint."""
    prices: tuple[int, ...]
    """Shard i's price per period."""
    first: int
    """The deal's first period."""
    end: int
    """The period after its last."""
    escrow: int
    """Shor held to pay the providers over the term."""
    deposit: int
    """Shor the bid carried (what was over the escrow came back when the deal formed)."""
    failed: tuple[tuple[int, str], ...]
    """(shard, reason) of every upload that failed."""

    def to_json(self) -> dict[str, Any]:
        """The result in JSON (``put --json``)."""
        return {
            "cid": self.cid.hex(),
            "deal": self.deal,
            "size": self.prepared.plain_size,
            "storedSize": self.prepared.size,
            "encrypted": self.prepared.encrypted,
            "n": self.prepared.n,
            "k": self.prepared.k,
            "shardSize": self.prepared.shard_size,
            "providers": [
                {"shard": index, "provider": str(provider), "endpoint": endpoint, "price": price}
                for index, (provider, endpoint, price) in enumerate(
                    zip(self.providers, self.endpoints, self.prices, strict=True)
                )
            ],
            "first": self.first,
            "end": self.end,
            "cost": self.escrow,
            "deposit": self.deposit,
            "refunded": self.deposit - self.escrow,
            "failedUploads": [{"shard": i, "reason": reason} for i, reason in self.failed],
        }


def _gather_acceptances(
    http: httpx.Client,
    view: MarketView,
    chain_id: int,
    bid: BidInfo,
    chosen: Plan,
) -> list[Acceptance]:
    """One acceptance per shard: shard i from ``chosen.chosen[i]``, else the next spare.
    Raises :class:`StorageClientError` listing the refusals if a shard finds no provider."""
    spares = list(chosen.spares)
    refusals: list[str] = []
    with ThreadPoolExecutor(max_workers=len(chosen.chosen)) as pool:
        first = [
            pool.submit(request_acceptance, http, view, chain_id, bid, index, offer)
            for index, offer in enumerate(chosen.chosen)
        ]
    accepted: list[Acceptance] = []
    for index, future in enumerate(first):
        try:
            accepted.append(future.result())
            continue
        except StorageClientError as exc:
            refusals.append(str(exc))
        while spares:
            try:
                accepted.append(request_acceptance(http, view, chain_id, bid, index, spares.pop(0)))
                break
            except StorageClientError as exc:
                refusals.append(str(exc))
        else:
            raise StorageClientError(
                f"no provider accepted shard {index}: " + "; ".join(refusals[-4:])
            )
    return accepted


def _abandon(wallet: Wallet, bid: BidInfo, why: str) -> DealNotFormed:
    """Cancel the open bid (its deposit comes back); the error to raise, saying what happened."""
    try:
        wallet.transact(STORAGE_MARKET, "cancel_bid", (bid.bid_id,), timeout=RECEIPT_TIMEOUT_S)
    except WalletError as exc:
        return DealNotFormed(
            f"no deal formed ({why}); cancelling bid {bid.bid_id} failed too ({exc}): its "
            f"deposit of {bid.deposit} Shor comes back in full when it expires at height "
            f"{bid.deadline}"
        )
    return DealNotFormed(
        f"no deal formed ({why}); bid {bid.bid_id} was cancelled and its deposit of "
        f"{bid.deposit} Shor refunded"
    )


def _master_key(wallet: Wallet, options: PutOptions, master: bytes | None) -> bytes | None:
    """The master key ``put`` encrypts under: ``master`` if given, else the keystore's (None:
    stored in clear)."""
    if master is not None and not options.encrypt:
        raise BadOptions("a master key was given for a file stored in clear")
    if options.encrypt and master is None:
        return crypt.master_key(wallet.keypair)
    return master


def put(
    wallet: Wallet,
    view: MarketView,
    data: bytes,
    options: PutOptions = PutOptions(),
    progress: Progress = NO_PROGRESS,
    http: httpx.Client | None = None,
    master: bytes | None = None,
) -> PutResult:
    """Store ``data`` (see the module docstring): bid, gather acceptances, form the deal, upload
    the shards. :class:`NoMatchingAsks` (nothing sent), :class:`DealNotFormed` (the bid was
    cancelled, or will expire), :class:`StorageClientError` for the rest. A failed upload does
    not raise: the deal stands and :attr:`PutResult.failed` lists it. ``master``: encrypt under
    this master key instead of the keystore's (a compute provider stores a job's outputs under
    a key derived from the job key, docs/spec/compute.md §5); only with ``options.encrypt``."""
    params = view.params()
    check_options(options, params)
    master = _master_key(wallet, options, master)
    prepared = prepare(data, options.n, options.k, params.leaf_size, master, progress)
    chosen = plan(view.asks(), options.n, prepared.shard_size, options.duration, options.max_price)
    if view.deal_of(prepared.cid) is not None:
        raise StorageClientError(
            f"an open deal stores {prepared.cid.hex()} already (qoin storage status)"
        )
    balance = wallet.balance()
    if balance < chosen.deposit:
        raise StorageClientError(
            f"the bid's deposit is {chosen.deposit} Shor (the whole term at {chosen.max_price} "
            f"Shor per GiB per period; {chosen.deposit - chosen.cost} of it comes back when the "
            f"deal forms), but {wallet.address} holds {balance}"
        )
    blocks = max(1, min(options.deadline_blocks, params.max_bid_blocks))
    deadline = _head(wallet.client) + blocks
    args: tuple[Value, ...] = (
        prepared.cid,
        prepared.size,
        prepared.shard_size,
        prepared.k,
        prepared.roots,
        options.duration,
        chosen.max_price,
        deadline,
        prepared.flags,
    )
    try:
        receipt = wallet.transact(
            STORAGE_MARKET, "bid", args, value=chosen.deposit, timeout=RECEIPT_TIMEOUT_S
        )
    except CallReverted as exc:
        raise StorageClientError(f"the bid was refused: {exc.reason}") from None
    except WalletError as exc:
        raise StorageClientError(
            f"placing the bid failed ({exc}); if it was mined after all, its deposit comes back "
            f"when it expires at height {deadline} (qoin storage ls)"
        ) from None
    bid_id = _returned_int(receipt, "bid")
    bid = view.get_bid(bid_id)
    if bid is None:
        raise StorageClientError(f"bid {bid_id} was placed but the node does not show it")
    own = http is None
    client = http or httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    )
    try:
        try:
            accepted = _gather_acceptances(client, view, wallet.chain_id, bid, chosen)
        except StorageClientError as exc:
            raise _abandon(wallet, bid, str(exc)) from None
        deal_args: tuple[Value, ...] = (
            bid_id,
            tuple(item.offer.provider for item in accepted),
            tuple(item.signature for item in accepted),
        )
        try:
            receipt = wallet.transact(STORAGE_MARKET, "deal", deal_args, timeout=RECEIPT_TIMEOUT_S)
        except WalletError as exc:
            if view.get_deal(bid_id) is None:
                raise _abandon(wallet, bid, f"the deal call failed: {exc}") from None
        deal = view.get_deal(bid_id)
        if deal is None:
            raise StorageClientError(f"deal {bid_id} formed but the node does not show it")
        failed = _upload_all(client, wallet, deal, prepared, accepted, progress)
    finally:
        if own:
            client.close()
    return PutResult(
        cid=prepared.cid,
        deal=deal.deal_id,
        prepared=prepared,
        plan=chosen,
        providers=tuple(item.offer.provider for item in accepted),
        endpoints=tuple(item.offer.ask.endpoint for item in accepted),
        prices=tuple(item.price for item in accepted),
        first=deal.first,
        end=deal.end,
        escrow=deal.escrow,
        deposit=bid.deposit,
        failed=failed,
    )


def _upload_all(
    http: httpx.Client,
    wallet: Wallet,
    deal: DealInfo,
    prepared: Prepared,
    accepted: Sequence[Acceptance],
    progress: Progress,
) -> tuple[tuple[int, str], ...]:
    """Upload every shard in parallel; (shard, reason) of those that failed."""
    failed: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        endpoint = accepted[index].offer.ask.endpoint
        bar = progress.task(f"shard {index} -> {endpoint}", prepared.shard_size)
        try:
            upload_shard(
                http,
                wallet.keypair,
                wallet.chain_id,
                deal.deal_id,
                index,
                prepared.shards[index],
                prepared.roots[index],
                endpoint,
                bar,
            )
        except StorageClientError as exc:
            bar.done("failed")
            with lock:
                failed.append((index, str(exc)))
            return
        bar.done()

    with ThreadPoolExecutor(max_workers=len(accepted)) as pool:
        list(pool.map(one, range(len(accepted))))
    return tuple(sorted(failed))


# -- ls --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DealEntry:
    """One of a client's deals, as formed and as it stands."""

    deal: int
    """The deal id."""
    cid: bytes
    """The content id."""
    formed: int
    """The height of the block that formed it."""
    providers: tuple[Address, ...]
    """The providers it was formed with."""
    first: int
    """Its first period."""
    end: int
    """The period after its last, as formed."""
    info: DealInfo | None
    """Its state now (None: settled)."""

    def to_json(self) -> dict[str, Any]:
        """The entry in JSON."""
        answer: dict[str, Any] = {
            "deal": self.deal,
            "cid": self.cid.hex(),
            "formed": self.formed,
            "state": "open" if self.info is not None else "settled",
            "providers": [str(provider) for provider in self.providers],
            "first": self.first,
            "end": self.end if self.info is None else self.info.end,
        }
        if self.info is not None:
            answer.update(
                size=self.info.size,
                n=len(self.info.shards),
                k=self.info.k,
                escrow=self.info.escrow,
                encrypted=bool(self.info.flags & FLAG_ENCRYPTED),
            )
        return answer


@dataclass(frozen=True)
class Listing:
    """A client's deals and open bids."""

    client: Address
    """The client."""
    height: int
    """The head height they were read at."""
    deals: tuple[DealEntry, ...]
    """Its deals, oldest first."""
    bids: tuple[BidInfo, ...]
    """Its open bids, oldest first."""

    def to_json(self) -> dict[str, Any]:
        """The listing in JSON (``ls --json``)."""
        return {
            "client": str(self.client),
            "height": self.height,
            "deals": [entry.to_json() for entry in self.deals],
            "bids": [bid_json(bid) for bid in self.bids],
        }


def bid_json(bid: BidInfo) -> dict[str, Any]:
    """An open bid in JSON."""
    return {
        "bid": bid.bid_id,
        "cid": bid.cid.hex(),
        "size": bid.size,
        "shardSize": bid.shard_size,
        "n": bid.n,
        "k": bid.k,
        "duration": bid.duration,
        "maxPrice": bid.max_price,
        "deadline": bid.deadline,
        "deposit": bid.deposit,
        "encrypted": bool(bid.flags & FLAG_ENCRYPTED),
    }


def _addresses(value: Value) -> tuple[Address, ...]:
    if not isinstance(value, tuple) or not all(isinstance(item, Address) for item in value):
        raise StorageClientError(f"an event carries {value!r:.80} where addresses belong")
    return tuple(item for item in value if isinstance(item, Address))


def client_deals(client: RpcClient, view: MarketView, address: Address, start: int = 0) -> Listing:
    """``address``'s deals (from its ``DealFormed`` events since height ``start``, each with its
    state now) and its open bids."""
    height = _head(client)
    deals = []
    for formed, data in actor_logs(client, "DealFormed", [address], start, height):
        if len(data) < 6 or not isinstance(data[1], bytes):
            continue
        deal_id = _uint(data[0])
        deals.append(
            DealEntry(
                deal=deal_id,
                cid=data[1],
                formed=formed,
                providers=_addresses(data[2]),
                first=_uint(data[3]),
                end=_uint(data[4]),
                info=view.get_deal(deal_id),
            )
        )
    bids = []
    for _, data in actor_logs(client, "BidPlaced", [address], start, height):
        if len(data) < 7 or _uint(data[6]) < height:  # a bid past its deadline has expired
            continue
        bid = view.get_bid(_uint(data[0]))
        if bid is not None:
            bids.append(bid)
    return Listing(address, height, tuple(deals), tuple(bids))


# -- status ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardStatus:
    """One shard of a deal (or of a bid still matching) as ``status`` shows it."""

    index: int
    """The shard index."""
    provider: Address | None
    """Its provider (None: none yet, or re-listed)."""
    endpoint: str | None
    """The provider's endpoint."""
    state: str
    """In words: matching, uploading, active, missed m of M, repairing, failed, re-listed,
    left, re-listed."""
    misses: int
    """Consecutive missed periods."""
    window: tuple[int, int] | None
    """Heights [first, last] of the next proof window it is due in (None: none due)."""
    check: int | None
    """The height at which that period is checked."""
    paid: int | None
    """Shor paid for its proofs so far (None: not counted)."""

    def to_json(self) -> dict[str, Any]:
        """The shard in JSON."""
        return {
            "shard": self.index,
            "provider": None if self.provider is None else str(self.provider),
            "endpoint": self.endpoint,
            "state": self.state,
            "misses": self.misses,
            "window": None if self.window is None else list(self.window),
            "check": self.check,
            "paid": self.paid,
        }


@dataclass(frozen=True)
class ContentStatus:
    """What the chain says about a content id: its open deal, its open bid, or its past."""

    cid: bytes
    """The content id."""
    height: int
    """The head height it was read at."""
    kind: str
    """``deal`` (an open deal), ``bid`` (an open bid, matching), ``settled``, ``cancelled`` or
    ``expired`` (a bid that formed no deal)."""
    id: int
    """The deal's or bid's id."""
    client: Address | None
    """The client (None when only events were found)."""
    size: int
    """Bytes stored."""
    shard_size: int
    """Bytes per shard."""
    n: int
    """Shards."""
    k: int
    """Shards that rebuild it."""
    encrypted: bool
    """Whether the stored bytes are encrypted."""
    first: int
    """The deal's first period (a bid: 0)."""
    end: int
    """The period after its last (a bid: 0)."""
    escrow: int
    """Shor left to pay providers (a bid: its deposit; past: the last refund)."""
    deadline: int
    """A bid's deadline height (a deal: 0)."""
    next_check: int | None
    """The next height at which the cron checks the deal's proofs."""
    shards: tuple[ShardStatus, ...]
    """Shard by shard."""

    def to_json(self) -> dict[str, Any]:
        """The status in JSON (``status --json``)."""
        return {
            "cid": self.cid.hex(),
            "height": self.height,
            "kind": self.kind,
            "id": self.id,
            "client": None if self.client is None else str(self.client),
            "size": self.size,
            "shardSize": self.shard_size,
            "n": self.n,
            "k": self.k,
            "encrypted": self.encrypted,
            "first": self.first,
            "end": self.end,
            "escrow": self.escrow,
            "deadline": self.deadline,
            "nextCheck": self.next_check,
            "shards": [shard.to_json() for shard in self.shards],
        }


def shard_words(
    state: ShardState, misses: int, taken: bool, left: bool, params: StorageParams
) -> str:
    """A shard's state in words (docs/spec/storage.md §4.3's table): ``taken``: its provider
    took it after the deal formed (a repair); ``left``: a provider left it. A shard not proved
    yet whose provider missed periods says so too (it fails at ``max_misses``)."""
    missed = f"missed {misses} of {params.max_misses}"
    if state == ShardState.PENDING:
        pending = "repairing" if taken else "uploading"
        return f"{pending}, {missed}" if misses else pending
    if state == ShardState.ACTIVE:
        return missed if misses else "active"
    return "left, re-listed" if left else "failed, re-listed"


def next_due(
    first_due: int, last_proved: int, end: int, params: StorageParams, height: int
) -> int | None:
    """The period a shard must next be proved for, at ``height`` (None: none before ``end``):
    the current one while its window is open and it is not proved yet, else the next."""
    current = params.period_of(height)
    due = max(first_due, current)
    if due == current and (last_proved >= current + 1 or height > params.window_end(current)):
        due = current + 1
    return due if due < end else None


def _payments(
    client: RpcClient, deal: DealInfo, params: StorageParams, height: int
) -> dict[int, int] | None:
    start = params.period_start(deal.first)
    if start > height:
        return {}
    if (height - start) // MAX_LOG_RANGE + 1 > PAYMENT_LOG_QUERIES:
        return None
    paid: dict[int, int] = {}
    for _, data in actor_logs(client, "ProofAccepted", [None, deal.deal_id], start, height):
        if len(data) >= 4:
            shard = _uint(data[1])
            paid[shard] = paid.get(shard, 0) + _uint(data[3])
    return paid


def _endpoint(view: MarketView, provider: Address | None) -> str | None:
    if provider is None:
        return None
    ask = view.get_ask(provider)
    return None if ask is None else ask.endpoint


def deal_status(
    client: RpcClient, view: MarketView, deal: DealInfo, params: StorageParams, height: int
) -> ContentStatus:
    """An open deal's status."""
    paid = _payments(client, deal, params, height)
    shards = []
    for shard in deal.shards:
        relisted = shard.state == ShardState.RELISTED
        due = (
            None
            if relisted
            else next_due(shard.first_due, shard.last_proved, deal.end, params, height)
        )
        shards.append(
            ShardStatus(
                index=shard.index,
                provider=shard.provider,
                endpoint=_endpoint(view, shard.provider),
                state=shard_words(
                    shard.state,
                    shard.misses,
                    taken=shard.first_due > deal.first,
                    left=shard.leaver is not None,
                    params=params,
                ),
                misses=shard.misses,
                window=None
                if due is None
                else (params.period_start(due) + 1, params.window_end(due)),
                check=None if due is None else params.check_height(due),
                paid=None if paid is None else paid.get(shard.index, 0),
            )
        )
    current = params.period_of(height)
    check = params.check_height(current)
    if height >= check:
        check = params.check_height(current + 1)
    return ContentStatus(
        cid=deal.cid,
        height=height,
        kind="deal",
        id=deal.deal_id,
        client=deal.client,
        size=deal.size,
        shard_size=deal.shard_size,
        n=len(deal.shards),
        k=deal.k,
        encrypted=bool(deal.flags & FLAG_ENCRYPTED),
        first=deal.first,
        end=deal.end,
        escrow=deal.escrow,
        deadline=0,
        next_check=check if params.period_of(check) < deal.end else None,
        shards=tuple(shards),
    )


def _bid_status(bid: BidInfo, height: int) -> ContentStatus:
    return ContentStatus(
        cid=bid.cid,
        height=height,
        kind="bid",
        id=bid.bid_id,
        client=bid.client,
        size=bid.size,
        shard_size=bid.shard_size,
        n=bid.n,
        k=bid.k,
        encrypted=bool(bid.flags & FLAG_ENCRYPTED),
        first=0,
        end=0,
        escrow=bid.deposit,
        deadline=bid.deadline,
        next_check=None,
        shards=tuple(
            ShardStatus(index, None, None, "matching", 0, None, None, None)
            for index in range(bid.n)
        ),
    )


def _past_status(
    client: RpcClient, cid: bytes, bid_id: int, placed: tuple[Value, ...], height: int
) -> ContentStatus:
    """What became of a bid that is neither open nor an open deal."""
    kind, refund = "expired", _uint(placed[7]) if len(placed) >= 8 else 0
    settled = actor_logs(client, "DealSettled", [None, bid_id], 0, height)
    if settled:
        data = settled[-1][1]
        kind, refund = "settled", _uint(data[1]) if len(data) >= 2 else 0
    elif any(
        _uint(data[0]) == bid_id
        for _, data in actor_logs(client, "BidCancelled", [None, cid], 0, height)
    ):
        kind = "cancelled"
    size, n, k = (_uint(placed[i]) for i in (1, 2, 3)) if len(placed) >= 4 else (0, 0, 0)
    return ContentStatus(
        cid=cid,
        height=height,
        kind=kind,
        id=bid_id,
        client=None,
        size=size,
        shard_size=0,
        n=n,
        k=k,
        encrypted=False,
        first=0,
        end=0,
        escrow=refund,
        deadline=_uint(placed[6]) if len(placed) >= 7 else 0,
        next_check=None,
        shards=(),
    )


def content_status(
    client: RpcClient, view: MarketView, cid: bytes, start: int = 0
) -> ContentStatus:
    """The status of ``cid``: its open deal, else its open bid, else what became of its last bid
    (placed since height ``start``); :class:`NotFound` if it was never bid for."""
    params = view.params()
    height = _head(client)
    deal_id = view.deal_of(cid)
    if deal_id is not None:
        deal = view.get_deal(deal_id)
        if deal is not None:
            return deal_status(client, view, deal, params, height)
    placed = actor_logs(client, "BidPlaced", [None, cid], start, height)
    for _, data in reversed(placed):
        bid = view.get_bid(_uint(data[0]))
        if bid is not None:
            return _bid_status(bid, height)
    if placed:
        data = placed[-1][1]
        return _past_status(client, cid, _uint(data[0]), data, height)
    raise NotFound(f"no deal or bid for {cid.hex()} (since height {start})")


# -- cancel ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cancelled:
    """A cancelled deal or bid."""

    kind: str
    """``deal`` or ``bid``."""
    id: int
    """Its id."""
    refund: int
    """Shor refunded at once."""

    def to_json(self) -> dict[str, Any]:
        """In JSON."""
        return {"cancelled": self.kind, "id": self.id, "refund": self.refund}


def cancel(wallet: Wallet, view: MarketView, cid: bytes) -> Cancelled:
    """Cancel ``cid``'s open deal (the periods after the current one are refunded; the current
    one is still proved and paid), else the account's open bid for it (its deposit back).
    :class:`NotFound` if there is neither; :class:`StorageClientError` if the deal is another
    account's or the call fails."""
    deal_id = view.deal_of(cid)
    if deal_id is not None:
        deal = view.get_deal(deal_id)
        if deal is not None and deal.client != wallet.address:
            raise StorageClientError(
                f"deal {deal_id} belongs to {deal.client}, not to {wallet.address}"
            )
        receipt = _transact(wallet, "cancel_deal", (deal_id,), SETTLE_GAS)
        refunds = [_uint(data[1]) for data in _events(receipt, "DealCancelled") if len(data) >= 2]
        return Cancelled("deal", deal_id, sum(refunds))
    params = view.params()
    height = _head(wallet.client)
    placed = actor_logs(
        wallet.client,
        "BidPlaced",
        [wallet.address, cid],
        max(0, height - params.max_bid_blocks - 1),
        height,
    )
    for _, data in reversed(placed):
        bid = view.get_bid(_uint(data[0]))
        if bid is not None and bid.client == wallet.address:
            _transact(wallet, "cancel_bid", (bid.bid_id,))
            return Cancelled("bid", bid.bid_id, bid.deposit)
    raise NotFound(f"{wallet.address} has no open deal or bid for {cid.hex()}")


def _transact(
    wallet: Wallet, method: str, args: tuple[Value, ...], extra_gas: int = 0
) -> dict[str, Any]:
    try:
        gas = None
        if extra_gas:
            gas = wallet.estimate(STORAGE_MARKET, method, args, 0) + extra_gas
        return wallet.transact(STORAGE_MARKET, method, args, gas=gas, timeout=RECEIPT_TIMEOUT_S)
    except CallReverted as exc:
        raise StorageClientError(f"{method} was refused: {exc.reason}") from None
    except WalletError as exc:
        raise StorageClientError(f"{method} failed: {exc}") from None


def parse_cid(text: str) -> bytes:
    """A content id from its 64 hex digits (``0x`` optional)."""
    digits = text.strip().removeprefix("0x")
    try:
        cid = bytes.fromhex(digits)
    except ValueError:
        cid = b""
    if len(cid) != 32 or len(digits) != 64:
        raise StorageClientError(f"a content id is 64 hex digits, not {text[:80]!r}")
    return cid


def parse_address(text: str) -> Address:
    """An address (``qoin1...``); :class:`StorageClientError` if it is not one."""
    try:
        return Address.from_text(text)
    except AddressError as exc:
        raise StorageClientError(str(exc)) from None
