"""``qoin bench sampling``: how long the consensus client takes to confirm an execution client's
VALID on a block by account state sampling, against full stateless re-execution, in the same run.

Setup (not timed): the ``qoin bench import`` workload (:func:`qoin.bench.importing.prepare`:
``senders`` funded senders, one setup block revealing their keys, then ``blocks`` blocks of
``txs_per_block`` transfers); a fresh execution client on the genesis serves its engine API (JWT,
random secret) on 127.0.0.1, and every block is imported through it with ``engine_newPayload`` and
``engine_forkchoiceUpdated``, as a consensus client drives it. A block is validated only after the
execution client has executed it, as in :mod:`qoin.consensus.judge`.

Measured, on the consensus side, for every measured block, :data:`ROUNDS` times each (the order of
the two alternating from round to round, a fresh sample every time):

* **sampling**: draw ``samples`` of the touched accounts, ``engine_getProofs``, check the proofs
  against the parent's and the block's state roots and replay each sampled account
  (:func:`qoin.consensus.sampling.check_sample`);
* **stateless**: ``engine_getWitness``, then
  :func:`~qoin.execution.witness.execute_stateless` on a pool of one thread per core, and the roots it
  gives compared with the header's.

Both include the engine call (HTTP, JSON, hex, and the execution client's work to build the answer,
in this same process). Any check that fails raises: nothing is measured on a failing path. Bytes
fetched are the canonical encodings (on the wire they travel as hex in JSON, about twice as much).

``engine_round_trip_ms`` is the median time of a no-op engine call (`engine_forkchoiceUpdated` on
the head).
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qoin.bench.importing import prepare
from qoin.bench.timing import BenchmarkCheckFailed, machine_info, peak_rss_bytes
from qoin.chain.block import Block
from qoin.consensus.engine import EngineClient, SampleAnswer
from qoin.consensus.sampling import DEFAULT_SAMPLES, MAX_SAMPLES, check_sample, draw_sample
from qoin.crypto.address import ADDRESS_SIZE
from qoin.crypto.batch import default_workers, favour_verifier_threads
from qoin.execution.client import ExecutionClient
from qoin.execution.state import ExecutionState
from qoin.execution.transition import touched_addresses
from qoin.execution.witness import execute_stateless
from qoin.rpc.jwt import SECRET_SIZE
from qoin.rpc.serve import BackgroundServer

ROUNDS = 3
"""Times each measured block is validated by each path."""
ROUND_TRIPS = 20
"""No-op engine calls timed for ``engine_round_trip_ms``."""
ROOT_SIZE = 32


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
            "median_ms": statistics.median(self.total_s) * 1e3,
            "fetch_mean_ms": fetch_s * 1e3,
            "local_mean_ms": (mean_s - fetch_s) * 1e3,
            "per_block_mean_ms": per_block,
            "bytes_fetched_mean": statistics.fmean(self.fetched_bytes),
            "bytes_fetched_max": max(self.fetched_bytes),
        }


def _answer_size(answer: SampleAnswer) -> int:
    """Encoded size of a proofs answer: both roots, then each address and its four proofs."""
    return 2 * ROOT_SIZE + sum(
        ADDRESS_SIZE
        + sum(len(proof.encode()) for proof in (p.pre, p.post, p.pre_keys, p.post_keys))
        for p in answer.proofs.values()
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
    engine: EngineClient, parent_root: bytes, block: Block, samples: int, path: _Path
) -> int:
    """Validate ``block`` by sampling; record the time; return the number of accounts sampled."""
    start = time.perf_counter()
    chosen = draw_sample(touched_addresses(block), samples)
    asked = time.perf_counter()
    answer = engine.get_proofs(block.block_hash, chosen)
    answered = time.perf_counter()
    if answer.parent_root != parent_root or answer.state_root != block.header.state_root:
        raise BenchmarkCheckFailed(f"block {block.header.height}: proofs answer claims other roots")
    check_sample(parent_root, block, chosen, answer.proofs)  # raises SampleFailed
    done = time.perf_counter()
    path.add(done - start, answered - asked, _answer_size(answer))
    return len(chosen)


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
    if not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be between 1 and {MAX_SAMPLES}")
    favour_verifier_threads()  # as the consensus client process does (stateless re-execution)
    sampling, stateless = _Path(), _Path()
    sampled: list[int] = []
    with tempfile.TemporaryDirectory(prefix="qoin-bench-sampling-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        genesis, encoded = prepare(senders, blocks, txs_per_block, workdir)
        setup_s = time.perf_counter() - started
        chain = [Block.decode(raw) for raw in encoded]  # the setup block, then the measured ones
        # The parent of the first measured block is the setup block (never the genesis: its
        # header's state_root is a commitment, not the state tree's root).
        parent_roots = [block.header.state_root for block in chain[:-1]]
        measured = chain[1:]
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
                    for round_index in range(ROUNDS):
                        for parent_root, block in zip(parent_roots, measured, strict=True):
                            if round_index % 2 == 0:
                                sampled.append(
                                    _by_sampling(engine, parent_root, block, samples, sampling)
                                )
                                _by_stateless(engine, parent_root, block, pool, stateless)
                            else:
                                _by_stateless(engine, parent_root, block, pool, stateless)
                                sampled.append(
                                    _by_sampling(engine, parent_root, block, samples, sampling)
                                )
                finally:
                    engine.close()
        finally:
            state.close()
    sampling_report = sampling.report(blocks)
    stateless_report = stateless.report(blocks)
    return {
        "benchmark": "sampling",
        "machine": machine_info(),
        "senders": senders,
        "blocks": blocks,
        "transactions": blocks * txs_per_block,
        "transactions_per_block": txs_per_block,
        "touched_accounts_per_block": statistics.fmean(
            len(touched_addresses(block)) for block in measured
        ),
        "samples": samples,
        "sampled_accounts_per_block": statistics.fmean(sampled),
        "rounds": ROUNDS,
        "setup_seconds": round(setup_s, 2),
        "engine_import_seconds": round(import_s, 3),
        "engine_round_trip_ms": round_trip_ms,
        "sampling": sampling_report,
        "stateless": stateless_report,
        "ratio": stateless_report["mean_ms"] / sampling_report["mean_ms"],
        "ratio_min": stateless_report["min_ms"] / sampling_report["min_ms"],
        "bytes_ratio": stateless_report["bytes_fetched_mean"]
        / sampling_report["bytes_fetched_mean"],
        "workers": default_workers(),
        "peak_rss_bytes": peak_rss_bytes(),
    }
