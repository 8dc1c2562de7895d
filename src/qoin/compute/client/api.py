"""A provider's HTTP API as the client uses it (docs/spec/compute.md §5.3): offers and their
signed acceptances, the spec and job key handed to the mediator (both carrying the client's key
authorisation), the per-job endpoints authenticated as the client, and the live log stream (the
log and the outputs archive come encrypted under keys derived from the job key:
:mod:`qoin.compute.transit`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qoin.compute import delivery, keys, market, transit
from qoin.compute.client.base import (
    HTTP_CONNECT_S,
    MAX_LOG_FRAME,
    MAX_RESULT_ANSWER,
    OFFER_ATTEMPTS,
    OFFER_BACKOFF_S,
    RECONNECT_S,
    RETRY_STATUSES,
    ComputeClientError,
    _hex,
    _int_field,
    _reason,
    _request,
    endpoint_url,
)
from qoin.compute.client.ranking import Candidate
from qoin.compute.market import BidInfo, ComputeMarketView, MediatorInfo
from qoin.crypto import hybrid
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair, HybridSignature
from qoin.encoding.codec import DecodeError


@dataclass(frozen=True)
class Acceptance:
    """A provider's signed acceptance of one replica of a bid."""

    candidate: Candidate
    replica: int
    signature: bytes
    price_cpu: int
    price_gpu: int
    collateral: int


def _post_retrying(
    http: httpx.Client,
    url: str,
    what: str,
    body: dict[str, Any],
    headers: dict[str, str],
    attempts: int,
) -> tuple[int, Any]:
    """``POST`` ``body`` to ``url`` up to ``attempts`` times, backing off (doubling from
    :data:`OFFER_BACKOFF_S`) while the answer's status is one worth retrying (the provider's node
    has not seen the bid or deal yet); the last status and answer."""
    wait = OFFER_BACKOFF_S
    for attempt in range(attempts):
        status, answer = _request(http, "POST", url, what, body=body, headers=headers)
        if status == 200 or status not in RETRY_STATUSES or attempt == attempts - 1:
            break
        time.sleep(wait)
        wait *= 2
    return status, answer


def request_acceptance(
    http: httpx.Client,
    view: ComputeMarketView,
    chain_id: int,
    bid: BidInfo,
    replica: int,
    candidate: Candidate,
    mediator: Address | None,
    spec_bytes: bytes,
    job_key: bytes,
    attempts: int = OFFER_ATTEMPTS,
    keypair: HybridKeyPair | None = None,
) -> Acceptance:
    """Offer replica ``replica`` of ``bid`` to ``candidate`` (``POST /offer`` with the spec and
    the job key sealed to its KEM key) and check its signed acceptance; :class:`ComputeClientError`
    saying why not. A provider whose node has not seen the bid yet is asked again. ``keypair``
    (the bid's client; :func:`submit` always gives it) signs the sealed key
    (:func:`qoin.compute.keys.key_auth_header`), so that an offer someone else raced in for the
    same bid with another job key cannot lock the client out."""
    ask = candidate.ask
    what = f"provider {ask.provider} ({ask.endpoint})"
    sealed = keys.seal_job_key(ask.kem_key, job_key, bid.job)
    body = {
        "bid": bid.bid_id,
        "replica": replica,
        "mediator": "" if mediator is None else str(mediator),
        "spec": spec_bytes.hex(),
        "job_key": sealed.hex(),
    }
    headers = {}
    if keypair is not None:
        headers[keys.AUTH_HEADER] = keys.key_auth_header(
            keypair, "offer", ask.provider, bid.bid_id, sealed
        )
    url = endpoint_url(ask.endpoint) + "/offer"
    status, answer = _post_retrying(http, url, what, body, headers, attempts)
    if status != 200:
        raise ComputeClientError(f"{what} refused the offer: {_reason(answer, status)}")
    if not isinstance(answer, dict):
        raise ComputeClientError(f"{what} answered no acceptance")
    signature = _hex(answer, "acceptance", what)
    price_cpu = _int_field(answer, "price_cpu", what)
    price_gpu = _int_field(answer, "price_gpu", what)
    collateral = _int_field(answer, "collateral", what)
    if price_cpu > bid.max_price_cpu or price_gpu > bid.max_price_gpu:
        raise ComputeClientError(
            f"{what} asks {price_cpu}/{price_gpu} Shor per CPU/GPU-second, over the bid's limit"
        )
    key = view.get_key(ask.provider)
    if key is None:
        raise ComputeClientError(f"{what} has no key on chain")
    try:
        decoded = HybridSignature.decode(signature)
    except DecodeError:
        raise ComputeClientError(f"{what} sent a malformed acceptance") from None
    message = market.acceptance_message(
        chain_id,
        bid.bid_id,
        replica,
        bid.job,
        price_cpu,
        price_gpu,
        collateral,
        mediator,
        ask.provider,
    )
    if not hybrid.is_valid(key, message, decoded):
        raise ComputeClientError(f"{what} sent an acceptance that does not sign the offer")
    return Acceptance(candidate, replica, signature, price_cpu, price_gpu, collateral)


def send_to_mediator(
    http: httpx.Client,
    mediator: MediatorInfo,
    deal_id: int,
    spec_bytes: bytes,
    job_key: bytes,
    job_hash: bytes,
    keypair: HybridKeyPair | None = None,
) -> None:
    """Hand the spec and the job key (sealed to the mediator's KEM key) to the deal's mediator
    (``POST /mediate``); :class:`ComputeClientError` if it does not take them. ``keypair`` (the
    deal's client; :func:`submit` always gives it) signs the sealed key, as for offers."""
    what = f"mediator {mediator.mediator} ({mediator.endpoint})"
    sealed = keys.seal_job_key(mediator.kem_key, job_key, job_hash)
    body = {"deal": deal_id, "spec": spec_bytes.hex(), "job_key": sealed.hex()}
    headers = {}
    if keypair is not None:
        headers[keys.AUTH_HEADER] = keys.key_auth_header(
            keypair, "mediate", mediator.mediator, deal_id, sealed
        )
    url = endpoint_url(mediator.endpoint) + "/mediate"
    status, answer = _post_retrying(http, url, what, body, headers, OFFER_ATTEMPTS)
    if status != 200:
        raise ComputeClientError(f"{what} did not take the job: {_reason(answer, status)}")


@dataclass(frozen=True)
class JobState:
    """A provider's view of its replica (``GET /jobs/{deal}``)."""

    state: str
    reason: str
    detail: str
    exit_code: int | None
    usage_cpu: int
    log_bytes: int
    timings: dict[str, float]
    root: str | None
    cid: str | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, answer: Any, what: str) -> JobState:
        if not isinstance(answer, dict) or not isinstance(answer.get("state"), str):
            raise ComputeClientError(f"{what}: the job state has no state")
        exit_code = answer.get("exit_code")
        timings = answer.get("timings")
        return cls(
            state=str(answer["state"])[:40],
            reason=str(answer.get("reason") or "")[:80],
            detail=str(answer.get("detail") or "")[:1000],
            exit_code=exit_code if isinstance(exit_code, int) else None,
            usage_cpu=answer["usage_cpu"] if isinstance(answer.get("usage_cpu"), int) else 0,
            log_bytes=answer["log_bytes"] if isinstance(answer.get("log_bytes"), int) else 0,
            timings={
                str(k): float(v)
                for k, v in (timings.items() if isinstance(timings, dict) else ())
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
            root=answer["root"] if isinstance(answer.get("root"), str) else None,
            cid=answer["cid"] if isinstance(answer.get("cid"), str) else None,
            raw=answer,
        )


class ProviderApi:
    """A provider's per-job endpoints, authenticated as the deal's client (or mediator)."""

    def __init__(
        self, http: httpx.Client, keypair: HybridKeyPair, provider: Address, endpoint: str
    ) -> None:
        self.http = http
        self.keypair = keypair
        self.provider = provider
        self.endpoint = endpoint
        self.base = endpoint_url(endpoint)
        self.what = f"provider {provider} ({endpoint})"

    def auth(self, deal_id: int) -> dict[str, str]:
        return {keys.AUTH_HEADER: keys.auth_header(self.keypair, self.provider, deal_id)}

    def job(self, deal_id: int) -> JobState:
        """The job's state; :class:`ComputeClientError` if the provider does not say."""
        status, answer = _request(
            self.http, "GET", f"{self.base}/jobs/{deal_id}", self.what, headers=self.auth(deal_id)
        )
        if status != 200:
            raise ComputeClientError(f"{self.what}: {_reason(answer, status)}")
        return JobState.from_json(answer, self.what)

    def outputs(self, deal_id: int, replica: int, job_key: bytes, dest: Path, max_size: int) -> int:
        """``GET /jobs/{deal}/outputs`` (the packed archive, sent encrypted under replica
        ``replica``'s transit key from ``job_key``) decrypted into ``dest``: the bytes written;
        :class:`qoin.compute.delivery.NotServed` if the provider does not hand it over (or what
        it sends does not open)."""
        master = keys.outputs_transit_master(job_key, deal_id, replica)
        return delivery.download(
            f"{self.base}/jobs/{deal_id}/outputs",
            self.auth(deal_id),
            dest,
            max_size,
            master,
            self.http,
        )

    def result(self, deal_id: int) -> tuple[int, Any]:
        """``GET /jobs/{deal}/result``: (status, answer)."""
        return _request(
            self.http,
            "GET",
            f"{self.base}/jobs/{deal_id}/result",
            self.what,
            headers=self.auth(deal_id),
            bound=MAX_RESULT_ANSWER,
        )


@dataclass
class LogEnd:
    """The last frame of a log stream."""

    reason: str
    exit_code: int | None
    detail: str


class LogAuthError(ComputeClientError):
    """A log stream whose bytes do not open with the job key (:mod:`qoin.compute.transit`):
    changed in transit, another job's key, or a provider that sends its log in clear."""


class LogStream:
    """Follows replica ``replica``'s stdout/stderr over its provider's WebSocket in a thread,
    from byte ``start``, each connection's frames decrypted under a key derived from
    ``job_key`` (:mod:`qoin.compute.transit`); a dropped connection is opened again with
    ``?from=`` the next byte (a provider that does not know the job yet is asked again), until
    the last frame, :meth:`stop`, ``give_up_s`` seconds without any answer, or a frame that does
    not authenticate (:attr:`error` says so: not asked again)."""

    def __init__(
        self,
        api: ProviderApi,
        deal_id: int,
        job_key: bytes,
        replica: int,
        on_output: Callable[[str, bytes], None],
        start: int = 0,
        give_up_s: float = 600.0,
        stop_at: int | None = None,
        on_end: Callable[[LogEnd], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.on_end = on_end
        self.on_refused = on_refused
        """Told why, when a frame does not authenticate (the stream ends)."""
        self.deal_id = deal_id
        self.job_key = job_key
        self.replica = replica
        self.on_output = on_output
        self.offset = start
        """The next byte wanted."""
        self.give_up_s = give_up_s
        self.stop_at = stop_at
        """Stop once this many bytes were received (``logs`` without ``-f``)."""
        self.end: LogEnd | None = None
        self.error = ""
        """Why it gave up, if it did."""
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logs {deal_id}", daemon=True)

    def start(self) -> LogStream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _url(self, nonce: bytes) -> str:
        base = self.api.base.replace("http://", "ws://", 1)
        return f"{base}/jobs/{self.deal_id}/logs?from={self.offset}&nonce={nonce.hex()}"

    def _run(self) -> None:
        last_answer = time.monotonic()
        tries = 0
        while not self._stop.is_set():
            try:
                if self._session():
                    return
                last_answer = time.monotonic()
                tries = 0
            except LogAuthError as exc:
                self.error = str(exc)
                if self.on_refused is not None:
                    self.on_refused(self.error)
                return
            except ComputeClientError as exc:
                self.error = str(exc)
            if time.monotonic() - last_answer > self.give_up_s:
                return
            self.reconnects += 1
            self._stop.wait(RECONNECT_S[min(tries, len(RECONNECT_S) - 1)])
            tries += 1

    def _session(self) -> bool:
        """One connection; True once the stream is over (its last frame, or ``stop_at``)."""
        from websockets.exceptions import (  # noqa: PLC0415 (slow import)
            ConnectionClosed,
            InvalidHandshake,
            InvalidURI,
        )
        from websockets.sync.client import connect  # noqa: PLC0415

        nonce = transit.client_nonce()
        try:
            connection = connect(
                self._url(nonce),
                additional_headers=self.api.auth(self.deal_id),
                open_timeout=HTTP_CONNECT_S,
                close_timeout=2.0,
                max_size=MAX_LOG_FRAME,
                compression=None,
                proxy=None,
                legacy=True,
            )
        except (InvalidHandshake, InvalidURI, TimeoutError, OSError) as exc:
            raise ComputeClientError(f"{self.api.what}: no log stream: {exc}") from None
        with connection:
            opener: transit.LogOpener | None = None
            while not self._stop.is_set():
                if self.stop_at is not None and self.offset >= self.stop_at:
                    return True
                try:
                    message = connection.recv(timeout=1.0)
                except TimeoutError:
                    continue
                except (ConnectionClosed, OSError) as exc:
                    raise ComputeClientError(f"{self.api.what}: log stream cut: {exc}") from None
                try:
                    if opener is None:
                        provider_nonce = transit.parse_hello(message)
                        opener = transit.LogOpener(
                            keys.log_key(
                                self.job_key, self.deal_id, self.replica, nonce, provider_nonce
                            )
                        )
                        continue
                    frame = opener.open(message)
                except (transit.TransitError, keys.KeysError) as exc:
                    raise LogAuthError(f"{self.api.what}: log stream refused: {exc}") from None
                if self._frame(frame):
                    return True
        return True

    def _frame(self, frame: transit.LogFrame) -> bool:
        if frame.end is not None:
            code = frame.end.get("exit_code")
            self.end = LogEnd(
                str(frame.end.get("reason") or "")[:80],
                code if isinstance(code, int) and not isinstance(code, bool) else None,
                str(frame.end.get("detail") or "")[:1000],
            )
            if self.on_end is not None:
                self.on_end(self.end)
            return True
        stream, offset, chunk = frame.kind, frame.offset, frame.data
        if offset + len(chunk) <= self.offset:
            return False  # replayed: seen already
        if offset < self.offset:
            chunk = chunk[self.offset - offset :]
        elif offset > self.offset:
            self.offset = offset  # a gap the provider could not keep (over its log limit)
        self.offset += len(chunk)
        self.on_output(str(stream), chunk)
        return False
