"""The provider's HTTP API (docs/spec/storage.md §5), a Starlette app served by
:class:`qoin.rpc.serve.BackgroundServer` (whose :class:`~qoin.rpc.serve.HttpLimits` bound every
connection in time).

Every answer is JSON (``{"error": "..."}`` with a 4xx status on refusal) except shard bytes:

``GET /v1/info``
    the provider's address, chain id, offer and how much it stores;
``POST /v1/accept`` ``{"bid": id, "shard": i}``
    checks the open bid on chain against the provider's own ask (shard price <= the bid's
    ``max_price``, capacity left, free collateral) and answers the signed acceptance
    (:func:`qoin.storage.market.acceptance_message`), or 409 with the reason;
``PUT /v1/shards/{deal}/{shard}``
    the upload: the deal on chain must name this provider for that shard, the public key in
    ``x-qoin-public-key`` must hash to the deal's client and sign
    :func:`qoin.storage.market.upload_message` (``x-qoin-signature``), ``Content-Length`` must be
    the shard size, and the body (streamed to a temporary file, never more than the shard size)
    must hash to the committed root: then 201, once stored durably. Anything else is refused and
    nothing is kept: 400 (malformed), 403 (not this provider's shard, not the client, a bad
    signature), 404 (no such deal or shard), 409 (being uploaded), 411 (no length), 413 (longer
    than the shard), 422 (wrong bytes). A shard stored already answers 200;
``GET /v1/shards/{deal}/{shard}/nodes``
    the level-c nodes of the shard tree;
``GET /v1/shards/{deal}/{shard}``
    the shard's bytes, or one ``Range: bytes=a-b`` of them (206).

Chain reads (:class:`qoin.storage.market.MarketView`, bounded in time) and disk work run on
Starlette's thread pool, never on the event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qoin.crypto import hybrid
from qoin.crypto.hybrid import HybridKeyPair, HybridPublicKey, HybridSignature
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.storage import market
from qoin.storage.market import MarketView
from qoin.storage.provider.store import (
    MAX_DEAL,
    MAX_SHARD_INDEX,
    ShardBusy,
    ShardRejected,
    ShardStore,
    StoreError,
)

MAX_ACCEPT_BODY: Final = 1024
"""Bytes of a ``POST /v1/accept`` body, at most."""
MAX_KEY_HEX: Final = 2 * 16 * 1024
"""Hex digits of the ``x-qoin-public-key`` and ``x-qoin-signature`` headers, at most (uvicorn
bounds the whole head at 16 KiB anyway)."""
DRAIN_LIMIT: Final = 1 << 20
"""A refused upload's body is read and dropped up to this many bytes, so that a client sending
it whole still reads the answer; a larger one is answered unread (the connection then closes)."""
_RANGE = re.compile(r"bytes=(\d{0,20})-(\d{0,20})")
_LENGTH = re.compile(r"\d{1,20}")


class Refused(QoinError):
    """A request the provider refuses; :attr:`status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Offer:
    """The provider's own terms, as the daemon posted them (``GET /v1/info`` shows them)."""

    capacity: int
    """Bytes it offers."""
    price: int
    """Shor per GiB per period."""
    collateral: int
    """Shor per GiB held, per shard."""
    retrieval_price: int = 0
    """Shor per GiB served (advertised only)."""


@dataclass(frozen=True)
class ProviderContext:
    """What the HTTP API works with."""

    keypair: HybridKeyPair
    """The provider's key (signs acceptances)."""
    chain_id: int
    """The network's chain id (in every signed message)."""
    leaf_size: int
    """The market's leaf size."""
    store: ShardStore
    """Where shards live."""
    market: MarketView
    """The actor's views on the provider's node."""
    offer: Offer
    """The terms the daemon posted."""
    log: Callable[[str], None]
    """Where one line per upload goes."""
    accepting: Callable[[], bool] = lambda: True
    """Whether new bids are accepted (False once the provider exits)."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _ids(request: Request) -> tuple[int, int]:
    deal_text, shard_text = request.path_params["deal"], request.path_params["shard"]
    if not _LENGTH.fullmatch(deal_text) or not _LENGTH.fullmatch(shard_text):
        raise Refused(400, "deal and shard are decimal numbers")
    deal, shard = int(deal_text), int(shard_text)
    if deal > MAX_DEAL or shard > MAX_SHARD_INDEX:
        raise Refused(404, f"no deal {deal} shard {shard}")
    return deal, shard


def _hex_header(request: Request, name: str) -> bytes:
    text = request.headers.get(name)
    if text is None:
        raise Refused(400, f"the {name} header is missing")
    digits = text.strip().removeprefix("0x")
    if len(digits) > MAX_KEY_HEX:
        raise Refused(400, f"the {name} header is longer than {MAX_KEY_HEX} hex digits")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise Refused(400, f"the {name} header is not hex") from None


def _field(obj: Any, name: str) -> int:
    """An integer field of an accept request."""
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DEAL:
        raise Refused(400, 'the body must be {"bid": id, "shard": i} with integers')
    return value


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range ``[start, end)`` a ``Range`` header asks of a ``size``-byte shard (None: the
    whole shard); :class:`Refused` (416) if it is malformed or not satisfiable. One range only:
    ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` (the last n bytes)."""
    if header is None:
        return None
    found = _RANGE.fullmatch(header.strip())
    if found is None or (not found[1] and not found[2]):
        raise Refused(416, "Range must be one range: bytes=a-b, bytes=a- or bytes=-n")
    if not found[1]:
        suffix = int(found[2])
        if suffix == 0:
            raise Refused(416, "an empty suffix range")
        return max(0, size - suffix), size
    start = int(found[1])
    end = size if not found[2] else min(int(found[2]) + 1, size)
    if start >= size or end <= start:
        raise Refused(416, f"range {header.strip()} is not within the shard's {size} bytes")
    return start, end


class ProviderApi:
    """The handlers of the HTTP API over one :class:`ProviderContext`."""

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    def app(self) -> Starlette:
        """The Starlette application."""
        return Starlette(
            routes=[
                Route("/v1/info", self._guard(self.info), methods=["GET"]),
                Route("/v1/accept", self._guard(self.accept), methods=["POST"]),
                Route("/v1/shards/{deal}/{shard}/nodes", self._guard(self.nodes), methods=["GET"]),
                Route("/v1/shards/{deal}/{shard}", self._guard(self.upload), methods=["PUT"]),
                Route("/v1/shards/{deal}/{shard}", self._guard(self.download), methods=["GET"]),
            ]
        )

    @staticmethod
    def _guard(
        handler: Callable[[Request], Any],
    ) -> Callable[[Request], Any]:
        """Answer :class:`Refused` and other Qoin errors (a node that does not answer) as JSON."""

        async def endpoint(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except Refused as exc:
                return _error(exc.status, str(exc))
            except ClientDisconnect:
                return Response(status_code=400)
            except QoinError as exc:  # the node, the disk: not the client's fault
                return _error(503, f"cannot serve now: {exc}")
            return response

        return endpoint

    # -- info and acceptance -------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        """``GET /v1/info``."""
        store, offer = self.context.store, self.context.offer
        rows = await run_in_threadpool(store.shards)
        return JSONResponse(
            {
                "address": str(self.context.keypair.address),
                "chainId": self.context.chain_id,
                "capacity": offer.capacity,
                "used": sum(row.size for row in rows if row.servable),
                "price": offer.price,
                "collateral": offer.collateral,
                "retrievalPrice": offer.retrieval_price,
                "shards": sum(1 for row in rows if row.servable),
            }
        )

    async def accept(self, request: Request) -> Response:
        """``POST /v1/accept``: sign the acceptance of one shard of an open bid, or 409."""
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > MAX_ACCEPT_BODY:
                raise Refused(413, f"an accept request is at most {MAX_ACCEPT_BODY} bytes")
        try:
            asked = json.loads(body)
        except (ValueError, RecursionError):
            raise Refused(400, 'the body must be JSON: {"bid": id, "shard": i}') from None
        bid_id, shard = _field(asked, "bid"), _field(asked, "shard")
        answer = await run_in_threadpool(self._accept, bid_id, shard)
        return JSONResponse(answer)

    def _accept(self, bid_id: int, shard: int) -> dict[str, Any]:
        context = self.context
        if not context.accepting():
            raise Refused(409, "this provider takes no new shards (it is leaving)")
        bid = context.market.get_bid(bid_id)
        if bid is None:
            raise Refused(409, f"bid {bid_id} is not open")
        if not 0 <= shard < len(bid.roots):
            raise Refused(409, f"bid {bid_id} has no shard {shard} (n = {len(bid.roots)})")
        ask = context.market.get_ask(context.keypair.address)
        if ask is None or not ask.active:
            raise Refused(409, "this provider has no active ask")
        price = market.shard_price(ask.price, bid.shard_size)
        collateral = market.shard_collateral(ask.collateral, bid.shard_size)
        if price > bid.max_price:
            raise Refused(
                409, f"the shard's price {price} Shor per period is over the bid's {bid.max_price}"
            )
        if ask.used + bid.shard_size > ask.capacity:
            raise Refused(
                409,
                f"no room: {ask.capacity - ask.used} bytes left, the shard has {bid.shard_size}",
            )
        if ask.free_collateral < collateral:
            raise Refused(
                409,
                f"not enough free collateral: {ask.free_collateral} Shor, the shard needs "
                f"{collateral}",
            )
        root = bid.roots[shard]
        message = market.acceptance_message(
            context.chain_id,
            bid_id,
            shard,
            root,
            bid.shard_size,
            price,
            context.keypair.address,
        )
        signature = hybrid.sign(context.keypair, message)
        context.log(
            f"accepted bid {bid_id} shard {shard} ({bid.shard_size} bytes at {price} Shor "
            "per period)"
        )
        return {
            "signature": signature.encode().hex(),
            "price": price,
            "provider": str(context.keypair.address),
        }

    # -- uploads -------------------------------------------------------------------------------

    def _check_upload(
        self, deal_id: int, shard: int, public: bytes, signature: bytes
    ) -> tuple[bytes, int]:
        """The committed root and size of a shard the caller may upload, or :class:`Refused`."""
        context = self.context
        deal = context.market.get_deal(deal_id)
        if deal is None:
            raise Refused(404, f"no deal {deal_id} on chain")
        if not 0 <= shard < len(deal.shards):
            raise Refused(404, f"deal {deal_id} has no shard {shard}")
        info = deal.shards[shard]
        if info.provider != context.keypair.address:
            raise Refused(403, f"deal {deal_id} shard {shard} is not this provider's")
        try:
            key = HybridPublicKey.decode(public)
            sig = HybridSignature.decode(signature)
        except DecodeError as exc:
            raise Refused(400, f"malformed key or signature: {exc}") from None
        if key.address != deal.client:
            raise Refused(403, f"the public key is not deal {deal_id}'s client's")
        message = market.upload_message(context.chain_id, deal_id, shard, info.root)
        if not hybrid.is_valid(key, message, sig):
            raise Refused(403, "the signature does not sign this upload")
        return info.root, deal.shard_size

    async def upload(self, request: Request) -> Response:
        """``PUT /v1/shards/{deal}/{shard}``."""
        try:
            return await self._upload(request)
        except Refused:
            await self._drain(request)
            raise

    async def _drain(self, request: Request) -> None:
        """Read and drop a small refused body (see :data:`DRAIN_LIMIT`)."""
        declared = request.headers.get("content-length", "")
        if not _LENGTH.fullmatch(declared) or int(declared) > DRAIN_LIMIT:
            return
        read = 0
        try:
            async for piece in request.stream():
                read += len(piece)
                if read > DRAIN_LIMIT:
                    return
        except (ClientDisconnect, RuntimeError):  # gone, or the body was read already
            return

    async def _upload(self, request: Request) -> Response:
        deal, shard = _ids(request)
        public = _hex_header(request, "x-qoin-public-key")
        signature = _hex_header(request, "x-qoin-signature")
        root, size = await run_in_threadpool(self._check_upload, deal, shard, public, signature)
        declared = request.headers.get("content-length")
        if declared is None:
            raise Refused(411, f"Content-Length is required (the shard's {size} bytes)")
        if not _LENGTH.fullmatch(declared):
            raise Refused(400, "Content-Length is not a number")
        if int(declared) > size:
            raise Refused(413, f"{declared} bytes is more than the shard's {size}")
        if int(declared) != size:
            raise Refused(400, f"Content-Length {declared} is not the shard's {size} bytes")
        existing = await run_in_threadpool(self.context.store.get, deal, shard)
        if existing is not None and existing.servable and existing.root == root:
            return JSONResponse({"stored": True, "root": root.hex(), "already": True})
        store = self.context.store
        try:
            writer = await run_in_threadpool(
                store.writer, deal, shard, root, size, self.context.leaf_size
            )
        except ShardBusy as exc:
            raise Refused(409, str(exc)) from None
        with writer:
            try:
                async for piece in request.stream():
                    writer.write(piece)  # bounded: over the size raises
                await run_in_threadpool(writer.commit)
            except ShardRejected as exc:
                status = 413 if writer.written > size else 422
                if writer.written < size:
                    status = 400
                self.context.log(f"refused upload of deal {deal} shard {shard}: {exc}")
                raise Refused(status, str(exc)) from None
            except StoreError as exc:
                raise Refused(507, f"cannot store the shard: {exc}") from None
        self.context.log(f"stored deal {deal} shard {shard} ({size} bytes, root {root.hex()[:16]})")
        return JSONResponse({"stored": True, "root": root.hex()}, status_code=201)

    # -- downloads -----------------------------------------------------------------------------

    async def nodes(self, request: Request) -> Response:
        """``GET /v1/shards/{deal}/{shard}/nodes``."""
        deal, shard = _ids(request)
        try:
            tree = await run_in_threadpool(self.context.store.tree, deal, shard)
        except StoreError:
            raise Refused(404, f"deal {deal} shard {shard} is not stored here") from None
        return Response(tree.chunk_nodes(), media_type="application/octet-stream")

    async def download(self, request: Request) -> Response:
        """``GET /v1/shards/{deal}/{shard}``, optionally with one ``Range``."""
        deal, shard = _ids(request)
        row = await run_in_threadpool(self.context.store.get, deal, shard)
        if row is None or not row.servable:
            raise Refused(404, f"deal {deal} shard {shard} is not stored here")
        wanted = parse_range(request.headers.get("range"), row.size)
        start, end = wanted if wanted is not None else (0, row.size)
        try:
            pieces = await run_in_threadpool(self.context.store.stream, deal, shard, start, end)
        except StoreError:
            raise Refused(404, f"deal {deal} shard {shard} is not stored here") from None
        headers = {"content-length": str(end - start), "accept-ranges": "bytes"}
        if wanted is not None:
            headers["content-range"] = f"bytes {start}-{end - 1}/{row.size}"
        return StreamingResponse(
            pieces,
            status_code=206 if wanted is not None else 200,
            headers=headers,
            media_type="application/octet-stream",
        )
