"""``qoin bench storage``: what storing a file and proving it cost, measured in one process.

Setup (not timed): ``size`` random bytes and a scratch directory.

Measured:

1. **Raw SHA3-256** throughput over the same bytes in this run (the baseline: building shard trees
   can never be faster than hashing every shard byte once).
2. **Set-up** of a file as ``qoin storage put`` does it: encryption (:mod:`qoin.storage.crypt`),
   erasure coding into n shards (:mod:`qoin.storage.erasure`), one shard tree per shard and the
   content id (:mod:`qoin.storage.merkle`); seconds per GiB of file on one core (all in this
   process, each stage timed), and on two cores (encryption here, the encrypted file written to
   the scratch directory, then two worker processes each building whole shards from it,
   memory-mapped, stripe by stripe: :func:`~qoin.storage.erasure.shard_stripes` into a
   :class:`~qoin.storage.merkle.ShardTreeBuilder`). The trees of both runs must agree.
3. **Proofs**: shard 0 stored in a provider's shard store (:class:`~qoin.storage.provider.store.
   ShardStore`, in the scratch directory); for ``proofs`` random beacons, the daemon's
   :func:`qoin.storage.provider.prover.prove` (the challenge, the challenged chunks read from the
   shard file, the leaves and paths: milliseconds per proof), then what the actor computes for an
   item besides gas accounting: the challenge from the beacon and
   :func:`~qoin.storage.merkle.verify_proof` (microseconds per proof), and the gas the actor
   charges for it. Every proof must verify.
4. **Chain bytes**: the ABI-encoded ``prove`` item (:func:`qoin.storage.market.proof_item`, what
   the prover sends), and the signed ``prove`` transactions a provider holding
   ``shards_per_provider`` such shards sends per period, batched as the prover batches them
   (:func:`qoin.storage.provider.prover.batches`).

Retrieval throughput and repair time need running daemons: :mod:`qoin.bench.storage_live`;
:func:`run` does both.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from qoin.actors.storage_market import proof_gas
from qoin.bench import storage_live
from qoin.bench.timing import BenchmarkCheckFailed, machine_info, peak_rss_bytes
from qoin.chain.transaction import sign_call
from qoin.crypto.hybrid import generate_keypair
from qoin.execution.abi import encode_call, encode_value
from qoin.execution.account import STORAGE_MARKET_ADDRESS
from qoin.execution.gas import DATA_BYTE_GAS
from qoin.storage import crypt, erasure
from qoin.storage.merkle import (
    ShardTree,
    ShardTreeBuilder,
    challenge_indices,
    challenge_seed,
    content_id,
    proof_hash_count,
    shard_size_for,
    verify_proof,
)
from qoin.storage.provider import prover
from qoin.storage.provider.store import ShardStore

GIB = 1 << 30
"""Bytes per GiB."""
MIB = 1 << 20
"""Bytes per MiB."""
DEFAULT_SIZE = GIB
"""File bytes measured by default (figures are scaled to seconds per GiB)."""
MAX_SIZE = 4 * GIB
"""The largest file this benchmark will hold in memory."""
WORKERS = 2
"""Worker processes of the two-core set-up."""
CHAIN_ID = 1
"""Chain id of the transaction whose size is measured."""
PROVE_GAS = 10_000_000
"""Gas limit written into the measured ``prove`` transactions (only their size matters)."""
DEAL = 1
"""The deal id of the measured shard (its challenges depend on it)."""
HASH_BLOCK = MIB
"""Bytes per update of the raw SHA3-256 measurement."""


def default_workdir() -> Path | None:
    """Where the scratch directory goes by default: ``/dev/shm`` (memory) when it is there and
    writable, else the system's temporary directory (None)."""
    shm = Path("/dev/shm")  # noqa: S108 (a fresh mkdtemp directory is made inside it)
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def _s_per_gib(seconds: float, size: int) -> float:
    return seconds * GIB / size


def sha3_seconds(data: bytes) -> float:
    """Seconds to SHA3-256 ``data`` in :data:`HASH_BLOCK` updates."""
    view = memoryview(data)
    started = time.perf_counter()
    hasher = hashlib.sha3_256()
    for start in range(0, len(view), HASH_BLOCK):
        hasher.update(view[start : start + HASH_BLOCK])
    hasher.digest()
    return time.perf_counter() - started


def shard_tree_encoding(sealed_path: str, n: int, k: int, leaf_size: int, index: int) -> bytes:
    """The tree of shard ``index`` of the encrypted file ``sealed_path`` (memory-mapped), built
    stripe by stripe, encoded: the two-core set-up's worker task."""
    with (
        open(sealed_path, "rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
    ):
        view = memoryview(mapped)
        try:
            builder = ShardTreeBuilder(shard_size_for(len(view), k, leaf_size), leaf_size)
            for stripe in erasure.shard_stripes(view, n, k, leaf_size, index):
                builder.update(stripe)
            return builder.finish().encode()
        finally:
            view.release()


def setup_one_core(
    data: bytes, master: bytes, salt: bytes, n: int, k: int, leaf_size: int
) -> tuple[dict[str, float], list[bytes], list[ShardTree]]:
    """Seconds of each set-up stage in this process, the shards and their trees."""
    started = time.perf_counter()
    sealed = crypt.encrypt(data, master, salt)
    encrypted = time.perf_counter()
    shards = erasure.encode(sealed, n, k, leaf_size)
    coded = time.perf_counter()
    trees = [ShardTree.from_bytes(shard, leaf_size) for shard in shards]
    content_id([tree.root for tree in trees])
    done = time.perf_counter()
    seconds = {
        "encrypt": encrypted - started,
        "erasure": coded - encrypted,
        "trees": done - coded,
        "total": done - started,
    }
    return seconds, shards, trees


def setup_two_cores(
    data: bytes,
    master: bytes,
    salt: bytes,
    n: int,
    k: int,
    leaf_size: int,
    pool: ProcessPoolExecutor,
    scratch: Path,
) -> tuple[float, list[bytes]]:
    """Seconds of the set-up with the shards and their trees built by ``pool`` (one task per
    shard) from the encrypted file written to ``scratch`` (writing it is timed), and the trees'
    encodings."""
    started = time.perf_counter()
    sealed_path = scratch / "sealed"
    sealed_path.write_bytes(crypt.encrypt(data, master, salt))
    futures = [
        pool.submit(shard_tree_encoding, str(sealed_path), n, k, leaf_size, index)
        for index in range(n)
    ]
    encodings = [future.result() for future in futures]
    content_id([ShardTree.decode(encoding).root for encoding in encodings])
    seconds = time.perf_counter() - started
    sealed_path.unlink()
    return seconds, encodings


def measure_proofs(
    store: ShardStore, tree: ShardTree, samples: int, proofs: int, rng: random.Random
) -> tuple[dict[str, Any], prover.Proof]:
    """Proof generation (the daemon's, from ``store``'s shard 0 of :data:`DEAL`, whose tree is
    ``tree``) and the actor's verification times; the last proof."""
    generate: list[float] = []
    verify: list[float] = []
    proof: prover.Proof | None = None
    for period in range(proofs):
        beacon = rng.randbytes(32)
        started = time.perf_counter()
        proof = prover.prove(store, DEAL, 0, beacon, period, samples)
        built = time.perf_counter()
        seed = challenge_seed(beacon, DEAL, 0, period)
        indices = challenge_indices(seed, tree.leaf_count, samples)
        ok = verify_proof(
            tree.root, tree.leaf_count, tree.leaf_size, indices, proof.leaves, proof.paths
        )
        verified = time.perf_counter()
        if not ok:
            raise BenchmarkCheckFailed(f"the proof of period {period} does not verify")
        generate.append(built - started)
        verify.append(verified - built)
    if proof is None:
        raise BenchmarkCheckFailed("proofs is at least 1")
    figures = {
        "count": proofs,
        "generate_ms_mean": statistics.fmean(generate) * 1e3,
        "generate_ms_median": statistics.median(generate) * 1e3,
        "verify_us_mean": statistics.fmean(verify) * 1e6,
        "verify_us_median": statistics.median(verify) * 1e6,
        "hashes_per_verify": proof_hash_count(samples, tree.depth),
        "actor_gas_per_verify": proof_gas(samples, tree.depth, tree.leaf_size),
    }
    return figures, proof


def prove_transaction_bytes(batch: Sequence[prover.Proof], period: int) -> int:
    """Bytes of the signed ``prove`` transaction carrying ``batch`` (keys not revealed: a
    provider's first transaction reveals them once)."""
    data = encode_call("prove", [period, tuple(proof.item() for proof in batch)])
    transaction = sign_call(
        generate_keypair(),
        chain_id=CHAIN_ID,
        nonce=1,
        to=STORAGE_MARKET_ADDRESS,
        data=data,
        gas_limit=PROVE_GAS,
        fee_per_gas=1,
        reveal_keys=False,
    )
    return len(transaction.encode())


def chain_bytes(proof: prover.Proof, shards_per_provider: int, period: int) -> dict[str, Any]:
    """Bytes of proof items and ``prove`` transactions a provider holding ``shards_per_provider``
    shards like ``proof``'s puts on chain per period (batched as the prover batches them)."""
    item_bytes = len(encode_value(proof.item()))
    batches = prover.batches([proof] * shards_per_provider)
    sizes: dict[int, int] = {}  # transaction bytes by batch length (batches differ only so)
    for batch in batches:
        if len(batch) not in sizes:
            sizes[len(batch)] = prove_transaction_bytes(batch, period)
    total = sum(sizes[len(batch)] for batch in batches)
    per_call = len(batches[0])
    return {
        "item_bytes": item_bytes,
        "items_per_transaction": per_call,
        "transaction_bytes": sizes[per_call],
        "transaction_overhead_bytes": sizes[per_call] - per_call * item_bytes,
        "data_gas_per_item": DATA_BYTE_GAS * item_bytes,
        "shards_per_provider": shards_per_provider,
        "transactions_per_provider_per_period": len(batches),
        "bytes_per_provider_per_period": total,
        "bytes_per_proof": total / shards_per_provider,
    }


def measure(
    size: int = DEFAULT_SIZE,
    n: int = 4,
    k: int = 2,
    leaf_size: int = 256,
    samples: int = 8,
    proofs: int = 200,
    shards_per_provider: int = 100,
    rounds: int = 2,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The storage benchmark as one JSON-ready dict (see the module's docstring).

    The set-ups run ``rounds`` times, interleaved, and the fastest of each counts (the figures
    of a shared machine vary from run to run). ``workdir`` holds the scratch directory of shard
    files (:func:`default_workdir` if None); ``progress`` gets a line before each step.
    """
    if not 1 <= size <= MAX_SIZE:
        raise BenchmarkCheckFailed(f"size is 1 byte to {MAX_SIZE} bytes")
    if proofs < 1 or shards_per_provider < 1 or rounds < 1:
        raise BenchmarkCheckFailed("proofs, shards_per_provider and rounds are at least 1")
    say = progress or (lambda _message: None)
    rng = random.Random(size)
    data = os.urandom(size)
    master = rng.randbytes(crypt.KEY_SIZE)
    salt = rng.randbytes(crypt.SALT_SIZE)  # the same for both set-ups: their trees must agree
    with tempfile.TemporaryDirectory(
        prefix="qoin-bench-storage-", dir=workdir or default_workdir()
    ) as scratch:
        shard_dir = Path(scratch)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
            say("starting the worker processes")
            warm = shard_dir / "warm"
            warm.write_bytes(bytes(leaf_size))
            warmed = [
                pool.submit(shard_tree_encoding, str(warm), n, k, leaf_size, index)
                for index in range(WORKERS)
            ]
            for future in warmed:
                future.result()
            say("raw SHA3-256")
            sha3_s = min(sha3_seconds(data) for _ in range(2))
            one: dict[str, float] = {}
            two_s = float("inf")
            for round_ in range(rounds):
                say(f"set-up on one core (round {round_ + 1} of {rounds})")
                figures, shards, trees = setup_one_core(data, master, salt, n, k, leaf_size)
                if not one or figures["total"] < one["total"]:
                    one = figures
                shard_bytes = sum(len(shard) for shard in shards)
                shard_zero = shards[0]
                del shards  # only shard 0 is used again: keep the memory low
                say(f"set-up on {WORKERS} cores (round {round_ + 1} of {rounds})")
                seconds, encodings = setup_two_cores(
                    data, master, salt, n, k, leaf_size, pool, shard_dir
                )
                two_s = min(two_s, seconds)
        if [ShardTree.decode(encoding) for encoding in encodings] != trees:
            raise BenchmarkCheckFailed("the two set-ups built different shard trees")
        say("storing shard 0 in a provider's shard store")
        with ShardStore.open(shard_dir / "provider") as store:
            store.put(DEAL, 0, trees[0].root, shard_zero, leaf_size)
            del shard_zero
            say(f"{proofs} proofs")
            proof_figures, proof = measure_proofs(store, trees[0], samples, proofs, rng)
    say("chain bytes")
    chain = chain_bytes(proof, shards_per_provider, proofs)
    one_s = one["total"]
    return {
        "benchmark": "storage",
        "machine": machine_info(),
        "size_bytes": size,
        "n": n,
        "k": k,
        "leaf_size": leaf_size,
        "samples": samples,
        "rounds": rounds,
        "shard_size": trees[0].shard_size,
        "leaf_count": trees[0].leaf_count,
        "depth": trees[0].depth,
        "sha3": {
            "mb_per_s": size / sha3_s / 1e6,
            "s_per_gib": _s_per_gib(sha3_s, size),
        },
        "setup": {
            "one_core": {
                "seconds": one_s,
                "s_per_gib": _s_per_gib(one_s, size),
                "encrypt_s_per_gib": _s_per_gib(one["encrypt"], size),
                "erasure_s_per_gib": _s_per_gib(one["erasure"], size),
                "trees_s_per_gib": _s_per_gib(one["trees"], size),
            },
            "two_cores": {
                "workers": WORKERS,
                "seconds": two_s,
                "s_per_gib": _s_per_gib(two_s, size),
            },
            "speedup": one_s / two_s,
            "vs_sha3": one_s / sha3_s,
            "vs_sha3_of_shard_bytes": one_s / (sha3_s * shard_bytes / size),
        },
        "proofs": proof_figures,
        "chain": chain,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def run(
    size: int = DEFAULT_SIZE,
    n: int = 4,
    k: int = 2,
    proofs: int = 200,
    shards_per_provider: int = 100,
    rounds: int = 2,
    retrieval_size: int = storage_live.DEFAULT_RETRIEVAL_SIZE,
    repair: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark: :func:`measure`, then the live network's retrieval and (with
    ``repair``) repair figures (:func:`qoin.bench.storage_live.measure_live`, the same
    ``rounds``)."""
    report = measure(
        size=size,
        n=n,
        k=k,
        proofs=proofs,
        shards_per_provider=shards_per_provider,
        rounds=rounds,
        progress=progress,
    )
    live = storage_live.measure_live(retrieval_size, rounds, repair, progress=progress)
    del report["peak_rss_bytes"]  # measured again at the end
    return {**report, **live, "peak_rss_bytes": peak_rss_bytes()}


def table(report: dict[str, Any]) -> str:
    """The report as a few human-readable lines."""
    setup = report["setup"]
    one, two = setup["one_core"], setup["two_cores"]
    proofs = report["proofs"]
    chain = report["chain"]
    return "\n".join(
        [
            f"{report['size_bytes'] / MIB:,.0f} MiB, n = {report['n']}, k = {report['k']}, "
            f"leaf {report['leaf_size']} B, shard {report['shard_size'] / MIB:,.1f} MiB "
            f"(depth {report['depth']})",
            f"raw SHA3-256: {report['sha3']['mb_per_s']:,.0f} MB/s "
            f"({report['sha3']['s_per_gib']:.2f} s/GiB)",
            f"set-up, 1 core: {one['s_per_gib']:.2f} s/GiB (encrypt {one['encrypt_s_per_gib']:.2f}, "
            f"erasure {one['erasure_s_per_gib']:.2f}, trees {one['trees_s_per_gib']:.2f}); "
            f"{setup['vs_sha3']:.1f} x raw SHA3 of the file, "
            f"{setup['vs_sha3_of_shard_bytes']:.1f} x of the shard bytes",
            f"set-up, {two['workers']} cores: {two['s_per_gib']:.2f} s/GiB "
            f"(speedup {setup['speedup']:.2f})",
            f"proof: build {proofs['generate_ms_median']:.2f} ms, verify "
            f"{proofs['verify_us_median']:.0f} us ({proofs['hashes_per_verify']} hashes, "
            f"{proofs['actor_gas_per_verify']:,} gas), "
            f"{chain['item_bytes']:,} bytes on chain",
            f"per provider per period ({chain['shards_per_provider']} shards): "
            f"{chain['bytes_per_provider_per_period']:,} bytes in "
            f"{chain['transactions_per_provider_per_period']} transactions",
            *storage_live.table(report),
            f"peak RSS {report['peak_rss_bytes'] / MIB:.0f} MiB",
        ]
    )
