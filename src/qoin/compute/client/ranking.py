"""The book and its ranking (docs/spec/compute.md §6.1, §6.3 ``asks``): every active ask checked
against the spec (each one that cannot take the job with the first reason that applies), the
others ranked by price, free capacity and reputation, and the plans (mediator and providers)
that can form the deal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qoin.compute import market
from qoin.compute.client.base import ComputeClientError, head
from qoin.compute.client.options import MarketOptions
from qoin.compute.jobspec import Executor, JobSpec, Verification
from qoin.compute.market import AskInfo, ComputeMarketView, MediatorInfo
from qoin.compute.params import ComputeParams
from qoin.crypto.address import Address
from qoin.storage.params import PPM

_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def size_text(size: int) -> str:
    """``size`` bytes for people: ``1 GiB``, ``1.5 GiB``, ``512 MiB``, ``100 bytes``."""
    for unit, name in _UNITS:
        if size >= unit:
            return f"{size / unit:.3g} {name}"
    return f"{size} bytes"


class NoMatch(ComputeClientError):
    """No deal could form: no provider matched, or none of those that did accepted. The message
    lists every provider with the reason it was refused."""

    def __init__(self, message: str, refusals: Sequence[Refusal]) -> None:
        super().__init__(message)
        self.refusals = tuple(refusals)


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
            f"{size_text(ask.free_memory)} of {size_text(ask.memory)} of memory free, "
            f"the job needs {size_text(res.memory)}",
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
