"""The ``compute-market`` actor: asks, mediators, bids, deals, commit-reveal, disputes, mediation
and settlement.

It lives at ``actor_address("compute-market")``; ``docs/spec/compute.md`` §3 is its rule set
(methods, phases, views, events, money). Providers post *asks* (resources, executors, prices per
CPU-second and GPU-second, a collateral multiple k, the mediators they accept); mediators register
with a stake and a fee; clients post *bids* naming a job spec hash, and turn a bid into a *deal*
with r providers' signed acceptances (r = 2 for ``replicated``, else 1) and a mediator both sides
accept. The providers commit to their result root, then reveal it; equal roots are paid after a
dispute window, differing roots (or a client's dispute) go to the mediator, whose verdict settles
payment and fines. Every phase ends at a deadline run by the cron, the last always letting the
client reclaim its deposit.

Choices this module makes where the specification leaves room
    * ``none`` has no mediator (the bid's mediator list is empty, its ``max_fee`` 0 and the deal
      names the zero address) and no dispute window: the provider is paid as soon as it reveals.
    * A replica that did not commit or did not reveal is "not delivered" at settlement, whatever
      else happens (even when a mediation times out): it is not paid and its collateral is
      slashed like a fine.
    * Slashed collateral pays the mediator's fee first (verdicts wrong-result and not-delivered),
      then ``fine_client_ppm`` of what is left goes to the client, the rest is burnt; a fee the
      fines do not cover comes from the client's reserve.
    * A mediator that misses its deadline loses ``mediator_slash_ppm`` of its stake (burnt).
    * A mediator's stake comes back once it has unregistered, the exit delay has passed and no
      open deal names it (at the exit height by the cron, or at the settlement of its last deal).
    * A released collateral returns to the ask's free collateral while the ask is active, and is
      sent to the provider once it is cancelled (as in the storage market).
    * ``asks`` and ``mediators`` page through the posting order like the storage market's
      ``asks``: ``count`` (<= 32) positions from ``start``, active records only, at most
      :data:`PAGE_BYTES` of records, ``next_start`` 0 at the end.

Storage (``a`` is an address, 32 bytes; ids 8 bytes big-endian)
    ``params``: :class:`~qoin.compute.params.ComputeParams` (genesis; absent: mainnet);
    ``totals``: :class:`Totals`; ``counters``: :class:`Counters`;
    ``A‖a``: :class:`Ask`; ``I‖a``: :class:`AskContact`; ``K‖a``: the hybrid public key;
    ``O‖position``: the address of the ask first posted there; ``M‖a``: :class:`Mediator`;
    ``N‖position``: the address of the mediator first registered there; ``E‖a``:
    :class:`MediatorContact`; ``B‖bid``: :class:`Bid`;
    ``D‖deal``: :class:`Deal`; ``R‖deal‖replica (1)``: :class:`Replica`.

Gas
    :data:`~qoin.execution.gas.ACTOR_CALL_GAS` to enter, then the host costs of what a method does
    through its context (each record read once and written once per call; one transfer per payee
    per call); an acceptance signature costs :data:`~qoin.execution.gas.SIGNATURE_VERIFY_GAS`,
    its message and a commitment are hashed through ``ctx.sha3``, a public key's address is
    charged as one hash of the key. Every method touches at most two replicas, their asks, one
    mediator and the deal: no call's work grows with the market.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import cast

from qoin.actors import records
from qoin.actors.base import BuiltinActor, fixed_bytes, load, no_value, topic
from qoin.actors.records import (
    INFO_PREFIX,
    KEY_PREFIX,
    ORDER_PREFIX,
    Contact,
    MarketBook,
    MarketLayout,
    MarketTotals,
    ask_key,
    bid_key,
    check_acceptance,
    checked_endpoint,
    checked_key,
    cron_only,
    deal_key,
    deal_topic,
    emit,
    read_bool,
    read_enum,
    read_optional_address,
    read_text,
    record_id,
    signed_providers,
    store_if_changed,
    tagged_sha3,
    uint,
    varints,
    write_optional_address,
)
from qoin.compute.jobspec import MAX_GPU_MODEL, Executor, Verification
from qoin.compute.params import (
    MAINNET,
    MAX_COLLATERAL_PPM,
    PARAMS_KEY,
    ComputeParams,
)
from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.encoding.codec import DecodeError, NonCanonicalInteger, Reader, Writer
from qoin.execution import gas as costs
from qoin.execution.abi import Value, encode_args, encode_value
from qoin.execution.cron import CRON_ADDRESS
from qoin.execution.vm import CallFailed, Context, Revert, check_args
from qoin.storage.params import PPM, VarintRecord

NAME = "compute-market"
"""The actor's name (its address is ``actor_address(NAME)``)."""

KEM_KEY_SIZE = records.KEM_KEY_SIZE
"""Bytes of an ML-KEM-768 encapsulation key (job keys are wrapped to it)."""
MAX_ENDPOINT = records.MAX_ENDPOINT
"""Longest endpoint (``host:port``), in bytes."""
MAX_MEDIATORS = 8
"""Most mediators an ask or a bid accepts."""
MAX_REPLICAS = 2
"""Most providers of one deal."""
ALL_EXECUTORS = (1 << len(Executor)) - 1
"""The executor bit set with every executor."""
MAX_PAGE = records.MAX_PAGE
"""Most positions one ``asks`` or ``mediators`` call looks at."""
PAGE_BYTES = records.PAGE_BYTES
"""A page stops before its records pass this many bytes (return data is 16 KiB)."""
TAG_ACCEPT = b"QOIN/compute/accept/v1"
"""Domain tag of a provider's acceptance of a bid's replica."""
TAG_COMMIT = b"QOIN/compute/commit/v1"
"""Domain tag of a result commitment."""
ZERO_ADDRESS = records.ZERO_ADDRESS
"""Stands for "no mediator" in calls and views."""
ZERO_HASH = bytes(HASH_SIZE)
"""Stands for "no commitment" and "no root" in views."""
MAX_ANSWER = 256
"""Most bytes of a contract bid's answer (the job's stdout, verified against the result root)."""
MAX_ANSWER_MANIFEST = 4096
"""Most bytes of the result manifest a reveal with an answer carries (a job asking for an answer
leaves few output files)."""
CALLBACK_GAS = 1_000_000
"""Gas a contract's callback runs with (its own cron call), charged to the contract's ``bid`` up
front: every such bid ends in one callback, and a callback cannot afford a bid (no unpaid chain
of callbacks)."""
RESULT_CALLBACK = "on_compute_result"
"""``on_compute_result(uint deal, bytes root, bytes answer)``: a contract's deal delivered."""
FAILED_CALLBACK = "on_compute_failed"
"""``on_compute_failed(uint id, uint code)``: a contract's bid or deal ended without an answer
(:class:`FailCode`)."""
TAG_RESULT = b"QOIN/compute/result/v1"
"""Domain tag of a result root (:func:`qoin.compute.outputs.result_root`)."""
TAG_FILE = b"QOIN/compute/file/v1"
"""Domain tag of an output file's digest, the stdout's included."""
MANIFEST_VERSION = 1
MAX_STOP_REASON = 32

MEDIATOR_PREFIX = b"M"
MEDIATOR_ORDER_PREFIX = b"N"
MEDIATOR_INFO_PREFIX = b"E"
REPLICA_PREFIX = b"R"
ANSWER_PREFIX = b"W"
CALLBACK_PREFIX = b"C"

EVENT_NAMES = (
    "AskPosted",
    "AskCancelled",
    "MediatorRegistered",
    "MediatorUnregistered",
    "MediatorReleased",
    "BidPlaced",
    "BidCancelled",
    "BidExpired",
    "DealFormed",
    "PhaseStarted",
    "ResultCommitted",
    "ResultRevealed",
    "DealTimedOut",
    "DisputeOpened",
    "MediationStarted",
    "Verdict",
    "MediationTimedOut",
    "ProviderFined",
    "ProviderPaid",
    "DealSettled",
    "ContractBidPlaced",
    "AnswerRevealed",
    "CallbackScheduled",
    "CallbackDone",
)
"""Every event the actor emits (topic 0 is SHA3-256 of the name)."""

ASK_POSTED = topic("AskPosted")
MEDIATOR_REGISTERED = topic("MediatorRegistered")
MEDIATOR_UNREGISTERED = topic("MediatorUnregistered")
MEDIATOR_RELEASED = topic("MediatorReleased")
BID_PLACED = topic("BidPlaced")
DEAL_FORMED, PHASE_STARTED = topic("DealFormed"), topic("PhaseStarted")
RESULT_COMMITTED, RESULT_REVEALED = topic("ResultCommitted"), topic("ResultRevealed")
DEAL_TIMED_OUT, DISPUTE_OPENED = topic("DealTimedOut"), topic("DisputeOpened")
MEDIATION_STARTED, VERDICT = topic("MediationStarted"), topic("Verdict")
MEDIATION_TIMED_OUT = topic("MediationTimedOut")
PROVIDER_FINED, PROVIDER_PAID = topic("ProviderFined"), topic("ProviderPaid")
DEAL_SETTLED = topic("DealSettled")
CONTRACT_BID_PLACED, ANSWER_REVEALED = topic("ContractBidPlaced"), topic("AnswerRevealed")
CALLBACK_SCHEDULED, CALLBACK_DONE = topic("CallbackScheduled"), topic("CallbackDone")


class Phase(IntEnum):
    """Where a deal stands (docs/spec/compute.md §3.4); each ends at its deadline."""

    RUN = 1
    """The providers run the job and commit to their result roots."""
    REVEAL = 2
    """The providers that committed reveal their roots."""
    CHECK = 3
    """The dispute window (spot, replicated) after agreeing results."""
    MEDIATION = 4
    """The mediator re-runs the job and posts its verdict."""


class ReplicaState(IntEnum):
    """What a deal's provider has done."""

    ASSIGNED = 1
    """Nothing yet."""
    COMMITTED = 2
    """Committed to a result root."""
    REVEALED = 3
    """Revealed its root and usage."""


class VerdictKind(IntEnum):
    """A mediator's verdict (docs/spec/compute.md §3.6)."""

    WRONG_RESULT = 1
    """Providers whose root is not the mediator's are fined."""
    CORRECT_RESULT = 2
    """Every revealed root is the mediator's: the client disputed a correct result."""
    NON_DETERMINISTIC = 3
    """The job's results differ from run to run: the client's fault."""
    NOT_DELIVERED = 4
    """Providers whose root is not ``root`` did not deliver their outputs."""


class Outcome(IntEnum):
    """How a deal settled (in ``DealSettled``)."""

    COMPLETED = 1
    """The revealed results were paid (no dispute, or none possible)."""
    MEDIATED = 2
    """A verdict settled it."""
    UNDELIVERED = 3
    """No provider revealed a result: the client was refunded."""
    MEDIATION_TIMED_OUT = 4
    """The mediator missed its deadline: the client was refunded."""


class FailCode(IntEnum):
    """Why a contract's bid or deal ended without an answer (``on_compute_failed``'s code): the
    :class:`Outcome` of its settlement, or one of these."""

    NO_DEAL = 0
    """The bid expired, or its agent cancelled it, before a deal formed (the deposit refunded)."""
    MEDIATED = 2
    """A verdict settled it without a result every paid replica agrees on (non-deterministic,
    or every replica wrong)."""
    UNDELIVERED = 3
    """No provider revealed a result (the escrow refunded)."""
    MEDIATION_TIMED_OUT = 4
    """The mediator missed its deadline (the escrow refunded)."""
    ANSWER_TOO_LONG = 5
    """The job ran and was paid, but its stdout is longer than the bid's ``max_answer``."""


class FineReason(IntEnum):
    """Why a provider's collateral was slashed (in ``ProviderFined``)."""

    WRONG_RESULT = 1
    """The mediator found its result wrong."""
    NOT_DELIVERED = 2
    """It did not commit or reveal in time, or the mediator found its outputs not delivered."""


# -- money rules and signed messages ------------------------------------------------------------


def max_payment(cpus: int, gpus: int, timeout: int, price_cpu: int, price_gpu: int) -> int:
    """The most a replica can be paid: ``cpus * timeout * price_cpu + gpus * timeout *
    price_gpu`` (its reserved CPU- and GPU-seconds at its prices)."""
    return cpus * timeout * price_cpu + gpus * timeout * price_gpu


def collateral_for(payment: int, collateral_ppm: int) -> int:
    """A replica's collateral at multiple ``collateral_ppm``: ``ceil(payment * k_ppm / PPM)``."""
    return -(-payment * collateral_ppm // PPM)


def payment_for(usage_cpu: int, usage_gpu: int, price_cpu: int, price_gpu: int) -> int:
    """What a replica is paid for its usage: ``usage_cpu * price_cpu + usage_gpu * price_gpu``."""
    return usage_cpu * price_cpu + usage_gpu * price_gpu


def bid_deposit(
    replicas: int,
    cpus: int,
    gpus: int,
    timeout: int,
    max_price_cpu: int,
    max_price_gpu: int,
    max_fee: int,
) -> int:
    """The least deposit of a bid: ``r * max cost + max_fee`` (the mediation reserve)."""
    return replicas * max_payment(cpus, gpus, timeout, max_price_cpu, max_price_gpu) + max_fee


def acceptance_body(
    chain_id: int,
    bid_id: int,
    replica: int,
    job: bytes,
    price_cpu: int,
    price_gpu: int,
    collateral: int,
    mediator: Address | None,
    provider: Address,
) -> bytes:
    """What an acceptance hashes after its tag: ``chain_id (8) || bid_id (8) || replica (1) ||
    job (32) || price_cpu (8) || price_gpu (8) || collateral (8) || mediator (32, zero for none) ||
    provider (32)``."""
    return b"".join(
        (
            chain_id.to_bytes(8, "big"),
            bid_id.to_bytes(8, "big"),
            replica.to_bytes(1, "big"),
            job,
            price_cpu.to_bytes(8, "big"),
            price_gpu.to_bytes(8, "big"),
            collateral.to_bytes(8, "big"),
            (mediator or ZERO_ADDRESS).raw,
            provider.raw,
        )
    )


def acceptance_message(
    chain_id: int,
    bid_id: int,
    replica: int,
    job: bytes,
    price_cpu: int,
    price_gpu: int,
    collateral: int,
    mediator: Address | None,
    provider: Address,
) -> bytes:
    """The message a provider signs to run replica ``replica`` of bid ``bid_id`` at its prices,
    locking ``collateral``, with ``mediator``: ``tagged_hash("QOIN/compute/accept/v1", body)``."""
    return tagged_hash(
        TAG_ACCEPT,
        acceptance_body(
            chain_id, bid_id, replica, job, price_cpu, price_gpu, collateral, mediator, provider
        ),
    )


hash_gas = records.hash_gas


def commitment_body(deal_id: int, provider: Address, root: bytes, salt: bytes) -> bytes:
    """``deal (8) || provider (32) || root (32) || salt (32)``."""
    return deal_id.to_bytes(8, "big") + provider.raw + root + salt


def commitment(deal_id: int, provider: Address, root: bytes, salt: bytes) -> bytes:
    """A provider's commitment to its result root: ``tagged_hash("QOIN/compute/commit/v1",
    commitment_body(...))`` (the provider's address in it stops a replica copying another's)."""
    return tagged_hash(TAG_COMMIT, commitment_body(deal_id, provider, root, salt))


# -- records ------------------------------------------------------------------------------------


def _write_addresses(writer: Writer, addresses: tuple[Address, ...]) -> Writer:
    writer.u8(len(addresses))
    for address in addresses:
        writer.fixed(address.raw, ADDRESS_SIZE)
    return writer


def _read_addresses(reader: Reader) -> tuple[Address, ...]:
    count = reader.u8()
    if count > MAX_MEDIATORS:
        raise NonCanonicalInteger(f"at most {MAX_MEDIATORS} mediators, got {count}")
    return tuple(Address(reader.fixed(ADDRESS_SIZE)) for _ in range(count))


@dataclass(frozen=True)
class Totals(MarketTotals):
    """Shor the actor holds, by purpose; the actor's balance is their sum."""

    MARKET = "compute market"

    escrow: int = 0
    """Open bids' deposits and deals' escrow (payments and the mediation reserve)."""
    collateral: int = 0
    """The asks' free and locked collateral."""
    stakes: int = 0
    """Mediators' stakes (exiting ones too, until sent back)."""
    burned: int = 0
    """Slashed collateral and stakes burnt (held for ever)."""

    def moved(
        self, *, escrow: int = 0, collateral: int = 0, stakes: int = 0, burned: int = 0
    ) -> Totals:
        """These totals changed by the given amounts; :class:`CallFailed` if one goes negative
        (a broken state: never a caller's fault)."""
        return self.moved_by(escrow=escrow, collateral=collateral, stakes=stakes, burned=burned)


@dataclass(frozen=True)
class Counters(VarintRecord):
    """The actor's sequence numbers."""

    last_bid: int = 0
    """The last bid id given (ids are 1, 2, 3, ...; a deal keeps its bid's id)."""
    positions: int = 0
    """Asks ever posted (the next ask's position)."""
    mediator_positions: int = 0
    """Mediators ever registered (the next one's position)."""
    open_deals: int = 0
    """Deals formed and not yet settled."""


@dataclass(frozen=True)
class Ask:
    """A provider's ask (its numbers; the endpoint, keys and mediators are stored apart)."""

    cpus: int
    """CPUs offered."""
    memory: int
    """Bytes of memory offered."""
    gpus: int
    """GPUs offered."""
    used_cpus: int
    """CPUs its running deals reserve."""
    used_memory: int
    """Memory its running deals reserve."""
    used_gpus: int
    """GPUs its running deals reserve."""
    executors: int
    """Executors offered (bit ``1 << Executor``)."""
    price_cpu: int
    """Shor per CPU-second."""
    price_gpu: int
    """Shor per GPU-second."""
    collateral_ppm: int
    """Collateral multiple k in ppm of a replica's largest payment."""
    free: int
    """Collateral not locked in deals (withdrawable)."""
    locked: int
    """Collateral locked in deals."""
    active: bool
    """Whether it is in the book (new deals)."""
    position: int
    """Its place in the posting order."""
    settled: int
    """Replicas it was paid for (reputation)."""
    fined: int
    """Replicas whose result a mediator found wrong."""
    not_delivered: int
    """Replicas it did not deliver (no commit or reveal in time, or outputs not delivered)."""

    def encode(self) -> bytes:
        """Varints, the active flag as one byte, then varints."""
        writer = varints(
            Writer(),
            self.cpus,
            self.memory,
            self.gpus,
            self.used_cpus,
            self.used_memory,
            self.used_gpus,
            self.executors,
            self.price_cpu,
            self.price_gpu,
            self.collateral_ppm,
            self.free,
            self.locked,
        ).u8(int(self.active))
        return varints(writer, self.position, self.settled, self.fined, self.not_delivered).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Ask:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        cpus, memory, gpus, used_cpus, used_memory, used_gpus = (reader.varint() for _ in range(6))
        executors, price_cpu, price_gpu, collateral_ppm, free, locked = (
            reader.varint() for _ in range(6)
        )
        active = read_bool(reader)
        position, settled, fined, not_delivered = (reader.varint() for _ in range(4))
        reader.finish()
        return cls(
            cpus,
            memory,
            gpus,
            used_cpus,
            used_memory,
            used_gpus,
            executors,
            price_cpu,
            price_gpu,
            collateral_ppm,
            free,
            locked,
            active,
            position,
            settled,
            fined,
            not_delivered,
        )


@dataclass(frozen=True)
class AskContact:
    """How clients reach a provider, and what it accepts."""

    endpoint: str
    """``host:port`` of its API."""
    kem_key: bytes
    """Its ML-KEM-768 encapsulation key (job keys are wrapped to it)."""
    gpu_model: str
    """The model of its GPUs (empty: none, or not said)."""
    mediators: tuple[Address, ...]
    """The mediators it accepts."""

    def encode(self) -> bytes:
        """``varbytes endpoint || kem_key || varbytes gpu_model || n (1) || addresses``."""
        writer = Writer().var_bytes(self.endpoint.encode(), MAX_ENDPOINT)
        writer.fixed(self.kem_key, KEM_KEY_SIZE).var_bytes(self.gpu_model.encode(), MAX_GPU_MODEL)
        return _write_addresses(writer, self.mediators).bytes()

    @classmethod
    def decode(cls, data: bytes) -> AskContact:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        endpoint = read_text(reader, MAX_ENDPOINT)
        kem_key = reader.fixed(KEM_KEY_SIZE)
        contact = cls(endpoint, kem_key, read_text(reader, MAX_GPU_MODEL), _read_addresses(reader))
        reader.finish()
        return contact


@dataclass(frozen=True)
class Mediator:
    """A registered mediator (its numbers; the endpoint and KEM key are stored apart)."""

    fee: int
    """Shor per mediation."""
    stake: int
    """Shor staked."""
    deals: int
    """Open deals naming it."""
    active: bool
    """Whether new deals may name it."""
    exit_height: int
    """When its stake may come back after ``unregister_mediator`` (0: not leaving)."""
    position: int
    """Its place in the registration order."""
    verdicts: int
    """Verdicts it posted."""
    missed: int
    """Mediations it let time out."""

    def encode(self) -> bytes:
        """``fee || stake || deals || active (1) || exit_height || position || verdicts ||
        missed``."""
        writer = varints(Writer(), self.fee, self.stake, self.deals).u8(int(self.active))
        return varints(writer, self.exit_height, self.position, self.verdicts, self.missed).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Mediator:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        fee, stake, deals = reader.varint(), reader.varint(), reader.varint()
        active = read_bool(reader)
        exit_height, position, verdicts, missed = (reader.varint() for _ in range(4))
        reader.finish()
        return cls(fee, stake, deals, active, exit_height, position, verdicts, missed)


@dataclass(frozen=True)
class MediatorContact(Contact):
    """How clients and providers reach a mediator (a disputed job's key is wrapped to its
    ``kem_key``)."""


@dataclass(frozen=True)
class Bid:
    """An open bid."""

    client: Address
    """Who placed it."""
    job: bytes
    """The job spec hash."""
    cpus: int
    """CPUs per replica."""
    memory: int
    """Bytes of memory per replica."""
    gpus: int
    """GPUs per replica."""
    gpu_model: str
    """The GPU model asked for (empty: any)."""
    executor: Executor
    """Where the job runs."""
    timeout: int
    """Seconds the job may run."""
    max_price_cpu: int
    """The highest price it pays per CPU-second."""
    max_price_gpu: int
    """The highest price it pays per GPU-second."""
    verification: Verification
    """none, spot or replicated."""
    collateral_ppm: int
    """The least collateral multiple it accepts from a provider."""
    mediators: tuple[Address, ...]
    """The mediators it accepts (empty for ``none``)."""
    max_fee: int
    """The highest mediator fee it pays (its mediation reserve)."""
    deadline: int
    """The height from which it can no longer become a deal."""
    deposit: int
    """Shor it holds (the bid call's whole value)."""
    agent: Address | None = None
    """A contract's bid: the account that may form its deal and dispute for it (None: an
    ordinary bid, its client does both)."""
    max_answer: int = 0
    """A contract's bid: the most bytes of the job's stdout its result callback carries as the
    answer (0: none, the callback carries the root only)."""

    @property
    def replicas(self) -> int:
        """Providers the deal needs."""
        return self.verification.replicas

    @property
    def subject(self) -> bytes:
        """The second topic of its events: the job spec hash."""
        return self.job

    def encode(self) -> bytes:
        """``client || job || varints || varbytes gpu_model || executor (1) || varints ||
        verification (1) || varint || mediators || varints``, then for a contract's bid only
        ``agent || varint max_answer`` (an ordinary bid's encoding is unchanged)."""
        writer = Writer().fixed(self.client.raw, ADDRESS_SIZE).fixed(self.job, HASH_SIZE)
        varints(writer, self.cpus, self.memory, self.gpus)
        writer.var_bytes(self.gpu_model.encode(), MAX_GPU_MODEL).u8(int(self.executor))
        varints(writer, self.timeout, self.max_price_cpu, self.max_price_gpu)
        writer.u8(int(self.verification)).varint(self.collateral_ppm)
        _write_addresses(writer, self.mediators)
        varints(writer, self.max_fee, self.deadline, self.deposit)
        return _write_contract_terms(writer, self.agent, self.max_answer).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Bid:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        client, job = Address(reader.fixed(ADDRESS_SIZE)), reader.fixed(HASH_SIZE)
        cpus, memory, gpus = reader.varint(), reader.varint(), reader.varint()
        gpu_model = read_text(reader, MAX_GPU_MODEL)
        executor = read_enum(reader, Executor, "executor")
        timeout, max_price_cpu, max_price_gpu = reader.varint(), reader.varint(), reader.varint()
        verification = read_enum(reader, Verification, "verification")
        collateral_ppm = reader.varint()
        mediators = _read_addresses(reader)
        max_fee, deadline, deposit = reader.varint(), reader.varint(), reader.varint()
        agent, max_answer = _read_contract_terms(reader)
        reader.finish()
        return cls(
            client,
            job,
            cpus,
            memory,
            gpus,
            gpu_model,
            executor,
            timeout,
            max_price_cpu,
            max_price_gpu,
            verification,
            collateral_ppm,
            mediators,
            max_fee,
            deadline,
            deposit,
            agent,
            max_answer,
        )


def _write_contract_terms(writer: Writer, agent: Address | None, max_answer: int) -> Writer:
    """A contract's bid or deal ends with ``agent || varint max_answer``; any other with
    nothing."""
    if agent is None:
        return writer
    return writer.fixed(agent.raw, ADDRESS_SIZE).varint(max_answer)


def _read_contract_terms(reader: Reader) -> tuple[Address | None, int]:
    """Inverse of :func:`_write_contract_terms` (at the end of a record)."""
    if not reader.remaining:
        return None, 0
    agent = Address(reader.fixed(ADDRESS_SIZE))
    max_answer = reader.varint()
    if max_answer > MAX_ANSWER:
        raise NonCanonicalInteger(f"an answer is at most {MAX_ANSWER} bytes, got {max_answer}")
    return agent, max_answer


@dataclass(frozen=True)
class Deal:
    """An open deal (its replicas are stored apart)."""

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
    """The height it formed at."""
    phase: Phase
    """Where it stands."""
    deadline: int
    """The height at which the phase ends (its cron entry)."""
    escrow: int
    """Shor held: the replicas' largest payments and the mediator's fee."""
    fee: int
    """The mediator's fee (0 without a mediator)."""
    disputed: bool
    """Whether the client opened a dispute."""
    agent: Address | None = None
    """A contract's deal: the account that formed it and may dispute for it (None: an ordinary
    deal)."""
    max_answer: int = 0
    """A contract's deal: the most bytes of stdout its answer may hold (0: no answer)."""

    @property
    def replicas(self) -> int:
        """Its providers."""
        return self.verification.replicas

    def may_act(self, caller: Address) -> bool:
        """Whether ``caller`` may act for the client (dispute): the client or its agent."""
        return caller == self.client or (self.agent is not None and caller == self.agent)

    def encode(self) -> bytes:
        """``client || job || has_mediator (1) || [mediator] || verification (1) || varints ||
        phase (1) || varints || disputed (1)``, then for a contract's deal only ``agent ||
        varint max_answer``."""
        writer = Writer().fixed(self.client.raw, ADDRESS_SIZE).fixed(self.job, HASH_SIZE)
        write_optional_address(writer, self.mediator).u8(int(self.verification))
        varints(writer, self.cpus, self.memory, self.gpus, self.timeout, self.formed)
        writer.u8(int(self.phase))
        varints(writer, self.deadline, self.escrow, self.fee)
        writer.u8(int(self.disputed))
        return _write_contract_terms(writer, self.agent, self.max_answer).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Deal:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        client, job = Address(reader.fixed(ADDRESS_SIZE)), reader.fixed(HASH_SIZE)
        mediator = read_optional_address(reader)
        verification = read_enum(reader, Verification, "verification")
        cpus, memory, gpus, timeout, formed = (reader.varint() for _ in range(5))
        phase = read_enum(reader, Phase, "phase")
        deadline, escrow, fee = reader.varint(), reader.varint(), reader.varint()
        found = cls(
            client,
            job,
            mediator,
            verification,
            cpus,
            memory,
            gpus,
            timeout,
            formed,
            phase,
            deadline,
            escrow,
            fee,
            read_bool(reader),
            *_read_contract_terms(reader),
        )
        reader.finish()
        return found


@dataclass(frozen=True)
class Replica:
    """One provider of a deal."""

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
    commitment: bytes
    """Its commitment (zero until it commits)."""
    root: bytes
    """Its revealed result root (zero until it reveals)."""
    usage_cpu: int
    """CPU-seconds it reported (capped at the reserved amount)."""
    usage_gpu: int
    """GPU-seconds it reported (capped)."""

    @property
    def payment(self) -> int:
        """What it is paid for its usage."""
        return payment_for(self.usage_cpu, self.usage_gpu, self.price_cpu, self.price_gpu)

    @property
    def revealed(self) -> bool:
        """Whether it revealed a result."""
        return self.state is ReplicaState.REVEALED

    def encode(self) -> bytes:
        """``provider || varints || state (1) || commitment || root || varints``."""
        writer = Writer().fixed(self.provider.raw, ADDRESS_SIZE)
        varints(writer, self.price_cpu, self.price_gpu, self.collateral).u8(int(self.state))
        writer.fixed(self.commitment, HASH_SIZE).fixed(self.root, HASH_SIZE)
        return varints(writer, self.usage_cpu, self.usage_gpu).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Replica:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        provider = Address(reader.fixed(ADDRESS_SIZE))
        price_cpu, price_gpu, collateral = reader.varint(), reader.varint(), reader.varint()
        state = read_enum(reader, ReplicaState, "replica state")
        found = cls(
            provider,
            price_cpu,
            price_gpu,
            collateral,
            state,
            reader.fixed(HASH_SIZE),
            reader.fixed(HASH_SIZE),
            reader.varint(),
            reader.varint(),
        )
        reader.finish()
        return found


def mediator_key(mediator: Address) -> bytes:
    """Storage key of a :class:`Mediator`."""
    return MEDIATOR_PREFIX + mediator.raw


def replica_key(deal_id: int, index: int) -> bytes:
    """Storage key of a :class:`Replica`."""
    return REPLICA_PREFIX + record_id(deal_id) + bytes((index,))


def answer_key(deal_id: int, index: int) -> bytes:
    """Storage key of the :class:`Answer` a replica of a contract's deal revealed."""
    return ANSWER_PREFIX + record_id(deal_id) + bytes((index,))


def callback_key(number: int) -> bytes:
    """Storage key of the :class:`Callback` due for a contract's bid or deal."""
    return CALLBACK_PREFIX + record_id(number)


@dataclass(frozen=True)
class Answer:
    """What a replica of a deal with ``max_answer > 0`` revealed beside its root: the job's
    stdout (checked against the root through the manifest), or that it is too long."""

    fits: bool
    """Whether the stdout fits the deal's ``max_answer`` (else ``data`` is empty)."""
    data: bytes
    """The stdout."""

    def encode(self) -> bytes:
        """``fits (1) || varbytes data``."""
        return Writer().u8(int(self.fits)).var_bytes(self.data, MAX_ANSWER).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Answer:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        found = cls(read_bool(reader), reader.var_bytes(MAX_ANSWER))
        reader.finish()
        return found


@dataclass(frozen=True)
class Callback:
    """A contract's callback, due at the next height's cron (``cron_callback``)."""

    contract: Address
    """The bid's client, called back."""
    failed: bool
    """``on_compute_failed`` (else ``on_compute_result``)."""
    code: int
    """A failure's :class:`FailCode`."""
    root: bytes
    """A result's root (zero for a failure)."""
    answer: bytes
    """A result's answer (empty for a failure, or a bid asking for none)."""

    @property
    def method(self) -> str:
        """The contract's method called."""
        return FAILED_CALLBACK if self.failed else RESULT_CALLBACK

    def args(self, number: int) -> bytes:
        """The call's arguments: ``(deal, root, answer)`` or ``(id, code)``."""
        if self.failed:
            return encode_args([number, self.code])
        return encode_args([number, self.root, self.answer])

    def encode(self) -> bytes:
        """``contract || failed (1) || varint code || root || varbytes answer``."""
        writer = Writer().fixed(self.contract.raw, ADDRESS_SIZE).u8(int(self.failed))
        writer.varint(self.code).fixed(self.root, HASH_SIZE)
        return writer.var_bytes(self.answer, MAX_ANSWER).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Callback:
        """Inverse of :meth:`encode`."""
        reader = Reader(data)
        found = cls(
            Address(reader.fixed(ADDRESS_SIZE)),
            read_bool(reader),
            reader.varint(),
            reader.fixed(HASH_SIZE),
            reader.var_bytes(MAX_ANSWER),
        )
        reader.finish()
        return found


# -- the working set of one call ----------------------------------------------------------------


_LAYOUT = MarketLayout(
    params_key=PARAMS_KEY,
    params=ComputeParams.decode,
    mainnet=MAINNET,
    totals=Totals,
    counters=Counters,
    ask=Ask.decode,
    bid=Bid.decode,
    deal=Deal.decode,
    part="replica",
)


class _Book(MarketBook[ComputeParams, Totals, Counters, Ask, Bid, Deal]):
    """The working set of one call (:class:`~qoin.actors.records.MarketBook`), with contacts,
    mediators and replicas."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, _LAYOUT)

    def move(
        self, *, escrow: int = 0, collateral: int = 0, stakes: int = 0, burned: int = 0
    ) -> None:
        """Change the totals."""
        self.move_by(escrow=escrow, collateral=collateral, stakes=stakes, burned=burned)

    def contact(self, provider: Address) -> AskContact:
        """A provider's contact record (:class:`CallFailed` if missing)."""
        found = self.get(INFO_PREFIX + provider.raw, AskContact.decode)
        if found is None:
            raise CallFailed(f"no contact record for {provider}")
        return found

    def mediator(self, address: Address) -> Mediator | None:
        """A mediator's record."""
        return self.get(mediator_key(address), Mediator.decode)

    def set_mediator(self, address: Address, record: Mediator) -> None:
        """Replace a mediator's record."""
        self.put_record(mediator_key(address), record)

    def replica(self, deal_id: int, index: int) -> Replica:
        """Replica ``index`` of an open deal (:class:`CallFailed` if missing)."""
        found = self.get(replica_key(deal_id, index), Replica.decode)
        if found is None:
            raise CallFailed(f"deal {deal_id} has no replica {index} record")
        return found

    def replicas(self, deal_id: int, found: Deal) -> list[Replica]:
        """Every replica of an open deal, in order."""
        return [self.replica(deal_id, index) for index in range(found.replicas)]

    def set_replica(self, deal_id: int, index: int, record: Replica) -> None:
        """Replace a replica."""
        self.put_record(replica_key(deal_id, index), record)


def _addresses(value: Value, position: int, bound: int) -> tuple[Address, ...]:
    """A list argument of distinct addresses, at most ``bound`` of them."""
    items = cast(tuple[Value, ...], value)
    if not all(isinstance(item, Address) for item in items):
        raise CallFailed(f"argument {position} must be a list of addresses")
    addresses = cast(tuple[Address, ...], items)
    if len(addresses) > bound:
        raise Revert(f"at most {bound} mediators, got {len(addresses)}")
    if len(set(addresses)) != len(addresses):
        raise Revert("a mediator is named twice")
    return addresses


def _text_arg(value: Value, bound: int, what: str) -> str:
    text = cast(str, value)
    if len(text.encode()) > bound:
        raise Revert(f"{what} is at most {bound} bytes")
    return text


# -- asks ---------------------------------------------------------------------------------------


def ask(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``ask(cpus, memory, gpus, gpu_model, executors, price_cpu, price_gpu, collateral_ppm,
    mediators, endpoint, kem_key, public_key)`` (payable): create or update the caller's ask; the
    value joins its free collateral."""
    check_args(args, int, int, int, str, int, int, int, int, tuple, str, bytes, bytes)
    cpus, memory, gpus = uint(args[0]), uint(args[1]), uint(args[2])
    gpu_model = _text_arg(args[3], MAX_GPU_MODEL, "a GPU model")
    executors, price_cpu, price_gpu, collateral_ppm = (uint(a) for a in args[4:8])
    mediators = _addresses(args[8], 8, MAX_MEDIATORS)
    endpoint = checked_endpoint(args[9])
    kem_key = fixed_bytes(args[10], KEM_KEY_SIZE, 10)
    book = _Book(ctx)
    params = book.params
    if not 1 <= executors <= ALL_EXECUTORS:
        raise Revert(
            f"executors is a bit set from 1 to {ALL_EXECUTORS} (sandbox 1, wasm 2, docker 4)"
        )
    if gpus == 0 and gpu_model:
        raise Revert("a GPU model needs gpus > 0")
    if not params.min_collateral_ppm <= collateral_ppm <= MAX_COLLATERAL_PPM:
        raise Revert(
            f"collateral_ppm is {params.min_collateral_ppm} to {MAX_COLLATERAL_PPM}, "
            f"got {collateral_ppm}"
        )
    public = checked_key(ctx, cast(bytes, args[11]))
    old = book.ask(ctx.caller)
    if old is not None:
        for name, offered, used in (
            ("cpus", cpus, old.used_cpus),
            ("memory", memory, old.used_memory),
            ("gpus", gpus, old.used_gpus),
        ):
            if offered < used:
                raise Revert(f"{name} {offered} is below the {used} the ask's deals reserve")
    if old is None:
        position = book.enlist(ORDER_PREFIX, "positions")
        old = Ask(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, False, position, 0, 0, 0)
    new = replace(
        old,
        cpus=cpus,
        memory=memory,
        gpus=gpus,
        executors=executors,
        price_cpu=price_cpu,
        price_gpu=price_gpu,
        collateral_ppm=collateral_ppm,
        free=old.free + ctx.value,
        active=True,
    )
    book.set_ask(ctx.caller, new)
    book.move(collateral=ctx.value)
    contact = AskContact(endpoint, kem_key, gpu_model, mediators)
    store_if_changed(ctx, INFO_PREFIX + ctx.caller.raw, contact.encode())
    store_if_changed(ctx, KEY_PREFIX + ctx.caller.raw, public.encode())
    book.flush()
    emit(
        ctx,
        ASK_POSTED,
        ctx.caller,
        None,
        (cpus, memory, gpus, executors, price_cpu, price_gpu, collateral_ppm, endpoint),
    )
    return b""


# -- mediators ----------------------------------------------------------------------------------


def register_mediator(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``register_mediator(fee, endpoint, kem_key)`` (payable): register or update the caller as
    a mediator; the value joins its stake, which must then reach ``min_mediator_stake``. A
    mediator that was leaving is active again."""
    check_args(args, int, str, bytes)
    fee = uint(args[0])
    endpoint = checked_endpoint(args[1])
    kem_key = fixed_bytes(args[2], KEM_KEY_SIZE, 2)
    book = _Book(ctx)
    old = book.mediator(ctx.caller)
    if old is None:
        position = book.enlist(MEDIATOR_ORDER_PREFIX, "mediator_positions")
        old = Mediator(0, 0, 0, False, 0, position, 0, 0)
    stake = old.stake + ctx.value
    minimum = book.params.min_mediator_stake
    if stake < minimum:
        raise Revert(f"a mediator stakes at least {minimum} Shor; it would hold {stake}")
    book.set_mediator(ctx.caller, replace(old, fee=fee, stake=stake, active=True, exit_height=0))
    book.move(stakes=ctx.value)
    contact = MediatorContact(endpoint, kem_key)
    store_if_changed(ctx, MEDIATOR_INFO_PREFIX + ctx.caller.raw, contact.encode())
    book.flush()
    emit(ctx, MEDIATOR_REGISTERED, ctx.caller, None, (fee, stake, endpoint))
    return b""


def unregister_mediator(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``unregister_mediator() -> exit_height``: no new deals may name the caller; its stake comes
    back from ``exit_height`` on, once no open deal names it."""
    check_args(args)
    no_value(ctx, "unregister_mediator")
    book = _Book(ctx)
    found = book.mediator(ctx.caller)
    if found is None or not found.active:
        raise Revert(f"{ctx.caller} is not an active mediator")
    exit_height = ctx.env.height + book.params.mediator_exit_blocks
    book.set_mediator(ctx.caller, replace(found, active=False, exit_height=exit_height))
    book.flush()
    ctx.schedule(
        max(exit_height, ctx.env.height + 1),
        "cron_release_mediator",
        encode_args([ctx.caller, exit_height]),
    )
    emit(ctx, MEDIATOR_UNREGISTERED, ctx.caller, None, (exit_height,))
    return encode_value(exit_height)


def _release_mediator_if_done(book: _Book, address: Address, found: Mediator) -> Mediator:
    """Send a leaving mediator its stake if its exit height has come and no deal names it."""
    if (
        found.active
        or found.exit_height == 0
        or found.exit_height > book.ctx.env.height
        or found.deals
        or not found.stake
    ):
        return found
    released = replace(found, stake=0)
    book.set_mediator(address, released)
    book.move(stakes=-found.stake)
    book.pay(address, found.stake)
    emit(book.ctx, MEDIATOR_RELEASED, address, None, (found.stake,))
    return released


def cron_release_mediator(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cron_release_mediator(mediator, exit_height) -> bool``, cron only: send back the stake of
    a mediator that left, unless a deal still names it (then its last deal's settlement does)."""
    check_args(args, Address, int)
    cron_only(ctx, "cron_release_mediator")
    address, exit_height = cast(Address, args[0]), uint(args[1])
    book = _Book(ctx)
    found = book.mediator(address)
    if found is None or found.active or found.exit_height != exit_height:
        return encode_value(False)
    released = _release_mediator_if_done(book, address, found)
    book.flush()
    return encode_value(released is not found)


# -- bids ---------------------------------------------------------------------------------------


_BID_TYPES = (bytes, int, int, int, str, int, int, int, int, int, int, tuple, int, int)
CONTRACT_BID_ARGS = len(_BID_TYPES) + 2
"""A contract's bid has two more arguments: ``agent`` and ``max_answer``."""


def _contract_terms(ctx: Context, args: tuple[Value, ...]) -> tuple[Address | None, int]:
    """A contract's bid's ``agent`` and ``max_answer`` (None, 0 for an ordinary bid), its
    callback's :data:`CALLBACK_GAS` charged; :class:`Revert` unless the caller is a contract, the
    agent an account other than it and the answer bound at most :data:`MAX_ANSWER`."""
    if len(args) != CONTRACT_BID_ARGS:
        return None, 0
    agent, max_answer = cast(Address, args[14]), uint(args[15])
    ctx.charge(costs.BALANCE_GAS)  # reading the caller's account leaf, as ``balance`` does
    if ctx.machine.leaf(ctx.caller).code_hash is None:
        raise Revert("only a contract bids with an agent (an account forms its own deals)")
    if agent in (ZERO_ADDRESS, ctx.caller):
        raise Revert("a contract's bid names an agent: an account other than the contract")
    if max_answer > MAX_ANSWER:
        raise Revert(f"max_answer is 0 to {MAX_ANSWER} bytes, got {max_answer}")
    ctx.charge(CALLBACK_GAS)  # the callback's gas, paid by the bid (the cron call runs it free)
    return agent, max_answer


def bid(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``bid(job, cpus, memory, gpus, gpu_model, executor, timeout, max_price_cpu, max_price_gpu,
    verification, collateral_ppm, mediators, max_fee, deadline) -> bid_id`` (payable); a
    contract may add ``agent, max_answer`` (docs/spec/compute.md §3.12)."""
    check_args(args, *_BID_TYPES, *((Address, int) if len(args) == CONTRACT_BID_ARGS else ()))
    job = fixed_bytes(args[0], HASH_SIZE, 0)
    cpus, memory, gpus = uint(args[1]), uint(args[2]), uint(args[3])
    gpu_model = _text_arg(args[4], MAX_GPU_MODEL, "a GPU model")
    raw_executor, timeout, max_price_cpu, max_price_gpu, raw_verification, collateral_ppm = (
        uint(a) for a in args[5:11]
    )
    mediators = _addresses(args[11], 11, MAX_MEDIATORS)
    max_fee, deadline = uint(args[12]), uint(args[13])
    book = _Book(ctx)
    params = book.params
    if raw_executor >= len(Executor):
        raise Revert(f"executor is 0 (sandbox), 1 (wasm) or 2 (docker), got {raw_executor}")
    if raw_verification >= len(Verification):
        raise Revert(
            f"verification is 0 (none), 1 (spot) or 2 (replicated), got {raw_verification}"
        )
    verification = Verification(raw_verification)
    if cpus < 1 or memory < 1:
        raise Revert("a job reserves at least 1 CPU and 1 byte of memory")
    if gpus == 0 and gpu_model:
        raise Revert("a GPU model needs gpus > 0")
    if not 1 <= timeout <= params.max_timeout:
        raise Revert(f"timeout is 1 to {params.max_timeout} seconds, got {timeout}")
    if collateral_ppm > MAX_COLLATERAL_PPM:
        raise Revert(f"collateral_ppm is at most {MAX_COLLATERAL_PPM}")
    if verification is Verification.NONE:
        if mediators or max_fee:
            raise Revert("verification none has no mediator: no mediators, max_fee 0")
    elif not mediators:
        raise Revert(f"verification {verification.name.lower()} needs at least one mediator")
    records.check_deadline(ctx, deadline, params.max_bid_blocks)
    agent, max_answer = _contract_terms(ctx, args)
    need = bid_deposit(
        verification.replicas, cpus, gpus, timeout, max_price_cpu, max_price_gpu, max_fee
    )
    if ctx.value < need:
        raise Revert(
            f"the deposit must be at least {need} Shor ({verification.replicas} x the largest "
            f"payment + max_fee), {ctx.value} sent"
        )
    placed = Bid(
        ctx.caller,
        job,
        cpus,
        memory,
        gpus,
        gpu_model,
        Executor(raw_executor),
        timeout,
        max_price_cpu,
        max_price_gpu,
        verification,
        collateral_ppm,
        mediators,
        max_fee,
        deadline,
        ctx.value,
        agent,
        max_answer,
    )
    bid_id = book.place_bid(placed, deadline)
    emit(
        ctx,
        BID_PLACED,
        ctx.caller,
        job,
        (bid_id, cpus, memory, gpus, raw_executor, timeout, raw_verification, deadline, ctx.value),
    )
    if agent is not None:
        emit(ctx, CONTRACT_BID_PLACED, ctx.caller, job, (bid_id, agent, max_answer))
    return encode_value(bid_id)


# -- deals --------------------------------------------------------------------------------------


def _checked_mediator(book: _Book, found: Bid, mediator: Address | None) -> Mediator | None:
    """The deal's mediator record; :class:`Revert` unless the bid accepts it and it may serve."""
    if found.verification is Verification.NONE:
        if mediator is not None:
            raise Revert("verification none has no mediator: name the zero address")
        return None
    if mediator is None:
        raise Revert(f"verification {found.verification.name.lower()} needs a mediator")
    if mediator not in found.mediators:
        raise Revert(f"the bid does not accept mediator {mediator}")
    record = book.mediator(mediator)
    if record is None or not record.active:
        raise Revert(f"{mediator} is not an active mediator")
    minimum = book.params.min_mediator_stake
    if record.stake < minimum:
        raise Revert(f"mediator {mediator} holds {record.stake} Shor of stake, below {minimum}")
    if record.fee > found.max_fee:
        raise Revert(
            f"mediator {mediator} charges {record.fee} Shor, the bid pays at most {found.max_fee}"
        )
    if mediator == found.client:
        raise Revert("the client cannot mediate its own deal")
    if mediator == found.agent:
        raise Revert("a contract's agent cannot mediate its deal")
    return record


def _accepted(
    book: _Book,
    bid_id: int,
    found: Bid,
    index: int,
    provider: Address,
    signature: bytes,
    mediator: Address | None,
) -> Replica:
    """Check provider ``index``'s ask and acceptance, reserve its resources and lock its
    collateral; the new replica."""
    ctx = book.ctx
    where = f"replica {index}: provider {provider}"
    own = book.ask(provider)
    if own is None or not own.active:
        raise Revert(f"{where} has no active ask")
    if not own.executors & found.executor.bit:
        raise Revert(f"{where} does not offer the {found.executor.name.lower()} executor")
    for name, need, offered, used in (
        ("CPUs", found.cpus, own.cpus, own.used_cpus),
        ("bytes of memory", found.memory, own.memory, own.used_memory),
        ("GPUs", found.gpus, own.gpus, own.used_gpus),
    ):
        if used + need > offered:
            raise Revert(f"{where} has {offered - used} {name} free, the job needs {need}")
    contact = book.contact(provider)
    if found.gpus and found.gpu_model and contact.gpu_model != found.gpu_model:
        raise Revert(f"{where} offers GPU model {contact.gpu_model!r}, not {found.gpu_model!r}")
    if own.price_cpu > found.max_price_cpu or own.price_gpu > found.max_price_gpu:
        raise Revert(
            f"{where} asks {own.price_cpu}/{own.price_gpu} Shor per CPU/GPU-second, the bid "
            f"pays at most {found.max_price_cpu}/{found.max_price_gpu}"
        )
    if own.collateral_ppm < found.collateral_ppm:
        raise Revert(
            f"{where} offers collateral multiple {own.collateral_ppm} ppm, the bid wants "
            f"{found.collateral_ppm}"
        )
    if mediator is not None and mediator not in contact.mediators:
        raise Revert(f"{where} does not accept mediator {mediator}")
    if mediator == provider:
        raise Revert(f"{where} cannot mediate its own deal")
    largest = max_payment(found.cpus, found.gpus, found.timeout, own.price_cpu, own.price_gpu)
    collateral = collateral_for(largest, own.collateral_ppm)
    if collateral > own.free:
        raise Revert(f"{where} has {own.free} Shor free collateral, needs {collateral}")
    body = acceptance_body(
        ctx.env.chain_id,
        bid_id,
        index,
        found.job,
        own.price_cpu,
        own.price_gpu,
        collateral,
        mediator,
        provider,
    )
    check_acceptance(ctx, provider, TAG_ACCEPT, body, signature, where)
    book.set_ask(
        provider,
        replace(
            own,
            used_cpus=own.used_cpus + found.cpus,
            used_memory=own.used_memory + found.memory,
            used_gpus=own.used_gpus + found.gpus,
            free=own.free - collateral,
            locked=own.locked + collateral,
        ),
    )
    return Replica(
        provider,
        own.price_cpu,
        own.price_gpu,
        collateral,
        ReplicaState.ASSIGNED,
        ZERO_HASH,
        ZERO_HASH,
        0,
        0,
    )


def _start_phase(book: _Book, deal_id: int, found: Deal, phase: Phase, deadline: int) -> Deal:
    """Enter ``phase`` until ``deadline`` (its cron entry scheduled); the changed deal."""
    moved = replace(found, phase=phase, deadline=deadline)
    book.set_deal(deal_id, moved)
    book.ctx.schedule(deadline, "cron_phase", encode_args([deal_id, int(phase), deadline]))
    emit(
        book.ctx, PHASE_STARTED, found.client, deal_topic(deal_id), (deal_id, int(phase), deadline)
    )
    return moved


def deal(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``deal(bid_id, providers, acceptances, mediator) -> deal_id``: the bid's client forms the
    deal (the zero address names no mediator)."""
    check_args(args, int, tuple, tuple, Address)
    no_value(ctx, "deal")
    bid_id = uint(args[0])
    addresses, signatures = signed_providers(args)
    named = cast(Address, args[3])
    mediator = None if named == ZERO_ADDRESS else named
    book = _Book(ctx)
    found = _formable_bid(book, bid_id)
    height = ctx.env.height
    if height >= found.deadline:
        raise Revert(f"bid {bid_id}: its deadline {found.deadline} has passed")
    r = found.replicas
    if len(addresses) != r or len(signatures) != r:
        raise Revert(f"bid {bid_id} needs {r} providers: name {r} providers and {r} acceptances")
    if len(set(addresses)) != r:
        raise Revert("the providers must be distinct")
    record = _checked_mediator(book, found, mediator)
    replicas = [
        _accepted(book, bid_id, found, i, addresses[i], signatures[i], mediator) for i in range(r)
    ]
    fee = 0 if record is None else record.fee
    escrow = (
        sum(
            max_payment(found.cpus, found.gpus, found.timeout, rep.price_cpu, rep.price_gpu)
            for rep in replicas
        )
        + fee
    )
    if mediator is not None and record is not None:
        book.set_mediator(mediator, replace(record, deals=record.deals + 1))
    for index, replica in enumerate(replicas):
        book.set_replica(bid_id, index, replica)
    book.drop(bid_key(bid_id))
    refund = found.deposit - escrow
    book.move(escrow=-refund)
    book.pay(found.client, refund)
    counters = book.counters
    book.set_counters(replace(counters, open_deals=counters.open_deals + 1))
    params = book.params
    commit_deadline = height + params.run_blocks(found.timeout)
    made = Deal(
        found.client,
        found.job,
        mediator,
        found.verification,
        found.cpus,
        found.memory,
        found.gpus,
        found.timeout,
        height,
        Phase.RUN,
        commit_deadline,
        escrow,
        fee,
        False,
        found.agent,
        found.max_answer,
    )
    book.set_deal(bid_id, made)
    book.flush()
    ctx.schedule(
        commit_deadline, "cron_phase", encode_args([bid_id, int(Phase.RUN), commit_deadline])
    )
    formed: tuple[Value, ...] = (bid_id, found.job, addresses, named, commit_deadline, escrow)
    if found.agent is not None:
        formed = (*formed, found.agent)
    emit(ctx, DEAL_FORMED, found.client, deal_topic(bid_id), formed)
    return encode_value(bid_id)


def _formable_bid(book: _Book, bid_id: int) -> Bid:
    """The open bid the caller may turn into a deal: its client's, or a contract's bid naming
    the caller as its agent; :class:`Revert` otherwise."""
    found = book.bid(bid_id)
    if found is not None and found.agent is not None and found.agent == book.ctx.caller:
        return found
    return book.open_bid(bid_id)


def _replica_of(book: _Book, deal_id: int, found: Deal) -> tuple[int, Replica]:
    """The caller's replica of the deal; :class:`Revert` if it has none."""
    for index in range(found.replicas):
        replica = book.replica(deal_id, index)
        if replica.provider == book.ctx.caller:
            return index, replica
    raise Revert(f"deal {deal_id}: {book.ctx.caller} is not one of its providers")


def _in_phase(book: _Book, deal_id: int, found: Deal, phase: Phase, action: str) -> None:
    if found.phase is not phase:
        raise Revert(
            f"deal {deal_id} is in its {found.phase.name.lower()} phase: {action} only in the "
            f"{phase.name.lower()} phase"
        )
    if book.ctx.env.height >= found.deadline:
        raise Revert(f"deal {deal_id}: its {phase.name.lower()} phase ended at {found.deadline}")


def commit(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``commit(deal_id, commitment)``: a provider commits to its result root, in the run phase.
    The reveal phase starts once every replica has committed."""
    check_args(args, int, bytes)
    no_value(ctx, "commit")
    deal_id = uint(args[0])
    sealed = fixed_bytes(args[1], HASH_SIZE, 1)
    book = _Book(ctx)
    found = book.deal(deal_id)
    _in_phase(book, deal_id, found, Phase.RUN, "commits")
    index, replica = _replica_of(book, deal_id, found)
    if replica.state is not ReplicaState.ASSIGNED:
        raise Revert(f"deal {deal_id} replica {index}: already committed")
    book.set_replica(
        deal_id, index, replace(replica, state=ReplicaState.COMMITTED, commitment=sealed)
    )
    emit(ctx, RESULT_COMMITTED, ctx.caller, deal_topic(deal_id), (deal_id, index))
    replicas = book.replicas(deal_id, found)
    if all(r.state is ReplicaState.COMMITTED for r in replicas):
        _start_phase(book, deal_id, found, Phase.REVEAL, ctx.env.height + book.params.reveal_blocks)
    book.flush()
    return b""


def _stdout_entry(manifest: bytes) -> tuple[int, bytes]:
    """The stdout entry (size, digest) of a result manifest's encoding (its first fields:
    version, stop reason, exit code, stdout; :mod:`qoin.compute.outputs`); :class:`Revert` if
    they do not decode. The files after it are not read: the root covers them."""
    try:
        reader = Reader(manifest)
        version = reader.u8()
        if version != MANIFEST_VERSION:
            raise Revert(f"result manifest version {version}, expected {MANIFEST_VERSION}")
        reader.var_bytes(MAX_STOP_REASON)
        if read_bool(reader):
            reader.varint()
        return reader.varint(), reader.fixed(HASH_SIZE)
    except DecodeError as exc:
        raise Revert(f"the result manifest does not decode: {exc}") from None


def _checked_answer(
    ctx: Context, deal_id: int, index: int, found: Deal, root: bytes, manifest: bytes, data: bytes
) -> Answer:
    """A reveal's answer: ``manifest`` must hash to ``root`` and its stdout entry be ``data``'s
    size and digest (stdout over the deal's ``max_answer``: ``data`` empty, the answer marked too
    long); :class:`Revert` otherwise."""
    where = f"deal {deal_id} replica {index}"
    if len(manifest) > MAX_ANSWER_MANIFEST:
        raise Revert(
            f"{where}: the result manifest is {len(manifest)} bytes, a reveal carries at most "
            f"{MAX_ANSWER_MANIFEST}"
        )
    if tagged_sha3(ctx, TAG_RESULT, manifest) != root:
        raise Revert(f"{where}: the manifest is not the revealed root's")
    size, digest = _stdout_entry(manifest)
    if size > found.max_answer:
        if data:
            raise Revert(f"{where}: the stdout ({size} bytes) is over max_answer: send no answer")
        return Answer(False, b"")
    if len(data) != size or tagged_sha3(ctx, TAG_FILE, data) != digest:
        raise Revert(f"{where}: the answer is not the stdout the manifest commits to")
    return Answer(True, data)


def reveal(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``reveal(deal_id, root, salt, usage_cpu, usage_gpu)``: a provider that committed opens its
    commitment, in the reveal phase; usage is capped at what the deal reserves. A deal that asks
    for an answer (``max_answer`` > 0) takes ``reveal(deal_id, root, salt, usage_cpu, usage_gpu,
    manifest, answer)``: the result manifest's encoding and the job's stdout, checked against the
    root (§3.12). Once every committed replica has revealed, the deal moves on (§3.4)."""
    if len(args) == 7:
        check_args(args, int, bytes, bytes, int, int, bytes, bytes)
    else:
        check_args(args, int, bytes, bytes, int, int)
    no_value(ctx, "reveal")
    deal_id = uint(args[0])
    root = fixed_bytes(args[1], HASH_SIZE, 1)
    salt = fixed_bytes(args[2], HASH_SIZE, 2)
    book = _Book(ctx)
    found = book.deal(deal_id)
    _in_phase(book, deal_id, found, Phase.REVEAL, "reveals")
    index, replica = _replica_of(book, deal_id, found)
    if replica.state is not ReplicaState.COMMITTED:
        state = "never committed" if replica.state is ReplicaState.ASSIGNED else "already revealed"
        raise Revert(f"deal {deal_id} replica {index}: {state}")
    body = commitment_body(deal_id, ctx.caller, root, salt)
    if tagged_sha3(ctx, TAG_COMMIT, body) != replica.commitment:
        raise Revert(f"deal {deal_id} replica {index}: root and salt do not open the commitment")
    if found.max_answer and len(args) != 7:
        raise Revert(
            f"deal {deal_id} asks for an answer: reveal with the result manifest and the stdout"
        )
    if not found.max_answer and len(args) == 7:
        raise Revert(f"deal {deal_id} asks for no answer: reveal without manifest and stdout")
    if found.max_answer:
        answer = _checked_answer(
            ctx, deal_id, index, found, root, cast(bytes, args[5]), cast(bytes, args[6])
        )
        book.put_record(answer_key(deal_id, index), answer)
        emit(
            ctx,
            ANSWER_REVEALED,
            ctx.caller,
            deal_topic(deal_id),
            (deal_id, index, answer.fits, answer.data),
        )
    usage_cpu = min(uint(args[3]), found.cpus * found.timeout)
    usage_gpu = min(uint(args[4]), found.gpus * found.timeout)
    book.set_replica(
        deal_id,
        index,
        replace(
            replica,
            state=ReplicaState.REVEALED,
            root=root,
            usage_cpu=usage_cpu,
            usage_gpu=usage_gpu,
        ),
    )
    emit(
        ctx,
        RESULT_REVEALED,
        ctx.caller,
        deal_topic(deal_id),
        (deal_id, index, root, usage_cpu, usage_gpu),
    )
    replicas = book.replicas(deal_id, found)
    if not any(r.state is ReplicaState.COMMITTED for r in replicas):
        _after_reveals(book, deal_id, found, replicas)
    book.flush()
    return b""


def _after_reveals(book: _Book, deal_id: int, found: Deal, replicas: list[Replica]) -> None:
    """The reveals are all in (or the reveal phase ended): settle, mediate or open the dispute
    window."""
    revealed = [r for r in replicas if r.revealed]
    if not revealed:
        _settle(book, deal_id, found, Outcome.UNDELIVERED, paid=set(), fines={})
    elif len({r.root for r in revealed}) > 1:
        _start_mediation(book, deal_id, found)
    elif found.verification is Verification.NONE:
        paid = {i for i, r in enumerate(replicas) if r.revealed}
        _settle(book, deal_id, found, Outcome.COMPLETED, paid=paid, fines={})
    else:
        _start_phase(
            book, deal_id, found, Phase.CHECK, book.ctx.env.height + book.params.dispute_blocks
        )


def _start_mediation(book: _Book, deal_id: int, found: Deal) -> Deal:
    deadline = book.ctx.env.height + book.params.mediation_budget(found.timeout)
    moved = _start_phase(book, deal_id, found, Phase.MEDIATION, deadline)
    mediator = cast(Address, found.mediator)
    emit(
        book.ctx,
        MEDIATION_STARTED,
        mediator,
        deal_topic(deal_id),
        (deal_id, deadline, found.disputed),
    )
    return moved


def dispute(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``dispute(deal_id)``: the client sends the revealed result to the mediator, in the
    dispute window (nothing to pay now: the mediation reserve covers the fee)."""
    check_args(args, int)
    no_value(ctx, "dispute")
    deal_id = uint(args[0])
    book = _Book(ctx)
    found = book.deal(deal_id)
    if not found.may_act(ctx.caller):
        raise Revert(
            f"deal {deal_id}: only its client {found.client} (or its agent) may dispute it"
        )
    _in_phase(book, deal_id, found, Phase.CHECK, "disputes")
    disputed = replace(found, disputed=True)
    emit(ctx, DISPUTE_OPENED, ctx.caller, deal_topic(deal_id), (deal_id,))
    _start_mediation(book, deal_id, disputed)
    book.flush()
    return b""


def verdict(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``verdict(deal_id, kind, root)``: the deal's mediator settles it, in the mediation phase
    (kinds and their money: docs/spec/compute.md §3.6)."""
    check_args(args, int, int, bytes)
    no_value(ctx, "verdict")
    deal_id, raw_kind = uint(args[0]), uint(args[1])
    root = fixed_bytes(args[2], HASH_SIZE, 2)
    book = _Book(ctx)
    found = book.deal(deal_id)
    if found.mediator != ctx.caller:
        raise Revert(f"deal {deal_id}: only its mediator {found.mediator} gives a verdict")
    _in_phase(book, deal_id, found, Phase.MEDIATION, "verdicts")
    if not 1 <= raw_kind <= len(VerdictKind):
        raise Revert(
            f"verdict kind is 1 (wrong result), 2 (correct result), 3 (non-deterministic) or "
            f"4 (not delivered), got {raw_kind}"
        )
    kind = VerdictKind(raw_kind)
    replicas = book.replicas(deal_id, found)
    revealed = {i for i, r in enumerate(replicas) if r.revealed}
    differ = {i for i in revealed if replicas[i].root != root}
    fines: dict[int, FineReason] = {}
    if kind in (VerdictKind.WRONG_RESULT, VerdictKind.NOT_DELIVERED):
        if not differ:
            raise Revert(
                f"deal {deal_id}: every revealed root is {root.hex()}: that is a correct result"
            )
        reason = (
            FineReason.WRONG_RESULT
            if kind is VerdictKind.WRONG_RESULT
            else FineReason.NOT_DELIVERED
        )
        fines = dict.fromkeys(differ, reason)
        paid = revealed - differ
    elif kind is VerdictKind.CORRECT_RESULT:
        if differ:
            raise Revert(
                f"deal {deal_id}: a revealed root differs from {root.hex()}: that is a wrong result"
            )
        paid = revealed
    else:
        paid = revealed
    mediator = ctx.caller
    record = book.mediator(mediator)
    if record is None:
        raise CallFailed(f"no record for mediator {mediator}")
    book.set_mediator(mediator, replace(record, verdicts=record.verdicts + 1))
    emit(ctx, VERDICT, ctx.caller, deal_topic(deal_id), (deal_id, raw_kind, root, found.fee))
    _settle(
        book,
        deal_id,
        found,
        Outcome.MEDIATED,
        paid=paid,
        fines=fines,
        fee_due=True,
        fee_from_fines=kind in (VerdictKind.WRONG_RESULT, VerdictKind.NOT_DELIVERED),
        delivered=kind is not VerdictKind.NON_DETERMINISTIC,
    )
    book.flush()
    return b""


def cron_phase(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cron_phase(deal_id, phase, deadline) -> bool``, cron only: end a phase at its deadline.
    False for a stale entry (the deal moved on, or settled)."""
    check_args(args, int, int, int)
    cron_only(ctx, "cron_phase")
    deal_id, raw_phase, deadline = uint(args[0]), uint(args[1]), uint(args[2])
    book = _Book(ctx)
    found = book.get(deal_key(deal_id), Deal.decode)
    if found is None or int(found.phase) != raw_phase or found.deadline != deadline:
        return encode_value(False)
    replicas = book.replicas(deal_id, found)
    if found.phase is Phase.RUN:
        committed = sum(r.state is ReplicaState.COMMITTED for r in replicas)
        emit(
            ctx,
            DEAL_TIMED_OUT,
            found.client,
            deal_topic(deal_id),
            (deal_id, raw_phase, len(replicas) - committed),
        )
        if committed:
            _start_phase(
                book, deal_id, found, Phase.REVEAL, ctx.env.height + book.params.reveal_blocks
            )
        else:
            _settle(book, deal_id, found, Outcome.UNDELIVERED, paid=set(), fines={})
    elif found.phase is Phase.REVEAL:
        missing = sum(not r.revealed for r in replicas)
        emit(ctx, DEAL_TIMED_OUT, found.client, deal_topic(deal_id), (deal_id, raw_phase, missing))
        _after_reveals(book, deal_id, found, replicas)
    elif found.phase is Phase.CHECK:
        paid = {i for i, r in enumerate(replicas) if r.revealed}
        _settle(book, deal_id, found, Outcome.COMPLETED, paid=paid, fines={})
    else:
        _mediation_timed_out(book, deal_id, found)
    book.flush()
    return encode_value(True)


def _mediation_timed_out(book: _Book, deal_id: int, found: Deal) -> None:
    """No verdict in time: the mediator's stake is slashed, the client gets its deposit back, the
    providers that revealed get their collateral back."""
    mediator = cast(Address, found.mediator)
    record = book.mediator(mediator)
    if record is None:
        raise CallFailed(f"no record for mediator {mediator}")
    slashed = record.stake * book.params.mediator_slash_ppm // PPM
    book.set_mediator(
        mediator, replace(record, stake=record.stake - slashed, missed=record.missed + 1)
    )
    book.move(stakes=-slashed, burned=slashed)
    emit(book.ctx, MEDIATION_TIMED_OUT, mediator, deal_topic(deal_id), (deal_id, slashed))
    _settle(book, deal_id, found, Outcome.MEDIATION_TIMED_OUT, paid=set(), fines={})


# -- settlement ---------------------------------------------------------------------------------


def _release(book: _Book, provider: Address, found: Deal, collateral: int, slashed: bool) -> Ask:
    """Release a replica's resources and collateral from its provider's ask: slashed (the caller
    moves the totals), or back to its free collateral while the ask is active, else sent to it."""
    own = book.held_ask(provider)
    if (
        own.locked < collateral
        or own.used_cpus < found.cpus
        or own.used_memory < found.memory
        or own.used_gpus < found.gpus
    ):
        raise CallFailed(f"the ask of {provider} holds less than a replica releases")
    after = replace(
        own,
        used_cpus=own.used_cpus - found.cpus,
        used_memory=own.used_memory - found.memory,
        used_gpus=own.used_gpus - found.gpus,
        locked=own.locked - collateral,
    )
    if not slashed:
        if own.active:
            after = replace(after, free=after.free + collateral)
        else:
            book.move(collateral=-collateral)
            book.pay(provider, collateral)
    book.set_ask(provider, after)
    return after


def _settle(
    book: _Book,
    deal_id: int,
    found: Deal,
    outcome: Outcome,
    *,
    paid: set[int],
    fines: dict[int, FineReason],
    fee_due: bool = False,
    fee_from_fines: bool = False,
    delivered: bool = True,
) -> None:
    """Pay the ``paid`` replicas for their usage, fine the ``fines`` ones and every replica that
    did not reveal (not delivered), pay the mediator's fee if due (from the fines first if
    ``fee_from_fines``), refund the rest to the client, release resources and collateral, delete
    the deal; a contract's deal then has its callback scheduled (a result if ``delivered`` and
    the paid replicas agree on a root)."""
    ctx = book.ctx
    params = book.params
    replicas = book.replicas(deal_id, found)
    _deal_callback(book, deal_id, found, replicas, outcome, paid, delivered)
    fines = dict(fines)
    for index, replica in enumerate(replicas):
        if not replica.revealed:
            fines[index] = FineReason.NOT_DELIVERED
    if paid & set(fines):
        raise CallFailed(f"deal {deal_id}: a replica both paid and fined")
    payments = 0
    slashed = 0
    for index, replica in enumerate(replicas):
        own = book.held_ask(replica.provider)
        reason = fines.get(index)
        if reason is FineReason.WRONG_RESULT:
            book.set_ask(replica.provider, replace(own, fined=own.fined + 1))
        elif reason is FineReason.NOT_DELIVERED:
            book.set_ask(replica.provider, replace(own, not_delivered=own.not_delivered + 1))
        elif index in paid:
            amount = replica.payment
            payments += amount
            book.pay(replica.provider, amount)
            book.set_ask(replica.provider, replace(own, settled=own.settled + 1))
            emit(
                ctx, PROVIDER_PAID, replica.provider, deal_topic(deal_id), (deal_id, index, amount)
            )
        _release(book, replica.provider, found, replica.collateral, slashed=reason is not None)
        if reason is not None:
            slashed += replica.collateral
            emit(
                ctx,
                PROVIDER_FINED,
                replica.provider,
                deal_topic(deal_id),
                (deal_id, index, replica.collateral, int(reason)),
            )
        book.drop(replica_key(deal_id, index))
    fee = found.fee if fee_due else 0
    fee_from_slash = min(fee, slashed) if fee_from_fines else 0
    client_share = (slashed - fee_from_slash) * params.fine_client_ppm // PPM
    burned = slashed - fee_from_slash - client_share
    refund = found.escrow - payments - (fee - fee_from_slash)
    if refund < 0:
        raise CallFailed(f"deal {deal_id} holds less escrow than it pays out")
    book.move(escrow=-found.escrow, collateral=-slashed, burned=burned)
    book.pay(found.client, refund + client_share)
    if found.mediator is not None:
        record = book.mediator(found.mediator)
        if record is None:
            raise CallFailed(f"no record for mediator {found.mediator}")
        book.pay(found.mediator, fee)
        record = replace(record, deals=record.deals - 1)
        book.set_mediator(found.mediator, record)
        _release_mediator_if_done(book, found.mediator, record)
    book.drop(deal_key(deal_id))
    counters = book.counters
    book.set_counters(replace(counters, open_deals=counters.open_deals - 1))
    emit(
        ctx,
        DEAL_SETTLED,
        found.client,
        deal_topic(deal_id),
        (deal_id, int(outcome), payments, refund + client_share, slashed, burned),
    )


# -- contracts' callbacks ------------------------------------------------------------------------


def _deal_callback(
    book: _Book,
    deal_id: int,
    found: Deal,
    replicas: list[Replica],
    outcome: Outcome,
    paid: set[int],
    delivered: bool,
) -> None:
    """Schedule a contract's settled deal's callback (nothing for an ordinary deal): the result
    (root and answer) the paid replicas agree on, else a failure with the outcome (§3.12); drops
    the answers."""
    if found.agent is None:
        return
    answers: dict[int, Answer | None] = {}
    if found.max_answer:
        for index in range(len(replicas)):
            answers[index] = book.get(answer_key(deal_id, index), Answer.decode)
            book.drop(answer_key(deal_id, index))
    roots = {replicas[i].root for i in paid}
    first = min(paid, default=0)
    answer = answers.get(first)
    if not paid or not delivered or len(roots) != 1:
        code = FailCode.UNDELIVERED if outcome is Outcome.COMPLETED else FailCode(int(outcome))
        callback = Callback(found.client, True, int(code), ZERO_HASH, b"")
    elif found.max_answer and (answer is None or not answer.fits):
        callback = Callback(found.client, True, int(FailCode.ANSWER_TOO_LONG), ZERO_HASH, b"")
    else:
        data = b"" if answer is None else answer.data
        callback = Callback(found.client, False, 0, replicas[first].root, data)
    _schedule_callback(book, deal_id, found, callback)


def _schedule_callback(book: _Book, number: int, found: Bid | Deal, callback: Callback) -> None:
    """Keep ``callback`` under ``number`` and have the next height's cron make it."""
    ctx = book.ctx
    book.put_record(callback_key(number), callback)
    height = ctx.env.height + 1
    ctx.schedule(height, "cron_callback", encode_args([number]))
    emit(
        ctx,
        CALLBACK_SCHEDULED,
        found.client,
        deal_topic(number),
        (number, callback.method, callback.code, height),
    )


def cron_callback(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cron_callback(id) -> bool``, cron only: call the contract of a settled deal (or an
    expired bid) back with :data:`CALLBACK_GAS`; whatever the call does (succeeds, reverts, runs
    out of gas), the settlement stands and ``CallbackDone`` records it. False if none is due."""
    check_args(args, int)
    cron_only(ctx, "cron_callback")
    number = uint(args[0])
    book = _Book(ctx)
    found = book.get(callback_key(number), Callback.decode)
    if found is None:
        return encode_value(False)
    book.drop(callback_key(number))
    book.flush()
    result = ctx.call(found.contract, found.method, found.args(number), gas=CALLBACK_GAS)
    emit(
        ctx,
        CALLBACK_DONE,
        found.contract,
        deal_topic(number),
        (number, found.method, int(result.status), result.gas_used, result.reason),
    )
    return encode_value(True)


def cancel_bid(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cancel_bid(bid_id)``: the client takes back an open bid; a contract's agent may too
    (the deposit still goes to the contract, which is called back with ``NO_DEAL``)."""
    check_args(args, int)
    book = _Book(ctx)
    found = book.bid(uint(args[0]))
    if found is None or found.agent is None or found.agent != ctx.caller:
        return records.cancel_bid(book, args)
    no_value(ctx, "cancel_bid")
    bid_id = uint(args[0])
    book.refund_bid(bid_id, found)
    _schedule_callback(
        book, bid_id, found, Callback(found.client, True, int(FailCode.NO_DEAL), ZERO_HASH, b"")
    )
    book.flush()
    emit(ctx, records.BID_CANCELLED, found.client, found.subject, (bid_id,))
    return b""


def cron_expire_bid(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``cron_expire_bid(bid_id) -> bool``, cron only: refund a bid still open at its deadline
    (a contract's is called back with ``NO_DEAL``)."""
    check_args(args, int)
    book = _Book(ctx)
    found = book.bid(uint(args[0]))
    if found is not None and found.agent is not None and ctx.caller == CRON_ADDRESS:
        callback = Callback(found.client, True, int(FailCode.NO_DEAL), ZERO_HASH, b"")
        _schedule_callback(book, uint(args[0]), found, callback)
    return records.cron_expire_bid(book, args)


# -- views --------------------------------------------------------------------------------------


def _ask_record(ctx: Context, provider: Address, found: Ask) -> tuple[Value, ...]:
    info = load(ctx, INFO_PREFIX + provider.raw, AskContact.decode)
    if info is None:
        raise CallFailed(f"no contact record for {provider}")
    return (
        provider,
        found.cpus,
        found.memory,
        found.gpus,
        info.gpu_model,
        found.executors,
        found.used_cpus,
        found.used_memory,
        found.used_gpus,
        found.price_cpu,
        found.price_gpu,
        found.collateral_ppm,
        info.mediators,
        info.endpoint,
        info.kem_key,
        found.free,
        found.locked,
        found.active,
        found.settled,
        found.fined,
        found.not_delivered,
    )


def get_ask(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_ask(provider) -> list(provider, cpus, memory, gpus, gpu_model, ...)``."""
    return records.get_ask(ctx, args, Ask.decode, _ask_record)


def _page(
    ctx: Context,
    args: tuple[Value, ...],
    total: int,
    order_prefix: bytes,
    record: Callable[[Address], tuple[Value, ...] | None],
) -> bytes:
    """One page of an ordered list: ``list(next_start, list(records))``."""
    start, count = uint(args[0]), records.page_count(args[1])
    return records.page(ctx, start, count, total, order_prefix, record)


def asks(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``asks(start, count) -> list(next_start, list(ask records))``: active asks in posting
    order."""
    check_args(args, int, int)
    no_value(ctx, "asks")

    def active(provider: Address) -> tuple[Value, ...] | None:
        found = load(ctx, ask_key(provider), Ask.decode)
        return None if found is None or not found.active else _ask_record(ctx, provider, found)

    return _page(ctx, args, _Book(ctx).counters.positions, ORDER_PREFIX, active)


def _mediator_record(ctx: Context, address: Address, found: Mediator) -> tuple[Value, ...]:
    info = load(ctx, MEDIATOR_INFO_PREFIX + address.raw, MediatorContact.decode)
    if info is None:
        raise CallFailed(f"no contact record for mediator {address}")
    return (
        address,
        found.fee,
        found.stake,
        found.deals,
        found.active,
        found.exit_height,
        info.endpoint,
        info.kem_key,
        found.verdicts,
        found.missed,
    )


def get_mediator(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_mediator(address) -> list(address, fee, stake, deals, active, exit_height, endpoint,
    kem_key, verdicts, missed)``."""
    check_args(args, Address)
    no_value(ctx, "get_mediator")
    address = cast(Address, args[0])
    found = load(ctx, mediator_key(address), Mediator.decode)
    if found is None:
        raise Revert(f"{address} is not a mediator")
    return encode_value(_mediator_record(ctx, address, found))


def mediators(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``mediators(start, count) -> list(next_start, list(mediator records))``: active mediators in
    registration order."""
    check_args(args, int, int)
    no_value(ctx, "mediators")

    def active(address: Address) -> tuple[Value, ...] | None:
        found = load(ctx, mediator_key(address), Mediator.decode)
        return None if found is None or not found.active else _mediator_record(ctx, address, found)

    return _page(ctx, args, _Book(ctx).counters.mediator_positions, MEDIATOR_ORDER_PREFIX, active)


def get_bid(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_bid(bid) -> list(client, job, cpus, memory, gpus, gpu_model, executor, ...,
    deposit, agent, max_answer)`` (agent zero for an ordinary bid)."""
    found = records.stored_bid(ctx, args, Bid.decode)
    return encode_value(
        (
            found.client,
            found.job,
            found.cpus,
            found.memory,
            found.gpus,
            found.gpu_model,
            int(found.executor),
            found.timeout,
            found.max_price_cpu,
            found.max_price_gpu,
            int(found.verification),
            found.collateral_ppm,
            found.mediators,
            found.max_fee,
            found.deadline,
            found.deposit,
            found.agent or ZERO_ADDRESS,
            found.max_answer,
        )
    )


def _replica_record(index: int, replica: Replica) -> tuple[Value, ...]:
    return (
        index,
        replica.provider,
        replica.price_cpu,
        replica.price_gpu,
        replica.collateral,
        int(replica.state),
        replica.commitment,
        replica.root,
        replica.usage_cpu,
        replica.usage_gpu,
    )


def get_deal(ctx: Context, args: tuple[Value, ...]) -> bytes:
    """``get_deal(deal) -> list(client, job, mediator, verification, cpus, memory, gpus, timeout,
    formed, phase, deadline, escrow, fee, disputed, replicas, agent, max_answer)`` (agent zero for
    an ordinary deal)."""
    check_args(args, int)
    no_value(ctx, "get_deal")
    book = _Book(ctx)
    deal_id = uint(args[0])
    found = book.deal(deal_id)
    replicas = tuple(
        _replica_record(i, replica) for i, replica in enumerate(book.replicas(deal_id, found))
    )
    return encode_value(
        (
            found.client,
            found.job,
            found.mediator or ZERO_ADDRESS,
            int(found.verification),
            found.cpus,
            found.memory,
            found.gpus,
            found.timeout,
            found.formed,
            int(found.phase),
            found.deadline,
            found.escrow,
            found.fee,
            found.disputed,
            replicas,
            found.agent or ZERO_ADDRESS,
            found.max_answer,
        )
    )


METHODS: dict[str, Callable[[Context, tuple[Value, ...]], bytes]] = {
    **records.common_methods(_Book),
    "ask": ask,
    "register_mediator": register_mediator,
    "unregister_mediator": unregister_mediator,
    "bid": bid,
    "deal": deal,
    "commit": commit,
    "reveal": reveal,
    "dispute": dispute,
    "verdict": verdict,
    "cron_phase": cron_phase,
    "cron_release_mediator": cron_release_mediator,
    "cron_callback": cron_callback,
    "cancel_bid": cancel_bid,
    "cron_expire_bid": cron_expire_bid,
    "get_ask": get_ask,
    "asks": asks,
    "get_mediator": get_mediator,
    "mediators": mediators,
    "get_bid": get_bid,
    "get_deal": get_deal,
}
"""The actor's methods by name."""


def compute_market_actor() -> BuiltinActor:
    """The ``compute-market`` actor."""
    return BuiltinActor(NAME, METHODS)
