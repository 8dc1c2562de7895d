"""The compute provider daemon (docs/spec/compute.md §5): it posts its ask, serves its API,
follows the chain and runs the jobs of its deals.

* **Start**: what the machine has is detected (CPUs, physical memory, NVIDIA GPUs through
  ``nvidia-smi`` and their device nodes ``/dev/nvidia<i>``); asking for more is refused. The
  first ``--gpus`` GPUs (by device number) are assigned to runs, each to one run at a time
  (:class:`~qoin.compute.provider.jobs.GpuPool`). Each executor asked for is offered only if it can
  run here (:func:`qoin.compute.executors.available`); the others are left out with the reason.
  Each runtime of ``--runtime DIR`` is loaded (:func:`qoin.ai.runtime.load`; one that does not
  load, or that a sandboxed job could not use, is a start-up error saying why), and the default
  runtime directory (:func:`qoin.ai.runtime.default_dir`) is offered too when it loads (why not
  is logged otherwise); jobs naming another runtime are refused.
  The HTTP API listens; with ``--mediator`` the mediator record is registered (or its stake topped
  up); the ask is posted (or updated) with the endpoint, the ML-KEM-768 key (``DATADIR/kem.key``),
  the public key, the mediators it accepts (``--mediators``, else every active mediator but itself,
  at most 8, refreshed as mediators come and go) and a deposit bringing its collateral up to one
  job of the longest timeout on the whole capacity. Then one JSON ready line.
* **Following**: WebSocket subscriptions to ``newHeads`` and the actor's logs of the events it
  handles (topic 0 among :data:`_HANDLERS`' names: ``DealFormed`` and ``PhaseStarted`` name the
  client in topic 1, so other deals' events come too; each costs O(1) work: a dictionary look-up,
  no chain read, no directory listing); reconnection with a growing backoff and a catch-up read of
  the logs missed (in ranges of :data:`qoin.rpc.follow.CATCH_UP_CHUNK` blocks); at start, and after each
  reconnection, the jobs in the data directory are reconciled with the chain.
* **Heads**: offers whose bid's deadline has come are settled against the chain (a job, or
  deleted); runs past their deal's run deadline are stopped; mediations' runs past their time are
  stopped; settled jobs' files are deleted ``--keep-blocks`` later; the accepted mediators are
  read again (at most every :data:`MEDIATOR_REFRESH_BLOCKS` blocks) after mediators came or went.
* **Events**: ``DealFormed`` naming it (the providers in its data; topic 1 is the client): the
  kept offer becomes a job, started at once; ``PhaseStarted`` (reveal) and ``DealTimedOut``
  (run): the job reveals, or gives up; ``ResultRevealed``: what ``copy-reveal`` copies;
  ``DealSettled``: the job is settled and its files deleted ``--keep-blocks`` later;
  ``MediationStarted`` naming it (a mediator): the re-run (:mod:`.mediator`).

Every action is one line on stdout, starting with the height of the head it happened at (one JSON
object per line with ``--json``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from qoin.ai import runtime as ai_runtime
from qoin.ai.runtime import AiRuntimeError, RuntimeInfo
from qoin.compute import market
from qoin.compute.executors import executor_for
from qoin.compute.executors.sandbox import nvidia_gpus, runtime_problem
from qoin.compute.jobspec import Executor
from qoin.compute.market import COMPUTE_MARKET, ComputeMarketView, Phase, ReplicaState
from qoin.compute.params import ComputeParams
from qoin.compute.provider.jobs import GpuPool, Job, JobBook, JobContext, JobError, JobState
from qoin.compute.provider.mediator import Mediations
from qoin.compute.provider.server import Capacity, ComputeApi, ComputeContext
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.rpc.client import RpcCallError
from qoin.rpc.follow import Follower, SeenLogs, catch_up_start, guarded, read_logs
from qoin.rpc.serve import BackgroundServer
from qoin.storage.provider.daemon import kem_private_key, print_line
from qoin.wallet import Wallet, WalletError

MAX_ASK_MEDIATORS: Final = 8
TX_TIMEOUT_S: Final = 120.0
NVIDIA_SMI_TIMEOUT_S: Final = 10.0
DEFAULT_KEEP_BLOCKS: Final = 1000
"""Blocks a settled job's files are kept (its status stays readable)."""
WEBSOCKET_MAX_FRAME: Final = 4096
OFFERS_PER_HEAD: Final = 16
"""Offers whose bid's deadline has come settled against the chain per head, at most (the rest at
the next heads)."""
MEDIATOR_REFRESH_BLOCKS: Final = 10
"""Blocks between two readings of the mediator list after ``MediatorRegistered`` or
``MediatorUnregistered`` (however many such events come, the ask is posted again at most once per
this many blocks)."""
_OUTCOMES: Final = {int(o): o.name.lower().replace("_", " ") for o in market.Outcome}


class ConfigError(QoinError):
    """Options the machine cannot honour (more CPUs than it has, no executor)."""


@dataclass(frozen=True)
class Machine:
    """What this machine has."""

    cpus: int
    memory: int
    gpus: int
    gpu_model: str
    gpu_devices: tuple[int, ...] | None = None
    """The device numbers of its GPUs (``/dev/nvidia<i>``), sorted; None: 0 to ``gpus - 1``."""

    @property
    def devices(self) -> tuple[int, ...]:
        """The device numbers of its GPUs."""
        return tuple(range(self.gpus)) if self.gpu_devices is None else self.gpu_devices


def detect() -> Machine:
    """CPUs (those this process may use), physical memory, and NVIDIA GPUs (``nvidia-smi``,
    none if it is missing or fails; their device nodes ``/dev/nvidia<i>``, listed after
    ``nvidia-smi`` ran, which makes them when the provider is root)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    names: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run(  # noqa: S603 (a fixed command)
                [smi, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=NVIDIA_SMI_TIMEOUT_S,
                check=False,
            )
            if done.returncode == 0:
                names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            names = []
    model = names[0][:64] if names else ""
    return Machine(cpus or 1, memory, len(names), model, nvidia_gpus() if names else ())


def capacity_problem(capacity: Capacity, machine: Machine) -> str | None:
    """Why this machine cannot offer ``capacity``, or None."""
    gpus, devices = capacity.gpus, len(machine.devices)
    checks = (
        (
            1 <= capacity.cpus <= machine.cpus,
            f"--cpus {capacity.cpus}: this machine has {machine.cpus} CPU(s) to offer",
        ),
        (
            1 <= capacity.memory <= machine.memory,
            f"--memory {capacity.memory}: this machine has {machine.memory} bytes of memory",
        ),
        (gpus <= machine.gpus, f"--gpus {gpus}: this machine has {machine.gpus} GPU(s)"),
        (
            gpus <= devices,
            f"--gpus {gpus}: only {devices} of this machine's {machine.gpus} GPU(s) have a device "
            "node (/dev/nvidia<i>) to give a job (run nvidia-smi as root, or nvidia-modprobe, to "
            "make them)",
        ),
        (not capacity.gpu_model or gpus > 0, "--gpu-model needs --gpus"),
        (
            not gpus or not capacity.gpu_model or capacity.gpu_model == machine.gpu_model,
            f"--gpu-model {capacity.gpu_model!r}: this machine's GPU is {machine.gpu_model!r}",
        ),
    )
    return next((why for ok, why in checks if not ok), None)


def due_for_removal(settled_height: int, done_at: int | None, height: int, keep: int) -> bool:
    """Whether a job's files may go at ``height``: its deal settled at least ``keep`` blocks ago
    *and* it has been done (not running, not storing its outputs) for ``keep`` blocks, since
    ``done_at`` (None: not done). Counting from the settlement alone deleted a job whose outputs
    were stored long after its deal settled (a ``none`` deal settles at the reveal) at the moment
    they were stored, before its client could read the result."""
    if done_at is None or settled_height < 0:
        return False
    return settled_height <= height - keep and done_at <= height - keep


@dataclass(frozen=True)
class ComputeConfig:
    """How a compute provider runs (the ``qoin compute provider`` options)."""

    datadir: Path
    rpc: str
    capacity: Capacity
    price_cpu: int
    """Shor per CPU-second."""
    price_gpu: int = 0
    """Shor per GPU-second."""
    collateral_ppm: int | None = None
    """The collateral multiple k offered (None: the market's least)."""
    deposit: int | None = None
    """Collateral to hold (None: one job of the longest timeout on the whole capacity)."""
    executors: tuple[Executor, ...] = tuple(Executor)
    host: str = "127.0.0.1"
    port: int = 0
    announce: str | None = None
    """The endpoint posted (default the listening ``host:port``)."""
    mediators: tuple[Address, ...] | None = None
    """The mediators accepted (None: every active one, at most 8)."""
    mediator: bool = False
    """Also register as a mediator and re-run disputed jobs."""
    fee: int = 0
    """The mediator's fee per mediation."""
    stake: int | None = None
    """The mediator's stake (None: the market's least)."""
    keep_blocks: int = DEFAULT_KEEP_BLOCKS
    misbehave: str | None = None
    """TEST ONLY (:data:`qoin.compute.provider.jobs.MISBEHAVIOURS`)."""
    json_log: bool = False
    runtimes: tuple[Path, ...] = ()
    """Runtime directories offered (``--runtime``): each must load."""
    default_runtime: bool = True
    """Also offer the runtime of :func:`qoin.ai.runtime.default_dir` when it loads."""


class ComputeProvider:
    """One compute provider: :meth:`start`, :meth:`run` until a stop is asked, :meth:`close`."""

    def __init__(
        self,
        config: ComputeConfig,
        keypair: HybridKeyPair,
        out: Callable[[str], None] = print_line,
        machine: Machine | None = None,
    ) -> None:
        self.config = config
        self.keypair = keypair
        self.address = keypair.address
        self._out = out
        self.machine = machine or detect()
        self.height = 0
        self.endpoint = ""
        self.params = ComputeParams()
        self.view = ComputeMarketView(config.rpc)
        self.wallet: Wallet | None = None
        self.server: BackgroundServer | None = None
        self.book: JobBook | None = None
        self.mediations: Mediations | None = None
        self.executors: dict[Executor, str | None] = {}
        self.runtimes: tuple[RuntimeInfo, ...] = ()
        self._mediators: tuple[Address, ...] = ()
        self._seen_logs = SeenLogs()
        self._done_at: dict[int, int] = {}
        """Per deal, the first head at which its job was seen settled and done (not running nor
        storing): its files are kept ``keep_blocks`` from then (:func:`due_for_removal`)."""
        self._kem_public = b""
        self._mediators_dirty = False
        self._mediators_read = 0
        """Height the accepted mediators were last read at."""

    # -- output ---------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.config.json_log:
            self._out(json.dumps({"height": self.height, "message": text}))
        else:
            self._out(f"height {self.height}: {text}")

    def ready(self) -> dict[str, Any]:
        """The ready line's object."""
        url = self.server.url.rstrip("/") if self.server is not None else ""
        return {
            "ready": True,
            "address": str(self.address),
            "endpoint": self.endpoint,
            "url": f"{url}/compute/v1",
            "executors": {kind.name.lower(): why for kind, why in self.executors.items()},
            "runtimes": [info.ref for info in self.runtimes],
            "cpus": self.config.capacity.cpus,
            "memory": self.config.capacity.memory,
            "gpus": self.config.capacity.gpus,
            "mediator": self.config.mediator,
            "mediators": [str(m) for m in self._mediators],
        }

    # -- start and stop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check the options against the machine, start the server, register, post the ask,
        take up the jobs in the data directory. :class:`~qoin.errors.QoinError` saying what
        failed (everything opened is closed)."""
        config = self.config
        problem = capacity_problem(config.capacity, self.machine)
        if problem is not None:
            raise ConfigError(problem)
        self.executors = self._executors()
        offered = [kind for kind, why in self.executors.items() if why is None]
        if not offered:
            reasons = "; ".join(f"{k.name.lower()}: {w}" for k, w in self.executors.items())
            raise ConfigError(f"no executor can run here ({reasons})")
        self.runtimes = self._runtimes()
        try:
            self.wallet = Wallet(config.rpc, self.keypair)
            self.params = self.view.params()
            self.height = self._head_height()
            kem = kem_private_key(config.datadir)
            self._kem_public = kem.public_key().public_bytes_raw()
            ctx = JobContext(
                keypair=self.keypair,
                rpc=config.rpc,
                params=self.params,
                wallet=self.wallet,
                view=self.view,
                kem=kem,
                log=self.log,
                height=lambda: self.height,
                misbehave=config.misbehave,
                runtimes={info.ref: info.path for info in self.runtimes},
                gpus=GpuPool(self.machine.devices[: config.capacity.gpus]),
            )
            if config.capacity.gpus:
                nodes = ", ".join(f"/dev/nvidia{gpu}" for gpu in ctx.gpus.gpus)
                self.log(f"GPUs assigned to jobs, each to one run at a time: {nodes}")
            self.book = JobBook(config.datadir, ctx)
            if config.mediator:
                self.mediations = Mediations(config.datadir, ctx)
            context = ComputeContext(
                keypair=self.keypair,
                chain_id=self.wallet.chain_id,
                kem=kem,
                view=self.view,
                book=self.book,
                executors=self.executors,
                capacity=config.capacity,
                log=self.log,
                mediate=self.mediations.keep if self.mediations is not None else None,
                runtimes=self.runtimes,
            )
            self.server = BackgroundServer(
                ComputeApi(context).app(),
                config.host,
                config.port,
                websocket_max_frame=WEBSOCKET_MAX_FRAME,
            ).start()
            self.endpoint = config.announce or f"{self.server.host}:{self.server.port}"
            for kind, why in self.executors.items():
                if why is not None:
                    self.log(f"executor {kind.name.lower()} not offered: {why}")
            if config.mediator:
                self._register_mediator()
            self._post_ask(self._accepted_mediators())
            self._mediators_read = self.height
            self.book.load()
            self._reconcile()
        except BaseException:
            self.close()
            raise

    def _executors(self) -> dict[Executor, str | None]:
        """Each kind: None if offered (asked for and able to run here), else why not."""
        found: dict[Executor, str | None] = {}
        for kind in Executor:
            if kind not in self.config.executors:
                found[kind] = "not offered by this provider (--executors)"
                continue
            try:
                found[kind] = executor_for(kind).problem()
            except ImportError as exc:
                found[kind] = f"not built into this qoin ({exc})"
        return found

    def _runtimes(self) -> tuple[RuntimeInfo, ...]:
        """The runtimes offered: each ``--runtime`` directory (:class:`ConfigError` if one does
        not load or could not work in the sandbox), then the default one if it loads."""
        found: dict[str, RuntimeInfo] = {}
        for path in self.config.runtimes:
            try:
                info = ai_runtime.load(path)
            except AiRuntimeError as exc:
                raise ConfigError(f"--runtime {path}: {exc}") from None
            problem = runtime_problem(info.path)
            if problem is not None:
                raise ConfigError(f"--runtime {path}: {problem}")
            found.setdefault(info.ref, info)
        if self.config.default_runtime:
            place = ai_runtime.default_dir()
            given = {path.resolve() for path in self.config.runtimes}
            if place.resolve() not in given:
                try:
                    info = ai_runtime.load(place)
                    problem = runtime_problem(info.path)
                except AiRuntimeError as exc:
                    problem = str(exc)
                if problem is None:
                    found.setdefault(info.ref, info)
                else:
                    self.log(f"the default AI runtime {place} is not offered: {problem}")
        for info in found.values():
            self.log(f"runtime {info.ref} offered (torch {info.torch}, {info.path})")
        return tuple(found.values())

    def close(self) -> None:
        """Stop the jobs and mediations (a restart takes them up), the server and the
        connections."""
        if self.mediations is not None:
            self.mediations.stop_all()
        if self.book is not None:
            self.book.stop_all()
            alive = [job.deal for job in self.book.all() if job.alive]
            if alive:
                self.log(f"jobs of deals {alive} did not stop in time; leaving them to the exit")
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.wallet is not None:
            self.wallet.close()
            self.wallet = None
        self.view.close()

    def _wallet(self) -> Wallet:
        if self.wallet is None:
            raise WalletError("the provider is not started")
        return self.wallet

    def _book(self) -> JobBook:
        if self.book is None:
            raise JobError("not-started", "the provider is not started")
        return self.book

    def _head_height(self) -> int:
        try:
            return int(self._wallet().client.call("qoin_blockNumber"))
        except RpcCallError as exc:
            raise WalletError(f"cannot read the head: {exc}") from None

    def _accepted_mediators(self) -> tuple[Address, ...]:
        if self.config.mediators is not None:
            return self.config.mediators[:MAX_ASK_MEDIATORS]
        least = self.params.min_mediator_stake
        found = [
            m.mediator
            for m in self.view.mediators()
            if m.active and m.stake >= least and m.mediator != self.address
        ]
        return tuple(found[:MAX_ASK_MEDIATORS])

    def _post_ask(self, mediators: tuple[Address, ...], quiet: bool = False) -> None:
        config, capacity = self.config, self.config.capacity
        k = (
            self.params.min_collateral_ppm
            if config.collateral_ppm is None
            else config.collateral_ppm
        )
        wanted = config.deposit
        if wanted is None:
            largest = market.max_payment(
                capacity.cpus,
                capacity.gpus,
                self.params.max_timeout,
                config.price_cpu,
                config.price_gpu,
            )
            wanted = market.collateral_for(largest, k)
        existing = self.view.get_ask(self.address)
        held = 0 if existing is None else existing.free_collateral + existing.locked_collateral
        deposit = max(0, wanted - held)
        offered = sum(kind.bit for kind, why in self.executors.items() if why is None)
        market.post_ask(
            cpus=capacity.cpus,
            memory=capacity.memory,
            gpus=capacity.gpus,
            gpu_model=capacity.gpu_model,
            executors=offered,
            price_cpu=config.price_cpu,
            price_gpu=config.price_gpu,
            collateral_ppm=k,
            mediators=mediators,
            endpoint=self.endpoint,
            kem_key=self._kem_public,
            public_key=self.keypair.public,
            deposit=deposit,
        ).transact(self._wallet(), TX_TIMEOUT_S)
        self._mediators = mediators
        named = ", ".join(str(m) for m in mediators) or "none"
        self.log(
            f"ask posted: {capacity.cpus} CPU(s), {capacity.memory} bytes, {capacity.gpus} "
            f"GPU(s) at {config.price_cpu} Shor per CPU-second, k {k} ppm, endpoint "
            f"{self.endpoint}; mediators {named}; deposited {deposit} Shor"
        )

    def _register_mediator(self) -> None:
        config = self.config
        wanted = self.params.min_mediator_stake if config.stake is None else config.stake
        existing = self.view.get_mediator(self.address)
        have = 0 if existing is None else existing.stake
        add = max(0, wanted - have)
        market.register_mediator(config.fee, self.endpoint, self._kem_public, add).transact(
            self._wallet(), TX_TIMEOUT_S
        )
        self.log(f"mediator registered: fee {config.fee} Shor, stake {have + add} Shor")

    # -- reconciling ------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Bring the offers and jobs of the data directory in line with the chain and start what
        has work to do."""
        book = self._book()
        for bid in book.offers.bids():
            self._settle_offer(bid)
        for job in book.all():
            self._reconcile_job(job)
        if self.mediations is not None:
            self.mediations.reconcile()

    def _settle_offer(self, bid: int) -> None:
        """Bring a kept offer in line with the chain: its bid formed a deal with this provider (a
        job), with others or ended (deleted), or is still open (its deadline noted)."""
        book = self._book()
        found = self.view.get_deal(bid)
        if found is not None:
            providers = [r.provider for r in found.replicas]
            if self.address in providers:
                deadline = found.deadline if found.phase is Phase.RUN else 0
                self._adopt(
                    bid, providers.index(self.address), found.acting, found.mediator, deadline
                )
            elif book.offers.drop(bid):
                self.log(f"bid {bid} formed its deal with other providers; offer dropped")
            return
        open_bid = self.view.get_bid(bid)
        if open_bid is None:
            if book.offers.drop(bid):
                self.log(f"bid {bid} ended without a deal with this provider; offer dropped")
        else:
            book.offers.set_deadline(bid, open_bid.deadline)

    def _reconcile_job(self, job: Job) -> None:
        if job.alive:
            return
        status = job.status
        found = None if status.settled_height >= 0 else self.view.get_deal(job.deal)
        if found is None:
            job.on_settled(self.height, "over")
            if job.status.state is JobState.REVEALED and not job.status.cid:
                job.start()  # a settled deal's client may still fetch its outputs
            return
        replica = found.replicas[status.replica].state
        if replica is ReplicaState.REVEALED:
            if status.state is not JobState.STORED:
                job.update(state=JobState.REVEALED, revealed=True)
                job.start()
        elif replica is ReplicaState.COMMITTED:
            if status.root and status.state is not JobState.COMMITTED:
                job.update(state=JobState.COMMITTED)
            if found.phase is Phase.REVEAL:
                job.on_reveal_phase()
            if status.root:
                job.start()
        elif found.phase is Phase.RUN and status.state in (JobState.STAGING, JobState.RUNNING):
            if status.run_deadline != found.deadline:
                job.update(run_deadline=found.deadline)
            self.log(
                f"deal {job.deal}: taking the job up again ({status.state}"
                + (", its root saved: committing it" if status.root else "")
                + f"; run deadline {found.deadline})"
            )
            job.start()
        elif status.state not in (JobState.FAILED,):
            job.update(
                state=JobState.FAILED,
                reason="too-late",
                detail="the run phase ended before this replica committed",
            )

    def _adopt(
        self,
        deal: int,
        replica: int,
        client: Address,
        mediator: Address | None,
        run_deadline: int = 0,
    ) -> None:
        book = self._book()
        if book.get(deal) is not None:
            return
        try:
            job = book.adopt(deal, replica, str(client), str(mediator or ""), run_deadline)
        except QoinError as exc:
            self.log(f"deal {deal} names this provider (replica {replica}) but cannot run: {exc}")
            return
        self.log(
            f"deal {deal} formed: replica {replica} is ours; starting the job (commit due before "
            f"height {run_deadline or job.status.run_deadline or '?'})"
        )
        job.start()

    # -- following the chain ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Follow the chain until ``stop`` is set, reconnecting whenever the node goes away (and
        reconciling the data directory with the chain after each reconnection)."""
        Follower(
            self.config.rpc,
            log_filter(),
            on_head=self._on_head,
            on_log=self._on_log,
            catch_up=self._catch_up,
            log=self.log,
            reconcile=self._reconcile,
            name="compute provider",
        ).run(stop)

    def _guarded(self, what: str, work: Callable[[], None]) -> None:
        """Run ``work``; a Qoin error (the node, the disk) is logged, not fatal."""
        guarded(self.log, what, work)

    def _catch_up(self) -> None:
        """Read the logs missed while not subscribed (from the block before the last head seen,
        at most :data:`qoin.rpc.follow.CATCH_UP_BLOCKS` blocks), then act on the current head."""
        head = self._head_height()
        start = catch_up_start(self.height, head, 1)
        read_logs(self._wallet().client, log_filter(), start, head, self._on_log)
        self._on_head(head)

    def _on_head(self, height: int) -> None:
        self.height = max(self.height, height)
        book = self._book()
        keep = self.config.keep_blocks
        for bid in book.offers.due(height)[:OFFERS_PER_HEAD]:
            self._guarded(f"settling offer {bid}", functools.partial(self._settle_offer, bid))
        for job in book.all():
            status = job.status
            done = status.settled_height >= 0 and not job.alive
            done_at = self._done_at.setdefault(job.deal, height) if done else None
            if due_for_removal(status.settled_height, done_at, height, keep):
                book.remove(job.deal)
                self._done_at.pop(job.deal, None)
                self.log(f"deal {job.deal}: settled and done {keep} blocks ago; its files deleted")
            else:
                job.on_head(height)
        if self.mediations is not None:
            self.mediations.on_head(height)
            self.mediations.clean(height, keep)
        if self._mediators_dirty and height >= self._mediators_read + MEDIATOR_REFRESH_BLOCKS:
            self._mediators_dirty = False
            self._mediators_read = height
            wanted = self._accepted_mediators()
            if wanted != self._mediators:
                self._post_ask(wanted)

    # -- events -----------------------------------------------------------------------------------

    def _on_log(self, entry: dict[str, Any]) -> None:
        if not self._seen_logs.fresh(entry):
            return
        decoded = market.decode_event(entry)
        if decoded is None:
            return
        name, data = decoded
        if not isinstance(data, tuple):
            return
        topics = entry.get("topics")
        first = str(topics[1]).lower() if isinstance(topics, list) and len(topics) > 1 else ""
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, data, first)

    def _ours(self, first: str) -> bool:
        return first == self.address.raw.hex()

    def _deal_formed(self, data: tuple[Any, ...], first: str) -> None:
        deal, _job, providers, mediator, deadline = data[:5]
        if not isinstance(providers, tuple):
            return
        if self.address in providers:
            # a contract's deal names its agent last: the agent follows the job, not the contract
            agent = data[6] if len(data) > 6 and isinstance(data[6], Address) else None
            client = agent or Address(bytes.fromhex(first))
            named = (
                mediator if isinstance(mediator, Address) and mediator.raw != bytes(32) else None
            )
            run_deadline = deadline if isinstance(deadline, int) else 0
            self._adopt(deal, providers.index(self.address), client, named, run_deadline)
        elif self._book().offers.drop(deal):
            self.log(f"bid {deal} formed its deal with other providers; offer dropped")

    def _phase_started(self, data: tuple[Any, ...], first: str) -> None:
        deal, phase, deadline = data[:3]
        job = self._book().get(deal)
        if job is None:
            return
        if phase == int(Phase.REVEAL):
            self.log(f"deal {deal}: reveal phase until height {deadline}")
            job.on_reveal_phase()
        elif phase == int(Phase.CHECK):
            self.log(f"deal {deal}: results agree; dispute window until height {deadline}")
        elif phase == int(Phase.MEDIATION):
            self.log(f"deal {deal}: in mediation until height {deadline}")

    def _deal_timed_out(self, data: tuple[Any, ...], first: str) -> None:
        deal, phase, missing = data[:3]
        job = self._book().get(deal)
        if job is None:
            return
        status = job.status
        if phase == int(Phase.RUN) and status.state in (JobState.STAGING, JobState.RUNNING):
            self.log(f"deal {deal}: the run deadline passed before this replica committed")
            job.abort("the run deadline passed before the result was committed", "too-late")
        elif phase == int(Phase.REVEAL):
            self.log(f"deal {deal}: the reveal deadline passed ({missing} replica(s) missing)")

    def _result_revealed(self, data: tuple[Any, ...], first: str) -> None:
        deal, replica, root = data[:3]
        job = self._book().get(deal)
        if job is not None and isinstance(root, bytes):
            job.on_revealed(replica, root)

    def _deal_settled(self, data: tuple[Any, ...], first: str) -> None:
        deal, outcome = data[:2]
        name = _OUTCOMES.get(outcome, str(outcome))
        job = self._book().get(deal)
        if job is not None:
            job.on_settled(self.height, name)
            self.log(f"deal {deal} settled: {name}")
        if self.mediations is not None:
            self.mediations.settled(deal, self.height)

    def _bid_ended(self, data: tuple[Any, ...], first: str) -> None:
        bid = data[0]
        if self._book().offers.drop(bid):
            self.log(f"bid {bid} ended without a deal; offer dropped")

    def _mediation_started(self, data: tuple[Any, ...], first: str) -> None:
        deal, deadline, disputed = data[:3]
        if not self._ours(first) or self.mediations is None:
            return
        why = "disputed by its client" if disputed else "the revealed roots differ"
        self.log(f"mediation of deal {deal} started ({why}); verdict due by height {deadline}")
        self.mediations.start(deal)

    def _paid(self, data: tuple[Any, ...], first: str) -> None:
        if self._ours(first):
            deal, replica, amount = data[:3]
            self.log(f"paid {amount} Shor for deal {deal} replica {replica}")

    def _fined(self, data: tuple[Any, ...], first: str) -> None:
        if self._ours(first):
            deal, replica, slashed, reason = data[:4]
            why = "wrong result" if reason == 1 else "not delivered"
            self.log(f"fined {slashed} Shor for deal {deal} replica {replica} ({why})")

    def _verdict(self, data: tuple[Any, ...], first: str) -> None:
        deal, kind, root = data[:3]
        if self._book().get(deal) is not None or self._ours(first):
            names = {int(v): v.name.lower().replace("_", " ") for v in market.VerdictKind}
            shown = root.hex()[:16] if isinstance(root, bytes) else "?"
            self.log(f"deal {deal}: verdict {names.get(kind, kind)} (root {shown})")

    def _mediators_changed(self, data: tuple[Any, ...], first: str) -> None:
        """Read the mediator list again at a later head (never per event: anyone may register
        and unregister as often as they like)."""
        if self.config.mediators is None:
            self._mediators_dirty = True


_HANDLERS: dict[str, Callable[[ComputeProvider, tuple[Any, ...], str], None]] = {
    "DealFormed": ComputeProvider._deal_formed,
    "PhaseStarted": ComputeProvider._phase_started,
    "DealTimedOut": ComputeProvider._deal_timed_out,
    "ResultRevealed": ComputeProvider._result_revealed,
    "DealSettled": ComputeProvider._deal_settled,
    "BidCancelled": ComputeProvider._bid_ended,
    "BidExpired": ComputeProvider._bid_ended,
    "MediationStarted": ComputeProvider._mediation_started,
    "ProviderPaid": ComputeProvider._paid,
    "ProviderFined": ComputeProvider._fined,
    "Verdict": ComputeProvider._verdict,
    "MediatorRegistered": ComputeProvider._mediators_changed,
    "MediatorUnregistered": ComputeProvider._mediators_changed,
}
"""What the daemon does on each of the actor's events (data decoded; topic 1 as hex)."""


@functools.cache
def log_filter() -> dict[str, Any]:
    """The logs the daemon reads: the actor's, of the events it handles (:data:`_HANDLERS`)."""
    return {
        "address": str(COMPUTE_MARKET),
        "topics": [sorted(market.event_topic(name).hex() for name in _HANDLERS)],
    }
