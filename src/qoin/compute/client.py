"""The compute client (docs/spec/compute.md §6): run a job on the market's providers, follow it,
fetch its outputs, dispute it, check it locally.

``run`` (:func:`submit` then :func:`follow`):

1. **match**: reads the book (asks and mediators) and ranks the providers that can take the job
   (:func:`rank`: price, then free capacity, then reputation), saying why each other one is
   refused (price over the limit, not enough free CPUs/memory/GPUs, executor not offered, k too
   low, not enough free collateral, no mediator in common); for ``spot`` and ``replicated`` it
   picks a mediator that enough of them accept (:func:`plans`). It places the bid, offers the job
   to the chosen providers (``POST /offer`` with the spec and the job key sealed to each one's
   ML-KEM key), checks each signed acceptance, replaces a provider that refuses or does not answer
   by the next one, forms the deal and hands the spec and the job key to the mediator
   (``POST /mediate``). A deal that cannot form has its bid cancelled (the deposit back).
2. **stage, run**: the provider's job state (``GET /jobs/{deal}``) and its live stdout/stderr
   (``WS /jobs/{deal}/logs``, reconnecting with ``?from=`` the last byte received).
3. **commit, verify, settle**: the deal's events, followed by one log subscription (topic 2 = the
   deal), caught up with ``qoin_getLogs`` after every reconnection.
4. **outputs**: once the result is final (the check phase, or the settlement) the outputs archive is
   fetched from the storage market by the CID the provider serves, decrypted with the key only the
   client and the mediator can derive (:func:`qoin.compute.keys.output_master`), and unpacked
   against the root the provider revealed on chain (:func:`qoin.compute.outputs.unpack`: every file
   verified). The job's exit status comes from that verified manifest.

The job key (drawn per job; it seals the inputs' file keys and the outputs) is kept in a job record
under ``$QOIN_HOME/compute/jobs`` sealed under a key derived from the client's keystore, so that
``get`` works later from the same keystore.

``status`` (chain and provider), ``logs``, ``get``, ``dispute``, ``asks`` and ``local`` (the spec run
twice with the local executor; are the result roots equal?) are the other commands.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qoin.actors.compute_market import MAX_MEDIATORS, ZERO_ADDRESS
from qoin.compute import jobspec, keys, market
from qoin.compute.jobspec import (
    Determinism,
    Executor,
    Input,
    JobSpec,
    JobSpecError,
    OutputLimits,
    Resources,
    Verification,
)
from qoin.compute.market import (
    COMPUTE_MARKET,
    AskInfo,
    BidInfo,
    ComputeMarketView,
    DealInfo,
    MarketError,
    MediatorInfo,
    Outcome,
    Phase,
    VerdictKind,
)
from qoin.compute.params import MAX_COLLATERAL_PPM, ComputeParams
from qoin.crypto import hybrid
from qoin.crypto.address import Address, AddressError
from qoin.crypto.hashing import tagged_hash
from qoin.crypto.hybrid import HybridKeyPair, HybridSignature
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.execution.abi import Value, decode_value
from qoin.execution.events import MAX_LOG_RANGE
from qoin.rpc.client import RpcCallError, RpcClient, RpcTimeout, Subscription, subscribe
from qoin.storage import crypt, retrieve
from qoin.storage.client import NO_PROGRESS, Progress
from qoin.storage.client import NotFound as StorageNotFound
from qoin.storage.market import MarketView
from qoin.storage.params import PPM
from qoin.wallet import CallReverted, Wallet, WalletError

# -- exit codes ------------------------------------------------------------------------------------

EXIT_NO_MATCH: Final = 120
"""``run``: no deal formed (no provider matched, or none accepted); the bid, if placed, was
cancelled."""
EXIT_UNDELIVERED: Final = 121
"""``run``: the deal settled without a result (no provider revealed one in time, or the mediation
timed out); the client was refunded."""
EXIT_NO_OUTPUTS: Final = 122
"""``run``: a result was revealed but its outputs could not be fetched or did not verify."""
EXIT_NON_DETERMINISTIC: Final = 123
"""``run``: the mediator judged the job non-deterministic (its results differ from run to run)."""
EXIT_TIMEOUT: Final = 124
"""The job ran past its timeout (as coreutils' ``timeout``)."""
EXIT_LIMIT: Final = 125
"""The job broke a limit: memory, processes, output size or count, log size, wasm fuel."""
EXIT_NOT_RUN: Final = 126
"""The executor could not start the job, or the provider cancelled it."""
REASON_EXIT: Final = {
    "timeout": EXIT_TIMEOUT,
    "memory": EXIT_LIMIT,
    "processes": EXIT_LIMIT,
    "output-limit": EXIT_LIMIT,
    "log-limit": EXIT_LIMIT,
    "fuel": EXIT_LIMIT,
    "cancelled": EXIT_NOT_RUN,
    "failed": EXIT_NOT_RUN,
}
"""The exit status of a job that did not exit by itself, by its stop reason."""

# -- bounds ----------------------------------------------------------------------------------------

DEFAULT_DEADLINE_BLOCKS: Final = 200
"""Blocks a bid stays open by default (at most the network's ``max_bid_blocks``): the deal forms
within seconds, or the bid is cancelled."""
HTTP_CONNECT_S: Final = 10.0
HTTP_ANSWER_S: Final = 60.0
"""Seconds a provider may take to answer an offer (it reads the chain, opens the keys)."""
OFFER_ATTEMPTS: Final = 8
"""Tries of one offer while the provider's node has not seen the bid yet (404, 425, 503)."""
OFFER_BACKOFF_S: Final = 0.25
RETRY_STATUSES: Final = frozenset({404, 425, 429, 502, 503, 504})
MAX_JSON_ANSWER: Final = 64 * 1024
"""The largest JSON answer read from a provider (an offer, a job's state)."""
MAX_RESULT_ANSWER: Final = 8 << 20
"""The largest ``/result`` answer (it carries the manifest)."""
MAX_LOG_FRAME: Final = 1 << 20
"""The largest WebSocket frame of a log stream."""
MAX_LOG_QUERIES: Final = 1_000
"""Log queries of :data:`MAX_LOG_RANGE` blocks one look-up makes at most."""
POLL_S: Final = 0.5
"""How often the provider's job state is asked while the job runs."""
EVENT_WAIT_S: Final = 0.25
"""How long one read of the deal's subscription waits."""
HEAD_CHECK_S: Final = 2.0
"""How often the node's head is read while following a deal."""
STALL_S: Final = 300.0
"""Seconds without a new block after which following a deal gives up (the node is stuck)."""
RECONNECT_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits before successive reconnections of a log stream or the subscription (the last repeats)."""
OUTPUTS_WAIT_S: Final = 180.0
"""Seconds to wait for a provider to serve its stored outputs' CID after it revealed."""
MAX_OUTPUT_ARCHIVE: Final = 1 << 31
"""The largest outputs archive fetched (2 GiB)."""
MAX_RECORD: Final = 512 * 1024
"""The largest job record file read."""
JOBS_DIR: Final = Path("compute") / "jobs"
"""Where job records live, under ``$QOIN_HOME``."""
INFO_RECORD: Final = b"QOIN/compute/client-jobs/v1"
RECEIPT_TIMEOUT_S: Final = 120.0
OUTPUTS_DIR: Final = "outputs"
"""Where the job's output files are saved, under ``--out``."""
STDOUT_FILE: Final = "stdout"
"""Where the job's stdout (part of its result) is saved, under ``--out``."""
PHASES: Final = ("match", "stage", "run", "commit", "verify", "settle")
"""The phases ``run`` shows, in order."""

_INPUT = re.compile(r"(?:0x)?([0-9a-fA-F]{64}):(/.*)")
_ENV = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_ENDPOINT = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}")


class ComputeClientError(QoinError):
    """A compute client operation that cannot go on; the message says why and what to do."""


class BadOptions(ComputeClientError):
    """Options no job can have: the command's input must change (exit 2)."""


class NoMatch(ComputeClientError):
    """No deal could form: no provider matched, or none of those that did accepted. The message
    lists every provider with the reason it was refused."""

    def __init__(self, message: str, refusals: Sequence[Refusal]) -> None:
        super().__init__(message)
        self.refusals = tuple(refusals)


class NotFound(ComputeClientError):
    """No deal (open or settled) or bid has that id."""


# -- options and the spec --------------------------------------------------------------------------


@dataclass(frozen=True)
class InputRef:
    """An input as given on the command line: ``CID:/path`` (a storage-market file) or, for
    ``local`` only, ``FILE:/path``."""

    path: str
    """Where the job sees it."""
    cid: bytes | None = None
    """Its content id, for a stored file."""
    file: Path | None = None
    """A local file (``local``)."""


def parse_input(text: str, *, local: bool = False) -> InputRef:
    """``CID:/path`` (64 hex digits); with ``local``, also ``FILE:/path``. :class:`BadOptions`
    saying why not."""
    found = _INPUT.fullmatch(text.strip())
    if found is not None:
        return InputRef(found[2], cid=bytes.fromhex(found[1]))
    if local and ":/" in text:
        name, _, rest = text.rpartition(":/")
        if name:
            return InputRef("/" + rest, file=Path(name))
    where = "CID:/path or FILE:/path" if local else "CID:/path (a content id from qoin storage put)"
    raise BadOptions(f"--input {text[:80]!r} is not {where}")


def parse_env(text: str) -> tuple[str, str]:
    """``NAME=VALUE``; :class:`BadOptions` if it is not."""
    found = _ENV.fullmatch(text)
    if found is None:
        raise BadOptions(f"--env {text[:80]!r} is not NAME=VALUE")
    return found[1], found[2]


@dataclass(frozen=True)
class JobOptions:
    """What a job asks for (``run`` and ``local`` options)."""

    command: tuple[str, ...] = ()
    executor: Executor = Executor.SANDBOX
    image: str = ""
    env: tuple[tuple[str, str], ...] = ()
    inputs: tuple[InputRef, ...] = ()
    cpus: int = 1
    memory: int = 1 << 30
    gpus: int = 0
    gpu_model: str = ""
    timeout: int = 600
    network: bool = False
    determinism: Determinism = Determinism.EXACT
    verification: Verification = Verification.NONE
    outputs: OutputLimits = field(default_factory=OutputLimits)

    def spec(self, keys_by_path: Mapping[str, bytes] | None = None) -> JobSpec:
        """The job spec (input keys from ``keys_by_path``, else empty); :class:`BadOptions` for
        a spec that breaks a rule (docs/spec/compute.md §2)."""
        wrapped = keys_by_path or {}
        items = []
        for ref in self.inputs:
            cid = ref.cid if ref.cid is not None else _local_cid(ref)
            items.append(Input(cid, ref.path, wrapped.get(ref.path, b"")))
        try:
            return JobSpec(
                executor=self.executor,
                command=self.command,
                image=self.image,
                env=self.env,
                inputs=tuple(items),
                resources=Resources(self.cpus, self.memory, self.gpus, self.gpu_model),
                timeout=self.timeout,
                network=self.network,
                determinism=self.determinism,
                verification=self.verification,
                outputs=self.outputs,
            )
        except JobSpecError as exc:
            raise BadOptions(str(exc).removeprefix("job spec: ")) from None


def _local_cid(ref: InputRef) -> bytes:
    """A stand-in content id for a local input (its path's hash: ``local`` never fetches it)."""
    return tagged_hash(b"QOIN/compute/local-input/v1", str(ref.file).encode())


@dataclass(frozen=True)
class MarketOptions:
    """How ``run`` chooses providers and pays."""

    max_price: int | None = None
    """Shor per CPU-second at most (None: the dearest provider considered)."""
    max_gpu_price: int | None = None
    """Shor per GPU-second at most (None: the dearest considered)."""
    min_collateral_ppm: int = 0
    """The least collateral multiple k (ppm) a provider must offer."""
    max_fee: int | None = None
    """The most a mediator may charge (None: any)."""
    deadline_blocks: int = DEFAULT_DEADLINE_BLOCKS
    """Blocks the bid stays open."""
    providers: tuple[Address, ...] = ()
    """Only these providers (empty: any)."""


def check_options(spec: JobSpec, options: MarketOptions, params: ComputeParams) -> None:
    """:class:`BadOptions` unless the network's market can take a job ``spec`` with ``options``."""
    if spec.timeout > params.max_timeout:
        raise BadOptions(
            f"--timeout is at most {params.max_timeout} seconds on this network, got {spec.timeout}"
        )
    if options.min_collateral_ppm > MAX_COLLATERAL_PPM:
        raise BadOptions(f"the collateral multiple is at most {MAX_COLLATERAL_PPM} ppm (k = 100)")
    if options.deadline_blocks < 1:
        raise BadOptions("--deadline is at least 1 block")


# -- ranking ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A provider that cannot take the job, and why."""

    provider: Address
    endpoint: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"provider": str(self.provider), "endpoint": self.endpoint, "reason": self.reason}


@dataclass(frozen=True)
class Candidate:
    """A provider that can take the job, and what it costs there."""

    ask: AskInfo
    cost: int
    """The most this replica can cost (its prices times the job's reserved seconds)."""
    collateral: int
    """What it locks."""

    @property
    def provider(self) -> Address:
        return self.ask.provider

    @property
    def reputation(self) -> float:
        """Share of its settled replicas among all it ended: settled / (settled + fined + not
        delivered); 1 for a provider with no history yet (counted as one settled)."""
        bad = self.ask.fined + self.ask.not_delivered
        return (self.ask.settled + 1) / (self.ask.settled + bad + 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": str(self.provider),
            "endpoint": self.ask.endpoint,
            "priceCpu": self.ask.price_cpu,
            "priceGpu": self.ask.price_gpu,
            "maxCost": self.cost,
            "collateral": self.collateral,
            "freeCpus": self.ask.free_cpus,
            "freeMemory": self.ask.free_memory,
            "freeGpus": self.ask.free_gpus,
            "settled": self.ask.settled,
            "fined": self.ask.fined,
            "notDelivered": self.ask.not_delivered,
        }


def executor_names(bits: int) -> list[str]:
    """The names of the executors in an ask's bit set."""
    return [e.name.lower() for e in Executor if bits & e.bit]


def refusal_reason(
    ask: AskInfo, spec: JobSpec, options: MarketOptions, client: Address | None = None
) -> str | None:
    """Why ``ask`` cannot take ``spec`` (None: it can, as far as its ask says)."""
    res = spec.resources
    name = spec.executor.name.lower()
    largest = market.max_payment(res.cpus, res.gpus, spec.timeout, ask.price_cpu, ask.price_gpu)
    collateral = market.collateral_for(largest, ask.collateral_ppm)
    checks = (
        (not options.providers or ask.provider in options.providers, "not one of --provider"),
        (ask.provider != client, "it is the client itself"),
        (
            ask.offers(spec.executor),
            f"executor {name} not offered (it offers {', '.join(executor_names(ask.executors))})",
        ),
        (
            options.max_price is None or ask.price_cpu <= options.max_price,
            f"price {ask.price_cpu} Shor per CPU-second is over --max-price {options.max_price}",
        ),
        (
            options.max_gpu_price is None or ask.price_gpu <= options.max_gpu_price,
            f"price {ask.price_gpu} Shor per GPU-second is over --max-gpu-price "
            f"{options.max_gpu_price}",
        ),
        (
            ask.free_cpus >= res.cpus,
            f"{ask.free_cpus} of {ask.cpus} CPUs free, the job needs {res.cpus}",
        ),
        (
            ask.free_memory >= res.memory,
            f"{ask.free_memory} of {ask.memory} bytes of memory free, the job needs {res.memory}",
        ),
        (
            ask.free_gpus >= res.gpus,
            f"{ask.free_gpus} of {ask.gpus} GPUs free, the job needs {res.gpus}",
        ),
        (
            not res.gpu_model or ask.gpu_model == res.gpu_model,
            f"GPU model {ask.gpu_model or 'none'!r}, the job needs {res.gpu_model!r}",
        ),
        (
            ask.collateral_ppm >= options.min_collateral_ppm,
            f"collateral multiple k = {ask.collateral_ppm / PPM:g} is below the "
            f"{options.min_collateral_ppm / PPM:g} asked for (k too low)",
        ),
        (
            ask.free_collateral >= collateral,
            f"{ask.free_collateral} Shor of free collateral, this job locks {collateral}",
        ),
    )
    return next((reason for ok, reason in checks if not ok), None)


def usable_mediators(
    mediators: Sequence[MediatorInfo],
    params: ComputeParams,
    options: MarketOptions,
    client: Address | None,
) -> list[MediatorInfo]:
    """Mediators a deal may name (active, staked enough, fee within ``max_fee``, not the
    client), cheapest and most reliable first."""
    found = [
        m
        for m in mediators
        if m.active
        and m.stake >= params.min_mediator_stake
        and (options.max_fee is None or m.fee <= options.max_fee)
        and m.mediator != client
    ]
    found.sort(key=lambda m: (m.fee, m.missed, -m.verdicts, m.mediator.raw))
    return found


@dataclass(frozen=True)
class Ranking:
    """The book ranked for a job."""

    candidates: tuple[Candidate, ...]
    """Providers that can take it, best first: price, then free capacity, then reputation."""
    refused: tuple[Refusal, ...]
    """The others, with the reason."""
    mediators: tuple[MediatorInfo, ...]
    """Mediators a deal may name (spot, replicated)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "candidates": [c.to_json() for c in self.candidates],
            "refused": [r.to_json() for r in self.refused],
            "mediators": [mediator_json(m) for m in self.mediators],
        }


def rank(
    asks: Sequence[AskInfo],
    mediators: Sequence[MediatorInfo],
    spec: JobSpec,
    options: MarketOptions,
    params: ComputeParams,
    client: Address | None = None,
) -> Ranking:
    """Rank the book for ``spec`` (see :class:`Ranking`)."""
    usable = usable_mediators(mediators, params, options, client)
    usable_set = {m.mediator for m in usable}
    candidates: list[Candidate] = []
    refused: list[Refusal] = []
    res = spec.resources
    for ask in asks:
        reason = refusal_reason(ask, spec, options, client)
        if reason is None and spec.verification is not Verification.NONE:
            common = [m for m in ask.mediators if m in usable_set and m != ask.provider]
            if not common:
                reason = (
                    "mediator sets disjoint: it accepts none of the usable mediators"
                    if ask.mediators
                    else "it accepts no mediator (spot and replicated need one)"
                )
        if reason is not None:
            refused.append(Refusal(ask.provider, ask.endpoint, reason))
            continue
        largest = market.max_payment(res.cpus, res.gpus, spec.timeout, ask.price_cpu, ask.price_gpu)
        candidates.append(
            Candidate(ask, largest, market.collateral_for(largest, ask.collateral_ppm))
        )
    candidates.sort(
        key=lambda c: (
            c.cost,
            -c.ask.free_cpus,
            -c.ask.free_memory,
            -c.ask.free_gpus,
            -c.reputation,
            c.provider.raw,
        )
    )
    return Ranking(tuple(candidates), tuple(refused), tuple(usable))


@dataclass(frozen=True)
class MatchPlan:
    """Providers to offer the job to with one mediator (None for ``none``)."""

    mediator: MediatorInfo | None
    providers: tuple[Candidate, ...]
    """In order of preference: the first r are asked first, the others replace refusals."""

    def cost(self, replicas: int) -> int:
        return sum(c.cost for c in self.providers[:replicas])


def plans(ranking: Ranking, spec: JobSpec) -> list[MatchPlan]:
    """The ways to form the deal, best first: for ``none`` one plan over every candidate; else
    one per usable mediator that at least r candidates accept (cheapest first, then fee)."""
    r = spec.replicas
    if spec.verification is Verification.NONE:
        return [MatchPlan(None, ranking.candidates)] if len(ranking.candidates) >= r else []
    found = []
    for mediator in ranking.mediators:
        willing = tuple(
            c
            for c in ranking.candidates
            if mediator.mediator in c.ask.mediators and c.provider != mediator.mediator
        )
        if len(willing) >= r:
            found.append(MatchPlan(mediator, willing))
    found.sort(key=lambda p: (p.cost(r), p.mediator.fee if p.mediator else 0))
    return found


def no_match_message(spec: JobSpec, ranking: Ranking, refusals: Sequence[Refusal]) -> str:
    """Why no deal can form, provider by provider."""
    r = spec.replicas
    lines = []
    if not refusals and not ranking.candidates:
        lines.append("no provider has an ask in the book")
    elif r > 1 and len(ranking.candidates) >= r:
        lines.append(f"no {r} providers share a usable mediator (replicated needs {r})")
    elif spec.verification is not Verification.NONE and not ranking.mediators:
        lines.append("no usable mediator is registered (spot and replicated need one)")
    for refusal in refusals:
        lines.append(f"{refusal.provider} ({refusal.endpoint}): {refusal.reason}")
    needed = f"{r} provider{'s' if r > 1 else ''}"
    return f"no deal: the job needs {needed} and none could take it:\n  " + "\n  ".join(lines)


# -- talking to providers --------------------------------------------------------------------------


def endpoint_url(endpoint: str) -> str:
    """The compute API base URL of a provider's ``host:port``."""
    if not _ENDPOINT.fullmatch(endpoint):
        raise ComputeClientError(f"provider endpoint {endpoint[:80]!r} is not host:port")
    return f"http://{endpoint}/compute/v1"


def _bounded_json(response: httpx.Response, what: str, bound: int = MAX_JSON_ANSWER) -> Any:
    raw = bytearray()
    for piece in response.iter_bytes():
        raw += piece
        if len(raw) > bound:
            raise ComputeClientError(f"{what}: answer over {bound} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ComputeClientError(f"{what}: HTTP {response.status_code}, not JSON") from None


def _reason(answer: Any, status: int) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return f"HTTP {status}: {answer['error'][:300]}"
    return f"HTTP {status}"


def _request(
    http: httpx.Client,
    method: str,
    url: str,
    what: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    bound: int = MAX_JSON_ANSWER,
) -> tuple[int, Any]:
    """One JSON request; (status, answer). :class:`ComputeClientError` if it gets no answer."""
    try:
        with http.stream(method, url, json=body, headers=dict(headers or {})) as response:
            return response.status_code, _bounded_json(response, what, bound)
    except httpx.HTTPError as exc:
        raise ComputeClientError(f"{what} did not answer: {exc or type(exc).__name__}") from None


def _hex(answer: Mapping[str, Any], key: str, what: str) -> bytes:
    value = answer.get(key)
    try:
        if isinstance(value, str):
            return bytes.fromhex(value)
    except ValueError:
        pass
    raise ComputeClientError(f"{what}: {key} is not hex")


def _int_field(answer: Mapping[str, Any], key: str, what: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ComputeClientError(f"{what}: {key} is not a number")
    return value


@dataclass(frozen=True)
class Acceptance:
    """A provider's signed acceptance of one replica of a bid."""

    candidate: Candidate
    replica: int
    signature: bytes
    price_cpu: int
    price_gpu: int
    collateral: int


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
) -> Acceptance:
    """Offer replica ``replica`` of ``bid`` to ``candidate`` (``POST /offer`` with the spec and
    the job key sealed to its KEM key) and check its signed acceptance; :class:`ComputeClientError`
    saying why not. A provider whose node has not seen the bid yet is asked again."""
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
    url = endpoint_url(ask.endpoint) + "/offer"
    wait = OFFER_BACKOFF_S
    for attempt in range(attempts):
        status, answer = _request(http, "POST", url, what, body=body)
        if status == 200 or status not in RETRY_STATUSES or attempt == attempts - 1:
            break
        time.sleep(wait)
        wait *= 2
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
) -> None:
    """Hand the spec and the job key (sealed to the mediator's KEM key) to the deal's mediator
    (``POST /mediate``); :class:`ComputeClientError` if it does not take them."""
    what = f"mediator {mediator.mediator} ({mediator.endpoint})"
    sealed = keys.seal_job_key(mediator.kem_key, job_key, job_hash)
    body = {"deal": deal_id, "spec": spec_bytes.hex(), "job_key": sealed.hex()}
    url = endpoint_url(mediator.endpoint) + "/mediate"
    wait = OFFER_BACKOFF_S
    for attempt in range(OFFER_ATTEMPTS):
        status, answer = _request(http, "POST", url, what, body=body)
        if status == 200 or status not in RETRY_STATUSES or attempt == OFFER_ATTEMPTS - 1:
            break
        time.sleep(wait)
        wait *= 2
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


# -- the chain -------------------------------------------------------------------------------------


def head(client: RpcClient) -> int:
    """The node's head height."""
    try:
        height = client.call("qoin_blockNumber")
    except RpcCallError as exc:
        raise ComputeClientError(f"cannot ask the node for its head: {exc}") from None
    if not isinstance(height, int) or isinstance(height, bool) or height < 0:
        raise ComputeClientError(f"qoin_blockNumber answered {height!r:.80}")
    return height


def _deal_topic(deal_id: int) -> str:
    return deal_id.to_bytes(32, "big").hex()


@dataclass(frozen=True)
class DealEvent:
    """One of the actor's events about a deal."""

    name: str
    height: int
    data: tuple[Value, ...]
    identity: tuple[str, str, int]
    """(block hash, transaction hash, log index): the same log seen twice is one event."""


def parse_log(log: Any) -> DealEvent | None:
    """A compute-market log on the wire as a :class:`DealEvent` (None: not one, or removed)."""
    if not isinstance(log, dict) or log.get("removed"):
        return None
    try:
        decoded = market.decode_event(log)
    except MarketError:
        return None
    height, index = log.get("blockNumber"), log.get("logIndex")
    if decoded is None or not isinstance(decoded[1], tuple) or not isinstance(height, int):
        return None
    identity = (
        str(log.get("blockHash")),
        str(log.get("transactionHash")),
        index if isinstance(index, int) else -1,
    )
    return DealEvent(decoded[0], height, decoded[1], identity)


def deal_logs(
    client: RpcClient, deal_id: int, start: int, end: int, max_queries: int = MAX_LOG_QUERIES
) -> list[DealEvent]:
    """The actor's events about ``deal_id`` (topic 2) in heights ``[start, end]``, oldest first."""
    start = max(start, end - max_queries * MAX_LOG_RANGE + 1, 0)
    found = []
    for first in range(start, end + 1, MAX_LOG_RANGE):
        query = {
            "fromBlock": first,
            "toBlock": min(end, first + MAX_LOG_RANGE - 1),
            "address": str(COMPUTE_MARKET),
            "topics": [None, None, [_deal_topic(deal_id)]],
        }
        try:
            logs = client.call("qoin_getLogs", query)
        except RpcCallError as exc:
            raise ComputeClientError(f"cannot read deal {deal_id}'s events: {exc}") from None
        for log in logs if isinstance(logs, list) else ():
            event = parse_log(log)
            if event is not None and event.data and event.data[0] == deal_id:
                found.append(event)
    return found


def _u(value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ComputeClientError(f"an event carries {value!r:.80} where a number belongs")
    return value


def _b(value: Value) -> bytes:
    if not isinstance(value, bytes):
        raise ComputeClientError(f"an event carries {value!r:.80} where bytes belong")
    return value


@dataclass
class DealStory:
    """What the events say about a deal, folded in order."""

    deal_id: int
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    formed_height: int | None = None
    job: bytes | None = None
    providers: tuple[Address, ...] = ()
    mediator: Address | None = None
    escrow: int = 0
    phase: Phase = Phase.RUN
    deadline: int = 0
    committed: set[int] = field(default_factory=set)
    revealed: dict[int, tuple[bytes, int, int]] = field(default_factory=dict)
    """replica -> (root, usage_cpu, usage_gpu)."""
    timed_out: list[tuple[int, int]] = field(default_factory=list)
    """(phase, replicas missing)."""
    disputed: bool = False
    mediation_deadline: int | None = None
    verdict: tuple[VerdictKind, bytes, int] | None = None
    """(kind, root, fee)."""
    mediation_timed_out: bool = False
    fined: dict[int, tuple[int, int]] = field(default_factory=dict)
    """replica -> (collateral slashed, reason)."""
    paid: dict[int, int] = field(default_factory=dict)
    settled: tuple[Outcome, int, int, int, int] | None = None
    """(outcome, payments, refund, slashed, burned)."""
    settled_height: int | None = None

    def add(self, event: DealEvent) -> bool:
        """Fold ``event`` in; False if it was seen already (or is not this deal's)."""
        if event.identity in self.seen or not event.data or event.data[0] != self.deal_id:
            return False
        self.seen.add(event.identity)
        data = event.data
        try:
            self._fold(event.name, event.height, data)
        except (IndexError, ValueError):
            raise ComputeClientError(
                f"event {event.name} of deal {self.deal_id} is malformed"
            ) from None
        return True

    def _fold(self, name: str, height: int, data: tuple[Value, ...]) -> None:
        if name == "DealFormed":
            self.formed_height = height
            self.job = _b(data[1])
            providers = data[2]
            self.providers = (
                tuple(p for p in providers if isinstance(p, Address))
                if isinstance(providers, tuple)
                else ()
            )
            mediator = data[3]
            self.mediator = (
                mediator if isinstance(mediator, Address) and mediator != ZERO_ADDRESS else None
            )
            self.deadline = _u(data[4])
            self.escrow = _u(data[5])
        elif name == "PhaseStarted":
            self.phase, self.deadline = Phase(_u(data[1])), _u(data[2])
        elif name == "ResultCommitted":
            self.committed.add(_u(data[1]))
        elif name == "ResultRevealed":
            self.revealed[_u(data[1])] = (_b(data[2]), _u(data[3]), _u(data[4]))
        elif name == "DealTimedOut":
            self.timed_out.append((_u(data[1]), _u(data[2])))
        elif name == "DisputeOpened":
            self.disputed = True
        elif name == "MediationStarted":
            self.mediation_deadline = _u(data[1])
        elif name == "Verdict":
            self.verdict = (VerdictKind(_u(data[1])), _b(data[2]), _u(data[3]))
        elif name == "MediationTimedOut":
            self.mediation_timed_out = True
        elif name == "ProviderFined":
            self.fined[_u(data[1])] = (_u(data[2]), _u(data[3]))
        elif name == "ProviderPaid":
            self.paid[_u(data[1])] = _u(data[2])
        elif name == "DealSettled":
            self.settled = (
                Outcome(_u(data[1])),
                _u(data[2]),
                _u(data[3]),
                _u(data[4]),
                _u(data[5]),
            )
            self.settled_height = height

    def final_root(self) -> tuple[int, bytes] | None:
        """(replica, root) of the result to keep: the verdict's root when a verdict named one,
        else the first revealed root (agreeing results); None when there is none."""
        if self.verdict is not None and self.verdict[0] in (
            VerdictKind.WRONG_RESULT,
            VerdictKind.NOT_DELIVERED,
        ):
            for replica, (root, _, _) in sorted(self.revealed.items()):
                if root == self.verdict[1]:
                    return replica, root
            return None
        for replica, (root, _, _) in sorted(self.revealed.items()):
            return replica, root
        return None


FINE_REASONS: Final = {1: "wrong result", 2: "not delivered"}
OUTCOMES: Final = {
    Outcome.COMPLETED: "completed",
    Outcome.MEDIATED: "mediated",
    Outcome.UNDELIVERED: "undelivered",
    Outcome.MEDIATION_TIMED_OUT: "mediation timed out",
}
VERDICTS: Final = {
    VerdictKind.WRONG_RESULT: "wrong-result",
    VerdictKind.CORRECT_RESULT: "correct-result",
    VerdictKind.NON_DETERMINISTIC: "non-deterministic",
    VerdictKind.NOT_DELIVERED: "not-delivered",
}


def story_json(story: DealStory) -> dict[str, Any]:
    """What the events say, in JSON."""
    verdict = story.verdict
    settled = story.settled
    return {
        "formed": story.formed_height,
        "providers": [str(p) for p in story.providers],
        "mediator": None if story.mediator is None else str(story.mediator),
        "escrow": story.escrow,
        "committed": sorted(story.committed),
        "revealed": {
            str(i): {"root": root.hex(), "usageCpu": cpu, "usageGpu": gpu}
            for i, (root, cpu, gpu) in sorted(story.revealed.items())
        },
        "timedOut": [{"phase": p, "missing": m} for p, m in story.timed_out],
        "disputed": story.disputed,
        "verdict": None
        if verdict is None
        else {"kind": VERDICTS[verdict[0]], "root": verdict[1].hex(), "fee": verdict[2]},
        "mediationTimedOut": story.mediation_timed_out,
        "fined": {
            str(i): {"collateral": amount, "reason": FINE_REASONS.get(reason, str(reason))}
            for i, (amount, reason) in sorted(story.fined.items())
        },
        "paid": {str(i): amount for i, amount in sorted(story.paid.items())},
        "settled": None
        if settled is None
        else {
            "outcome": OUTCOMES[settled[0]],
            "payments": settled[1],
            "refund": settled[2],
            "slashed": settled[3],
            "burned": settled[4],
            "height": story.settled_height,
        },
    }


# -- job records -----------------------------------------------------------------------------------


def jobs_dir(home: Path) -> Path:
    """Where the job records of ``$QOIN_HOME`` live."""
    return home / JOBS_DIR


def _record_cipher(keypair: HybridKeyPair) -> ChaCha20Poly1305:
    key = HKDF(hashes.SHA256(), 32, salt=None, info=INFO_RECORD).derive(crypt.master_key(keypair))
    return ChaCha20Poly1305(key)


@dataclass(frozen=True)
class JobRecord:
    """What the client keeps of a job it ran: the spec and the job key (sealed under a key of
    its keystore), and where its outputs were stored."""

    deal: int
    job: bytes
    spec: bytes
    job_key: bytes
    outputs: dict[int, str] = field(default_factory=dict)
    """replica -> CID of its stored outputs archive, once known."""

    def path(self, directory: Path) -> Path:
        return directory / f"{self.deal}-{self.job.hex()[:16]}.json"

    def save(self, directory: Path, keypair: HybridKeyPair) -> Path:
        nonce = os.urandom(12)
        sealed = nonce + _record_cipher(keypair).encrypt(nonce, self.job_key, self.job)
        obj = {
            "deal": self.deal,
            "job": self.job.hex(),
            "spec": self.spec.hex(),
            "jobKey": sealed.hex(),
            "outputs": {str(k): v for k, v in sorted(self.outputs.items())},
        }
        directory.mkdir(parents=True, exist_ok=True)
        path = self.path(directory)
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(obj, indent=2) + "\n")
        os.chmod(temp, 0o600)
        temp.replace(path)
        return path


def load_record(
    directory: Path, deal_id: int, job: bytes, keypair: HybridKeyPair
) -> JobRecord | None:
    """The record of deal ``deal_id`` for job ``job`` (None: none kept here);
    :class:`ComputeClientError` if it is damaged or another keystore's."""
    path = directory / f"{deal_id}-{job.hex()[:16]}.json"
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()[: MAX_RECORD + 1]
        if len(raw) > MAX_RECORD:
            raise ValueError("too large")
        obj = json.loads(raw)
        spec = bytes.fromhex(obj["spec"])
        sealed = bytes.fromhex(obj["jobKey"])
        outputs = {int(k): str(v) for k, v in dict(obj.get("outputs") or {}).items()}
        if obj["deal"] != deal_id or bytes.fromhex(obj["job"]) != job:
            raise ValueError("another deal's")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ComputeClientError(f"job record {path} is unusable: {exc}") from None
    if jobspec.job_hash(spec) != job:
        raise ComputeClientError(f"job record {path} holds a spec of another job")
    try:
        job_key = _record_cipher(keypair).decrypt(sealed[:12], sealed[12:], job)
    except (InvalidTag, ValueError):
        raise ComputeClientError(
            f"job record {path} was written with another keystore: give the one that ran the job"
        ) from None
    return JobRecord(deal_id, job, spec, job_key, outputs)


# -- progress --------------------------------------------------------------------------------------


class Watcher(Protocol):
    """Where ``run`` reports what happens."""

    def phase(self, phase: str, message: str) -> None:
        """``phase`` (one of :data:`PHASES`) moved on; ``message`` says how."""

    def output(self, stream: str, data: bytes) -> None:
        """A piece of the job's ``stdout`` or ``stderr``, live."""


class NoWatcher:
    """Reports nothing."""

    def phase(self, phase: str, message: str) -> None:
        """Nothing."""

    def output(self, stream: str, data: bytes) -> None:
        """Nothing."""


NO_WATCHER: Final = NoWatcher()


# -- live logs -------------------------------------------------------------------------------------


@dataclass
class LogEnd:
    """The last frame of a log stream."""

    reason: str
    exit_code: int | None
    detail: str


class LogStream:
    """Follows one replica's stdout/stderr over the provider's WebSocket in a thread, from byte
    ``start``; a dropped connection is opened again with ``?from=`` the next byte (a provider that
    does not know the job yet is asked again), until the last frame, :meth:`stop`, or
    ``give_up_s`` seconds without any answer."""

    def __init__(
        self,
        api: ProviderApi,
        deal_id: int,
        on_output: Callable[[str, bytes], None],
        start: int = 0,
        give_up_s: float = 600.0,
        stop_at: int | None = None,
        on_end: Callable[[LogEnd], None] | None = None,
    ) -> None:
        self.api = api
        self.on_end = on_end
        self.deal_id = deal_id
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

    def _url(self) -> str:
        base = self.api.base.replace("http://", "ws://", 1)
        return f"{base}/jobs/{self.deal_id}/logs?from={self.offset}"

    def _run(self) -> None:
        last_answer = time.monotonic()
        tries = 0
        while not self._stop.is_set():
            try:
                if self._session():
                    return
                last_answer = time.monotonic()
                tries = 0
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

        try:
            connection = connect(
                self._url(),
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
            while not self._stop.is_set():
                if self.stop_at is not None and self.offset >= self.stop_at:
                    return True
                try:
                    text = connection.recv(timeout=1.0)
                except TimeoutError:
                    continue
                except (ConnectionClosed, OSError) as exc:
                    raise ComputeClientError(f"{self.api.what}: log stream cut: {exc}") from None
                if self._frame(text):
                    return True
        return True

    def _frame(self, text: str | bytes) -> bool:
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            raise ComputeClientError(f"{self.api.what}: a log frame is not JSON") from None
        if not isinstance(frame, dict):
            return False
        if frame.get("end"):
            code = frame.get("exit_code")
            self.end = LogEnd(
                str(frame.get("reason") or ""),
                code if isinstance(code, int) and not isinstance(code, bool) else None,
                str(frame.get("detail") or "")[:1000],
            )
            if self.on_end is not None:
                self.on_end(self.end)
            return True
        stream, offset, data = frame.get("stream"), frame.get("offset"), frame.get("data")
        if stream not in ("stdout", "stderr") or not isinstance(offset, int):
            return False
        try:
            chunk = base64.b64decode(str(data), validate=True)
        except ValueError:
            raise ComputeClientError(f"{self.api.what}: a log frame's data is not base64") from None
        if offset + len(chunk) <= self.offset:
            return False  # replayed: seen already
        if offset < self.offset:
            chunk = chunk[self.offset - offset :]
        elif offset > self.offset:
            self.offset = offset  # a gap the provider could not keep (over its log limit)
        self.offset += len(chunk)
        self.on_output(str(stream), chunk)
        return False


# -- submitting --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    """A deal formed for a job."""

    deal: int
    spec: JobSpec
    spec_bytes: bytes
    job_key: bytes
    params: ComputeParams
    bid: BidInfo
    providers: tuple[Candidate, ...]
    """Replica i's provider."""
    acceptances: tuple[Acceptance, ...]
    mediator: MediatorInfo | None
    formed_height: int
    escrow: int
    tx_fees: int
    """Fees of the client's transactions so far (bid, deal)."""
    transactions: tuple[str, ...]
    refusals: tuple[Refusal, ...]
    """Providers refused on the way (ranking and offers)."""
    mediator_error: str = ""
    """Why the mediator did not take the job, if it did not."""


def _fee(receipt: Mapping[str, Any]) -> int:
    fee = receipt.get("fee")
    return fee if isinstance(fee, int) and not isinstance(fee, bool) else 0


def _returned_int(receipt: Mapping[str, Any], method: str) -> int:
    try:
        value = decode_value(bytes.fromhex(str(receipt.get("returnData") or "")))
    except (ValueError, DecodeError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ComputeClientError(f"{method} returned {receipt.get('returnData')!r:.80}, no id")
    return value


def input_keys(
    storage: MarketView, keypair: HybridKeyPair, job_key: bytes, refs: Sequence[InputRef]
) -> dict[str, bytes]:
    """Each encrypted input's file key sealed under the job key (by path); plaintext inputs get
    none. :class:`BadOptions` for an input no open storage deal holds."""
    wrapped: dict[str, bytes] = {}
    master: bytes | None = None
    for ref in refs:
        if ref.cid is None:
            raise BadOptions(f"input {ref.path}: the market runs stored files only (CID:/path)")
        try:
            content = retrieve.locate(storage, ref.cid)
        except StorageNotFound:
            raise BadOptions(
                f"input {ref.cid.hex()}: no open storage deal holds it (store it first with "
                "qoin storage put)"
            ) from None
        except QoinError as exc:
            raise ComputeClientError(f"input {ref.cid.hex()}: {exc}") from None
        if not content.encrypted:
            continue
        master = master or crypt.master_key(keypair)
        try:
            file_key = retrieve.file_key_of(storage, ref.cid, master)
        except QoinError as exc:
            raise ComputeClientError(f"input {ref.cid.hex()}: {exc}") from None
        wrapped[ref.path] = jobspec.wrap_input_key(job_key, ref.cid, ref.path, file_key)
    return wrapped


@dataclass(frozen=True)
class Prepared:
    """A job made ready to bid: its spec, the ranked book, the ways to form the deal, the bid's
    limits."""

    spec: JobSpec
    job_key: bytes
    params: ComputeParams
    ranking: Ranking
    plans: tuple[MatchPlan, ...]
    max_price_cpu: int
    max_price_gpu: int
    mediators: tuple[MediatorInfo, ...]
    """The bid's accepted mediators (those of the plans, at most 8)."""
    max_fee: int
    deposit: int
    deadline_blocks: int = DEFAULT_DEADLINE_BLOCKS
    """Blocks the bid stays open."""
    collateral_ppm: int = 0
    """The least collateral multiple the bid accepts."""

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.spec.job_hash.hex(),
            "replicas": self.spec.replicas,
            "ranking": self.ranking.to_json(),
            "plans": [
                {
                    "mediator": None if p.mediator is None else str(p.mediator.mediator),
                    "providers": [str(c.provider) for c in p.providers],
                }
                for p in self.plans
            ],
            "maxPriceCpu": self.max_price_cpu,
            "maxPriceGpu": self.max_price_gpu,
            "maxFee": self.max_fee,
            "deposit": self.deposit,
        }


def prepare(
    view: ComputeMarketView,
    options: JobOptions,
    market_options: MarketOptions,
    keypair: HybridKeyPair,
    storage: MarketView | None = None,
    job_key: bytes | None = None,
) -> Prepared:
    """The job's spec (input keys sealed under a fresh job key), the ranked book and the plans.
    :class:`NoMatch` if no plan can form the deal."""
    params = view.params()
    check_options(options.spec(), market_options, params)
    job_key = job_key or os.urandom(jobspec.JOB_KEY_SIZE)
    wrapped: dict[str, bytes] = {}
    if options.inputs:
        if storage is None:
            raise ComputeClientError("inputs need the storage market's view")
        wrapped = input_keys(storage, keypair, job_key, options.inputs)
    spec = options.spec(wrapped)
    ranking = rank(view.asks(), view.mediators(), spec, market_options, params, keypair.address)
    found = plans(ranking, spec)
    if not found:
        raise NoMatch(no_match_message(spec, ranking, ranking.refused), ranking.refused)
    listed: list[MediatorInfo] = []
    for plan in found:
        if plan.mediator is not None and plan.mediator not in listed:
            listed.append(plan.mediator)
    listed = listed[:MAX_MEDIATORS]
    found = [p for p in found if p.mediator is None or p.mediator in listed]
    considered = {c.provider: c for p in found for c in p.providers}.values()
    max_cpu = market_options.max_price
    if max_cpu is None:
        max_cpu = max(c.ask.price_cpu for c in considered)
    max_gpu = market_options.max_gpu_price
    if max_gpu is None:
        max_gpu = max(c.ask.price_gpu for c in considered)
    max_fee = max((m.fee for m in listed), default=0)
    res = spec.resources
    deposit = market.bid_deposit(
        spec.replicas, res.cpus, res.gpus, spec.timeout, max_cpu, max_gpu, max_fee
    )
    return Prepared(
        spec, job_key, params, ranking, tuple(found), max_cpu, max_gpu, tuple(listed), max_fee,
        deposit, market_options.deadline_blocks, market_options.min_collateral_ppm,
    )  # fmt: skip


def _gather(
    http: httpx.Client,
    view: ComputeMarketView,
    chain_id: int,
    bid: BidInfo,
    plan: MatchPlan,
    spec_bytes: bytes,
    job_key: bytes,
    refused: dict[Address, str],
    watcher: Watcher,
) -> list[Acceptance] | None:
    """r acceptances under ``plan`` (its first r providers asked at once, the others in turn
    for each refusal), or None; ``refused`` collects every provider's refusal."""
    r = bid.replicas
    mediator = None if plan.mediator is None else plan.mediator.mediator
    queue = [c for c in plan.providers if c.provider not in refused]

    def ask(replica: int, candidate: Candidate) -> Acceptance | None:
        try:
            return request_acceptance(
                http, view, chain_id, bid, replica, candidate, mediator, spec_bytes, job_key
            )
        except (ComputeClientError, QoinError) as exc:
            refused[candidate.provider] = str(exc)
            watcher.phase("match", f"{candidate.provider} refused: {exc}")
            return None

    first, queue = queue[:r], queue[r:]
    if len(first) < r:
        return None
    with ThreadPoolExecutor(max_workers=r) as pool:
        answers = list(pool.map(ask, range(r), first))
    accepted: list[Acceptance] = []
    for replica, first_answer in enumerate(answers):
        answer = first_answer
        while answer is None and queue:
            answer = ask(replica, queue.pop(0))
        if answer is None:
            return None
        accepted.append(answer)
    return accepted


def _abandon(wallet: Wallet, bid: BidInfo, why: str) -> str:
    """Cancel the open bid; what happened (its deposit back, or when it comes back)."""
    try:
        market.cancel_bid(bid.bid_id).transact(wallet, RECEIPT_TIMEOUT_S)
    except WalletError as exc:
        return (
            f"{why}; cancelling bid {bid.bid_id} failed too ({exc}): its deposit of "
            f"{bid.deposit} Shor comes back in full when it expires at height {bid.deadline}"
        )
    return f"{why}; bid {bid.bid_id} was cancelled and its deposit of {bid.deposit} Shor refunded"


@dataclass
class _Sent:
    """The client's transactions of one job and their fees."""

    ids: list[str] = field(default_factory=list)
    fees: int = 0

    def add(self, receipt: Mapping[str, Any]) -> None:
        self.fees += _fee(receipt)
        if receipt.get("transactionHash"):
            self.ids.append(str(receipt["transactionHash"]))


def _place_bid(wallet: Wallet, view: ComputeMarketView, prepared: Prepared, sent: _Sent) -> BidInfo:
    """Place the bid for ``prepared`` (its deposit checked against the balance first)."""
    spec, params = prepared.spec, prepared.params
    balance = wallet.balance()
    if balance < prepared.deposit:
        raise ComputeClientError(
            f"the bid's deposit is {prepared.deposit} Shor ({spec.replicas} x the largest payment "
            f"at {prepared.max_price_cpu} Shor per CPU-second + the mediation reserve of "
            f"{prepared.max_fee}; what the deal does not hold comes back when it forms), but "
            f"{wallet.address} holds {balance}"
        )
    blocks = max(1, min(prepared.deadline_blocks, params.max_bid_blocks))
    deadline = head(wallet.client) + blocks
    call = market.place_bid(
        spec,
        max_price_cpu=prepared.max_price_cpu,
        max_price_gpu=prepared.max_price_gpu,
        deadline=deadline,
        mediators=[m.mediator for m in prepared.mediators],
        max_fee=prepared.max_fee,
        collateral_ppm=prepared.collateral_ppm,
        deposit=prepared.deposit,
    )
    try:
        receipt = call.transact(wallet, RECEIPT_TIMEOUT_S)
    except CallReverted as exc:
        raise ComputeClientError(f"the bid was refused: {exc.reason}") from None
    except WalletError as exc:
        raise ComputeClientError(
            f"placing the bid failed ({exc}); if it was mined after all, its deposit comes back "
            f"when it expires at height {deadline}"
        ) from None
    sent.add(receipt)
    bid_id = _returned_int(receipt, "bid")
    bid = view.get_bid(bid_id)
    if bid is None:
        raise ComputeClientError(f"bid {bid_id} was placed but the node does not show it")
    return bid


def _match(
    http: httpx.Client,
    wallet: Wallet,
    view: ComputeMarketView,
    prepared: Prepared,
    bid: BidInfo,
    watcher: Watcher,
) -> tuple[MatchPlan, list[Acceptance], list[Refusal]]:
    """Acceptances under the first plan that gets r of them; :class:`NoMatch` (the bid
    cancelled) if none does."""
    spec_bytes = prepared.spec.encode()
    refused: dict[Address, str] = {}
    for plan in prepared.plans:
        accepted = _gather(
            http, view, wallet.chain_id, bid, plan, spec_bytes, prepared.job_key, refused, watcher
        )
        if accepted is not None:
            return plan, accepted, _refusals(prepared, refused)
    refusals = _refusals(prepared, refused)
    why = _abandon(wallet, bid, "no provider accepted")
    message = no_match_message(prepared.spec, prepared.ranking, refusals)
    raise NoMatch(f"{message}\n{why}", refusals)


def _refusals(prepared: Prepared, refused: Mapping[Address, str]) -> list[Refusal]:
    return list(prepared.ranking.refused) + [
        Refusal(p, _endpoint_of(prepared, p), f"refused the offer: {why}")
        for p, why in refused.items()
    ]


def submit(
    wallet: Wallet,
    view: ComputeMarketView,
    prepared: Prepared,
    jobs: Path,
    watcher: Watcher = NO_WATCHER,
    http: httpx.Client | None = None,
) -> Submitted:
    """Bid for ``prepared``, gather acceptances, form the deal, keep the job record in ``jobs``,
    hand the job to the mediator. :class:`NoMatch` (the bid cancelled) if no deal forms."""
    spec = prepared.spec
    spec_bytes = spec.encode()
    sent = _Sent()
    bid = _place_bid(wallet, view, prepared, sent)
    watcher.phase(
        "match",
        f"bid {bid.bid_id} placed: deposit {bid.deposit} Shor, open until height {bid.deadline}",
    )
    own = http is None
    client = http or httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    )
    try:
        chosen, accepted, refusals = _match(client, wallet, view, prepared, bid, watcher)
        mediator = None if chosen.mediator is None else chosen.mediator.mediator
        call = market.form_deal(
            bid.bid_id,
            [a.candidate.provider for a in accepted],
            [a.signature for a in accepted],
            mediator,
        )
        try:
            sent.add(call.transact(wallet, RECEIPT_TIMEOUT_S))
        except WalletError as exc:
            if view.get_deal(bid.bid_id) is None:
                why = _abandon(wallet, bid, f"the deal call failed: {exc}")
                raise NoMatch(f"no deal: {why}", refusals) from None
        deal = view.get_deal(bid.bid_id)
        if deal is None:
            raise ComputeClientError(f"deal {bid.bid_id} formed but the node does not show it")
        try:
            JobRecord(deal.deal_id, spec.job_hash, spec_bytes, prepared.job_key).save(
                jobs, wallet.keypair
            )
        except OSError as exc:
            watcher.phase(
                "match",
                f"warning: the job record cannot be kept in {jobs} ({exc.strerror}): "
                "qoin compute get will not be able to decrypt this job's outputs later",
            )
        mediator_error = ""
        if chosen.mediator is not None:
            try:
                send_to_mediator(
                    client, chosen.mediator, deal.deal_id, spec_bytes, prepared.job_key,
                    spec.job_hash,
                )  # fmt: skip
            except QoinError as exc:
                mediator_error = str(exc)
    finally:
        if own:
            client.close()
    return Submitted(
        deal=deal.deal_id,
        spec=spec,
        spec_bytes=spec_bytes,
        job_key=prepared.job_key,
        params=prepared.params,
        bid=bid,
        providers=tuple(a.candidate for a in accepted),
        acceptances=tuple(accepted),
        mediator=chosen.mediator,
        formed_height=deal.formed,
        escrow=deal.escrow,
        tx_fees=sent.fees,
        transactions=tuple(sent.ids),
        refusals=tuple(refusals),
        mediator_error=mediator_error,
    )


def _endpoint_of(prepared: Prepared, provider: Address) -> str:
    for candidate in prepared.ranking.candidates:
        if candidate.provider == provider:
            return candidate.ask.endpoint
    return "?"


# -- outputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedOutputs:
    """A replica's outputs, fetched, verified against its revealed root and written out."""

    replica: int
    provider: Address
    root: bytes
    cid: str
    out: Path
    reason: str
    """Why the job ended (``exited``, ``timeout``, ...; from the verified manifest)."""
    exit_code: int | None
    files: tuple[str, ...]
    """The output files' paths."""
    size: int
    """Bytes of the archive fetched."""

    @property
    def job_exit(self) -> int:
        """The exit status ``run`` gives for this result."""
        if self.reason == "exited":
            return 0 if self.exit_code is None else self.exit_code
        return REASON_EXIT.get(self.reason, EXIT_NOT_RUN)

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "provider": str(self.provider),
            "root": self.root.hex(),
            "cid": self.cid,
            "out": str(self.out),
            "reason": self.reason,
            "exitCode": self.exit_code,
            "files": list(self.files),
            "archiveSize": self.size,
        }


def check_out_dir(out: Path) -> None:
    """:class:`BadOptions` unless ``out`` can receive outputs: missing (its parent a directory)
    or an empty directory."""
    if out.exists():
        if not out.is_dir():
            raise BadOptions(f"{out} exists and is not a directory: name a new one (--out)")
        if any(out.iterdir()):
            raise BadOptions(f"{out} is not empty: name a new directory (--out)")
        return
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise BadOptions(f"{parent} is not a directory: cannot write {out}")


class _WrongRoot(ComputeClientError):
    """A provider serves outputs of another root than the one it revealed."""


class _StoreFailed(ComputeClientError):
    """A provider says it could not store the outputs."""


def _served_cid(api: ProviderApi, deal_id: int, root: bytes) -> tuple[str | None, str]:
    """(the CID the provider serves for ``root``, or None; why not)."""
    status, answer = api.result(deal_id)
    if status != 200 or not isinstance(answer, dict):
        if status == 409:  # not stored yet; a provider that gave up says so in its job state
            state = api.job(deal_id)
            if state.state == "failed":
                detail = f": {state.detail}" if state.detail else ""
                raise _StoreFailed(
                    f"{api.what} failed to store the outputs of deal {deal_id}: "
                    f"{state.reason}{detail}"
                )
        return None, _reason(answer, status)
    served = answer.get("root")
    if served != root.hex():
        raise _WrongRoot(
            f"{api.what} serves outputs of root {str(served)[:64]}, not the revealed {root.hex()}"
        )
    cid = answer.get("cid")
    if isinstance(cid, str) and re.fullmatch(r"[0-9a-f]{64}", cid):
        return cid, ""
    return None, "its outputs are not stored yet"


def _result_cid(
    api: ProviderApi, deal_id: int, root: bytes, wait_s: float, stop: threading.Event | None
) -> str:
    """The CID of the provider's stored outputs archive, once it serves it (checked to be for
    ``root``); :class:`ComputeClientError` after ``wait_s`` seconds, or as soon as the provider
    says it failed to store them."""
    deadline = time.monotonic() + wait_s
    tries = 0
    while True:
        try:
            cid, reason = _served_cid(api, deal_id, root)
        except (_WrongRoot, _StoreFailed):
            raise
        except ComputeClientError as exc:
            cid, reason = None, str(exc)
        if cid is not None:
            return cid
        if time.monotonic() > deadline or (stop is not None and stop.is_set()):
            raise ComputeClientError(
                f"{api.what} did not serve the outputs of deal {deal_id} in {wait_s:g} s: {reason}"
            )
        time.sleep(RECONNECT_S[min(tries, 2)])
        tries += 1


def fetch_outputs(
    rpc: str,
    api: ProviderApi,
    deal_id: int,
    replica: int,
    root: bytes,
    job_key: bytes,
    out: Path,
    cid: str | None = None,
    progress: Progress = NO_PROGRESS,
    wait_s: float = OUTPUTS_WAIT_S,
    stop: threading.Event | None = None,
    limits: OutputLimits | None = None,
) -> SavedOutputs:
    """Fetch replica ``replica``'s outputs archive from the storage market (its CID from the
    provider unless given), decrypt it, and unpack it into ``out`` verified against ``root``
    (written beside ``out`` first, moved there only when whole): the files under
    ``out/outputs/``, the job's stdout in ``out/stdout``. ``limits``: the spec's output limits
    (an archive over them is refused)."""
    from qoin.compute import outputs  # noqa: PLC0415 (the executors' side, loaded when used)

    check_out_dir(out)
    cid = cid or _result_cid(api, deal_id, root, wait_s, stop)
    master = keys.output_master(job_key, deal_id, replica)
    try:
        with MarketView(rpc) as storage:
            content = retrieve.locate(storage, bytes.fromhex(cid))
        if content.size > MAX_OUTPUT_ARCHIVE:
            raise ComputeClientError(
                f"the outputs archive {cid} stores {content.size} bytes, over {MAX_OUTPUT_ARCHIVE}"
            )
        archive = retrieve.download(content, master, progress).data
    except QoinError as exc:
        if isinstance(exc, ComputeClientError):
            raise
        raise ComputeClientError(f"the outputs archive {cid} could not be fetched: {exc}") from None
    parent = out.parent if str(out.parent) else Path(".")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=parent))
    try:
        try:
            manifest = outputs.unpack(
                archive,
                staging / OUTPUTS_DIR,
                root,
                limits=limits or outputs.UNLIMITED,
                stdout=staging / STDOUT_FILE,
            )
        except QoinError as exc:
            raise ComputeClientError(
                f"the outputs of replica {replica} do not verify against its revealed root: {exc}"
            ) from None
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    reason = str(manifest.reason)
    return SavedOutputs(
        replica=replica,
        provider=api.provider,
        root=root,
        cid=cid,
        out=out,
        reason=reason,
        exit_code=manifest.exit_code,
        files=tuple(entry.path for entry in manifest.files),
        size=len(archive),
    )


# -- following a deal ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """What a job cost the client."""

    deposit: int
    """The bid's deposit."""
    escrow: int
    """What the deal held (the rest of the deposit came back when it formed)."""
    paid: int
    """Paid to the providers."""
    mediation_fee: int
    """The mediator's fee, where the client paid it."""
    fines_received: int
    """The client's share of fined collateral."""
    refunded: int
    """Deposit that came back (at the deal and at the settlement)."""
    tx_fees: int
    """Fees of the client's transactions."""

    @property
    def total(self) -> int:
        """What the client's balance lost."""
        return self.paid + self.mediation_fee - self.fines_received + self.tx_fees

    def to_json(self) -> dict[str, Any]:
        return {
            "deposit": self.deposit,
            "escrow": self.escrow,
            "paid": self.paid,
            "mediationFee": self.mediation_fee,
            "finesReceived": self.fines_received,
            "refunded": self.refunded,
            "txFees": self.tx_fees,
            "total": self.total,
        }


def cost_of(story: DealStory, deposit: int, tx_fees: int, params: ComputeParams) -> Cost | None:
    """The cost of a settled deal (None while it is open)."""
    if story.settled is None:
        return None
    _, payments, refund, slashed, _ = story.settled
    fee = 0
    from_fines = 0
    if story.verdict is not None:
        kind, _, fee = story.verdict
        if kind in (VerdictKind.WRONG_RESULT, VerdictKind.NOT_DELIVERED):
            from_fines = min(fee, slashed)
    share = (slashed - from_fines) * params.fine_client_ppm // PPM
    return Cost(
        deposit=deposit,
        escrow=story.escrow,
        paid=payments,
        mediation_fee=fee - from_fines,
        fines_received=share,
        refunded=deposit - story.escrow + refund - share,
        tx_fees=tx_fees,
    )


@dataclass(frozen=True)
class RunOutcome:
    """How a job ended: its deal's story, its outputs, its cost and ``run``'s exit status."""

    deal: int
    job: bytes
    story: DealStory
    outputs: SavedOutputs | None
    outputs_error: str
    cost: Cost | None
    exit_code: int
    message: str
    transactions: tuple[str, ...]
    log_end: LogEnd | None
    mediator_error: str = ""

    def to_json(self) -> dict[str, Any]:
        end = self.log_end
        return {
            "deal": self.deal,
            "job": self.job.hex(),
            "exitCode": self.exit_code,
            "message": self.message,
            "events": story_json(self.story),
            "outputs": None if self.outputs is None else self.outputs.to_json(),
            "outputsError": self.outputs_error or None,
            "cost": None if self.cost is None else self.cost.to_json(),
            "transactions": list(self.transactions),
            "log": None
            if end is None
            else {"reason": end.reason, "exitCode": end.exit_code, "detail": end.detail},
            "mediatorError": self.mediator_error or None,
        }


def _log_filter(deal_id: int) -> dict[str, Any]:
    return {"address": str(COMPUTE_MARKET), "topics": [None, None, [_deal_topic(deal_id)]]}


class DealFollower:
    """The deal's events as they come: one log subscription (reopened and caught up with
    ``qoin_getLogs`` whenever it drops), folded into a :class:`DealStory`."""

    def __init__(self, rpc: str, client: RpcClient, deal_id: int, start: int) -> None:
        self.rpc = rpc
        self.client = client
        self.story = DealStory(deal_id)
        self.start = start
        self._subscription: Subscription | None = None
        self._tries = 0

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def _open(self) -> list[DealEvent]:
        self.close()
        try:
            self._subscription = subscribe(self.rpc, "logs", _log_filter(self.story.deal_id))
        except RpcCallError as exc:
            raise ComputeClientError(f"cannot follow deal {self.story.deal_id}: {exc}") from None
        return self.catch_up()

    def catch_up(self) -> list[DealEvent]:
        """Fold in every event of the deal so far; the new ones."""
        height = head(self.client)
        found = deal_logs(self.client, self.story.deal_id, self.start, height)
        return [event for event in found if self.story.add(event)]

    def next(self, timeout: float = EVENT_WAIT_S) -> list[DealEvent]:
        """New events, waiting at most ``timeout`` seconds for one."""
        if self._subscription is None:
            try:
                events = self._open()
                self._tries = 0
                return events
            except ComputeClientError:
                wait = RECONNECT_S[min(self._tries, len(RECONNECT_S) - 1)]
                self._tries += 1
                time.sleep(wait)
                return []
        try:
            log = self._subscription.next(timeout)
        except RpcTimeout:
            return []
        except RpcCallError:
            self.close()
            return []
        event = parse_log(log)
        if event is None or not self.story.add(event):
            return []
        return [event]


def _who(story: DealStory, replica: int) -> str:
    if 0 <= replica < len(story.providers):
        return f"replica {replica} ({story.providers[replica]})"
    return f"replica {replica}"


def _phase_words(event: DealEvent, story: DealStory) -> tuple[str, str] | None:
    phase, deadline = Phase(_u(event.data[1])), _u(event.data[2])
    if phase is Phase.REVEAL:
        return "verify", f"reveal phase until height {deadline}"
    if phase is Phase.CHECK:
        return "verify", (
            f"results agree; dispute window until height {deadline} "
            f"(qoin compute dispute {story.deal_id})"
        )
    if phase is Phase.MEDIATION:
        why = "disputed" if story.disputed else "results differ"
        return "verify", f"{why}: the mediator re-runs the job until height {deadline}"
    return None


def _fined_words(event: DealEvent, story: DealStory) -> tuple[str, str]:
    data = event.data
    reason = FINE_REASONS.get(_u(data[3]), str(_u(data[3])))
    return "settle", f"{_who(story, _u(data[1]))} fined {_u(data[2])} Shor ({reason})"


def _verdict_words(event: DealEvent, story: DealStory) -> tuple[str, str]:
    data = event.data
    kind = VerdictKind(_u(data[1]))
    root = _b(data[2]).hex()[:16]
    return "verify", f"verdict: {VERDICTS[kind]} (root {root}..., fee {_u(data[3])})"


def _timed_out_words(event: DealEvent, story: DealStory) -> tuple[str, str]:
    phase = "run" if _u(event.data[1]) == Phase.RUN else "reveal"
    missing = _u(event.data[2])
    return "verify", f"the {phase} deadline passed with {missing} replica(s) missing"


_WORDS: Final[dict[str, Callable[[DealEvent, DealStory], tuple[str, str] | None]]] = {
    "ResultCommitted": lambda e, s: (
        "commit",
        f"{_who(s, _u(e.data[1]))} committed its result at height {e.height}",
    ),
    "PhaseStarted": _phase_words,
    "ResultRevealed": lambda e, s: (
        "verify",
        f"{_who(s, _u(e.data[1]))} revealed root {_b(e.data[2]).hex()[:16]}... "
        f"({_u(e.data[3])} CPU-seconds)",
    ),
    "DealTimedOut": _timed_out_words,
    "DisputeOpened": lambda e, s: ("verify", "the client disputed the result"),
    "Verdict": _verdict_words,
    "MediationTimedOut": lambda e, s: (
        "verify",
        "the mediator gave no verdict in time: the client gets its escrow back",
    ),
    "ProviderFined": _fined_words,
    "ProviderPaid": lambda e, s: (
        "settle",
        f"{_who(s, _u(e.data[1]))} paid {_u(e.data[2])} Shor",
    ),
    "DealSettled": lambda e, s: (
        "settle",
        f"settled ({OUTCOMES[Outcome(_u(e.data[1]))]}) at height {e.height}",
    ),
}


def describe_event(event: DealEvent, story: DealStory) -> tuple[str, str] | None:
    """(phase, message) ``run`` shows for ``event`` (None: nothing to show)."""
    words = _WORDS.get(event.name)
    try:
        return None if words is None else words(event, story)
    except (IndexError, ValueError):
        return None


class _Outputs:
    """Fetches the outputs in a thread once the result is final."""

    def __init__(self, target: Callable[[], SavedOutputs]) -> None:
        self.saved: SavedOutputs | None = None
        self.error = ""
        self.started = False
        self._target = target
        self._thread = threading.Thread(target=self._run, name="outputs", daemon=True)

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._thread.start()

    def _run(self) -> None:
        try:
            self.saved = self._target()
        except (QoinError, OSError) as exc:
            self.error = str(exc)

    def join(self) -> None:
        if self.started:
            self._thread.join()


class _Following:
    """The state of :func:`follow` while the deal runs."""

    def __init__(
        self,
        wallet: Wallet,
        submitted: Submitted,
        out: Path,
        jobs: Path,
        watcher: Watcher,
        progress: Progress,
        http: httpx.Client,
    ) -> None:
        self.wallet = wallet
        self.submitted = submitted
        self.out = out
        self.jobs = jobs
        self.watcher = watcher
        self.progress = progress
        self.apis = [
            ProviderApi(http, wallet.keypair, c.provider, c.ask.endpoint)
            for c in submitted.providers
        ]
        self.follower = DealFollower(
            wallet.url, wallet.client, submitted.deal, submitted.formed_height
        )
        self.record = JobRecord(
            submitted.deal, submitted.spec.job_hash, submitted.spec_bytes, submitted.job_key
        )
        self.fetcher: _Outputs | None = None
        self.shown: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self.last_poll = 0.0
        self.last_check = time.monotonic()
        self.last_block = (head(wallet.client), self.last_check)

    @property
    def story(self) -> DealStory:
        return self.follower.story

    def _who(self, index: int) -> str:
        provider = self.apis[index].provider
        return f"replica {index} ({provider})" if len(self.apis) > 1 else str(provider)

    def _shown(self, index: int, state: str) -> bool:
        """Whether ``state`` of replica ``index`` was shown already (it is, from now on)."""
        with self._lock:
            if state in self.shown.setdefault(index, set()):
                return True
            self.shown[index].add(state)
            return False

    def poll_states(self) -> None:
        """Show each replica's job state when it changes (staging, running, failed)."""
        for index, api in enumerate(self.apis):
            try:
                state = api.job(self.submitted.deal)
            except ComputeClientError:
                continue
            if self._shown(index, state.state):
                continue
            who = self._who(index)
            if state.state == "staging":
                self.watcher.phase("stage", f"{who} is staging the inputs")
            elif state.state == "running":
                staged = state.timings.get("stage")
                took = "" if staged is None else f" (staged in {staged:.2f} s)"
                self.watcher.phase("run", f"{who} is running the job{took}")
            elif state.state == "failed":
                detail = f": {state.detail}" if state.detail else ""
                self.watcher.phase("run", f"{who} failed: {state.reason}{detail}")

    def on_output(self, stream: str, data: bytes) -> None:
        """Replica 0's live output (the first piece says the job runs)."""
        if not self._shown(0, "running"):
            self.watcher.phase("run", f"{self._who(0)} is running the job; its output follows")
        self.watcher.output(stream, data)

    def on_end(self, end: LogEnd) -> None:
        """Replica 0's job ended (its log stream's last frame)."""
        if not self._shown(0, "running"):
            self.watcher.phase("run", f"{self._who(0)} ran the job")
        code = "" if end.exit_code is None else f", exit code {end.exit_code}"
        detail = f": {end.detail}" if end.detail and end.reason != "exited" else ""
        self.watcher.phase("run", f"{self._who(0)}: the job ended ({end.reason}{code}){detail}")

    def show(self, events: Iterable[DealEvent]) -> None:
        for event in events:
            described = describe_event(event, self.story)
            if described is not None:
                self.watcher.phase(*described)

    def fetch(self) -> None:
        """Start fetching the outputs once (when there is a final result)."""
        if self.fetcher is None and self.story.final_root() is not None:
            self.fetcher = _fetcher(
                self.wallet.url, self.apis, self.story, self.record, self.out, self.jobs,
                self.wallet, self.progress,
            )  # fmt: skip
            self.fetcher.start()

    def step(self) -> None:
        """One round: new events, the providers' states, the node's progress."""
        self.show(self.follower.next())
        if self.story.phase is Phase.CHECK:
            self.fetch()
        now = time.monotonic()
        if self.story.phase is Phase.RUN and now - self.last_poll >= POLL_S:
            self.last_poll = now
            self.poll_states()
        if now - self.last_check >= HEAD_CHECK_S:
            self.last_check = now
            self.check_head(now)

    def check_head(self, now: float) -> None:
        """Read events the subscription may have missed once the phase's deadline has passed;
        give up when the node makes no block (or cannot be asked) for :data:`STALL_S`."""
        try:
            height = head(self.wallet.client)
            if height != self.last_block[0]:
                self.last_block = (height, now)
                if height > self.story.deadline + 2:
                    self.show(self.follower.catch_up())
                return
            why = "made no block"
        except ComputeClientError as exc:
            why = f"could not be asked ({exc})"
        if now - self.last_block[1] > STALL_S:
            raise ComputeClientError(
                f"the node at {self.wallet.url} {why} for {STALL_S:g} s while following deal "
                f"{self.submitted.deal} (qoin compute status {self.submitted.deal})"
            )


def follow(
    wallet: Wallet,
    submitted: Submitted,
    out: Path,
    jobs: Path,
    watcher: Watcher = NO_WATCHER,
    progress: Progress = NO_PROGRESS,
) -> RunOutcome:
    """Follow a formed deal to its settlement (see the module docstring): phases, live logs,
    outputs into ``out``, the cost."""
    deal_id = submitted.deal
    http = httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    )
    run = _Following(wallet, submitted, out, jobs, watcher, progress, http)
    stream = LogStream(run.apis[0], deal_id, run.on_output, on_end=run.on_end).start()
    try:
        while run.story.settled is None:
            run.step()
        run.fetch()
        if run.fetcher is not None:
            run.fetcher.join()
        stream.join(timeout=2.0)
    finally:
        stream.stop()
        run.follower.close()
        http.close()
    story = run.story
    cost = cost_of(story, submitted.bid.deposit, submitted.tx_fees, submitted.params)
    saved = None if run.fetcher is None else run.fetcher.saved
    error = "" if run.fetcher is None else run.fetcher.error
    code, message = _ending(story, saved, error)
    return RunOutcome(
        deal=deal_id,
        job=submitted.spec.job_hash,
        story=story,
        outputs=saved,
        outputs_error=error,
        cost=cost,
        exit_code=code,
        message=message,
        transactions=submitted.transactions,
        log_end=stream.end,
        mediator_error=submitted.mediator_error,
    )


def _fetcher(
    rpc: str,
    apis: Sequence[ProviderApi],
    story: DealStory,
    record: JobRecord,
    out: Path,
    jobs: Path,
    wallet: Wallet,
    progress: Progress,
) -> _Outputs:
    final = story.final_root()
    if final is None:  # callers check first
        raise ComputeClientError("no result to fetch")
    replica, root = final

    def fetch() -> SavedOutputs:
        saved = fetch_outputs(
            rpc, apis[replica], story.deal_id, replica, root, record.job_key, out,
            progress=progress, limits=JobSpec.decode(record.spec).outputs,
        )  # fmt: skip
        updated = replace(record, outputs={**record.outputs, replica: saved.cid})
        with contextlib.suppress(OSError):
            updated.save(jobs, wallet.keypair)
        return saved

    return _Outputs(fetch)


def _ending(story: DealStory, saved: SavedOutputs | None, error: str) -> tuple[int, str]:
    """``run``'s exit status and last words."""
    settled = story.settled
    if settled is not None and settled[0] in (Outcome.UNDELIVERED, Outcome.MEDIATION_TIMED_OUT):
        return EXIT_UNDELIVERED, (
            f"no result: deal {story.deal_id} settled {OUTCOMES[settled[0]]}; "
            f"{settled[2]} Shor refunded"
        )
    if story.verdict is not None and story.verdict[0] is VerdictKind.NON_DETERMINISTIC:
        where = f"; replica outputs in {saved.out}" if saved is not None else ""
        return EXIT_NON_DETERMINISTIC, (
            "the mediator judged the job non-deterministic (its results differ from run to run): "
            f"the providers were paid{where}"
        )
    if saved is None:
        return EXIT_NO_OUTPUTS, f"the outputs could not be had: {error or 'no result revealed'}"
    code = saved.job_exit
    how = (
        f"exited with {saved.exit_code}"
        if saved.reason == "exited"
        else f"stopped: {saved.reason} (exit status {code})"
    )
    return code, f"the job {how}; outputs in {saved.out}"


# -- status, logs, get, dispute, asks --------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica of a deal: on chain, and as its provider tells."""

    index: int
    provider: Address
    endpoint: str | None
    chain_state: str
    """assigned, committed, revealed (open deals), else what the events say."""
    root: bytes | None
    job: JobState | None
    error: str
    """Why the provider's view is missing."""

    def to_json(self) -> dict[str, Any]:
        job = self.job
        return {
            "replica": self.index,
            "provider": str(self.provider),
            "endpoint": self.endpoint,
            "chainState": self.chain_state,
            "root": None if self.root is None else self.root.hex(),
            "providerState": None
            if job is None
            else {
                "state": job.state,
                "reason": job.reason or None,
                "detail": job.detail or None,
                "exitCode": job.exit_code,
                "usageCpu": job.usage_cpu,
                "logBytes": job.log_bytes,
                "timings": job.timings,
                "cid": job.cid,
            },
            "providerError": self.error or None,
        }


@dataclass(frozen=True)
class DealStatus:
    """What ``status`` shows: the bid or deal on chain, its events, each provider's state."""

    deal: int
    height: int
    kind: str
    """``bid`` (open, matching), ``deal`` (open), ``settled``, or ``closed`` (a bid that formed
    no deal: cancelled or expired)."""
    bid: BidInfo | None
    info: DealInfo | None
    story: DealStory
    replicas: tuple[ReplicaStatus, ...]

    @property
    def phase(self) -> str:
        if self.info is not None:
            return self.info.phase.name.lower()
        return self.kind

    def to_json(self) -> dict[str, Any]:
        info = self.info
        return {
            "deal": self.deal,
            "height": self.height,
            "kind": self.kind,
            "phase": self.phase,
            "deadline": None if info is None else info.deadline,
            "escrow": None if info is None else info.escrow,
            "verification": None if info is None else info.verification.name.lower(),
            "mediator": None if info is None or info.mediator is None else str(info.mediator),
            "disputed": None if info is None else info.disputed,
            "bid": None if self.bid is None else bid_json(self.bid),
            "events": story_json(self.story),
            "replicas": [r.to_json() for r in self.replicas],
        }


def bid_json(bid: BidInfo) -> dict[str, Any]:
    return {
        "bid": bid.bid_id,
        "job": bid.job.hex(),
        "cpus": bid.cpus,
        "memory": bid.memory,
        "timeout": bid.timeout,
        "verification": bid.verification.name.lower(),
        "maxPriceCpu": bid.max_price_cpu,
        "deadline": bid.deadline,
        "deposit": bid.deposit,
    }


_CHAIN_STATES: Final = {1: "assigned", 2: "committed", 3: "revealed"}


def deal_status(
    view: ComputeMarketView,
    deal_id: int,
    keypair: HybridKeyPair | None = None,
    start: int = 0,
) -> DealStatus:
    """The status of deal (or bid) ``deal_id``: the chain's records and events, and each
    provider's view of its job when ``keypair`` is the deal's client (or mediator).
    :class:`NotFound` if no bid or deal has that id."""
    height = head(view.client)
    info = view.get_deal(deal_id)
    bid = None if info is not None else view.get_bid(deal_id)
    story = DealStory(deal_id)
    for event in deal_logs(view.client, deal_id, start, height):
        story.add(event)
    if info is None and bid is None and story.formed_height is None:
        raise NotFound(f"no bid or deal {deal_id} (since height {start})")
    kind = "deal" if info is not None else "bid" if bid is not None else "closed"
    if story.settled is not None:
        kind = "settled"
    providers = tuple(r.provider for r in info.replicas) if info is not None else story.providers
    replicas = []
    endpoints: dict[Address, str | None] = {}
    with httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    ) as http:
        for index, provider in enumerate(providers):
            if provider not in endpoints:
                ask = view.get_ask(provider)
                endpoints[provider] = None if ask is None else ask.endpoint
            endpoint = endpoints[provider]
            if info is not None:
                replica = info.replicas[index]
                state, root = _CHAIN_STATES.get(int(replica.state), "?"), replica.root
            else:
                revealed = story.revealed.get(index)
                root = None if revealed is None else revealed[0]
                state = _settled_state(story, index)
            job, error = None, ""
            if keypair is None:
                error = "give the client's keystore (--key) to ask the provider"
            elif endpoint is None:
                error = "no ask on chain: no endpoint to ask"
            else:
                try:
                    job = ProviderApi(http, keypair, provider, endpoint).job(deal_id)
                except ComputeClientError as exc:
                    error = str(exc)
            replicas.append(ReplicaStatus(index, provider, endpoint, state, root, job, error))
    return DealStatus(deal_id, height, kind, bid, info, story, tuple(replicas))


def _settled_state(story: DealStory, index: int) -> str:
    if index in story.paid:
        return f"paid {story.paid[index]} Shor"
    if index in story.fined:
        amount, reason = story.fined[index]
        return f"fined {amount} Shor ({FINE_REASONS.get(reason, str(reason))})"
    if index in story.revealed:
        return "revealed"
    if index in story.committed:
        return "committed"
    return "assigned"


def replica_api(
    view: ComputeMarketView,
    http: httpx.Client,
    keypair: HybridKeyPair,
    deal_id: int,
    replica: int,
    start: int = 0,
) -> tuple[ProviderApi, DealStory]:
    """The per-job API of replica ``replica``'s provider, and the deal's story."""
    story = DealStory(deal_id)
    for event in deal_logs(view.client, deal_id, start, head(view.client)):
        story.add(event)
    if story.formed_height is None:
        raise NotFound(f"no deal {deal_id} (since height {start})")
    if not 0 <= replica < len(story.providers):
        raise BadOptions(
            f"deal {deal_id} has {len(story.providers)} replica(s): no replica {replica}"
        )
    provider = story.providers[replica]
    ask = view.get_ask(provider)
    if ask is None:
        raise ComputeClientError(f"provider {provider} has no ask on chain: no endpoint to ask")
    return ProviderApi(http, keypair, provider, ask.endpoint), story


def stream_logs(
    view: ComputeMarketView,
    keypair: HybridKeyPair,
    deal_id: int,
    on_output: Callable[[str, bytes], None],
    follow_live: bool,
    replica: int = 0,
    start: int = 0,
) -> LogEnd | None:
    """``logs``: replica ``replica``'s stdout/stderr from its provider, to the end of what it
    saved (``follow_live``: until the job ends). Its last frame, if it came."""
    with httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    ) as http:
        api, _ = replica_api(view, http, keypair, deal_id, replica, start)
        stop_at = None
        if not follow_live:
            state = api.job(deal_id)
            stop_at = state.log_bytes
        stream = LogStream(
            api, deal_id, on_output, stop_at=stop_at, give_up_s=30.0 if stop_at is not None else 600
        )
        if stop_at == 0:
            return None
        stream.start()
        try:
            while not stream.done:
                stream.join(0.5)
        finally:
            stream.stop()
        if stream.end is None and stream.error and (stop_at is None or stream.offset < stop_at):
            raise ComputeClientError(stream.error)
        return stream.end


def get(
    rpc: str,
    keypair: HybridKeyPair,
    deal_id: int,
    out: Path,
    jobs: Path,
    replica: int | None = None,
    progress: Progress = NO_PROGRESS,
    start: int = 0,
) -> SavedOutputs:
    """``get``: the outputs of deal ``deal_id`` (the final result's replica unless ``replica``
    names one) into ``out``, verified against the root revealed on chain. Needs the job record
    ``run`` kept (the job key)."""
    check_out_dir(out)
    with ComputeMarketView(rpc) as view:
        height = head(view.client)
        story = DealStory(deal_id)
        for event in deal_logs(view.client, deal_id, start, height):
            story.add(event)
        if story.formed_height is None or story.job is None:
            raise NotFound(f"no deal {deal_id} (since height {start})")
        record = load_record(jobs, deal_id, story.job, keypair)
        if record is None:
            raise ComputeClientError(
                f"no job record of deal {deal_id} in {jobs}: its job key stays with the "
                "QOIN_HOME that ran it (qoin compute run)"
            )
        if replica is None:
            final = story.final_root()
            if final is None:
                raise ComputeClientError(f"deal {deal_id} has no revealed result to get")
            replica, root = final
        else:
            revealed = story.revealed.get(replica)
            if revealed is None:
                raise ComputeClientError(f"replica {replica} of deal {deal_id} revealed no result")
            root = revealed[0]
        provider = story.providers[replica]
        ask = view.get_ask(provider)
    if ask is None and replica not in record.outputs:
        raise ComputeClientError(f"provider {provider} has no ask on chain: no endpoint to ask")
    with httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    ) as http:
        api = ProviderApi(http, keypair, provider, ask.endpoint if ask else "0.0.0.0:0")
        saved = fetch_outputs(
            rpc, api, deal_id, replica, root, record.job_key, out, record.outputs.get(replica),
            progress, wait_s=30.0, limits=JobSpec.decode(record.spec).outputs,
        )  # fmt: skip
    if replica not in record.outputs:
        with contextlib.suppress(OSError):
            replace(record, outputs={**record.outputs, replica: saved.cid}).save(jobs, keypair)
    return saved


@dataclass(frozen=True)
class Disputed:
    """A dispute sent."""

    deal: int
    mediator: Address
    fee: int
    """What the client pays if the result is correct."""
    deadline: int | None
    """The mediation's deadline height."""
    tx_fee: int

    def to_json(self) -> dict[str, Any]:
        return {
            "deal": self.deal,
            "mediator": str(self.mediator),
            "fee": self.fee,
            "mediationDeadline": self.deadline,
            "txFee": self.tx_fee,
        }


def dispute(wallet: Wallet, view: ComputeMarketView, deal_id: int) -> Disputed:
    """Dispute deal ``deal_id``'s result (its client, in the check phase): the mediator re-runs
    the job; if the result was correct the client pays the mediator's fee."""
    info = view.get_deal(deal_id)
    if info is None:
        raise NotFound(f"no open deal {deal_id}: settled deals cannot be disputed")
    if info.client != wallet.address:
        raise ComputeClientError(f"deal {deal_id} belongs to {info.client}, not {wallet.address}")
    if info.mediator is None:
        raise ComputeClientError(f"deal {deal_id} is verification none: it has no mediator")
    if info.phase is not Phase.CHECK:
        raise ComputeClientError(
            f"deal {deal_id} is in its {info.phase.name.lower()} phase: a dispute is sent in the "
            "check phase (after agreeing results, before the dispute window closes)"
        )
    try:
        receipt = market.dispute(deal_id).transact(wallet, RECEIPT_TIMEOUT_S)
    except CallReverted as exc:
        raise ComputeClientError(f"the dispute was refused: {exc.reason}") from None
    except WalletError as exc:
        raise ComputeClientError(f"the dispute failed: {exc}") from None
    deadline = None
    for event in receipt.get("events") or []:
        parsed = parse_log({**event, "blockNumber": 0}) if isinstance(event, dict) else None
        if parsed is not None and parsed.name == "MediationStarted":
            deadline = _u(parsed.data[1])
    return Disputed(deal_id, info.mediator, info.fee, deadline, _fee(receipt))


def mediator_json(m: MediatorInfo) -> dict[str, Any]:
    return {
        "mediator": str(m.mediator),
        "endpoint": m.endpoint,
        "fee": m.fee,
        "stake": m.stake,
        "deals": m.deals,
        "active": m.active,
        "verdicts": m.verdicts,
        "missed": m.missed,
    }


def ask_json(ask: AskInfo) -> dict[str, Any]:
    settled_or_bad = ask.settled + ask.fined + ask.not_delivered
    return {
        "provider": str(ask.provider),
        "endpoint": ask.endpoint,
        "executors": executor_names(ask.executors),
        "cpus": ask.cpus,
        "freeCpus": ask.free_cpus,
        "memory": ask.memory,
        "freeMemory": ask.free_memory,
        "gpus": ask.gpus,
        "freeGpus": ask.free_gpus,
        "gpuModel": ask.gpu_model or None,
        "priceCpu": ask.price_cpu,
        "priceGpu": ask.price_gpu,
        "collateralPpm": ask.collateral_ppm,
        "freeCollateral": ask.free_collateral,
        "lockedCollateral": ask.locked_collateral,
        "mediators": [str(m) for m in ask.mediators],
        "settled": ask.settled,
        "fined": ask.fined,
        "notDelivered": ask.not_delivered,
        "reputation": None if not settled_or_bad else round(ask.settled / settled_or_bad, 4),
    }


def book(view: ComputeMarketView) -> dict[str, Any]:
    """``asks``: the book (every active ask with its reputation, every active mediator)."""
    return {
        "height": head(view.client),
        "asks": [ask_json(a) for a in view.asks()],
        "mediators": [mediator_json(m) for m in view.mediators()],
    }


# -- local -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalRun:
    """One local run of a spec."""

    root: bytes
    reason: str
    exit_code: int | None
    detail: str
    wall_seconds: float
    files: dict[str, tuple[int, bytes]]
    """path -> (size, digest)."""
    stdout: tuple[int, bytes]
    """(size, digest) of its stdout."""

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root.hex(),
            "reason": self.reason,
            "exitCode": self.exit_code,
            "detail": self.detail or None,
            "wallSeconds": round(self.wall_seconds, 3),
            "files": len(self.files),
        }


@dataclass(frozen=True)
class LocalResult:
    """``local``: the spec run twice; whether the roots agree and, if not, what differs."""

    runs: tuple[LocalRun, ...]
    differences: tuple[str, ...]

    @property
    def deterministic(self) -> bool:
        return len({run.root for run in self.runs}) == 1

    def to_json(self) -> dict[str, Any]:
        return {
            "deterministic": self.deterministic,
            "roots": [run.root.hex() for run in self.runs],
            "runs": [run.to_json() for run in self.runs],
            "differences": list(self.differences),
        }


def differences(a: LocalRun, b: LocalRun) -> list[str]:
    """What differs between two runs' results, in words."""
    found = []
    if (a.reason, a.exit_code) != (b.reason, b.exit_code):
        found.append(f"how it ended: {a.reason} {a.exit_code} vs {b.reason} {b.exit_code}")
    if a.stdout != b.stdout:
        found.append("stdout")
    for path in sorted(set(a.files) | set(b.files)):
        if path not in a.files or path not in b.files:
            found.append(f"/outputs/{path} (only in run {1 if path in a.files else 2})")
        elif a.files[path] != b.files[path]:
            found.append(f"/outputs/{path}")
    return found


def stage_local_inputs(
    options: JobOptions, directory: Path, rpc: str | None, keypair: HybridKeyPair | None
) -> list[tuple[Path, str]]:
    """The inputs of a local run as (host file, job path): local files as they are, stored ones
    fetched (and decrypted with ``keypair``) into ``directory``."""
    staged = []
    for index, ref in enumerate(options.inputs):
        if ref.file is not None:
            if not ref.file.is_file():
                raise BadOptions(f"input {ref.file} is not a file")
            staged.append((ref.file.resolve(), ref.path))
            continue
        if ref.cid is None or rpc is None:
            raise BadOptions(f"input {ref.path} names no file")
        master = None if keypair is None else crypt.master_key(keypair)
        try:
            data = retrieve.fetch(rpc, ref.cid, master)
        except QoinError as exc:
            raise ComputeClientError(f"input {ref.cid.hex()}: {exc}") from None
        target = directory / f"input-{index}"
        target.write_bytes(data)
        staged.append((target, ref.path))
    return staged


def run_local(
    options: JobOptions,
    inputs: Sequence[tuple[Path, str]],
    directory: Path,
    on_output: Callable[[int, str, bytes], None] | None = None,
    runs: int = 2,
) -> LocalResult:
    """Run the spec ``runs`` times on this machine with its executor (sandbox by default), each
    in a fresh directory under ``directory``, and compare the result roots."""
    from qoin.compute import executors, outputs  # noqa: PLC0415 (loaded when used)

    spec = options.spec()
    executor = executors.executor_for(spec.executor)
    problem = executor.problem()
    if problem is not None:
        raise ComputeClientError(
            f"the {spec.executor.name.lower()} executor cannot run here: {problem}"
        )
    done = []
    for number in range(runs):
        root = directory / f"run-{number + 1}"
        private, work, outs = root / "job", root / "work", root / "outputs"
        for made in (private, work, outs):
            made.mkdir(parents=True)
        stdout_path = root / "stdout"

        with stdout_path.open("wb") as stdout:

            def save(stream: str, data: bytes, n: int = number, sink: Any = stdout) -> None:
                if stream == "stdout":
                    sink.write(data)
                if on_output is not None:
                    on_output(n, stream, data)

            result = executor.run(
                spec,
                executors.JobDirs(private, tuple(inputs), work, outs),
                save,
                threading.Event(),
            )
        manifest = outputs.scan(outs, stdout_path, result, spec.outputs)
        done.append(
            LocalRun(
                root=outputs.result_root(manifest),
                reason=str(manifest.reason),
                exit_code=manifest.exit_code,
                detail=result.detail,
                wall_seconds=result.wall_seconds,
                files={e.path: (e.size, e.digest) for e in manifest.files},
                stdout=(manifest.stdout.size, manifest.stdout.digest),
            )
        )
    found: list[str] = []
    for other in done[1:]:
        found.extend(d for d in differences(done[0], other) if d not in found)
    return LocalResult(tuple(done), tuple(found))


def parse_deal(text: str) -> int:
    """A deal id (a positive integer)."""
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if not 1 <= value < 2**64:
        raise BadOptions(f"a job is named by its deal id (a positive number), not {text[:40]!r}")
    return value


def parse_address(text: str) -> Address:
    try:
        return Address.from_text(text)
    except AddressError as exc:
        raise BadOptions(str(exc)) from None


__all__ = [
    "EXIT_LIMIT",
    "EXIT_NON_DETERMINISTIC",
    "EXIT_NOT_RUN",
    "EXIT_NO_MATCH",
    "EXIT_NO_OUTPUTS",
    "EXIT_TIMEOUT",
    "EXIT_UNDELIVERED",
    "BadOptions",
    "ComputeClientError",
    "JobOptions",
    "MarketOptions",
    "NoMatch",
    "NotFound",
    "follow",
    "get",
    "prepare",
    "rank",
    "run_local",
    "submit",
]
