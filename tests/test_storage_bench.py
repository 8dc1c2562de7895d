"""The storage benchmark's :func:`qoin.bench.storage.measure` (the part without a network) on a tiny
file: every documented key is there, the figures are positive and consistent with each other, proofs
are batched as the prover batches them, the scratch files are gone, and bad sizes are refused (the
figures themselves are not judged). The whole command, network included: tests/test_bench_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qoin.bench import storage
from qoin.bench.timing import BenchmarkCheckFailed
from qoin.storage.crypt import encrypted_size
from qoin.storage.merkle import shard_size_for, tree_depth
from qoin.storage.provider.prover import ITEM_OVERHEAD, MAX_PROVE_BYTES, MAX_PROVE_ITEMS


def test_measure_a_tiny_file(tmp_path: Path) -> None:
    size = 300_000
    lines: list[str] = []
    report = storage.measure(
        size=size,
        proofs=5,
        shards_per_provider=70,
        rounds=1,
        workdir=tmp_path,
        progress=lines.append,
    )
    json.dumps(report)  # JSON-ready
    assert list(tmp_path.iterdir()) == []  # the scratch directory is removed
    assert any(line.startswith("set-up on one core") for line in lines)
    assert report["benchmark"] == "storage"
    assert (report["n"], report["k"], report["leaf_size"], report["samples"]) == (4, 2, 256, 8)
    shard_size = shard_size_for(encrypted_size(size), 2, 256)
    assert report["shard_size"] == shard_size
    assert report["leaf_count"] == shard_size // 256
    assert report["depth"] == tree_depth(report["leaf_count"])
    assert report["sha3"]["mb_per_s"] > 0
    setup = report["setup"]
    one, two = setup["one_core"], setup["two_cores"]
    assert one["s_per_gib"] == pytest.approx(one["seconds"] * 2**30 / size)
    assert one["s_per_gib"] == pytest.approx(
        one["encrypt_s_per_gib"] + one["erasure_s_per_gib"] + one["trees_s_per_gib"], rel=0.05
    )
    assert two["workers"] == 2 and two["s_per_gib"] > 0
    assert setup["speedup"] == pytest.approx(one["seconds"] / two["seconds"])
    assert setup["vs_sha3"] > 0 and setup["vs_sha3_of_shard_bytes"] > 0
    proofs = report["proofs"]
    assert proofs["count"] == 5
    assert proofs["generate_ms_median"] > 0 and proofs["verify_us_median"] > 0
    assert proofs["hashes_per_verify"] == 8 * (report["depth"] + 1)
    assert proofs["actor_gas_per_verify"] > proofs["hashes_per_verify"] * 30
    chain = report["chain"]
    depth = report["depth"]
    # list(deal, shard, list(8 leaves of 256 bytes), paths of 8 x depth x 32 bytes), ABI-encoded
    assert chain["item_bytes"] > 8 * 256 + 8 * depth * 32
    assert chain["item_bytes"] < 8 * 256 + 8 * depth * 32 + 64
    # Batched as the prover batches: at most 64 items and MAX_PROVE_BYTES of proofs a transaction.
    per_call = chain["items_per_transaction"]
    proof_size = 8 * 256 + 8 * depth * 32 + ITEM_OVERHEAD
    assert per_call == min(MAX_PROVE_ITEMS, MAX_PROVE_BYTES // proof_size)
    assert chain["transactions_per_provider_per_period"] == -(-70 // per_call)
    assert 0 < chain["transaction_overhead_bytes"] < 10_000  # the signature and the envelope
    transactions = chain["transactions_per_provider_per_period"]
    assert 70 * chain["item_bytes"] < chain["bytes_per_provider_per_period"]
    assert chain["bytes_per_provider_per_period"] <= (
        70 * chain["item_bytes"] + transactions * chain["transaction_overhead_bytes"] + transactions
    )
    assert chain["bytes_per_proof"] == chain["bytes_per_provider_per_period"] / 70
    assert report["peak_rss_bytes"] > 0
    assert "s/GiB" in storage.table(report)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(BenchmarkCheckFailed, match="size"):
        storage.measure(size=0)
    with pytest.raises(BenchmarkCheckFailed, match="proofs"):
        storage.measure(size=1000, proofs=0)
    with pytest.raises(BenchmarkCheckFailed, match="rounds"):
        storage.measure(size=1000, rounds=0)
