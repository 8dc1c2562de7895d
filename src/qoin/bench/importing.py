"""``qoin bench import``: end-to-end block import throughput of the execution client.

Setup (not timed): ``senders`` fresh key pairs are funded at genesis; one setup block reveals every
sender's keys; then ``blocks`` blocks of ``txs_per_block`` transfers (all senders already revealed,
several transactions each, nonces in order) are built on a scratch database, which also computes their
state and receipts roots.

Measured: a fresh execution database imports the encoded blocks — decode, parallel hybrid signature
check on all cores, apply, state root, commit — and the transactions per second are compared with the
rate of *only* verifying the same signatures on all cores, in the same run (three rounds of each,
interleaved; the medians are compared; goal: >= 0.6).
Peak RSS of the process is reported too.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qoin.bench.timing import machine_info, peak_rss_bytes
from qoin.chain.block import Block
from qoin.chain.builder import next_block
from qoin.chain.genesis import Allocation, Genesis
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.transaction import AnyTransaction, sign_transfer
from qoin.crypto.batch import VerifyItem, default_workers, favour_verifier_threads, verify_many
from qoin.crypto.hybrid import HybridKeyPair, generate_keypair
from qoin.execution.state import ExecutionState, PayloadStatus
from qoin.pow.proof import DEFAULT_NBITS, max_target

CHAIN_ID = 9001
ROUNDS = 3
"""Import (into a fresh database) and verify-only are each measured this many times, interleaved;
the medians are compared (one run is a few tenths of a second, and both rates drift by a few %)."""


def bench_genesis(senders: list[HybridKeyPair], network: str = "bench-import") -> Genesis:
    """A genesis that funds ``senders`` evenly; its initial target is the maximum, so blocks
    stamped on schedule (one ``block_time_ms`` apart) are sealed by any single attempt."""
    share, rest = divmod(GENESIS_ALLOCATION, len(senders))
    allocation = tuple(
        Allocation(kp.address, share + (rest if i == 0 else 0)) for i, kp in enumerate(senders)
    )
    return Genesis(
        network=network,
        chain_id=CHAIN_ID,
        timestamp_ms=1_700_000_000_000,
        block_time_ms=10_000,
        asert_halflife_ms=1_200_000,
        max_future_drift_ms=15_000,
        nbits=DEFAULT_NBITS,
        initial_target=max_target(DEFAULT_NBITS),
        allocation=allocation,
    )


def _sign_all(
    jobs: list[tuple[HybridKeyPair, int, bool]], recipient: HybridKeyPair
) -> list[AnyTransaction]:
    def sign(job: tuple[HybridKeyPair, int, bool]) -> AnyTransaction:
        keypair, nonce, reveal = job
        return sign_transfer(
            keypair,
            chain_id=CHAIN_ID,
            nonce=nonce,
            recipient=recipient.address,
            amount=1_000,
            fee=10,
            reveal_keys=reveal,
        )

    with ThreadPoolExecutor(default_workers()) as pool:  # the signing libraries release the GIL
        return list(pool.map(sign, jobs))


def prepare(
    senders: int,
    blocks: int,
    txs_per_block: int,
    workdir: Path,
    sealed: bool = False,
    network: str = "bench-import",
) -> tuple[Genesis, list[bytes]]:
    """Build the workload; return the genesis and the encoded blocks: the setup block revealing
    every sender's keys, then the ``blocks`` measured ones. Each is built by
    :func:`qoin.chain.builder.next_block` on the scratch state (roots filled); with ``sealed`` it
    also carries a proof-of-work (consensus-valid), otherwise placeholders (the execution client
    alone does not check them)."""
    with ThreadPoolExecutor(default_workers()) as pool:
        keys = list(pool.map(lambda _: generate_keypair(), range(senders + 1)))
    miner, funded = keys[0], keys[1:]
    genesis = bench_genesis(funded, network)
    scratch = ExecutionState.open(workdir / "scratch", genesis)
    try:
        block = genesis.block
        reveal = _sign_all([(kp, 0, True) for kp in funded], miner)
        block = next_block(genesis, block.header, miner, reveal, execution=scratch, sealed=sealed)
        if scratch.new_payload(block).status is not PayloadStatus.VALID:
            raise RuntimeError("setup block invalid")
        encoded = [block.encode()]
        per_sender = -(-blocks * txs_per_block // senders)
        jobs = [(kp, nonce, False) for nonce in range(1, per_sender + 1) for kp in funded]
        transfers = _sign_all(jobs[: blocks * txs_per_block], miner)
        for index in range(blocks):
            txs = tuple(transfers[index * txs_per_block : (index + 1) * txs_per_block])
            block = next_block(genesis, block.header, miner, txs, execution=scratch, sealed=sealed)
            if scratch.new_payload(block).status is not PayloadStatus.VALID:
                raise RuntimeError(f"benchmark block {index} invalid")
            encoded.append(block.encode())
    finally:
        scratch.close()
    return genesis, encoded


def _verify_items(state: ExecutionState, encoded: list[bytes]) -> list[VerifyItem]:
    """(keys, signing hash, signature) of every transaction of the measured blocks: what
    verifying them alone takes."""
    items = []
    for raw in encoded:
        for tx in Block.decode(raw).transactions:
            keys = tx.public_keys or state.account(tx.sender).public_keys
            if keys is None:
                raise RuntimeError("a benchmark sender has no revealed keys")
            items.append((keys, tx.signing_hash, tx.signature))
    return items


def run(senders: int = 500, blocks: int = 4, txs_per_block: int = 1_000) -> dict[str, Any]:
    """The import benchmark as one JSON-ready object."""
    favour_verifier_threads()  # as the execution client process does
    with tempfile.TemporaryDirectory(prefix="qoin-bench-import-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        genesis, encoded = prepare(senders, blocks, txs_per_block, workdir)
        setup_s = time.perf_counter() - started
        import_runs: list[float] = []
        verify_runs: list[float] = []
        for round_ in range(ROUNDS):  # import and verify-only interleaved: drift hits both
            state = ExecutionState.open(workdir / f"measured-{round_}", genesis)
            try:
                state.new_payload(Block.decode(encoded[0]))  # the setup block: keys revealed
                ready = _verify_items(state, encoded[1:])
                start = time.perf_counter()
                for raw in encoded[1:]:
                    verdict = state.new_payload(Block.decode(raw))
                    if verdict.status is not PayloadStatus.VALID:
                        raise RuntimeError(f"import failed: {verdict.reason}")
                import_runs.append(time.perf_counter() - start)
                start = time.perf_counter()
                verify_many(ready, executor=state.pool)
                verify_runs.append(time.perf_counter() - start)
            finally:
                state.close()
        import_s = statistics.median(import_runs)
        verify_s = statistics.median(verify_runs)
    transactions = blocks * txs_per_block
    import_rate = transactions / import_s
    verify_rate = len(ready) / verify_s
    return {
        "benchmark": "import",
        "machine": machine_info(),
        "senders": senders,
        "blocks": blocks,
        "transactions": transactions,
        "setup_seconds": round(setup_s, 2),
        "import_seconds": round(import_s, 3),
        "import_tx_per_s": import_rate,
        "verify_only_tx_per_s_all_cores": verify_rate,
        "import_runs_tx_per_s": [transactions / run_s for run_s in import_runs],
        "verify_only_runs_tx_per_s": [len(ready) / run_s for run_s in verify_runs],
        "ratio": import_rate / verify_rate,
        "workers": default_workers(),
        "peak_rss_bytes": peak_rss_bytes(),
        "goals": {"ratio": 0.6},
    }
