"""The live part of ``qoin bench compute``: jobs through the whole compute market on a real network
of processes on 127.0.0.1, against the same commands run directly in the same run.

The network (:class:`ComputeNetwork`): the storage benchmark's node (``qoin execution`` and
``qoin consensus --mine --block-interval-ms 100``: a block about every 0.1 s) and
:data:`STORAGE_PROVIDERS` storage provider daemons (where compute providers store their outputs
archives), with the compute market's devnet parameters (:data:`qoin.compute.params.DEVNET`:
``block_ms`` 100, 20-block reveal phases and dispute windows); then compute daemons made, funded and started as ``qoin devnet
--compute-providers 2 --mediators 1`` does (:class:`qoin.node.devnet_compute.ComputeProviders`:
1 CPU, 1 GiB, 1,000 Shor per CPU-second each), plus one provider started with the test-only
``--misbehave random-output`` (it commits and reveals a random root). The client is this process,
with the key funded at genesis, running :func:`qoin.compute.client.prepare`, ``submit`` and
``follow`` as ``qoin compute run`` does, naming the providers of each deal (``--provider``).

Measured (every deal in turn, nothing else running on the network):

1. **Job overhead** (:func:`market_job`) of the trivial, cpu and output jobs with verification
   ``none`` on one honest provider: the client's wall time from reading the book to the outputs
   verified on its disk, against the direct run of :mod:`qoin.bench.compute` (median, same run),
   split into **match** (ranking the book; the bid transaction; the acceptances, from the first
   ``POST /offer`` to the last answer; the deal transaction), the provider's **staging**, **sandbox
   start**, **run** and **hashing** (``GET /jobs/{deal}``'s timings), **settlement** (what is left
   until the client sees the deal settle: the provider seeing the deal, the commit and reveal
   transactions and phases, the settlement) and **outputs** (from the settlement to the outputs
   archive fetched and verified against the revealed root, as the client does it: from the
   provider, which serves it once revealed, else from the storage market). The provider's upload
   of the archive to the storage market (its lasting copy) runs beside the settlement and the
   fetch; its time is reported apart. Heights of each step from the deal's events.
2. **CPU cost of replicated** (:func:`cpu_of`): the cpu job replicated on the two honest providers
   against the same job with ``none`` (from 1.): the CPU-seconds of the jobs as their providers
   reported them (the ``ran: ...`` line of each daemon's log, to the hundredth; the usage revealed
   on chain, in whole seconds, where there is none) plus every compute daemon's own (provider and
   mediator: ``/proc/PID/stat`` utime + stime from the bid until every replica's outputs are
   stored, less what it spends idle following the chain: its rate over :data:`IDLE_S` seconds
   before the first deal times that span). A sandboxed job's CPU does not reach its daemon's ``cutime`` (not every process
   of a sandbox is waited for by its parent), hence the reports. The storage daemons' CPU (storing the outputs archives) is
   reported apart. Goal: replicated / none <= :data:`REPLICATED_GOAL`.
3. **Cheater** (:func:`measure_cheater`): the trivial job replicated on an honest provider and the
   random-output one; the roots differ, the mediator re-runs the job, fetches the honest outputs and
   fines the cheater: the heights of the cheater's ``ResultRevealed`` and its ``ProviderFined``,
   the blocks between, and the seconds between the client seeing each.

Every process is stopped when the measurement ends, fails or is interrupted (SIGINT or SIGTERM
stop the current wait).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx

from qoin.bench.compute import JOB_MEMORY, MIB, Workload
from qoin.bench.storage_live import BLOCK_INTERVAL_MS, BenchmarkInterrupted, LiveNetwork
from qoin.bench.timing import BenchmarkCheckFailed
from qoin.compute import client
from qoin.compute.client import DealEvent, JobOptions, MarketOptions, ProviderApi, RunOutcome
from qoin.compute.jobspec import OutputLimits, Verification
from qoin.compute.market import ComputeMarketView, Phase, VerdictKind
from qoin.compute.params import DEVNET
from qoin.crypto.address import Address
from qoin.node.devnet_compute import ComputeNode, ComputeProviders
from qoin.node.devnet_storage import StorageProviders, fund
from qoin.process import stop_all, stop_on_signals
from qoin.rpc.client import RpcClient
from qoin.wallet import Wallet

T = TypeVar("T")

STORAGE_PROVIDERS: Final = 2
"""Storage daemons: the two holders of an outputs archive (2 shards, k = 1)."""
HONEST: Final = 2
"""Honest compute providers."""
MEDIATORS: Final = 1
CHEATERS: Final = 1
MISBEHAVE: Final = "random-output"
"""The cheater's (test-only) misbehaviour."""
REPLICATED_GOAL: Final = 2.2
"""Goal: CPU of a replicated deal over the same job's with verification none."""
IDLE_S: Final = 3.0
"""Seconds the daemons' idle CPU rate is measured over."""
HTTP_S: Final = 60.0
UPLOAD_WAIT_S: Final = 180.0
"""How long a provider may take to report its outputs stored after the deal settled."""
POLL_S: Final = 0.2
STOP_TIMEOUT_S: Final = 30.0
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


class ComputeNetwork(LiveNetwork):
    """The storage benchmark's network with the compute market's devnet parameters and the
    compute daemons (module docstring); a context manager like :class:`LiveNetwork`."""

    cheater_count: int = CHEATERS
    """Providers started with ``--misbehave`` (:data:`MISBEHAVE`); a subclass may want none."""

    def __init__(self, root: Path, say: Callable[[str], None], cancel: threading.Event) -> None:
        super().__init__(root, say, cancel)
        self.genesis = replace(self.genesis, network="bench-compute", compute=DEVNET)
        self.providers = StorageProviders(root, STORAGE_PROVIDERS)
        self.compute = ComputeProviders(root, HONEST, MEDIATORS)
        self.cheaters: list[ComputeNode] = []
        """The providers started with ``--misbehave`` (:data:`MISBEHAVE`), after the honest ones."""
        self.jobs = root / "client-jobs"
        """The client's job records."""
        self._outs = 0

    @property
    def honest(self) -> list[ComputeNode]:
        """The compute providers that do not cheat."""
        return [node for node in self.compute.providers if node not in self.cheaters]

    def start(self) -> None:
        """The node (:meth:`LiveNetwork.start` with no storage provider), then, funded in one
        go, the storage daemons and the compute daemons side by side."""
        storage = self.providers
        self.providers = StorageProviders(self.root, 0)
        say = self.say
        self.say = lambda message: None if "storage provider" in message else say(message)
        try:
            super().start()
        finally:
            self.providers, self.say = storage, say
        cheating = (
            f" and {self.cheater_count} cheating one ({MISBEHAVE}, test only)"
            if self.cheater_count
            else ""
        )
        say(
            f"starting {STORAGE_PROVIDERS} storage providers, "
            f"{MEDIATORS} mediator, {HONEST} compute providers{cheating}"
        )
        with ThreadPoolExecutor(2) as pool:  # making keys is mostly a KDF: both cores
            made = [pool.submit(part.prepare, [self.url]) for part in (storage, self.compute)]
            for future in made:
                future.result()
        self.cheaters = [
            self.compute.add_provider(f"cheater{i}", self.url, ("--misbehave", MISBEHAVE))
            for i in range(self.cheater_count)
        ]
        fund(self.url, self.keypair, {**storage.funding(), **self.compute.funding()}, self.cancel)
        self.check()
        storage.start()
        self.compute.start(self.cancel)
        self.check()
        storage.await_ready(self.cancel)
        self.check()

    def close(self) -> None:
        """Stop the compute daemons, then the rest."""
        stop_all(self.compute.children(), STOP_TIMEOUT_S)
        super().close()

    def out_dir(self) -> Path:
        """A fresh directory name for a job's outputs."""
        self._outs += 1
        return self.root / f"outputs-{self._outs}"

    def daemons(self) -> dict[str, int]:
        """Name -> pid of every compute daemon (providers, cheater, mediator) and storage one."""
        found = {
            node.name: node.child.proc.pid
            for node in self.compute.everyone
            if node.child is not None
        }
        for provider in self.providers.providers:
            if provider.child is not None:
                found[f"storage-{provider.name}"] = provider.child.proc.pid
        return found

    def node_of(self, provider: Address) -> ComputeNode:
        """The compute daemon of ``provider``."""
        for node in self.compute.everyone:
            if node.address == str(provider):
                return node
        raise BenchmarkCheckFailed(f"{provider} is none of the benchmark's compute daemons")

    def job_cpu(
        self, submitted: client.Submitted, states: Sequence[client.JobState | None]
    ) -> dict[str, float]:
        """Daemon -> the CPU-seconds its job of ``submitted`` took, as it reported them: the
        ``cpu_seconds`` of its job state (else the usage it revealed, whole seconds)."""
        found: dict[str, float] = {}
        for candidate, state in zip(submitted.providers, states, strict=True):
            node = self.node_of(candidate.provider)
            given = None if state is None else state.raw.get("cpu_seconds")
            cpu = float(given) if isinstance(given, int | float) else None
            if cpu is None and state is not None:
                cpu = float(state.usage_cpu)
            if cpu is not None:
                found[node.name] = cpu
        return found

    def in_thread(self, work: Callable[[], T]) -> T:
        """``work()`` on a thread of its own, this one waiting; :class:`BenchmarkInterrupted`
        as soon as a signal came (the thread is left to die with the process)."""
        box: list[T] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                box.append(work())
            except BaseException as exc:  # handed to the waiting thread
                failure.append(exc)

        thread = threading.Thread(target=target, name="bench deal", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            self.check()
        if failure:
            raise failure[0]
        return box[0]


@contextmanager
def compute_network(workdir: Path | None, say: Callable[[str], None]) -> Iterator[ComputeNetwork]:
    """A started :class:`ComputeNetwork` in a fresh directory under ``workdir``, stopped and
    removed at the end. Must run on the main thread (it handles SIGINT and SIGTERM)."""
    cancel = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="qoin-bench-compute-net-", dir=workdir) as scratch,
        stop_on_signals(cancel.set),
    ):
        network = ComputeNetwork(Path(scratch), say, cancel)
        with network:
            yield network
    if cancel.is_set():
        raise BenchmarkInterrupted("interrupted: every process started was stopped")


# -- CPU of processes -----------------------------------------------------------------------------


def cpu_now(pid: int) -> float:
    """``pid``'s own CPU-seconds (``/proc/PID/stat`` utime + stime)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read(4096).decode("ascii", "replace")
        fields = raw.rpartition(")")[2].split()
        utime, stime = int(fields[11]), int(fields[12])
    except (OSError, ValueError, IndexError) as exc:
        raise BenchmarkCheckFailed(f"cannot read the CPU time of process {pid}: {exc}") from None
    return (utime + stime) / CLOCK_TICKS


@dataclass(frozen=True)
class Snapshot:
    """Every daemon's own CPU-seconds at a moment."""

    at: float
    cpu: dict[str, float]

    @classmethod
    def take(cls, pids: dict[str, int]) -> Snapshot:
        return cls(time.monotonic(), {name: cpu_now(pid) for name, pid in pids.items()})


def idle_rates(network: ComputeNetwork, seconds: float) -> dict[str, float]:
    """Each daemon's own CPU-seconds per second while nothing happens but the chain."""
    pids = network.daemons()
    before = Snapshot.take(pids)
    network.cancel.wait(seconds)
    network.check()
    after = Snapshot.take(pids)
    span = after.at - before.at
    return {name: (after.cpu[name] - before.cpu[name]) / span for name in pids}


def cpu_of(
    before: Snapshot, after: Snapshot, idle: dict[str, float], jobs: dict[str, float]
) -> dict[str, Any]:
    """What the deal made run between two snapshots: the jobs' CPU as their providers reported
    it (``jobs``: daemon -> CPU-seconds), the compute daemons' own (less their idle rate), and the
    storage daemons' apart."""
    span = after.at - before.at
    compute_own = compute_raw = storage = 0.0
    per: dict[str, dict[str, float]] = {}
    for name, end in after.cpu.items():
        own = end - before.cpu[name]
        corrected = max(own - idle.get(name, 0.0) * span, 0.0)
        per[name] = {"own_s": own, "own_less_idle_s": corrected}
        if name in jobs:
            per[name]["job_s"] = jobs[name]
        if name.startswith("storage-"):
            storage += corrected
        else:
            compute_own += corrected
            compute_raw += own
    job_cpu = sum(jobs.values())
    return {
        "seconds": span,
        "jobs_cpu_s": job_cpu,
        "daemons_cpu_s": compute_own,
        "daemons_cpu_raw_s": compute_raw,
        "total_cpu_s": job_cpu + compute_own,
        "storage_daemons_cpu_s": storage,
        "per_daemon": per,
    }


# -- one job through the market -------------------------------------------------------------------


@dataclass
class Timeline:
    """A :class:`qoin.compute.client.Watcher` that notes when each message came."""

    marks: list[tuple[float, str, str]] = field(default_factory=list)
    output_bytes: int = 0

    def phase(self, phase: str, message: str) -> None:
        self.marks.append((time.monotonic(), phase, message))

    def output(self, stream: str, data: bytes) -> None:
        self.output_bytes += len(data)

    def first(self, phase: str, *words: str) -> float | None:
        """When the first message of ``phase`` holding every one of ``words`` came."""
        for at, said_phase, message in self.marks:
            if said_phase == phase and all(word in message for word in words):
                return at
        return None


@dataclass
class OfferClock:
    """Notes when each ``POST /offer`` left and was answered (httpx event hooks)."""

    sent: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)

    def on_request(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/offer"):
            self.sent.append(time.monotonic())

    def on_response(self, response: httpx.Response) -> None:
        if response.request.url.path.endswith("/offer"):
            self.answered.append(time.monotonic())


@dataclass(frozen=True)
class Deal:
    """A deal run through the market, and what was noted on the way."""

    outcome: RunOutcome
    submitted: client.Submitted
    timeline: Timeline
    offers: OfferClock
    marks: dict[str, float]
    """``start``, ``ranked``, ``submitted``, ``followed`` (``time.monotonic()``)."""
    events: list[DealEvent]
    jobs: list[client.JobState | None]
    """Each replica's state at the end (None: its provider did not say)."""
    cpu: dict[str, Any]


def job_options(workload: Workload, verification: Verification, timeout: int) -> JobOptions:
    """The options ``qoin compute run`` would have for ``workload``."""
    spec = workload.spec(timeout)
    return JobOptions(
        command=spec.command,
        cpus=1,
        memory=JOB_MEMORY,
        timeout=timeout,
        verification=verification,
        outputs=OutputLimits(spec.outputs.max_bytes, spec.outputs.max_files, MIB),
    )


def final_states(
    http: httpx.Client, network: ComputeNetwork, submitted: client.Submitted
) -> list[client.JobState | None]:
    """Each replica's job state once its outputs are stored (or :data:`UPLOAD_WAIT_S` passed)."""
    return [
        final_state(
            network,
            ProviderApi(http, network.keypair, candidate.provider, candidate.ask.endpoint),
            submitted.deal,
        )
        for candidate in submitted.providers
    ]


def final_state(network: ComputeNetwork, api: ProviderApi, deal: int) -> client.JobState | None:
    """The job state of ``deal`` at ``api``'s provider once its outputs are stored or the job
    failed (or :data:`UPLOAD_WAIT_S` passed: the last it said; None: it did not say)."""
    deadline = time.monotonic() + UPLOAD_WAIT_S
    state: client.JobState | None = None
    while True:
        try:
            state = api.job(deal)
        except client.ComputeClientError:
            state = None
        done = state is not None and (state.cid is not None or state.state == "failed")
        if done or time.monotonic() > deadline:
            return state
        network.cancel.wait(POLL_S)
        network.check()


def market_job(
    network: ComputeNetwork,
    workload: Workload,
    verification: Verification,
    providers: Sequence[ComputeNode],
    timeout: int,
    idle: dict[str, float],
) -> Deal:
    """Run ``workload`` through the market on ``providers`` (module docstring, 1.)."""
    options = job_options(workload, verification, timeout)
    chosen = tuple(Address.from_text(node.address) for node in providers)
    market_options = MarketOptions(providers=chosen)
    timeline, offers = Timeline(), OfferClock()
    pids = network.daemons()
    marks: dict[str, float] = {}
    http = httpx.Client(
        timeout=httpx.Timeout(HTTP_S, connect=10.0),
        follow_redirects=False,
        event_hooks={"request": [offers.on_request], "response": [offers.on_response]},
    )

    def deal() -> tuple[client.Submitted, RunOutcome]:
        with ComputeMarketView(network.url) as view, Wallet(network.url, network.keypair) as wallet:
            marks["start"] = time.monotonic()
            prepared = client.prepare(view, options, market_options, network.keypair)
            marks["ranked"] = time.monotonic()
            submitted = client.submit(wallet, view, prepared, network.jobs, timeline, http)
            marks["submitted"] = time.monotonic()
            outcome = client.follow(wallet, submitted, network.out_dir(), network.jobs, timeline)
            marks["followed"] = time.monotonic()
        return submitted, outcome

    before = Snapshot.take(pids)
    try:
        submitted, outcome = network.in_thread(deal)
        states = final_states(http, network, submitted)
    finally:
        http.close()
    after = Snapshot.take(pids)  # every replica's outputs stored: all the deal made run
    with RpcClient(network.url, timeout=30.0) as rpc:
        events = client.deal_logs(rpc, outcome.deal, submitted.formed_height, client.head(rpc))
    jobs = network.job_cpu(submitted, states)
    return Deal(
        outcome,
        submitted,
        timeline,
        offers,
        marks,
        events,
        states,
        cpu_of(before, after, idle, jobs),
    )


def check_done(deal: Deal, workload: Workload) -> None:
    """:class:`BenchmarkCheckFailed` unless the job exited 0 and its outputs came back whole."""
    outcome = deal.outcome
    saved = outcome.outputs
    if outcome.exit_code != 0 or saved is None:
        raise BenchmarkCheckFailed(
            f"the {workload.name} job on the market ended with {outcome.exit_code}: "
            f"{outcome.message}"
        )
    wanted = ("out",) if workload.output_bytes else ()
    if saved.files != wanted:
        raise BenchmarkCheckFailed(f"the {workload.name} job's outputs are {saved.files}")
    if wanted and (saved.out / client.OUTPUTS_DIR / "out").stat().st_size != workload.output_bytes:
        raise BenchmarkCheckFailed(f"the {workload.name} job's output has the wrong size")


def _heights(events: Sequence[DealEvent]) -> dict[str, Any]:
    """Heights of the deal's steps (per replica where each replica has its own)."""
    found: dict[str, Any] = {}
    for event in events:
        name, data = event.name, event.data
        if name in ("ResultCommitted", "ResultRevealed", "ProviderPaid", "ProviderFined"):
            found.setdefault(name, {}).setdefault(str(data[1]), event.height)
        elif name == "PhaseStarted" and isinstance(data[1], int):
            found.setdefault(f"PhaseStarted:{Phase(data[1]).name.lower()}", event.height)
        else:
            found.setdefault(name, event.height)
    return found


def phases(deal: Deal, direct: tuple[float, float]) -> dict[str, Any]:
    """The deal's wall time split into phases (module docstring, 1.)."""
    marks, offers = deal.marks, deal.offers
    state = deal.jobs[0]
    timings = {} if state is None else state.timings
    provider = {name: timings.get(name, 0.0) for name in ("stage", "pull", "start", "run", "hash")}
    first_offer = min(offers.sent, default=marks["submitted"])
    last_answer = max(offers.answered, default=first_offer)
    settled = deal.timeline.first("settle") or marks["followed"]
    total = marks["followed"] - marks["start"]
    match = marks["submitted"] - marks["start"]
    settlement = settled - marks["submitted"] - sum(provider.values())
    split = {
        "match": match,
        "staging": provider["stage"],
        "sandbox_start": provider["start"],
        "run": provider["run"],
        "hashing": provider["hash"],
        "settlement": settlement,
        "outputs": marks["followed"] - settled,
    }
    if provider["pull"]:
        split["pull"] = provider["pull"]
    return {
        "total_s": total,
        "direct_s": direct[0],
        "direct_one_core_s": direct[1],
        "overhead_s": total - direct[0],
        "overhead_vs_one_core_s": total - direct[1],
        "phases_s": split,
        "match_s": {
            "rank": marks["ranked"] - marks["start"],
            "bid": first_offer - marks["ranked"],
            "acceptances": last_answer - first_offer,
            "deal": marks["submitted"] - last_answer,
        },
        "upload_s": timings.get("upload"),
        "usage_cpu": None if state is None else state.usage_cpu,
    }


def deal_json(deal: Deal, direct: tuple[float, float]) -> dict[str, Any]:
    """What a market deal reports."""
    heights = _heights(deal.events)
    formed, settled = heights.get("DealFormed"), heights.get("DealSettled")
    outputs = deal.outcome.outputs
    return {
        "deal": deal.outcome.deal,
        "verification": deal.submitted.spec.verification.name.lower(),
        "providers": [str(c.provider) for c in deal.submitted.providers],
        **phases(deal, direct),
        "heights": heights,
        "blocks_formed_to_settled": (
            None if formed is None or settled is None else settled - formed
        ),
        "archive_bytes": None if outputs is None else outputs.size,
        "cost": None if deal.outcome.cost is None else deal.outcome.cost.to_json(),
        "cpu": deal.cpu,
    }


# -- the measurements -----------------------------------------------------------------------------


def measure_jobs(
    network: ComputeNetwork,
    workloads: Sequence[Workload],
    direct: dict[str, tuple[float, float]],
    timeout: int,
    idle: dict[str, float],
) -> dict[str, Any]:
    """Each workload with verification none on the first honest provider."""
    provider = network.honest[0]
    found: dict[str, Any] = {}
    for workload in workloads:
        network.say(f"market: the {workload.name} job, verification none, on {provider.name}")
        deal = market_job(network, workload, Verification.NONE, [provider], timeout, idle)
        check_done(deal, workload)
        found[workload.name] = deal_json(deal, direct[workload.name])
    return found


def measure_replicated(
    network: ComputeNetwork,
    workload: Workload,
    none: dict[str, Any],
    direct: tuple[float, float],
    timeout: int,
    idle: dict[str, float],
) -> dict[str, Any]:
    """The cpu job replicated on both honest providers against ``none`` (module docstring, 2.)."""
    network.say(f"market: the {workload.name} job replicated on both honest providers")
    deal = market_job(network, workload, Verification.REPLICATED, network.honest, timeout, idle)
    check_done(deal, workload)
    replicated = deal_json(deal, direct)
    ratio = replicated["cpu"]["total_cpu_s"] / none["cpu"]["total_cpu_s"]
    raw = (replicated["cpu"]["jobs_cpu_s"] + replicated["cpu"]["daemons_cpu_raw_s"]) / (
        none["cpu"]["jobs_cpu_s"] + none["cpu"]["daemons_cpu_raw_s"]
    )
    with_storage = (
        replicated["cpu"]["total_cpu_s"] + replicated["cpu"]["storage_daemons_cpu_s"]
    ) / (none["cpu"]["total_cpu_s"] + none["cpu"]["storage_daemons_cpu_s"])
    return {
        "workload": workload.name,
        "none_cpu_s": none["cpu"]["total_cpu_s"],
        "replicated_cpu_s": replicated["cpu"]["total_cpu_s"],
        "ratio": ratio,
        "ratio_without_idle_correction": raw,
        "ratio_with_storage_daemons": with_storage,
        "goal": REPLICATED_GOAL,
        "goal_met": ratio <= REPLICATED_GOAL,
        "deal": replicated,
    }


def measure_cheater(
    network: ComputeNetwork, workload: Workload, timeout: int, idle: dict[str, float]
) -> dict[str, Any]:
    """The trivial job replicated on an honest provider and the cheater (module docstring, 3.)."""
    honest, cheater = network.honest[0], network.cheaters[0]
    network.say(f"market: the {workload.name} job replicated on {honest.name} and {cheater.name}")
    deal = market_job(network, workload, Verification.REPLICATED, [honest, cheater], timeout, idle)
    story = deal.outcome.story
    if story.verdict is None or story.verdict[0] is not VerdictKind.WRONG_RESULT:
        raise BenchmarkCheckFailed(
            f"the cheater's deal {deal.outcome.deal} got no wrong-result verdict: "
            f"{deal.outcome.message}"
        )
    replica = next(
        i for i, c in enumerate(deal.submitted.providers) if str(c.provider) == cheater.address
    )
    heights = _heights(deal.events)
    revealed = heights.get("ResultRevealed", {}).get(str(replica))
    fined = heights.get("ProviderFined", {}).get(str(replica))
    if revealed is None or fined is None:
        raise BenchmarkCheckFailed(
            f"deal {deal.outcome.deal}: no reveal or no fine of the cheater in {heights}"
        )
    seen_reveal = deal.timeline.first("verify", "revealed root", cheater.address)
    seen_fine = deal.timeline.first("settle", "fined", cheater.address)
    return {
        "workload": workload.name,
        "deal": deal.outcome.deal,
        "cheater": cheater.address,
        "misbehave": MISBEHAVE,
        "revealed_height": revealed,
        "fined_height": fined,
        "blocks": fined - revealed,
        "seconds": (None if seen_reveal is None or seen_fine is None else seen_fine - seen_reveal),
        "heights": heights,
        "params": {
            "reveal_blocks": DEVNET.reveal_blocks,
            "mediation_blocks": DEVNET.mediation_blocks,
            "staging_blocks": DEVNET.staging_blocks,
            "block_ms": DEVNET.block_ms,
        },
        "total_s": deal.marks["followed"] - deal.marks["start"],
    }


def measure_live(
    workloads: Sequence[Workload],
    direct: dict[str, tuple[float, float]],
    timeout: int,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The market figures (module docstring) on a fresh network; ``direct``: each workload's
    direct seconds measured earlier in the run (unpinned, on one core)."""
    say = progress or (lambda _message: None)
    by_name = {workload.name: workload for workload in workloads}
    with compute_network(workdir, say) as network:
        say(f"measuring the daemons' idle CPU for {IDLE_S:g} s")
        idle = idle_rates(network, IDLE_S)
        jobs = measure_jobs(network, workloads, direct, timeout, idle)
        replicated = measure_replicated(
            network, by_name["cpu"], jobs["cpu"], direct["cpu"], timeout, idle
        )
        cheater = measure_cheater(network, by_name["trivial"], timeout, idle)
    return {
        "market": {
            "block_interval_ms": BLOCK_INTERVAL_MS,
            "idle_cpu_per_s": idle,
            "jobs": jobs,
        },
        "replicated": replicated,
        "cheater": cheater,
    }


def table(report: dict[str, Any]) -> list[str]:
    """The market figures of ``report`` (those it has) as human-readable lines."""
    lines = []
    market = report.get("market")
    if market is not None:
        for name, deal in market["jobs"].items():
            split = ", ".join(f"{k} {v:.2f}" for k, v in deal["phases_s"].items())
            lines.append(
                f"market, {name}: {deal['total_s']:.2f} s against {deal['direct_s']:.3f} s "
                f"directly ({deal['direct_one_core_s']:.3f} s on one core; overhead "
                f"{deal['overhead_s']:.2f} s): {split}"
            )
    replicated = report.get("replicated")
    if replicated is not None:
        lines.append(
            f"replicated CPU: {replicated['replicated_cpu_s']:.2f} CPU-s against "
            f"{replicated['none_cpu_s']:.2f} with none: x{replicated['ratio']:.2f} (goal <= "
            f"{replicated['goal']}, {'met' if replicated['goal_met'] else 'not met'})"
        )
    cheater = report.get("cheater")
    if cheater is not None:
        seconds = cheater["seconds"]
        lines.append(
            f"cheater: revealed at height {cheater['revealed_height']}, fined at "
            f"{cheater['fined_height']}: {cheater['blocks']} blocks"
            + ("" if seconds is None else f", {seconds:.1f} s")
        )
    return lines
