"""The client side of the ``compute-market`` actor: its calls, its records as dataclasses, its
views through ``qoin_call``, its events, and the messages providers sign and commit to
(docs/spec/compute.md §3).

The money rules and the signed messages are the actor's own functions
(:mod:`qoin.actors.compute_market`), re-exported here so that a client, a provider daemon and a
mediator compute exactly what the actor checks. Decoders are strict: a view answer or an event of
the wrong shape is a :class:`~qoin.rpc.actorview.MarketError` (the same error as the storage
market's client side: both read their actors through :mod:`qoin.rpc.actorview`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from qoin.actors.compute_market import (
    CALLBACK_GAS,
    EVENT_NAMES,
    FAILED_CALLBACK,
    KEM_KEY_SIZE,
    MAX_ANSWER,
    MAX_ANSWER_MANIFEST,
    RESULT_CALLBACK,
    ZERO_ADDRESS,
    ZERO_HASH,
    FailCode,
    FineReason,
    Outcome,
    Phase,
    ReplicaState,
    Totals,
    VerdictKind,
    acceptance_message,
    bid_deposit,
    collateral_for,
    commitment,
    max_payment,
    payment_for,
)
from qoin.compute.jobspec import Executor, JobSpec, Verification
from qoin.compute.params import ComputeParams, ComputeParamsError
from qoin.crypto.address import Address
from qoin.crypto.hashing import HASH_SIZE
from qoin.crypto.hybrid import HybridKeyPair, HybridPublicKey, sign
from qoin.execution.abi import Value
from qoin.execution.account import COMPUTE_MARKET_ADDRESS
from qoin.rpc import actorview
from qoin.rpc.actorview import ActorEvents, ActorView, MarketError, ViewRecords
from qoin.rpc.actorview import address as _address
from qoin.rpc.actorview import addresses as _addresses
from qoin.rpc.actorview import flag as _bool
from qoin.rpc.actorview import member as _enum_value
from qoin.rpc.actorview import optional_address as _optional_address
from qoin.rpc.actorview import raw_bytes as _bytes
from qoin.rpc.actorview import text as _str
from qoin.rpc.actorview import uint as _uint
from qoin.rpc.actorview import value_list as _list
from qoin.wallet import Wallet

COMPUTE_MARKET = COMPUTE_MARKET_ADDRESS
"""Where the actor lives."""
MAX_LISTED = 100_000
"""The most asks or mediators :meth:`ComputeMarketView.asks` collects (a bound on what a node
can make us hold)."""
SALT_SIZE = 32
"""Bytes of a commitment's salt."""

__all__ = [
    "CALLBACK_GAS",
    "COMPUTE_MARKET",
    "EVENT_NAMES",
    "FAILED_CALLBACK",
    "MAX_ANSWER",
    "MAX_ANSWER_MANIFEST",
    "RESULT_CALLBACK",
    "AskInfo",
    "BidInfo",
    "ComputeMarketView",
    "DealInfo",
    "FailCode",
    "FineReason",
    "MarketCall",
    "MarketError",
    "MediatorInfo",
    "Outcome",
    "Phase",
    "ReplicaInfo",
    "ReplicaState",
    "Totals",
    "VerdictKind",
    "acceptance_message",
    "bid_deposit",
    "collateral_for",
    "commitment",
    "decode_event",
    "event_topic",
    "max_payment",
    "new_salt",
    "payment_for",
    "sign_acceptance",
]


# -- calls ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketCall:
    """One call of the actor: its method, arguments and the value it moves."""

    method: str
    """The method's name."""
    args: tuple[Value, ...]
    """Its arguments."""
    value: int = 0
    """Shor moved with it (a deposit, collateral or a stake)."""

    def transact(self, wallet: Wallet, timeout: float = 120.0) -> dict[str, Any]:
        """Send it from ``wallet`` and wait for its receipt (:meth:`qoin.wallet.Wallet.transact`:
        :class:`~qoin.wallet.CallReverted` with the actor's reason unless it succeeded)."""
        return wallet.transact(
            COMPUTE_MARKET, self.method, self.args, value=self.value, timeout=timeout
        )


def post_ask(
    *,
    cpus: int,
    memory: int,
    gpus: int,
    gpu_model: str,
    executors: int,
    price_cpu: int,
    price_gpu: int,
    collateral_ppm: int,
    mediators: Sequence[Address],
    endpoint: str,
    kem_key: bytes,
    public_key: HybridPublicKey,
    deposit: int = 0,
) -> MarketCall:
    """``ask(...)``: post or update an ask, adding ``deposit`` to its free collateral."""
    return MarketCall(
        "ask",
        (
            cpus,
            memory,
            gpus,
            gpu_model,
            executors,
            price_cpu,
            price_gpu,
            collateral_ppm,
            tuple(mediators),
            endpoint,
            kem_key,
            public_key.encode(),
        ),
        deposit,
    )


def withdraw(amount: int) -> MarketCall:
    """``withdraw(amount)``: free collateral back."""
    return MarketCall("withdraw", (amount,))


def cancel_ask() -> MarketCall:
    """``cancel_ask()``."""
    return MarketCall("cancel_ask", ())


def register_mediator(fee: int, endpoint: str, kem_key: bytes, stake: int = 0) -> MarketCall:
    """``register_mediator(fee, endpoint, kem_key)`` adding ``stake``."""
    return MarketCall("register_mediator", (fee, endpoint, kem_key), stake)


def unregister_mediator() -> MarketCall:
    """``unregister_mediator()``."""
    return MarketCall("unregister_mediator", ())


def place_bid(
    spec: JobSpec,
    *,
    max_price_cpu: int,
    max_price_gpu: int,
    deadline: int,
    mediators: Sequence[Address] = (),
    max_fee: int = 0,
    collateral_ppm: int = 0,
    deposit: int | None = None,
) -> MarketCall:
    """``bid(...)`` for ``spec`` (its hash, resources, executor, timeout and verification), with
    the least deposit that covers it unless ``deposit`` says more."""
    res = spec.resources
    least = bid_deposit(
        spec.replicas, res.cpus, res.gpus, spec.timeout, max_price_cpu, max_price_gpu, max_fee
    )
    return MarketCall(
        "bid",
        (
            spec.job_hash,
            res.cpus,
            res.memory,
            res.gpus,
            res.gpu_model,
            int(spec.executor),
            spec.timeout,
            max_price_cpu,
            max_price_gpu,
            int(spec.verification),
            collateral_ppm,
            tuple(mediators),
            max_fee,
            deadline,
        ),
        least if deposit is None else deposit,
    )


def cancel_bid(bid_id: int) -> MarketCall:
    """``cancel_bid(bid_id)``."""
    return MarketCall("cancel_bid", (bid_id,))


def form_deal(
    bid_id: int,
    providers: Sequence[Address],
    acceptances: Sequence[bytes],
    mediator: Address | None,
) -> MarketCall:
    """``deal(bid_id, providers, acceptances, mediator)`` (None: no mediator, for ``none``)."""
    return MarketCall(
        "deal", (bid_id, tuple(providers), tuple(acceptances), mediator or ZERO_ADDRESS)
    )


def commit(deal_id: int, sealed: bytes) -> MarketCall:
    """``commit(deal_id, commitment)`` (see :func:`commitment`)."""
    return MarketCall("commit", (deal_id, sealed))


def reveal(
    deal_id: int,
    root: bytes,
    salt: bytes,
    usage_cpu: int,
    usage_gpu: int,
    answer: tuple[bytes, bytes] | None = None,
) -> MarketCall:
    """``reveal(deal_id, root, salt, usage_cpu, usage_gpu)``; with ``answer`` = (the result
    manifest's encoding, the stdout or nothing when it is over the deal's ``max_answer``) for a
    deal that asks for one."""
    args: tuple[Value, ...] = (deal_id, root, salt, usage_cpu, usage_gpu)
    if answer is not None:
        args = (*args, *answer)
    return MarketCall("reveal", args)


def dispute(deal_id: int) -> MarketCall:
    """``dispute(deal_id)``."""
    return MarketCall("dispute", (deal_id,))


def verdict(deal_id: int, kind: VerdictKind, root: bytes = ZERO_HASH) -> MarketCall:
    """``verdict(deal_id, kind, root)``."""
    return MarketCall("verdict", (deal_id, int(kind), root))


def new_salt() -> bytes:
    """A fresh random salt for a commitment."""
    return os.urandom(SALT_SIZE)


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AskInfo:
    """A provider's ask (view ``get_ask``)."""

    provider: Address
    """The provider."""
    cpus: int
    """CPUs offered."""
    memory: int
    """Bytes of memory offered."""
    gpus: int
    """GPUs offered."""
    gpu_model: str
    """Their model (empty: none, or not said)."""
    executors: int
    """Executors offered (bit ``1 << Executor``)."""
    used_cpus: int
    """CPUs its running deals reserve."""
    used_memory: int
    """Memory its running deals reserve."""
    used_gpus: int
    """GPUs its running deals reserve."""
    price_cpu: int
    """Shor per CPU-second."""
    price_gpu: int
    """Shor per GPU-second."""
    collateral_ppm: int
    """Collateral multiple k, in ppm of its largest payment."""
    mediators: tuple[Address, ...]
    """The mediators it accepts."""
    endpoint: str
    """``host:port`` of its API."""
    kem_key: bytes
    """Its ML-KEM-768 encapsulation key."""
    free_collateral: int
    """Collateral not locked."""
    locked_collateral: int
    """Collateral locked in deals."""
    active: bool
    """Whether it is in the book."""
    settled: int
    """Replicas it was paid for."""
    fined: int
    """Replicas a mediator found wrong."""
    not_delivered: int
    """Replicas it did not deliver."""

    @property
    def free_cpus(self) -> int:
        """CPUs not reserved."""
        return self.cpus - self.used_cpus

    @property
    def free_memory(self) -> int:
        """Memory not reserved."""
        return self.memory - self.used_memory

    @property
    def free_gpus(self) -> int:
        """GPUs not reserved."""
        return self.gpus - self.used_gpus

    def offers(self, executor: Executor) -> bool:
        """Whether it offers ``executor``."""
        return bool(self.executors & executor.bit)

    @classmethod
    def from_value(cls, value: Value) -> AskInfo:
        """From the view's ``list(provider, cpus, memory, ..., not_delivered)``."""
        f = _list(value, "an ask", 21)
        n = {i: _uint(f[i], "an ask number") for i in (1, 2, 3, 5, 6, 7, 8, 9, 10, 11)}
        return cls(
            provider=_address(f[0], "provider"),
            cpus=n[1],
            memory=n[2],
            gpus=n[3],
            gpu_model=_str(f[4], "gpu_model"),
            executors=n[5],
            used_cpus=n[6],
            used_memory=n[7],
            used_gpus=n[8],
            price_cpu=n[9],
            price_gpu=n[10],
            collateral_ppm=n[11],
            mediators=_addresses(f[12], "an accepted mediator"),
            endpoint=_str(f[13], "endpoint"),
            kem_key=_bytes(f[14], "kem_key", KEM_KEY_SIZE),
            free_collateral=_uint(f[15], "free_collateral"),
            locked_collateral=_uint(f[16], "locked_collateral"),
            active=_bool(f[17], "active"),
            settled=_uint(f[18], "settled"),
            fined=_uint(f[19], "fined"),
            not_delivered=_uint(f[20], "not_delivered"),
        )


@dataclass(frozen=True)
class MediatorInfo:
    """A mediator (view ``get_mediator``)."""

    mediator: Address
    """Its address."""
    fee: int
    """Shor per mediation."""
    stake: int
    """Shor staked."""
    deals: int
    """Open deals naming it."""
    active: bool
    """Whether new deals may name it."""
    exit_height: int
    """When its stake may come back (0: not leaving)."""
    endpoint: str
    """``host:port`` of its API."""
    kem_key: bytes
    """Its ML-KEM-768 encapsulation key."""
    verdicts: int
    """Verdicts it posted."""
    missed: int
    """Mediations it let time out."""

    @classmethod
    def from_value(cls, value: Value) -> MediatorInfo:
        """From the view's ``list(address, fee, stake, deals, active, ...)``."""
        f = _list(value, "a mediator", 10)
        return cls(
            _address(f[0], "mediator"),
            _uint(f[1], "fee"),
            _uint(f[2], "stake"),
            _uint(f[3], "deals"),
            _bool(f[4], "active"),
            _uint(f[5], "exit_height"),
            _str(f[6], "endpoint"),
            _bytes(f[7], "kem_key", KEM_KEY_SIZE),
            _uint(f[8], "verdicts"),
            _uint(f[9], "missed"),
        )


_EXECUTORS = {int(e): e for e in Executor}
_VERIFICATIONS = {int(v): v for v in Verification}
_PHASES = {int(p): p for p in Phase}
_REPLICA_STATES = {int(s): s for s in ReplicaState}


@dataclass(frozen=True)
class BidInfo:
    """An open bid (view ``get_bid``)."""

    bid_id: int
    """Its id."""
    client: Address
    """Who placed it."""
    job: bytes
    """The job spec hash."""
    cpus: int
    """CPUs per replica."""
    memory: int
    """Memory per replica."""
    gpus: int
    """GPUs per replica."""
    gpu_model: str
    """The GPU model asked for (empty: any)."""
    executor: Executor
    """Where the job runs."""
    timeout: int
    """Seconds the job may run."""
    max_price_cpu: int
    """Highest price per CPU-second."""
    max_price_gpu: int
    """Highest price per GPU-second."""
    verification: Verification
    """none, spot or replicated."""
    collateral_ppm: int
    """Least collateral multiple it accepts."""
    mediators: tuple[Address, ...]
    """Mediators it accepts."""
    max_fee: int
    """Highest mediator fee it pays."""
    deadline: int
    """Height from which it can no longer become a deal."""
    deposit: int
    """Shor it holds."""
    agent: Address | None = None
    """A contract's bid: the account that may form its deal (None: an ordinary bid)."""
    max_answer: int = 0
    """A contract's bid: the most bytes of stdout its answer may hold (0: no answer)."""

    @property
    def replicas(self) -> int:
        """Providers the deal needs."""
        return self.verification.replicas

    @property
    def acting(self) -> Address:
        """Who acts for the bid off chain (offers, vouching): its agent, else its client."""
        return self.agent or self.client

    @classmethod
    def from_value(cls, bid_id: int, value: Value) -> BidInfo:
        """From the view's ``list(client, job, cpus, ..., deposit, agent, max_answer)``."""
        f = _list(value, "a bid", 18)
        return cls(
            bid_id,
            _address(f[0], "client"),
            _bytes(f[1], "job", HASH_SIZE),
            _uint(f[2], "cpus"),
            _uint(f[3], "memory"),
            _uint(f[4], "gpus"),
            _str(f[5], "gpu_model"),
            _enum_value(f[6], "executor", _EXECUTORS),
            _uint(f[7], "timeout"),
            _uint(f[8], "max_price_cpu"),
            _uint(f[9], "max_price_gpu"),
            _enum_value(f[10], "verification", _VERIFICATIONS),
            _uint(f[11], "collateral_ppm"),
            _addresses(f[12], "an accepted mediator"),
            _uint(f[13], "max_fee"),
            _uint(f[14], "deadline"),
            _uint(f[15], "deposit"),
            _optional_address(f[16], "agent"),
            _answer_bound(f[17]),
        )


@dataclass(frozen=True)
class ReplicaInfo:
    """One provider of a deal (in view ``get_deal``)."""

    index: int
    """Its index in the deal."""
    provider: Address
    """Who runs it."""
    price_cpu: int
    """Its price per CPU-second."""
    price_gpu: int
    """Its price per GPU-second."""
    collateral: int
    """Its collateral locked in the deal."""
    state: ReplicaState
    """ASSIGNED, COMMITTED or REVEALED."""
    commitment: bytes | None
    """Its commitment, once committed."""
    root: bytes | None
    """Its revealed result root, once revealed."""
    usage_cpu: int
    """CPU-seconds it reported."""
    usage_gpu: int
    """GPU-seconds it reported."""

    @property
    def payment(self) -> int:
        """What its usage is worth at its prices."""
        return payment_for(self.usage_cpu, self.usage_gpu, self.price_cpu, self.price_gpu)

    @classmethod
    def from_value(cls, value: Value) -> ReplicaInfo:
        """From ``list(index, provider, price_cpu, ...)``."""
        f = _list(value, "a replica", 10)
        state = _enum_value(f[5], "replica state", _REPLICA_STATES)
        sealed = _bytes(f[6], "commitment", HASH_SIZE)
        root = _bytes(f[7], "root", HASH_SIZE)
        return cls(
            _uint(f[0], "index"),
            _address(f[1], "provider"),
            _uint(f[2], "price_cpu"),
            _uint(f[3], "price_gpu"),
            _uint(f[4], "collateral"),
            state,
            None if state is ReplicaState.ASSIGNED else sealed,
            root if state is ReplicaState.REVEALED else None,
            _uint(f[8], "usage_cpu"),
            _uint(f[9], "usage_gpu"),
        )


@dataclass(frozen=True)
class DealInfo:
    """An open deal (view ``get_deal``)."""

    deal_id: int
    """Its id (the bid's)."""
    client: Address
    """Who pays."""
    job: bytes
    """The job spec hash."""
    mediator: Address | None
    """Its mediator (None for ``none``)."""
    verification: Verification
    """none, spot or replicated."""
    cpus: int
    """CPUs per replica."""
    memory: int
    """Memory per replica."""
    gpus: int
    """GPUs per replica."""
    timeout: int
    """Seconds the job may run."""
    formed: int
    """Height it formed at."""
    phase: Phase
    """Where it stands."""
    deadline: int
    """Height at which the phase ends."""
    escrow: int
    """Shor held."""
    fee: int
    """The mediator's fee."""
    disputed: bool
    """Whether the client disputed."""
    replicas: tuple[ReplicaInfo, ...]
    """Its providers, in order."""
    agent: Address | None = None
    """A contract's deal: the account that formed it (None: an ordinary deal)."""
    max_answer: int = 0
    """A contract's deal: the most bytes of stdout its answer may hold (0: the reveal carries
    no answer)."""

    @property
    def acting(self) -> Address:
        """Who acts for the deal off chain (follows it on the providers): its agent, else its
        client."""
        return self.agent or self.client

    @classmethod
    def from_value(cls, deal_id: int, value: Value) -> DealInfo:
        """From the view's ``list(client, job, mediator, ..., replicas, agent, max_answer)``."""
        f = _list(value, "a deal", 17)
        replicas = tuple(ReplicaInfo.from_value(r) for r in _list(f[14], "replicas"))
        if [r.index for r in replicas] != list(range(len(replicas))):
            raise MarketError("a deal's replicas are not listed in order")
        return cls(
            deal_id,
            _address(f[0], "client"),
            _bytes(f[1], "job", HASH_SIZE),
            _optional_address(f[2], "mediator"),
            _enum_value(f[3], "verification", _VERIFICATIONS),
            _uint(f[4], "cpus"),
            _uint(f[5], "memory"),
            _uint(f[6], "gpus"),
            _uint(f[7], "timeout"),
            _uint(f[8], "formed"),
            _enum_value(f[9], "phase", _PHASES),
            _uint(f[10], "deadline"),
            _uint(f[11], "escrow"),
            _uint(f[12], "fee"),
            _bool(f[13], "disputed"),
            replicas,
            _optional_address(f[15], "agent"),
            _answer_bound(f[16]),
        )


def _answer_bound(value: Value) -> int:
    found = _uint(value, "max_answer")
    if found > MAX_ANSWER:
        raise MarketError(f"max_answer is at most {MAX_ANSWER}, got {found}")
    return found


def totals_from_value(value: Value) -> Totals:
    """The view ``totals``' ``list(escrow, collateral, stakes, burned)``."""
    return Totals(*actorview.uints(value, "totals", 4, "a total"))


def params_from_value(value: Value) -> ComputeParams:
    """The view ``params``' list of the twelve parameters."""
    values = actorview.uints(value, "params", 12, "a parameter")
    try:
        return ComputeParams(*values)
    except ComputeParamsError as exc:
        raise MarketError(str(exc)) from None


# -- acceptances ----------------------------------------------------------------------------------


def acceptance_terms(found: BidInfo, ask: AskInfo) -> tuple[int, int, int]:
    """What a provider with ``ask`` accepts for a replica of ``found`` at its current prices:
    ``(price_cpu, price_gpu, collateral)``."""
    largest = max_payment(found.cpus, found.gpus, found.timeout, ask.price_cpu, ask.price_gpu)
    return ask.price_cpu, ask.price_gpu, collateral_for(largest, ask.collateral_ppm)


def sign_acceptance(
    keypair: HybridKeyPair,
    chain_id: int,
    found: BidInfo,
    replica: int,
    ask: AskInfo,
    mediator: Address | None,
) -> bytes:
    """A provider's signed acceptance of replica ``replica`` of bid ``found`` with ``mediator``,
    at the prices and collateral of its ``ask`` (what the actor checks when the deal forms)."""
    price_cpu, price_gpu, collateral = acceptance_terms(found, ask)
    message = acceptance_message(
        chain_id,
        found.bid_id,
        replica,
        found.job,
        price_cpu,
        price_gpu,
        collateral,
        mediator,
        keypair.address,
    )
    return sign(keypair, message).encode()


# -- views ----------------------------------------------------------------------------------------


class ComputeMarketView(ActorView[ComputeParams, AskInfo, BidInfo, DealInfo, Totals]):
    """The compute market's views through ``qoin_call`` (those of every market are
    :class:`~qoin.rpc.actorview.ActorView`'s), with its mediators': a missing record answers
    None, a malformed answer is a :class:`MarketError`."""

    ACTOR: ClassVar[Address] = COMPUTE_MARKET
    records = ViewRecords(
        params=params_from_value,
        ask=AskInfo.from_value,
        bid=BidInfo.from_value,
        deal=DealInfo.from_value,
        totals=totals_from_value,
    )
    MAX_LISTED: ClassVar[int] = MAX_LISTED

    def get_mediator(self, mediator: Address) -> MediatorInfo | None:
        """A mediator (active or not), or None."""
        found = self._found("get_mediator", [mediator])
        return None if found is None else MediatorInfo.from_value(found)

    def mediators(self) -> list[MediatorInfo]:
        """Every active mediator, in registration order (all pages)."""
        return [MediatorInfo.from_value(m) for m in self._pages("mediators")]


# -- events ---------------------------------------------------------------------------------------


_EVENTS = ActorEvents(COMPUTE_MARKET, EVENT_NAMES, "compute market")


def event_topic(name: str) -> bytes:
    """Topic 0 of the event ``name`` (SHA3-256 of the name)."""
    return _EVENTS.topic(name)


def decode_event(event_json: Mapping[str, Any]) -> tuple[str, Value] | None:
    """The name and decoded data of a compute-market event or log on the wire (``address``,
    ``topics``, ``data`` in hex); None if another account emitted it or its topic 0 names no
    event of the actor; :class:`MarketError` if it is malformed."""
    return _EVENTS.decode(event_json)
