"""The other commands (docs/spec/compute.md §6.3): ``status`` (chain and providers), ``logs``,
``get``, ``dispute`` and the book (``asks``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import httpx

from qoin.compute import market
from qoin.compute.client.api import JobState, LogEnd, LogStream, ProviderApi
from qoin.compute.client.base import (
    GET_WAIT_S,
    HTTP_ANSWER_S,
    HTTP_CONNECT_S,
    RECEIPT_TIMEOUT_S,
    BadOptions,
    ComputeClientError,
    NotFound,
    _fee,
    head,
)
from qoin.compute.client.records import load_record
from qoin.compute.client.results import SavedOutputs, check_out_dir, fetch_outputs
from qoin.compute.client.story import FINE_REASONS, DealStory, _u, deal_logs, parse_log, story_json
from qoin.compute.jobspec import JobSpec
from qoin.compute.market import BidInfo, ComputeMarketView, DealInfo, Phase
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.storage.client import NO_PROGRESS, Progress
from qoin.wallet import CallReverted, Wallet, WalletError


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
    jobs: Path,
    on_output: Callable[[str, bytes], None],
    follow_live: bool,
    replica: int = 0,
    start: int = 0,
) -> LogEnd | None:
    """``logs``: replica ``replica``'s stdout/stderr from its provider, to the end of what it
    saved (``follow_live``: until the job ends), decrypted with the job key of the record in
    ``jobs`` that ``run`` kept. Its last frame, if it came."""
    with httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    ) as http:
        api, story = replica_api(view, http, keypair, deal_id, replica, start)
        record = None if story.job is None else load_record(jobs, deal_id, story.job, keypair)
        if record is None:
            raise ComputeClientError(
                f"no job record of deal {deal_id} in {jobs}: the log comes encrypted under the "
                "job key, which stays with the QOIN_HOME that ran it (qoin compute run)"
            )
        stop_at = None
        if not follow_live:
            state = api.job(deal_id)
            stop_at = state.log_bytes
        stream = LogStream(
            api,
            deal_id,
            record.job_key,
            replica,
            on_output,
            stop_at=stop_at,
            give_up_s=30.0 if stop_at is not None else 600,
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
    wait_s: float = GET_WAIT_S,
    on_wait: Callable[[str], None] | None = None,
) -> SavedOutputs:
    """``get``: the outputs of deal ``deal_id`` (the final result's replica unless ``replica``
    names one) into ``out``, verified against the root revealed on chain: from the provider,
    else from the storage market (:func:`fetch_outputs`, waiting at most ``wait_s`` seconds,
    ``on_wait`` told why). Needs the job record ``run`` kept (the job key)."""
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
            progress, wait_s=wait_s, limits=JobSpec.decode(record.spec).outputs, on_wait=on_wait,
        )  # fmt: skip
    if saved.cid and replica not in record.outputs:
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
