"""The compute provider's HTTP and WebSocket API (docs/spec/compute.md §5), a Starlette app under
``/compute/v1`` served by :class:`qoin.rpc.serve.BackgroundServer` (whose limits bound every
connection in time). Every answer is JSON; a refusal is ``{"error": "<reason>"}`` with a 4xx
status (400 malformed, 401 not authenticated, 403 not allowed, 404 unknown, 409 not now, 422 not
acceptable), a provider-side fault (the node unreachable) 503.

``GET /info``
    address, executors (kind -> null, or why it is not available here), the runtimes offered
    (``runtimes``: ``[{ref, torch, cpuCapability}]``), resources, running jobs, whether it
    mediates.
``POST /offer`` ``{bid, replica, mediator, spec, job_key}``
    checks the open bid on chain against the spec (its hash, resources, executor, timeout,
    verification; for a bid asking for an answer, output files few enough for the reveal's
    manifest), this provider's ask (free capacity, prices, collateral multiple, free
    collateral, the mediator), the executor, the runtime the spec names (one offered here, else
    409 naming those it has), the sealed job key and every input key; keeps the spec and key in ``DATADIR/jobs/bid-<id>/`` (bounded: :class:`~.jobs.Offers`) and answers the
    signed acceptance. The first job key kept for a bid stays: another one is refused (409)
    unless the bid's client vouches for it (an ``X-Qoin-Auth`` key authorisation,
    :func:`qoin.compute.keys.key_auth_header`), since anyone who knows the spec could send it.
``POST /mediate`` ``{deal, spec, job_key}`` (``--mediator`` only)
    the deal must name this mediator, its job be the spec's hash and its runtime one offered
    here; keeps them for a mediation
    (the first job key stays, as for offers).
``GET /jobs/{deal}``, ``GET /jobs/{deal}/result``, ``GET /jobs/{deal}/outputs``,
``WS /jobs/{deal}/logs?from=N&nonce=C``
    authenticated (:func:`qoin.compute.keys.check_auth`, header ``X-Qoin-Auth``) as the deal's
    client or mediator: the status; the result (409 until revealed on chain; its CID null until
    the archive is stored in the storage market); the packed outputs archive (409 until revealed
    on chain), streamed encrypted under the replica's transit key; the saved log from byte
    ``from`` then live, ending with an ``end`` frame, every frame encrypted under the
    connection's key (:mod:`qoin.compute.transit`: both derived from the job key, so the wire
    carries no job data in clear). A refused WebSocket upgrade is answered with the HTTP status
    and JSON error instead of the upgrade.

Chain reads and disk work run on Starlette's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from qoin.ai.runtime import RuntimeInfo
from qoin.compute import jobspec, keys, market, transit
from qoin.compute.jobspec import Executor, JobSpec, Verification
from qoin.compute.market import BidInfo, ComputeMarketView
from qoin.compute.provider.jobs import (
    ARCHIVE_FILE,
    MANIFEST_FILE,
    Job,
    JobBook,
    JobError,
    JobState,
    OfferRefused,
    PendingOffer,
    answer_manifest_problem,
    runtime_dir,
)
from qoin.crypto.address import Address, AddressError
from qoin.crypto.hybrid import HybridKeyPair
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.files import FileReadError, read_bounded
from qoin.storage.provider.server import Refused

PREFIX: Final = "/compute/v1"
MAX_OFFER_BODY: Final = 2 * jobspec.MAX_SPEC_SIZE + 2 * keys.SEALED_JOB_KEY_SIZE + 4096
"""Bytes of an offer or mediate request, at most (the spec and the sealed key in hex)."""
MAX_MANIFEST: Final = 256 << 20
LOG_POLL_S: Final = 0.05
"""How often a log follower looks for new output."""
MAX_ID: Final = 2**64 - 1
MAX_ADDRESS_TEXT: Final = 100
"""Characters of an address in a request (bech32m or hex), at most."""
WEBSOCKET_MAX_FRAME: Final = 4096
"""Bytes of a message a log follower may send (it sends nothing)."""
_DONE_STATES: Final = frozenset(
    {JobState.COMMITTED, JobState.REVEALED, JobState.STORED, JobState.FAILED, JobState.SETTLED}
)


@dataclass(frozen=True)
class Capacity:
    """What the provider offers (its ask)."""

    cpus: int
    memory: int
    gpus: int = 0
    gpu_model: str = ""


@dataclass(frozen=True)
class ComputeContext:
    """What the API works with."""

    keypair: HybridKeyPair
    chain_id: int
    kem: MLKEM768PrivateKey
    view: ComputeMarketView
    book: JobBook
    executors: Mapping[Executor, str | None]
    """Every kind: None if offered here, else why not."""
    capacity: Capacity
    log: Callable[[str], None]
    mediate: Callable[[int, bytes, bytes, bytes, bool], None] | None = None
    """Keep a mediation's spec, sealed key, job key, whether the deal's client vouched for the
    key (a ``--mediator`` daemon), else None; :class:`OfferRefused` if it is not kept."""
    runtimes: tuple[RuntimeInfo, ...] = ()
    """The runtimes offered (``--runtime``, the default one)."""

    def runtime_problem(self, spec: JobSpec) -> str | None:
        """Why a job naming ``spec.runtime`` cannot run here (not offered, or its directory no
        longer holds it: :func:`~.jobs.runtime_dir`), or None."""
        try:
            runtime_dir(spec, {info.ref: info.path for info in self.runtimes})
        except JobError as exc:
            return str(exc)
        return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _uint(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise Refused(400, f"{name} must be an unsigned 64-bit integer")
    return value


def _hex(obj: dict[str, Any], name: str, limit: int) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > 2 * limit:
        raise Refused(400, f"{name} must be hex of at most {limit} bytes")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise Refused(400, f"{name} is not hex") from None


def parse_address(text: str) -> Address:
    """An address as 64 hex digits or its bech32m form; ``AddressError`` if neither."""
    digits = text.strip().removeprefix("0x")
    if len(digits) == 64:
        try:
            return Address(bytes.fromhex(digits))
        except ValueError:
            pass
    return Address.from_text(text)


async def _json_body(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_OFFER_BODY:
            raise Refused(413, f"a request is at most {MAX_OFFER_BODY} bytes")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused(400, "the body must be a JSON object") from None
    if not isinstance(obj, dict):
        raise Refused(400, "the body must be a JSON object")
    return obj


def _spec(obj: dict[str, Any]) -> tuple[bytes, JobSpec]:
    raw = _hex(obj, "spec", jobspec.MAX_SPEC_SIZE)
    try:
        return raw, JobSpec.decode(raw)
    except (DecodeError, QoinError) as exc:
        raise Refused(422, f"the spec does not decode: {exc}") from None


def _deal_id(text: str) -> int:
    if not text.isdigit() or len(text) > 20 or int(text) > MAX_ID:
        raise Refused(400, "a deal id is a decimal number")
    return int(text)


def check_keys(kem: MLKEM768PrivateKey, spec: JobSpec, sealed: bytes) -> bytes:
    """The job key in ``sealed`` (it must open for ``spec`` with ``kem``, and unwrap every
    input's key); :class:`Refused` (422) saying what does not."""
    try:
        job_key = keys.open_job_key(kem, sealed, spec.job_hash)
    except keys.KeysError as exc:
        raise Refused(422, str(exc)) from None
    for item in spec.inputs:
        if item.key:
            try:
                jobspec.unwrap_input_key(job_key, item)
            except jobspec.JobSpecError as exc:
                raise Refused(422, str(exc)) from None
    return job_key


def spec_mismatch(spec: JobSpec, bid: BidInfo) -> str | None:
    """Where ``spec`` and ``bid`` disagree, or None."""
    res = spec.resources
    pairs = (
        ("executor", spec.executor.name.lower(), bid.executor.name.lower()),
        ("cpus", res.cpus, bid.cpus),
        ("memory", res.memory, bid.memory),
        ("gpus", res.gpus, bid.gpus),
        ("gpu_model", res.gpu_model, bid.gpu_model),
        ("timeout", spec.timeout, bid.timeout),
        ("verification", spec.verification.name.lower(), bid.verification.name.lower()),
    )
    for name, said, bid_says in pairs:
        if said != bid_says:
            return f"the spec's {name} is {said}, the bid's {bid_says}"
    return None


class ComputeApi:
    """The handlers over one :class:`ComputeContext`."""

    def __init__(self, context: ComputeContext) -> None:
        self.context = context

    @property
    def address(self) -> Address:
        return self.context.keypair.address

    def app(self) -> Starlette:
        _allow_long_header_lines()
        guard = self._guard
        return Starlette(
            routes=[
                Route(f"{PREFIX}/info", guard(self.info), methods=["GET"]),
                Route(f"{PREFIX}/offer", guard(self.offer), methods=["POST"]),
                Route(f"{PREFIX}/mediate", guard(self.mediate), methods=["POST"]),
                Route(f"{PREFIX}/jobs/{{deal}}", guard(self.job), methods=["GET"]),
                Route(f"{PREFIX}/jobs/{{deal}}/result", guard(self.result), methods=["GET"]),
                Route(f"{PREFIX}/jobs/{{deal}}/outputs", guard(self.outputs), methods=["GET"]),
                WebSocketRoute(f"{PREFIX}/jobs/{{deal}}/logs", self.logs),
            ]
        )

    @staticmethod
    def _guard(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except Refused as exc:
                return _error(exc.status, str(exc))
            except keys.AuthError as exc:
                return _error(exc.status, str(exc))
            except OfferRefused as exc:
                return _error(exc.status, str(exc))
            except ClientDisconnect:
                return Response(status_code=400)
            except QoinError as exc:  # the node, the disk: not the client's fault
                return _error(503, f"cannot serve now: {exc}")
            return response

        return endpoint

    # -- info -------------------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        """``GET /info``."""
        context = self.context
        running = await run_in_threadpool(context.book.running)
        return JSONResponse(
            {
                "address": str(self.address),
                "executors": {kind.name.lower(): why for kind, why in context.executors.items()},
                "runtimes": [
                    {"ref": info.ref, "torch": info.torch, "cpuCapability": info.cpu_capability}
                    for info in context.runtimes
                ],
                "cpus": context.capacity.cpus,
                "memory": context.capacity.memory,
                "gpus": context.capacity.gpus,
                "gpu_model": context.capacity.gpu_model,
                "running": running,
                "mediator": context.mediate is not None,
            }
        )

    # -- offers -----------------------------------------------------------------------------

    async def offer(self, request: Request) -> Response:
        """``POST /offer``."""
        obj = await _json_body(request)
        header = request.headers.get(keys.AUTH_HEADER)
        answer = await run_in_threadpool(self._offer, obj, header)
        return JSONResponse(answer)

    def _vouched(
        self, header: str | None, purpose: str, number: int, sealed: bytes, client: Address
    ) -> bool:
        """Whether an optional key authorisation (:func:`qoin.compute.keys.key_auth_header`)
        signed by ``client`` vouches for ``sealed``; one that is present but does not check is
        refused (401, 403)."""
        if header is None:
            return False
        signer = keys.check_key_auth(header, purpose, self.address, number, sealed)
        if signer != client:
            raise keys.AuthError(
                403,
                f"{signer} is not the client of {'bid' if purpose == 'offer' else 'deal'} "
                f"{number}: only its client may vouch for its job key",
            )
        return True

    def _mediator(self, bid: BidInfo, ask: market.AskInfo, text: Any) -> Address | None:
        """The offer's mediator (None: none); :class:`Refused` unless the bid and this
        provider both accept it."""
        if not isinstance(text, str) or len(text) > MAX_ADDRESS_TEXT:
            raise Refused(400, 'mediator must be an address, or "" for none')
        if bid.verification is Verification.NONE:
            if text:
                raise Refused(422, "a bid with verification none has no mediator")
            return None
        if not text:
            raise Refused(422, f"a {bid.verification.name.lower()} deal needs a mediator")
        try:
            mediator = parse_address(text)
        except AddressError as exc:
            raise Refused(400, f"mediator: {exc}") from None
        record = self.context.view.get_mediator(mediator)
        accepted = ", ".join(str(m) for m in ask.mediators) or "none"
        checks = (
            (
                record is not None and record.active,
                409,
                f"unknown mediator {mediator}: not an active mediator",
            ),
            (mediator != self.address, 409, "this provider cannot mediate its own job"),
            (mediator in bid.mediators, 422, f"mediator {mediator} is not one the bid accepts"),
            (
                mediator in ask.mediators,
                409,
                f"this provider does not accept mediator {mediator} (it accepts: {accepted})",
            ),
        )
        for ok, status, reason in checks:
            if not ok:
                raise Refused(status, reason)
        return mediator

    def _offer(self, obj: dict[str, Any], header: str | None = None) -> dict[str, Any]:
        context = self.context
        bid_id, replica = _uint(obj, "bid"), _uint(obj, "replica")
        raw, spec = _spec(obj)
        sealed = _hex(obj, "job_key", keys.SEALED_JOB_KEY_SIZE)
        bid = context.view.get_bid(bid_id)
        if bid is None:
            raise Refused(
                409, f"bid {bid_id} is not open (never placed, cancelled, expired or formed)"
            )
        if replica >= bid.replicas:
            raise Refused(422, f"bid {bid_id} has {bid.replicas} replica(s): no replica {replica}")
        if spec.job_hash != bid.job:
            raise Refused(
                422,
                f"the spec's hash {spec.job_hash.hex()} is not bid {bid_id}'s job {bid.job.hex()}",
            )
        mismatch = spec_mismatch(spec, bid)
        if mismatch is not None:
            raise Refused(422, mismatch)
        if bid.max_answer:
            too_many = answer_manifest_problem(spec)
            if too_many is not None:
                raise Refused(422, too_many)
        why = context.executors.get(spec.executor, "unknown executor")
        if why is not None:
            raise Refused(
                409, f"the {spec.executor.name.lower()} executor is not offered here: {why}"
            )
        lacking = context.runtime_problem(spec)
        if lacking is not None:
            raise Refused(409, lacking)
        ask = context.view.get_ask(self.address)
        if ask is None or not ask.active:
            raise Refused(409, "this provider has no active ask")
        self._fits(bid, ask)
        mediator = self._mediator(bid, ask, obj.get("mediator"))
        job_key = check_keys(context.kem, spec, sealed)
        vouched = self._vouched(header, "offer", bid_id, sealed, bid.acting)
        price_cpu, price_gpu, collateral = market.acceptance_terms(bid, ask)
        kept = context.book.offers.keep(
            PendingOffer(bid_id, str(bid.client), bid.deadline, len(raw)),
            raw,
            sealed,
            job_key,
            context.kem,
            {"bid": bid_id, "replica": replica, "mediator": str(mediator or "")},
            vouched=vouched,
        )
        acceptance = market.sign_acceptance(
            context.keypair, context.chain_id, bid, replica, ask, mediator
        )
        context.log(
            f"{'accepted' if kept else 'accepted again'} bid {bid_id} replica {replica} of "
            f"{bid.client} ({bid.cpus} CPU(s), {bid.timeout} s at {price_cpu} Shor per "
            f"CPU-second; collateral {collateral}; bid open until height {bid.deadline})"
            + ("; job key replaced, vouched for by the client" if vouched and kept else "")
        )
        return {
            "acceptance": acceptance.hex(),
            "price_cpu": price_cpu,
            "price_gpu": price_gpu,
            "collateral": collateral,
        }

    @staticmethod
    def _fits(bid: BidInfo, ask: market.AskInfo) -> None:
        """:class:`Refused` (409) unless the ask can take the bid now."""
        _, _, collateral = market.acceptance_terms(bid, ask)
        checks = (
            (
                bid.cpus <= ask.free_cpus,
                f"too big: the job needs {bid.cpus} CPU(s), {ask.free_cpus} of {ask.cpus} free",
            ),
            (
                bid.memory <= ask.free_memory,
                f"too big: the job needs {bid.memory} bytes of memory, {ask.free_memory} of "
                f"{ask.memory} free",
            ),
            (
                bid.gpus <= ask.free_gpus,
                f"too big: the job needs {bid.gpus} GPU(s), {ask.free_gpus} of {ask.gpus} free",
            ),
            (
                not bid.gpu_model or bid.gpu_model == ask.gpu_model,
                f"the job wants GPU model {bid.gpu_model!r}, this provider has {ask.gpu_model!r}",
            ),
            (
                ask.price_cpu <= bid.max_price_cpu and ask.price_gpu <= bid.max_price_gpu,
                f"the price {ask.price_cpu} (GPU {ask.price_gpu}) Shor per second is over the "
                f"bid's {bid.max_price_cpu} (GPU {bid.max_price_gpu})",
            ),
            (
                ask.collateral_ppm >= bid.collateral_ppm,
                f"this provider's collateral multiple {ask.collateral_ppm} ppm is below the "
                f"bid's {bid.collateral_ppm}",
            ),
            (
                ask.free_collateral >= collateral,
                f"not enough free collateral: {ask.free_collateral} Shor, the job needs "
                f"{collateral}",
            ),
        )
        for ok, reason in checks:
            if not ok:
                raise Refused(409, reason)

    # -- mediation --------------------------------------------------------------------------

    async def mediate(self, request: Request) -> Response:
        """``POST /mediate``."""
        if self.context.mediate is None:
            raise Refused(404, "this provider is not a mediator")
        obj = await _json_body(request)
        header = request.headers.get(keys.AUTH_HEADER)
        await run_in_threadpool(self._mediate, obj, header)
        return JSONResponse({})

    def _mediate(self, obj: dict[str, Any], header: str | None = None) -> None:
        context = self.context
        deal_id = _uint(obj, "deal")
        raw, spec = _spec(obj)
        sealed = _hex(obj, "job_key", keys.SEALED_JOB_KEY_SIZE)
        found = context.view.get_deal(deal_id)
        if found is None:
            raise Refused(409, f"deal {deal_id} is not open")
        if found.mediator != self.address:
            raise Refused(403, f"deal {deal_id} does not name this mediator")
        if spec.job_hash != found.job:
            raise Refused(422, f"the spec's hash {spec.job_hash.hex()} is not deal {deal_id}'s job")
        lacking = context.runtime_problem(spec)
        if lacking is not None:
            raise Refused(409, lacking)
        job_key = check_keys(context.kem, spec, sealed)
        vouched = self._vouched(header, "mediate", deal_id, sealed, found.acting)
        if context.mediate is not None:
            context.mediate(deal_id, raw, sealed, job_key, vouched)

    # -- jobs -------------------------------------------------------------------------------

    def _authorised(self, deal_text: str, header: str | None) -> Job:
        deal = _deal_id(deal_text)
        job = self.context.book.get(deal)
        if job is None:
            raise Refused(404, f"no job for deal {deal} on this provider")
        signer = keys.check_auth(header, self.address, deal)
        status = job.status
        allowed = {status.client, status.mediator} - {""}
        if str(signer) not in allowed:
            raise keys.AuthError(403, f"{signer} is neither deal {deal}'s client nor its mediator")
        return job

    async def job(self, request: Request) -> Response:
        """``GET /jobs/{deal}``."""
        job = await run_in_threadpool(
            self._authorised, request.path_params["deal"], request.headers.get(keys.AUTH_HEADER)
        )
        return JSONResponse(job.status.public())

    async def result(self, request: Request) -> Response:
        """``GET /jobs/{deal}/result``."""
        job = await run_in_threadpool(
            self._authorised, request.path_params["deal"], request.headers.get(keys.AUTH_HEADER)
        )
        status = job.status
        _check_revealed(status.deal, status.revealed)
        try:
            raw = await run_in_threadpool(
                read_bounded, job.directory / MANIFEST_FILE, MAX_MANIFEST, "manifest"
            )
        except FileReadError as exc:
            raise Refused(503, f"cannot read the manifest: {exc}") from None
        return JSONResponse(
            {
                "root": status.root,
                "cid": status.cid or None,
                "size": status.size,
                "manifest": json.loads(raw),
            }
        )

    async def outputs(self, request: Request) -> Response:
        """``GET /jobs/{deal}/outputs``: the packed outputs archive, once revealed on chain,
        streamed encrypted under the replica's transit key (:mod:`qoin.compute.transit`; the
        client and the mediator decrypt it, then verify it against the revealed root). A
        ``Range`` header is not honoured: every answer is the whole archive, under a fresh salt."""
        job = await run_in_threadpool(
            self._authorised, request.path_params["deal"], request.headers.get(keys.AUTH_HEADER)
        )
        status = job.status
        _check_revealed(status.deal, status.revealed)
        path = job.directory / ARCHIVE_FILE
        try:
            handle = await run_in_threadpool(path.open, "rb")
        except OSError:
            where = f" (CID {status.cid})" if status.cid else ""
            raise Refused(
                404,
                f"deal {status.deal}: the outputs archive is no longer kept here; fetch it from "
                f"the storage market{where}",
            ) from None
        try:
            size = os.fstat(handle.fileno()).st_size
            master = keys.outputs_transit_master(job.job_key, status.deal, status.replica)
        except (OSError, keys.KeysError) as exc:
            handle.close()
            raise Refused(503, f"cannot send the outputs archive: {exc}") from None
        return StreamingResponse(
            _sealed_file(handle, size, master),
            media_type="application/octet-stream",
            headers={"content-length": str(transit.sealed_archive_size(size))},
        )

    # -- logs -------------------------------------------------------------------------------

    async def logs(self, websocket: WebSocket) -> None:
        """``WS /jobs/{deal}/logs?from=N&nonce=C``."""
        try:
            start = int(websocket.query_params.get("from", "0"))
            if not 0 <= start <= MAX_ID:
                raise ValueError
        except ValueError:
            await websocket.send_denial_response(_error(400, "from is a byte offset (>= 0)"))
            return
        try:
            nonce = transit.parse_client_nonce(websocket.query_params.get("nonce", ""))
        except transit.TransitError as exc:
            await websocket.send_denial_response(
                _error(
                    400,
                    f"{exc}, fresh for each connection: the log is sent encrypted under a key "
                    "derived from the job key and both sides' nonces (a client of an older qoin "
                    "sends none: update it)",
                )
            )
            return
        try:
            job = await run_in_threadpool(
                self._authorised,
                websocket.path_params["deal"],
                websocket.headers.get(keys.AUTH_HEADER),
            )
        except (Refused, keys.AuthError) as exc:
            await websocket.send_denial_response(_error(exc.status, str(exc)))
            return
        except QoinError as exc:
            await websocket.send_denial_response(_error(503, f"cannot serve now: {exc}"))
            return
        provider_nonce = os.urandom(keys.LOG_NONCE_SIZE)
        try:
            status = job.status
            sealer = transit.LogSealer(
                keys.log_key(job.job_key, status.deal, status.replica, nonce, provider_nonce)
            )
        except keys.KeysError as exc:
            await websocket.send_denial_response(_error(503, f"cannot serve now: {exc}"))
            return
        await websocket.accept()
        closed = asyncio.create_task(_wait_closed(websocket))
        try:
            await websocket.send_bytes(transit.hello(provider_nonce))
            await self._follow(websocket, job, start, closed, sealer)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            closed.cancel()

    async def _follow(
        self,
        websocket: WebSocket,
        job: Job,
        offset: int,
        closed: asyncio.Task[None],
        sealer: transit.LogSealer,
    ) -> None:
        while not closed.done():
            finished = job.status.finished or job.status.state in _DONE_STATES
            if not finished and not job.alive and offset >= job.log.size:
                # Nothing runs the job now (stopped by an error, or the daemon is taking it up
                # again): close rather than hold the connection; the follower reconnects with
                # ``from`` and resumes.
                await websocket.close(code=1013, reason="the job is not running now; reconnect")
                return
            pieces = await run_in_threadpool(job.log.read, offset) if offset < job.log.size else []
            for piece in pieces:
                await websocket.send_bytes(sealer.data(piece.stream, piece.offset, piece.data))
                offset = piece.offset + len(piece.data)
            if not pieces and finished:
                status = job.status
                end = {
                    "state": str(status.state),
                    "reason": status.reason,
                    "exit_code": status.exit_code,
                    "detail": status.detail,
                }
                await websocket.send_bytes(sealer.end(offset, end))
                await websocket.close()
                return
            if not pieces:
                await asyncio.sleep(LOG_POLL_S)


def _sealed_file(handle: BinaryIO, size: int, master: bytes) -> Iterator[bytes]:
    """The archive open in ``handle`` (``size`` bytes) sealed for the wire, the file closed at
    the end (or when the answer is dropped). Iterated on the thread pool."""
    with handle:
        yield from transit.seal_archive(handle, size, master)


def _check_revealed(deal: int, revealed: bool) -> None:
    """:class:`Refused` (409) until the job's root is revealed on chain: outputs are handed out
    only once every replica has committed."""
    if not revealed:
        raise Refused(
            409,
            f"deal {deal}: not revealed on chain yet (outputs are handed out only once every "
            "replica has committed and this one has revealed)",
        )


def _allow_long_header_lines() -> None:
    """Let a WebSocket upgrade carry an auth header (~10,600 characters: a hybrid key and
    signature in hex): the ``websockets`` parser uvicorn upgrades with takes header lines of at
    most 8,192 bytes by default (``WEBSOCKETS_MAX_LINE_LENGTH``, read when it is imported) and
    reads the bound from its module at each line. The whole head stays bounded by h11's 16 KiB."""
    import websockets.http11  # noqa: PLC0415 (uvicorn's dependency, imported with it)

    websockets.http11.MAX_LINE_LENGTH = max(
        websockets.http11.MAX_LINE_LENGTH, keys.MAX_AUTH_HEADER + 256
    )


async def _wait_closed(websocket: WebSocket) -> None:
    """Return once the follower disconnects (it sends nothing else)."""
    try:
        while True:
            message = await websocket.receive()
            if message.get("type") == "websocket.disconnect":
                return
    except (RuntimeError, WebSocketDisconnect, OSError):
        return
