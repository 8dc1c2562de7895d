"""``run``'s match (docs/spec/compute.md §6.1): the spec with its input keys sealed under a fresh
job key, the bid, the providers' acceptances (a refusal replaced by the next candidate), the deal,
the job record and the mediator's copy of the job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qoin.actors.compute_market import MAX_MEDIATORS
from qoin.compute import jobspec, market
from qoin.compute.client.api import Acceptance, request_acceptance, send_to_mediator
from qoin.compute.client.base import (
    DEFAULT_DEADLINE_BLOCKS,
    HTTP_ANSWER_S,
    HTTP_CONNECT_S,
    NO_WATCHER,
    RECEIPT_TIMEOUT_S,
    BadOptions,
    ComputeClientError,
    Watcher,
    _fee,
    _returned_int,
    head,
)
from qoin.compute.client.options import InputRef, JobOptions, MarketOptions, check_options
from qoin.compute.client.ranking import (
    Candidate,
    MatchPlan,
    NoMatch,
    Ranking,
    Refusal,
    no_match_message,
    plans,
    rank,
)
from qoin.compute.client.records import JobRecord
from qoin.compute.jobspec import JobSpec
from qoin.compute.market import BidInfo, ComputeMarketView, MediatorInfo
from qoin.compute.params import ComputeParams
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.storage import crypt, retrieve
from qoin.storage.client import NotFound as StorageNotFound
from qoin.storage.market import MarketView
from qoin.wallet import CallReverted, Wallet, WalletError


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
    keypair: HybridKeyPair | None = None,
) -> list[Acceptance] | None:
    """r acceptances under ``plan`` (its first r providers asked at once, the others in turn
    for each refusal), or None; ``refused`` collects every provider's refusal. ``keypair``
    (the client) signs each offer's sealed job key."""
    r = bid.replicas
    mediator = None if plan.mediator is None else plan.mediator.mediator
    queue = [c for c in plan.providers if c.provider not in refused]

    def ask(replica: int, candidate: Candidate) -> Acceptance | None:
        try:
            return request_acceptance(
                http, view, chain_id, bid, replica, candidate, mediator, spec_bytes, job_key,
                keypair=keypair,
            )  # fmt: skip
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
    spec = prepared.spec
    balance = wallet.balance()
    if balance < prepared.deposit:
        raise ComputeClientError(
            f"the bid's deposit is {prepared.deposit} Shor ({spec.replicas} x the largest payment "
            f"at {prepared.max_price_cpu} Shor per CPU-second + the mediation reserve of "
            f"{prepared.max_fee}; what the deal does not hold comes back when it forms), but "
            f"{wallet.address} holds {balance}"
        )
    deadline = bid_deadline(wallet, prepared)
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
    return placed_bid(view, receipt, "bid")


def bid_deadline(wallet: Wallet, prepared: Prepared) -> int:
    """The height a bid for ``prepared`` placed now is open until: its deadline blocks (at least
    one, at most the market's limit) past the head."""
    blocks = max(1, min(prepared.deadline_blocks, prepared.params.max_bid_blocks))
    return head(wallet.client) + blocks


def placed_bid(view: ComputeMarketView, receipt: Mapping[str, Any], method: str) -> BidInfo:
    """The bid whose id the mined call ``method`` returned, as the node shows it."""
    bid_id = _returned_int(receipt, method)
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
            http, view, wallet.chain_id, bid, plan, spec_bytes, prepared.job_key, refused, watcher,
            wallet.keypair,
        )  # fmt: skip
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
    placed: BidInfo | None = None,
) -> Submitted:
    """Bid for ``prepared``, gather acceptances, form the deal, keep the job record in ``jobs``,
    hand the job to the mediator. :class:`NoMatch` (the bid cancelled) if no deal forms.
    ``placed``: a bid placed already (a contract's, whose agent ``wallet`` is:
    :mod:`qoin.compute.client.contract`) instead of placing one."""
    spec = prepared.spec
    spec_bytes = spec.encode()
    sent = _Sent()
    bid = placed or _place_bid(wallet, view, prepared, sent)
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
                    spec.job_hash, wallet.keypair,
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
