"""A deal on chain (docs/spec/compute.md §6.2): its events (read with ``qoin_getLogs`` or followed
by one log subscription), folded into its story, described in words, and what it cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from qoin.actors.compute_market import ZERO_ADDRESS
from qoin.compute import market
from qoin.compute.client.base import (
    EVENT_WAIT_S,
    MAX_LOG_QUERIES,
    RECONNECT_S,
    ComputeClientError,
    head,
)
from qoin.compute.market import COMPUTE_MARKET, MarketError, Outcome, Phase, VerdictKind
from qoin.compute.params import ComputeParams
from qoin.crypto.address import Address
from qoin.execution.abi import Value
from qoin.rpc.client import RpcCallError, RpcClient, RpcTimeout, Subscription, subscribe
from qoin.rpc.follow import logs_between
from qoin.storage.params import PPM


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
    log_filter = {"address": str(COMPUTE_MARKET), "topics": [None, None, [_deal_topic(deal_id)]]}
    found = []
    try:
        for log in logs_between(client, log_filter, start, end, max_queries):
            event = parse_log(log)
            if event is not None and event.data and event.data[0] == deal_id:
                found.append(event)
    except RpcCallError as exc:
        raise ComputeClientError(f"cannot read deal {deal_id}'s events: {exc}") from None
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
