"""``qoin bench ai``: what training a model through the markets costs over the same training run
directly on the machine, measured in one run (figures in docs/benchmarks.md, "AI jobs").

The training is the AI job program's (``python -m qoin_ai_job train``) in the runtime given
(``--runtime``, default :func:`qoin.ai.runtime.default_dir`), with the AI client's defaults
(learning rate, batch) and one thread (the job asks for one CPU):

1. **The dataset**: ``sklearn:digits`` for ``mlp`` and ``cnn``, for ``charlm`` a text generated
   here from a fixed seed (:func:`generated_text`); prepared into a dataset file once before the
   network starts (:func:`qoin.ai.jobs.prepare_file`), and through ``qoin ai prepare``'s flow
   (:func:`qoin.ai.jobs.prepare`: stored encrypted, recorded in the client's catalog) once it runs;
   both files must have the same header and size.
2. **Calibration** (:func:`calibrate`): the direct run with 2 epochs, then with more until its
   epochs take a tenth of ``seconds`` (0.5 to 6 s); the seconds of one epoch (from the arrival of
   the first epoch's line on the program's stdout to the last's) and the fixed part (Python,
   PyTorch's import, the dataset's load, writing the model: the rest of the wall time) give the
   epochs for a direct run of ``seconds`` (at most the client's
   :data:`qoin.ai.client.MAX_EPOCHS`).
3. **Direct** (:func:`run_direct`): the job's command line, its paths changed to local ones, run
   with the runtime's Python (``RUNTIME/bin/python -m qoin_ai_job train ... --threads 1 --out
   DIR``) through :mod:`qoin.process`: its wall time, its CPU time, the program's training time.
4. **Network, verification none** (:func:`network_train`): on the compute benchmark's live network
   (:class:`qoin.bench.compute_live.ComputeNetwork`: a mining node with a block every ~0.1 s, two
   storage daemons, a mediator and two compute providers, all given the runtime; no cheater), the
   whole ``qoin ai train`` flow in this process, as the user waits for it
   (:func:`qoin.ai.jobs.check_train`, ``plan``, ``train_job``, ``check_market``, ``train``) on
   the first provider: from reading the dataset's header and the providers' runtimes to the model
   saved locally, verified against the revealed root, stored in the storage market and recorded in
   the catalog. Its wall time is split into **match** (the checks and the providers' runtimes;
   ranking the book and the bid; the acceptances and the deal transaction), the provider's
   **staging**, **sandbox start** (the sandbox, then the job's Python with PyTorch's import and
   the dataset's load: the job's run less the training the program reports on stderr),
   **run** (that training), **hashing** (the provider's ``GET /jobs/{deal}`` timings),
   **settlement** (commit, reveal, settlement), **outputs** (from the settlement to the outputs
   fetched and verified) and **model store** (storing the model, the user's lasting copy, and
   recording it). The overhead is (network - direct) / direct, judged against
   :data:`OVERHEAD_GOAL`, with the model store and without it.
5. **Network, verification replicated**: the same on both providers; what the verification adds
   over 4., and whether both revealed roots are equal.
6. **Throughput and results**: samples per second (training samples x epochs / seconds of the
   program's training; also over the direct wall time and the job's whole run) directly and in each
   job; the final loss, test loss and accuracy of every run; whether the direct run's model file
   is byte for byte the network's (same runtime, same arguments: it must be).

Every process is stopped when the benchmark ends, fails or is interrupted (SIGINT or SIGTERM stop
the current wait). PyTorch is never imported here: the runtime's Python runs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import httpx

from qoin.ai import jobs, runtime
from qoin.ai.client import (
    ARCHS,
    DATA_PATH,
    DEFAULT_BATCH,
    DEFAULT_LR,
    MAX_EPOCHS,
    MODEL_FILE,
    OUT_PATH,
    RUNTIME_PATH,
    Resources,
    TrainOptions,
    train_command,
)
from qoin.ai.output import parse_event
from qoin.ai.runtime import RuntimeInfo
from qoin.bench.compute import MachineClock, children_cpu, machine_lines
from qoin.bench.compute_live import (
    HONEST,
    HTTP_S,
    MEDIATORS,
    POLL_S,
    STORAGE_PROVIDERS,
    ComputeNetwork,
    Timeline,
    final_state,
)
from qoin.bench.storage_live import BLOCK_INTERVAL_MS, DURATION, BenchmarkInterrupted
from qoin.bench.timing import BenchmarkCheckFailed, machine_info, peak_rss_bytes
from qoin.compute.client import JobState, MarketOptions, ProviderApi
from qoin.compute.jobspec import Verification
from qoin.compute.params import DEVNET
from qoin.crypto.address import Address
from qoin.node.devnet_compute import MEMORY, ComputeProviders
from qoin.process import Child, Output, stop_on_signals

DEFAULT_SECONDS: Final = 60.0
"""Wall seconds of the direct run (the issue's figure)."""
DEFAULT_ARCH: Final = "mlp"
OVERHEAD_GOAL: Final = 0.30
"""Goal: (network - direct) / direct at most this."""
DIGITS: Final = "sklearn:digits"
TEXT_BYTES: Final = 48 * 1024
"""Bytes of the generated text ``charlm`` learns."""
SEED: Final = 0
THREADS: Final = 1
"""The job's CPUs and the program's threads, directly and in the job."""
JOB_MEMORY: Final = 1 << 30
"""Memory every job asks for: what a devnet compute provider offers."""
PROBE_FRACTION: Final = 0.1
"""The last calibration run's epochs take about this fraction of ``seconds``..."""
PROBE_MIN_S: Final = 0.5
PROBE_MAX_S: Final = 6.0
"""... but not less nor more than these seconds."""
MAX_PROBES: Final = 5
"""Direct runs the calibration makes at most: 2 epochs, then more until the epochs after the first
take longer than the above (from the arrival of the first epoch's line to the last's), the
epochs multiplied by at most :data:`PROBE_GROWTH` each time."""
PROBE_GROWTH: Final = 16
PROBE_MARGIN: Final = 1.2
STDERR_TAIL: Final = 64 * 1024
"""Bytes of a job's live stderr kept (its last line says how long it trained)."""
TRAINED: Final = re.compile(r"trained in ([0-9]+(?:\.[0-9]+)?) s")


def job_timeout(seconds: float) -> int:
    """The timeout every job asks for: far above what the training takes on a busy machine."""
    return min(DEVNET.max_timeout, 120 + math.ceil(6 * seconds))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def trained_seconds(stderr: str) -> float | None:
    """The training seconds the job program reported last on its stderr (None: it did not)."""
    found = TRAINED.findall(stderr)
    return float(found[-1]) if found else None


def per_second(samples: int, epochs: int, seconds: float | None) -> float | None:
    """Training samples per second (None without a positive time)."""
    if seconds is None or seconds <= 0:
        return None
    return samples * epochs / seconds


# -- the dataset ----------------------------------------------------------------------------------

WORDS: Final = (
    "the quick brown fox jumps over a lazy dog while small birds sing in warm morning light "
    "and old trees move slowly as rivers run past quiet hills under grey clouds before rain"
)
"""The words the generated text is made of."""


def generated_text(size: int = TEXT_BYTES, seed: int = SEED) -> str:
    """``size`` characters of sentences of common words drawn with ``seed`` (the same text on
    every machine)."""
    draw = random.Random(seed)
    words = WORDS.split()
    parts: list[str] = []
    length = 0
    while length < size:
        chosen = [draw.choice(words) for _ in range(draw.randint(4, 12))]
        sentence = " ".join(chosen).capitalize() + ". "
        parts.append(sentence)
        length += len(sentence)
    return "".join(parts)[:size]


def dataset_source(arch: str, scratch: Path) -> str:
    """What ``qoin ai prepare`` is given for ``arch``'s dataset."""
    if arch == "charlm":
        path = scratch / "text.txt"
        path.write_text(generated_text(), encoding="utf-8")
        return str(path)
    return DIGITS


@dataclass(frozen=True)
class LocalDataset:
    """The dataset file the direct runs train on."""

    source: str
    path: Path
    meta: dict[str, Any]
    samples: int
    test: int
    size: int


def prepare_local(source: str, scratch: Path) -> LocalDataset:
    """``source`` prepared as ``qoin ai prepare`` does it, into ``scratch``."""
    folder = scratch / "dataset"
    folder.mkdir()
    path, meta, samples, test = jobs.prepare_file(source, None, 0.2, SEED, folder)
    return LocalDataset(source, path, meta, samples, test, path.stat().st_size)


# -- direct runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectRun:
    """One run of the job program directly."""

    epochs: int
    wall_s: float
    cpu_s: float
    train_s: float | None
    """The program's own training time (its stderr)."""
    events: list[dict[str, Any]]
    epoch_at: list[float]
    """When each epoch's line came, in seconds after the program was started."""
    model: Path

    def event(self, name: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("event") == name:
                return event
        raise BenchmarkCheckFailed(f"the direct run printed no {name} event")


def training(arch: str, epochs: int) -> TrainOptions:
    """The training's options: the client's defaults, :data:`SEED` (``data``: a placeholder CID,
    the stored dataset's once there is one)."""
    return TrainOptions(
        arch=arch, data="00" * 32, epochs=epochs, lr=DEFAULT_LR, batch=DEFAULT_BATCH, seed=SEED
    )


def resources(timeout: int, verification: Verification = Verification.NONE) -> Resources:
    """The job's resources: :data:`THREADS` CPUs, :data:`JOB_MEMORY`, on the CPU."""
    return Resources(cpus=THREADS, memory=JOB_MEMORY, timeout=timeout, verification=verification)


def direct_command(info: RuntimeInfo, options: TrainOptions, data: Path, out: Path) -> list[str]:
    """The job's command line with the runtime's Python, the dataset and the outputs here."""
    places = {RUNTIME_PATH: str(info.python_path), DATA_PATH: str(data), OUT_PATH: str(out)}
    return [places.get(arg, arg) for arg in train_command(options, resources(0))]


def run_direct(
    info: RuntimeInfo,
    arch: str,
    epochs: int,
    data: Path,
    out: Path,
    timeout: float,
    cancel: threading.Event,
) -> DirectRun:
    """Train ``epochs`` epochs directly (the job's arguments), into ``out``; it must exit 0."""
    argv = direct_command(info, training(arch, epochs), data, out)
    cpu = children_cpu()
    started = time.perf_counter()
    child = Child.spawn("direct training", argv, Output(split=True))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                child.proc.wait(POLL_S)
                break
            except subprocess.TimeoutExpired:
                if cancel.is_set():
                    raise BenchmarkInterrupted(
                        "interrupted: every process started was stopped"
                    ) from None
                if time.monotonic() > deadline:
                    raise BenchmarkCheckFailed(
                        f"the direct training ran over {timeout:.0f} s{child.last_output()}"
                    ) from None
        wall = time.perf_counter() - started
    finally:
        code = child.stop()
    spent = children_cpu() - cpu
    if code != 0:
        raise BenchmarkCheckFailed(f"the direct training exited {code}{child.last_output()}")
    events: list[dict[str, Any]] = []
    epoch_at: list[float] = []
    for line in child.collect():
        event = None if line.stderr else parse_event(line.text.encode())
        if event is not None:
            events.append(event)
            if event["event"] == "epoch":
                epoch_at.append(line.at - started)
    stderr = "\n".join(line.text for line in child.seen if line.stderr)
    model = out / MODEL_FILE
    if len(epoch_at) != epochs or not model.is_file():
        raise BenchmarkCheckFailed(
            f"the direct training printed {len(epoch_at)} of {epochs} epochs, or left no {model}"
        )
    return DirectRun(epochs, wall, spent, trained_seconds(stderr), events, epoch_at, model)


@dataclass(frozen=True)
class Calibration:
    """The epochs chosen for a direct run of ``seconds`` and what they were chosen from."""

    epochs: int
    capped: bool
    per_epoch_s: float
    fixed_s: float
    probes: list[DirectRun]

    def to_json(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "capped_at_max_epochs": self.capped,
            "per_epoch_s": self.per_epoch_s,
            "fixed_s": self.fixed_s,
            "probes": [
                {
                    "epochs": p.epochs,
                    "wall_s": p.wall_s,
                    "train_s": p.train_s,
                    "epochs_span_s": p.epoch_at[-1] - p.epoch_at[0],
                }
                for p in self.probes
            ],
        }


def calibrate(
    info: RuntimeInfo,
    arch: str,
    seconds: float,
    data: Path,
    scratch: Path,
    cancel: threading.Event,
    say: Callable[[str], None],
) -> Calibration:
    """The epochs for a direct run of about ``seconds`` of wall time (module docstring, 2.)."""
    timeout = job_timeout(seconds)
    target = min(max(PROBE_FRACTION * seconds, PROBE_MIN_S), PROBE_MAX_S)
    probes: list[DirectRun] = []
    count = 2
    while True:
        say(f"calibrating: the {arch} training directly, {count} epochs")
        probe = run_direct(info, arch, count, data, scratch / f"probe-{count}", timeout, cancel)
        probes.append(probe)
        span = probe.epoch_at[-1] - probe.epoch_at[0]  # count - 1 epochs
        if span >= target or count >= MAX_EPOCHS or len(probes) >= MAX_PROBES:
            break
        wanted = PROBE_GROWTH * count
        if span > 0:
            wanted = 1 + math.ceil(PROBE_MARGIN * target * (count - 1) / span)
        count = min(MAX_EPOCHS, max(count + 1, min(wanted, PROBE_GROWTH * count)))
    per_epoch = span / (count - 1) if span > 0 else probe.wall_s / count
    fixed = max(probe.wall_s - count * per_epoch, 0.0)
    epochs = max(1, round((seconds - fixed) / per_epoch))
    return Calibration(min(epochs, MAX_EPOCHS), epochs > MAX_EPOCHS, per_epoch, fixed, probes)


def direct_json(run: DirectRun) -> dict[str, Any]:
    """What the direct run reports."""
    start, done = run.event("start"), run.event("done")
    samples = int(start["train"])
    return {
        "epochs": run.epochs,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "train_s": run.train_s,
        "program_start_s": None if run.train_s is None else run.wall_s - run.train_s,
        "train_samples": samples,
        "samples_per_s": per_second(samples, run.epochs, run.train_s),
        "samples_per_s_wall": per_second(samples, run.epochs, run.wall_s),
        "loss": done.get("loss"),
        "testLoss": done.get("testLoss"),
        "accuracy": done.get("accuracy"),
        "model_bytes": run.model.stat().st_size,
        "model_sha256": sha256_file(run.model),
    }


# -- the network ----------------------------------------------------------------------------------


class AiNetwork(ComputeNetwork):
    """The compute benchmark's network (:class:`ComputeNetwork`) with no cheater, every compute
    daemon given the runtime at ``runtime_dir``; a context manager."""

    cheater_count = 0

    def __init__(
        self,
        root: Path,
        say: Callable[[str], None],
        cancel: threading.Event,
        runtime_dir: Path,
    ) -> None:
        super().__init__(root, say, cancel)
        self.genesis = replace(self.genesis, network="bench-ai")
        self.compute = ComputeProviders(root, HONEST, MEDIATORS, runtime_dir)
        self.home = root / "client-home"
        """The client's qoin home (its AI catalog, its job records)."""

    def context(self, watcher: Timeline) -> jobs.Context:
        """The AI client's context: the funded key, this network, ``watcher``."""
        return jobs.Context(self.url, self.keypair, self.home, watcher)


@dataclass
class JobTimeline(Timeline):
    """A :class:`Timeline` that keeps the last :data:`STDERR_TAIL` bytes of the job's live
    stderr."""

    stderr: bytearray = field(default_factory=bytearray)

    def output(self, stream: str, data: bytes) -> None:
        super().output(stream, data)
        if stream == "stderr":
            self.stderr += data
            del self.stderr[:-STDERR_TAIL]

    def at(self, phase: str, *words: str) -> float:
        """When the first message of ``phase`` holding ``words`` came;
        :class:`BenchmarkCheckFailed` if none did."""
        found = self.first(phase, *words)
        if found is None:
            raise BenchmarkCheckFailed(f"the client said no {phase} message with {words}")
        return found


@dataclass(frozen=True)
class NetworkRun:
    """One ``qoin ai train`` flow through the markets, and what was noted on the way."""

    trained: jobs.Trained
    timeline: JobTimeline
    started: float
    ended: float
    states: list[JobState | None]
    """Each replica's state once its outputs are stored (None: its provider did not say)."""


def provider_states(
    network: AiNetwork, deal: int, providers: tuple[Address, ...]
) -> list[JobState | None]:
    """Each replica's job state once its outputs are stored
    (:func:`~qoin.bench.compute_live.final_state`)."""
    with httpx.Client(timeout=httpx.Timeout(HTTP_S, connect=10.0)) as http:
        return [
            final_state(
                network,
                ProviderApi(http, network.keypair, provider, network.node_of(provider).endpoint),
                deal,
            )
            for provider in providers
        ]


def network_train(
    network: AiNetwork,
    options: TrainOptions,
    resources: Resources,
    chosen: tuple[Address, ...],
    name: str,
) -> NetworkRun:
    """The whole ``qoin ai train`` flow on ``chosen`` (module docstring, 4.)."""
    timeline = JobTimeline()
    ctx = network.context(timeline)
    market = MarketOptions(providers=chosen)
    marks: dict[str, float] = {}

    def flow() -> jobs.Trained:
        marks["start"] = time.monotonic()
        jobs.check_train(ctx, options)
        planned = jobs.plan(ctx, resources, market)
        job = jobs.train_job(ctx, options, resources, planned)
        jobs.check_market(ctx, job, market)
        trained = jobs.train(
            ctx, options, resources, job, market, network.out_dir(),
            lambda _deal: network.out_dir(), DURATION, name,
        )  # fmt: skip
        marks["end"] = time.monotonic()
        return trained

    trained = network.in_thread(flow)
    states = provider_states(network, trained.deal, trained.outcome.story.providers)
    return NetworkRun(trained, timeline, marks["start"], marks["end"], states)


def network_json(run: NetworkRun, direct: Mapping[str, Any]) -> dict[str, Any]:
    """What a run through the markets reports: the phases (module docstring, 4.), the provider's
    timings, throughput, results."""
    timeline, trained = run.timeline, run.trained
    book = timeline.at("match", "reading the book")
    bid = timeline.at("match", "bid", "placed")
    formed = timeline.at("match", " formed: ")
    settled = timeline.at("settle", "settled")
    storing = timeline.at("store", "storing the model")
    state = run.states[0]
    timings = {} if state is None else state.timings
    provider = {key: timings.get(key, 0.0) for key in ("stage", "pull", "start", "run", "hash")}
    train_s = trained_seconds(timeline.stderr.decode("utf-8", "replace"))
    program_start = 0.0 if train_s is None else max(provider["run"] - train_s, 0.0)
    run_s = provider["run"] - program_start
    total = run.ended - run.started
    phases = {
        "match": formed - run.started,
        "staging": provider["stage"] + provider["pull"],
        "sandbox_start": provider["start"] + program_start,
        "run": run_s,
        "hashing": provider["hash"],
        "settlement": settled - formed - sum(provider.values()),
        "outputs": storing - settled,
        "model_store": run.ended - storing,
    }
    until_saved = total - phases["model_store"]
    direct_s = float(direct["wall_s"])
    epochs = int(direct["epochs"])
    samples = int(direct["train_samples"])
    story = trained.outcome.story
    cpu = [None if s is None else s.raw.get("cpu_seconds") for s in run.states]
    return {
        "deal": trained.deal,
        "verification": trained.verification.name.lower(),
        "providers": [str(p) for p in story.providers],
        "total_s": total,
        "until_saved_s": until_saved,
        "direct_s": direct_s,
        "overhead_s": total - direct_s,
        "overhead": (total - direct_s) / direct_s,
        "overhead_until_saved": (until_saved - direct_s) / direct_s,
        "phases_s": phases,
        "match_s": {
            "check_and_runtimes": book - run.started,
            "rank_and_bid": bid - book,
            "acceptances_and_deal": formed - bid,
        },
        "provider_s": {**provider, "upload": timings.get("upload")},
        "program_start_s": None if train_s is None else program_start,
        "train_s": train_s,
        "job_cpu_s": cpu,
        "samples_per_s": per_second(samples, epochs, train_s),
        "samples_per_s_run": per_second(samples, epochs, provider["run"]),
        "loss": trained.metrics.get("loss"),
        "testLoss": trained.metrics.get("testLoss"),
        "accuracy": trained.metrics.get("accuracy"),
        "model": trained.cid,
        "model_bytes": trained.file.stat().st_size,
        "model_sha256": sha256_file(trained.file),
        "model_storage_deal": trained.stored.deal,
        "roots": {str(r): root.hex() for r, (root, _, _) in sorted(story.revealed.items())},
        "blocks_formed_to_settled": (
            None
            if story.formed_height is None or story.settled_height is None
            else story.settled_height - story.formed_height
        ),
        "cost": None if trained.outcome.cost is None else trained.outcome.cost.to_json(),
    }


def check_dataset(local: LocalDataset, stored: jobs.Prepared) -> None:
    """:class:`BenchmarkCheckFailed` unless the stored dataset is the direct runs' file."""
    if stored.meta != local.meta or stored.size != local.size:
        raise BenchmarkCheckFailed(
            f"the stored dataset ({stored.size} bytes) is not the direct runs' ({local.size} "
            "bytes): preparing it is not deterministic"
        )


def measure_network(
    network: AiNetwork,
    local: LocalDataset,
    arch: str,
    epochs: int,
    timeout: int,
    direct: Mapping[str, Any],
) -> dict[str, Any]:
    """The dataset stored, then the training with verification none on the first provider and
    replicated on both (module docstring, 1., 4. and 5.)."""
    say = network.say
    say(f"storing the dataset ({local.source}) as qoin ai prepare does")
    ctx = network.context(JobTimeline())
    stored = network.in_thread(lambda: jobs.prepare(ctx, local.source, None, 0.2, SEED, DURATION))
    check_dataset(local, stored)
    options = replace(training(arch, epochs), data=stored.cid)
    honest = [Address.from_text(node.address) for node in network.honest]
    runs: dict[str, Any] = {}
    for mode, chosen in (("none", honest[:1]), ("replicated", honest[:2])):
        say(f"network: the {arch} training, {epochs} epoch(s), verification {mode}")
        verification = Verification.NONE if mode == "none" else Verification.REPLICATED
        chosen_resources = resources(timeout, verification)
        run = network_train(network, options, chosen_resources, tuple(chosen), f"bench-{mode}")
        runs[mode] = network_json(run, direct)
    return {
        "dataset": {
            "cid": stored.cid,
            "bytes": stored.size,
            "samples": stored.samples,
            "test": stored.test,
            "storage_deal": stored.stored.deal,
        },
        "runs": runs,
    }


# -- the whole benchmark --------------------------------------------------------------------------


def summary(direct: Mapping[str, Any], runs: Mapping[str, Any]) -> dict[str, Any]:
    """The overhead against the goal, what verification adds, whether every model is the same."""
    none, replicated = runs["none"], runs["replicated"]
    roots = set(replicated["roots"].values())
    models = {direct["model_sha256"], none["model_sha256"], replicated["model_sha256"]}
    return {
        "overhead": {
            "ratio": none["overhead"],
            "ratio_until_saved": none["overhead_until_saved"],
            "goal": OVERHEAD_GOAL,
            "goal_met": none["overhead"] <= OVERHEAD_GOAL,
            "goal_met_until_saved": none["overhead_until_saved"] <= OVERHEAD_GOAL,
        },
        "verification": {
            "adds_s": replicated["total_s"] - none["total_s"],
            "ratio": replicated["total_s"] / none["total_s"],
            "roots_equal": len(replicated["roots"]) == 2 and len(roots) == 1,
            "root_equals_none": roots == set(none["roots"].values()),
        },
        "models_identical": len(models) == 1,
    }


@contextlib.contextmanager
def scratch_dir(workdir: Path | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="qoin-bench-ai-", dir=workdir) as tmp:
        yield Path(tmp)


def run(
    seconds: float = DEFAULT_SECONDS,
    arch: str = DEFAULT_ARCH,
    runtime_dir: Path | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark (module docstring) as one JSON-ready dict. Must run on the main
    thread (it handles SIGINT and SIGTERM)."""
    if arch not in ARCHS:
        raise BenchmarkCheckFailed(f"the arch is one of {', '.join(ARCHS)}, not {arch!r}")
    if not seconds > 0:
        raise BenchmarkCheckFailed(f"seconds is above 0, not {seconds!r}")
    say = progress or (lambda _message: None)
    info = runtime.load(runtime_dir if runtime_dir is not None else runtime.default_dir())
    began = MachineClock.now()
    timeout = job_timeout(seconds)
    cancel = threading.Event()
    with scratch_dir(workdir) as scratch, stop_on_signals(cancel.set):
        say(f"preparing the dataset ({arch}) in {scratch}")
        source = dataset_source(arch, scratch)
        local = prepare_local(source, scratch)
        calibration = calibrate(info, arch, seconds, local.path, scratch, cancel, say)
        epochs = calibration.epochs
        say(f"direct: the {arch} training, {epochs} epoch(s)")
        done = run_direct(info, arch, epochs, local.path, scratch / "direct", timeout, cancel)
        direct = direct_json(done)
        (scratch / "network").mkdir()
        network = AiNetwork(scratch / "network", say, cancel, info.path)
        with network:
            live = measure_network(network, local, arch, epochs, timeout, direct)
    if cancel.is_set():
        raise BenchmarkInterrupted("interrupted: every process started was stopped")
    return {
        "benchmark": "ai",
        "machine": machine_info(),
        "parameters": {
            "seconds": seconds,
            "arch": arch,
            "dataset": source if source == DIGITS else f"generated text ({TEXT_BYTES} bytes)",
            "epochs": epochs,
            "lr": DEFAULT_LR,
            "batch": DEFAULT_BATCH,
            "seed": SEED,
            "threads": THREADS,
            "job_cpus": THREADS,
            "job_memory": JOB_MEMORY,
            "provider_memory": MEMORY,
            "job_timeout_s": timeout,
            "block_interval_ms": BLOCK_INTERVAL_MS,
            "storage_providers": STORAGE_PROVIDERS,
            "compute_providers": HONEST,
            "mediators": MEDIATORS,
            "runtime": {
                "ref": info.ref,
                "torch": info.torch,
                "python": info.python,
                "cpu_capability": info.cpu_capability,
                "path": str(info.path),
            },
        },
        "calibration": calibration.to_json(),
        "dataset": {
            **live["dataset"],
            "local_bytes": local.size,
            "task": local.meta.get("task"),
        },
        "direct": direct,
        "network": live["runs"],
        **summary(direct, live["runs"]),
        "machine_during_run": MachineClock.now().since(began),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{digits}g}"


def table(report: Mapping[str, Any]) -> str:
    """The report as a few human-readable lines."""
    params, direct = report["parameters"], report["direct"]
    lines = [
        f"{params['arch']} on {params['dataset']}, {params['epochs']} epoch(s), 1 thread; "
        f"runtime {params['runtime']['ref']} (torch {params['runtime']['torch']})",
        f"direct: {direct['wall_s']:.2f} s ({direct['cpu_s']:.2f} CPU-s; training "
        f"{_number(direct['train_s'])} s), {_number(direct['samples_per_s'])} samples/s; loss "
        f"{_number(direct['loss'])}, test loss {_number(direct['testLoss'])}, accuracy "
        f"{_number(direct['accuracy'])}",
    ]
    for mode, run in report["network"].items():
        split = ", ".join(f"{k} {v:.2f}" for k, v in run["phases_s"].items())
        lines.append(
            f"network, verify {mode}: {run['total_s']:.2f} s (overhead {run['overhead']:+.1%}; "
            f"{run['until_saved_s']:.2f} s until saved, {run['overhead_until_saved']:+.1%}): "
            f"{split}; {_number(run['samples_per_s'])} samples/s; loss {_number(run['loss'])}, "
            f"accuracy {_number(run['accuracy'])}"
        )
    overhead, verification = report["overhead"], report["verification"]
    lines += [
        f"overhead {overhead['ratio']:+.1%} (goal <= {overhead['goal']:.0%}: "
        f"{'met' if overhead['goal_met'] else 'not met'}); until the model is saved "
        f"{overhead['ratio_until_saved']:+.1%}",
        f"replicated adds {verification['adds_s']:.2f} s (x{verification['ratio']:.2f}); roots "
        f"{'equal' if verification['roots_equal'] else 'DIFFER'}; models "
        f"{'identical' if report['models_identical'] else 'DIFFER'} (direct, none, replicated)",
    ]
    lines += machine_lines(report)
    return "\n".join(lines)
