"""``qoin bench sampling``: how long the consensus client takes to confirm an execution client's
VALID on a block by trace sampling, against full stateless re-execution, in the same run.

Setup (not timed): the ``qoin bench import`` workload (:func:`qoin.bench.importing.prepare`:
``senders`` funded senders, one setup block revealing their keys, then ``blocks`` blocks of
``txs_per_block`` transfers); a fresh execution client on the genesis serves its engine API (JWT,
random secret) on 127.0.0.1, and every block is imported through it with ``engine_newPayload`` and
``engine_forkchoiceUpdated``, as a consensus client drives it. A block is validated only after the
execution client has executed it, as in :mod:`qoin.consensus.judge`.

Measured, on the consensus side, for every measured block, :data:`ROUNDS` times each (the order of
the two alternating from round to round, a fresh sample every time):

* **sampling**: ``engine_getTrace`` (the trace summary: every step's keys, each value as a
  reference), check it against the block (:func:`qoin.consensus.sampling.check_trace`), draw
  ``samples`` of the keys it accessed, ``engine_getProofs``, check the proofs against the parent's
  and the block's state roots, walk each sampled key's history, fetch the full records of the steps
  to re-execute (``engine_getSteps``), check them against the summary and re-execute them
  (:func:`qoin.consensus.sampling.check_sample`), as :mod:`qoin.consensus.judge` does;
* **stateless**: ``engine_getWitness``, then
  :func:`~qoin.execution.witness.execute_stateless` on a pool of one thread per core, and the roots it
  gives compared with the header's.

Both include the engine calls (HTTP, JSON, hex, and the execution client's work to build the
answers, in this same process: the witness every time, the trace summary every time too, as for
the first sample of a block, though the client keeps it). Any check that fails raises: nothing is
measured on a failing path. Bytes fetched are the canonical encodings (on the wire they travel as
hex in JSON, about twice as much): for sampling, the trace summary, both roots and each sampled key
with its two proofs, and the step records fetched.

Before measuring, the heap built by the setup is collected and frozen (``gc.freeze``): the two
clients share this process, and a full collection scanning the execution client's state would
otherwise land in some measurements, which a consensus client (another process) does not pay.

``engine_round_trip_ms`` is the median time of a no-op engine call (`engine_forkchoiceUpdated` on
the head). ``ratio`` compares means, ``ratio_median`` medians, ``ratio_worst`` the stateless mean
with the worst sample.
"""

from __future__ import annotations

import gc
import secrets
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qoin.bench.importing import prepare
from qoin.bench.timing import BenchmarkCheckFailed, machine_info, peak_rss_bytes
from qoin.chain.block import Block
from qoin.chain.genesis import Genesis
from qoin.consensus.engine import EngineClient, SampleAnswer
from qoin.consensus.sampling import (
    DEFAULT_SAMPLES,
    MAX_SAMPLES,
    check_sample,
    check_trace,
    draw_sample,
)
from qoin.crypto.batch import default_workers, favour_verifier_threads
from qoin.execution.client import ExecutionClient
from qoin.execution.overlay import StepAccess
from qoin.execution.state import ExecutionState
from qoin.execution.trace import MAX_STEP_RECORDS, encode_step_records
from qoin.execution.witness import execute_stateless
from qoin.rpc.jwt import SECRET_SIZE
from qoin.rpc.serve import BackgroundServer

ROUNDS = 5
"""Times each measured block is validated by each path."""
ROUND_TRIPS = 20
"""No-op engine calls timed for ``engine_round_trip_ms``."""
ROOT_SIZE = 32
KEY_SIZE = 32


@dataclass
class _Path:
    """Measurements of one validation path, one entry per (block, round)."""

    total_s: list[float] = field(default_factory=list)
    fetch_s: list[float] = field(default_factory=list)
    fetched_bytes: list[int] = field(default_factory=list)

    def add(self, total: float, fetch: float, size: int) -> None:
        self.total_s.append(total)
        self.fetch_s.append(fetch)
        self.fetched_bytes.append(size)

    def report(self, blocks: int) -> dict[str, Any]:
        per_block = [statistics.fmean(self.total_s[index::blocks]) * 1e3 for index in range(blocks)]
        mean_s = statistics.fmean(self.total_s)
        fetch_s = statistics.fmean(self.fetch_s)
        return {
            "mean_ms": mean_s * 1e3,
            "min_ms": min(self.total_s) * 1e3,
            "worst_ms": max(self.total_s) * 1e3,
            "median_ms": statistics.median(self.total_s) * 1e3,
            "fetch_mean_ms": fetch_s * 1e3,
            "local_mean_ms": (mean_s - fetch_s) * 1e3,
            "per_block_mean_ms": per_block,
            "bytes_fetched_mean": statistics.fmean(self.fetched_bytes),
            "bytes_fetched_max": max(self.fetched_bytes),
        }


@dataclass
class _Fetched:
    """What one sampling validation fetched, beyond its timing."""

    summary_bytes: int
    """The trace summary's encoding."""
    proof_bytes: int
    """Both roots and each sampled key with its two proofs."""
    record_bytes: int
    """The step records fetched (their ``engine_getSteps`` encodings)."""
    rerun: int
    """Steps re-executed."""
    records: int
    """Step records fetched (the others were carried whole by the summary)."""

    @property
    def total(self) -> int:
        """Bytes fetched in all."""
        return self.summary_bytes + self.proof_bytes + self.record_bytes


def _proof_size(answer: SampleAnswer) -> int:
    """Encoded size of a proofs answer: both roots, then each key with its two proofs."""
    return 2 * ROOT_SIZE + sum(
        KEY_SIZE + len(p.pre.encode()) + len(p.post.encode()) for p in answer.proofs.values()
    )


def _records_size(records: dict[int, StepAccess]) -> int:
    """Encoded size of step records as ``engine_getSteps`` answers carry them."""
    order = sorted(records)
    return sum(
        len(encode_step_records({i: records[i] for i in order[start : start + MAX_STEP_RECORDS]}))
        for start in range(0, len(order), MAX_STEP_RECORDS)
    )


def _import(engine: EngineClient, blocks: list[Block]) -> None:
    """Import ``blocks`` in order through the engine API, each becoming the head."""
    for block in blocks:
        verdict = engine.new_payload(block)
        if verdict.status != "VALID":
            raise BenchmarkCheckFailed(
                f"block {block.header.height} is {verdict.status}: {verdict.reason}"
            )
        engine.forkchoice_updated(block.block_hash)  # raises EngineError unless VALID


def _round_trip_ms(engine: EngineClient, head: bytes) -> float:
    """Median milliseconds of a no-op engine call (forkchoice to the current head)."""
    times = []
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter()
        engine.forkchoice_updated(head)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _by_sampling(
    engine: EngineClient,
    state: ExecutionState,
    parent_root: bytes,
    block: Block,
    samples: int,
    path: _Path,
) -> tuple[int, _Fetched]:
    """Validate ``block`` by sampling; record the time; return the number of keys sampled and what
    was fetched. The execution client builds the trace summary afresh (it would once per block;
    its cached trace is what execution recorded)."""
    block_hash = block.block_hash
    state.trace(block_hash).forget_summary()
    fetched: dict[int, StepAccess] = {}
    fetching: list[float] = []

    def fetch(indexes: Sequence[int]) -> dict[int, StepAccess]:
        began = time.perf_counter()
        records = engine.get_steps(block_hash, indexes)
        fetching.append(time.perf_counter() - began)
        fetched.update(records)
        return records

    start = time.perf_counter()
    summary = engine.get_trace(block_hash)
    traced = time.perf_counter()
    check_trace(block, summary)  # raises SampleFailed
    chosen = draw_sample(summary.keys(), samples)
    asked = time.perf_counter()
    answer = engine.get_proofs(block_hash, chosen)
    answered = time.perf_counter()
    if answer.parent_root != parent_root or answer.state_root != block.header.state_root:
        raise BenchmarkCheckFailed(f"block {block.header.height}: proofs answer claims other roots")
    plan = check_sample(  # raises SampleFailed
        parent_root, block, summary, chosen, answer.proofs, fetch=fetch, checked=True
    )
    done = time.perf_counter()
    got = _Fetched(
        len(summary.encode()), _proof_size(answer), _records_size(fetched), len(plan.rerun),
        len(fetched),
    )  # fmt: skip
    path.add(done - start, (traced - start) + (answered - asked) + sum(fetching), got.total)
    return len(chosen), got


def _by_stateless(
    engine: EngineClient,
    parent_root: bytes,
    block: Block,
    pool: ThreadPoolExecutor,
    path: _Path,
) -> None:
    """Validate ``block`` by stateless re-execution from a fetched witness; record the time."""
    start = time.perf_counter()
    witness = engine.get_witness(block.block_hash)
    answered = time.perf_counter()
    post_root, receipts_root = execute_stateless(parent_root, block, witness, pool)  # or raises
    if post_root != block.header.state_root or receipts_root != block.header.receipts_root:
        raise BenchmarkCheckFailed(f"block {block.header.height}: stateless roots differ")
    done = time.perf_counter()
    path.add(done - start, answered - start, len(witness.encode()))


def run(
    senders: int = 500,
    blocks: int = 4,
    txs_per_block: int = 1_000,
    samples: int = DEFAULT_SAMPLES,
) -> dict[str, Any]:
    """The sampling benchmark as one JSON-ready object."""
    with tempfile.TemporaryDirectory(prefix="qoin-bench-sampling-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        genesis, encoded = prepare(senders, blocks, txs_per_block, workdir)
        setup_s = time.perf_counter() - started
        report = measure(genesis, encoded, 1, samples, workdir)
    return {
        "benchmark": "sampling",
        "machine": machine_info(),
        "senders": senders,
        "blocks": blocks,
        "transactions": blocks * txs_per_block,
        "transactions_per_block": txs_per_block,
        "setup_seconds": round(setup_s, 2),
        **report,
        "workers": default_workers(),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def measure(
    genesis: Genesis, encoded: Sequence[bytes], setup_blocks: int, samples: int, workdir: Path
) -> dict[str, Any]:
    """Import ``encoded`` (the first ``setup_blocks`` of them unmeasured) into a fresh execution
    client served over its engine API, then measure sampling and stateless re-execution of every
    other block (module docstring); also used by ``qoin bench contracts`` on blocks of calls."""
    if not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be between 1 and {MAX_SAMPLES}")
    favour_verifier_threads()  # as the consensus client process does (stateless re-execution)
    sampling, stateless = _Path(), _Path()
    sampled: list[int] = []
    fetched: list[_Fetched] = []
    touched: list[int] = []
    chain = [Block.decode(raw) for raw in encoded]
    # The parent of the first measured block is a setup block (never the genesis: its header's
    # state_root is a commitment, not the state tree's root).
    parent_roots = [block.header.state_root for block in chain[setup_blocks - 1 : -1]]
    measured = chain[setup_blocks:]
    blocks = len(measured)
    secret = secrets.token_bytes(SECRET_SIZE)
    state = ExecutionState.open(workdir / "execution", genesis)
    try:
        server = BackgroundServer(ExecutionClient(state).engine_server(secret).app)
        with server, ThreadPoolExecutor(default_workers(), thread_name_prefix="verify") as pool:
            engine = EngineClient(server.url, secret)
            try:
                started = time.perf_counter()
                _import(engine, chain)
                import_s = time.perf_counter() - started
                round_trip_ms = _round_trip_ms(engine, chain[-1].block_hash)
                touched = [len(engine.get_trace(b.block_hash).keys()) for b in measured]
                # Both clients share this process; in a deployment the execution client's state
                # is another process's heap. Collect the setup's garbage, then freeze what is
                # left, so that a collection inside a measurement does not scan it.
                gc.collect()
                gc.freeze()
                for round_index in range(ROUNDS):
                    for parent_root, block in zip(parent_roots, measured, strict=True):
                        if round_index % 2:
                            _by_stateless(engine, parent_root, block, pool, stateless)
                        keys, got = _by_sampling(
                            engine, state, parent_root, block, samples, sampling
                        )
                        sampled.append(keys)
                        fetched.append(got)
                        if round_index % 2 == 0:
                            _by_stateless(engine, parent_root, block, pool, stateless)
            finally:
                gc.unfreeze()
                engine.close()
    finally:
        state.close()
    sampling_report = sampling.report(blocks)
    stateless_report = stateless.report(blocks)
    return {
        "touched_keys_per_block": statistics.fmean(touched),
        "samples": samples,
        "sampled_keys_per_block": statistics.fmean(sampled),
        "rounds": ROUNDS,
        "engine_import_seconds": round(import_s, 3),
        "engine_round_trip_ms": round_trip_ms,
        "sampling": sampling_report,
        "sampling_fetched": {
            "summary_bytes_mean": statistics.fmean(f.summary_bytes for f in fetched),
            "proof_bytes_mean": statistics.fmean(f.proof_bytes for f in fetched),
            "record_bytes_mean": statistics.fmean(f.record_bytes for f in fetched),
            "steps_reexecuted_mean": statistics.fmean(f.rerun for f in fetched),
            "step_records_fetched_mean": statistics.fmean(f.records for f in fetched),
        },
        "stateless": stateless_report,
        "ratio": stateless_report["mean_ms"] / sampling_report["mean_ms"],
        "ratio_min": stateless_report["min_ms"] / sampling_report["min_ms"],
        "ratio_median": stateless_report["median_ms"] / sampling_report["median_ms"],
        "ratio_worst": stateless_report["mean_ms"] / sampling_report["worst_ms"],
        "bytes_ratio": stateless_report["bytes_fetched_mean"]
        / sampling_report["bytes_fetched_mean"],
    }
